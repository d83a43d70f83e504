//! Harness of the live tests: two network namespaces joined by a veth pair, `qosmarkd` in the
//! sender namespace, a record-level client of the control socket, and an `AF_PACKET` capture
//! on the receiving side whose packets are checked with etherparse and, independently of it, by
//! hand: IPv4 header checksum, UDP/TCP checksum over the pseudo-header, every header field the
//! sender determines for unregistered traffic ([`check_untouched`]), exact payloads and TCP
//! streams rebuilt by sequence number. `veth-s` has transmit checksum offload turned off so
//! every packet on the pair carries a complete checksum.
//!
//! Everything is torn down by `Drop` guards (daemon first, then the namespaces, which takes
//! the veth pair and the daemon's iptables rules with them), so a failing assertion leaves
//! nothing behind. Tests need root: without it they fail loudly, unless `QOSMARK_SKIP_LIVE=1`.
#![allow(dead_code, reason = "each live test file uses part of the harness")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::missing_panics_doc,
    clippy::must_use_candidate,
    reason = "test harness: a panic is a test failure with its message"
)]

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use qosmark_engine::abi::codec::{self, Reply};
use qosmark_engine::abi::ioctl::RequestKind;
use qosmark_engine::abi::{Family, FlowId, Protocol, Request, Response, SocketInfo, TrafficType};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Whether live tests run. Not root and no `QOSMARK_SKIP_LIVE=1` → panic (fail loudly).
pub fn live() -> bool {
    if std::env::var("QOSMARK_SKIP_LIVE").as_deref() == Ok("1") {
        eprintln!("QOSMARK_SKIP_LIVE=1: live test skipped");
        return false;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "live tests need root (network namespaces, netfilter queue); run as root or set QOSMARK_SKIP_LIVE=1"
    );
    true
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unique() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Two namespaces joined by a veth pair: sender `s` (`veth-s`, `10.232.N.1`, `fd00:232:N::1`)
/// and receiver `r` (`veth-r`, `10.232.N.2`, `fd00:232:N::2`). Deleted on drop.
pub struct Net {
    /// Sender namespace name.
    pub sender: String,
    /// Receiver namespace name.
    pub receiver: String,
    /// Sender IPv4 address.
    pub s4: Ipv4Addr,
    /// Receiver IPv4 address.
    pub r4: Ipv4Addr,
    /// Sender IPv6 address.
    pub s6: Ipv6Addr,
    /// Receiver IPv6 address.
    pub r6: Ipv6Addr,
    /// Scratch directory for this test (socket, state, logs).
    pub dir: PathBuf,
}

impl Net {
    /// Creates the namespaces and the link.
    pub fn new() -> Net {
        let n = unique();
        let pid = std::process::id();
        let id = format!("qm{pid}x{n}");
        let net_n = u16::try_from((pid as usize * 7 + n as usize) % 250).unwrap() + 1;
        let dir = std::env::temp_dir().join(format!("qosmark-live-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let net = Net {
            sender: format!("{id}s"),
            receiver: format!("{id}r"),
            s4: Ipv4Addr::new(10, 232, net_n as u8, 1),
            r4: Ipv4Addr::new(10, 232, net_n as u8, 2),
            s6: Ipv6Addr::new(0xfd00, 0x232, net_n, 0, 0, 0, 0, 1),
            r6: Ipv6Addr::new(0xfd00, 0x232, net_n, 0, 0, 0, 0, 2),
            dir,
        };
        run("ip", &["netns", "add", &net.sender]);
        run("ip", &["netns", "add", &net.receiver]);
        run(
            "ip",
            &[
                "-n",
                &net.sender,
                "link",
                "add",
                "veth-s",
                "type",
                "veth",
                "peer",
                "name",
                "veth-r",
                "netns",
                &net.receiver,
            ],
        );
        for (ns, dev, v4, v6) in [
            (&net.sender, "veth-s", net.s4, net.s6),
            (&net.receiver, "veth-r", net.r4, net.r6),
        ] {
            run(
                "ip",
                &["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev],
            );
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    dev,
                    "nodad",
                ],
            );
            run("ip", &["-n", ns, "link", "set", dev, "up"]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        let path = format!("/run/netns/{}", net.sender);
        std::thread::spawn(move || {
            enter_ns(&path);
            tx_checksum_off("veth-s");
        })
        .join()
        .unwrap();
        net
    }

    /// Receiver address of `family` with `port`.
    pub fn receiver_addr(&self, v6: bool, port: u16) -> SocketAddr {
        if v6 {
            SocketAddr::new(IpAddr::V6(self.r6), port)
        } else {
            SocketAddr::new(IpAddr::V4(self.r4), port)
        }
    }

    /// Sender address of `family` with `port`.
    pub fn sender_addr(&self, v6: bool, port: u16) -> SocketAddr {
        if v6 {
            SocketAddr::new(IpAddr::V6(self.s6), port)
        } else {
            SocketAddr::new(IpAddr::V4(self.s4), port)
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.sender, &self.receiver] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Turns transmit checksum offload off on `ifname` (this thread's namespace), as
/// `ethtool -K IF tx off` does (`SIOCETHTOOL` / `ETHTOOL_STXCSUM`). veth offloads by default:
/// a packet that no one completes (e.g. one let through by `--queue-bypass` with no daemon)
/// would cross the pair with only its pseudo-header sum in the UDP/TCP checksum field, and
/// the capture could not verify checksums by recomputation.
fn tx_checksum_off(ifname: &str) {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const ETHTOOL_STXCSUM: u32 = 0x17;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    // SAFETY: ifreq is plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    req.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: plain socket creation, checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `req` names the interface and points at `value`, both live for the call.
    let ret = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &raw mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing our own descriptor once.
    unsafe { libc::close(fd) };
    assert_eq!(ret, 0, "{ifname}: tx checksum offload off: {err}");
}

/// Runs `f` on a thread that has entered network namespace `ns`; sockets it creates belong to
/// that namespace for their whole life.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        enter_ns(&path);
        f()
    })
    .join()
    .unwrap()
}

fn enter_ns(path: &str) {
    let file = File::open(path).unwrap();
    // SAFETY: `file` is an open namespace file; setns changes only this thread's namespace.
    let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(ret, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// A running `qosmarkd` in the sender namespace; SIGTERM on drop.
pub struct Daemon {
    child: Option<Child>,
    /// Control socket.
    pub socket: PathBuf,
    /// State file.
    pub state: PathBuf,
    /// Log (stderr) file.
    pub log: PathBuf,
    ns: String,
}

/// Extra command-line arguments for the daemon.
#[derive(Default)]
pub struct DaemonOptions {
    /// `--rules FILE` content.
    pub rules: Option<String>,
    /// Keep the state file of a previous daemon of this `Net` (restart test).
    pub keep_state: bool,
}

impl Daemon {
    /// Starts `qosmarkd` in `net.sender` and waits until its socket answers.
    pub fn start(net: &Net, opts: &DaemonOptions) -> Daemon {
        Daemon::start_with(net, opts, &[])
    }

    /// [`Daemon::start`] with further command-line arguments (e.g. shaping limits).
    pub fn start_with(net: &Net, opts: &DaemonOptions, extra: &[&str]) -> Daemon {
        let socket = net.dir.join("qosmark.sock");
        let state = net.dir.join("state").join("state.toml");
        if !opts.keep_state {
            let _ = std::fs::remove_file(&state);
        }
        let log = net.dir.join(format!("qosmarkd-{}.log", unique()));
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            net.sender.clone(),
            // QOSMARKD=path runs another build (e.g. release, to measure CPU use).
            std::env::var("QOSMARKD").unwrap_or_else(|_| env!("CARGO_BIN_EXE_qosmarkd").into()),
            "--socket".into(),
            socket.display().to_string(),
            "--state".into(),
            state.display().to_string(),
            "--queue-num".into(),
            "7".into(),
        ];
        if let Some(rules) = &opts.rules {
            let path = net.dir.join("rules.toml");
            std::fs::write(&path, rules).unwrap();
            args.push("--rules".into());
            args.push(path.display().to_string());
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child: Some(child),
            socket,
            state,
            log,
            ns: net.sender.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("qosmarkd exited at start ({status}):\n{}", d.log_text());
            }
            if d.log_text().contains("qosmarkd: ready") && UnixStream::connect(&d.socket).is_ok() {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "qosmarkd not ready:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM, wait, and check it exited cleanly and removed its rules.
    pub fn stop(self) -> String {
        self.stop_with(libc::SIGTERM)
    }

    /// `signal` (SIGTERM or SIGINT), wait, and check it exited cleanly and removed its rules.
    pub fn stop_with(mut self, signal: i32) -> String {
        let mut child = self.child.take().unwrap();
        terminate(&mut child, signal);
        let status = child.wait().unwrap();
        let log = self.log_text();
        assert!(status.success(), "qosmarkd exit {status}:\n{log}");
        for tool in ["iptables", "ip6tables"] {
            let listing = our_rules(&self.ns, tool);
            assert!(
                listing.is_empty(),
                "{tool} rules left after exit:\n{listing:?}"
            );
        }
        assert!(!self.socket.exists(), "socket file left after exit");
        log
    }

    /// SIGKILL (a crash: nothing is cleaned up) and wait; returns the log.
    pub fn kill(mut self) -> String {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        self.log_text()
    }
}

/// The `mangle OUTPUT` rules of `tool` in namespace `ns` that carry qosmarkd's tag.
pub fn our_rules(ns: &str, tool: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, tool, "-w", "-t", "mangle", "-S", "OUTPUT",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{tool} -S failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("qosmarkd"))
        .map(str::to_owned)
        .collect()
}

fn terminate(child: &mut Child, signal: i32) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: signalling our own child process by pid.
    unsafe { libc::kill(pid, signal) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, libc::SIGTERM);
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("--- qosmarkd log ---\n{}", self.log_text());
            }
        }
    }
}

/// A record-level client of the control socket (one connection = one handle).
pub struct Client {
    /// The connection.
    pub stream: UnixStream,
}

/// The Win32 code of an error answer, or the response.
pub type Answer = Result<Response, u32>;

impl Client {
    /// Connects.
    pub fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client { stream }
    }

    /// Sends one request (with a descriptor if given) and decodes its answer.
    pub fn call(&mut self, req: &Request, fd: Option<BorrowedFd<'_>>) -> Answer {
        let mut out = Vec::new();
        codec::encode_request(req, &mut out).unwrap();
        send_with_fd(&self.stream, &out, fd.map(|f| f.as_raw_fd()));
        let bytes = self
            .read_record()
            .expect("connection closed instead of an answer");
        match codec::decode_response(RequestKind::of(req), &bytes).unwrap() {
            Reply::Response(r) => Ok(r),
            Reply::Error(e) => Err(e.win32.0),
        }
    }

    /// Reads one record; `None` at end of stream.
    pub fn read_record(&mut self) -> Option<Vec<u8>> {
        let mut header = [0u8; 16];
        if self.stream.read_exact(&mut header).is_err() {
            return None;
        }
        let len = codec::record_len(&header).unwrap() as usize;
        let mut bytes = header.to_vec();
        bytes.resize(len, 0);
        self.stream.read_exact(&mut bytes[16..]).unwrap();
        Some(bytes)
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// `AddSocketToFlow` for `sock`, passing its descriptor; the record's `SocketInfo` claims
    /// what std reports (the daemon reads the truth from the descriptor anyway).
    pub fn add_socket(
        &mut self,
        sock: &impl AsRawFd,
        dest: Option<SocketAddr>,
        traffic_type: TrafficType,
        flags: u32,
        flow_id: FlowId,
    ) -> Result<FlowId, u32> {
        let info = socket_info(sock.as_raw_fd());
        // SAFETY: the descriptor is open for the duration of the call (borrowed from `sock`).
        let fd = unsafe { BorrowedFd::borrow_raw(sock.as_raw_fd()) };
        let req = Request::AddSocketToFlow {
            socket: info,
            dest,
            traffic_type,
            flags,
            flow_id,
        };
        match self.call(&req, Some(fd)) {
            Ok(Response::FlowId(id)) => Ok(id),
            Ok(other) => panic!("unexpected answer {other:?}"),
            Err(code) => Err(code),
        }
    }

    /// A request answered with `Done` or an error code.
    pub fn done(&mut self, req: &Request) -> Result<(), u32> {
        match self.call(req, None) {
            Ok(Response::Done) => Ok(()),
            Ok(other) => panic!("unexpected answer {other:?}"),
            Err(code) => Err(code),
        }
    }

    /// `QueryStatus`.
    pub fn status(&mut self) -> qosmark_engine::abi::StatusInfo {
        match self.call(&Request::QueryStatus, None) {
            Ok(Response::Status(s)) => s,
            other => panic!("status: {other:?}"),
        }
    }
}

/// What std can say about a socket, as a `SocketInfo` claim (socket value = the descriptor).
pub fn socket_info(fd: RawFd) -> SocketInfo {
    // SAFETY: the caller's descriptor is open for the call; the temporary UdpSocket view is
    // forgotten, never closed.
    let view = std::mem::ManuallyDrop::new(unsafe {
        <UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd)
    });
    let local = view
        .local_addr()
        .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    let peer = view.peer_addr().ok();
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `kind` is a writable int of `len` bytes.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut kind).cast(),
            &raw mut len,
        )
    };
    SocketInfo {
        socket: u64::try_from(fd).unwrap(),
        family: if local.is_ipv6() {
            Family::V6
        } else {
            Family::V4
        },
        protocol: if kind == libc::SOCK_STREAM {
            Protocol::Tcp
        } else {
            Protocol::Udp
        },
        local,
        peer,
    }
}

/// `sendmsg` of `bytes` with `fd` attached (`SCM_RIGHTS`) when given.
pub fn send_with_fd(stream: &UnixStream, bytes: &[u8], fd: Option<RawFd>) {
    #[repr(C, align(8))]
    struct Cmsg([u8; 64]);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    let mut cmsg = Cmsg([0; 64]);
    // SAFETY: msghdr is plain data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: pure size computation.
        let space = unsafe { libc::CMSG_SPACE(4) } as usize;
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer is set and large enough for one header.
        let hdr = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
        // SAFETY: `hdr` points into `cmsg` (non-null: the buffer holds CMSG_SPACE(4) bytes).
        unsafe {
            (*hdr).cmsg_level = libc::SOL_SOCKET;
        }
        // SAFETY: as above.
        unsafe {
            (*hdr).cmsg_type = libc::SCM_RIGHTS;
        }
        // SAFETY: pure size computation.
        let len = unsafe { libc::CMSG_LEN(4) } as usize;
        // SAFETY: as above.
        unsafe {
            (*hdr).cmsg_len = len;
        }
        // SAFETY: CMSG_DATA of a header inside the buffer has room for one int.
        let data = unsafe { libc::CMSG_DATA(hdr) };
        // SAFETY: `data` is writable for 4 bytes inside `cmsg`.
        unsafe { std::ptr::write_unaligned(data.cast::<[u8; 4]>(), fd.to_ne_bytes()) };
    }
    // SAFETY: `msg` points at `iov` (readable `bytes`) and, if set, the filled control buffer.
    let ret = unsafe { libc::sendmsg(stream.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL) };
    assert_eq!(
        usize::try_from(ret).ok(),
        Some(bytes.len()),
        "sendmsg: {}",
        std::io::Error::last_os_error()
    );
}

/// Sets the TOS (IPv4) or Traffic Class (IPv6) the application puts on its packets.
pub fn set_tos(fd: RawFd, v6: bool, tos: u8) {
    let value = libc::c_int::from(tos);
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
    } else {
        (libc::IPPROTO_IP, libc::IP_TOS)
    };
    // SAFETY: an int option read from a live local.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(ret, 0, "set tos: {}", std::io::Error::last_os_error());
}

/// One captured IP packet, as etherparse reads it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Source (normalized).
    pub src: SocketAddr,
    /// Destination.
    pub dst: SocketAddr,
    /// TOS / Traffic Class byte.
    pub tos: u8,
    /// TCP flag bits (CWR ECE URG ACK PSH RST SYN FIN); 0 for UDP.
    pub tcp_flags: u8,
    /// Transport payload.
    pub payload: Vec<u8>,
    /// IPv4 header checksum valid by full recomputation (always true for IPv6).
    pub checksum_ok: bool,
    /// The whole IP packet.
    pub bytes: Vec<u8>,
}

/// RFC 1071 sum over an IPv4 header: 0xffff when the stored checksum is right.
pub fn ipv4_header_sums_to_ffff(header: &[u8]) -> bool {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// Parses one captured IP packet (TCP/UDP only).
pub fn parse(bytes: &[u8]) -> Option<Seen> {
    let sliced = SlicedPacket::from_ip(bytes).ok()?;
    let (src_ip, dst_ip, tos, checksum_ok) = match sliced.net? {
        NetSlice::Ipv4(v4) => {
            let h = v4.header();
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                (h.dcp().value() << 2) | h.ecn().value(),
                ipv4_header_sums_to_ffff(h.slice()),
            )
        }
        NetSlice::Ipv6(v6) => {
            let h = v6.header();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                h.traffic_class(),
                true,
            )
        }
        NetSlice::Arp(_) => return None,
    };
    let (protocol, sp, dp, tcp_flags, payload) = match sliced.transport? {
        TransportSlice::Udp(u) => (
            Protocol::Udp,
            u.source_port(),
            u.destination_port(),
            0,
            u.payload().to_vec(),
        ),
        TransportSlice::Tcp(t) => (
            Protocol::Tcp,
            t.source_port(),
            t.destination_port(),
            // The flags byte, from the header bytes themselves.
            t.slice()[13],
            t.payload().to_vec(),
        ),
        _ => return None,
    };
    Some(Seen {
        protocol,
        src: SocketAddr::new(src_ip, sp),
        dst: SocketAddr::new(dst_ip, dp),
        tos,
        tcp_flags,
        payload,
        checksum_ok,
        bytes: bytes.to_vec(),
    })
}

/// An `AF_PACKET` capture of packets arriving on `veth-r` in the receiver namespace.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Vec<u8>>>>,
}

impl Capture {
    /// Starts capturing; returns once the socket is bound.
    pub fn start(net: &Net) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let path = format!("/run/netns/{}", net.receiver);
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            enter_ns(&path);
            let fd = packet_socket("veth-r");
            ready_tx.send(()).unwrap();
            let mut packets = Vec::new();
            let mut buf = vec![0u8; 70_000];
            loop {
                // SAFETY: sockaddr_ll is plain data.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: `buf` and `from` are writable for the sizes given.
                let n = unsafe {
                    libc::recvfrom(
                        fd,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&raw mut from).cast(),
                        &raw mut len,
                    )
                };
                if n < 0 {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    continue;
                }
                if from.sll_pkttype != libc::PACKET_OUTGOING {
                    packets.push(buf[..usize::try_from(n).unwrap()].to_vec());
                }
            }
            // SAFETY: closing our own descriptor once.
            unsafe { libc::close(fd) };
            packets
        });
        ready_rx.recv().unwrap();
        Capture {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops (after the socket has been idle 100 ms) and returns the parsed TCP/UDP packets.
    pub fn finish(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::SeqCst);
        let raw = self.thread.take().unwrap().join().unwrap();
        raw.iter().filter_map(|b| parse(b)).collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn packet_socket(ifname: &str) -> RawFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket creation, checked below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: `name` is a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index > 0, "no interface {ifname}");
    // SAFETY: sockaddr_ll is plain data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = i32::try_from(index).unwrap();
    // SAFETY: `addr` is a valid sockaddr_ll of the size given.
    let ret = unsafe {
        libc::bind(
            fd,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(
        ret,
        0,
        "bind AF_PACKET: {}",
        std::io::Error::last_os_error()
    );
    let size: libc::c_int = 64 << 20;
    // SAFETY: int option from a live local.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast(),
            4,
        )
    };
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: timeval option from a live local.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    fd
}

/// UDP sinks in the receiver namespace: count datagrams per payload tag (the text before the
/// last `:`), so "every packet sent was received" can be checked per flow.
pub struct UdpSink {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    counts: Arc<Mutex<HashMap<String, u64>>>,
}

impl UdpSink {
    /// Binds one socket per address (in the receiver namespace) and starts reading.
    pub fn start(net: &Net, addrs: &[SocketAddr]) -> UdpSink {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let mut threads = Vec::new();
        for addr in addrs.iter().copied() {
            let (tx, rx) = mpsc::channel();
            let path = format!("/run/netns/{}", net.receiver);
            let (stop, counts) = (Arc::clone(&stop), Arc::clone(&counts));
            threads.push(std::thread::spawn(move || {
                enter_ns(&path);
                let sock = UdpSocket::bind(addr).unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                tx.send(()).unwrap();
                let mut buf = [0u8; 2048];
                loop {
                    match sock.recv(&mut buf) {
                        Ok(n) => {
                            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                            let tag = text
                                .rsplit_once(':')
                                .map_or(text.clone(), |(t, _)| t.to_owned());
                            *counts.lock().unwrap().entry(tag).or_insert(0) += 1;
                        }
                        Err(_) if stop.load(Ordering::SeqCst) => break,
                        Err(_) => {}
                    }
                }
            }));
            rx.recv().unwrap();
        }
        UdpSink {
            stop,
            threads,
            counts,
        }
    }

    /// Waits until `tag` has `n` datagrams (at most 5 s); returns the count.
    pub fn wait_for(&self, tag: &str, n: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.count(tag);
            if got >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Datagrams received with `tag` so far.
    pub fn count(&self, tag: &str) -> u64 {
        self.counts.lock().unwrap().get(tag).copied().unwrap_or(0)
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sends `n` datagrams `TAG:i` on a connected socket (or to `to`), 1 ms apart.
pub fn send_tagged(sock: &UdpSocket, to: Option<SocketAddr>, tag: &str, n: u32) {
    for i in 0..n {
        let msg = format!("{tag}:{i}");
        match to {
            Some(a) => sock.send_to(msg.as_bytes(), a).unwrap(),
            None => sock.send(msg.as_bytes()).unwrap(),
        };
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What a flow's packets must carry on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// This DSCP, with the ECN bits the application set.
    Dscp(u8),
    /// Exactly the TOS byte the application set, and the packet otherwise as the sender's
    /// kernel built it: see [`check_untouched`] for what that checks.
    Untouched,
}

/// The RFC 1071 one's-complement sum of `words` (16-bit big-endian, odd byte padded), folded.
fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u64::from(u16::from_be_bytes([*last, 0]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).unwrap()
}

/// The IP header fields of a captured packet, read by hand from its bytes (independent of
/// etherparse), plus the transport segment and whether its checksum verifies by full
/// recomputation over the RFC 768 / RFC 793 / RFC 8200 §8.1 pseudo-header.
#[derive(Debug)]
pub struct RawIp<'a> {
    /// 4 or 6.
    pub version: u8,
    /// IPv4 IHL in 32-bit words (0 for IPv6).
    pub ihl: u8,
    /// TOS / Traffic Class.
    pub tos: u8,
    /// IPv4 total length, or IPv6 40 + payload length.
    pub total_len: usize,
    /// IPv4 flags and fragment offset (the 16-bit field); 0 for IPv6.
    pub flags_frag: u16,
    /// TTL / hop limit.
    pub ttl: u8,
    /// Protocol / next header.
    pub protocol: u8,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// The transport segment (header + payload), cut at the IP length.
    pub segment: &'a [u8],
    /// The UDP/TCP checksum verifies by full recomputation, pseudo-header included.
    pub transport_checksum_ok: bool,
}

/// Reads `bytes` as an IPv4 (no options other than what IHL says) or IPv6 packet without
/// extension headers; `None` when it is neither or is cut short.
pub fn raw_ip(bytes: &[u8]) -> Option<RawIp<'_>> {
    let version = bytes.first()? >> 4;
    let (ihl, tos, total_len, flags_frag, ttl, protocol, src, dst, header_len) = match version {
        4 => {
            let h = bytes.get(..20)?;
            let ihl = h[0] & 0x0f;
            let src: [u8; 4] = h[12..16].try_into().ok()?;
            let dst: [u8; 4] = h[16..20].try_into().ok()?;
            (
                ihl,
                h[1],
                usize::from(u16::from_be_bytes([h[2], h[3]])),
                u16::from_be_bytes([h[6], h[7]]),
                h[8],
                h[9],
                IpAddr::V4(Ipv4Addr::from(src)),
                IpAddr::V4(Ipv4Addr::from(dst)),
                usize::from(ihl) * 4,
            )
        }
        6 => {
            let h = bytes.get(..40)?;
            let src: [u8; 16] = h[8..24].try_into().ok()?;
            let dst: [u8; 16] = h[24..40].try_into().ok()?;
            (
                0,
                (h[0] << 4) | (h[1] >> 4),
                40 + usize::from(u16::from_be_bytes([h[4], h[5]])),
                0,
                h[7],
                h[6],
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                40,
            )
        }
        _ => return None,
    };
    let segment = bytes.get(header_len..total_len)?;
    let seg_len = u32::try_from(segment.len()).ok()?;
    let pseudo: Vec<u8> = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = Vec::with_capacity(12);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, protocol]);
            p.extend_from_slice(&u16::try_from(seg_len).ok()?.to_be_bytes());
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut p = Vec::with_capacity(40);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&seg_len.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, protocol]);
            p
        }
        _ => return None,
    };
    // The stored checksum included, a correct segment sums to 0xffff. A UDP checksum of 0
    // means "none" (IPv4 only; IPv6 forbids it): Linux always sends one, so 0 is a failure.
    let stored_zero = protocol == 17 && segment.get(6..8) == Some(&[0, 0]);
    let transport_checksum_ok = !stored_zero && ones_sum(&[&pseudo, segment]) == 0xffff;
    Some(RawIp {
        version,
        ihl,
        tos,
        total_len,
        flags_frag,
        ttl,
        protocol,
        src,
        dst,
        segment,
        transport_checksum_ok,
    })
}

/// The TTL / hop limit a fresh network namespace's sockets use (`net.ipv4.ip_default_ttl`,
/// `net.ipv6.conf.*.hop_limit`; the live tests never change them or set `IP_TTL`).
pub const DEFAULT_TTL: u8 = 64;

/// An unregistered packet against an independent oracle: every IP header field the sender
/// determines equals what its socket parameters give — version; IHL 5 (no options); the
/// application's TOS / Traffic Class `app_tos`; total length = header + transport header +
/// `payload_len`; no fragmentation (offset 0, MF clear; DF is the kernel's PMTU choice and
/// only has to be the same on every packet of a flow, which the caller may compare);
/// TTL / hop limit [`DEFAULT_TTL`]; protocol — and the transport checksum verifies by full
/// recomputation over the pseudo-header. The addresses and ports are checked by the callers
/// against the sockets' own: [`check_tcp`] selects on them, [`check_udp_between`] asserts them.
///
/// What cannot be predicted and is only validated: the IPv4 identification (the kernel's
/// per-destination counter; any value), the IPv4 header checksum (must verify by
/// recomputation, done in [`parse`]), the IPv6 flow label (a hash the kernel picks), TCP
/// sequence / ack numbers, window and options (checked only through the transport checksum).
pub fn check_untouched(p: &Seen, app_tos: u8, transport_header: usize, what: &str) {
    let raw = raw_ip(&p.bytes)
        .unwrap_or_else(|| panic!("{what}: not a plain IPv4/IPv6 packet: {:02x?}", p.bytes));
    let v6 = p.src.is_ipv6();
    let header = if v6 { 40 } else { 20 };
    assert_eq!(raw.version, if v6 { 6 } else { 4 }, "{what}: version");
    if !v6 {
        assert_eq!(raw.ihl, 5, "{what}: IHL (options added?)");
        assert_eq!(raw.flags_frag & 0x3fff, 0, "{what}: fragmented (MF/offset)");
        assert!(p.checksum_ok, "{what}: IPv4 header checksum wrong");
    }
    assert_eq!(raw.tos, app_tos, "{what}: TOS/Traffic Class changed");
    assert_eq!(
        raw.total_len,
        header + transport_header + p.payload.len(),
        "{what}: total length"
    );
    assert!(p.bytes.len() >= raw.total_len, "{what}: cut short");
    assert_eq!(raw.ttl, DEFAULT_TTL, "{what}: TTL / hop limit");
    let proto = match p.protocol {
        Protocol::Udp => 17,
        Protocol::Tcp => 6,
    };
    assert_eq!(raw.protocol, proto, "{what}: protocol");
    assert!(
        raw.transport_checksum_ok,
        "{what}: transport checksum does not verify: {:02x?}",
        p.bytes
    );
}

/// Checks every captured UDP packet whose payload starts with `tag:` against `expect`, with
/// the application's TOS `app_tos`; returns how many there were.
///
/// Whatever `expect`, each payload must be exactly `tag:i` (as [`send_tagged`] sends it), no
/// `i` twice and the `i`s exactly `0..n` — so the payloads equal what was sent — and the UDP
/// checksum must verify by full recomputation. With [`Expect::Untouched`] the whole header is
/// checked too ([`check_untouched`]). No packet at all is a failure: nothing passes vacuously.
pub fn check_udp(seen: &[Seen], tag: &str, app_tos: u8, expect: Expect) -> u64 {
    let prefix = format!("{tag}:");
    let mut n = 0;
    let mut indices = std::collections::BTreeSet::new();
    let mut df = std::collections::BTreeSet::new();
    for p in seen
        .iter()
        .filter(|p| p.protocol == Protocol::Udp && p.payload.starts_with(prefix.as_bytes()))
    {
        n += 1;
        assert!(
            p.checksum_ok,
            "{tag}: IPv4 header checksum wrong: {:02x?}",
            p.bytes
        );
        let index: u64 = std::str::from_utf8(&p.payload[prefix.len()..])
            .ok()
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("{tag}: payload {:?} is not what was sent", p.payload));
        assert_eq!(
            p.payload,
            format!("{tag}:{index}").into_bytes(),
            "{tag}: payload"
        );
        assert!(indices.insert(index), "{tag}: datagram {index} twice");
        let raw = raw_ip(&p.bytes).unwrap();
        assert!(
            raw.transport_checksum_ok,
            "{tag}: UDP checksum does not verify: {:02x?}",
            p.bytes
        );
        df.insert(raw.flags_frag & 0x4000);
        match expect {
            Expect::Dscp(d) => assert_eq!(
                p.tos,
                (d << 2) | (app_tos & 3),
                "{tag}: TOS {:#04x}, want DSCP {d} with ECN {}",
                p.tos,
                app_tos & 3
            ),
            Expect::Untouched => {
                assert_eq!(p.tos, app_tos, "{tag}: TOS changed on an unregistered flow");
                check_untouched(p, app_tos, 8, tag);
            }
        }
    }
    assert!(n > 0, "{tag}: no packet captured");
    assert!(
        indices.iter().copied().eq(0..n),
        "{tag}: datagrams {indices:?} captured, not 0..{n}"
    );
    assert!(
        df.len() <= 1,
        "{tag}: DF differs between packets of one flow"
    );
    n
}

/// [`check_udp`], and every packet of `tag` went from `src` (the sending socket's address; any
/// source port, one for the whole tag) to `dst`.
pub fn check_udp_between(
    seen: &[Seen],
    tag: &str,
    app_tos: u8,
    expect: Expect,
    src: IpAddr,
    dst: SocketAddr,
) -> u64 {
    let prefix = format!("{tag}:");
    let mut ports = std::collections::BTreeSet::new();
    for p in seen
        .iter()
        .filter(|p| p.protocol == Protocol::Udp && p.payload.starts_with(prefix.as_bytes()))
    {
        let raw = raw_ip(&p.bytes).unwrap();
        let sport = u16::from_be_bytes([raw.segment[0], raw.segment[1]]);
        let dport = u16::from_be_bytes([raw.segment[2], raw.segment[3]]);
        assert_eq!(
            (raw.src, raw.dst, dport),
            (src, dst.ip(), dst.port()),
            "{tag}: addresses"
        );
        ports.insert(sport);
    }
    assert!(ports.len() <= 1, "{tag}: several source ports {ports:?}");
    check_udp(seen, tag, app_tos, expect)
}

/// Checks every captured TCP segment from `src` to `dst` that carries data.
pub fn check_tcp(seen: &[Seen], src: SocketAddr, dst: SocketAddr, expect: Expect) -> usize {
    let mut n = 0;
    for p in seen.iter().filter(|p| {
        p.protocol == Protocol::Tcp && p.src == src && p.dst == dst && !p.payload.is_empty()
    }) {
        n += 1;
        assert!(p.checksum_ok, "TCP {src}: IPv4 header checksum wrong");
        let raw = raw_ip(&p.bytes).unwrap();
        assert!(
            raw.transport_checksum_ok,
            "TCP {src}->{dst}: checksum does not verify"
        );
        match expect {
            Expect::Dscp(d) => assert_eq!(p.tos >> 2, d, "TCP {src}->{dst}: TOS {:#04x}", p.tos),
            Expect::Untouched => {
                assert_eq!(p.tos, 0, "TCP {src}->{dst}: TOS changed");
                let tcp_header = usize::from(raw.segment.get(12).copied().unwrap_or(0) >> 4) * 4;
                check_untouched(p, 0, tcp_header, &format!("TCP {src}->{dst}"));
            }
        }
    }
    assert!(n > 0, "TCP {src}->{dst}: no data segment captured");
    n
}

/// The byte stream `src` sent to `dst` as captured, rebuilt from the TCP sequence numbers of
/// its data segments (retransmitted copies must be identical; a gap fails).
pub fn tcp_stream_bytes(seen: &[Seen], src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut by_offset: std::collections::BTreeMap<u32, Vec<u8>> = std::collections::BTreeMap::new();
    let mut base = None;
    for p in seen.iter().filter(|p| {
        p.protocol == Protocol::Tcp && p.src == src && p.dst == dst && !p.payload.is_empty()
    }) {
        let raw = raw_ip(&p.bytes).unwrap();
        let seq = u32::from_be_bytes(raw.segment[4..8].try_into().unwrap());
        let offset = seq.wrapping_sub(*base.get_or_insert(seq));
        if let Some(earlier) = by_offset.insert(offset, p.payload.clone()) {
            assert_eq!(
                earlier, p.payload,
                "TCP {src}->{dst}: retransmission differs"
            );
        }
    }
    let mut stream = Vec::new();
    for (offset, data) in by_offset {
        assert_eq!(
            offset as usize,
            stream.len(),
            "TCP {src}->{dst}: gap or overlap in the captured stream"
        );
        stream.extend(data);
    }
    stream
}

/// Checks every captured TCP segment from `src` to `dst` — handshake, pure ACKs and FIN
/// included — for DSCP `dscp`; returns (segments, SYNs) seen.
pub fn check_tcp_every_segment(
    seen: &[Seen],
    src: SocketAddr,
    dst: SocketAddr,
    dscp: u8,
) -> (usize, usize) {
    let (mut n, mut syns) = (0, 0);
    for p in seen
        .iter()
        .filter(|p| p.protocol == Protocol::Tcp && p.src == src && p.dst == dst)
    {
        n += 1;
        let syn = p.tcp_flags & 0x12 == 0x02;
        if syn {
            syns += 1;
        }
        assert!(p.checksum_ok, "TCP {src}: IPv4 header checksum wrong");
        assert!(
            raw_ip(&p.bytes).is_some_and(|r| r.transport_checksum_ok),
            "TCP {src}->{dst}: checksum does not verify"
        );
        assert_eq!(
            p.tos >> 2,
            dscp,
            "TCP {src}->{dst}: {} segment (flags {:#04x}) left with TOS {:#04x}",
            if syn { "SYN" } else { "a" },
            p.tcp_flags,
            p.tos
        );
    }
    (n, syns)
}

/// Normalizes a v4-mapped IPv6 socket address to IPv4 (how packets carry it on the wire).
pub fn unmapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}

/// Builds the ordinary `libqosmark.so` (no test hooks) into its own target directory (the
/// running `cargo test` holds the main one; cargo serialises builds into it) and compiles
/// `tests/c/<name>.c` against `qosmark.h` and that library into `net.dir`, with the feature
/// macro `feature` (e.g. `-D_DEFAULT_SOURCE`). Returns the program's path.
pub fn build_c_client(net: &Net, name: &str, feature: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let target_dir = target.join("capi-live");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "qosmark-capi"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "building libqosmark.so failed");
    let lib = target_dir.join("debug");
    assert!(lib.join("libqosmark.so").exists(), "{}", lib.display());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = net.dir.join(name);
    let status = Command::new("cc")
        .args(["-std=c11", feature, "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(root.join("../usermode-shim/include"))
        .arg(root.join(format!("tests/c/{name}.c")))
        .arg("-L")
        .arg(&lib)
        .arg("-lqosmark")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("cc (the system C compiler) is needed for this test");
    assert!(status.success(), "compiling {name}.c failed");
    out
}
