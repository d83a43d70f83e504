//! Link-layer framing: where the IP packet starts inside a captured frame, and where the
//! innermost 802.1Q / 802.1ad tag is.
//!
//! | link type | header | IP starts at |
//! |---|---|---|
//! | Ethernet (1) | dst(6) src(6) \[TPID(2) TCI(2)\]* `EtherType`(2) | after the `EtherType` |
//! | raw IP (101), IPv4 (228), IPv6 (229) | none | 0 |
//! | Linux cooked v1 (113) | type(2) ARPHRD(2) addr len(2) addr(8) protocol(2) | 16 |
//! | Linux cooked v2 (276) | protocol(2) reserved(2) ifindex(4) ARPHRD(2) type(1) addr len(1) addr(8) | 20 |
//!
//! TPIDs recognised as tags: 0x8100 (802.1Q), 0x88a8 (802.1ad), 0x9100 (pre-standard `QinQ`), at
//! most [`MAX_TAGS`] of them.

use super::LinkType;
use qosmark_abi::Pcp;

/// Most VLAN tags walked (a service tag and a customer tag, as the engine's Ethernet view);
/// a frame with more is treated as not carrying IP.
pub const MAX_TAGS: usize = 2;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;

/// The innermost VLAN tag of an Ethernet frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagInfo {
    /// Offset of the tag (its TPID) in the frame; the TCI follows at `offset + 2`.
    pub offset: usize,
    /// The tag's current priority code point.
    pub pcp: Pcp,
}

/// Where the IP packet of a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    /// Offset of the first IP header byte in the frame.
    pub ip_offset: usize,
    /// The innermost VLAN tag (Ethernet only).
    pub innermost_tag: Option<TagInfo>,
}

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    let end = at.checked_add(2)?;
    frame.get(at..end)?.try_into().ok().map(u16::from_be_bytes)
}

fn ip_ethertype(t: u16) -> bool {
    t == ETHERTYPE_IPV4 || t == ETHERTYPE_IPV6
}

/// Finds the IP packet in a frame. `None` when the frame does not carry IPv4 or IPv6 according
/// to its link header (or the link header itself is cut). For the raw IP link types the packet
/// always starts at 0; whether it is really IP is then the engine's call.
#[must_use]
pub fn locate(link: LinkType, frame: &[u8]) -> Option<Located> {
    match link {
        LinkType::RawIp | LinkType::Ipv4 | LinkType::Ipv6 => Some(Located {
            ip_offset: 0,
            innermost_tag: None,
        }),
        LinkType::LinuxSll => be16(frame, 14)
            .filter(|&t| ip_ethertype(t))
            .map(|_| Located {
                ip_offset: 16,
                innermost_tag: None,
            }),
        LinkType::LinuxSll2 => be16(frame, 0)
            .filter(|&t| ip_ethertype(t) && frame.len() >= 20)
            .map(|_| Located {
                ip_offset: 20,
                innermost_tag: None,
            }),
        LinkType::Ethernet => {
            let mut at = 12;
            let mut tag = None;
            for _ in 0..=MAX_TAGS {
                let t = be16(frame, at)?;
                if ip_ethertype(t) {
                    return Some(Located {
                        ip_offset: at + 2,
                        innermost_tag: tag,
                    });
                }
                if !matches!(t, 0x8100 | 0x88a8 | 0x9100) {
                    return None;
                }
                let tci = be16(frame, at + 2)?;
                let pcp = Pcp::try_new((tci >> 13) as u8).ok()?;
                tag = Some(TagInfo { offset: at, pcp });
                at += 4;
            }
            None
        }
    }
}
