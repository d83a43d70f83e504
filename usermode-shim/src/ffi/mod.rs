//! Every `unsafe` line of the crate lives under this module: the operating-system calls
//! (`os_unix` with `libc`, `os_windows` with `windows-sys`) and the exported C ABI (`capi`,
//! which must read and write the caller's pointers). Each `unsafe` block carries a `SAFETY`
//! comment; the rest of the crate is safe Rust (`#![deny(unsafe_code)]` at the crate root).

#![allow(unsafe_code, reason = "the FFI boundary: documented per block")]

use core::net::SocketAddr;
use qosmark_abi::{Family, Protocol};

pub mod capi;
#[cfg(unix)]
pub(crate) mod os_unix;
#[cfg(unix)]
pub(crate) use os_unix as os;
#[cfg(windows)]
pub(crate) mod os_windows;
#[cfg(windows)]
pub(crate) use os_windows as os;

/// Which socket a socket value names now, so that a value the application closed and got
/// again for another socket is not taken for the first one (GQoS keeps per-socket state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SocketIdentity {
    /// A socket with this unique identity (Linux: `SO_COOKIE`, never reused while the
    /// system runs; other Unix: the socket's inode number).
    #[cfg_attr(
        windows,
        allow(dead_code, reason = "Winsock gives a socket no identity to read")
    )]
    Id(u64),
    /// A socket whose identity the system does not tell (Windows).
    #[cfg_attr(
        not(windows),
        allow(dead_code, reason = "only Windows sockets have no identity to read")
    )]
    Open,
    /// Not a socket (closed, or never one).
    Closed,
}

impl SocketIdentity {
    /// Whether a socket seen as `self` earlier may be the one seen as `now`: never once the
    /// value is closed, never when both identities are known and differ.
    pub(crate) fn same_as(self, now: SocketIdentity) -> bool {
        match (self, now) {
            (_, SocketIdentity::Closed) | (SocketIdentity::Closed, _) => false,
            (SocketIdentity::Id(a), SocketIdentity::Id(b)) => a == b,
            _ => true,
        }
    }
}

/// What a socket says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SocketFacts {
    /// `AF_INET` or `AF_INET6`.
    pub(crate) family: Family,
    /// TCP or UDP.
    pub(crate) protocol: Protocol,
    /// Local address; `None` when the system cannot tell because the socket is not bound yet
    /// (Windows answers `WSAEINVAL`); Unix reports `0.0.0.0:0` / `[::]:0` instead.
    pub(crate) local: Option<SocketAddr>,
    /// Connected peer.
    pub(crate) peer: Option<SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::SocketIdentity::{Closed, Id, Open};

    #[test]
    fn identities_match_only_when_nothing_says_otherwise() {
        assert!(Id(7).same_as(Id(7)));
        assert!(!Id(7).same_as(Id(8)));
        assert!(Open.same_as(Open));
        assert!(Open.same_as(Id(3)) && Id(3).same_as(Open));
        for a in [Id(7), Open, Closed] {
            assert!(!a.same_as(Closed) && !Closed.same_as(a));
        }
    }
}
