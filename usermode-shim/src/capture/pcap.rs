//! Classic pcap: a 24-byte file header, then records of a 16-byte header plus packet bytes.
//!
//! ```text
//!  0      4      6      8          12        16        20        24
//!  | magic | vmaj | vmin | thiszone | sigfigs | snaplen | linktype |
//!  record: | ts_sec | ts_frac | incl_len | orig_len | incl_len bytes of packet |
//! ```
//! The magic, read little-endian, gives the byte order (`a1b2c3d4` / `d4c3b2a1`) and the
//! timestamp unit (`a1b23c4d` / `4d3cb2a1` = nanoseconds).

use super::{push, Capture, CaptureError, Format, LinkType, Reader, Record};

const FILE_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 16;

pub(super) fn parse(input: &[u8]) -> Result<Capture, CaptureError> {
    let r = Reader::new(input);
    let magic = r.u32_le(0).ok_or(CaptureError::NotACapture)?;
    let (big_endian, format) = match magic {
        0xa1b2_c3d4 => (false, Format::PcapMicro),
        0xa1b2_3c4d => (false, Format::PcapNano),
        0xd4c3_b2a1 => (true, Format::PcapMicro),
        0x4d3c_b2a1 => (true, Format::PcapNano),
        _ => return Err(CaptureError::NotACapture),
    };
    let r = r.with_order(big_endian);
    let corrupt = |offset, what| CaptureError::Corrupt { offset, what };
    if r.len() < FILE_HEADER_LEN {
        return Err(corrupt(0, "pcap file header truncated (needs 24 bytes)"));
    }
    if r.u16(4) != Some(2) {
        return Err(corrupt(4, "unsupported pcap major version (expected 2)"));
    }
    // The low 16 bits are the link type; the upper bits carry FCS information.
    let raw_link = r.u32(20).ok_or_else(|| corrupt(20, "link type missing"))? & 0xffff;
    let link = LinkType::from_number(raw_link).ok_or(CaptureError::UnsupportedLinkType {
        offset: 20,
        link_type: raw_link,
    })?;
    let frac_per_second: u128 = match format {
        Format::PcapNano => 1_000_000_000,
        Format::PcapMicro | Format::Pcapng => 1_000_000,
    };

    let mut records = Vec::new();
    let mut at = FILE_HEADER_LEN;
    while at < r.len() {
        let (Some(sec), Some(frac), Some(incl), Some(orig)) = (
            r.u32(at),
            r.u32(at + 4),
            r.u32(at + 8),
            r.u32(at.saturating_add(12)),
        ) else {
            return Err(corrupt(at, "pcap record header truncated (needs 16 bytes)"));
        };
        let start = at + RECORD_HEADER_LEN;
        let end = usize::try_from(incl)
            .ok()
            .and_then(|n| start.checked_add(n))
            .filter(|&end| end <= r.len())
            .ok_or_else(|| {
                corrupt(
                    at,
                    "pcap record data truncated (incl_len beyond end of file)",
                )
            })?;
        let ts = u128::from(sec) * frac_per_second + u128::from(frac);
        let ts_ns = super::to_ns(u64::try_from(ts).unwrap_or(u64::MAX), frac_per_second, 0);
        push(
            &mut records,
            Record {
                link,
                ts_ns: Some(ts_ns),
                data: start..end,
                orig_len: orig,
                offset: at,
            },
        )?;
        at = end;
    }
    Ok(Capture { format, records })
}
