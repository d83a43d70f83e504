//! Kernel-interface flows (`Engine::add_kernel_flow` & co.): validation, lookup precedence
//! against socket flows and rules, marks, counters, lifetime. Packets are built and read back
//! with etherparse, an independent implementation.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::many_single_char_names,
    reason = "test code: a panic is a failed test; e/h/p are the engine, handle, packet"
)]

mod control_common;

use control_common::{add, add_ok, sa, tcp, tuple, ADMIN, KERNEL, NON_ADAPTIVE, USER};
use qosmark_engine::abi::kernel::{KernelFlow, KernelMark, MarkClass};
use qosmark_engine::abi::{
    heapless_name::RuleName, Dscp, Family, Mark, Pcp, Protocol, Request, RuleAction, RuleProtocol,
    RuleSpec, SkipReason, TrafficType,
};
use qosmark_engine::control::Binding;
use qosmark_engine::{Engine, EngineError, HandleId, Limits, PacketMeta, Verdict};

fn dscp_mark(d: u32) -> KernelMark {
    KernelMark {
        class: MarkClass::Dscp(d),
        pcp: None,
    }
}

fn flow(family: Family, protocol: Protocol, local: &str, remote: Option<&str>) -> KernelFlow {
    KernelFlow {
        family,
        protocol,
        local: sa(local),
        remote: remote.map(sa),
        mark: dscp_mark(46),
    }
}

fn with_mark(mut f: KernelFlow, mark: KernelMark) -> KernelFlow {
    f.mark = mark;
    f
}

fn kernel_engine() -> (Engine, HandleId) {
    let mut e = Engine::new(Limits::default());
    let h = e.open_handle(KERNEL).unwrap();
    (e, h)
}

/// `add_kernel_flow` must fail with `err` and leave every observable thing unchanged.
fn refused(e: &mut Engine, h: HandleId, f: &KernelFlow, err: EngineError) {
    let before = e.control_snapshot().unwrap();
    assert_eq!(e.add_kernel_flow(h, f), Err(err), "{f:?}");
    assert_eq!(e.control_snapshot().unwrap(), before, "{f:?}");
    e.check_control_invariants().unwrap();
}

fn udp4(src: &str, dst: &str, tos_dscp: u8) -> Vec<u8> {
    let (s, d) = (sa(src), sa(dst));
    let (std::net::IpAddr::V4(si), std::net::IpAddr::V4(di)) = (s.ip(), d.ip()) else {
        panic!("v4 only")
    };
    let mut header =
        etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::UDP, si.octets(), di.octets())
            .unwrap();
    header.dscp = etherparse::IpDscp::try_new(tos_dscp).unwrap();
    let b = etherparse::PacketBuilder::ip(etherparse::IpHeaders::Ipv4(
        header,
        etherparse::Ipv4Extensions::default(),
    ))
    .udp(s.port(), d.port());
    let payload = [0xa5u8; 12];
    let mut out = Vec::new();
    b.write(&mut out, &payload).unwrap();
    out
}

fn udp6(src: &str, dst: &str) -> Vec<u8> {
    let (s, d) = (sa(src), sa(dst));
    let (std::net::IpAddr::V6(si), std::net::IpAddr::V6(di)) = (s.ip(), d.ip()) else {
        panic!("v6 only")
    };
    let b = etherparse::PacketBuilder::ipv6(si.octets(), di.octets(), 64).udp(s.port(), d.port());
    let mut out = Vec::new();
    b.write(&mut out, &[0xa5u8; 8]).unwrap();
    out
}

fn ef() -> Mark {
    Mark {
        dscp: Some(Dscp::EF),
        pcp: None,
    }
}

#[test]
fn five_tuple_flow_marks_its_packets_and_counts_them() {
    let (mut e, h) = kernel_engine();
    let id = e
        .add_kernel_flow(
            h,
            &flow(
                Family::V4,
                Protocol::Udp,
                "10.0.0.1:5004",
                Some("192.0.2.7:5060"),
            ),
        )
        .unwrap();
    assert_ne!(id, 0);
    let mut p = udp4("10.0.0.1:5004", "192.0.2.7:5060", 0);
    let v = e.classify(&p, &PacketMeta::default(), 0);
    assert_eq!(v, Verdict::Mark(ef()));
    let Verdict::Mark(m) = v else { unreachable!() };
    assert_eq!(
        Engine::rewrite(&mut p, m).unwrap(),
        qosmark_engine::wire::Rewrite::Changed
    );
    let (h4, _) = etherparse::Ipv4Header::from_slice(&p).unwrap();
    assert_eq!(h4.dscp.value(), 46);
    assert_eq!(h4.header_checksum, h4.calc_header_checksum());
    assert_eq!(
        e.classify(&p, &PacketMeta::default(), 0),
        Verdict::AlreadyMarked
    );
    // Another remote port is not this flow.
    let other = udp4("10.0.0.1:5004", "192.0.2.7:5061", 0);
    assert_eq!(
        e.classify(&other, &PacketMeta::default(), 0),
        Verdict::Skip(SkipReason::NoMatch)
    );
    let state = e.query_kernel_flow(h, id).unwrap();
    assert_eq!(state.mark, ef());
    let len = p.len() as u64;
    assert_eq!(
        (
            state.counters.packets,
            state.counters.bytes,
            state.counters.marked,
            state.counters.already_marked
        ),
        (2, 2 * len, 1, 1)
    );
    let info = state.info();
    assert_eq!((info.dscp, info.pcp, info.packets), (46, u32::MAX, 2));
}

#[test]
fn local_port_flow_matches_any_remote_and_ranks_below_five_tuples() {
    let (mut e, h) = kernel_engine();
    let any_addr = e
        .add_kernel_flow(
            h,
            &with_mark(
                flow(Family::V4, Protocol::Udp, "0.0.0.0:5004", None),
                dscp_mark(10),
            ),
        )
        .unwrap();
    let concrete = e
        .add_kernel_flow(
            h,
            &with_mark(
                flow(Family::V4, Protocol::Udp, "10.0.0.1:5004", None),
                dscp_mark(20),
            ),
        )
        .unwrap();
    let hit = |e: &Engine, l: &str, r: &str| e.socket_lookup(&tuple(Protocol::Udp, l, r));
    // Concrete local address beats the unspecified one, for every remote.
    for remote in ["192.0.2.1:1", "198.51.100.9:65535"] {
        assert_eq!(hit(&e, "10.0.0.1:5004", remote).unwrap().0, concrete);
        assert_eq!(hit(&e, "10.0.0.2:5004", remote).unwrap().0, any_addr);
    }
    // Other port, other protocol, other family: no.
    assert!(hit(&e, "10.0.0.1:5005", "192.0.2.1:1").is_none());
    assert!(e
        .socket_lookup(&tuple(Protocol::Tcp, "10.0.0.1:5004", "192.0.2.1:1"))
        .is_none());
    assert!(hit(&e, "[2001:db8::1]:5004", "[2001:db8::2]:1").is_none());
    // A user's socket flow on one exact 5-tuple of that port wins over the local-port flows.
    let u = e.open_handle(USER).unwrap();
    let sock = tcp(7, Family::V4, "10.0.0.1:5004", Some("192.0.2.1:1"));
    let mut sock = sock;
    sock.protocol = Protocol::Udp;
    let sid = add_ok(
        &mut e,
        u,
        &add(sock, None, TrafficType::Voice, NON_ADAPTIVE, 0),
    );
    assert_eq!(hit(&e, "10.0.0.1:5004", "192.0.2.1:1").unwrap().0, sid);
    assert_eq!(hit(&e, "10.0.0.1:5004", "192.0.2.1:2").unwrap().0, concrete);
    // Through classify: the packet gets the local-port flow's DSCP.
    let p = udp4("10.0.0.2:5004", "203.0.113.5:9", 0);
    assert_eq!(
        e.classify(&p, &PacketMeta::default(), 0),
        Verdict::Mark(Mark {
            dscp: Some(Dscp::try_new(10).unwrap()),
            pcp: None
        })
    );
    e.check_control_invariants().unwrap();
}

#[test]
fn ipv6_local_port_flow_and_mapped_addresses() {
    let (mut e, h) = kernel_engine();
    let v6 = e
        .add_kernel_flow(h, &flow(Family::V6, Protocol::Udp, "[::]:4000", None))
        .unwrap();
    let p = udp6("[2001:db8::1]:4000", "[2001:db8::2]:53");
    assert_eq!(
        e.classify(&p, &PacketMeta::default(), 0),
        Verdict::Mark(ef())
    );
    // `::` does not cover IPv4 packets; `::ffff:0.0.0.0` (keyed as 0.0.0.0) does.
    let p4 = udp4("10.0.0.1:4000", "192.0.2.1:53", 0);
    assert_eq!(
        e.classify(&p4, &PacketMeta::default(), 0),
        Verdict::Skip(SkipReason::NoMatch)
    );
    let v4 = e
        .add_kernel_flow(
            h,
            &flow(Family::V6, Protocol::Udp, "[::ffff:0.0.0.0]:4000", None),
        )
        .unwrap();
    assert_ne!(v4, v6);
    assert_eq!(
        e.classify(&p4, &PacketMeta::default(), 0),
        Verdict::Mark(ef())
    );
    // And a v4-mapped 5-tuple of an AF_INET6 flow is the IPv4 5-tuple.
    let f = flow(
        Family::V6,
        Protocol::Udp,
        "[::ffff:10.0.0.9]:1000",
        Some("[::ffff:192.0.2.1]:2000"),
    );
    let id = e.add_kernel_flow(h, &f).unwrap();
    assert_eq!(
        e.socket_lookup(&tuple(Protocol::Udp, "10.0.0.9:1000", "192.0.2.1:2000"))
            .unwrap()
            .0,
        id
    );
}

#[test]
fn kernel_flow_beats_rules() {
    let (mut e, h) = kernel_engine();
    let a = e.open_handle(ADMIN).unwrap();
    let rule = RuleSpec {
        name: RuleName::try_new("all").unwrap(),
        precedence: 255,
        protocol: RuleProtocol::Any,
        local_prefix: None,
        remote_prefix: None,
        local_ports: None,
        remote_ports: None,
        action: RuleAction::Dscp(Dscp::try_new(8).unwrap()),
        pcp: None,
        throttle_bps: None,
    };
    e.apply(a, &Request::AddRule(rule)).unwrap();
    e.add_kernel_flow(h, &flow(Family::V4, Protocol::Udp, "0.0.0.0:7000", None))
        .unwrap();
    let p = udp4("10.0.0.1:7000", "192.0.2.1:53", 0);
    assert_eq!(
        e.classify(&p, &PacketMeta::default(), 0),
        Verdict::Mark(ef())
    );
    let q = udp4("10.0.0.1:7001", "192.0.2.1:53", 0);
    assert_eq!(
        e.classify(&q, &PacketMeta::default(), 0),
        Verdict::Mark(Mark {
            dscp: Some(Dscp::try_new(8).unwrap()),
            pcp: None
        })
    );
}

#[test]
fn endpoint_validation_is_the_socket_validation() {
    let (mut e, h) = kernel_engine();
    let bad = EngineError::InvalidParameter;
    let cases: [KernelFlow; 10] = [
        // Connected flow without a local port.
        flow(
            Family::V4,
            Protocol::Tcp,
            "10.0.0.1:0",
            Some("192.0.2.1:80"),
        ),
        // Remote without address or port.
        flow(Family::V4, Protocol::Udp, "10.0.0.1:1", Some("0.0.0.0:80")),
        flow(Family::V4, Protocol::Udp, "10.0.0.1:1", Some("192.0.2.1:0")),
        // AF_INET with IPv6 addresses.
        flow(
            Family::V4,
            Protocol::Udp,
            "[2001:db8::1]:1",
            Some("192.0.2.1:80"),
        ),
        flow(
            Family::V4,
            Protocol::Udp,
            "10.0.0.1:1",
            Some("[2001:db8::2]:80"),
        ),
        // Concrete local address of the other family than the remote.
        flow(
            Family::V6,
            Protocol::Udp,
            "[2001:db8::1]:1",
            Some("[::ffff:192.0.2.1]:80"),
        ),
        // Local-port flow without a port, or with the wrong family.
        flow(Family::V4, Protocol::Udp, "10.0.0.1:0", None),
        flow(Family::V4, Protocol::Udp, "[::]:5", None),
        // DSCP and 802.1p out of range.
        with_mark(
            flow(Family::V4, Protocol::Udp, "10.0.0.1:1", None),
            dscp_mark(64),
        ),
        with_mark(
            flow(Family::V4, Protocol::Udp, "10.0.0.1:1", None),
            KernelMark {
                class: MarkClass::TrafficType(TrafficType::Voice),
                pcp: Some(8),
            },
        ),
    ];
    for f in &cases {
        refused(&mut e, h, f, bad);
    }
    // The same endpoints through QOSAddSocketToFlow get the same answer (87).
    let u = e.open_handle(ADMIN).unwrap();
    for f in cases.iter().take(6) {
        let sock = qosmark_engine::abi::SocketInfo {
            socket: 1,
            family: f.family,
            protocol: f.protocol,
            local: f.local,
            peer: f.remote,
        };
        let req = add(sock, None, TrafficType::Voice, NON_ADAPTIVE, 0);
        assert_eq!(e.apply(u, &req), Err(bad), "{f:?}");
    }
}

#[test]
fn trust_handles_and_ownership() {
    let mut e = Engine::new(Limits::default());
    let k = e.open_handle(KERNEL).unwrap();
    let k2 = e.open_handle(KERNEL).unwrap();
    let f = flow(Family::V4, Protocol::Udp, "10.0.0.1:1", Some("192.0.2.1:2"));
    // Users and administrators cannot add kernel flows.
    for caller in [USER, ADMIN] {
        let h = e.open_handle(caller).unwrap();
        refused(&mut e, h, &f, EngineError::AccessDenied);
    }
    // Kernel callers may set any DSCP (no allow-list) and 802.1p.
    let id = e
        .add_kernel_flow(
            k,
            &with_mark(
                f,
                KernelMark {
                    class: MarkClass::Dscp(63),
                    pcp: Some(7),
                },
            ),
        )
        .unwrap();
    assert_eq!(
        e.query_kernel_flow(k, id).unwrap().mark,
        Mark {
            dscp: Some(Dscp::try_new(63).unwrap()),
            pcp: Some(Pcp::try_new(7).unwrap())
        }
    );
    // The same 5-tuple again, from any handle: 183.
    refused(&mut e, k, &f, EngineError::AlreadyExists);
    refused(&mut e, k2, &f, EngineError::AlreadyExists);
    // A socket flow cannot take it either, and the other way round.
    let u = e.open_handle(USER).unwrap();
    let mut sock = tcp(3, Family::V4, "10.0.0.1:1", Some("192.0.2.1:2"));
    sock.protocol = Protocol::Udp;
    assert_eq!(
        e.apply(u, &add(sock, None, TrafficType::Voice, NON_ADAPTIVE, 0)),
        Err(EngineError::AlreadyExists)
    );
    let sock2 = tcp(4, Family::V4, "10.0.0.1:9", Some("192.0.2.1:2"));
    add_ok(
        &mut e,
        u,
        &add(sock2, None, TrafficType::Voice, NON_ADAPTIVE, 0),
    );
    refused(
        &mut e,
        k,
        &flow(Family::V4, Protocol::Tcp, "10.0.0.1:9", Some("192.0.2.1:2")),
        EngineError::AlreadyExists,
    );
    // Another handle's flow is not found (1168), for every operation.
    assert_eq!(e.query_kernel_flow(k2, id), Err(EngineError::NotFound));
    assert_eq!(
        e.change_kernel_flow(k2, id, &dscp_mark(1)),
        Err(EngineError::NotFound)
    );
    assert_eq!(e.remove_kernel_flow(k2, id), Err(EngineError::NotFound));
    assert_eq!(e.query_kernel_flow(k, 0), Err(EngineError::NotFound));
    // Closed handle: 6.
    let closed = e.open_handle(KERNEL).unwrap();
    e.close_handle(closed).unwrap();
    refused(&mut e, closed, &f, EngineError::InvalidHandle);
    assert_eq!(
        e.query_kernel_flow(closed, id),
        Err(EngineError::InvalidHandle)
    );
    assert_eq!(
        e.change_kernel_flow(closed, id, &dscp_mark(1)),
        Err(EngineError::InvalidHandle)
    );
    assert_eq!(
        e.remove_kernel_flow(closed, id),
        Err(EngineError::InvalidHandle)
    );
}

#[test]
fn change_replaces_the_mark_and_errors_change_nothing() {
    let (mut e, h) = kernel_engine();
    let id = e
        .add_kernel_flow(
            h,
            &flow(Family::V4, Protocol::Udp, "10.0.0.1:1", Some("192.0.2.1:2")),
        )
        .unwrap();
    // Traffic type: the table's DSCP, and no 802.1p unless asked (kernel flows are
    // non-adaptive).
    let voice = KernelMark {
        class: MarkClass::TrafficType(TrafficType::Voice),
        pcp: None,
    };
    e.change_kernel_flow(h, id, &voice).unwrap();
    let m = e.query_kernel_flow(h, id).unwrap().mark;
    assert_eq!(m.dscp.map(Dscp::value), Some(56));
    assert_eq!(m.pcp, None);
    let voice_pcp = KernelMark {
        pcp: Some(5),
        ..voice
    };
    e.change_kernel_flow(h, id, &voice_pcp).unwrap();
    assert_eq!(
        e.query_kernel_flow(h, id).unwrap().mark.pcp,
        Some(Pcp::try_new(5).unwrap())
    );
    // A new traffic table re-resolves the DSCP and keeps the explicit 802.1p.
    let a = e.open_handle(ADMIN).unwrap();
    let mut table = e.control_snapshot().unwrap().table;
    table.marks[TrafficType::Voice.index()].dscp = Some(Dscp::try_new(46).unwrap());
    e.apply(a, &Request::SetTrafficTable(table)).unwrap();
    let m = e.query_kernel_flow(h, id).unwrap().mark;
    assert_eq!(m.dscp, Some(Dscp::EF));
    assert_eq!(m.pcp, Some(Pcp::try_new(5).unwrap()));
    e.check_control_invariants().unwrap();
    // Best effort without 802.1p: matched, nothing to mark.
    let be = KernelMark {
        class: MarkClass::TrafficType(TrafficType::BestEffort),
        pcp: None,
    };
    e.change_kernel_flow(h, id, &be).unwrap();
    let p = udp4("10.0.0.1:1", "192.0.2.1:2", 0);
    assert_eq!(
        e.classify(&p, &PacketMeta::default(), 0),
        Verdict::Skip(SkipReason::NoMarkConfigured)
    );
    // Refusals leave everything as it was.
    let before = e.control_snapshot().unwrap();
    assert_eq!(
        e.change_kernel_flow(h, id, &dscp_mark(64)),
        Err(EngineError::InvalidParameter)
    );
    assert_eq!(
        e.change_kernel_flow(
            h,
            id,
            &KernelMark {
                class: MarkClass::Dscp(1),
                pcp: Some(9)
            }
        ),
        Err(EngineError::InvalidParameter)
    );
    // A user handle may not use the kernel entries on its own socket flow.
    let u = e.open_handle(USER).unwrap();
    let mut s = tcp(1, Family::V4, "10.0.0.5:1", Some("192.0.2.1:2"));
    s.protocol = Protocol::Udp;
    let uid = add_ok(
        &mut e,
        u,
        &add(s, None, TrafficType::Voice, NON_ADAPTIVE, 0),
    );
    let before_user = e.control_snapshot().unwrap();
    assert_eq!(
        e.change_kernel_flow(u, uid, &dscp_mark(0)),
        Err(EngineError::AccessDenied)
    );
    assert_eq!(e.control_snapshot().unwrap(), before_user);
    assert_ne!(before, before_user);
}

#[test]
fn remove_and_close_release_everything() {
    let (mut e, h) = kernel_engine();
    let a = e
        .add_kernel_flow(h, &flow(Family::V4, Protocol::Udp, "0.0.0.0:1", None))
        .unwrap();
    let b = e
        .add_kernel_flow(
            h,
            &flow(Family::V4, Protocol::Tcp, "10.0.0.1:2", Some("192.0.2.1:3")),
        )
        .unwrap();
    let c = e
        .add_kernel_flow(
            h,
            &flow(Family::V6, Protocol::Udp, "[::]:4", Some("[2001:db8::1]:5")),
        )
        .unwrap();
    assert_eq!(e.flow_details().unwrap().len(), 3);
    e.remove_kernel_flow(h, a).unwrap();
    assert_eq!(e.remove_kernel_flow(h, a), Err(EngineError::NotFound));
    assert!(e
        .socket_lookup(&tuple(Protocol::Udp, "10.0.0.1:1", "192.0.2.1:3"))
        .is_none());
    // The freed key can be registered again.
    let a2 = e
        .add_kernel_flow(h, &flow(Family::V4, Protocol::Udp, "0.0.0.0:1", None))
        .unwrap();
    assert_ne!(a2, a);
    let report = e.close_handle(h).unwrap();
    assert_eq!((report.flows_removed, report.sockets_removed), (3, 3));
    assert!(e.flow_details().unwrap().is_empty());
    assert!(e
        .socket_lookup(&tuple(Protocol::Tcp, "10.0.0.1:2", "192.0.2.1:3"))
        .is_none());
    let _ = (b, c);
    e.check_control_invariants().unwrap();
}

#[test]
fn limits_are_enforced() {
    let mut e = Engine::new(Limits {
        max_flows_per_handle: 2,
        ..Limits::default()
    });
    let h = e.open_handle(KERNEL).unwrap();
    for port in 1..=2 {
        e.add_kernel_flow(
            h,
            &flow(Family::V4, Protocol::Udp, &format!("10.0.0.1:{port}"), None),
        )
        .unwrap();
    }
    refused(
        &mut e,
        h,
        &flow(Family::V4, Protocol::Udp, "10.0.0.1:3", None),
        EngineError::LimitReached,
    );
    let mut e = Engine::new(Limits {
        max_sockets: 1,
        ..Limits::default()
    });
    let h = e.open_handle(KERNEL).unwrap();
    e.add_kernel_flow(h, &flow(Family::V4, Protocol::Udp, "10.0.0.1:1", None))
        .unwrap();
    refused(
        &mut e,
        h,
        &flow(Family::V4, Protocol::Udp, "10.0.0.1:2", None),
        EngineError::LimitReached,
    );
}

#[test]
fn details_show_the_local_endpoint_and_any_remote() {
    let (mut e, h) = kernel_engine();
    e.add_kernel_flow(h, &flow(Family::V4, Protocol::Udp, "10.0.0.1:9", None))
        .unwrap();
    e.add_kernel_flow(h, &flow(Family::V6, Protocol::Tcp, "[::]:443", None))
        .unwrap();
    let d = e.flow_details().unwrap();
    let (a, b) = (d[0].sockets[0], d[1].sockets[0]);
    assert_eq!(a.binding, Binding::Address(sa("10.0.0.1:9")));
    assert_eq!(a.remote, sa("0.0.0.0:0"));
    assert_eq!(b.binding, Binding::AnyAddress { port: 443 });
    assert_eq!(b.remote, sa("[::]:0"));
    assert_eq!((d[0].pid, a.socket), (0, 0));
}

/// Oracle: a linear scan over what was registered, ranking each candidate by specificity
/// (the documented precedence), independent of the engine's hash tiers.
fn oracle(
    registered: &[(KernelFlow, u32)],
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
) -> Option<u32> {
    registered
        .iter()
        .filter_map(|(f, id)| {
            if f.local.port() != local.port() {
                return None;
            }
            let local_ok = f.local.ip() == local.ip() || f.local.ip().is_unspecified();
            if !local_ok {
                return None;
            }
            let rank = match f.remote {
                Some(r) if r == remote => {
                    if f.local.ip().is_unspecified() {
                        2
                    } else {
                        1
                    }
                }
                Some(_) => return None,
                None if f.local.ip().is_unspecified() => 4,
                None => 3,
            };
            Some((rank, *id))
        })
        .min()
        .map(|(_, id)| id)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
    /// Any mix of 5-tuple and local-endpoint kernel flows: every packet goes to the flow the
    /// oracle's precedence picks, and a key registered twice is refused with 183.
    #[test]
    fn lookup_follows_the_documented_precedence(
        flows in proptest::collection::vec(
            (0usize..3, 1u16..3, proptest::option::of((0usize..2, 1u16..3))),
            0..12,
        ),
        packets in proptest::collection::vec((0usize..2, 1u16..3, 0usize..2, 1u16..3), 1..20),
    ) {
        let locals = ["10.0.0.1", "10.0.0.2", "0.0.0.0"];
        let remotes = ["192.0.2.1", "192.0.2.2"];
        let (mut e, h) = kernel_engine();
        let mut registered: Vec<(KernelFlow, u32)> = Vec::new();
        for (l, lp, r) in flows {
            let local = format!("{}:{lp}", locals[l]);
            let remote = r.map(|(ri, rp)| format!("{}:{rp}", remotes[ri]));
            let f = flow(Family::V4, Protocol::Udp, &local, remote.as_deref());
            let taken = registered
                .iter()
                .any(|(g, _)| g.local == f.local && g.remote == f.remote);
            match e.add_kernel_flow(h, &f) {
                Ok(id) => {
                    proptest::prop_assert!(!taken);
                    registered.push((f, id));
                }
                Err(err) => {
                    proptest::prop_assert!(taken);
                    proptest::prop_assert_eq!(err, EngineError::AlreadyExists);
                }
            }
        }
        for (l, lp, r, rp) in packets {
            let local = sa(&format!("{}:{lp}", locals[l]));
            let remote = sa(&format!("{}:{rp}", remotes[r]));
            let got = e
                .socket_lookup(&qosmark_engine::FiveTuple::new(Protocol::Udp, local, remote))
                .map(|(id, _)| id);
            proptest::prop_assert_eq!(got, oracle(&registered, local, remote));
        }
        e.check_control_invariants().unwrap();
    }
}

/// With the ownership check on (Windows), a user's socket flow marks only tuples its process
/// owns; kernel flows are trusted and mark without any owner report.
#[test]
fn kernel_flows_are_exempt_from_the_owner_check() {
    let mut e = Engine::new(Limits {
        check_owner: true,
        ..Limits::default()
    });
    let k = e.open_handle(KERNEL).unwrap();
    e.add_kernel_flow(
        k,
        &flow(
            Family::V4,
            Protocol::Udp,
            "10.0.0.1:5004",
            Some("192.0.2.7:5060"),
        ),
    )
    .unwrap();
    e.add_kernel_flow(k, &flow(Family::V4, Protocol::Udp, "0.0.0.0:7000", None))
        .unwrap();
    for p in [
        udp4("10.0.0.1:5004", "192.0.2.7:5060", 0),
        udp4("10.0.0.9:7000", "198.51.100.1:9", 0),
    ] {
        assert_eq!(
            e.classify(&p, &PacketMeta::default(), 0),
            Verdict::Mark(ef())
        );
    }
    // A user's socket flow on another tuple, not reported as its process's: not marked.
    let u = e.open_handle(USER).unwrap();
    let mut s = tcp(1, Family::V4, "10.0.0.1:6000", Some("192.0.2.7:5060"));
    s.protocol = Protocol::Udp;
    add_ok(
        &mut e,
        u,
        &add(s, None, TrafficType::Voice, NON_ADAPTIVE, 0),
    );
    let p = udp4("10.0.0.1:6000", "192.0.2.7:5060", 0);
    assert_eq!(
        e.classify(&p, &PacketMeta::default(), 0),
        Verdict::Skip(SkipReason::NotOwner)
    );
}
