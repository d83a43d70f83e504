//! The only module of `qosmarkd` with `unsafe`: thin, checked wrappers around the few libc
//! calls std does not offer (peer credentials, `SCM_RIGHTS`, socket introspection, netlink,
//! `recvmmsg`, signal masks). Every wrapper returns `io::Result` from `errno`; every unsafe
//! block performs one call and says why its pointers and lengths are valid.
//!
//! Nothing here interprets protocol bytes: that is `nfq` (netlink) and `control` (records).
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `-1` → the current `errno` as an `io::Error`.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// `socklen_t` of a type (all our structures are a few hundred bytes at most).
fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

/// The effective user id of this process.
#[must_use]
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

/// Credentials of the peer of a connected unix socket (`SO_PEERCRED`), as (pid, uid, gid).
///
/// # Errors
/// The `getsockopt` error.
pub fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<(u32, u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = socklen_of::<libc::ucred>();
    // SAFETY: `cred` is a live, writable `ucred` and `len` holds its exact size, which is what
    // SO_PEERCRED writes; the kernel never writes more than `len` bytes.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    check(ret)?;
    Ok((u32::try_from(cred.pid).unwrap_or(0), cred.uid, cred.gid))
}

/// An integer socket option (`getsockopt`).
///
/// # Errors
/// The `getsockopt` error.
pub fn get_int_option(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = socklen_of::<libc::c_int>();
    // SAFETY: `value` is a writable c_int and `len` its size; the options we read are ints.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    check(ret)?;
    Ok(value)
}

/// Sets an integer socket option (`setsockopt`).
///
/// # Errors
/// The `setsockopt` error.
pub fn set_int_option(fd: BorrowedFd<'_>, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the option value is a c_int read from a live local for exactly its size.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            socklen_of::<libc::c_int>(),
        )
    };
    check(ret).map(|_| ())
}

/// Converts a filled `sockaddr_storage` of an inet family into a `SocketAddr`.
fn storage_to_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = usize::try_from(len).ok()?;
    match i32::from(storage.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and sockaddr_storage is
            // sized and aligned for every sockaddr type; read_unaligned needs no alignment.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read_unaligned(std::ptr::from_ref(storage).cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read_unaligned(std::ptr::from_ref(storage).cast()) };
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

/// Which of `getsockname` / `getpeername`.
#[derive(Clone, Copy)]
enum NameKind {
    Local,
    Peer,
}

fn socket_name(fd: BorrowedFd<'_>, kind: NameKind) -> io::Result<Option<SocketAddr>> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = socklen_of::<libc::sockaddr_storage>();
    let ret = match kind {
        // SAFETY: `storage` is writable for `len` bytes (its full size); the kernel writes at
        // most `len` bytes and updates `len`.
        NameKind::Local => unsafe {
            libc::getsockname(fd.as_raw_fd(), storage.as_mut_ptr().cast(), &raw mut len)
        },
        // SAFETY: as above.
        NameKind::Peer => unsafe {
            libc::getpeername(fd.as_raw_fd(), storage.as_mut_ptr().cast(), &raw mut len)
        },
    };
    match check(ret) {
        Ok(_) => {}
        Err(e) if matches!(kind, NameKind::Peer) && e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    // SAFETY: zero-initialised above and possibly (partly) overwritten by the kernel: every bit
    // pattern is a valid sockaddr_storage.
    let storage = unsafe { storage.assume_init() };
    Ok(storage_to_addr(&storage, len))
}

/// `getsockname` of an inet socket (`None` for other families).
///
/// # Errors
/// The `getsockname` error.
pub fn local_address(fd: BorrowedFd<'_>) -> io::Result<Option<SocketAddr>> {
    socket_name(fd, NameKind::Local)
}

/// `getpeername` of an inet socket: `None` when not connected (or another family).
///
/// # Errors
/// The `getpeername` error other than `ENOTCONN`.
pub fn peer_address(fd: BorrowedFd<'_>) -> io::Result<Option<SocketAddr>> {
    socket_name(fd, NameKind::Peer)
}

/// Room for this many descriptors in one `recvmsg`; more are refused (the request fails).
pub const MAX_FDS: usize = 4;

/// Control buffer for [`MAX_FDS`] descriptors, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// What [`recv_with_fds`] read.
#[derive(Debug)]
pub struct Received {
    /// Bytes read into the buffer (0 = end of stream).
    pub len: usize,
    /// The kernel had more descriptors than room: some were discarded.
    pub truncated_fds: bool,
}

/// `recvmsg` on a stream socket: bytes into `buf`, descriptors passed with `SCM_RIGHTS`
/// appended to `fds` (owned: they close when dropped). `MSG_CMSG_CLOEXEC` is set.
///
/// # Errors
/// The `recvmsg` error (`EINTR` is retried).
pub fn recv_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<Received> {
    let mut cmsg = CmsgBuf([0; 64]);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space =
        unsafe { libc::CMSG_SPACE(u32::try_from(MAX_FDS * size_of::<RawFd>()).unwrap_or(0)) };
    let space = (space as usize).min(cmsg.0.len());
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: `iov` describes `buf` (writable, its exact length) and the control buffer is
        // writable for `space` bytes; both outlive the call.
        let ret = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
        let len = match check_size(ret) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        collect_fds(&msg, fds);
        return Ok(Received {
            len,
            truncated_fds: msg.msg_flags & libc::MSG_CTRUNC != 0,
        });
    }
}

/// Takes ownership of every descriptor in the `SCM_RIGHTS` messages of `msg`.
fn collect_fds(msg: &libc::msghdr, fds: &mut Vec<OwnedFd>) {
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR only reads its control fields.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return null or a header wholly inside the control
        // buffer the kernel filled; read_unaligned tolerates any alignment.
        let hdr: libc::cmsghdr = unsafe { std::ptr::read_unaligned(cmsg) };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure size computation.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = hdr.cmsg_len.saturating_sub(header) / size_of::<RawFd>();
            // SAFETY: the data of this header starts at CMSG_DATA and holds `count` ints, all
            // inside the control buffer (the kernel wrote `cmsg_len` bytes for it).
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            for i in 0..count {
                let at = data
                    .wrapping_add(i * size_of::<RawFd>())
                    .cast::<[u8; size_of::<RawFd>()]>();
                // SAFETY: `i < count`, so the int's bytes at `at` lie within the data above.
                let raw = RawFd::from_ne_bytes(unsafe { std::ptr::read_unaligned(at) });
                if raw >= 0 {
                    // SAFETY: SCM_RIGHTS installed this descriptor in our table for us; nothing
                    // else owns it, so OwnedFd may close it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        // SAFETY: `cmsg` is a valid header of `msg` (checked non-null above).
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and the threads it spawns later),
/// so that [`wait_for_signal`] can take them synchronously.
///
/// # Errors
/// The `pthread_sigmask` error.
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is an initialised sigset; the old mask is not requested (null).
    let ret =
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut()) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(ret))
    }
}

fn termination_set() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the whole set it is given.
    unsafe { libc::sigemptyset(set.as_mut_ptr()) };
    // SAFETY: initialised by sigemptyset just above.
    let mut set = unsafe { set.assume_init() };
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: `set` is an initialised sigset and `sig` a valid signal number.
        unsafe { libc::sigaddset(&raw mut set, sig) };
    }
    set
}

/// Waits for SIGTERM, SIGINT or SIGHUP (blocked beforehand) and returns its number.
///
/// # Errors
/// The `sigwait` error.
pub fn wait_for_signal() -> io::Result<i32> {
    let set = termination_set();
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is initialised and `sig` writable.
    let ret = unsafe { libc::sigwait(&raw const set, &raw mut sig) };
    if ret == 0 {
        Ok(sig)
    } else {
        Err(io::Error::from_raw_os_error(ret))
    }
}

/// The socket's cookie (`SO_COOKIE`): a 64-bit number the kernel gives each socket, never
/// reused while the system runs (`sock_diag` reports it too).
///
/// # Errors
/// The `getsockopt` error.
pub fn socket_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = socklen_of::<u64>();
    // SAFETY: `value` is a writable u64 and `len` its size; SO_COOKIE writes a u64.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    check(ret)?;
    Ok(value)
}

/// A `NETLINK_NETFILTER` socket bound to an address the kernel picks.
///
/// # Errors
/// The `socket` or `bind` error.
pub fn netlink_netfilter_socket() -> io::Result<OwnedFd> {
    netlink_socket(libc::NETLINK_NETFILTER)
}

/// A netlink socket of `protocol` bound to an address the kernel picks.
///
/// # Errors
/// The `socket` or `bind` error.
pub fn netlink_socket(protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the result is checked below.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    let raw = check(raw)?;
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_nl is plain data; zero = "kernel assigns the port id, no groups".
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `addr` is a valid sockaddr_nl passed with its exact size.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            socklen_of::<libc::sockaddr_nl>(),
        )
    };
    check(ret)?;
    Ok(fd)
}

/// Sends one datagram (netlink: to the kernel, the socket's default destination).
///
/// # Errors
/// The `send` error (`EINTR` retried).
pub fn send_datagram(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `bytes` is readable for its length for the duration of the call.
        let ret = unsafe { libc::send(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        match check_size(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Receives one datagram into `buf`; returns its length and whether it was truncated.
///
/// # Errors
/// The `recv` error (`EINTR` retried).
pub fn recv_datagram(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, bool)> {
    loop {
        // SAFETY: `buf` is writable for its length for the duration of the call.
        let ret = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        match check_size(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
            Ok(n) => return Ok((n.min(buf.len()), n > buf.len())),
        }
    }
}

/// Preallocated state for [`MultiRecv::recv`]: one `mmsghdr` + `iovec` per slot. Built once; the
/// buffers it points into are passed at each call, so nothing dangles between calls.
pub struct MultiRecv {
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
}

// SAFETY: the raw pointers inside are only scratch space rewritten before every use, on the
// one thread that owns this value at a time.
unsafe impl Send for MultiRecv {}

impl MultiRecv {
    /// Room for `slots` datagrams per call.
    #[must_use]
    pub fn new(slots: usize) -> Self {
        let iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // SAFETY: mmsghdr is plain data; all-zero is a valid empty value.
        let hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        MultiRecv {
            headers: vec![hdr; slots],
            iovecs: vec![iov; slots],
        }
    }

    /// `recvmmsg` with `MSG_WAITFORONE`: blocks for the first datagram, then takes whatever else
    /// is already queued, up to one per buffer. `lens[i]` receives the length of datagram `i`
    /// and `truncated[i]` whether it did not fit. Returns the number of datagrams.
    ///
    /// # Errors
    /// The `recvmmsg` error (`EINTR` retried).
    pub fn recv(
        &mut self,
        fd: BorrowedFd<'_>,
        buffers: &mut [Vec<u8>],
        lens: &mut [usize],
        truncated: &mut [bool],
    ) -> io::Result<usize> {
        let n = buffers
            .len()
            .min(self.headers.len())
            .min(lens.len())
            .min(truncated.len());
        for ((buf, iov), hdr) in buffers
            .iter_mut()
            .zip(self.iovecs.iter_mut())
            .zip(self.headers.iter_mut())
            .take(n)
        {
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = buf.len();
            // SAFETY: msghdr is plain data; all-zero is a valid empty value.
            hdr.msg_hdr = unsafe { std::mem::zeroed() };
            hdr.msg_hdr.msg_iov = std::ptr::from_mut(iov);
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_len = 0;
        }
        let count = u32::try_from(n).unwrap_or(u32::MAX);
        let got = loop {
            // SAFETY: the first `n` headers each point at one iovec describing a distinct,
            // writable buffer of `buffers` (exact length); all outlive the call.
            let ret = unsafe {
                libc::recvmmsg(
                    fd.as_raw_fd(),
                    self.headers.as_mut_ptr(),
                    count,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            match check(ret) {
                Ok(k) => break usize::try_from(k).unwrap_or(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        for (i, hdr) in self.headers.iter().enumerate().take(got.min(n)) {
            let len = hdr.msg_len as usize;
            if let (Some(l), Some(t), Some(b)) =
                (lens.get_mut(i), truncated.get_mut(i), buffers.get(i))
            {
                *l = len.min(b.len());
                *t = hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            }
        }
        Ok(got.min(n))
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock the packet thread gives the engine and releases
/// held packets by (system-wide, so tests in other namespaces can compare against it).
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live local; CLOCK_MONOTONIC always
    // exists on Linux, so it cannot fail.
    let _ = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut t) };
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
}

/// Waits until `fd` is readable or `timeout_ns` nanoseconds pass (`ppoll`, a high-resolution
/// timeout, unlike `SO_RCVTIMEO`'s jiffies); returns whether it is readable. `EINTR` counts as
/// "not readable" (the caller loops anyway).
///
/// # Errors
/// The `ppoll` error.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout_ns: u64) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout_ns / 1_000_000_000).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::try_from(timeout_ns % 1_000_000_000).unwrap_or(0),
    };
    // SAFETY: one pollfd and one timespec, both live locals for the duration of the call; no
    // signal mask (null) is passed.
    let ret = unsafe { libc::ppoll(&raw mut pfd, 1, &raw const ts, std::ptr::null()) };
    match check(ret) {
        Ok(n) => Ok(n > 0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sets `FD_CLOEXEC`-free, blocking semantics are std's default; this sets a receive timeout.
///
/// # Errors
/// The `setsockopt` error.
pub fn set_recv_timeout(fd: BorrowedFd<'_>, millis: u32) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::from(millis / 1000),
        tv_usec: libc::suseconds_t::from((millis % 1000) * 1000),
    };
    // SAFETY: the option value is a timeval read from a live local for exactly its size.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            socklen_of::<libc::timeval>(),
        )
    };
    check(ret).map(|_| ())
}

/// Whether the peer of the stream socket `fd` hung up (`poll` with no wait: `POLLHUP`,
/// `POLLRDHUP` or `POLLERR`). Unread data alone is not a hang-up.
///
/// # Errors
/// The `poll` error.
pub fn peer_hung_up(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one pollfd read and written in place, from a live local; timeout 0 (no wait).
    let ret = unsafe { libc::poll(&raw mut p, 1, 0) };
    check(ret)?;
    Ok(p.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0)
}

/// Sends SIGTERM to this process (a fatal error on a worker thread asks the main thread,
/// which waits for signals, to clean up and exit).
pub fn terminate_self() {
    // SAFETY: getpid cannot fail; kill with our own pid and a valid signal number touches no
    // memory of ours.
    let pid = unsafe { libc::getpid() };
    // SAFETY: as above.
    let _ = unsafe { libc::kill(pid, libc::SIGTERM) };
}

/// Puts the calling thread in the `SCHED_FIFO` real-time class at `priority` (1..=99), so
/// it preempts every normal thread (the kernel's real-time throttling, 95 % of each second
/// by default, still keeps the rest of the system alive).
///
/// # Errors
/// The `pthread_setschedparam` error (`EPERM` without `CAP_SYS_NICE`, for instance).
pub fn set_thread_realtime(priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pthread_self has no preconditions and names the calling thread, which is alive.
    let me = unsafe { libc::pthread_self() };
    // SAFETY: `me` is the calling thread and `param` a valid sched_param that outlives the
    // call; the call changes only that thread's scheduling.
    let ret = unsafe { libc::pthread_setschedparam(me, libc::SCHED_FIFO, &raw const param) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(ret))
    }
}

/// Sets the nice value of the calling thread (Linux schedules threads individually).
///
/// # Errors
/// The `setpriority` error.
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    let tid = libc::id_t::try_from(tid).map_err(|_| io::Error::other("thread id"))?;
    // SAFETY: PRIO_PROCESS with a thread id of this process changes only that thread.
    let ret = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
    check(ret).map(|_| ())
}

/// Raises the soft limit on open descriptors to the hard limit (every client connection and
/// every pending TCP socket is one descriptor); returns the (old, new) soft limit.
///
/// # Errors
/// The `getrlimit` / `setrlimit` error.
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a writable rlimit.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) })?;
    let old = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is an initialised rlimit read by the call.
        check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) })?;
    }
    Ok((old, lim.rlim_cur))
}

/// A mutual-exclusion lock with **priority inheritance** (`pthread_mutex_t` with
/// `PTHREAD_PRIO_INHERIT`, a PI futex in the kernel) that owns its data.
///
/// While a higher-priority thread (the `SCHED_FIFO` packet thread) waits for it, the kernel
/// runs the holder at the waiter's priority, so a holder of normal priority that other
/// runnable threads would keep off the CPU finishes its section at once. Not recursive: a
/// thread that locks it twice deadlocks (the engine lock never does; see `crate::lock`).
///
/// The `pthread_mutex_t` lives in its own heap allocation: POSIX forbids moving an
/// initialised mutex, and the lock itself may move (into an `Arc`, for instance).
pub struct PiMutex<T> {
    raw: Box<std::cell::UnsafeCell<libc::pthread_mutex_t>>,
    data: std::cell::UnsafeCell<T>,
}

// SAFETY: the lock hands out `&T`/`&mut T` only to the one thread holding the mutex, so
// sharing it between threads is sound exactly when `T` may be sent between them (as for
// `std::sync::Mutex`). The raw mutex is made for sharing between threads.
unsafe impl<T: Send> Sync for PiMutex<T> {}
// SAFETY: moving the lock moves `T` (hence `T: Send`); the raw mutex is boxed and does not
// move, and no guard can exist while the lock is moved (a guard borrows it).
unsafe impl<T: Send> Send for PiMutex<T> {}

/// Exclusive access to a [`PiMutex`]'s data until dropped. Not `Send`: a PI mutex must be
/// unlocked by the thread that locked it.
#[must_use = "the lock is released when the guard is dropped"]
pub struct PiGuard<'a, T> {
    lock: &'a PiMutex<T>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl<T> PiMutex<T> {
    /// A new, unlocked priority-inheritance mutex owning `value`.
    ///
    /// # Errors
    /// The `pthread_mutexattr_*` / `pthread_mutex_init` error (a kernel without PI futexes
    /// gives `ENOTSUP` here).
    pub fn new(value: T) -> io::Result<Self> {
        let mut attr = MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: `attr` is writable storage of the right type for the call to initialise.
        let ret = unsafe { libc::pthread_mutexattr_init(attr.as_mut_ptr()) };
        if ret != 0 {
            return Err(io::Error::from_raw_os_error(ret));
        }
        let attr = attr.as_mut_ptr();
        // SAFETY: `attr` was initialised by pthread_mutexattr_init above.
        let ret = unsafe { libc::pthread_mutexattr_setprotocol(attr, libc::PTHREAD_PRIO_INHERIT) };
        let raw = Box::new(std::cell::UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER));
        let ret = if ret == 0 {
            // SAFETY: `raw` is boxed storage for a mutex that nobody uses yet and that never
            // moves afterwards; `attr` is an initialised attribute object.
            unsafe { libc::pthread_mutex_init(raw.get(), attr) }
        } else {
            ret
        };
        // SAFETY: `attr` is initialised and no longer needed (the mutex copied what it needs).
        let _ = unsafe { libc::pthread_mutexattr_destroy(attr) };
        if ret != 0 {
            return Err(io::Error::from_raw_os_error(ret));
        }
        Ok(PiMutex {
            raw,
            data: std::cell::UnsafeCell::new(value),
        })
    }

    /// Takes the lock, waiting for it (the holder inherits our priority meanwhile).
    ///
    /// The only errors `pthread_mutex_lock` can give for this mutex (not robust, not
    /// error-checking, initialised) mean a bug here — a relock by the holder, memory
    /// corruption — so they end the process (packets then pass through `--queue-bypass`).
    pub fn lock(&self) -> PiGuard<'_, T> {
        // SAFETY: the mutex was initialised in `new` and lives (boxed, unmoved) as long as
        // `self`, which outlives the guard that will unlock it.
        let ret = unsafe { libc::pthread_mutex_lock(self.raw.get()) };
        if ret != 0 {
            crate::log(&format!(
                "FATAL: pthread_mutex_lock on the engine lock failed: {}",
                io::Error::from_raw_os_error(ret)
            ));
            std::process::abort();
        }
        PiGuard {
            lock: self,
            _not_send: std::marker::PhantomData,
        }
    }

    /// Takes the lock if it is free at once.
    pub fn try_lock(&self) -> Option<PiGuard<'_, T>> {
        // SAFETY: as in `lock`; trylock never blocks.
        let ret = unsafe { libc::pthread_mutex_trylock(self.raw.get()) };
        // Lazily: a guard built for a failed attempt would unlock the holder's mutex on drop.
        (ret == 0).then(|| PiGuard {
            lock: self,
            _not_send: std::marker::PhantomData,
        })
    }
}

impl<T> Drop for PiMutex<T> {
    fn drop(&mut self) {
        // SAFETY: `&mut self` proves no guard exists, so the mutex is unlocked and unused; it
        // is destroyed once, here.
        let _ = unsafe { libc::pthread_mutex_destroy(self.raw.get()) };
    }
}

impl<T> std::ops::Deref for PiGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard holds the mutex, so no other reference to the data exists
        // except through this guard, whose borrow rules `&self` follows.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> std::ops::DerefMut for PiGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for PiGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this guard locked the mutex on this thread (guards are not `Send`), and
        // unlocks it exactly once.
        let ret = unsafe { libc::pthread_mutex_unlock(self.lock.raw.get()) };
        debug_assert_eq!(ret, 0, "pthread_mutex_unlock of a held PI mutex");
    }
}

/// Pins the calling thread to CPU `cpu` (tests that need threads to compete for one CPU).
///
/// # Errors
/// The `sched_setaffinity` error.
pub fn pin_thread_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of `set`, a valid cpu_set_t; out-of-range numbers are
    // ignored by libc's implementation (it checks against the set's size).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size given; pid 0 names the calling thread.
    let ret = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) };
    check(ret).map(|_| ())
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`).
#[must_use]
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a writable timespec; the clock id is a valid constant.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    if ret != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}
