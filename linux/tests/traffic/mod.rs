//! Shared by the soak, kill and throughput tests: datagrams that carry the TOS they must arrive
//! with, and a receiver that judges each one from the TOS / Traffic Class the kernel reports
//! for it (`IP_RECVTOS`, `IPV6_RECVTCLASS`), counting per flow what arrived and what arrived
//! wrong.
//!
//! A datagram is `[flow u32][seq u32][expect u8]` (native byte order, both ends are this
//! process). `expect` is the exact TOS byte the packet must carry, or [`UNCHECKED`] when the
//! sender could not know it at send time (the flow was changing state). Sent and received
//! counts per flow give the loss.
#![allow(dead_code, reason = "each test file uses part of this module")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::missing_panics_doc,
    clippy::must_use_candidate,
    clippy::cast_possible_truncation,
    reason = "test harness: a panic is a test failure with its message"
)]

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `expect` value of a datagram whose mark is not judged.
pub const UNCHECKED: u8 = 0xff;

/// Datagram length.
pub const LEN: usize = 9;

/// Encodes one datagram.
pub fn datagram(flow: u32, seq: u32, expect: u8) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..4].copy_from_slice(&flow.to_ne_bytes());
    b[4..8].copy_from_slice(&seq.to_ne_bytes());
    b[8] = expect;
    b
}

/// Per-flow counts filled by the receivers.
pub struct Tally {
    /// Datagrams received per flow.
    pub received: Vec<AtomicU64>,
    /// Datagrams whose TOS differed from their `expect`, per flow.
    pub wrong: Vec<AtomicU64>,
    /// Datagrams received with a judged `expect`, per flow.
    pub checked: Vec<AtomicU64>,
    /// Datagrams received whose TOS had a non-zero DSCP, per flow.
    pub marked: Vec<AtomicU64>,
    /// The first wrong datagrams, described.
    pub examples: Mutex<Vec<String>>,
    /// Datagrams with an unknown flow number or a short payload.
    pub garbage: AtomicU64,
    /// Sequence numbers received per flow, when recorded ([`Tally::recording`]).
    pub seqs: Option<Vec<Mutex<Vec<u32>>>>,
}

impl Tally {
    /// A tally for `flows` flows.
    pub fn new(flows: usize) -> Tally {
        let zeros = || (0..flows).map(|_| AtomicU64::new(0)).collect();
        Tally {
            received: zeros(),
            wrong: zeros(),
            checked: zeros(),
            marked: zeros(),
            examples: Mutex::new(Vec::new()),
            garbage: AtomicU64::new(0),
            seqs: None,
        }
    }

    /// A tally that also records every sequence number received (short tests only).
    pub fn recording(flows: usize) -> Tally {
        let mut t = Tally::new(flows);
        t.seqs = Some((0..flows).map(|_| Mutex::new(Vec::new())).collect());
        t
    }

    /// The sequence numbers below `sent` that `flow` did not receive (needs [`Tally::recording`]).
    pub fn missing(&self, flow: usize, sent: u32) -> Vec<u32> {
        let seqs = self.seqs.as_ref().expect("a recording tally");
        let mut got = seqs[flow].lock().unwrap().clone();
        got.sort_unstable();
        (0..sent)
            .filter(|s| got.binary_search(s).is_err())
            .collect()
    }

    /// Received count of `flow`.
    pub fn received(&self, flow: usize) -> u64 {
        self.received[flow].load(Ordering::Relaxed)
    }

    /// Sum of a counter over all flows.
    pub fn sum(counter: &[AtomicU64]) -> u64 {
        counter.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Waits until `flow` has received at least `n` datagrams; false after `timeout`.
    pub fn wait_received(&self, flow: usize, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.received(flow) >= n {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn set_int(fd: i32, level: i32, name: i32, value: i32) {
    // SAFETY: an int option from a live local.
    let ret = unsafe { libc::setsockopt(fd, level, name, (&raw const value).cast(), 4) };
    assert_eq!(ret, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// Sets the TOS (IPv4) or Traffic Class (IPv6) the application puts on its packets
/// ([`crate::common::set_tos`] on the socket's descriptor; every test that uses this module
/// also has `common`).
pub fn set_app_tos(sock: &UdpSocket, v6: bool, tos: u8) {
    crate::common::set_tos(sock.as_raw_fd(), v6, tos);
}

/// Makes `sock` report each datagram's TOS / Traffic Class (`IP_RECVTOS` /
/// `IPV6_RECVTCLASS`), with a 64 MiB receive buffer and a 100 ms read timeout (so a receiver
/// loop can check its stop flag).
pub fn report_tos(sock: &UdpSocket, v6: bool) {
    let fd = sock.as_raw_fd();
    if v6 {
        set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 1);
    } else {
        set_int(fd, libc::IPPROTO_IP, libc::IP_RECVTOS, 1);
    }
    set_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20);
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
}

/// Receives one datagram into `buf` from a socket set up by [`report_tos`]: its length and the
/// TOS byte the kernel reported for it. `None` when nothing arrived within the timeout.
pub fn recv_with_tos(sock: &UdpSocket, buf: &mut [u8]) -> Option<(usize, Option<u8>)> {
    #[repr(C, align(8))]
    struct Cmsg([u8; 128]);
    let mut cmsg = Cmsg([0; 128]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.0.len();
    // SAFETY: the iovec and control buffer are writable for the lengths given.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, 0) };
    let n = usize::try_from(n).ok()?;
    let mut tos = None;
    // SAFETY: `msg` was filled by recvmsg.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
    while !c.is_null() {
        // SAFETY: a header inside the control buffer.
        let hdr = unsafe { std::ptr::read_unaligned(c) };
        // SAFETY: data of that header.
        let data = unsafe { libc::CMSG_DATA(c) };
        if (hdr.cmsg_level, hdr.cmsg_type) == (libc::IPPROTO_IP, libc::IP_TOS) {
            // SAFETY: IP_TOS carries one byte.
            tos = Some(unsafe { *data });
        } else if (hdr.cmsg_level, hdr.cmsg_type) == (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) {
            // SAFETY: IPV6_TCLASS carries one int.
            let v = unsafe { std::ptr::read_unaligned(data.cast::<[u8; 4]>()) };
            tos = u8::try_from(i32::from_ne_bytes(v)).ok();
        }
        // SAFETY: `c` is a valid header of `msg`.
        c = unsafe { libc::CMSG_NXTHDR(&raw const msg, c) };
    }
    Some((n, tos))
}

/// Reads datagrams with their TOS until `stop` (checked every 100 ms of silence), judging
/// each against its `expect`.
pub fn receive(sock: &UdpSocket, v6: bool, tally: &Tally, stop: &AtomicBool) {
    report_tos(sock, v6);
    let mut buf = [0u8; 64];
    loop {
        let Some((n, tos)) = recv_with_tos(sock, &mut buf) else {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            continue;
        };
        let flow = u32::from_ne_bytes(buf[..4].try_into().unwrap()) as usize;
        if n != LEN || flow >= tally.received.len() {
            tally.garbage.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let seq = u32::from_ne_bytes(buf[4..8].try_into().unwrap());
        let expect = buf[8];
        tally.received[flow].fetch_add(1, Ordering::Relaxed);
        if let Some(seqs) = &tally.seqs {
            seqs[flow].lock().unwrap().push(seq);
        }
        if tos.is_some_and(|t| t >> 2 != 0) {
            tally.marked[flow].fetch_add(1, Ordering::Relaxed);
        }
        if expect != UNCHECKED {
            tally.checked[flow].fetch_add(1, Ordering::Relaxed);
            if tos != Some(expect) {
                tally.wrong[flow].fetch_add(1, Ordering::Relaxed);
                let mut ex = tally.examples.lock().unwrap();
                if ex.len() < 20 {
                    ex.push(format!(
                        "flow {flow} seq {seq}: TOS {tos:?}, want {expect:#04x}"
                    ));
                }
            }
        }
    }
}

/// (utime, stime) of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    (fields[11].parse().unwrap(), fields[12].parse().unwrap())
}

/// Clock ticks per second.
pub fn clock_hz() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    f64::from(u32::try_from(hz).unwrap())
}

/// A `kB` field (`VmRSS`, `Threads`, ...) of `/proc/<pid>/status`; `None` once the process is
/// gone.
pub fn status_field(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Open descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Raises `RLIMIT_NOFILE` for this process (1,000+ sockets).
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a writable rlimit.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) };
    assert_eq!(got, 0);
    lim.rlim_cur = lim.rlim_max.max(8192);
    lim.rlim_max = lim.rlim_cur;
    // SAFETY: `lim` is a valid rlimit; root may raise the hard limit.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) };
    assert_eq!(set, 0);
}

/// Resolves ARP / NDP from the sender namespace before traffic starts (a gateway's neighbour
/// caches are warm).
pub fn warm_neighbours(sender_ns: &str, targets: &[String]) {
    for addr in targets {
        let fam = if addr.contains(':') { "-6" } else { "-4" };
        let ok = std::process::Command::new("ip")
            .args([
                "netns", "exec", sender_ns, "ping", fam, "-c", "1", "-W", "2", addr,
            ])
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok, "ping {addr}");
    }
}
