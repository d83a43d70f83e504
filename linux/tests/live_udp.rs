//! Live UDP marking through `qosmarkd` (see `common` for the harness): traffic types on
//! connected IPv4 and IPv6 sockets, ECN kept, unregistered traffic untouched, one unconnected
//! socket with several destinations in one flow, and a dual-stack IPv6 socket talking to an
//! IPv4 peer. Flows are registered through the Rust QOS2 API (`qosmark::QosHandle` over the
//! unix transport to the test's daemon), as an application would.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failure"
)]

mod common;

use common::{
    check_udp_between, in_ns, live, send_tagged, Capture, Daemon, DaemonOptions, Expect, Net,
    UdpSink,
};
use qosmark::{Client, QosHandle};
use qosmark_engine::abi::{TrafficType, QOS_NON_ADAPTIVE_FLOW};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

const PACKETS: u32 = 20;

/// Every traffic type on connected sockets, both families, with the ECN bits the application
/// set; a socket left unregistered keeps its TOS and payload.
#[test]
fn traffic_types_on_connected_sockets_v4_and_v6() {
    if !live() {
        return;
    }
    let net = Net::new();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    // (traffic type, DSCP from the default table, application TOS with ECN bits)
    let cases = [
        (TrafficType::BestEffort, None, 0x01),
        (TrafficType::Background, Some(8), 0x02),
        (TrafficType::ExcellentEffort, Some(40), 0x03),
        (TrafficType::AudioVideo, Some(40), 0x01),
        (TrafficType::Voice, Some(56), 0x02),
        (TrafficType::Control, Some(56), 0x00),
    ];
    let mut sink_addrs = Vec::new();
    for v6 in [false, true] {
        for (i, _) in cases.iter().enumerate() {
            sink_addrs.push(net.receiver_addr(v6, 5000 + i as u16));
        }
        sink_addrs.push(net.receiver_addr(v6, 5100));
    }
    let sink = UdpSink::start(&net, &sink_addrs);
    let capture = Capture::start(&net);
    let client = QosHandle::with_client(Client::connect_unix(&daemon.socket).unwrap());
    let mut expectations = Vec::new();
    for v6 in [false, true] {
        for (i, (tt, dscp, tos)) in cases.iter().copied().enumerate() {
            let dest = net.receiver_addr(v6, 5000 + i as u16);
            let bind = net.sender_addr(v6, 0);
            let sock = in_ns(&net.sender, move || {
                let s = UdpSocket::bind(bind).unwrap();
                s.connect(dest).unwrap();
                s
            });
            common::set_tos(sock.as_raw_fd(), v6, tos);
            let flow = client.add_socket_to_flow(&sock, None, tt, 0, 0).unwrap();
            assert_ne!(flow, 0);
            let tag = format!("tt{}v{}", tt as u32, if v6 { 6 } else { 4 });
            send_tagged(&sock, None, &tag, PACKETS);
            expectations.push((tag, tos, dscp.map_or(Expect::Untouched, Expect::Dscp), dest));
        }
        // Unregistered, with an application DSCP (AF11) and ECN: left exactly as sent.
        let dest = net.receiver_addr(v6, 5100);
        let bind = net.sender_addr(v6, 0);
        let sock = in_ns(&net.sender, move || {
            let s = UdpSocket::bind(bind).unwrap();
            s.connect(dest).unwrap();
            s
        });
        common::set_tos(sock.as_raw_fd(), v6, (10 << 2) | 1);
        let tag = format!("plain{}", if v6 { 6 } else { 4 });
        send_tagged(&sock, None, &tag, PACKETS);
        expectations.push((tag, (10 << 2) | 1, Expect::Untouched, dest));
    }
    for (tag, _, _, _) in &expectations {
        assert_eq!(
            sink.wait_for(tag, u64::from(PACKETS)),
            u64::from(PACKETS),
            "{tag}: packets lost"
        );
    }
    let seen = capture.finish();
    for (tag, tos, expect, dest) in &expectations {
        let src = net.sender_addr(dest.is_ipv6(), 0).ip();
        assert_eq!(
            check_udp_between(&seen, tag, *tos, *expect, src, *dest),
            u64::from(PACKETS),
            "{tag}: captured count"
        );
    }
    let status = client.client().status().unwrap();
    assert_eq!(status.fail_open.iter().sum::<u64>(), 0, "{status:?}");
    drop(client);
    daemon.stop();
}

/// One unconnected socket registered for two destinations under one flow id (non-adaptive):
/// both are marked, a third destination is not.
#[test]
fn unconnected_socket_several_destinations_one_flow() {
    if !live() {
        return;
    }
    let net = Net::new();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let dests: Vec<SocketAddr> = (0..3).map(|i| net.receiver_addr(false, 6000 + i)).collect();
    let sink = UdpSink::start(&net, &dests);
    let capture = Capture::start(&net);
    let bind = net.sender_addr(false, 0);
    let sock = in_ns(&net.sender, move || UdpSocket::bind(bind).unwrap());
    let client = QosHandle::with_client(Client::connect_unix(&daemon.socket).unwrap());
    let flow = client
        .add_socket_to_flow(
            &sock,
            Some(dests[0]),
            TrafficType::Voice,
            QOS_NON_ADAPTIVE_FLOW,
            0,
        )
        .unwrap();
    let same = client
        .add_socket_to_flow(
            &sock,
            Some(dests[1]),
            TrafficType::Voice,
            QOS_NON_ADAPTIVE_FLOW,
            flow,
        )
        .unwrap();
    assert_eq!(same, flow);
    for (i, d) in dests.iter().enumerate() {
        send_tagged(&sock, Some(*d), &format!("dest{i}"), PACKETS);
    }
    for i in 0..3 {
        assert_eq!(
            sink.wait_for(&format!("dest{i}"), u64::from(PACKETS)),
            u64::from(PACKETS)
        );
    }
    let seen = capture.finish();
    assert_eq!(
        check_udp_between(&seen, "dest0", 0, Expect::Dscp(56), net.s4.into(), dests[0]),
        u64::from(PACKETS)
    );
    assert_eq!(
        check_udp_between(&seen, "dest1", 0, Expect::Dscp(56), net.s4.into(), dests[1]),
        u64::from(PACKETS)
    );
    assert_eq!(
        check_udp_between(
            &seen,
            "dest2",
            0,
            Expect::Untouched,
            net.s4.into(),
            dests[2]
        ),
        u64::from(PACKETS)
    );
    drop(client);
    daemon.stop();
}

/// A dual-stack IPv6 socket connected to an IPv4 peer (`::ffff:a.b.c.d`) is marked on its
/// IPv4 packets; the same socket type unconnected, registered with an IPv4 destination, too.
#[test]
fn dual_stack_v6_socket_to_v4_peer() {
    if !live() {
        return;
    }
    let net = Net::new();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let dests = [
        net.receiver_addr(false, 6100),
        net.receiver_addr(false, 6101),
    ];
    let sink = UdpSink::start(&net, &dests);
    let capture = Capture::start(&net);
    let mapped = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    let (m0, m1) = (mapped(dests[0]), mapped(dests[1]));
    let (connected, unconnected) = in_ns(&net.sender, move || {
        let c = UdpSocket::bind("[::]:0").unwrap();
        c.connect(m0).unwrap();
        let u = UdpSocket::bind("[::]:0").unwrap();
        (c, u)
    });
    let client = QosHandle::with_client(Client::connect_unix(&daemon.socket).unwrap());
    client
        .add_socket_to_flow(&connected, None, TrafficType::AudioVideo, 0, 0)
        .unwrap();
    client
        .add_socket_to_flow(&unconnected, Some(dests[1]), TrafficType::Background, 0, 0)
        .unwrap();
    send_tagged(&connected, None, "mapped", PACKETS);
    send_tagged(&unconnected, Some(m1), "dual", PACKETS);
    assert_eq!(
        sink.wait_for("mapped", u64::from(PACKETS)),
        u64::from(PACKETS)
    );
    assert_eq!(
        sink.wait_for("dual", u64::from(PACKETS)),
        u64::from(PACKETS)
    );
    let seen = capture.finish();
    assert_eq!(
        check_udp_between(
            &seen,
            "mapped",
            0,
            Expect::Dscp(40),
            net.s4.into(),
            dests[0]
        ),
        u64::from(PACKETS)
    );
    assert_eq!(
        check_udp_between(&seen, "dual", 0, Expect::Dscp(8), net.s4.into(), dests[1]),
        u64::from(PACKETS)
    );
    drop(client);
    daemon.stop();
}

/// Decodes a hex string (test vectors below).
fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The capture's checksum oracle (`common::raw_ip`) on packets whose checksums were computed
/// independently (by a separate script, not this code): it accepts the right ones and rejects
/// a UDP checksum left as the pseudo-header partial sum (what an offloading veth carried before
/// the harness turned offload off) and a zero UDP checksum. Runs without root.
#[test]
fn checksum_oracle_on_known_packets() {
    // IPv4 UDP "crashed:0" as captured with offload on: the field holds the partial sum.
    let partial = hex("45000025c1c740004011c92c0ae8cd010ae8cd02c0ab1a900011aff6637261736865643a30");
    let raw = common::raw_ip(&partial).unwrap();
    assert!(!raw.transport_checksum_ok);
    assert_eq!(
        (raw.version, raw.ihl, raw.ttl, raw.protocol),
        (4, 5, 64, 17)
    );
    assert_eq!(raw.flags_frag, 0x4000, "DF, offset 0");
    assert!(common::ipv4_header_sums_to_ffff(&partial[..20]));
    // The same packet with its full checksum (0xb336).
    let mut full = partial.clone();
    full[26..28].copy_from_slice(&[0xb3, 0x36]);
    assert!(common::raw_ip(&full).unwrap().transport_checksum_ok);
    // Zero ("no checksum") is not accepted: Linux always sends one.
    let mut zero = partial;
    zero[26..28].copy_from_slice(&[0, 0]);
    assert!(!common::raw_ip(&zero).unwrap().transport_checksum_ok);
    // IPv6 UDP "abc:1", fd00:232:7::1 port 40000 -> fd00:232:7::2 port 5000, checksum 0x5bf8.
    let v6 = hex(concat!(
        "60000000000d1140fd000232000700000000000000000001fd000232000700000000",
        "0000000000029c401388000d5bf86162633a31"
    ));
    let raw = common::raw_ip(&v6).unwrap();
    assert!(raw.transport_checksum_ok);
    assert_eq!(
        (raw.version, raw.tos, raw.ttl, raw.total_len),
        (6, 0, 64, 53)
    );
    let mut bad = v6;
    bad[52] ^= 1; // one payload bit
    assert!(!common::raw_ip(&bad).unwrap().transport_checksum_ok);
}
