//! Flow keys: the transport 5-tuple seen from the sending host, with IPv4-mapped IPv6
//! addresses normalized to IPv4.

use core::net::{IpAddr, SocketAddr};
use qosmark_abi::Protocol;

/// The 5-tuple of an outbound packet or socket: local = source, remote = destination.
/// Build it with [`FiveTuple::new`] so addresses are normalized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Local (source) address and port.
    pub local: SocketAddr,
    /// Remote (destination) address and port.
    pub remote: SocketAddr,
}

impl FiveTuple {
    /// A tuple with both addresses normalized ([`normalize_addr`]).
    #[must_use]
    pub fn new(protocol: Protocol, local: SocketAddr, remote: SocketAddr) -> Self {
        FiveTuple { protocol, local: normalize(local), remote: normalize(remote) }
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) → IPv4; everything else unchanged. A dual-stack socket
/// talking to an IPv4 peer sends IPv4 packets, so its flows are keyed as IPv4 (qWAVE refuses
/// such sockets with 87; qosmark accepts them).
#[must_use]
pub fn normalize_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        IpAddr::V4(_) => addr,
    }
}

/// [`normalize_addr`] on a socket address (port kept).
#[must_use]
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(normalize_addr(addr.ip()), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn v4_mapped_becomes_v4() {
        let mapped = Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped();
        assert_eq!(normalize_addr(IpAddr::V6(mapped)), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    }

    #[test]
    fn v4_compatible_and_native_v6_stay() {
        let native: Ipv6Addr = "2001:db8::1".parse().unwrap_or(Ipv6Addr::LOCALHOST);
        assert_eq!(normalize_addr(IpAddr::V6(native)), IpAddr::V6(native));
        // ::a.b.c.d (deprecated IPv4-compatible) is not mapped.
        let compat = Ipv4Addr::new(192, 0, 2, 1).to_ipv6_compatible();
        assert_eq!(normalize_addr(IpAddr::V6(compat)), IpAddr::V6(compat));
    }
}
