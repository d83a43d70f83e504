//! TEMPORARY stand-in, replaced at merge by the real `wire` module (owned by the wire helper).
//!
//! A minimal but correct implementation of exactly the API `classify` codes against, so the
//! `rules` branch compiles and its tests run: IPv4 (options skipped by IHL) and IPv6 with the
//! Hop-by-Hop / Routing / Destination Options / Fragment extension headers. ESP and AH make the
//! transport unreachable. No accessor panics on any input: every read goes through `get`.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use qosmark_abi::Dscp;

/// IP version of a parsed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// Fragmentation fields (IPv4 header or IPv6 Fragment header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentInfo {
    /// Identification (IPv4: 16 bits, IPv6: 32 bits).
    pub id: u32,
    /// Fragment offset in 8-octet units.
    pub offset: u16,
    /// More-fragments flag.
    pub more: bool,
}

/// What the transport header gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP or UDP ports.
    Ports {
        /// Source port.
        src: u16,
        /// Destination port.
        dst: u16,
    },
    /// A fragment with a non-zero offset: no transport header.
    NotFirstFragment,
    /// ESP, AH, or an extension header chain we do not walk.
    Unreachable,
    /// TCP/UDP, but the ports are cut off.
    Truncated,
    /// Neither TCP nor UDP.
    Other,
}

/// Summary of an IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpSummary {
    /// IP version.
    pub version: IpVersion,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Current DSCP.
    pub dscp: Dscp,
    /// Current ECN bits.
    pub ecn: u8,
    /// Upper-layer protocol (IPv6: the header after the extension chain, or the Fragment
    /// header's next header for non-first fragments).
    pub protocol: u8,
    /// Length of the IP header (IPv6: including extension headers walked).
    pub header_len: usize,
    /// Total length of the IP packet.
    pub total_len: usize,
    /// Fragmentation, if the packet is a fragment.
    pub fragment: Option<FragmentInfo>,
    /// Transport information.
    pub transport: Transport,
}

/// Why a packet could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// No bytes.
    Empty,
    /// Version is neither 4 nor 6.
    NotIp,
    /// Shorter than the headers claim.
    Truncated,
    /// Inconsistent header fields.
    Malformed,
}

/// Whether a rewrite changed the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// Bytes changed.
    Changed,
    /// Already had the value.
    Unchanged,
}

fn byte(p: &[u8], i: usize) -> Result<u8, WireError> {
    p.get(i).copied().ok_or(WireError::Truncated)
}

fn be16(p: &[u8], i: usize) -> Result<u16, WireError> {
    Ok(u16::from_be_bytes([byte(p, i)?, byte(p, i + 1)?]))
}

fn ports(p: &[u8], at: usize, end: usize, protocol: u8) -> Transport {
    if protocol != 6 && protocol != 17 {
        return Transport::Other;
    }
    if at + 4 > end {
        return Transport::Truncated;
    }
    match (be16(p, at), be16(p, at + 2)) {
        (Ok(src), Ok(dst)) => Transport::Ports { src, dst },
        _ => Transport::Truncated,
    }
}

/// Parses the IP header of `packet`.
///
/// # Errors
/// [`WireError`] when the bytes are not a well-formed IP packet.
pub fn parse_ip(packet: &[u8]) -> Result<IpSummary, WireError> {
    let first = *packet.first().ok_or(WireError::Empty)?;
    match first >> 4 {
        4 => parse_v4(packet),
        6 => parse_v6(packet),
        _ => Err(WireError::NotIp),
    }
}

fn parse_v4(p: &[u8]) -> Result<IpSummary, WireError> {
    if p.len() < 20 {
        return Err(WireError::Truncated);
    }
    let ihl = usize::from(byte(p, 0)? & 0x0f) * 4;
    if ihl < 20 {
        return Err(WireError::Malformed);
    }
    let total = usize::from(be16(p, 2)?);
    if total < ihl {
        return Err(WireError::Malformed);
    }
    if total > p.len() || ihl > p.len() {
        return Err(WireError::Truncated);
    }
    let tos = byte(p, 1)?;
    let id = be16(p, 4)?;
    let ff = be16(p, 6)?;
    let more = ff & 0x2000 != 0;
    let offset = ff & 0x1fff;
    let protocol = byte(p, 9)?;
    let src = Ipv4Addr::new(byte(p, 12)?, byte(p, 13)?, byte(p, 14)?, byte(p, 15)?);
    let dst = Ipv4Addr::new(byte(p, 16)?, byte(p, 17)?, byte(p, 18)?, byte(p, 19)?);
    let fragment = (more || offset != 0).then_some(FragmentInfo {
        id: u32::from(id),
        offset,
        more,
    });
    let transport = if offset != 0 {
        Transport::NotFirstFragment
    } else {
        ports(p, ihl, total, protocol)
    };
    Ok(IpSummary {
        version: IpVersion::V4,
        src: IpAddr::V4(src),
        dst: IpAddr::V4(dst),
        dscp: Dscp::try_new(tos >> 2).map_err(|_| WireError::Malformed)?,
        ecn: tos & 3,
        protocol,
        header_len: ihl,
        total_len: total,
        fragment,
        transport,
    })
}

fn parse_v6(p: &[u8]) -> Result<IpSummary, WireError> {
    if p.len() < 40 {
        return Err(WireError::Truncated);
    }
    let tc = ((byte(p, 0)? & 0x0f) << 4) | (byte(p, 1)? >> 4);
    let total = 40 + usize::from(be16(p, 4)?);
    if total > p.len() {
        return Err(WireError::Truncated);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    for (i, (s, d)) in src.iter_mut().zip(dst.iter_mut()).enumerate() {
        *s = byte(p, 8 + i)?;
        *d = byte(p, 24 + i)?;
    }
    let mut next = byte(p, 6)?;
    let mut at = 40;
    let mut fragment = None;
    let mut transport = None;
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                if at + 8 > total {
                    return Err(WireError::Truncated);
                }
                let len = (usize::from(byte(p, at + 1)?) + 1) * 8;
                if at + len > total {
                    return Err(WireError::Truncated);
                }
                next = byte(p, at)?;
                at += len;
            }
            44 => {
                if at + 8 > total {
                    return Err(WireError::Truncated);
                }
                let ff = be16(p, at + 2)?;
                let id = u32::from_be_bytes([
                    byte(p, at + 4)?,
                    byte(p, at + 5)?,
                    byte(p, at + 6)?,
                    byte(p, at + 7)?,
                ]);
                let offset = ff >> 3;
                fragment = Some(FragmentInfo {
                    id,
                    offset,
                    more: ff & 1 != 0,
                });
                next = byte(p, at)?;
                at += 8;
                if offset != 0 {
                    transport = Some(Transport::NotFirstFragment);
                    break;
                }
            }
            50 | 51 => {
                transport = Some(Transport::Unreachable);
                break;
            }
            _ => break,
        }
    }
    let transport = match transport {
        Some(t) => t,
        None if matches!(next, 0 | 43 | 60 | 44) => Transport::Unreachable,
        None => ports(p, at, total, next),
    };
    Ok(IpSummary {
        version: IpVersion::V6,
        src: IpAddr::V6(Ipv6Addr::from(src)),
        dst: IpAddr::V6(Ipv6Addr::from(dst)),
        dscp: Dscp::try_new(tc >> 2).map_err(|_| WireError::Malformed)?,
        ecn: tc & 3,
        protocol: next,
        header_len: at,
        total_len: total,
        fragment,
        transport,
    })
}

/// Sets the DSCP of an IPv4 or IPv6 packet, keeping ECN; fixes the IPv4 header checksum.
///
/// # Errors
/// As [`parse_ip`].
pub fn set_dscp(packet: &mut [u8], dscp: Dscp) -> Result<Rewrite, WireError> {
    let s = parse_ip(packet)?;
    if s.dscp == dscp {
        return Ok(Rewrite::Unchanged);
    }
    let tc = (dscp.value() << 2) | s.ecn;
    match s.version {
        IpVersion::V4 => {
            *packet.get_mut(1).ok_or(WireError::Truncated)? = tc;
            if let Some(c) = packet.get_mut(10..12) {
                c.copy_from_slice(&[0, 0]);
            }
            let mut sum = 0u32;
            for i in (0..s.header_len).step_by(2) {
                sum += u32::from(be16(packet, i)?);
            }
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            let c = !(sum as u16);
            packet
                .get_mut(10..12)
                .ok_or(WireError::Truncated)?
                .copy_from_slice(&c.to_be_bytes());
        }
        IpVersion::V6 => {
            let b0 = packet.first_mut().ok_or(WireError::Truncated)?;
            *b0 = (*b0 & 0xf0) | (tc >> 4);
            let b1 = packet.get_mut(1).ok_or(WireError::Truncated)?;
            *b1 = (*b1 & 0x0f) | (tc << 4);
        }
    }
    Ok(Rewrite::Changed)
}
