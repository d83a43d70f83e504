//! pcapng: a sequence of blocks `| type | total length | body | total length |`, all lengths
//! multiples of 4. A section header block (SHB) starts each section and fixes its byte order;
//! interface description blocks (IDB) number the interfaces of the section (link type, snap
//! length, timestamp resolution and offset options); packets are enhanced (EPB), simple (SPB)
//! or obsolete (PB) packet blocks. Any other block is skipped: the replay tool copies the file,
//! so skipped blocks reach the output unchanged.

use super::{push, Capture, CaptureError, Format, LinkType, Reader, Record};

/// Section header block type; palindromic, so it reads the same in both byte orders.
pub(super) const SHB_TYPE: u32 = 0x0a0d_0d0a;
const IDB_TYPE: u32 = 1;
const PB_TYPE: u32 = 2;
const SPB_TYPE: u32 = 3;
const EPB_TYPE: u32 = 6;
const BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
const OPT_END: u16 = 0;
const OPT_IF_TSRESOL: u16 = 9;
const OPT_IF_TSOFFSET: u16 = 14;

/// One interface of the current section.
struct Interface {
    /// Raw `LINKTYPE_` number (checked only when a packet uses the interface).
    link_type: u32,
    /// Offset of the IDB, for error messages.
    offset: usize,
    /// 0 = no limit.
    snaplen: u32,
    /// Timestamp units per second.
    units_per_second: u128,
    /// `if_tsoffset`, seconds.
    offset_seconds: i64,
}

fn corrupt(offset: usize, what: &'static str) -> CaptureError {
    CaptureError::Corrupt { offset, what }
}

pub(super) fn parse(input: &[u8]) -> Result<Capture, CaptureError> {
    let mut r = Reader::new(input);
    let mut records = Vec::new();
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut at = 0usize;
    let mut in_section = false;
    while at < r.len() {
        if r.len() - at < 12 {
            return Err(corrupt(
                at,
                "pcapng block header truncated (needs 12 bytes)",
            ));
        }
        if r.u32_le(at) == Some(SHB_TYPE) {
            let bom_at = at + 8;
            r = match r.u32_le(bom_at) {
                Some(BYTE_ORDER_MAGIC) => r.with_order(false),
                Some(m) if m.swap_bytes() == BYTE_ORDER_MAGIC => r.with_order(true),
                _ => {
                    return Err(corrupt(
                        at,
                        "section header block has a bad byte-order magic",
                    ))
                }
            };
            if r.u16(at + 12) != Some(1) {
                return Err(corrupt(at, "unsupported pcapng major version (expected 1)"));
            }
            interfaces.clear();
            in_section = true;
        } else if !in_section {
            return Err(CaptureError::NotACapture);
        }
        let block_type = r.u32(at).ok_or_else(|| corrupt(at, "block type missing"))?;
        let total = r
            .u32(at + 4)
            .ok_or_else(|| corrupt(at, "block length missing"))?;
        let total = usize::try_from(total).map_err(|_| corrupt(at, "block length too large"))?;
        if total < 12 || total % 4 != 0 {
            return Err(corrupt(at, "block length not a multiple of 4 or below 12"));
        }
        let end = at
            .checked_add(total)
            .filter(|&e| e <= r.len())
            .ok_or_else(|| corrupt(at, "block runs past the end of the file (truncated)"))?;
        if r.u32(end - 4).and_then(|t| usize::try_from(t).ok()) != Some(total) {
            return Err(corrupt(
                at,
                "block trailing length differs from its leading length",
            ));
        }
        // Body without the trailing length.
        let body_end = end - 4;
        match block_type {
            SHB_TYPE if total < 28 => return Err(corrupt(at, "section header block too short")),
            IDB_TYPE => push_interface(r, at, body_end, &mut interfaces)?,
            EPB_TYPE | PB_TYPE => {
                let record = packet_block(r, at, body_end, block_type, &interfaces)?;
                push(&mut records, record)?;
            }
            SPB_TYPE => {
                let record = simple_packet_block(r, at, body_end, &interfaces)?;
                push(&mut records, record)?;
            }
            _ => {}
        }
        at = end;
    }
    if !in_section {
        return Err(CaptureError::NotACapture);
    }
    Ok(Capture {
        format: Format::Pcapng,
        records,
    })
}

fn push_interface(
    r: Reader<'_>,
    at: usize,
    body_end: usize,
    interfaces: &mut Vec<Interface>,
) -> Result<(), CaptureError> {
    if body_end < at + 16 {
        return Err(corrupt(at, "interface description block too short"));
    }
    let link_type = u32::from(
        r.u16(at + 8)
            .ok_or_else(|| corrupt(at, "IDB link type missing"))?,
    );
    let snaplen = r
        .u32(at + 12)
        .ok_or_else(|| corrupt(at, "IDB snap length missing"))?;
    let mut iface = Interface {
        link_type,
        offset: at,
        snaplen,
        units_per_second: 1_000_000,
        offset_seconds: 0,
    };
    let mut opt = at + 16;
    while opt + 4 <= body_end {
        let (Some(code), Some(len)) = (r.u16(opt), r.u16(opt + 2)) else {
            return Err(corrupt(at, "IDB option header truncated"));
        };
        if code == OPT_END {
            break;
        }
        let value = opt + 4;
        let padded = (usize::from(len) + 3) & !3;
        if value + padded > body_end {
            return Err(corrupt(at, "IDB option runs past the end of its block"));
        }
        match (code, len) {
            (OPT_IF_TSRESOL, 1) => {
                let v = r
                    .u8(value)
                    .ok_or_else(|| corrupt(at, "if_tsresol missing"))?;
                let exp = u32::from(v & 0x7f);
                iface.units_per_second = if v & 0x80 == 0 {
                    10u128.checked_pow(exp)
                } else {
                    2u128.checked_pow(exp)
                }
                .ok_or_else(|| corrupt(at, "if_tsresol out of range"))?;
            }
            (OPT_IF_TSOFFSET, 8) => {
                let v = r
                    .u64(value)
                    .ok_or_else(|| corrupt(at, "if_tsoffset missing"))?;
                iface.offset_seconds = i64::from_ne_bytes(v.to_ne_bytes());
            }
            _ => {}
        }
        opt = value + padded;
    }
    push(interfaces, iface)
}

fn interface_link(iface: &Interface) -> Result<LinkType, CaptureError> {
    LinkType::from_number(iface.link_type).ok_or(CaptureError::UnsupportedLinkType {
        offset: iface.offset,
        link_type: iface.link_type,
    })
}

fn packet_block(
    r: Reader<'_>,
    at: usize,
    body_end: usize,
    block_type: u32,
    interfaces: &[Interface],
) -> Result<Record, CaptureError> {
    if body_end < at + 28 {
        return Err(corrupt(at, "packet block too short"));
    }
    let iface_id = if block_type == EPB_TYPE {
        r.u32(at + 8)
    } else {
        r.u16(at + 8).map(u32::from)
    }
    .ok_or_else(|| corrupt(at, "interface id missing"))?;
    let iface = usize::try_from(iface_id)
        .ok()
        .and_then(|i| interfaces.get(i))
        .ok_or_else(|| {
            corrupt(
                at,
                "packet block names an interface not described before it",
            )
        })?;
    let link = interface_link(iface)?;
    let (Some(hi), Some(lo), Some(caplen), Some(orig_len)) = (
        r.u32(at + 12),
        r.u32(at + 16),
        r.u32(at + 20),
        r.u32(at + 24),
    ) else {
        return Err(corrupt(at, "packet block header truncated"));
    };
    let start = at + 28;
    let end = usize::try_from(caplen)
        .ok()
        .and_then(|n| start.checked_add(n))
        .filter(|&e| e <= body_end)
        .ok_or_else(|| corrupt(at, "packet block captured length exceeds the block"))?;
    let units = (u64::from(hi) << 32) | u64::from(lo);
    let ts_ns = super::to_ns(units, iface.units_per_second, iface.offset_seconds);
    Ok(Record {
        link,
        ts_ns: Some(ts_ns),
        data: start..end,
        orig_len,
        offset: at,
    })
}

fn simple_packet_block(
    r: Reader<'_>,
    at: usize,
    body_end: usize,
    interfaces: &[Interface],
) -> Result<Record, CaptureError> {
    let iface = interfaces
        .first()
        .ok_or_else(|| corrupt(at, "simple packet block before any interface"))?;
    let link = interface_link(iface)?;
    let orig_len = r
        .u32(at + 8)
        .ok_or_else(|| corrupt(at, "simple packet block too short"))?;
    let start = at + 12;
    if body_end < start {
        return Err(corrupt(at, "simple packet block too short"));
    }
    // Captured length = min(original length, snap length, room in the block).
    let mut caplen = usize::try_from(orig_len)
        .unwrap_or(usize::MAX)
        .min(body_end - start);
    if iface.snaplen != 0 {
        caplen = caplen.min(usize::try_from(iface.snaplen).unwrap_or(usize::MAX));
    }
    Ok(Record {
        link,
        ts_ns: None,
        data: start..start + caplen,
        orig_len,
        offset: at,
    })
}
