//! Ethernet II frames with up to two VLAN tags (IEEE 802.1Q / 802.1ad).
//!
//! ```text
//! +-------------+-------------+----------------------+----------------------+-----------+
//! | dst MAC (6) | src MAC (6) | [TPID (2) | TCI (2)] | [TPID (2) | TCI (2)] | Ethertype |
//! +-------------+-------------+----------------------+----------------------+-----------+
//!                               outer tag, offset 12   inner tag, offset 16
//! TCI = PCP (3 bits) | DEI (1 bit) | VID (12 bits)
//! ```
//!
//! Accepted tag protocol identifiers (TPIDs): 0x8100 (802.1Q C-tag), 0x88a8 (802.1ad S-tag)
//! and 0x9100 (the pre-standard Q-in-Q TPID some switches still send), in either position.
//! [`parse_ethernet`] reads at most [`MAX_VLAN_TAGS`] tags; if a third TPID follows, it is not
//! parsed as a tag and is reported as the frame's [`EtherType`], so the frame is not IP to the
//! classifier. A type/length value below 0x0600 (an IEEE 802.3 length) is reported as
//! [`EtherType::Unknown`] as well. No function here panics.

use qosmark_abi::Pcp;

use super::bytes::{array, be16};
use super::WireError;

/// Length of the untagged header (two MACs and the Ethertype).
pub const HEADER_LEN: usize = 14;
/// Length of one VLAN tag (TPID and TCI).
pub const TAG_LEN: usize = 4;
/// The most VLAN tags [`parse_ethernet`] reads.
pub const MAX_VLAN_TAGS: usize = 2;
/// Offset of the first Ethertype / TPID.
const ETHERTYPE_AT: usize = 12;

/// An Ethertype or TPID value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EtherType {
    /// 0x0800.
    Ipv4,
    /// 0x0806.
    Arp,
    /// 0x86dd.
    Ipv6,
    /// 0x8100: 802.1Q customer tag.
    Vlan,
    /// 0x88a8: 802.1ad service tag.
    ProviderVlan,
    /// 0x9100: pre-standard Q-in-Q tag.
    QinQ,
    /// Anything else (including 802.3 length values below 0x0600).
    Unknown(u16),
}

impl EtherType {
    /// True for the three accepted TPIDs.
    #[must_use]
    pub fn is_vlan_tpid(self) -> bool {
        matches!(
            self,
            EtherType::Vlan | EtherType::ProviderVlan | EtherType::QinQ
        )
    }
}

impl From<u16> for EtherType {
    fn from(value: u16) -> Self {
        match value {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x86dd => EtherType::Ipv6,
            0x8100 => EtherType::Vlan,
            0x88a8 => EtherType::ProviderVlan,
            0x9100 => EtherType::QinQ,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(value: EtherType) -> Self {
        match value {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Vlan => 0x8100,
            EtherType::ProviderVlan => 0x88a8,
            EtherType::QinQ => 0x9100,
            EtherType::Unknown(other) => other,
        }
    }
}

/// A 12-bit VLAN identifier, 0..=4095 (0 = priority tag only, 4095 reserved).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VlanId(u16);

impl VlanId {
    /// The largest value, 4095.
    pub const MAX: u16 = 0x0fff;

    /// A VLAN id from its 12-bit value.
    ///
    /// # Errors
    /// [`qosmark_abi::OutOfRange`] when `value > 4095`.
    pub const fn try_new(value: u16) -> Result<Self, qosmark_abi::OutOfRange> {
        if value <= Self::MAX {
            Ok(VlanId(value))
        } else {
            Err(qosmark_abi::OutOfRange)
        }
    }

    /// The 12-bit value.
    #[must_use]
    pub const fn value(self) -> u16 {
        self.0
    }
}

/// One VLAN tag as found in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VlanTag {
    /// Offset of the tag's TPID from the start of the frame (12 or 16); pass it to
    /// [`super::set_pcp`].
    pub offset: usize,
    /// The TPID.
    pub tpid: EtherType,
    /// Priority code point.
    pub pcp: Pcp,
    /// Drop eligible indicator.
    pub dei: bool,
    /// VLAN id.
    pub vid: VlanId,
}

impl VlanTag {
    /// Decodes the tag whose TPID is at `offset` in `frame`; `None` if the 4 bytes are not there
    /// or the TPID is not a VLAN TPID.
    fn read(frame: &[u8], offset: usize) -> Option<Self> {
        let tpid = EtherType::from(be16(frame, offset)?);
        if !tpid.is_vlan_tpid() {
            return None;
        }
        let tci = be16(frame, offset.checked_add(2)?)?;
        Some(VlanTag {
            offset,
            tpid,
            // `tci >> 13` has three significant bits, so `try_new` always succeeds.
            pcp: Pcp::try_new((tci >> 13) as u8).ok()?,
            dei: tci & 0x1000 != 0,
            vid: VlanId(tci & VlanId::MAX),
        })
    }
}

/// A checked view of an Ethernet II header (14 bytes; tags are read by [`parse_ethernet`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` (frame first).
    ///
    /// # Errors
    /// [`WireError::Empty`] for an empty buffer, [`WireError::Truncated`] below 14 bytes.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        match buffer.as_ref().len() {
            0 => Err(WireError::Empty),
            n if n < HEADER_LEN => Err(WireError::Truncated),
            _ => Ok(EthernetFrame { buffer }),
        }
    }

    /// Destination MAC address.
    #[must_use]
    pub fn dst_addr(&self) -> [u8; 6] {
        array::<6>(self.buffer.as_ref(), 0).unwrap_or_default()
    }

    /// Source MAC address.
    #[must_use]
    pub fn src_addr(&self) -> [u8; 6] {
        array::<6>(self.buffer.as_ref(), 6).unwrap_or_default()
    }

    /// The outer Ethertype or TPID at offset 12.
    #[must_use]
    pub fn ethertype(&self) -> EtherType {
        EtherType::from(be16(self.buffer.as_ref(), ETHERTYPE_AT).unwrap_or(0))
    }
}

/// The link-layer facts the back ends need from a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EthernetSummary {
    /// The Ethertype after the tags (see the [module docs](self) for a third tag).
    pub ethertype: EtherType,
    /// Offset of the payload (the IP header for IP frames): 14, 18 or 22.
    pub payload_offset: usize,
    /// The tags, outer first; `tags[1]` is `Some` only if `tags[0]` is.
    pub tags: [Option<VlanTag>; MAX_VLAN_TAGS],
}

impl EthernetSummary {
    /// Offset of the IP header when the frame carries IPv4 or IPv6.
    #[must_use]
    pub fn ip_offset(&self) -> Option<usize> {
        matches!(self.ethertype, EtherType::Ipv4 | EtherType::Ipv6).then_some(self.payload_offset)
    }

    /// The outer tag, if any.
    #[must_use]
    pub fn outer_tag(&self) -> Option<VlanTag> {
        self.tags.first().copied().flatten()
    }

    /// The tag closest to the payload (the only tag of a single-tagged frame), if any. Its PCP
    /// is the customer priority.
    #[must_use]
    pub fn inner_tag(&self) -> Option<VlanTag> {
        self.tags.iter().rev().find_map(|t| *t)
    }

    /// Number of tags (0..=2).
    #[must_use]
    pub fn tag_count(&self) -> usize {
        self.tags.iter().filter(|t| t.is_some()).count()
    }
}

/// Reads the Ethernet II header and up to two VLAN tags of `frame`.
///
/// # Errors
/// [`WireError::Empty`] for an empty buffer; [`WireError::Truncated`] when the frame ends
/// inside the header, inside a tag, or before the Ethertype that follows a tag.
pub fn parse_ethernet(frame: &[u8]) -> Result<EthernetSummary, WireError> {
    let header = EthernetFrame::new_checked(frame)?;
    let mut summary = EthernetSummary {
        ethertype: header.ethertype(),
        payload_offset: HEADER_LEN,
        tags: [None; MAX_VLAN_TAGS],
    };
    let mut at = ETHERTYPE_AT;
    for slot in &mut summary.tags {
        let Some(tag) = VlanTag::read(frame, at) else {
            if summary.ethertype.is_vlan_tpid() {
                // A TPID whose TCI or following EtherType is cut off.
                return Err(WireError::Truncated);
            }
            break;
        };
        at = at.saturating_add(TAG_LEN);
        let ethertype = be16(frame, at).ok_or(WireError::Truncated)?;
        *slot = Some(tag);
        summary.ethertype = EtherType::from(ethertype);
        summary.payload_offset = at.saturating_add(2);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    // Tests index and unwrap buffers they built themselves.
    #![allow(clippy::indexing_slicing, clippy::unwrap_used)]
    use super::*;

    fn frame(tags: &[(u16, u16)], ethertype: u16) -> [u8; 64] {
        let mut buf = [0xa5u8; 64];
        buf[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        buf[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        let mut at = 12;
        for &(tpid, tci) in tags {
            buf[at..at + 2].copy_from_slice(&tpid.to_be_bytes());
            buf[at + 2..at + 4].copy_from_slice(&tci.to_be_bytes());
            at += 4;
        }
        buf[at..at + 2].copy_from_slice(&ethertype.to_be_bytes());
        buf
    }

    #[test]
    fn untagged() {
        let buf = frame(&[], 0x0800);
        let s = parse_ethernet(&buf).unwrap();
        assert_eq!(s.ethertype, EtherType::Ipv4);
        assert_eq!(s.ip_offset(), Some(14));
        assert_eq!(s.tag_count(), 0);
        assert_eq!(s.outer_tag(), None);
        let f = EthernetFrame::new_checked(&buf[..]).unwrap();
        assert_eq!(f.dst_addr(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(f.src_addr(), [2, 0, 0, 0, 0, 2]);
    }

    #[test]
    fn single_and_double_tags() {
        // PCP 5, DEI 1, VID 100.
        let buf = frame(&[(0x8100, 0xb064)], 0x86dd);
        let s = parse_ethernet(&buf).unwrap();
        assert_eq!(s.ethertype, EtherType::Ipv6);
        assert_eq!(s.ip_offset(), Some(18));
        let tag = s.inner_tag().unwrap();
        assert_eq!(tag.offset, 12);
        assert_eq!(tag.tpid, EtherType::Vlan);
        assert_eq!(tag.pcp.value(), 5);
        assert!(tag.dei);
        assert_eq!(tag.vid.value(), 100);
        assert_eq!(s.outer_tag(), s.inner_tag());

        for outer in [0x88a8u16, 0x9100, 0x8100] {
            let buf = frame(&[(outer, 0x2fff), (0x8100, 0xe001)], 0x0800);
            let s = parse_ethernet(&buf).unwrap();
            assert_eq!(s.ip_offset(), Some(22));
            assert_eq!(s.tag_count(), 2);
            let o = s.outer_tag().unwrap();
            assert_eq!(
                (
                    o.offset,
                    u16::from(o.tpid),
                    o.pcp.value(),
                    o.dei,
                    o.vid.value()
                ),
                (12, outer, 1, false, 4095)
            );
            let i = s.inner_tag().unwrap();
            assert_eq!(
                (i.offset, i.pcp.value(), i.dei, i.vid.value()),
                (16, 7, false, 1)
            );
        }
    }

    #[test]
    fn third_tag_is_not_ip() {
        let buf = frame(&[(0x88a8, 1), (0x8100, 2), (0x8100, 3)], 0x0800);
        let s = parse_ethernet(&buf).unwrap();
        assert_eq!(s.tag_count(), 2);
        assert_eq!(s.ethertype, EtherType::Vlan);
        assert_eq!(s.ip_offset(), None);
    }

    #[test]
    fn truncations() {
        let buf = frame(&[(0x8100, 1), (0x8100, 2)], 0x0800);
        assert_eq!(parse_ethernet(&buf[..0]), Err(WireError::Empty));
        for len in 1..22 {
            assert_eq!(
                parse_ethernet(&buf[..len]),
                Err(WireError::Truncated),
                "len {len}"
            );
        }
        assert!(parse_ethernet(&buf[..22]).is_ok());
    }

    #[test]
    fn ethertype_round_trip_and_vlan_id_bounds() {
        for v in [
            0u16, 0x05dc, 0x0800, 0x0806, 0x86dd, 0x8100, 0x88a8, 0x9100, 0xffff,
        ] {
            assert_eq!(u16::from(EtherType::from(v)), v);
        }
        assert_eq!(VlanId::try_new(4095).unwrap().value(), 4095);
        assert!(VlanId::try_new(4096).is_err());
    }
}
