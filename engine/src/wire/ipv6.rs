//! IPv6 fixed header view (RFC 8200) and a bounded walk of the extension-header chain.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-------+-----------+---+---------------------------------------+
//! |Version|   DSCP    |ECN|              Flow Label               |
//! +-------+-----------+---+-------+---------------+---------------+
//! |         Payload Length        |  Next Header  |   Hop Limit   |
//! +-------------------------------+---------------+---------------+
//! |                 Source Address (16 bytes)                     |
//! |              Destination Address (16 bytes)                   |
//! +---------------------------------------------------------------+
//! ```
//!
//! # The extension-header walk ([`Ipv6Packet::extension_chain`])
//! * Walked: hop-by-hop options (0, only as the first header: anywhere else it is
//!   [`WireError::Malformed`]), routing (43), destination options (60) — all three in the
//!   generic `next header, length in 8-byte units not counting the first 8` format — and the
//!   fragment header (44, 8 bytes; a second one is [`WireError::Malformed`]).
//! * At most [`MAX_EXTENSION_HEADERS`] (8) headers are walked. If a ninth would follow, the walk
//!   stops with [`ChainEnd::Unreachable`]: a real stack never sends that many, and the bound keeps
//!   the per-packet work constant.
//! * Stops with [`ChainEnd::Unreachable`] at ESP (50), AH (51), No Next Header (59) and the
//!   extension headers qosmark does not walk (Mobility 135, HIP 139, Shim6 140, experimental
//!   253 and 254): the transport header cannot be found, but the fixed header can still be
//!   rewritten.
//! * A fragment header with a non-zero offset stops the walk with
//!   [`ChainEnd::NotFirstFragment`]; the first fragment (offset 0) is walked on.
//! * An extension header cut by the end of the data (the buffer end or the end announced by the
//!   payload length, whichever comes first) stops the walk with [`ChainEnd::Truncated`].
//! * Every other next-header value is an upper-layer protocol and ends the walk with
//!   [`ChainEnd::Upper`].

use core::net::Ipv6Addr;

use qosmark_abi::Dscp;

use super::bytes::{array, be16, be32, set_u8, u8_at};
use super::ipv4::dscp_of;
use super::summary::FragmentInfo;
use super::{IpProtocol, WireError};

/// Byte offsets of the fixed fields.
mod field {
    pub(super) const VER_TC_FLOW: usize = 0;
    pub(super) const PAYLOAD_LEN: usize = 4;
    pub(super) const NEXT_HEADER: usize = 6;
    pub(super) const HOP_LIMIT: usize = 7;
    pub(super) const SRC: usize = 8;
    pub(super) const DST: usize = 24;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

/// The most extension headers [`Ipv6Packet::extension_chain`] walks.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// A checked view of an IPv6 packet (fixed header first). Getters need `T: AsRef<[u8]>`,
/// setters `T: AsMut<[u8]>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps `buffer` after [`Ipv6Packet::check_len`].
    ///
    /// # Errors
    /// In this order: [`WireError::Empty`]; [`WireError::NotIp`] when the version nibble is not
    /// 6; [`WireError::Truncated`] below 40 bytes. The payload length is not checked against the
    /// buffer (headers-only buffers are accepted).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Ipv6Packet { buffer };
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the invariants listed at [`Ipv6Packet::new_checked`].
    ///
    /// # Errors
    /// As [`Ipv6Packet::new_checked`].
    pub fn check_len(&self) -> Result<(), WireError> {
        let buf = self.buffer.as_ref();
        let first = u8_at(buf, field::VER_TC_FLOW).ok_or(WireError::Empty)?;
        if first >> 4 != 6 {
            return Err(WireError::NotIp);
        }
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole buffer, fixed header first.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    fn byte(&self, at: usize) -> u8 {
        u8_at(self.buffer.as_ref(), at).unwrap_or(0)
    }

    fn first_word(&self) -> u32 {
        be32(self.buffer.as_ref(), field::VER_TC_FLOW).unwrap_or(0)
    }

    /// The version nibble (6 after `new_checked`).
    #[must_use]
    pub fn version(&self) -> u8 {
        self.byte(field::VER_TC_FLOW) >> 4
    }

    /// The Traffic Class octet (bits 4..12 of the first word).
    #[must_use]
    pub fn traffic_class(&self) -> u8 {
        (self.first_word() >> 20) as u8
    }

    /// The DSCP: the upper six bits of the Traffic Class.
    #[must_use]
    pub fn dscp(&self) -> Dscp {
        dscp_of(self.traffic_class())
    }

    /// The ECN field: the lower two bits of the Traffic Class.
    #[must_use]
    pub fn ecn(&self) -> u8 {
        self.traffic_class() & 0x03
    }

    /// The 20-bit flow label.
    #[must_use]
    pub fn flow_label(&self) -> u32 {
        self.first_word() & 0x000f_ffff
    }

    /// The payload length field (bytes after the fixed header; 0 for jumbograms).
    #[must_use]
    pub fn payload_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::PAYLOAD_LEN).unwrap_or(0)
    }

    /// The first next-header value.
    #[must_use]
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(self.byte(field::NEXT_HEADER))
    }

    /// The hop limit.
    #[must_use]
    pub fn hop_limit(&self) -> u8 {
        self.byte(field::HOP_LIMIT)
    }

    /// The source address.
    #[must_use]
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(array::<16>(self.buffer.as_ref(), field::SRC).unwrap_or_default())
    }

    /// The destination address.
    #[must_use]
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(array::<16>(self.buffer.as_ref(), field::DST).unwrap_or_default())
    }

    /// The packet length the header announces: `40 + payload length`, or the buffer length when
    /// the payload length is 0 (jumbogram or unknown length; see [`crate::wire`]).
    #[must_use]
    pub fn total_len(&self) -> usize {
        match self.payload_len() {
            0 => self.buffer.as_ref().len().max(HEADER_LEN),
            n => HEADER_LEN + usize::from(n),
        }
    }

    /// Where the IP data ends in this buffer: the announced length or the buffer end,
    /// whichever comes first.
    fn data_end(&self) -> usize {
        self.buffer.as_ref().len().min(self.total_len())
    }

    /// The payload bytes present in the buffer (extension headers included), padding excluded.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(HEADER_LEN..self.data_end())
            .unwrap_or(&[])
    }

    /// True when the buffer holds all `total_len` bytes.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.buffer.as_ref().len() >= self.total_len()
    }

    /// Walks the extension-header chain as described in the [module docs](self).
    ///
    /// # Errors
    /// [`WireError::Malformed`] for a hop-by-hop header that is not first or a second fragment
    /// header. A cut or over-long chain is not an error (see [`ChainEnd`]).
    pub fn extension_chain(&self) -> Result<ExtensionChain, WireError> {
        let data = self.buffer.as_ref().get(..self.data_end()).unwrap_or(&[]);
        walk(data, self.byte(field::NEXT_HEADER))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Writes the Traffic Class octet; version and flow label are kept.
    pub fn set_traffic_class(&mut self, tc: u8) {
        let buf = self.buffer.as_mut();
        let (Some(b0), Some(b1)) = (u8_at(buf, 0), u8_at(buf, 1)) else {
            return;
        };
        set_u8(buf, 0, (b0 & 0xf0) | (tc >> 4));
        set_u8(buf, 1, (tc << 4) | (b1 & 0x0f));
    }

    /// Writes the DSCP and keeps the ECN bits. (IPv6 has no header checksum.)
    pub fn set_dscp(&mut self, dscp: Dscp) {
        let tc = (dscp.value() << 2) | self.ecn();
        self.set_traffic_class(tc);
    }
}

/// How the extension-header walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChainEnd {
    /// Reached an upper-layer protocol ([`ExtensionChain::protocol`]) at
    /// [`ExtensionChain::header_len`].
    Upper,
    /// A fragment header with a non-zero offset: the rest of the chain is in the first fragment.
    NotFirstFragment,
    /// ESP, AH, No Next Header, an extension header qosmark does not walk, or more than
    /// [`MAX_EXTENSION_HEADERS`] headers.
    Unreachable,
    /// An extension header is cut by the end of the data.
    Truncated,
}

/// The result of walking the extension headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExtensionChain {
    /// The last next-header value seen: the upper-layer protocol for [`ChainEnd::Upper`], the
    /// fragment header's next header for [`ChainEnd::NotFirstFragment`], and the header the walk
    /// stopped at otherwise.
    pub protocol: u8,
    /// Offset from the start of the IPv6 header to where the walk stopped (the transport
    /// header for [`ChainEnd::Upper`]).
    pub header_len: usize,
    /// Number of extension headers walked.
    pub count: usize,
    /// The fragment header's fields, if one was walked.
    pub fragment: Option<FragmentInfo>,
    /// How the walk ended.
    pub end: ChainEnd,
}

/// Extension headers that are recognised but not walked.
fn is_unwalked_extension(next: u8) -> bool {
    matches!(next, 50 | 51 | 59 | 135 | 139 | 140 | 253 | 254)
}

/// Walks the chain in `data` (IPv6 header first, cut to the announced length) starting with
/// the fixed header's next-header value `first`.
fn walk(data: &[u8], first: u8) -> Result<ExtensionChain, WireError> {
    let mut chain = ExtensionChain {
        protocol: first,
        header_len: HEADER_LEN,
        count: 0,
        fragment: None,
        end: ChainEnd::Upper,
    };
    loop {
        let next = chain.protocol;
        let is_extension = matches!(next, 0 | 43 | 44 | 60);
        if is_unwalked_extension(next) {
            chain.end = ChainEnd::Unreachable;
            return Ok(chain);
        }
        if !is_extension {
            chain.end = ChainEnd::Upper;
            return Ok(chain);
        }
        if next == 0 && chain.count != 0 {
            return Err(WireError::Malformed);
        }
        if next == 44 && chain.fragment.is_some() {
            return Err(WireError::Malformed);
        }
        if chain.count >= MAX_EXTENSION_HEADERS {
            chain.end = ChainEnd::Unreachable;
            return Ok(chain);
        }
        let rest = data.get(chain.header_len..).unwrap_or(&[]);
        let (following, len) = if next == 44 {
            let Ok(frag) = Ipv6FragmentHeader::new_checked(rest) else {
                chain.end = ChainEnd::Truncated;
                return Ok(chain);
            };
            chain.fragment = Some(FragmentInfo {
                id: frag.ident(),
                offset: frag.frag_offset(),
                more: frag.more_fragments(),
            });
            if frag.frag_offset() != 0 {
                chain.count += 1;
                chain.header_len = chain
                    .header_len
                    .saturating_add(Ipv6FragmentHeader::<&[u8]>::LEN);
                chain.protocol = u8::from(frag.next_header());
                chain.end = ChainEnd::NotFirstFragment;
                return Ok(chain);
            }
            (
                u8::from(frag.next_header()),
                Ipv6FragmentHeader::<&[u8]>::LEN,
            )
        } else {
            let Ok(ext) = Ipv6ExtHeader::new_checked(rest) else {
                chain.end = ChainEnd::Truncated;
                return Ok(chain);
            };
            (u8::from(ext.next_header()), ext.header_len())
        };
        chain.count += 1;
        chain.header_len = chain.header_len.saturating_add(len);
        chain.protocol = following;
    }
}

/// A generic extension header (hop-by-hop, routing, destination options): next header, length
/// in 8-byte units not counting the first 8 bytes, then options or routing data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6ExtHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6ExtHeader<T> {
    /// Wraps `buffer` (the extension header first; more bytes may follow).
    ///
    /// # Errors
    /// [`WireError::Empty`] for an empty buffer; [`WireError::Truncated`] when fewer than 2
    /// bytes, or fewer than the header's own length, are present.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let header = Ipv6ExtHeader { buffer };
        let buf = header.buffer.as_ref();
        if buf.is_empty() {
            return Err(WireError::Empty);
        }
        if buf.len() < 2 || buf.len() < header.header_len() {
            return Err(WireError::Truncated);
        }
        Ok(header)
    }

    /// The next-header value.
    #[must_use]
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(u8_at(self.buffer.as_ref(), 0).unwrap_or(0))
    }

    /// The header length in bytes: `(length field + 1) * 8` (8..=2048).
    #[must_use]
    pub fn header_len(&self) -> usize {
        (usize::from(u8_at(self.buffer.as_ref(), 1).unwrap_or(0)) + 1) * 8
    }

    /// The bytes after the two-byte prefix (options, or routing type and data).
    #[must_use]
    pub fn data(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(2..self.header_len())
            .unwrap_or(&[])
    }
}

/// The fragment header (44): next header, reserved, 13-bit offset in 8-byte units, two reserved
/// bits, the M flag, and a 32-bit identification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6FragmentHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6FragmentHeader<T> {
    /// Length of the fragment header.
    pub const LEN: usize = 8;

    /// Wraps `buffer` (the fragment header first; more bytes may follow).
    ///
    /// # Errors
    /// [`WireError::Empty`] for an empty buffer; [`WireError::Truncated`] below 8 bytes.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let header = Ipv6FragmentHeader { buffer };
        match header.buffer.as_ref().len() {
            0 => Err(WireError::Empty),
            n if n < Self::LEN => Err(WireError::Truncated),
            _ => Ok(header),
        }
    }

    /// The next-header value (the fragmentable part's first header).
    #[must_use]
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(u8_at(self.buffer.as_ref(), 0).unwrap_or(0))
    }

    /// The fragment offset in 8-byte units.
    #[must_use]
    pub fn frag_offset(&self) -> u16 {
        be16(self.buffer.as_ref(), 2).unwrap_or(0) >> 3
    }

    /// The M ("more fragments") flag.
    #[must_use]
    pub fn more_fragments(&self) -> bool {
        be16(self.buffer.as_ref(), 2).unwrap_or(0) & 1 != 0
    }

    /// The identification.
    #[must_use]
    pub fn ident(&self) -> u32 {
        be32(self.buffer.as_ref(), 4).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    // Tests index and unwrap buffers they built themselves.
    #![allow(clippy::indexing_slicing, clippy::unwrap_used)]
    use super::*;

    /// Fixed header: TC 0xb9 (DSCP 46, ECN 1), flow label 0x12345, payload length `payload`,
    /// next header `next`, hop limit 64, `2001:db8::1` -> `2001:db8::2`, in a 0xa5-filled buffer.
    fn fixed(buf: &mut [u8], payload: u16, next: u8) {
        buf[..4].copy_from_slice(&[0x6b, 0x91, 0x23, 0x45]);
        buf[4..6].copy_from_slice(&payload.to_be_bytes());
        buf[6] = next;
        buf[7] = 64;
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        buf[8..24].copy_from_slice(&src.octets());
        buf[24..40].copy_from_slice(&dst.octets());
    }

    #[test]
    fn reads_fixed_header() {
        let mut buf = [0xa5u8; 48];
        fixed(&mut buf, 8, 17);
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xb9);
        assert_eq!(p.dscp(), Dscp::EF);
        assert_eq!(p.ecn(), 1);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 8);
        assert_eq!(p.next_header(), IpProtocol::Udp);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_addr(), "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst_addr(), "2001:db8::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.total_len(), 48);
        assert_eq!(p.payload().len(), 8);
        let chain = p.extension_chain().unwrap();
        assert_eq!(chain.end, ChainEnd::Upper);
        assert_eq!(chain.protocol, 17);
        assert_eq!(chain.header_len, 40);
        assert_eq!(chain.count, 0);
    }

    #[test]
    fn set_traffic_class_keeps_version_and_flow_label() {
        let mut buf = [0xa5u8; 40];
        fixed(&mut buf, 0, 59);
        let mut p = Ipv6Packet::new_checked(&mut buf[..]).unwrap();
        p.set_dscp(Dscp::try_new(10).unwrap());
        assert_eq!(p.traffic_class(), (10 << 2) | 1);
        assert_eq!(p.version(), 6);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(&buf[..4], &[0x62, 0x91, 0x23, 0x45]);
    }

    #[test]
    fn errors() {
        assert_eq!(Ipv6Packet::new_checked(&[][..]), Err(WireError::Empty));
        assert_eq!(
            Ipv6Packet::new_checked(&[0x45u8; 40][..]),
            Err(WireError::NotIp)
        );
        assert_eq!(
            Ipv6Packet::new_checked(&[0x60u8; 39][..]),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn walks_hop_by_hop_routing_destination_fragment() {
        let mut buf = [0xa5u8; 128];
        // 40 fixed + 8 HBH + 24 routing + 16 dest opts + 8 fragment + 8 UDP = 104
        fixed(&mut buf, 64, 0);
        buf[40..42].copy_from_slice(&[43, 0]);
        buf[48..50].copy_from_slice(&[60, 2]);
        buf[72..74].copy_from_slice(&[44, 1]);
        buf[88..96].copy_from_slice(&[17, 0, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef]);
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        let chain = p.extension_chain().unwrap();
        assert_eq!(chain.end, ChainEnd::Upper);
        assert_eq!(chain.protocol, 17);
        assert_eq!(chain.header_len, 96);
        assert_eq!(chain.count, 4);
        assert_eq!(
            chain.fragment,
            Some(FragmentInfo {
                id: 0xdead_beef,
                offset: 0,
                more: true
            })
        );
    }

    #[test]
    fn later_fragment_stops_walk() {
        let mut buf = [0xa5u8; 64];
        fixed(&mut buf, 24, 44);
        buf[40..48].copy_from_slice(&[6, 0, 0x00, 0xb8, 0, 0, 0, 7]); // offset 23, M=0
        let chain = Ipv6Packet::new_checked(&buf[..])
            .unwrap()
            .extension_chain()
            .unwrap();
        assert_eq!(chain.end, ChainEnd::NotFirstFragment);
        assert_eq!(chain.protocol, 6);
        assert_eq!(chain.header_len, 48);
        assert_eq!(
            chain.fragment,
            Some(FragmentInfo {
                id: 7,
                offset: 23,
                more: false
            })
        );
    }

    #[test]
    fn esp_and_unknown_extensions_stop() {
        for next in [50u8, 51, 59, 135, 139, 140, 253, 254] {
            let mut buf = [0xa5u8; 64];
            fixed(&mut buf, 24, 60);
            buf[40..42].copy_from_slice(&[next, 0]);
            let chain = Ipv6Packet::new_checked(&buf[..])
                .unwrap()
                .extension_chain()
                .unwrap();
            assert_eq!(chain.end, ChainEnd::Unreachable, "next header {next}");
            assert_eq!(chain.protocol, next);
            assert_eq!(chain.header_len, 48);
        }
    }

    #[test]
    fn chain_limit() {
        let mut buf = [0xa5u8; 40 + 8 * 10];
        fixed(&mut buf, 8 * 10, 60);
        for i in 0..10 {
            buf[40 + 8 * i] = 60;
            buf[41 + 8 * i] = 0;
        }
        let chain = Ipv6Packet::new_checked(&buf[..])
            .unwrap()
            .extension_chain()
            .unwrap();
        assert_eq!(chain.end, ChainEnd::Unreachable);
        assert_eq!(chain.count, MAX_EXTENSION_HEADERS);
        assert_eq!(chain.header_len, 40 + 8 * MAX_EXTENSION_HEADERS);
        // Exactly eight headers followed by UDP is fine.
        buf[40 + 8 * 7] = 17;
        let chain = Ipv6Packet::new_checked(&buf[..])
            .unwrap()
            .extension_chain()
            .unwrap();
        assert_eq!(chain.end, ChainEnd::Upper);
        assert_eq!(chain.count, MAX_EXTENSION_HEADERS);
    }

    #[test]
    fn hop_by_hop_not_first_and_double_fragment_are_malformed() {
        let mut buf = [0xa5u8; 64];
        fixed(&mut buf, 24, 60);
        buf[40..42].copy_from_slice(&[0, 0]);
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.extension_chain(), Err(WireError::Malformed));
        fixed(&mut buf, 24, 44);
        buf[40..48].copy_from_slice(&[44, 0, 0, 1, 0, 0, 0, 1]);
        buf[48..56].copy_from_slice(&[17, 0, 0, 1, 0, 0, 0, 1]);
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.extension_chain(), Err(WireError::Malformed));
    }

    #[test]
    fn cut_extension_header_is_truncated_not_error() {
        let mut buf = [0xa5u8; 64];
        fixed(&mut buf, 24, 43);
        buf[40..42].copy_from_slice(&[17, 2]); // claims 24 bytes
                                               // Buffer long enough, but payload length says the data ends at 64: 40 + 24 = 64 fits.
        let chain = Ipv6Packet::new_checked(&buf[..])
            .unwrap()
            .extension_chain()
            .unwrap();
        assert_eq!(chain.end, ChainEnd::Upper);
        // Payload length 16: the routing header no longer fits in the announced data.
        buf[4..6].copy_from_slice(&16u16.to_be_bytes());
        let chain = Ipv6Packet::new_checked(&buf[..])
            .unwrap()
            .extension_chain()
            .unwrap();
        assert_eq!(chain.end, ChainEnd::Truncated);
        assert_eq!(chain.protocol, 43);
        assert_eq!(chain.header_len, 40);
    }

    #[test]
    fn jumbo_payload_length_zero_uses_buffer_end() {
        let mut buf = [0xa5u8; 56];
        fixed(&mut buf, 0, 0);
        buf[40..48].copy_from_slice(&[17, 0, 0xc2, 4, 0, 1, 0, 0]);
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.total_len(), 56);
        let chain = p.extension_chain().unwrap();
        assert_eq!(chain.end, ChainEnd::Upper);
        assert_eq!(chain.header_len, 48);
    }
}
