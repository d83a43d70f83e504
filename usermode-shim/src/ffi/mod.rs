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
