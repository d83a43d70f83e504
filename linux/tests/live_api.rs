//! Live tests through the public APIs applications use: the Rust QOS2 API (`qosmark::QosHandle`
//! over the unix transport) and the C ABI (`libqosmark.so` + `qosmark.h`, a C program compiled
//! by this test), both against `qosmarkd`, judged by the receiving side's capture.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    reason = "test code: a panic is a failure; each test is one scenario checked step by step"
)]

mod common;

use common::{
    check_tcp, check_udp_between, in_ns, live, send_tagged, Capture, Daemon, DaemonOptions, Expect,
    Net, UdpSink,
};
use qosmark::qos2::FlowQuery;
use qosmark::{Client, QosHandle};
use qosmark_engine::abi::{QueryFlow, SetFlow, TrafficType, QOS_NON_ADAPTIVE_FLOW};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

const PACKETS: u32 = 10;

/// A TCP sink that accepts `n` connections in the receiver namespace and returns their sizes.
fn tcp_sink(net: &Net, addr: SocketAddr, n: usize) -> std::thread::JoinHandle<Vec<usize>> {
    let listener = in_ns(&net.receiver, move || TcpListener::bind(addr).unwrap());
    std::thread::spawn(move || {
        (0..n)
            .map(|_| {
                let (mut s, _) = listener.accept().unwrap();
                let mut data = Vec::new();
                s.read_to_end(&mut data).unwrap();
                data.len()
            })
            .collect()
    })
}

/// The Rust API: `QosHandle` over the unix transport — traffic types, custom DSCP, a TCP
/// flow, `QOSQueryFlow`, removal and handle close (`Drop`).
#[test]
fn rust_api_against_qosmarkd() {
    if !live() {
        return;
    }
    let net = Net::new();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let udp4 = net.receiver_addr(false, 8000);
    let udp6 = net.receiver_addr(true, 8001);
    let tcp4 = net.receiver_addr(false, 8002);
    let sink = UdpSink::start(&net, &[udp4, udp6]);
    let tcp = tcp_sink(&net, tcp4, 1);
    let capture = Capture::start(&net);
    let (b4, b6) = (net.sender_addr(false, 0), net.sender_addr(true, 0));
    let (s4, s6) = in_ns(&net.sender, move || {
        let s4 = UdpSocket::bind(b4).unwrap();
        s4.connect(udp4).unwrap();
        (s4, UdpSocket::bind(b6).unwrap())
    });
    common::set_tos(s4.as_raw_fd(), false, 0x02);

    let handle = QosHandle::with_client(Client::connect_unix(&daemon.socket).unwrap());
    let f4 = handle
        .add_socket_to_flow(&s4, None, TrafficType::Control, 0, 0)
        .unwrap();
    let FlowQuery::PacketPriority(p) = handle.query_flow(f4, QueryFlow::PacketPriority).unwrap()
    else {
        panic!("packet priority expected")
    };
    assert_eq!(p.conformant_dscp, 56);
    send_tagged(&s4, None, "r-control4", PACKETS);
    let f6 = handle
        .add_socket_to_flow(
            &s6,
            Some(udp6),
            TrafficType::BestEffort,
            QOS_NON_ADAPTIVE_FLOW,
            0,
        )
        .unwrap();
    send_tagged(&s6, Some(udp6), "r-besteffort6", PACKETS);
    handle.set_flow(f6, SetFlow::OutgoingDscp(18)).unwrap();
    send_tagged(&s6, Some(udp6), "r-dscp6", PACKETS);
    let t = in_ns(&net.sender, move || TcpStream::connect(tcp4).unwrap());
    handle
        .add_socket_to_flow(&t, None, TrafficType::ExcellentEffort, 0, 0)
        .unwrap();
    let tcp_src = t.local_addr().unwrap();
    {
        let mut t = t;
        t.set_nodelay(true).unwrap();
        for _ in 0..10 {
            t.write_all(&[0x33; 100]).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    handle.remove_socket_from_flow(Some(&s4), f4).unwrap();
    assert_eq!(
        handle
            .remove_socket_from_flow(Some(&s4), f4)
            .unwrap_err()
            .raw(),
        1168
    );
    send_tagged(&s4, None, "r-removed4", PACKETS);
    // Close the handle (Drop); a second handle sees the flows go.
    drop(handle);
    let watcher = Client::connect_unix(&daemon.socket).unwrap();
    let mut tries = 0;
    while !watcher.enumerate_flows().unwrap().is_empty() {
        assert!(tries < 200, "flows of the dropped handle remain");
        std::thread::sleep(Duration::from_millis(10));
        tries += 1;
    }
    send_tagged(&s6, Some(udp6), "r-closed6", PACKETS);
    for tag in [
        "r-control4",
        "r-besteffort6",
        "r-dscp6",
        "r-removed4",
        "r-closed6",
    ] {
        assert_eq!(
            sink.wait_for(tag, u64::from(PACKETS)),
            u64::from(PACKETS),
            "{tag}"
        );
    }
    assert_eq!(tcp.join().unwrap(), vec![1000]);
    let seen = capture.finish();
    for (tag, tos, e, dst) in [
        ("r-control4", 0x02, Expect::Dscp(56), udp4),
        ("r-besteffort6", 0, Expect::Untouched, udp6),
        ("r-dscp6", 0, Expect::Dscp(18), udp6),
        ("r-removed4", 0x02, Expect::Untouched, udp4),
        ("r-closed6", 0, Expect::Untouched, udp6),
    ] {
        let src = net.sender_addr(dst.is_ipv6(), 0).ip();
        assert_eq!(
            check_udp_between(&seen, tag, tos, e, src, dst),
            u64::from(PACKETS),
            "{tag}"
        );
    }
    assert!(check_tcp(&seen, tcp_src, tcp4, Expect::Dscp(40)) > 0);
    assert_eq!(
        common::tcp_stream_bytes(&seen, tcp_src, tcp4),
        vec![0x33; 1000]
    );
    drop(watcher);
    daemon.stop();
}

/// The C ABI: `tests/c/live_client.c` compiled against `qosmark.h` and `libqosmark.so`, run in
/// the sender namespace (see the C file for what it sends and expects): UDP and TCP on both
/// families, one unconnected socket with two destinations under one flow id, a dual-stack
/// socket to an IPv4 peer, `QOSSetFlow` custom DSCP as root, `QOSRemoveSocketFromFlow` and
/// `QOSCloseHandle` stopping the marking.
#[test]
fn c_api_against_qosmarkd() {
    if !live() {
        return;
    }
    let net = Net::new();
    let exe = common::build_c_client(&net, "live_client", "-D_POSIX_C_SOURCE=200809L");
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let base = 8100u16;
    let udp4 = net.receiver_addr(false, base);
    let udp6 = net.receiver_addr(true, base + 1);
    let tcp4 = net.receiver_addr(false, base + 2);
    let tcp6 = net.receiver_addr(true, base + 3);
    let multi: Vec<SocketAddr> = (4..7).map(|i| net.receiver_addr(false, base + i)).collect();
    let mapped4 = net.receiver_addr(false, base + 7);
    let mut udp_addrs = vec![udp4, udp6, mapped4];
    udp_addrs.extend(&multi);
    let sink = UdpSink::start(&net, &udp_addrs);
    let tcp = tcp_sink(&net, tcp4, 1);
    let tcp_v6 = tcp_sink(&net, tcp6, 1);
    let capture = Capture::start(&net);
    let out = Command::new("ip")
        .args(["netns", "exec", &net.sender])
        .arg(&exe)
        .args([net.r4.to_string(), net.r6.to_string(), base.to_string()])
        .env("QOSMARK_SOCKET", &daemon.socket)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "live_client:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\n0 failures"), "{stdout}");
    let tags = [
        "c-voice4",
        "c-dscp6",
        "c-removed4",
        "c-closed6",
        "c-multi0",
        "c-multi1",
        "c-multi2",
        "c-mapped",
    ];
    for tag in tags {
        assert_eq!(
            sink.wait_for(tag, u64::from(PACKETS)),
            u64::from(PACKETS),
            "{tag}"
        );
    }
    assert_eq!(tcp.join().unwrap(), vec![1000]);
    assert_eq!(tcp_v6.join().unwrap(), vec![1000]);
    let seen = capture.finish();
    // Each tag from the sender's address to its own destination: the multi-destination tags
    // to their own ports, the dual-stack socket's packets as IPv4 to the IPv4 peer.
    for (tag, tos, e, dst) in [
        ("c-voice4", 0x01, Expect::Dscp(56), udp4),
        ("c-dscp6", 0, Expect::Dscp(46), udp6),
        ("c-removed4", 0x01, Expect::Untouched, udp4),
        ("c-closed6", 0, Expect::Untouched, udp6),
        ("c-multi0", 0, Expect::Dscp(56), multi[0]),
        ("c-multi1", 0, Expect::Dscp(56), multi[1]),
        ("c-multi2", 0, Expect::Untouched, multi[2]),
        ("c-mapped", 0, Expect::Dscp(40), mapped4),
    ] {
        let src = net.sender_addr(dst.is_ipv6(), 0).ip();
        assert_eq!(
            check_udp_between(&seen, tag, tos, e, src, dst),
            u64::from(PACKETS),
            "{tag}"
        );
    }
    for (dst, dscp) in [(tcp4, 8), (tcp6, 56)] {
        let tcp_data: Vec<_> = seen
            .iter()
            .filter(|p| p.dst == dst && !p.payload.is_empty())
            .collect();
        assert!(!tcp_data.is_empty(), "no TCP data to {dst} captured");
        let src = tcp_data[0].src;
        assert_eq!(
            check_tcp(&seen, src, dst, Expect::Dscp(dscp)),
            tcp_data.len(),
            "TCP to {dst}: every data segment from one source"
        );
        assert_eq!(
            common::tcp_stream_bytes(&seen, src, dst),
            vec![0x5a; 1000],
            "TCP to {dst}: the captured stream is what the C program wrote"
        );
    }
    daemon.stop();
}
