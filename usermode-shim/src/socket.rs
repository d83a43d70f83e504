//! Sockets as the QOS2 API names them, and the endpoints qosmark reads from them (issue 3
//! item 3).
//!
//! * **Unix**: any socket descriptor (`AsFd`); `SOCKET` in the C ABI is the descriptor as
//!   `uintptr_t`.
//! * **Windows**: a Winsock `SOCKET` (`AsSocket` / `RawSocket`).
//!
//! From the socket itself: address family (`AF_INET` / `AF_INET6`), protocol (TCP or UDP, from
//! the socket type; Linux also checks `SO_PROTOCOL`), local address and port
//! (`getsockname`), and the connected peer (`getpeername`; not connected → none). Anything else
//! (not a socket, a unix socket, raw or SCTP sockets) → 87.
//!
//! `DestAddr` follows QOS2 (qos-api.md §5); the engine decides and answers 87:
//! * a connected socket may omit it; if given it must equal the peer (address and port, an
//!   IPv4-mapped IPv6 address equals its IPv4 address);
//! * an unconnected socket must give it; an unconnected UDP socket must be bound (send once,
//!   or `bind`) so its local port is known;
//! * a TCP socket may be registered before `connect`: it marks nothing until its local port is
//!   known (Linux: `qosmarkd` watches the descriptor; Windows: the driver at `ALE_AUTH_CONNECT`);
//! * dual-stack: an `AF_INET6` socket may name an IPv4 or IPv4-mapped destination (qWAVE
//!   answers 87 here; qosmark accepts, qos-api.md §10).
//!
//! Windows cannot report the local address of a socket that is not bound yet (`getsockname`
//! fails with `WSAEINVAL`); the shim then sends the unspecified address of the socket's family
//! with port 0, which is what Unix reports for the same socket.

use crate::error::Result;
use crate::ffi::{os, SocketFacts};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use qosmark_abi::{Family, SocketInfo};

/// A socket as the operating system names it: a file descriptor on Unix.
#[cfg(unix)]
pub type RawSock = std::os::fd::RawFd;
/// A socket as the operating system names it: a Winsock `SOCKET` on Windows.
#[cfg(windows)]
pub type RawSock = std::os::windows::io::RawSocket;

/// Something that owns or borrows a socket: on Unix every `AsFd` (std and `socket2` sockets,
/// `BorrowedFd`), on Windows every `AsSocket`.
pub trait AsQosSocket {
    /// The raw socket value.
    fn raw_socket(&self) -> RawSock;
}

#[cfg(unix)]
impl<T: std::os::fd::AsFd> AsQosSocket for T {
    fn raw_socket(&self) -> RawSock {
        use std::os::fd::AsRawFd;
        self.as_fd().as_raw_fd()
    }
}

#[cfg(windows)]
impl<T: std::os::windows::io::AsSocket> AsQosSocket for T {
    fn raw_socket(&self) -> RawSock {
        use std::os::windows::io::AsRawSocket;
        self.as_socket().as_raw_socket()
    }
}

/// The socket value as the wire carries it (`SocketInfo::socket`).
#[must_use]
pub fn socket_value(raw: RawSock) -> u64 {
    #[cfg(unix)]
    {
        // A valid descriptor is never negative; a negative one is carried as is and refused
        // where it is used.
        u64::from(raw.unsigned_abs())
    }
    #[cfg(windows)]
    {
        raw
    }
}

/// Which socket `raw` names now (`ffi::SocketIdentity`).
pub(crate) fn identity(raw: RawSock) -> crate::ffi::SocketIdentity {
    os::socket_identity(raw)
}

/// Reads what `raw` says about itself and builds the [`SocketInfo`] of an `AddSocketToFlow`.
///
/// # Errors
/// 87 when `raw` is not an `AF_INET` / `AF_INET6` TCP or UDP socket.
pub fn socket_info(raw: RawSock) -> Result<SocketInfo> {
    let facts = os::socket_facts(raw)?;
    Ok(info_from_facts(socket_value(raw), &facts))
}

fn info_from_facts(socket: u64, facts: &SocketFacts) -> SocketInfo {
    let unspecified = match facts.family {
        Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketInfo {
        socket,
        family: facts.family,
        protocol: facts.protocol,
        local: facts
            .local
            .unwrap_or_else(|| SocketAddr::new(unspecified, 0)),
        peer: facts.peer,
    }
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;
    use qosmark_abi::Protocol;
    use std::net::{TcpListener, TcpStream, UdpSocket};

    #[test]
    fn udp_v4_bound_unconnected() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let i = socket_info(s.raw_socket()).unwrap();
        assert_eq!(i.family, Family::V4);
        assert_eq!(i.protocol, Protocol::Udp);
        assert_eq!(i.local, s.local_addr().unwrap());
        assert_eq!(i.peer, None);
    }

    #[test]
    fn udp_v6_connected() {
        let s = UdpSocket::bind("[::1]:0").unwrap();
        s.connect("[::1]:9").unwrap();
        let i = socket_info(s.raw_socket()).unwrap();
        assert_eq!(i.family, Family::V6);
        assert_eq!(i.peer, Some("[::1]:9".parse().unwrap()));
    }

    #[test]
    fn tcp_connected_both_ends() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let i = socket_info(c.raw_socket()).unwrap();
        assert_eq!(i.protocol, Protocol::Tcp);
        assert_eq!(i.local, c.local_addr().unwrap());
        assert_eq!(i.peer, Some(l.local_addr().unwrap()));
        // The listener: bound, not connected.
        let i = socket_info(l.raw_socket()).unwrap();
        assert_eq!(i.peer, None);
    }
}
