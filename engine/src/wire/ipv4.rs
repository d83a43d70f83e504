//! IPv4 header view (RFC 791), options and fragments included.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-------+-------+-----------+---+-------------------------------+
//! |Version|  IHL  |   DSCP    |ECN|          Total Length         |
//! +-------+-------+-----------+---+-----+-------------------------+
//! |         Identification        |0|D|M|     Fragment Offset     |
//! +---------------+---------------+-----+-------------------------+
//! |  Time to Live |    Protocol   |         Header Checksum       |
//! +---------------+---------------+-------------------------------+
//! |                       Source Address                          |
//! |                    Destination Address                        |
//! |                 Options (IHL - 5 words) ...                   |
//! +---------------------------------------------------------------+
//! ```
//!
//! [`Ipv4Packet::new_checked`] guarantees: version 4, `5 <= IHL`, the buffer holds `IHL * 4`
//! bytes, and `total length >= IHL * 4`. The buffer may be shorter than the total length
//! (headers only) or longer (padding); see the module docs of [`crate::wire`]. After
//! `new_checked` no accessor panics (none panics before it either: reads go through `get`).

use core::net::Ipv4Addr;

use qosmark_abi::Dscp;

use super::bytes::{array, be16, set_be16, set_u8, u8_at};
use super::{checksum, IpProtocol, WireError};

/// Byte offsets of the fixed fields.
mod field {
    pub(super) const VER_IHL: usize = 0;
    pub(super) const TOS: usize = 1;
    pub(super) const TOTAL_LEN: usize = 2;
    pub(super) const IDENT: usize = 4;
    pub(super) const FLAGS_FRAG: usize = 6;
    pub(super) const TTL: usize = 8;
    pub(super) const PROTOCOL: usize = 9;
    pub(super) const CHECKSUM: usize = 10;
    pub(super) const SRC: usize = 12;
    pub(super) const DST: usize = 16;
}

/// Length of a header without options (IHL 5).
pub const MIN_HEADER_LEN: usize = 20;
/// Length of a header with the most options (IHL 15).
pub const MAX_HEADER_LEN: usize = 60;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// A checked view of an IPv4 packet (header first). Getters need `T: AsRef<[u8]>`, setters
/// `T: AsMut<[u8]>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` after [`Ipv4Packet::check_len`].
    ///
    /// # Errors
    /// In this order: [`WireError::Empty`]; [`WireError::NotIp`] when the version nibble is not
    /// 4; [`WireError::Truncated`] below 20 bytes; [`WireError::Malformed`] when IHL < 5;
    /// [`WireError::Truncated`] below `IHL * 4` bytes; [`WireError::Malformed`] when the total
    /// length is below `IHL * 4`.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Ipv4Packet { buffer };
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the invariants listed at [`Ipv4Packet::new_checked`].
    ///
    /// # Errors
    /// As [`Ipv4Packet::new_checked`].
    pub fn check_len(&self) -> Result<(), WireError> {
        let buf = self.buffer.as_ref();
        let first = u8_at(buf, field::VER_IHL).ok_or(WireError::Empty)?;
        if first >> 4 != 4 {
            return Err(WireError::NotIp);
        }
        if buf.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let header_len = usize::from(first & 0x0f) * 4;
        if header_len < MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if buf.len() < header_len {
            return Err(WireError::Truncated);
        }
        if usize::from(self.total_len()) < header_len {
            return Err(WireError::Malformed);
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole buffer, header first.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    fn byte(&self, at: usize) -> u8 {
        u8_at(self.buffer.as_ref(), at).unwrap_or(0)
    }

    fn word(&self, at: usize) -> u16 {
        be16(self.buffer.as_ref(), at).unwrap_or(0)
    }

    /// The version nibble (4 after `new_checked`).
    #[must_use]
    pub fn version(&self) -> u8 {
        self.byte(field::VER_IHL) >> 4
    }

    /// The header length in bytes, `IHL * 4` (20..=60).
    #[must_use]
    pub fn header_len(&self) -> usize {
        usize::from(self.byte(field::VER_IHL) & 0x0f) * 4
    }

    /// The whole TOS octet (DSCP and ECN).
    #[must_use]
    pub fn tos(&self) -> u8 {
        self.byte(field::TOS)
    }

    /// The DSCP: the upper six bits of the TOS octet.
    #[must_use]
    pub fn dscp(&self) -> Dscp {
        dscp_of(self.tos())
    }

    /// The ECN field: the lower two bits of the TOS octet.
    #[must_use]
    pub fn ecn(&self) -> u8 {
        self.tos() & 0x03
    }

    /// The total length field (header plus payload), in bytes.
    #[must_use]
    pub fn total_len(&self) -> u16 {
        self.word(field::TOTAL_LEN)
    }

    /// The identification field.
    #[must_use]
    pub fn ident(&self) -> u16 {
        self.word(field::IDENT)
    }

    /// The "don't fragment" flag.
    #[must_use]
    pub fn dont_fragment(&self) -> bool {
        self.word(field::FLAGS_FRAG) & FLAG_DF != 0
    }

    /// The "more fragments" flag.
    #[must_use]
    pub fn more_fragments(&self) -> bool {
        self.word(field::FLAGS_FRAG) & FLAG_MF != 0
    }

    /// The fragment offset in 8-byte units.
    #[must_use]
    pub fn frag_offset(&self) -> u16 {
        self.word(field::FLAGS_FRAG) & FRAG_OFFSET_MASK
    }

    /// True when this packet is a fragment (MF set or a non-zero offset).
    #[must_use]
    pub fn is_fragment(&self) -> bool {
        self.more_fragments() || self.frag_offset() != 0
    }

    /// Time to live.
    #[must_use]
    pub fn ttl(&self) -> u8 {
        self.byte(field::TTL)
    }

    /// The protocol of the payload.
    #[must_use]
    pub fn protocol(&self) -> IpProtocol {
        IpProtocol::from(self.byte(field::PROTOCOL))
    }

    /// The header checksum field as stored.
    #[must_use]
    pub fn header_checksum(&self) -> u16 {
        self.word(field::CHECKSUM)
    }

    /// True when the stored header checksum is valid for the `IHL * 4` header bytes.
    #[must_use]
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(self.header())
    }

    /// The checksum the header should carry, computed over `IHL * 4` bytes with the checksum
    /// field taken as zero (the stored value is ignored).
    #[must_use]
    pub fn compute_checksum(&self) -> u16 {
        let header = self.header();
        let before = header.get(..field::CHECKSUM).unwrap_or(&[]);
        let after = header.get(field::CHECKSUM + 2..).unwrap_or(&[]);
        // Both parts start at even offsets, so summing them separately is the same as summing
        // the header with a zero checksum field.
        let sum = u32::from(checksum::ones_complement_sum(before))
            + u32::from(checksum::ones_complement_sum(after));
        let folded = (sum & 0xffff) + (sum >> 16);
        !(folded as u16)
    }

    /// The source address.
    #[must_use]
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(array::<4>(self.buffer.as_ref(), field::SRC).unwrap_or_default())
    }

    /// The destination address.
    #[must_use]
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(array::<4>(self.buffer.as_ref(), field::DST).unwrap_or_default())
    }

    /// The `IHL * 4` header bytes, options included.
    #[must_use]
    pub fn header(&self) -> &[u8] {
        let buf = self.buffer.as_ref();
        buf.get(..self.header_len()).unwrap_or(buf)
    }

    /// The option bytes (`IHL * 4 - 20` bytes, possibly none). Not interpreted.
    #[must_use]
    pub fn options(&self) -> &[u8] {
        self.header().get(MIN_HEADER_LEN..).unwrap_or(&[])
    }

    /// The payload bytes present in the buffer: from the end of the header to the total length
    /// or the end of the buffer, whichever comes first (padding is excluded).
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        let buf = self.buffer.as_ref();
        let end = buf.len().min(usize::from(self.total_len()));
        buf.get(self.header_len()..end).unwrap_or(&[])
    }

    /// True when the buffer holds all `total_len` bytes.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.buffer.as_ref().len() >= usize::from(self.total_len())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Writes the whole TOS octet. The checksum is not updated; see [`Ipv4Packet::fill_checksum`].
    pub fn set_tos(&mut self, tos: u8) {
        set_u8(self.buffer.as_mut(), field::TOS, tos);
    }

    /// Writes the DSCP and keeps the ECN bits. The checksum is not updated.
    pub fn set_dscp(&mut self, dscp: Dscp) {
        let tos = (dscp.value() << 2) | self.ecn();
        self.set_tos(tos);
    }

    /// Writes the header checksum field.
    pub fn set_header_checksum(&mut self, value: u16) {
        set_be16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Recomputes the header checksum over `IHL * 4` bytes and stores it.
    pub fn fill_checksum(&mut self) {
        let value = self.compute_checksum();
        self.set_header_checksum(value);
    }
}

/// The DSCP of a TOS / Traffic Class octet.
pub(super) fn dscp_of(tos: u8) -> Dscp {
    // `tos >> 2` has six significant bits, so `try_new` always succeeds.
    Dscp::try_new(tos >> 2).unwrap_or(Dscp::CS0)
}

#[cfg(test)]
mod tests {
    // Tests index and unwrap buffers they built themselves.
    #![allow(clippy::indexing_slicing, clippy::unwrap_used)]
    use super::*;

    /// A UDP packet 192.0.2.1:5000 -> 198.51.100.7:53 with one 4-byte option (NOP NOP NOP EOL),
    /// DSCP 10 (AF11), ECN 1, id 0x1234, MF set, offset 0, TTL 64, placed in a 0xa5-filled
    /// buffer of 64 bytes with total length 36 (24 header + 8 UDP + 4 payload).
    fn sample() -> [u8; 64] {
        let mut buf = [0xa5u8; 64];
        let header = [
            0x46, 0x29, 0x00, 0x24, 0x12, 0x34, 0x20, 0x00, 0x40, 0x11, 0x00, 0x00, 192, 0, 2, 1,
            198, 51, 100, 7, 0x01, 0x01, 0x01, 0x00,
        ];
        buf[..24].copy_from_slice(&header);
        buf[24..32].copy_from_slice(&[0x13, 0x88, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00]);
        let sum = checksum::internet_checksum(&buf[..24]);
        buf[10..12].copy_from_slice(&sum.to_be_bytes());
        buf
    }

    #[test]
    fn reads_every_field() {
        let buf = sample();
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.dscp().value(), 10);
        assert_eq!(p.ecn(), 1);
        assert_eq!(p.total_len(), 36);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.more_fragments());
        assert!(!p.dont_fragment());
        assert_eq!(p.frag_offset(), 0);
        assert!(p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), IpProtocol::Udp);
        assert_eq!(p.src_addr(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(198, 51, 100, 7));
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert_eq!(
            p.payload().len(),
            12,
            "padding after total length is excluded"
        );
        assert!(p.is_complete());
        assert!(p.verify_checksum());
        assert_eq!(p.compute_checksum(), p.header_checksum());
    }

    #[test]
    fn fragment_offset_and_flags() {
        let mut buf = sample();
        buf[6] = 0x40 | 0x1f; // DF + offset high bits
        buf[7] = 0xff;
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert!(p.dont_fragment());
        assert!(!p.more_fragments());
        assert_eq!(p.frag_offset(), 0x1fff);
    }

    #[test]
    fn errors_in_documented_order() {
        assert_eq!(Ipv4Packet::new_checked(&[][..]), Err(WireError::Empty));
        assert_eq!(
            Ipv4Packet::new_checked(&[0x65u8][..]),
            Err(WireError::NotIp)
        );
        assert_eq!(
            Ipv4Packet::new_checked(&[0x45u8; 19][..]),
            Err(WireError::Truncated)
        );
        let mut buf = sample();
        buf[0] = 0x44;
        assert_eq!(Ipv4Packet::new_checked(&buf[..]), Err(WireError::Malformed));
        buf[0] = 0x4f; // 60-byte header in a 64-byte buffer, total length 36 < 60
        assert_eq!(Ipv4Packet::new_checked(&buf[..]), Err(WireError::Malformed));
        assert_eq!(
            Ipv4Packet::new_checked(&buf[..59]),
            Err(WireError::Truncated)
        );
        let mut buf = sample();
        buf[2] = 0;
        buf[3] = 23;
        assert_eq!(Ipv4Packet::new_checked(&buf[..]), Err(WireError::Malformed));
        buf[3] = 24;
        assert!(Ipv4Packet::new_checked(&buf[..]).is_ok());
    }

    #[test]
    fn headers_only_buffer_is_accepted() {
        let buf = sample();
        let p = Ipv4Packet::new_checked(&buf[..26]).unwrap();
        assert!(!p.is_complete());
        assert_eq!(p.payload(), &buf[24..26]);
    }

    #[test]
    fn set_dscp_keeps_ecn_and_fill_checksum_fixes_header() {
        let mut buf = sample();
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        p.set_dscp(Dscp::EF);
        assert_eq!(p.tos(), (46 << 2) | 1);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
    }
}
