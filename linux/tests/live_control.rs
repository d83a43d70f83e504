//! Live tests of the control plane on real packets: TCP (registered after and before
//! `connect`), custom DSCP for root and for an unprivileged uid, admin rules and socket
//! flows overriding them, removal and handle close, socket ownership across processes,
//! framing errors, state persistence and start-up errors.
//!
//! The unprivileged and "other process" cases run this test binary again as a helper
//! process ([`helper_process`], ignored unless started by a test with `QOSMARK_HELPER=1`).
//!
//! Flows are registered, changed and removed through the Rust QOS2 API (`qosmark::QosHandle`
//! on the daemon's socket, the helper process included); rules and the traffic table through
//! `qosmark::Client`. The record-level client of `common` is used only where raw records are
//! the point: a forged `SocketInfo` without / with another descriptor, a half record that
//! stalls, and framing / descriptor errors.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    reason = "test code: a panic is a failure"
)]

mod common;

use common::{
    check_tcp, check_tcp_every_segment, check_udp, check_udp_between, in_ns, live, send_tagged,
    Capture, Client, Daemon, DaemonOptions, Expect, Net, UdpSink,
};
use qosmark::QosHandle;
use qosmark_engine::abi::codec;
use qosmark_engine::abi::heapless_name::RuleName;
use qosmark_engine::abi::{
    Dscp, PortRange, Request, Response, RuleAction, RuleProtocol, RuleSpec, SetFlow, TrafficType,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

const PACKETS: u32 = 10;

/// A Rust QOS2 API handle (`qosmark::QosHandle`) on the daemon's socket: how the tests
/// register, change and remove flows, as an application does.
fn qos_handle(socket: &std::path::Path) -> QosHandle {
    QosHandle::with_client(qosmark::Client::connect_unix(socket).unwrap())
}

/// A TCP sink in the receiver namespace: accepts connections and counts the bytes of each.
fn tcp_sink(net: &Net, addr: SocketAddr) -> std::thread::JoinHandle<Vec<usize>> {
    let listener = in_ns(&net.receiver, move || TcpListener::bind(addr).unwrap());
    std::thread::spawn(move || {
        let mut totals = Vec::new();
        listener.set_nonblocking(false).unwrap();
        for stream in listener.incoming() {
            let mut s = stream.unwrap();
            let mut data = Vec::new();
            s.read_to_end(&mut data).unwrap();
            if data == b"stop" {
                break;
            }
            totals.push(data.len());
        }
        totals
    })
}

fn stop_tcp_sink(net: &Net, addr: SocketAddr) {
    let mut s = in_ns(&net.sender, move || TcpStream::connect(addr).unwrap());
    s.write_all(b"stop").unwrap();
}

/// Writes 20 chunks of 100 bytes, 2 ms apart, without Nagle, then closes.
fn write_chunks(mut s: TcpStream) {
    s.set_nodelay(true).unwrap();
    for _ in 0..20 {
        s.write_all(&[0x5a; 100]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
}

/// A TCP socket created in the sender namespace but not connected yet.
fn unconnected_tcp(net: &Net, v6: bool) -> std::os::fd::OwnedFd {
    in_ns(&net.sender, move || {
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain socket creation, checked below.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor nobody else owns.
        unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
    })
}

/// Connects `fd` to `dest` (blocking) and returns it as a stream.
fn connect_fd(fd: std::os::fd::OwnedFd, dest: SocketAddr) -> TcpStream {
    // `TcpStream` cannot connect an existing socket; go through libc.
    let (storage, len) = sockaddr(dest);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    let ret = unsafe { libc::connect(fd.as_raw_fd(), (&raw const storage).cast(), len) };
    assert_eq!(ret, 0, "connect: {}", std::io::Error::last_os_error());
    TcpStream::from(fd)
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            (storage, std::mem::size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            (storage, std::mem::size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

/// TCP over IPv4 and IPv6: a socket registered after `connect` gets its data segments marked;
/// one registered before `connect` (the daemon keeps its descriptor until it has a port) gets
/// *every* segment marked, its SYN included (the packet thread pins the socket when the SYN is
/// queued, before classifying it); a dual-stack IPv6 socket connecting to an IPv4 peer too.
#[test]
fn tcp_registered_after_and_before_connect() {
    if !live() {
        return;
    }
    let net = Net::new();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let client = qos_handle(&daemon.socket);
    let capture = Capture::start(&net);
    let mut checks = Vec::new();
    let mut every = Vec::new();
    let mut sinks = Vec::new();
    for v6 in [false, true] {
        let dest = net.receiver_addr(v6, 7000);
        sinks.push((dest, tcp_sink(&net, dest)));
        // After connect.
        let s = in_ns(&net.sender, move || TcpStream::connect(dest).unwrap());
        client
            .add_socket_to_flow(&s, None, TrafficType::Voice, 0, 0)
            .unwrap();
        checks.push((s.local_addr().unwrap(), dest, Expect::Dscp(56)));
        write_chunks(s);
        // Before connect: local port 0, destination given.
        let fd = unconnected_tcp(&net, v6);
        client
            .add_socket_to_flow(&fd, Some(dest), TrafficType::Background, 0, 0)
            .unwrap();
        let s = connect_fd(fd, dest);
        let local = s.local_addr().unwrap();
        every.push((local, dest, 8));
        checks.push((local, dest, Expect::Dscp(8)));
        write_chunks(s);
        // Unregistered.
        let s = in_ns(&net.sender, move || TcpStream::connect(dest).unwrap());
        checks.push((s.local_addr().unwrap(), dest, Expect::Untouched));
        write_chunks(s);
    }
    // A dual-stack IPv6 socket registered before connecting to an IPv4 peer (v4-mapped).
    let dest4 = net.receiver_addr(false, 7000);
    let mapped = SocketAddr::new(
        std::net::IpAddr::V6(match dest4.ip() {
            std::net::IpAddr::V4(a) => a.to_ipv6_mapped(),
            std::net::IpAddr::V6(a) => a,
        }),
        7000,
    );
    let fd = unconnected_tcp(&net, true);
    client
        .add_socket_to_flow(&fd, Some(mapped), TrafficType::Control, 0, 0)
        .unwrap();
    let s = connect_fd(fd, mapped);
    let local = common::unmapped(s.local_addr().unwrap());
    every.push((local, dest4, 56));
    write_chunks(s);
    let mut totals = Vec::new();
    for (dest, sink) in sinks {
        stop_tcp_sink(&net, dest);
        totals.extend(sink.join().unwrap());
    }
    assert_eq!(
        totals,
        vec![2000; 7],
        "every byte arrives on every connection"
    );
    let seen = capture.finish();
    for (src, dst, dscp) in every {
        let (segments, syns) = check_tcp_every_segment(&seen, src, dst, dscp);
        assert!(syns >= 1, "{src}: its SYN was not captured");
        // SYN, ACK, 20 data segments, FIN at least.
        assert!(segments >= 23, "{src}: only {segments} segments captured");
    }
    for (src, dst, expect) in checks {
        assert!(
            check_tcp(&seen, src, dst, expect) > 0,
            "{src}: no data segments seen"
        );
        assert_eq!(
            common::tcp_stream_bytes(&seen, src, dst),
            vec![0x5a; 2000],
            "{src}: the captured stream is what was written"
        );
    }
    drop(client);
    daemon.stop();
}

/// 64 TCP sockets registered before `connect`, all pending at once, then connected one after
/// the other: every segment of every connection, its SYN included, carries the DSCP.
#[test]
fn many_sockets_registered_before_connect() {
    const N: usize = 64;
    if !live() {
        return;
    }
    let net = Net::new();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let client = qos_handle(&daemon.socket);
    let dest = net.receiver_addr(false, 7100);
    let sink = tcp_sink(&net, dest);
    let capture = Capture::start(&net);
    let fds: Vec<_> = (0..N).map(|_| unconnected_tcp(&net, false)).collect();
    for fd in &fds {
        client
            .add_socket_to_flow(fd, Some(dest), TrafficType::Voice, 0, 0)
            .unwrap();
    }
    let mut locals = Vec::new();
    for fd in fds {
        let mut s = connect_fd(fd, dest);
        locals.push(s.local_addr().unwrap());
        s.write_all(&[0x33; 100]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    stop_tcp_sink(&net, dest);
    assert_eq!(sink.join().unwrap(), vec![100; N]);
    let seen = capture.finish();
    for src in locals {
        let (segments, syns) = check_tcp_every_segment(&seen, src, dest, 56);
        assert!(
            syns >= 1 && segments >= 4,
            "{src}: {segments} segments, {syns} SYN"
        );
    }
    drop(client);
    daemon.stop();
}

/// Where the helper process (this binary, re-run) is told what to do, via the environment.
#[derive(Clone)]
struct Helper {
    socket: std::path::PathBuf,
    dest: SocketAddr,
    tag: String,
    register: Option<TrafficType>,
    dscp: Option<u32>,
    as_nobody: bool,
    /// In a user namespace of its own (`unshare -Ur`), where it holds every capability.
    own_userns: bool,
}

/// Runs the helper in the sender namespace; it prints `HELPER LOCAL addr` once its socket is
/// bound, waits for a line on stdin, sends, and prints `HELPER SETFLOW code` / `HELPER SENT`.
/// `between` runs after LOCAL and before the go line.
fn run_helper(net: &Net, h: &Helper, between: impl FnOnce(SocketAddr)) -> Vec<String> {
    // A copy every uid can execute.
    let exe = net.dir.join("helper");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.sender]);
    if h.as_nobody {
        cmd.args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ]);
    }
    if h.own_userns {
        cmd.args(["unshare", "-Ur"]);
    }
    cmd.arg(&exe)
        .args([
            "--ignored",
            "--exact",
            "helper_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("QOSMARK_HELPER", "1")
        .env("QOSMARK_HELPER_SOCKET", &h.socket)
        .env("QOSMARK_HELPER_DEST", h.dest.to_string())
        .env("QOSMARK_HELPER_TAG", &h.tag)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    if let Some(tt) = h.register {
        cmd.env("QOSMARK_HELPER_TYPE", (tt as u32).to_string());
    }
    if let Some(d) = h.dscp {
        cmd.env("QOSMARK_HELPER_DSCP", d.to_string());
    }
    let mut child = cmd.spawn().unwrap();
    // Watchdog: a helper that hangs is killed after 30 s, which fails the reads below.
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let finished = std::sync::Arc::clone(&finished);
        let pid = i32::try_from(child.id()).unwrap();
        std::thread::spawn(move || {
            for _ in 0..300 {
                if finished.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        })
    };
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "helper ended early: {lines:?}"
        );
        // The test harness prints "test helper_process ... " before the test's own output.
        if let Some(rest) = line.trim().split_once("HELPER ").map(|(_, r)| r) {
            lines.push(rest.to_owned());
            if let Some(local) = rest.strip_prefix("LOCAL ") {
                between(local.parse().unwrap());
                break;
            }
        }
    }
    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    lines.extend(
        rest.lines()
            .filter_map(|l| l.trim().split_once("HELPER ").map(|(_, r)| r))
            .map(str::to_owned),
    );
    let status = child.wait().unwrap();
    finished.store(true, std::sync::atomic::Ordering::SeqCst);
    watchdog.join().unwrap();
    assert!(status.success(), "helper failed: {lines:?}");
    lines
}

/// The helper process itself (see [`run_helper`]); does nothing unless started by a test.
#[test]
#[ignore = "helper process of the live tests; they start it"]
fn helper_process() {
    if std::env::var("QOSMARK_HELPER").as_deref() != Ok("1") {
        return;
    }
    let var = |k: &str| std::env::var(k).ok();
    let dest: SocketAddr = var("QOSMARK_HELPER_DEST").unwrap().parse().unwrap();
    let tag = var("QOSMARK_HELPER_TAG").unwrap();
    let bind = if dest.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let sock = UdpSocket::bind(bind).unwrap();
    sock.connect(dest).unwrap();
    let client = qos_handle(std::path::Path::new(&var("QOSMARK_HELPER_SOCKET").unwrap()));
    if let Some(tt) = var("QOSMARK_HELPER_TYPE") {
        let tt = TrafficType::try_from_u32(tt.parse().unwrap()).unwrap();
        let flow = client.add_socket_to_flow(&sock, None, tt, 0, 0).unwrap();
        if let Some(d) = var("QOSMARK_HELPER_DSCP") {
            let code = client
                .set_flow(flow, SetFlow::OutgoingDscp(d.parse().unwrap()))
                .err()
                .map_or(0, qosmark::QosError::raw);
            println!("HELPER SETFLOW {code}");
        }
    }
    println!("HELPER LOCAL {}", sock.local_addr().unwrap());
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    send_tagged(&sock, None, &tag, PACKETS);
    println!("HELPER SENT");
}

/// Custom DSCP: root may set any value; an unprivileged uid gets 5 until the administrator
/// allows that value, then its packets carry it.
#[test]
fn custom_dscp_root_and_unprivileged_user() {
    if !live() {
        return;
    }
    let net = Net::new();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let dests = [
        net.receiver_addr(false, 6300),
        net.receiver_addr(true, 6301),
    ];
    let sink = UdpSink::start(&net, &dests);
    let capture = Capture::start(&net);
    let admin = qos_handle(&daemon.socket);
    // Root, IPv4 and IPv6.
    for (i, dest) in dests.iter().copied().enumerate() {
        let bind = net.sender_addr(dest.is_ipv6(), 0);
        let sock = in_ns(&net.sender, move || {
            let s = UdpSocket::bind(bind).unwrap();
            s.connect(dest).unwrap();
            s
        });
        common::set_tos(sock.as_raw_fd(), dest.is_ipv6(), 0x03);
        let flow = admin
            .add_socket_to_flow(&sock, None, TrafficType::Background, 0, 0)
            .unwrap();
        admin.set_flow(flow, SetFlow::OutgoingDscp(34)).unwrap();
        send_tagged(&sock, None, &format!("root{i}"), PACKETS);
    }
    // nobody, value not allowed: 5, and the flow keeps its traffic type's DSCP (Background 8).
    let h = Helper {
        socket: daemon.socket.clone(),
        dest: dests[0],
        tag: "user-refused".into(),
        register: Some(TrafficType::Background),
        dscp: Some(34),
        as_nobody: true,
        own_userns: false,
    };
    let lines = run_helper(&net, &h, |_| {});
    assert!(lines.contains(&"SETFLOW 5".to_owned()), "{lines:?}");
    // nobody in a user namespace of its own holds CAP_NET_ADMIN *there*: still a user.
    let userns = Helper {
        tag: "user-userns".into(),
        own_userns: true,
        ..h.clone()
    };
    let lines = run_helper(&net, &userns, |_| {});
    assert!(lines.contains(&"SETFLOW 5".to_owned()), "{lines:?}");
    // The administrator allows 34 for users; now the same request succeeds.
    let mut table = admin.client().traffic_table().unwrap();
    table.user_dscp_allow |= 1 << 34;
    admin.client().set_traffic_table(table).unwrap();
    let h = Helper {
        tag: "user-allowed".into(),
        ..h
    };
    let lines = run_helper(&net, &h, |_| {});
    assert!(lines.contains(&"SETFLOW 0".to_owned()), "{lines:?}");
    for tag in [
        "root0",
        "root1",
        "user-refused",
        "user-userns",
        "user-allowed",
    ] {
        assert_eq!(
            sink.wait_for(tag, u64::from(PACKETS)),
            u64::from(PACKETS),
            "{tag}"
        );
    }
    let seen = capture.finish();
    assert_eq!(
        check_udp(&seen, "root0", 0x03, Expect::Dscp(34)),
        u64::from(PACKETS)
    );
    assert_eq!(
        check_udp(&seen, "root1", 0x03, Expect::Dscp(34)),
        u64::from(PACKETS)
    );
    assert_eq!(
        check_udp(&seen, "user-refused", 0, Expect::Dscp(8)),
        u64::from(PACKETS)
    );
    assert_eq!(
        check_udp(&seen, "user-userns", 0, Expect::Dscp(8)),
        u64::from(PACKETS)
    );
    assert_eq!(
        check_udp(&seen, "user-allowed", 0, Expect::Dscp(34)),
        u64::from(PACKETS)
    );
    // The allow-list was persisted.
    let state = std::fs::read_to_string(&daemon.state).unwrap();
    assert!(state.contains("user_dscp_allow = [34]"), "{state}");
    drop(admin);
    daemon.stop();
}

/// A process cannot register another process's socket: the daemon takes the addresses from
/// the descriptor passed, not from the record, and a record without a descriptor is refused.
#[test]
fn one_process_cannot_register_anothers_socket() {
    if !live() {
        return;
    }
    let net = Net::new();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let dests = [
        net.receiver_addr(false, 6400),
        net.receiver_addr(false, 6401),
    ];
    let sink = UdpSink::start(&net, &dests);
    let capture = Capture::start(&net);
    let mut client = Client::connect(&daemon.socket);
    let bind = net.sender_addr(false, 0);
    let d1 = dests[1];
    let own = in_ns(&net.sender, move || {
        let s = UdpSocket::bind(bind).unwrap();
        s.connect(d1).unwrap();
        s
    });
    let h = Helper {
        socket: daemon.socket.clone(),
        dest: dests[0],
        tag: "victim".into(),
        register: None,
        dscp: None,
        as_nobody: false,
        own_userns: false,
    };
    let victim_dest = dests[0];
    run_helper(&net, &h, |victim_local| {
        // Claim the helper's socket: its addresses in the record, socket value 3.
        let claim = qosmark_engine::abi::SocketInfo {
            socket: 3,
            family: qosmark_engine::abi::Family::V4,
            protocol: qosmark_engine::abi::Protocol::Udp,
            local: SocketAddr::new(net.s4.into(), victim_local.port()),
            peer: Some(victim_dest),
        };
        let req = Request::AddSocketToFlow {
            socket: claim,
            dest: None,
            traffic_type: TrafficType::Voice,
            flags: 0,
            flow_id: 0,
        };
        // Without a descriptor: refused.
        assert_eq!(client.call(&req, None), Err(87));
        // With our own descriptor: what gets registered is our socket, not the claim.
        assert!(matches!(
            client.call(&req, Some(own.as_fd())),
            Ok(Response::FlowId(_))
        ));
    });
    send_tagged(&own, None, "own", PACKETS);
    assert_eq!(
        sink.wait_for("victim", u64::from(PACKETS)),
        u64::from(PACKETS)
    );
    assert_eq!(sink.wait_for("own", u64::from(PACKETS)), u64::from(PACKETS));
    let seen = capture.finish();
    assert_eq!(
        check_udp_between(
            &seen,
            "victim",
            0,
            Expect::Untouched,
            net.s4.into(),
            dests[0]
        ),
        u64::from(PACKETS)
    );
    assert_eq!(
        check_udp_between(&seen, "own", 0, Expect::Dscp(56), net.s4.into(), dests[1]),
        u64::from(PACKETS)
    );
    drop(client);
    daemon.stop();
}

/// An admin rule (rules file) marks a port range of unregistered sockets; a socket flow
/// overrides it; a rule added at run time works and survives a restart with the table.
#[test]
fn admin_rule_port_range_socket_override_and_persistence() {
    if !live() {
        return;
    }
    let net = Net::new();
    let rules =
        "[[rule]]\nname = \"range\"\nprotocol = \"udp\"\nremote_port = \"6200-6210\"\ndscp = 10\n";
    let daemon = Daemon::start(
        &net,
        &DaemonOptions {
            rules: Some(rules.into()),
            keep_state: false,
        },
    );
    let ports = [6200u16, 6205, 6210, 6211, 6203, 6300];
    let dests: Vec<SocketAddr> = ports.iter().map(|p| net.receiver_addr(false, *p)).collect();
    let sink = UdpSink::start(&net, &dests);
    let capture = Capture::start(&net);
    let admin = qos_handle(&daemon.socket);
    // A rule added at run time: UDP to port 6300 → DSCP 18.
    let spec = RuleSpec {
        name: RuleName::try_new("runtime").unwrap(),
        precedence: 100,
        protocol: RuleProtocol::Udp,
        local_prefix: None,
        remote_prefix: None,
        local_ports: None,
        remote_ports: Some(PortRange {
            first: 6300,
            last: 6300,
        }),
        action: RuleAction::Dscp(Dscp::try_new(18).unwrap()),
        pcp: None,
        throttle_bps: None,
    };
    admin.client().add_rule(spec.clone()).unwrap();
    let bind = net.sender_addr(false, 0);
    for (i, dest) in dests.iter().copied().enumerate() {
        let sock = in_ns(&net.sender, move || {
            let s = UdpSocket::bind(bind).unwrap();
            s.connect(dest).unwrap();
            s
        });
        if dest.port() == 6203 {
            admin
                .add_socket_to_flow(&sock, None, TrafficType::Voice, 0, 0)
                .unwrap();
        }
        send_tagged(&sock, None, &format!("p{i}"), PACKETS);
    }
    let expect = [
        Expect::Dscp(10),
        Expect::Dscp(10),
        Expect::Dscp(10),
        Expect::Untouched,
        Expect::Dscp(56),
        Expect::Dscp(18),
    ];
    for i in 0..ports.len() {
        assert_eq!(
            sink.wait_for(&format!("p{i}"), u64::from(PACKETS)),
            u64::from(PACKETS)
        );
    }
    let seen = capture.finish();
    for (i, e) in expect.iter().enumerate() {
        assert_eq!(
            check_udp_between(&seen, &format!("p{i}"), 0, *e, net.s4.into(), dests[i]),
            u64::from(PACKETS),
            "port {}",
            ports[i]
        );
    }
    // Change the table too, then restart without --rules: both come back from the state file.
    let mut table = admin.client().traffic_table().unwrap();
    table.marks[TrafficType::Voice as usize].dscp = Some(Dscp::EF);
    admin.client().set_traffic_table(table).unwrap();
    drop(admin);
    daemon.stop();
    let daemon = Daemon::start(
        &net,
        &DaemonOptions {
            rules: None,
            keep_state: true,
        },
    );
    let admin = qosmark::Client::connect_unix(&daemon.socket).unwrap();
    assert_eq!(admin.traffic_table().unwrap(), table);
    let listed = admin.rules().unwrap();
    let names: Vec<&str> = listed.iter().map(|r| r.spec.name.as_str()).collect();
    assert_eq!(names, ["range", "runtime"]);
    assert_eq!(listed[1].spec, spec);
    drop(admin);
    daemon.stop();
}

/// Removing the socket, removing the flow, and closing the handle each stop the marking.
#[test]
fn remove_socket_remove_flow_and_close_handle_stop_marking() {
    if !live() {
        return;
    }
    let net = Net::new();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let dests: Vec<SocketAddr> = (0..3)
        .map(|i| net.receiver_addr(i == 1, 6500 + i))
        .collect();
    let sink = UdpSink::start(&net, &dests);
    let capture = Capture::start(&net);
    let main = qos_handle(&daemon.socket);
    let socks: Vec<UdpSocket> = dests
        .iter()
        .copied()
        .map(|dest| {
            let bind = net.sender_addr(dest.is_ipv6(), 0);
            in_ns(&net.sender, move || {
                let s = UdpSocket::bind(bind).unwrap();
                s.connect(dest).unwrap();
                s
            })
        })
        .collect();
    // 1: remove the socket.
    let f0 = main
        .add_socket_to_flow(&socks[0], None, TrafficType::Voice, 0, 0)
        .unwrap();
    send_tagged(&socks[0], None, "s-before", PACKETS);
    main.remove_socket_from_flow(Some(&socks[0]), f0).unwrap();
    send_tagged(&socks[0], None, "s-after", PACKETS);
    // 2: remove the whole flow.
    let f1 = main
        .add_socket_to_flow(&socks[1], None, TrafficType::AudioVideo, 0, 0)
        .unwrap();
    send_tagged(&socks[1], None, "f-before", PACKETS);
    main.remove_socket_from_flow(None::<&UdpSocket>, f1)
        .unwrap();
    send_tagged(&socks[1], None, "f-after", PACKETS);
    // 3: close the handle (the connection).
    let other = qos_handle(&daemon.socket);
    other
        .add_socket_to_flow(&socks[2], None, TrafficType::Background, 0, 0)
        .unwrap();
    send_tagged(&socks[2], None, "h-before", PACKETS);
    drop(other);
    let mut waited = 0;
    while main.client().status().unwrap().flows != 0 {
        assert!(waited < 200, "the closed handle's flow is still there");
        std::thread::sleep(Duration::from_millis(10));
        waited += 1;
    }
    send_tagged(&socks[2], None, "h-after", PACKETS);
    for tag in [
        "s-before", "s-after", "f-before", "f-after", "h-before", "h-after",
    ] {
        assert_eq!(
            sink.wait_for(tag, u64::from(PACKETS)),
            u64::from(PACKETS),
            "{tag}"
        );
    }
    let seen = capture.finish();
    for (tag, e, dst) in [
        ("s-before", Expect::Dscp(56), dests[0]),
        ("s-after", Expect::Untouched, dests[0]),
        ("f-before", Expect::Dscp(40), dests[1]),
        ("f-after", Expect::Untouched, dests[1]),
        ("h-before", Expect::Dscp(8), dests[2]),
        ("h-after", Expect::Untouched, dests[2]),
    ] {
        let src = net.sender_addr(dst.is_ipv6(), 0).ip();
        assert_eq!(
            check_udp_between(&seen, tag, 0, e, src, dst),
            u64::from(PACKETS),
            "{tag}"
        );
    }
    drop(main);
    daemon.stop();
}

/// A registered socket the application closes without removing it: its flow entry is
/// retired (the daemon's `sock_diag` sweep), so a new, unregistered socket on the same 5-tuple
/// leaves unmarked and may be registered again (no 183); and when the descriptor number is
/// reused at once for a new socket, registering it replaces the closed one immediately.
#[test]
fn closed_sockets_are_retired() {
    if !live() {
        return;
    }
    let net = Net::new();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let dests = [
        net.receiver_addr(false, 6600),
        net.receiver_addr(true, 6601),
    ];
    let sink = UdpSink::start(&net, &dests);
    let capture = Capture::start(&net);
    let client = qos_handle(&daemon.socket);
    let open = |local: SocketAddr, dest: SocketAddr| {
        in_ns(&net.sender, move || {
            let s = UdpSocket::bind(local).unwrap();
            s.connect(dest).unwrap();
            s
        })
    };
    // 1. Close without removal, wait for the sweep.
    let first = open(net.sender_addr(false, 0), dests[0]);
    let local = first.local_addr().unwrap();
    client
        .add_socket_to_flow(&first, None, TrafficType::Voice, 0, 0)
        .unwrap();
    send_tagged(&first, None, "open", PACKETS);
    assert_eq!(client.client().status().unwrap().sockets, 1);
    drop(first);
    let mut waited = 0;
    while client.client().status().unwrap().sockets != 0 {
        assert!(
            waited < 100,
            "the closed socket's entry is still there after 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    assert_eq!(
        client.client().status().unwrap().flows,
        0,
        "its single-socket flow went with it"
    );
    let reused = open(local, dests[0]);
    send_tagged(&reused, None, "reused", PACKETS);
    client
        .add_socket_to_flow(&reused, None, TrafficType::AudioVideo, 0, 0)
        .expect("the 5-tuple can be registered again");
    send_tagged(&reused, None, "reregistered", PACKETS);
    drop(reused);
    // 2. The descriptor number reused at once: the new registration replaces the old socket.
    let a = open(net.sender_addr(true, 0), dests[1]);
    let (fd_a, local_a) = (a.as_raw_fd(), a.local_addr().unwrap());
    client
        .add_socket_to_flow(&a, None, TrafficType::Voice, 0, 0)
        .unwrap();
    drop(a);
    let b = open(local_a, dests[1]);
    assert_eq!(
        b.as_raw_fd(),
        fd_a,
        "the test needs the descriptor number reused"
    );
    client
        .add_socket_to_flow(&b, None, TrafficType::Background, 0, 0)
        .expect("the closed socket under the same number is replaced, not 183");
    send_tagged(&b, None, "replaced", PACKETS);
    // `a` (same 5-tuple as `b`) left at once; `reused` (closed, its number taken by `a`, another
    // 5-tuple) at the next sweep: then only `b` is left.
    let mut waited = 0;
    loop {
        let status = client.client().status().unwrap();
        if (status.sockets, status.flows) == (1, 1) {
            break;
        }
        assert!(waited < 50, "{status:?}");
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    for tag in ["open", "reused", "reregistered", "replaced"] {
        assert_eq!(
            sink.wait_for(tag, u64::from(PACKETS)),
            u64::from(PACKETS),
            "{tag}"
        );
    }
    let seen = capture.finish();
    for (tag, e) in [
        ("open", Expect::Dscp(56)),
        ("reused", Expect::Untouched),
        ("reregistered", Expect::Dscp(40)),
        ("replaced", Expect::Dscp(8)),
    ] {
        assert_eq!(check_udp(&seen, tag, 0, e), u64::from(PACKETS), "{tag}");
    }
    assert!(
        daemon
            .log_text()
            .contains("was closed without QOSRemoveSocketFromFlow"),
        "the retirement is logged"
    );
    drop(client);
    daemon.stop();
}

/// A client that sends half a record and stalls blocks no one else, and loses its connection
/// (and its flows) once the record has not completed for 10 s.
#[test]
fn a_stalled_half_record_blocks_no_one() {
    if !live() {
        return;
    }
    let net = Net::new();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let mut stalled = Client::connect(&daemon.socket);
    let dest = net.receiver_addr(false, 6700);
    let bind = net.sender_addr(false, 0);
    let sock = in_ns(&net.sender, move || {
        let s = UdpSocket::bind(bind).unwrap();
        s.connect(dest).unwrap();
        s
    });
    stalled
        .add_socket(&sock, None, TrafficType::Voice, 0, 0)
        .unwrap();
    let mut record = Vec::new();
    codec::encode_request(&Request::QueryStatus, &mut record).unwrap();
    stalled.send_raw(&record[..10]);
    let began = std::time::Instant::now();
    // Others are served at once, meanwhile.
    let mut other = Client::connect(&daemon.socket);
    let status = other.status();
    assert_eq!((status.handles, status.flows), (2, 1));
    assert!(began.elapsed() < Duration::from_secs(2));
    // The stalled connection is closed by the daemon after 10 s.
    stalled
        .stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut byte = [0u8; 1];
    let n = loop {
        match stalled.stream.read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => break other.unwrap(),
        }
    };
    let waited = began.elapsed();
    assert_eq!(n, 0, "the daemon closes the connection");
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );
    let status = other.status();
    assert_eq!(
        (status.handles, status.flows),
        (1, 0),
        "its flow went with it"
    );
    assert!(daemon
        .log_text()
        .contains("a record started but did not complete within 10 s"));
    drop(other);
    daemon.stop();
}

/// A crash (SIGKILL) leaves the rules behind, and with them `--queue-bypass` lets traffic
/// through unmarked; the next start removes them before installing its own (no duplicates);
/// SIGINT removes them again.
#[test]
fn rules_after_a_crash_and_sigint() {
    if !live() {
        return;
    }
    let net = Net::new();
    let dest = net.receiver_addr(false, 6800);
    let sink = UdpSink::start(&net, &[dest]);
    let capture = Capture::start(&net);
    let bind = net.sender_addr(false, 0);
    let sock = in_ns(&net.sender, move || {
        let s = UdpSocket::bind(bind).unwrap();
        s.connect(dest).unwrap();
        s
    });
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let installed: Vec<Vec<String>> = ["iptables", "ip6tables"]
        .iter()
        .map(|t| common::our_rules(&net.sender, t))
        .collect();
    assert!(installed.iter().all(|r| r.len() == 2), "{installed:?}");
    let client = qos_handle(&daemon.socket);
    client
        .add_socket_to_flow(&sock, None, TrafficType::Voice, 0, 0)
        .unwrap();
    send_tagged(&sock, None, "live", PACKETS);
    assert_eq!(
        sink.wait_for("live", u64::from(PACKETS)),
        u64::from(PACKETS)
    );
    drop(client);
    daemon.kill();
    let left: Vec<Vec<String>> = ["iptables", "ip6tables"]
        .iter()
        .map(|t| common::our_rules(&net.sender, t))
        .collect();
    assert_eq!(left, installed, "a crash cleans nothing up");
    send_tagged(&sock, None, "crashed", PACKETS);
    assert_eq!(
        sink.wait_for("crashed", u64::from(PACKETS)),
        u64::from(PACKETS),
        "--queue-bypass: traffic flows with no daemon bound"
    );
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let log = daemon.log_text();
    assert!(
        log.contains("left by a previous run: removed 2 IPv4 rule(s)")
            && log.contains("left by a previous run: removed 2 IPv6 rule(s)"),
        "{log}"
    );
    for tool in ["iptables", "ip6tables"] {
        assert_eq!(common::our_rules(&net.sender, tool).len(), 2, "{tool}");
    }
    let client = qos_handle(&daemon.socket);
    client
        .add_socket_to_flow(&sock, None, TrafficType::AudioVideo, 0, 0)
        .unwrap();
    send_tagged(&sock, None, "restarted", PACKETS);
    assert_eq!(
        sink.wait_for("restarted", u64::from(PACKETS)),
        u64::from(PACKETS)
    );
    drop(client);
    // Another program's rule, above ours: it must survive our cleanup.
    let foreign = |op: &str| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.sender,
                "iptables",
                "-w",
                "-t",
                "mangle",
                op,
            ])
            .args([
                "OUTPUT",
                "-p",
                "icmp",
                "-m",
                "comment",
                "--comment",
                "not ours",
            ])
            .args(["-j", "ACCEPT"])
            .status()
            .unwrap()
            .success()
    };
    assert!(foreign("-I"));
    let log = daemon.stop_with(libc::SIGINT);
    assert!(log.contains("signal 2: shutting down"), "{log}");
    assert!(foreign("-C"), "another program's rule was removed");
    let seen = capture.finish();
    for (tag, e) in [
        ("live", Expect::Dscp(56)),
        ("crashed", Expect::Untouched),
        ("restarted", Expect::Dscp(40)),
    ] {
        assert_eq!(
            check_udp_between(&seen, tag, 0, e, net.s4.into(), dest),
            u64::from(PACKETS),
            "{tag}"
        );
    }
}

/// Framing and descriptor errors answer exactly as the transport contract says.
#[test]
fn framing_and_descriptor_errors() {
    if !live() {
        return;
    }
    let net = Net::new();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let error_code = |bytes: &[u8]| -> u32 {
        match codec::decode_response(qosmark_engine::abi::ioctl::RequestKind::QueryStatus, bytes)
            .unwrap()
        {
            codec::Reply::Error(e) => e.win32.0,
            codec::Reply::Response(r) => panic!("not an error: {r:?}"),
        }
    };
    // Bad magic: one Error 87, then the connection closes.
    let mut c = Client::connect(&daemon.socket);
    c.send_raw(&[0xa5; 16]);
    assert_eq!(error_code(&c.read_record().unwrap()), 87);
    assert!(c.read_record().is_none());
    // Bad version: 1306, then close.
    let mut record = Vec::new();
    codec::encode_request(&Request::QueryStatus, &mut record).unwrap();
    record[4] = 0x63;
    let mut c = Client::connect(&daemon.socket);
    c.send_raw(&record);
    assert_eq!(error_code(&c.read_record().unwrap()), 1306);
    assert!(c.read_record().is_none());
    // Length above the maximum: 87, close.
    let mut c = Client::connect(&daemon.socket);
    let mut big = Vec::new();
    codec::encode_request(&Request::QueryStatus, &mut big).unwrap();
    big[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    c.send_raw(&big);
    assert_eq!(error_code(&c.read_record().unwrap()), 87);
    assert!(c.read_record().is_none());
    // A framed record that does not decode: 87, and the connection stays usable.
    let mut c = Client::connect(&daemon.socket);
    let mut q = Vec::new();
    codec::encode_request(
        &Request::QueryFlow {
            flow_id: 1,
            op: qosmark_engine::abi::QueryFlow::PacketPriority,
        },
        &mut q,
    )
    .unwrap();
    let last = q.len() - 1;
    q[last] = 0x7f; // operation 0x7f000001
    c.send_raw(&q);
    assert_eq!(error_code(&c.read_record().unwrap()), 87);
    assert_eq!(
        c.status().protocol_version,
        qosmark_engine::abi::PROTOCOL_VERSION
    );
    // A descriptor on another request: 87.
    let file = std::fs::File::open("/dev/null").unwrap();
    assert_eq!(c.call(&Request::QueryStatus, Some(file.as_fd())), Err(87));
    // AddSocketToFlow with a descriptor that is not an inet socket: 87.
    let sock = in_ns(&net.sender, || UdpSocket::bind("127.0.0.1:0").unwrap());
    let info = common::socket_info(sock.as_raw_fd());
    let req = Request::AddSocketToFlow {
        socket: info,
        dest: None,
        traffic_type: TrafficType::Voice,
        flags: 0,
        flow_id: 0,
    };
    assert_eq!(c.call(&req, Some(file.as_fd())), Err(87));
    // An unconnected, unbound-destination UDP socket without DestAddr: the engine's 87.
    assert_eq!(c.call(&req, Some(sock.as_fd())), Err(87));
    assert_eq!(c.status().flows, 0);
    // The daemon keeps no descriptor: once the application closes its socket, the port is
    // free again — after a registration, and after a descriptor sent with another request.
    let (s4, dest) = (net.s4, net.receiver_addr(false, 6600));
    for with_registration in [true, false] {
        let udp = in_ns(&net.sender, move || {
            let u = UdpSocket::bind(SocketAddr::new(s4.into(), 0)).unwrap();
            u.connect(dest).unwrap();
            u
        });
        let local = udp.local_addr().unwrap();
        if with_registration {
            c.add_socket(&udp, None, TrafficType::Voice, 0, 0).unwrap();
        } else {
            assert_eq!(c.call(&Request::QueryStatus, Some(udp.as_fd())), Err(87));
        }
        drop(udp);
        let rebound = in_ns(&net.sender, move || UdpSocket::bind(local).map(|_| ()));
        assert!(rebound.is_ok(), "port {local} still held: {rebound:?}");
    }
    drop(c);
    daemon.stop();
}

/// Start-up errors are one line and a non-zero exit: socket in use, queue busy, not root.
#[test]
fn start_up_errors_are_one_clear_line() {
    if !live() {
        return;
    }
    let net = Net::new();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let run = |extra: &[&str], as_nobody: bool| -> (i32, String) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &net.sender]);
        if as_nobody {
            cmd.args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ]);
        }
        let out = cmd
            .arg(env!("CARGO_BIN_EXE_qosmarkd"))
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let errors: Vec<&str> = err.lines().filter(|l| l.contains("error:")).collect();
        assert_eq!(errors.len(), 1, "{err}");
        (out.status.code().unwrap_or(-1), errors[0].to_owned())
    };
    let sock = daemon.socket.display().to_string();
    let other_sock = net.dir.join("other.sock").display().to_string();
    let state = net.dir.join("other-state.toml").display().to_string();
    let (code, line) = run(
        &["--socket", &sock, "--queue-num", "8", "--state", &state],
        false,
    );
    assert_eq!(code, 1);
    assert!(
        line.contains("is in use: another qosmarkd is running"),
        "{line}"
    );
    let (code, line) = run(
        &[
            "--socket",
            &other_sock,
            "--queue-num",
            "7",
            "--state",
            &state,
        ],
        false,
    );
    assert_eq!(code, 1);
    assert!(line.contains("netfilter queue 7 is busy"), "{line}");
    assert!(!std::path::Path::new(&other_sock).exists());
    let (code, line) = run(&["--socket", &other_sock, "--state", &state], true);
    assert_eq!(code, 1);
    assert!(line.contains("must run as root"), "{line}");
    let (code, line) = run(&["--queue-num", "x"], false);
    assert_eq!(code, 2);
    assert!(line.contains("--queue-num"), "{line}");
    // The running daemon kept its rules and still marks: its stop() checks the rules go.
    let listing = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.sender,
            "iptables",
            "-t",
            "mangle",
            "-S",
            "OUTPUT",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains("qosmarkd:queue=7"));
    daemon.stop();
}
