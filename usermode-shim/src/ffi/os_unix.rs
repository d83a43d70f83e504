//! Unix system calls: what a socket descriptor says about itself, and `sendmsg` with
//! `SCM_RIGHTS`.

use super::{SocketFacts, SocketIdentity};
use crate::error::{QosError, Result};
use core::mem::{size_of, MaybeUninit};
use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use qosmark_abi::{Family, Protocol};
use std::io;
use std::os::fd::RawFd;

/// A `sockaddr_storage` filled by the kernel, as a std address. `None` for other families.
fn to_socket_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = usize::try_from(len).ok()?;
    match i32::from(storage.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family is AF_INET and the kernel wrote at least
            // sizeof(sockaddr_in) bytes; sockaddr_storage is large and aligned enough for any
            // sockaddr type, so reading it as sockaddr_in is valid.
            let sin = unsafe { &*core::ptr::from_ref(storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for AF_INET6 and sockaddr_in6.
            let sin6 = unsafe { &*core::ptr::from_ref(storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

type NameFn =
    unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

/// `getsockname` / `getpeername` into a `sockaddr_storage`.
fn name_of(fd: RawFd, f: NameFn) -> io::Result<(libc::sockaddr_storage, libc::socklen_t)> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` is a writable buffer of `len` bytes and `len` is a valid in/out
    // length; the call writes at most `len` bytes and updates `len`.
    let rc = unsafe { f(fd, storage.as_mut_ptr().cast(), &raw mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialized above, so every byte is initialized whatever the kernel wrote.
    let storage = unsafe { storage.assume_init() };
    Ok((storage, len))
}

fn int_option(fd: RawFd, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is a writable c_int and `len` its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Family, protocol, local address and connected peer of socket `fd`.
///
/// Not a socket, or not an `AF_INET` / `AF_INET6` TCP or UDP socket → 87 (as qWAVE answers a
/// bad `Socket`).
pub(crate) fn socket_facts(fd: RawFd) -> Result<SocketFacts> {
    let bad = QosError::INVALID_PARAMETER;
    let (storage, len) = name_of(fd, libc::getsockname).map_err(|_| bad)?;
    let local = to_socket_addr(&storage, len).ok_or(bad)?;
    let family = if local.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    let protocol = match int_option(fd, libc::SO_TYPE).map_err(|_| bad)? {
        libc::SOCK_STREAM => Protocol::Tcp,
        libc::SOCK_DGRAM => Protocol::Udp,
        _ => return Err(bad),
    };
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SCTP and friends also use SOCK_STREAM / SOCK_DGRAM.
        let p = int_option(fd, libc::SO_PROTOCOL).map_err(|_| bad)?;
        if p != i32::from(protocol.number()) {
            return Err(bad);
        }
    }
    let peer = match name_of(fd, libc::getpeername) {
        Ok((storage, len)) => to_socket_addr(&storage, len),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => None,
        Err(_) => return Err(bad),
    };
    Ok(SocketFacts {
        family,
        protocol,
        local: Some(local),
        peer,
    })
}

/// Which socket `fd` is now (`SocketIdentity`): Linux's `SO_COOKIE` (a 64-bit number the
/// kernel gives each socket once, socket(7)), elsewhere the inode of the descriptor when it is
/// a socket; `Closed` when `fd` is not a socket.
pub(crate) fn socket_identity(fd: RawFd) -> SocketIdentity {
    #[cfg(target_os = "linux")]
    {
        let mut cookie: u64 = 0;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: `cookie` is a writable u64 and `len` its size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&raw mut cookie).cast(),
                &raw mut len,
            )
        };
        if rc == 0 && len as usize == size_of::<u64>() {
            return SocketIdentity::Id(cookie);
        }
        if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::ENOPROTOOPT) {
            return SocketIdentity::Closed;
        }
    }
    // SAFETY: an all-zero `stat` is a valid value; `fstat` fills it when it succeeds.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: `st` is a writable `stat`.
    if unsafe { libc::fstat(fd, &raw mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return SocketIdentity::Closed;
    }
    #[allow(
        clippy::useless_conversion,
        reason = "st_ino is u64 on Linux, narrower on some other Unix systems"
    )]
    SocketIdentity::Id(u64::from(st.st_ino))
}

/// Sends all of `bytes` on the stream socket `fd`; the first `sendmsg` carries `attach` as
/// `SCM_RIGHTS` (exactly one descriptor) when given. Retries on `EINTR`.
pub(crate) fn send_record(fd: RawFd, bytes: &[u8], attach: Option<RawFd>) -> io::Result<()> {
    let mut sent = 0usize;
    let mut attach = attach;
    // Control buffer for one descriptor, aligned for cmsghdr.
    let mut control = [0u64; 8];
    while sent < bytes.len() {
        let rest = bytes.get(sent..).unwrap_or_default();
        let mut iov = libc::iovec {
            iov_base: rest.as_ptr().cast_mut().cast(),
            iov_len: rest.len(),
        };
        // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        if let Some(passed) = attach {
            // SAFETY: CMSG_SPACE only computes a size.
            let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
            if space > size_of::<[u64; 8]>() {
                return Err(io::Error::from(io::ErrorKind::InvalidInput));
            }
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: msg_control points to `space` writable, aligned bytes, so the first
            // header exists and is non-null.
            let cmsg = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
            if cmsg.is_null() {
                return Err(io::Error::from(io::ErrorKind::InvalidInput));
            }
            // SAFETY: `cmsg` points into `control` (checked non-null above) with room for a
            // header and one descriptor (CMSG_SPACE); `control` is aligned for cmsghdr.
            let header = unsafe { &mut *cmsg };
            header.cmsg_level = libc::SOL_SOCKET;
            header.cmsg_type = libc::SCM_RIGHTS;
            // SAFETY: CMSG_LEN only computes a size.
            header.cmsg_len = unsafe { libc::CMSG_LEN(size_of::<RawFd>() as u32) } as _;
            // SAFETY: the data of the header above lies inside `control` (CMSG_SPACE).
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            // SAFETY: `data` has room for one descriptor; unaligned write.
            unsafe { core::ptr::write_unaligned(data.cast::<RawFd>(), passed) };
        }
        // SAFETY: `msg` points to a valid iovec over `rest` and, when set, to the control
        // buffer filled above; both outlive the call.
        let n = unsafe { libc::sendmsg(fd, &raw const msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // The descriptor went with the first byte(s).
        attach = None;
        sent += usize::try_from(n).unwrap_or(0);
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
    }
    Ok(())
}

/// Reads a `sockaddr_in` / `sockaddr_in6` of the platform layout from `bytes`; 87 for an
/// unknown family or a short buffer.
pub(crate) fn sockaddr_from_bytes(bytes: &[u8]) -> Result<SocketAddr> {
    let bad = QosError::INVALID_PARAMETER;
    let family = bytes
        .first_chunk::<2>()
        .map(|b| u16::from_ne_bytes(*b))
        .ok_or(bad)?;
    parse_sockaddr(i32::from(family), bytes).ok_or(bad)
}

/// Size of the platform's `sockaddr_in` / `sockaddr_in6` for `family` (bytes to read behind a
/// `PSOCKADDR`); `None` for other families.
pub(crate) fn sockaddr_len(family: u16) -> Option<usize> {
    match i32::from(family) {
        libc::AF_INET => Some(size_of::<libc::sockaddr_in>()),
        libc::AF_INET6 => Some(size_of::<libc::sockaddr_in6>()),
        _ => None,
    }
}

/// Field-by-field parse of the C layout (`sin_port` and `sin6_flowinfo` in network order,
/// `sin6_scope_id` in host order), so no alignment is assumed.
fn parse_sockaddr(family: i32, b: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes(*b.get(2..4)?.first_chunk::<2>()?);
    match family {
        libc::AF_INET => {
            let a: [u8; 4] = *b.get(4..8)?.first_chunk::<4>()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(*b.get(4..8)?.first_chunk::<4>()?);
            let a: [u8; 16] = *b.get(8..24)?.first_chunk::<16>()?;
            let scope = u32::from_ne_bytes(*b.get(24..28)?.first_chunk::<4>()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

/// Test servers only: reads up to `buf.len()` bytes with `recvmsg` and returns them with the
/// descriptors that arrived by `SCM_RIGHTS` (at most 4 per call).
#[cfg(test)]
pub(crate) fn recv_with_fds(
    fd: RawFd,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<std::os::fd::OwnedFd>)> {
    use std::os::fd::FromRawFd;
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 16]>() as _;
    // SAFETY: `msg` points to `buf` and `control`, both writable and alive for the call.
    let n = unsafe { libc::recvmsg(fd, &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR reads its control fields.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
    while !cmsg.is_null() {
        // SAFETY: non-null header inside `control`, as recvmsg laid it out.
        let h = unsafe { &*cmsg };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) only computes a size.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (h.cmsg_len as usize).saturating_sub(header) / size_of::<RawFd>();
            // SAFETY: the data of this header lies inside `control`.
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            for i in 0..count {
                // SAFETY: `count` descriptors follow the header (cmsg_len says so).
                let at = unsafe { data.add(i * size_of::<RawFd>()) };
                // SAFETY: `at` is inside the descriptor array; read without alignment.
                let raw = unsafe { at.cast::<RawFd>().read_unaligned() };
                // SAFETY: the kernel installed `raw` for us; we own it from now on.
                fds.push(unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: advancing within the control buffer recvmsg filled.
        cmsg = unsafe { libc::CMSG_NXTHDR(&raw const msg, cmsg) };
    }
    Ok((usize::try_from(n).unwrap_or(0), fds))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn sockaddr_bytes_parse_like_the_kernel_writes_them() {
        let s = UdpSocket::bind("[::1]:0").unwrap();
        let (storage, len) = name_of(s.as_raw_fd(), libc::getsockname).unwrap();
        let kernel = to_socket_addr(&storage, len).unwrap();
        // The same bytes read through the byte parser (what a C caller's PSOCKADDR holds).
        let raw = core::ptr::from_ref(&storage).cast::<u8>();
        // SAFETY: test: `storage` is a live sockaddr_storage of at least `len` bytes.
        let bytes = unsafe { core::slice::from_raw_parts(raw, len as usize) };
        assert_eq!(sockaddr_from_bytes(bytes).unwrap(), kernel);
        assert_eq!(kernel, s.local_addr().unwrap());
    }

    #[test]
    fn not_a_socket_is_87() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(
            socket_facts(f.as_raw_fd()),
            Err(QosError::INVALID_PARAMETER)
        );
    }
}
