//! [`parse_ip`]: everything the classifier needs from an IP packet, in one call.
//!
//! The length rules (headers-only buffers, padding, IPv6 payload length 0) are those of the
//! [`crate::wire`] module docs. In short: the IP header(s) must be present, the transport header
//! needs only its first 4 bytes (the ports), and the announced length is reported, not required.

use core::net::IpAddr;

use qosmark_abi::Dscp;

use super::ipv4::Ipv4Packet;
use super::ipv6::{ChainEnd, Ipv6Packet};
use super::transport::ports;
use super::{IpProtocol, WireError};

/// IP version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// Fragment fields of an IPv4 header or an IPv6 fragment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragmentInfo {
    /// Identification (IPv4: the 16-bit id widened).
    pub id: u32,
    /// Offset in 8-byte units.
    pub offset: u16,
    /// The "more fragments" flag.
    pub more: bool,
}

/// What [`parse_ip`] found where the transport header should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TCP or UDP with both ports present.
    Ports {
        /// Source port.
        src: u16,
        /// Destination port.
        dst: u16,
    },
    /// A fragment with a non-zero offset: no transport header here (any protocol).
    NotFirstFragment,
    /// The transport header cannot be found: ESP, AH, IPv6 No Next Header, an IPv6 extension
    /// header qosmark does not walk, or an IPv6 chain longer than
    /// [`super::MAX_EXTENSION_HEADERS`].
    Unreachable,
    /// TCP or UDP with fewer than 4 transport bytes before the end of the data, or (IPv6) an
    /// extension header cut by the end of the data.
    Truncated,
    /// An upper-layer protocol that is neither TCP nor UDP (ICMP, `ICMPv6`, GRE, SCTP, ...).
    Other,
}

/// The parsed IP header(s) of one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpSummary {
    /// IP version.
    pub version: IpVersion,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Current DSCP.
    pub dscp: Dscp,
    /// Current ECN bits (0..=3).
    pub ecn: u8,
    /// The final protocol / next-header number: the transport protocol when it was reached;
    /// otherwise the header the walk stopped at ([`super::ExtensionChain::protocol`]).
    pub protocol: u8,
    /// Bytes from the start of the IP header to the transport header (IPv4: `IHL * 4`; IPv6:
    /// 40 plus the walked extension headers, or where the walk stopped).
    pub header_len: usize,
    /// The packet length the IP header announces (IPv4 total length; IPv6 40 + payload length,
    /// or the buffer length for payload length 0).
    pub total_len: usize,
    /// Fragment fields, when the packet is a fragment (IPv4: MF set or offset non-zero; IPv6: a
    /// fragment header is present, atomic fragments included).
    pub fragment: Option<FragmentInfo>,
    /// The transport header, or why there is none.
    pub transport: Transport,
}

impl IpSummary {
    /// True when a buffer of `captured_len` bytes holds the whole packet as announced.
    #[must_use]
    pub fn is_complete(&self, captured_len: usize) -> bool {
        captured_len >= self.total_len
    }

    /// `(source, destination)` ports when [`IpSummary::transport`] is [`Transport::Ports`].
    #[must_use]
    pub fn ports(&self) -> Option<(u16, u16)> {
        match self.transport {
            Transport::Ports { src, dst } => Some((src, dst)),
            _ => None,
        }
    }
}

/// Parses the IP header(s) of `packet` (IP header first; no link-layer header).
///
/// # Errors
/// [`WireError::Empty`] for an empty buffer; [`WireError::NotIp`] when the version nibble is
/// neither 4 nor 6; otherwise the errors of [`Ipv4Packet::new_checked`] (IPv4) or of
/// [`Ipv6Packet::new_checked`] and [`Ipv6Packet::extension_chain`] (IPv6).
pub fn parse_ip(packet: &[u8]) -> Result<IpSummary, WireError> {
    let first = packet.first().ok_or(WireError::Empty)?;
    match first >> 4 {
        4 => parse_v4(packet),
        6 => parse_v6(packet),
        _ => Err(WireError::NotIp),
    }
}

/// Ports from the transport bytes `data[start..]`, or `Truncated`.
fn ports_at(data: &[u8], start: usize) -> Transport {
    match data.get(start..).and_then(ports) {
        Some((src, dst)) => Transport::Ports { src, dst },
        None => Transport::Truncated,
    }
}

fn parse_v4(packet: &[u8]) -> Result<IpSummary, WireError> {
    let ip = Ipv4Packet::new_checked(packet)?;
    let header_len = ip.header_len();
    let total_len = usize::from(ip.total_len());
    let data = packet.get(..total_len).unwrap_or(packet);
    let protocol = ip.protocol();
    let transport = if ip.frag_offset() != 0 {
        Transport::NotFirstFragment
    } else {
        match protocol {
            IpProtocol::Tcp | IpProtocol::Udp => ports_at(data, header_len),
            IpProtocol::Esp | IpProtocol::Ah => Transport::Unreachable,
            _ => Transport::Other,
        }
    };
    let fragment = ip.is_fragment().then(|| FragmentInfo {
        id: u32::from(ip.ident()),
        offset: ip.frag_offset(),
        more: ip.more_fragments(),
    });
    Ok(IpSummary {
        version: IpVersion::V4,
        src: IpAddr::V4(ip.src_addr()),
        dst: IpAddr::V4(ip.dst_addr()),
        dscp: ip.dscp(),
        ecn: ip.ecn(),
        protocol: u8::from(protocol),
        header_len,
        total_len,
        fragment,
        transport,
    })
}

fn parse_v6(packet: &[u8]) -> Result<IpSummary, WireError> {
    let ip = Ipv6Packet::new_checked(packet)?;
    let total_len = ip.total_len();
    let data = packet.get(..total_len).unwrap_or(packet);
    let chain = ip.extension_chain()?;
    let transport = match chain.end {
        ChainEnd::Upper => match IpProtocol::from(chain.protocol) {
            IpProtocol::Tcp | IpProtocol::Udp => ports_at(data, chain.header_len),
            _ => Transport::Other,
        },
        ChainEnd::NotFirstFragment => Transport::NotFirstFragment,
        ChainEnd::Unreachable => Transport::Unreachable,
        ChainEnd::Truncated => Transport::Truncated,
    };
    Ok(IpSummary {
        version: IpVersion::V6,
        src: IpAddr::V6(ip.src_addr()),
        dst: IpAddr::V6(ip.dst_addr()),
        dscp: ip.dscp(),
        ecn: ip.ecn(),
        protocol: chain.protocol,
        header_len: chain.header_len,
        total_len,
        fragment: chain.fragment,
        transport,
    })
}

#[cfg(test)]
mod tests {
    // Tests index and unwrap buffers they built themselves.
    #![allow(clippy::indexing_slicing, clippy::unwrap_used)]
    use super::*;
    use crate::wire::checksum;
    use core::net::{Ipv4Addr, Ipv6Addr};

    /// IPv4 TCP 10.0.0.1:49152 -> 10.0.0.2:443, IHL `ihl`, DSCP 0 ECN 2, in 0xa5 fill.
    fn v4_tcp(ihl: u8) -> [u8; 100] {
        let mut buf = [0xa5u8; 100];
        let hl = usize::from(ihl) * 4;
        let total = (hl + 20) as u16;
        buf[0] = 0x40 | ihl;
        buf[1] = 0x02;
        buf[2..4].copy_from_slice(&total.to_be_bytes());
        buf[4..8].copy_from_slice(&[0xab, 0xcd, 0x40, 0x00]);
        buf[8] = 64;
        buf[9] = 6;
        buf[10..12].copy_from_slice(&[0, 0]);
        buf[12..16].copy_from_slice(&[10, 0, 0, 1]);
        buf[16..20].copy_from_slice(&[10, 0, 0, 2]);
        for b in &mut buf[20..hl] {
            *b = 1; // NOP options
        }
        buf[hl..hl + 4].copy_from_slice(&[0xc0, 0x00, 0x01, 0xbb]);
        let sum = checksum::internet_checksum(&buf[..hl]);
        buf[10..12].copy_from_slice(&sum.to_be_bytes());
        buf
    }

    #[test]
    fn ipv4_tcp_with_options() {
        for ihl in 5..=15u8 {
            let buf = v4_tcp(ihl);
            let s = parse_ip(&buf).unwrap();
            let hl = usize::from(ihl) * 4;
            assert_eq!(s.version, IpVersion::V4);
            assert_eq!(s.src, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
            assert_eq!(s.dst, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
            assert_eq!(s.dscp, Dscp::CS0);
            assert_eq!(s.ecn, 2);
            assert_eq!(s.protocol, 6);
            assert_eq!(s.header_len, hl);
            assert_eq!(s.total_len, hl + 20);
            assert_eq!(s.fragment, None);
            assert_eq!(
                s.transport,
                Transport::Ports {
                    src: 49152,
                    dst: 443
                }
            );
            assert!(s.is_complete(buf.len()));
            assert!(!s.is_complete(hl + 19));
            // Headers plus 4 transport bytes are enough.
            assert_eq!(parse_ip(&buf[..hl + 4]).unwrap().transport, s.transport);
            assert_eq!(
                parse_ip(&buf[..hl + 3]).unwrap().transport,
                Transport::Truncated
            );
            assert_eq!(
                parse_ip(&buf[..hl]).unwrap().transport,
                Transport::Truncated
            );
            assert_eq!(parse_ip(&buf[..hl - 1]), Err(WireError::Truncated));
        }
    }

    #[test]
    fn ipv4_total_length_bounds_the_transport() {
        let mut buf = v4_tcp(5);
        buf[2..4].copy_from_slice(&22u16.to_be_bytes());
        let s = parse_ip(&buf).unwrap();
        assert_eq!(s.total_len, 22);
        assert_eq!(
            s.transport,
            Transport::Truncated,
            "padding is not the transport header"
        );
    }

    #[test]
    fn ipv4_fragments() {
        let mut buf = v4_tcp(5);
        buf[6..8].copy_from_slice(&0x2000u16.to_be_bytes()); // MF, offset 0
        let s = parse_ip(&buf).unwrap();
        assert_eq!(
            s.fragment,
            Some(FragmentInfo {
                id: 0xabcd,
                offset: 0,
                more: true
            })
        );
        assert_eq!(
            s.transport,
            Transport::Ports {
                src: 49152,
                dst: 443
            }
        );
        buf[6..8].copy_from_slice(&0x0003u16.to_be_bytes()); // last fragment, offset 3
        let s = parse_ip(&buf).unwrap();
        assert_eq!(
            s.fragment,
            Some(FragmentInfo {
                id: 0xabcd,
                offset: 3,
                more: false
            })
        );
        assert_eq!(s.transport, Transport::NotFirstFragment);
        assert_eq!(s.protocol, 6);
    }

    #[test]
    fn ipv4_other_and_unreachable_protocols() {
        let mut buf = v4_tcp(5);
        for (proto, expected) in [
            (1u8, Transport::Other),
            (47, Transport::Other),
            (50, Transport::Unreachable),
            (51, Transport::Unreachable),
            (
                17,
                Transport::Ports {
                    src: 49152,
                    dst: 443,
                },
            ),
        ] {
            buf[9] = proto;
            let s = parse_ip(&buf).unwrap();
            assert_eq!(s.transport, expected, "protocol {proto}");
            assert_eq!(s.protocol, proto);
        }
    }

    #[test]
    fn top_level_errors() {
        assert_eq!(parse_ip(&[]), Err(WireError::Empty));
        for v in [0u8, 1, 5, 7, 15] {
            assert_eq!(parse_ip(&[v << 4; 60]), Err(WireError::NotIp));
        }
    }

    #[test]
    fn ipv6_udp_and_truncations() {
        let mut buf = [0xa5u8; 64];
        buf[..8].copy_from_slice(&[0x60, 0x00, 0x00, 0x00, 0x00, 0x08, 17, 64]);
        buf[8..24].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        buf[24..40].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        buf[40..48].copy_from_slice(&[0x04, 0xd2, 0x16, 0x2e, 0x00, 0x08, 0x00, 0x00]);
        let s = parse_ip(&buf).unwrap();
        assert_eq!(s.version, IpVersion::V6);
        assert_eq!(s.total_len, 48);
        assert_eq!(s.header_len, 40);
        assert_eq!(
            s.transport,
            Transport::Ports {
                src: 1234,
                dst: 5678
            }
        );
        assert_eq!(parse_ip(&buf[..44]).unwrap().transport, s.transport);
        assert_eq!(
            parse_ip(&buf[..43]).unwrap().transport,
            Transport::Truncated
        );
        assert_eq!(parse_ip(&buf[..39]), Err(WireError::Truncated));
        buf[6] = 58;
        assert_eq!(parse_ip(&buf).unwrap().transport, Transport::Other);
        buf[6] = 59;
        assert_eq!(parse_ip(&buf).unwrap().transport, Transport::Unreachable);
    }
}
