//! Writing a mark into a packet: the DSCP of an IP header and the PCP of a VLAN tag.
//!
//! Both functions validate the headers they write with the same checked views the parser
//! uses, never panic, and never allocate. When the packet already carries the requested value
//! they return [`Rewrite::Unchanged`] without writing a single byte — on IPv4 not even the
//! checksum, so a packet that already has the DSCP but a wrong checksum stays byte-identical
//! (marking is not the place to repair other hosts' packets). When they do write, IPv4's header
//! checksum is recomputed from scratch over `IHL * 4` bytes (not updated incrementally), so a
//! marked packet always leaves with a valid header checksum, even if it arrived with a bad one.

use qosmark_abi::{Dscp, Pcp};

use super::bytes::{be16, set_be16};
use super::ethernet::parse_ethernet;
use super::ipv4::Ipv4Packet;
use super::ipv6::Ipv6Packet;
use super::WireError;

/// Whether a rewrite changed the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub enum Rewrite {
    /// Bytes were written.
    Changed,
    /// The packet already carried the value; nothing was written.
    Unchanged,
}

/// Sets the DSCP of the IP packet in `packet` (IP header first), keeping the two ECN bits.
///
/// IPv4: writes the upper six bits of the TOS octet and recomputes the header checksum over the
/// `IHL * 4` header bytes. IPv6: writes the upper six bits of the Traffic Class; there is no
/// header checksum. Nothing else is touched: not the transport header (TOS and Traffic Class
/// are outside the TCP/UDP pseudo-header), not the IPv6 extension headers, not the flow label.
///
/// Only the fixed header has to be valid; the extension-header chain and the transport header
/// are not looked at, and a buffer holding only the headers is fine.
///
/// # Errors
/// [`WireError::Empty`]; [`WireError::NotIp`] for a version other than 4 and 6; the errors of
/// [`Ipv4Packet::new_checked`] or [`Ipv6Packet::new_checked`]. On error nothing was written.
pub fn set_dscp(packet: &mut [u8], dscp: Dscp) -> Result<Rewrite, WireError> {
    let first = packet.first().ok_or(WireError::Empty)?;
    match first >> 4 {
        4 => {
            let mut ip = Ipv4Packet::new_checked(packet)?;
            if ip.dscp() == dscp {
                return Ok(Rewrite::Unchanged);
            }
            ip.set_dscp(dscp);
            ip.fill_checksum();
            Ok(Rewrite::Changed)
        }
        6 => {
            let mut ip = Ipv6Packet::new_checked(packet)?;
            if ip.dscp() == dscp {
                return Ok(Rewrite::Unchanged);
            }
            ip.set_dscp(dscp);
            Ok(Rewrite::Changed)
        }
        _ => Err(WireError::NotIp),
    }
}

/// Sets the PCP of the VLAN tag whose TPID is at `tag_offset` in the Ethernet frame `frame`,
/// keeping DEI and VID. `tag_offset` must be one of the tag offsets
/// [`super::parse_ethernet`] reports (12 or 16); the frame is re-parsed to check it.
///
/// # Errors
/// The errors of [`super::parse_ethernet`]; [`WireError::Malformed`] when `tag_offset` is not
/// the offset of one of the frame's tags. On error nothing was written.
pub fn set_pcp(frame: &mut [u8], tag_offset: usize, pcp: Pcp) -> Result<Rewrite, WireError> {
    let summary = parse_ethernet(frame)?;
    let tag = summary
        .tags
        .iter()
        .flatten()
        .find(|t| t.offset == tag_offset)
        .ok_or(WireError::Malformed)?;
    if tag.pcp == pcp {
        return Ok(Rewrite::Unchanged);
    }
    let tci_at = tag_offset.checked_add(2).ok_or(WireError::Malformed)?;
    let tci = be16(frame, tci_at).ok_or(WireError::Truncated)?;
    let tci = (u16::from(pcp.value()) << 13) | (tci & 0x1fff);
    if set_be16(frame, tci_at, tci) {
        Ok(Rewrite::Changed)
    } else {
        Err(WireError::Truncated)
    }
}

#[cfg(test)]
mod tests {
    // Tests index and unwrap buffers they built themselves.
    #![allow(clippy::indexing_slicing, clippy::unwrap_used)]
    use super::*;
    use crate::wire::{checksum, parse_ethernet};

    fn v4() -> [u8; 40] {
        let mut buf = [0xa5u8; 40];
        buf[..20].copy_from_slice(&[
            0x45, 0x03, 0x00, 0x1c, 0, 1, 0, 0, 64, 17, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2,
        ]);
        let sum = checksum::internet_checksum(&buf[..20]);
        buf[10..12].copy_from_slice(&sum.to_be_bytes());
        buf
    }

    #[test]
    fn ipv4_changed_recomputes_checksum_and_keeps_ecn() {
        let mut buf = v4();
        let before = buf;
        assert_eq!(set_dscp(&mut buf, Dscp::EF), Ok(Rewrite::Changed));
        assert_eq!(buf[1], (46 << 2) | 3);
        assert!(checksum::verify(&buf[..20]));
        for i in (0..40).filter(|i| ![1, 10, 11].contains(i)) {
            assert_eq!(buf[i], before[i], "byte {i}");
        }
        assert_eq!(set_dscp(&mut buf, Dscp::EF), Ok(Rewrite::Unchanged));
    }

    #[test]
    fn ipv4_unchanged_keeps_a_bad_checksum() {
        let mut buf = v4();
        buf[10] ^= 0xff;
        let before = buf;
        assert_eq!(set_dscp(&mut buf, Dscp::CS0), Ok(Rewrite::Unchanged));
        assert_eq!(buf, before);
        // Changing it repairs the checksum.
        assert_eq!(set_dscp(&mut buf, Dscp::EF), Ok(Rewrite::Changed));
        assert!(checksum::verify(&buf[..20]));
    }

    #[test]
    fn ipv6_changes_only_traffic_class_bits() {
        let mut buf = [0xa5u8; 48];
        buf[0] = 0x6f;
        buf[1] = 0xf5;
        buf[4..6].copy_from_slice(&8u16.to_be_bytes());
        let before = buf;
        assert_eq!(
            set_dscp(&mut buf, Dscp::try_new(0).unwrap()),
            Ok(Rewrite::Changed)
        );
        assert_eq!(&buf[..2], &[0x60, 0x35]);
        assert_eq!(&buf[2..], &before[2..]);
        assert_eq!(set_dscp(&mut buf, Dscp::CS0), Ok(Rewrite::Unchanged));
    }

    #[test]
    fn errors_leave_bytes_alone() {
        let mut empty: [u8; 0] = [];
        assert_eq!(set_dscp(&mut empty, Dscp::EF), Err(WireError::Empty));
        let mut buf = v4();
        buf[0] = 0x44;
        let before = buf;
        assert_eq!(set_dscp(&mut buf, Dscp::EF), Err(WireError::Malformed));
        assert_eq!(buf, before);
        buf[0] = 0x55;
        assert_eq!(set_dscp(&mut buf, Dscp::EF), Err(WireError::NotIp));
        let mut short = [0x60u8; 39];
        assert_eq!(set_dscp(&mut short, Dscp::EF), Err(WireError::Truncated));
        assert_eq!(short, [0x60u8; 39]);
    }

    #[test]
    fn pcp_rewrite_keeps_dei_and_vid() {
        let mut buf = [0xa5u8; 64];
        buf[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
        buf[14..16].copy_from_slice(&0x1064u16.to_be_bytes()); // PCP 0, DEI 1, VID 100
        buf[16..18].copy_from_slice(&0x8100u16.to_be_bytes());
        buf[18..20].copy_from_slice(&0x4005u16.to_be_bytes()); // PCP 2, DEI 0, VID 5
        buf[20..22].copy_from_slice(&0x0800u16.to_be_bytes());
        let before = buf;
        let six = Pcp::try_new(6).unwrap();
        assert_eq!(set_pcp(&mut buf, 16, six), Ok(Rewrite::Changed));
        assert_eq!(&buf[18..20], &[0xc0, 0x05]);
        let s = parse_ethernet(&buf).unwrap();
        let inner = s.inner_tag().unwrap();
        assert_eq!((inner.pcp, inner.dei, inner.vid.value()), (six, false, 5));
        assert_eq!(set_pcp(&mut buf, 16, six), Ok(Rewrite::Unchanged));
        assert_eq!(set_pcp(&mut buf, 12, six), Ok(Rewrite::Changed));
        assert_eq!(&buf[14..16], &[0xd0, 0x64]);
        for i in (0..64).filter(|i| ![14, 18].contains(i)) {
            assert_eq!(buf[i], before[i], "byte {i}");
        }
        let snapshot = buf;
        for bad in [0usize, 13, 14, 20, 22, usize::MAX] {
            assert_eq!(
                set_pcp(&mut buf, bad, six),
                Err(WireError::Malformed),
                "offset {bad}"
            );
        }
        assert_eq!(buf, snapshot);
        let mut untagged = [0xa5u8; 20];
        untagged[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(set_pcp(&mut untagged, 12, six), Err(WireError::Malformed));
        assert_eq!(set_pcp(&mut buf[..17], 12, six), Err(WireError::Truncated));
    }
}
