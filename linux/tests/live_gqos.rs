//! Live GQoS tests against `qosmarkd` in a network namespace pair (own netns + veth, as
//! `live_api.rs`), judged by the receiving side's capture:
//!
//! * the Rust API ([`GqosSession`] over the unix transport): an unconnected UDP sender to
//!   several destinations through `QOS_DESTADDR` (each marked, an unregistered one not), a
//!   service change re-marking all of them (and completing a held wait), `SERVICETYPE_NOTRAFFIC` ending sending marking
//!   (and completing a held wait), a connected UDP socket whose disconnect ends its flow (the
//!   reaper, the wait completes), and a TCP sender whose `shutdown(SHUT_WR)` ends its flow
//!   (the wait completes, `get` reads `SERVICETYPE_NOTRAFFIC`);
//! * shaping ended by a `set` without `QOS_SD_MODE` (held packets freed at once), and refused
//!   `set`s on a marking socket (a rate out of range, an IPv6 destination for an IPv4 socket)
//!   that leave its mark and destinations as they were;
//! * the C ABI (`qosmark::capi`, what `libqosmark.so` exports): `QmSetSocketQos` with a `QOS`
//!   carrying a `QOS_DESTADDR`, the `WSAENOBUFS` size protocol of `QmGetSocketQos`, and
//!   `SERVICETYPE_BESTEFFORT` ending the marking.
//!
//! Expected DSCP values are qos-api.md §11.4's, written as numbers. Bounded: a few hundred
//! packets and a few seconds (the reaper sweeps every second).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    clippy::many_single_char_names,
    reason = "test code: a panic is a failure; each test is one scenario checked step by step"
)]

mod common;

use common::{
    check_tcp, check_udp_between, in_ns, live, send_tagged, Capture, Daemon, DaemonOptions, Expect,
    Net, UdpSink,
};
use qosmark::gqos::{Flowspec, GqosSession, ProviderObject, Qos, QosReport};
use qosmark::Client;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PACKETS: u32 = 10;
/// How long a held wait may take to complete after the change: the reaper needs two sweeps
/// (one second each) to retire a shut-down or disconnected socket.
const WAIT_LIMIT: Duration = Duration::from_secs(8);

fn qos(service: u32, objects: Vec<ProviderObject>) -> Qos {
    Qos {
        sending: Flowspec::unspecified(service),
        receiving: Flowspec::unspecified(6),
        objects,
    }
}

fn session(daemon: &Daemon) -> Arc<GqosSession> {
    let path = daemon.socket.clone();
    Arc::new(GqosSession::with_client(
        Client::connect_unix(&daemon.socket).unwrap(),
        Box::new(move || Client::connect_unix(&path)),
    ))
}

/// Starts `wait_change` on `fd` in a thread; the result and how long it took.
fn waiter(
    g: &Arc<GqosSession>,
    fd: i32,
) -> std::thread::JoinHandle<(Result<QosReport, u32>, Duration)> {
    let g = Arc::clone(g);
    let t = std::thread::spawn(move || {
        let start = Instant::now();
        let r = g.wait_change(fd).map_err(qosmark::QosError::raw);
        (r, start.elapsed())
    });
    // Long enough for the request to reach the daemon and be held.
    std::thread::sleep(Duration::from_millis(300));
    t
}

/// Joins a waiter within [`WAIT_LIMIT`] (of its own start) and returns its report.
fn completed(
    what: &str,
    w: std::thread::JoinHandle<(Result<QosReport, u32>, Duration)>,
) -> QosReport {
    let deadline = Instant::now() + WAIT_LIMIT;
    while !w.is_finished() {
        assert!(
            Instant::now() < deadline,
            "{what}: the held wait did not complete"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (r, took) = w.join().unwrap();
    assert!(
        took >= Duration::from_millis(250),
        "the wait was not held: {took:?}"
    );
    r.unwrap()
}

/// Disconnects a UDP socket (`connect` with `AF_UNSPEC`).
fn disconnect(s: &UdpSocket) {
    let a = libc::sockaddr {
        sa_family: libc::AF_UNSPEC as libc::sa_family_t,
        sa_data: [0; 14],
    };
    // SAFETY: a sockaddr with family AF_UNSPEC, read for its size from a live local.
    let ret = unsafe {
        libc::connect(
            s.as_raw_fd(),
            &raw const a,
            core::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn gqos_rust_api_against_qosmarkd() {
    if !live() {
        return;
    }
    let net = Net::new();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let dests: Vec<SocketAddr> = (0..3).map(|i| net.receiver_addr(false, 8300 + i)).collect();
    let conn = net.receiver_addr(false, 8303);
    let tcp_addr = net.receiver_addr(false, 8304);
    let sink = UdpSink::start(&net, &[dests[0], dests[1], dests[2], conn]);
    let listener = in_ns(&net.receiver, move || TcpListener::bind(tcp_addr).unwrap());
    let tcp_sink = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut data = Vec::new();
        s.read_to_end(&mut data).unwrap();
        data.len()
    });
    let capture = Capture::start(&net);
    let bind4 = net.sender_addr(false, 0);
    let (u, c) = in_ns(&net.sender, move || {
        let c = UdpSocket::bind(bind4).unwrap();
        c.connect(conn).unwrap();
        (UdpSocket::bind(bind4).unwrap(), c)
    });
    let g = session(&daemon);

    // An unconnected sender, two destinations through QOS_DESTADDR: ControlledLoad 24.
    for d in &dests[..2] {
        g.set(&u, &qos(2, vec![ProviderObject::DestAddr(*d)]))
            .unwrap();
    }
    send_tagged(&u, Some(dests[0]), "g-cl-0", PACKETS);
    send_tagged(&u, Some(dests[1]), "g-cl-1", PACKETS);
    send_tagged(&u, Some(dests[2]), "g-cl-2", PACKETS);
    // Guaranteed (40) re-marks both destinations.
    g.set(&u, &qos(3, vec![])).unwrap();
    let r = g.get(u.as_raw_fd()).unwrap();
    assert_eq!(
        (r.sending.service_type, r.status_code, r.dscp, r.pcp),
        (3, 11009, 40, 5)
    );
    send_tagged(&u, Some(dests[0]), "g-gu-0", PACKETS);
    send_tagged(&u, Some(dests[1]), "g-gu-1", PACKETS);
    // A held wait completes when the mark changes (NetworkControl 48 / 7), then Guaranteed
    // again.
    let w = waiter(&g, u.as_raw_fd());
    g.set(&u, &qos(0xA, vec![])).unwrap();
    let r = completed("mark change", w);
    assert_eq!(
        (r.sending.service_type, r.status_code, r.dscp, r.pcp),
        (0xA, 11009, 48, 7)
    );
    g.set(&u, &qos(3, vec![])).unwrap();
    // A held wait completes when NOTRAFFIC ends the sending QoS; after it, nothing is marked.
    let w = waiter(&g, u.as_raw_fd());
    g.set(&u, &qos(0, vec![])).unwrap();
    let r = completed("NOTRAFFIC", w);
    assert_eq!(
        (r.sending.service_type, r.status_code, r.dscp),
        (0, 11008, 0)
    );
    send_tagged(&u, Some(dests[0]), "g-off-0", PACKETS);

    // A connected UDP socket: NetworkControl 48 without QOS_DESTADDR; its disconnect ends the
    // flow (the reaper), which completes a held wait.
    g.set(&c, &qos(0xA, vec![])).unwrap();
    send_tagged(&c, None, "g-conn", PACKETS);
    let w = waiter(&g, c.as_raw_fd());
    disconnect(&c);
    let r = completed("UDP disconnect", w);
    assert_eq!((r.sending.service_type, r.status_code), (0, 11008));
    send_tagged(&c, Some(conn), "g-disconnected", PACKETS);

    // A TCP sender: Qualitative would mark 0; NetworkControl marks 48. shutdown(SHUT_WR)
    // ends the flow: the wait completes and get reads NOTRAFFIC.
    let mut t = in_ns(&net.sender, move || TcpStream::connect(tcp_addr).unwrap());
    t.set_nodelay(true).unwrap();
    g.set(&t, &qos(0xA, vec![])).unwrap();
    let tcp_src = t.local_addr().unwrap();
    for _ in 0..10 {
        t.write_all(&[0x47; 100]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let w = waiter(&g, t.as_raw_fd());
    t.shutdown(Shutdown::Write).unwrap();
    let r = completed("TCP shutdown", w);
    assert_eq!((r.sending.service_type, r.status_code), (0, 11008));
    let r = g.get(t.as_raw_fd()).unwrap();
    assert_eq!(
        r.sending.service_type, 0,
        "ended by the back end: NOTRAFFIC"
    );
    assert_eq!(tcp_sink.join().unwrap(), 1000);

    for tag in [
        "g-cl-0",
        "g-cl-1",
        "g-cl-2",
        "g-gu-0",
        "g-gu-1",
        "g-off-0",
        "g-conn",
        "g-disconnected",
    ] {
        assert_eq!(
            sink.wait_for(tag, u64::from(PACKETS)),
            u64::from(PACKETS),
            "{tag}"
        );
    }
    let seen = capture.finish();
    let src = net.sender_addr(false, 0).ip();
    for (tag, e, dst) in [
        ("g-cl-0", Expect::Dscp(24), dests[0]),
        ("g-cl-1", Expect::Dscp(24), dests[1]),
        ("g-cl-2", Expect::Untouched, dests[2]),
        ("g-gu-0", Expect::Dscp(40), dests[0]),
        ("g-gu-1", Expect::Dscp(40), dests[1]),
        ("g-off-0", Expect::Untouched, dests[0]),
        ("g-conn", Expect::Dscp(48), conn),
        ("g-disconnected", Expect::Untouched, conn),
    ] {
        assert_eq!(
            check_udp_between(&seen, tag, 0, e, src, dst),
            u64::from(PACKETS),
            "{tag}"
        );
    }
    assert!(check_tcp(&seen, tcp_src, tcp_addr, Expect::Dscp(48)) > 0);
    assert_eq!(
        common::tcp_stream_bytes(&seen, tcp_src, tcp_addr),
        vec![0x47; 1000]
    );
    drop(g);
    daemon.stop();
}

/// Datagrams per burst: 1 028 IP bytes each, 30 840 bytes = 2.5 s at 12 500 bytes/s
/// (the bucket lets about the first one and a half through at once).
const BURST: u32 = 30;
/// Sends `BURST` datagrams `TAG:i....` padded to 1 000 bytes, 1 ms apart.
fn send_big(u: &UdpSocket, to: SocketAddr, tag: &str) {
    for i in 0..BURST {
        let mut msg = format!("{tag}:{i}").into_bytes();
        msg.resize(1000, b'.');
        u.send_to(&msg, to).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Shaping ends with a `set` that has no `QOS_SD_MODE`: the packets the shaper held leave at
/// once and later ones are not delayed. A `set` the back end refuses after it changed the mark
/// (a rate out of range; an IPv6 destination for an IPv4 socket) leaves the socket as it was:
/// the old destination keeps DSCP 24, the new one is not marked. Judged by the receiver's
/// arrival times and capture.
#[test]
fn gqos_shaping_ends_and_failed_sets_change_nothing_against_qosmarkd() {
    use ProviderObject::{DestAddr, SdMode};
    if !live() {
        return;
    }
    let net = Net::new();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let d0 = net.receiver_addr(false, 8310);
    let d1 = net.receiver_addr(false, 8311);
    let sink = UdpSink::start(&net, &[d0, d1]);
    let capture = Capture::start(&net);
    let bind4 = net.sender_addr(false, 0);
    let u = in_ns(&net.sender, move || UdpSocket::bind(bind4).unwrap());
    let g = session(&daemon);

    // ControlledLoad (24) shaped to 12 500 bytes/s (100 kbit/s).
    let mut shaped = qos(2, vec![DestAddr(d0), SdMode(1)]);
    shaped.sending.token_rate = 12_500;
    g.set(&u, &shaped).unwrap();
    send_big(&u, d0, "g-held");
    // Most of the burst is held now; a set without QOS_SD_MODE ends shaping and frees them.
    let held_before = BURST - u32::try_from(sink.count("g-held")).unwrap();
    assert!(held_before > BURST / 2, "only {held_before} held");
    let cleared = Instant::now();
    g.set(&u, &qos(2, vec![DestAddr(d0)])).unwrap();
    assert_eq!(sink.wait_for("g-held", u64::from(BURST)), u64::from(BURST));
    let released_in = cleared.elapsed();
    // Still shaped, the last of them would leave ~2.4 s after the first; 1.5 s leaves room
    // for a loaded machine (released at once, they arrive within ~0.1 s here).
    assert!(
        released_in < Duration::from_millis(1500),
        "held packets took {released_in:?} after shaping ended (shaped: ~2.5 s)"
    );
    let start = Instant::now();
    send_big(&u, d0, "g-unshaped");
    assert_eq!(
        sink.wait_for("g-unshaped", u64::from(BURST)),
        u64::from(BURST)
    );
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "an unshaped burst took {took:?} (shaped: ~2.5 s)"
    );

    // Refused sets with a new destination change nothing.
    let mut too_slow = qos(3, vec![DestAddr(d1), SdMode(1)]);
    too_slow.sending.token_rate = 100;
    assert_eq!(g.set(&u, &too_slow).unwrap_err().raw(), 11017);
    let v6 = net.receiver_addr(true, 8312);
    assert_eq!(
        g.set(&u, &qos(0xA, vec![DestAddr(v6)])).unwrap_err().raw(),
        87
    );
    let r = g.get(u.as_raw_fd()).unwrap();
    assert_eq!(
        (r.sending.service_type, r.status_code, r.dscp),
        (2, 11009, 24)
    );
    send_tagged(&u, Some(d0), "g-kept-0", PACKETS);
    send_tagged(&u, Some(d1), "g-kept-1", PACKETS);
    for (tag, n) in [
        ("g-held", BURST),
        ("g-unshaped", BURST),
        ("g-kept-0", PACKETS),
        ("g-kept-1", PACKETS),
    ] {
        assert_eq!(sink.wait_for(tag, u64::from(n)), u64::from(n), "{tag}");
    }
    let seen = capture.finish();
    let src = net.sender_addr(false, 0).ip();
    // The padded bursts (common::check_udp wants the short payloads of send_tagged): each
    // datagram once, DSCP 24 with ECN 0, a valid IPv4 header checksum.
    for tag in ["g-held", "g-unshaped"] {
        let prefix = format!("{tag}:");
        let mut indices = std::collections::BTreeSet::new();
        for p in seen
            .iter()
            .filter(|p| p.payload.starts_with(prefix.as_bytes()))
        {
            assert!(p.checksum_ok, "{tag}: IPv4 header checksum");
            assert_eq!(p.tos, 24 << 2, "{tag}: TOS");
            assert_eq!(p.payload.len(), 1000, "{tag}: length");
            let index: String = p.payload[prefix.len()..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|b| char::from(*b))
                .collect();
            assert!(indices.insert(index), "{tag}: a datagram twice");
        }
        assert_eq!(indices.len(), BURST as usize, "{tag}: captured");
    }
    for (tag, n, e, dst) in [
        ("g-kept-0", PACKETS, Expect::Dscp(24), d0),
        ("g-kept-1", PACKETS, Expect::Untouched, d1),
    ] {
        assert_eq!(
            check_udp_between(&seen, tag, 0, e, src, dst),
            u64::from(n),
            "{tag}"
        );
    }
    drop(g);
    daemon.stop();
}

/// `QOS_DESTADDR` as `qossp.h` lays it out (the test's own copy, not the shim's).
#[repr(C)]
struct QosDestAddr {
    object_type: u32,
    object_length: u32,
    socket_address: *const libc::sockaddr_in,
    socket_address_length: u32,
}

#[test]
fn gqos_c_abi_against_qosmarkd() {
    use qosmark::capi::{QOSGetLastError, QmGetSocketQos, QmSetSocketQos, FLOWSPEC, QOS, WSABUF};
    if !live() {
        return;
    }
    let net = Net::new();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    // The only test of this binary that uses the C ABI's process-wide session.
    std::env::set_var("QOSMARK_SOCKET", &daemon.socket);
    let dest = net.receiver_addr(false, 8310);
    let sink = UdpSink::start(&net, &[dest]);
    let capture = Capture::start(&net);
    let bind4 = net.sender_addr(false, 0);
    let u = in_ns(&net.sender, move || UdpSocket::bind(bind4).unwrap());
    let SocketAddr::V4(d4) = dest else {
        panic!("IPv4 destination expected")
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: d4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*d4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut object = QosDestAddr {
        object_type: 2004,
        object_length: u32::try_from(core::mem::size_of::<QosDestAddr>()).unwrap(),
        socket_address: &raw const sin,
        socket_address_length: u32::try_from(core::mem::size_of::<libc::sockaddr_in>()).unwrap(),
    };
    let flowspec = |st: u32| -> FLOWSPEC { Flowspec::unspecified(st).into() };
    let mut q = QOS {
        SendingFlowspec: flowspec(3),
        ReceivingFlowspec: flowspec(6),
        ProviderSpecific: WSABUF {
            len: object.object_length,
            buf: (&raw mut object).cast(),
        },
    };
    let fd = usize::try_from(u.as_raw_fd()).unwrap();
    // SAFETY: `q` and the object and address it points to are live locals.
    let ok = unsafe { QmSetSocketQos(fd, &raw const q) };
    assert_eq!(ok, 1, "{}", QOSGetLastError());
    send_tagged(&u, Some(dest), "c-gu", PACKETS);
    // The size protocol: 40 bytes are too few; the size needed is written at their start.
    let mut buf = [0u8; 128];
    let mut needed = 0u32;
    // SAFETY: 40 of the buffer's 128 bytes offered; a live u32.
    let r = unsafe { QmGetSocketQos(fd, buf.as_mut_ptr().cast(), 40, &raw mut needed) };
    assert_eq!((r, QOSGetLastError()), (0, 10055));
    let at_start = u32::from_ne_bytes(buf[..4].try_into().unwrap());
    assert_eq!(
        (needed, at_start),
        (100, 100),
        "sizeof(QOS) 80 + RSVP_STATUS_INFO 20"
    );
    assert!(buf[4..40].iter().all(|b| *b == 0), "nothing else written");
    // SAFETY: `needed` bytes offered.
    let r = unsafe { QmGetSocketQos(fd, buf.as_mut_ptr().cast(), needed, &raw mut needed) };
    assert_eq!(r, 1, "{}", QOSGetLastError());
    let word = |at: usize| u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap());
    // SendingFlowspec.ServiceType at 20, ReceivingFlowspec.ServiceType at 52, len at 64,
    // RSVP_STATUS_INFO at 80: type 1000, length 20, StatusCode, ExtendedStatus1/2.
    assert_eq!((word(20), word(52), word(64)), (3, 6, 20));
    assert_eq!(
        (word(80), word(84), word(88), word(92), word(96)),
        (1000, 20, 11009, 40, 5)
    );
    let provider = usize::from_ne_bytes(buf[72..80].try_into().unwrap());
    assert_eq!(
        provider,
        buf.as_ptr() as usize + 80,
        "ProviderSpecific.buf points behind"
    );
    // BESTEFFORT ends the marking.
    q.SendingFlowspec = flowspec(1);
    q.ProviderSpecific = WSABUF {
        len: 0,
        buf: core::ptr::null_mut(),
    };
    // SAFETY: as above.
    let ok = unsafe { QmSetSocketQos(fd, &raw const q) };
    assert_eq!(ok, 1, "{}", QOSGetLastError());
    send_tagged(&u, Some(dest), "c-be", PACKETS);
    for tag in ["c-gu", "c-be"] {
        assert_eq!(
            sink.wait_for(tag, u64::from(PACKETS)),
            u64::from(PACKETS),
            "{tag}"
        );
    }
    let seen = capture.finish();
    let src = net.sender_addr(false, 0).ip();
    for (tag, e) in [("c-gu", Expect::Dscp(40)), ("c-be", Expect::Untouched)] {
        assert_eq!(
            check_udp_between(&seen, tag, 0, e, src, dest),
            u64::from(PACKETS),
            "{tag}"
        );
    }
    daemon.stop();
}
