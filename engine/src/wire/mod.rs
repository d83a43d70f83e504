//! Checked, zero-copy packet views and the DSCP / PCP rewrite.
//!
//! Everything here reads bytes that come straight off the network stack, so the module has one
//! contract, stated once:
//!
//! **No function or method in `wire` panics, on any input, and nothing here allocates.** Views
//! ([`Ipv4Packet`], [`Ipv6Packet`], [`Ipv6ExtHeader`], [`Ipv6FragmentHeader`], [`TcpPacket`],
//! [`UdpPacket`], [`EthernetFrame`]) are built only through `new_checked`, which validates every
//! length the accessors rely on; accessors read through `slice::get` as well, so even a view
//! whose invariant was somehow broken returns zeros instead of panicking. All offset arithmetic
//! is checked or saturating. The fuzz target `fuzz/fuzz_targets/packet_rewrite.rs` and the
//! property tests in `engine/tests/wire_*.rs` back this claim.
//!
//! # Layout
//! * [`checksum`]: the Internet checksum (RFC 1071).
//! * [`ipv4`]: IPv4 header with options and fragments.
//! * [`ipv6`]: IPv6 fixed header and the extension-header chain.
//! * [`transport`]: TCP and UDP headers, and the 4-byte port prefix.
//! * [`ethernet`]: Ethernet II with up to two 802.1Q / 802.1ad tags.
//! * [`summary`]: [`parse_ip`], the one-call summary the classifier uses.
//! * [`rewrite`]: [`set_dscp`] and [`set_pcp`].
//!
//! # Length rules of [`parse_ip`] (decided here, relied on by the back ends)
//! * The back ends may hand over only the first bytes of a packet (Windows copies a contiguous
//!   prefix with `NdisGetDataBuffer`). `parse_ip` therefore needs only the IP header(s) and, for
//!   TCP/UDP, the first 4 bytes of the transport header (the ports). A buffer **shorter** than
//!   the length the IP header announces is fine; [`IpSummary::total_len`] still reports the
//!   announced length and [`IpSummary::is_complete`] tells whether the buffer holds all of it.
//! * A buffer **longer** than the announced length (Ethernet padding) is fine too: bytes past the
//!   announced end are ignored, also when looking for the transport header.
//! * IPv4: the buffer must hold the whole header (`IHL * 4` bytes, options included) or the
//!   result is [`WireError::Truncated`]; `IHL < 5` or a total length below the header length is
//!   [`WireError::Malformed`] (this includes total length 0, which large-send super-packets can
//!   carry: such packets are not marked).
//! * IPv6: the buffer must hold the 40-byte fixed header. A payload length of 0 is taken as a
//!   jumbogram (RFC 2675) or a super-packet whose length the header does not give: the packet is
//!   assumed to end where the buffer ends, and `total_len` is the buffer length. A cut or
//!   over-long extension-header chain is *not* an error (the fixed header, where the Traffic
//!   Class lives, can still be rewritten): it is reported through [`Transport`].
//! * TCP: a header shorter than 20 bytes still yields ports when its first 4 bytes exist (only
//!   the ports are needed to classify). [`TcpPacket::new_checked`] is the strict view.
//!
//! # What the rewrite changes
//! [`set_dscp`] writes the six DSCP bits and keeps the two ECN bits. On IPv4 it then recomputes
//! the header checksum from scratch over `IHL * 4` bytes, so a marked packet always leaves with
//! a valid checksum even if it arrived with a wrong one. A packet that already carries the DSCP
//! is not touched at all ([`Rewrite::Unchanged`]), so a bad checksum stays bad and the bytes stay
//! identical. [`set_pcp`] writes the three PCP bits of an existing VLAN tag and keeps DEI and VID.

pub mod checksum;
pub mod ethernet;
pub mod ipv4;
pub mod ipv6;
pub mod rewrite;
pub mod summary;
pub mod transport;

pub use ethernet::{
    parse_ethernet, EtherType, EthernetFrame, EthernetSummary, VlanId, VlanTag, MAX_VLAN_TAGS,
};
pub use ipv4::Ipv4Packet;
pub use ipv6::{
    ChainEnd, ExtensionChain, Ipv6ExtHeader, Ipv6FragmentHeader, Ipv6Packet, MAX_EXTENSION_HEADERS,
};
pub use qosmark_abi::{Dscp, Pcp};
pub use rewrite::{set_dscp, set_pcp, Rewrite};
pub use summary::{parse_ip, FragmentInfo, IpSummary, IpVersion, Transport};
pub use transport::{ports, TcpPacket, UdpPacket};

/// Why bytes could not be read as the packet they were supposed to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireError {
    /// The buffer is empty.
    Empty,
    /// The IP version nibble is neither 4 nor 6 (or, for a version-specific view such as
    /// [`Ipv4Packet`], not that view's version).
    NotIp,
    /// The buffer is shorter than the header being read, or than a length field of that header
    /// says the header is (IHL, an extension header's length, a TCP data offset).
    Truncated,
    /// A field is impossible: IHL below 5, an IPv4 total length below the header length, a TCP
    /// data offset below 5, a hop-by-hop options header that is not first in the IPv6 chain, a
    /// second IPv6 fragment header, or (for [`set_pcp`]) an offset that is not one of the
    /// frame's VLAN tags.
    Malformed,
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            WireError::Empty => "empty buffer",
            WireError::NotIp => "not an IP packet of the expected version",
            WireError::Truncated => "buffer shorter than the header",
            WireError::Malformed => "malformed header",
        })
    }
}

impl core::error::Error for WireError {}

/// An IP protocol / IPv6 next-header number. Numbers without a name are kept in
/// [`IpProtocol::Unknown`], so converting back with `u8::from` loses nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpProtocol {
    /// 0: IPv6 hop-by-hop options.
    HopByHop,
    /// 1: ICMP.
    Icmp,
    /// 6: TCP.
    Tcp,
    /// 17: UDP.
    Udp,
    /// 43: IPv6 routing header.
    Routing,
    /// 44: IPv6 fragment header.
    Fragment,
    /// 50: Encapsulating Security Payload.
    Esp,
    /// 51: Authentication Header.
    Ah,
    /// 58: `ICMPv6`.
    Icmpv6,
    /// 59: IPv6 "no next header".
    NoNextHeader,
    /// 60: IPv6 destination options.
    DestinationOptions,
    /// Any other number.
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    fn from(value: u8) -> Self {
        match value {
            0 => IpProtocol::HopByHop,
            1 => IpProtocol::Icmp,
            6 => IpProtocol::Tcp,
            17 => IpProtocol::Udp,
            43 => IpProtocol::Routing,
            44 => IpProtocol::Fragment,
            50 => IpProtocol::Esp,
            51 => IpProtocol::Ah,
            58 => IpProtocol::Icmpv6,
            59 => IpProtocol::NoNextHeader,
            60 => IpProtocol::DestinationOptions,
            other => IpProtocol::Unknown(other),
        }
    }
}

impl From<IpProtocol> for u8 {
    fn from(value: IpProtocol) -> Self {
        match value {
            IpProtocol::HopByHop => 0,
            IpProtocol::Icmp => 1,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Routing => 43,
            IpProtocol::Fragment => 44,
            IpProtocol::Esp => 50,
            IpProtocol::Ah => 51,
            IpProtocol::Icmpv6 => 58,
            IpProtocol::NoNextHeader => 59,
            IpProtocol::DestinationOptions => 60,
            IpProtocol::Unknown(other) => other,
        }
    }
}

/// Panic-free big-endian readers and writers shared by the views. Out-of-range reads return
/// `None`; out-of-range writes do nothing and return `false`.
mod bytes {
    /// The byte at `at`.
    pub(super) fn u8_at(buf: &[u8], at: usize) -> Option<u8> {
        buf.get(at).copied()
    }

    /// The big-endian `u16` at `at..at + 2`.
    pub(super) fn be16(buf: &[u8], at: usize) -> Option<u16> {
        buf.get(at..)?
            .first_chunk::<2>()
            .map(|b| u16::from_be_bytes(*b))
    }

    /// The big-endian `u32` at `at..at + 4`.
    pub(super) fn be32(buf: &[u8], at: usize) -> Option<u32> {
        buf.get(at..)?
            .first_chunk::<4>()
            .map(|b| u32::from_be_bytes(*b))
    }

    /// The `N` bytes at `at..at + N`.
    pub(super) fn array<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
        buf.get(at..)?.first_chunk::<N>().copied()
    }

    /// Writes one byte; `false` when `at` is out of range.
    pub(super) fn set_u8(buf: &mut [u8], at: usize, value: u8) -> bool {
        match buf.get_mut(at) {
            Some(b) => {
                *b = value;
                true
            }
            None => false,
        }
    }

    /// Writes a big-endian `u16`; `false` (and nothing written) when out of range.
    pub(super) fn set_be16(buf: &mut [u8], at: usize, value: u16) -> bool {
        match buf.get_mut(at..).and_then(<[u8]>::first_chunk_mut::<2>) {
            Some(b) => {
                *b = value.to_be_bytes();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_numbers_round_trip() {
        for n in 0..=u8::MAX {
            assert_eq!(u8::from(IpProtocol::from(n)), n);
        }
        assert_eq!(IpProtocol::from(6), IpProtocol::Tcp);
        assert_eq!(IpProtocol::from(200), IpProtocol::Unknown(200));
    }

    #[test]
    fn byte_helpers_never_read_out_of_range() {
        let buf = [1u8, 2, 3];
        assert_eq!(bytes::be16(&buf, 1), Some(0x0203));
        assert_eq!(bytes::be16(&buf, 2), None);
        assert_eq!(bytes::be16(&buf, usize::MAX), None);
        assert_eq!(bytes::be32(&buf, 0), None);
        assert_eq!(bytes::array::<3>(&buf, 0), Some([1, 2, 3]));
        let mut buf = [0u8; 2];
        assert!(!bytes::set_be16(&mut buf, 1, 0xffff));
        assert_eq!(buf, [0, 0]);
        assert!(bytes::set_be16(&mut buf, 0, 0xabcd));
        assert_eq!(buf, [0xab, 0xcd]);
        assert!(!bytes::set_u8(&mut buf, 2, 1));
    }
}
