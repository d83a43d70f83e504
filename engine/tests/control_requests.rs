//! Control-plane rules, one test per rule or error path (qos-api.md §5, §8, §9, §10), each
//! refusal checked to leave the engine's observable state unchanged.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]
#![allow(
    clippy::many_single_char_names,
    clippy::too_many_lines,
    clippy::single_match_else,
    reason = "tests read best as one straight script with short names (e, h, f, s, t)"
)]

mod control_common;

use control_common::*;
use qosmark_engine::abi::{
    Dscp, Family, NotifyFlow, PacketPriority, Pcp, Protocol, QueryFlow, Request, Response, SetFlow,
    TrafficTable, TrafficType, TrafficTypeMark,
};
use qosmark_engine::control::Binding;
use qosmark_engine::traffic::default_table;
use qosmark_engine::{Engine, EngineError, Limits};

use qosmark_engine::abi::Shaping::{ShapeAndMark, ShapeOnly, UseNonConformantMarkings};
use EngineError::{
    AccessDenied, AlreadyExists, InvalidHandle, InvalidParameter, LimitReached, NoData, NotFound,
    NotSupported,
};
use TrafficType::{AudioVideo, Background, BestEffort, Control, Voice};

fn engine() -> Engine {
    Engine::new(Limits::default())
}

fn priority(e: &mut Engine, h: qosmark_engine::HandleId, id: u32) -> PacketPriority {
    match e.apply(
        h,
        &Request::QueryFlow {
            flow_id: id,
            op: QueryFlow::PacketPriority,
        },
    ) {
        Ok(Response::PacketPriority(p)) => p,
        other => panic!("{other:?}"),
    }
}

fn ids(e: &mut Engine, h: qosmark_engine::HandleId) -> Vec<u32> {
    match e.apply(h, &Request::EnumerateFlows) {
        Ok(Response::FlowIds(v)) => v,
        other => panic!("{other:?}"),
    }
}

/// UDP socket `n` bound to 10.0.0.1, port 4999 + n (distinct sockets have distinct ports).
fn udp4(socket: u64) -> qosmark_engine::abi::SocketInfo {
    let port = 4999 + u16::try_from(socket).unwrap();
    udp(socket, Family::V4, &format!("10.0.0.1:{port}"))
}

// ---------------------------------------------------------------- handles

#[test]
fn handles_are_nonzero_distinct_and_closed_handles_get_6() {
    let mut e = engine();
    let a = e.open_handle(USER).unwrap();
    let b = e.open_handle(USER).unwrap();
    assert_ne!(a.0, 0);
    assert_ne!(b.0, 0);
    assert_ne!(a, b);
    e.close_handle(a).unwrap();
    assert_eq!(e.close_handle(a), Err(InvalidHandle));
    for req in [
        Request::QueryStatus,
        add(udp4(1), Some("192.0.2.1:9"), Voice, 0, 0),
        Request::RemoveSocketFromFlow {
            socket: None,
            flow_id: 1,
        },
        Request::SetFlow {
            flow_id: 1,
            op: SetFlow::TrafficType(Voice),
        },
        Request::QueryFlow {
            flow_id: 1,
            op: QueryFlow::PacketPriority,
        },
        Request::NotifyFlow {
            flow_id: 1,
            op: NotifyFlow::Congested,
            threshold: None,
        },
        Request::EnumerateFlows,
        Request::ListRules,
        Request::GetTrafficTable,
        Request::SetTrafficTable(default_table()),
    ] {
        assert_refused(&mut e, a, &req, InvalidHandle);
        assert_refused(
            &mut e,
            qosmark_engine::HandleId(0xdead_beef),
            &req,
            InvalidHandle,
        );
    }
    assert_eq!(e.socket_bound(a, 1, sa("10.0.0.1:1")), Err(InvalidHandle));
}

#[test]
fn handle_limit_is_1450() {
    let mut e = Engine::new(Limits {
        max_handles: 2,
        ..Limits::default()
    });
    let a = e.open_handle(USER).unwrap();
    e.open_handle(USER).unwrap();
    assert_eq!(e.open_handle(USER), Err(LimitReached));
    e.close_handle(a).unwrap();
    assert!(e.open_handle(USER).is_ok());
}

#[test]
fn close_handle_removes_its_flows_only() {
    let mut e = engine();
    let a = e.open_handle(USER).unwrap();
    let b = e.open_handle(USER).unwrap();
    let fa = add_ok(
        &mut e,
        a,
        &add(udp4(1), Some("192.0.2.1:9"), Voice, NON_ADAPTIVE, 0),
    );
    add_ok(
        &mut e,
        a,
        &add(udp4(1), Some("192.0.2.2:9"), Voice, NON_ADAPTIVE, fa),
    );
    add_ok(
        &mut e,
        a,
        &add(
            udp(2, Family::V4, "10.0.0.1:6000"),
            Some("192.0.2.1:9"),
            Control,
            0,
            0,
        ),
    );
    let fb = add_ok(
        &mut e,
        b,
        &add(
            udp(3, Family::V4, "10.0.0.1:7000"),
            Some("192.0.2.1:9"),
            AudioVideo,
            0,
            0,
        ),
    );
    let report = e.close_handle(a).unwrap();
    assert_eq!(
        (
            report.flows_removed,
            report.sockets_removed,
            report.requests_aborted
        ),
        (2, 3, 0)
    );
    assert_eq!(
        hit(&e, &tuple(Protocol::Udp, "10.0.0.1:5000", "192.0.2.1:9")),
        None
    );
    assert_eq!(
        hit(&e, &tuple(Protocol::Udp, "10.0.0.1:6000", "192.0.2.1:9")),
        None
    );
    assert_eq!(
        hit(&e, &tuple(Protocol::Udp, "10.0.0.1:7000", "192.0.2.1:9")),
        Some(fb)
    );
    let flows = e.flow_details().unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].id, fb);
    e.check_control_invariants().unwrap();
}

// ---------------------------------------------------------------- AddSocketToFlow

#[test]
fn add_flags_other_than_non_adaptive_are_87() {
    let mut e = engine();
    let h = e.open_handle(USER).unwrap();
    for flags in [1, 3, 4, 0x8000_0000, u32::MAX] {
        assert_refused(
            &mut e,
            h,
            &add(udp4(1), Some("192.0.2.1:9"), Voice, flags, 0),
            InvalidParameter,
        );
    }
    let a = add_ok(&mut e, h, &add(udp4(1), Some("192.0.2.1:9"), Voice, 0, 0));
    let b = add_ok(
        &mut e,
        h,
        &add(udp4(1), Some("192.0.2.2:9"), Voice, NON_ADAPTIVE, 0),
    );
    let d = e.flow_details().unwrap();
    assert!(d.iter().any(|f| f.id == a && f.adaptive));
    assert!(d.iter().any(|f| f.id == b && !f.adaptive));
}

#[test]
fn flow_ids_are_nonzero_unique_and_not_reused_at_once() {
    let mut e = engine();
    let h = e.open_handle(USER).unwrap();
    let mut seen = Vec::new();
    for i in 0..50u16 {
        let dest = format!("192.0.2.1:{}", 1000 + i);
        let id = add_ok(&mut e, h, &add(udp4(1), Some(&dest), Voice, 0, 0));
        assert_ne!(id, 0);
        assert!(!seen.contains(&id));
        seen.push(id);
        if i % 3 == 0 {
            e.apply(
                h,
                &Request::RemoveSocketFromFlow {
                    socket: None,
                    flow_id: id,
                },
            )
            .unwrap();
        }
    }
    // A destroyed id is stale: it answers 1168, not some new flow.
    assert_refused(
        &mut e,
        h,
        &Request::QueryFlow {
            flow_id: seen[0],
            op: QueryFlow::PacketPriority,
        },
        NotFound,
    );
}

#[test]
fn join_needs_an_own_non_adaptive_flow() {
    let mut e = engine();
    let h = e.open_handle(USER).unwrap();
    let other = e.open_handle(USER).unwrap();
    let adaptive = add_ok(&mut e, h, &add(udp4(1), Some("192.0.2.1:9"), Voice, 0, 0));
    let fixed = add_ok(
        &mut e,
        h,
        &add(udp4(2), Some("192.0.2.2:9"), Voice, NON_ADAPTIVE, 0),
    );
    let foreign = add_ok(
        &mut e,
        other,
        &add(udp4(3), Some("192.0.2.3:9"), Voice, NON_ADAPTIVE, 0),
    );
    let s = udp(4, Family::V4, "10.0.0.1:6000");
    // Adaptive flows hold one socket (§9); unknown ids and other handles' flows are 87 (§5).
    assert_refused(
        &mut e,
        h,
        &add(s, Some("192.0.2.9:9"), Voice, 0, adaptive),
        InvalidParameter,
    );
    assert_refused(
        &mut e,
        h,
        &add(s, Some("192.0.2.9:9"), Voice, NON_ADAPTIVE, adaptive),
        InvalidParameter,
    );
    assert_refused(
        &mut e,
        h,
        &add(s, Some("192.0.2.9:9"), Voice, NON_ADAPTIVE, 0xffff),
        InvalidParameter,
    );
    assert_refused(
        &mut e,
        h,
        &add(s, Some("192.0.2.9:9"), Voice, NON_ADAPTIVE, foreign),
        InvalidParameter,
    );
    // Joining keeps the flow's own type and adaptivity.
    assert_eq!(
        add_ok(
            &mut e,
            h,
            &add(s, Some("192.0.2.9:9"), Background, 0, fixed)
        ),
        fixed
    );
    let d = e
        .flow_details()
        .unwrap()
        .into_iter()
        .find(|f| f.id == fixed)
        .unwrap();
    assert_eq!(
        (d.traffic_type, d.adaptive, d.sockets.len()),
        (Voice, false, 2)
    );
    assert_eq!(
        hit(&e, &tuple(Protocol::Udp, "10.0.0.1:6000", "192.0.2.9:9")),
        Some(fixed)
    );
}

#[test]
fn connected_socket_dest_optional_but_must_match_peer() {
    let mut e = engine();
    let h = e.open_handle(USER).unwrap();
    let s = tcp(1, Family::V4, "10.0.0.1:40000", Some("192.0.2.1:443"));
    assert_refused(
        &mut e,
        h,
        &add(s, Some("192.0.2.1:444"), Voice, 0, 0),
        InvalidParameter,
    );
    assert_refused(
        &mut e,
        h,
        &add(s, Some("192.0.2.2:443"), Voice, 0, 0),
        InvalidParameter,
    );
    let a = add_ok(&mut e, h, &add(s, None, Voice, 0, 0));
    assert_eq!(
        hit(&e, &tuple(Protocol::Tcp, "10.0.0.1:40000", "192.0.2.1:443")),
        Some(a)
    );
    e.apply(
        h,
        &Request::RemoveSocketFromFlow {
            socket: None,
            flow_id: a,
        },
    )
    .unwrap();
    // Dest equal to the peer, even written v4-mapped, is accepted.
    let b = add_ok(
        &mut e,
        h,
        &add(s, Some("[::ffff:192.0.2.1]:443"), Voice, 0, 0),
    );
    assert_eq!(
        hit(&e, &tuple(Protocol::Tcp, "10.0.0.1:40000", "192.0.2.1:443")),
        Some(b)
    );
    // A connected socket is always bound: local port 0 with a peer is inconsistent.
    let bad = tcp(2, Family::V4, "10.0.0.1:0", Some("192.0.2.1:443"));
    assert_refused(&mut e, h, &add(bad, None, Voice, 0, 0), InvalidParameter);
    // A connected UDP socket works the same way.
    let u = qosmark_engine::abi::SocketInfo {
        peer: Some(sa("192.0.2.7:53")),
        ..udp(3, Family::V4, "10.0.0.1:5353")
    };
    let c = add_ok(&mut e, h, &add(u, None, Control, 0, 0));
    assert_eq!(
        hit(&e, &tuple(Protocol::Udp, "10.0.0.1:5353", "192.0.2.7:53")),
        Some(c)
    );
}

#[test]
fn unconnected_sockets_need_a_usable_destination() {
    let mut e = engine();
    let h = e.open_handle(USER).unwrap();
    assert_refused(
        &mut e,
        h,
        &add(udp4(1), None, Voice, 0, 0),
        InvalidParameter,
    );
    assert_refused(
        &mut e,
        h,
        &add(tcp(1, Family::V4, "0.0.0.0:0", None), None, Voice, 0, 0),
        InvalidParameter,
    );
    for dest in [
        "0.0.0.0:9",
        "192.0.2.1:0",
        "[::]:9",
        "[::ffff:0.0.0.0]:9",
        "[2001:db8::1]:0",
    ] {
        let s = udp(1, Family::V6, "[::]:5000");
        assert_refused(
            &mut e,
            h,
            &add(s, Some(dest), Voice, 0, 0),
            InvalidParameter,
        );
    }
    // An unbound UDP socket has nothing to match yet.
    assert_refused(
        &mut e,
        h,
        &add(
            udp(1, Family::V4, "0.0.0.0:0"),
            Some("192.0.2.1:9"),
            Voice,
            0,
            0,
        ),
        InvalidParameter,
    );
}

#[test]
fn address_families_and_v4_mapped() {
    let mut e = engine();
    let h = e.open_handle(USER).unwrap();
    // AF_INET socket, native IPv6 destination: 87. AF_INET socket with a v6 local: 87.
    assert_refused(
        &mut e,
        h,
        &add(udp4(1), Some("[2001:db8::1]:9"), Voice, 0, 0),
        InvalidParameter,
    );
    assert_refused(
        &mut e,
        h,
        &add(
            udp(1, Family::V4, "[::1]:5000"),
            Some("192.0.2.1:9"),
            Voice,
            0,
            0,
        ),
        InvalidParameter,
    );
    // AF_INET socket, v4-mapped destination: normalized, accepted.
    let a = add_ok(
        &mut e,
        h,
        &add(udp4(1), Some("[::ffff:192.0.2.1]:9"), Voice, 0, 0),
    );
    assert_eq!(
        hit(&e, &tuple(Protocol::Udp, "10.0.0.1:5000", "192.0.2.1:9")),
        Some(a)
    );
    // Dual-stack AF_INET6 socket bound to [::]: IPv4 and v4-mapped destinations (qWAVE: 87).
    let ds = udp(2, Family::V6, "[::]:6000");
    let b = add_ok(
        &mut e,
        h,
        &add(ds, Some("192.0.2.2:9"), Voice, NON_ADAPTIVE, 0),
    );
    add_ok(
        &mut e,
        h,
        &add(ds, Some("[::ffff:192.0.2.3]:9"), Voice, NON_ADAPTIVE, b),
    );
    add_ok(
        &mut e,
        h,
        &add(ds, Some("[2001:db8::3]:9"), Voice, NON_ADAPTIVE, b),
    );
    assert_eq!(
        hit(&e, &tuple(Protocol::Udp, "10.0.0.1:6000", "192.0.2.2:9")),
        Some(b)
    );
    assert_eq!(
        hit(&e, &tuple(Protocol::Udp, "10.9.9.9:6000", "192.0.2.3:9")),
        Some(b)
    );
    assert_eq!(
        hit(
            &e,
            &tuple(Protocol::Udp, "[2001:db8::9]:6000", "[2001:db8::3]:9")
        ),
        Some(b)
    );
    // Packets with v4-mapped addresses in the tuple also find the IPv4 key.
    assert_eq!(
        hit(
            &e,
            &tuple(
                Protocol::Udp,
                "[::ffff:10.0.0.1]:6000",
                "[::ffff:192.0.2.2]:9"
            )
        ),
        Some(b)
    );
    let listed = e
        .flow_details()
        .unwrap()
        .into_iter()
        .find(|f| f.id == b)
        .unwrap();
    assert_eq!(listed.sockets[1].remote, sa("192.0.2.3:9"));
    // Dual-stack socket bound to a v4-mapped local is keyed as IPv4 too.
    let dm = udp(3, Family::V6, "[::ffff:10.0.0.1]:7000");
    let c = add_ok(&mut e, h, &add(dm, Some("192.0.2.4:9"), Voice, 0, 0));
    assert_eq!(
        hit(&e, &tuple(Protocol::Udp, "10.0.0.1:7000", "192.0.2.4:9")),
        Some(c)
    );
    // Bound to a concrete IPv6 address: an IPv4 destination can never match → 87.
    let v6 = udp(4, Family::V6, "[2001:db8::1]:8000");
    assert_refused(
        &mut e,
        h,
        &add(v6, Some("192.0.2.5:9"), Voice, 0, 0),
        InvalidParameter,
    );
}

#[test]
fn repeated_and_conflicting_registrations() {
    let mut e = engine();
    let h = e.open_handle(USER).unwrap();
    let a = add_ok(
        &mut e,
        h,
        &add(udp4(1), Some("192.0.2.1:9"), Voice, NON_ADAPTIVE, 0),
    );
    // Same socket, same flow, same destination: a no-op success.
    let before = e.control_snapshot().unwrap();
    assert_eq!(
        add_ok(
            &mut e,
            h,
            &add(udp4(1), Some("192.0.2.1:9"), Voice, NON_ADAPTIVE, a)
        ),
        a
    );
    assert_eq!(e.control_snapshot().unwrap(), before);
    // Same 5-tuple in a new flow, or from another socket (same or other handle): 183.
    assert_refused(
        &mut e,
        h,
        &add(udp4(1), Some("192.0.2.1:9"), Voice, 0, 0),
        AlreadyExists,
    );
    let twin = udp(2, Family::V4, "10.0.0.1:5000");
    assert_refused(
        &mut e,
        h,
        &add(twin, Some("192.0.2.1:9"), Voice, NON_ADAPTIVE, a),
        AlreadyExists,
    );
    let other = e.open_handle(USER2).unwrap();
    assert_refused(
        &mut e,
        other,
        &add(udp4(1), Some("192.0.2.1:9"), Voice, 0, 0),
        AlreadyExists,
    );
    // Same socket in another flow with another destination: fine (one class per peer).
    let b = add_ok(
        &mut e,
        h,
        &add(udp4(1), Some("192.0.2.2:9"), Background, 0, 0),
    );
    assert_ne!(a, b);
    assert_eq!(
        hit(&e, &tuple(Protocol::Udp, "10.0.0.1:5000", "192.0.2.2:9")),
        Some(b)
    );
}

#[test]
fn chromium_pattern_one_flow_many_destinations() {
    let mut e = engine();
    let h = e.open_handle(USER).unwrap();
    let s = udp(9, Family::V6, "[::]:5000");
    let id = add_ok(
        &mut e,
        h,
        &add(s, Some("192.0.2.1:3478"), AudioVideo, NON_ADAPTIVE, 0),
    );
    for d in ["192.0.2.2:3478", "[2001:db8::7]:3478", "192.0.2.1:3479"] {
        assert_eq!(
            add_ok(&mut e, h, &add(s, Some(d), AudioVideo, NON_ADAPTIVE, id)),
            id
        );
    }
    let f = &e.flow_details().unwrap()[0];
    assert_eq!(f.sockets.len(), 4);
    assert!(f
        .sockets
        .iter()
        .all(|x| x.socket == 9 && x.binding == Binding::AnyAddress { port: 5000 }));
    for d in [
        "192.0.2.1:3478",
        "192.0.2.2:3478",
        "[2001:db8::7]:3478",
        "192.0.2.1:3479",
    ] {
        let local = if d.starts_with('[') {
            "[2001:db8::1]:5000"
        } else {
            "10.0.0.1:5000"
        };
        assert_eq!(hit(&e, &tuple(Protocol::Udp, local, d)), Some(id), "{d}");
    }
    // Destroying the flow with socket = NULL drops every destination.
    e.apply(
        h,
        &Request::RemoveSocketFromFlow {
            socket: None,
            flow_id: id,
        },
    )
    .unwrap();
    assert_eq!(
        hit(&e, &tuple(Protocol::Udp, "10.0.0.1:5000", "192.0.2.1:3478")),
        None
    );
    assert!(e.flow_details().unwrap().is_empty());
}

// ---------------------------------------------------------------- RemoveSocketFromFlow

#[test]
fn remove_socket_rules() {
    let mut e = engine();
    let h = e.open_handle(USER).unwrap();
    let other = e.open_handle(USER).unwrap();
    let id = add_ok(
        &mut e,
        h,
        &add(udp4(1), Some("192.0.2.1:9"), Voice, NON_ADAPTIVE, 0),
    );
    add_ok(
        &mut e,
        h,
        &add(udp4(1), Some("192.0.2.2:9"), Voice, NON_ADAPTIVE, id),
    );
    add_ok(
        &mut e,
        h,
        &add(
            udp(2, Family::V4, "10.0.0.1:6000"),
            Some("192.0.2.1:9"),
            Voice,
            NON_ADAPTIVE,
            id,
        ),
    );
    for (socket, flow_id) in [
        (None, 0),
        (Some(1), 0),
        (None, id + 1000),
        (Some(1), id + 1000),
    ] {
        assert_refused(
            &mut e,
            h,
            &Request::RemoveSocketFromFlow { socket, flow_id },
            NotFound,
        );
    }
    // Another handle's flow is not revealed; a socket not in the flow is 1168.
    assert_refused(
        &mut e,
        other,
        &Request::RemoveSocketFromFlow {
            socket: None,
            flow_id: id,
        },
        NotFound,
    );
    assert_refused(
        &mut e,
        h,
        &Request::RemoveSocketFromFlow {
            socket: Some(3),
            flow_id: id,
        },
        NotFound,
    );
    // Socket 1 leaves with both destinations; socket 2 stays.
    e.apply(
        h,
        &Request::RemoveSocketFromFlow {
            socket: Some(1),
            flow_id: id,
        },
    )
    .unwrap();
    assert_eq!(
        hit(&e, &tuple(Protocol::Udp, "10.0.0.1:5000", "192.0.2.1:9")),
        None
    );
    assert_eq!(
        hit(&e, &tuple(Protocol::Udp, "10.0.0.1:5000", "192.0.2.2:9")),
        None
    );
    assert_eq!(
        hit(&e, &tuple(Protocol::Udp, "10.0.0.1:6000", "192.0.2.1:9")),
        Some(id)
    );
    e.check_control_invariants().unwrap();
    // The last socket leaving destroys the flow.
    e.apply(
        h,
        &Request::RemoveSocketFromFlow {
            socket: Some(2),
            flow_id: id,
        },
    )
    .unwrap();
    assert!(e.flow_details().unwrap().is_empty());
    assert_refused(
        &mut e,
        h,
        &Request::QueryFlow {
            flow_id: id,
            op: QueryFlow::PacketPriority,
        },
        NotFound,
    );
    e.check_control_invariants().unwrap();
}

// ---------------------------------------------------------------- SetFlow / QueryFlow / NotifyFlow

#[test]
fn traffic_type_change_is_live() {
    let mut e = engine();
    let h = e.open_handle(USER).unwrap();
    let id = add_ok(
        &mut e,
        h,
        &add(udp4(1), Some("192.0.2.1:9"), BestEffort, 0, 0),
    );
    let t = tuple(Protocol::Udp, "10.0.0.1:5000", "192.0.2.1:9");
    assert_eq!(e.socket_lookup(&t).unwrap().1.dscp, None);
    assert_eq!(priority(&mut e, h, id), PacketPriority::default());
    e.apply(
        h,
        &Request::SetFlow {
            flow_id: id,
            op: SetFlow::TrafficType(Voice),
        },
    )
    .unwrap();
    let m = e.socket_lookup(&t).unwrap().1;
    assert_eq!(
        (m.dscp.map(Dscp::value), m.pcp.map(Pcp::value)),
        (Some(56), Some(7))
    );
    assert_eq!(
        priority(&mut e, h, id),
        PacketPriority {
            conformant_dscp: 56,
            non_conformant_dscp: 0,
            conformant_l2: 7,
            non_conformant_l2: 0
        }
    );
    let other = e.open_handle(USER).unwrap();
    assert_refused(
        &mut e,
        other,
        &Request::SetFlow {
            flow_id: id,
            op: SetFlow::TrafficType(Background),
        },
        NotFound,
    );
    assert_refused(
        &mut e,
        h,
        &Request::SetFlow {
            flow_id: 0,
            op: SetFlow::TrafficType(Background),
        },
        NotFound,
    );
}

#[test]
fn packet_priority_of_each_type_and_adaptivity() {
    let mut e = engine();
    let h = e.open_handle(USER).unwrap();
    let expect = [(0, 0), (8, 2), (40, 5), (40, 5), (56, 7), (56, 7)];
    for (i, tt) in TrafficType::ALL.into_iter().enumerate() {
        let port = 1000 + u16::try_from(i).unwrap();
        let a = add_ok(
            &mut e,
            h,
            &add(udp4(1), Some(&format!("192.0.2.1:{port}")), tt, 0, 0),
        );
        let n = add_ok(
            &mut e,
            h,
            &add(
                udp4(1),
                Some(&format!("192.0.2.2:{port}")),
                tt,
                NON_ADAPTIVE,
                0,
            ),
        );
        let (d, l2) = expect[i];
        let pa = priority(&mut e, h, a);
        let pn = priority(&mut e, h, n);
        assert_eq!(
            (pa.conformant_dscp, pa.conformant_l2),
            (d, l2),
            "{tt:?} adaptive"
        );
        assert_eq!(
            (pn.conformant_dscp, pn.conformant_l2),
            (d, 0),
            "{tt:?} non-adaptive"
        );
    }
}

#[test]
fn custom_dscp_privileges_and_range() {
    let mut e = engine();
    let u = e.open_handle(USER).unwrap();
    let a = e.open_handle(ADMIN).unwrap();
    let k = e.open_handle(KERNEL).unwrap();
    let fu = add_ok(&mut e, u, &add(udp4(1), Some("192.0.2.1:9"), Voice, 0, 0));
    let fa = add_ok(&mut e, a, &add(udp4(2), Some("192.0.2.2:9"), Voice, 0, 0));
    let fk = add_ok(&mut e, k, &add(udp4(3), Some("192.0.2.3:9"), Voice, 0, 0));
    let set = |flow_id, v| Request::SetFlow {
        flow_id,
        op: SetFlow::OutgoingDscp(v),
    };
    for v in [64, 255, 256, u32::MAX] {
        assert_refused(&mut e, u, &set(fu, v), InvalidParameter);
        assert_refused(&mut e, a, &set(fa, v), InvalidParameter);
    }
    assert_refused(&mut e, u, &set(fu, 46), AccessDenied);
    assert_refused(&mut e, u, &set(fu + 1000, 46), NotFound);
    assert_refused(&mut e, u, &set(fa, 46), NotFound);
    e.apply(a, &set(fa, 46)).unwrap();
    e.apply(k, &set(fk, 0)).unwrap();
    assert_eq!(priority(&mut e, a, fa).conformant_dscp, 46);
    // DSCP 0 is a real mark (CS0), 802.1p still from the table.
    let pk = priority(&mut e, k, fk);
    assert_eq!((pk.conformant_dscp, pk.conformant_l2), (0, 7));
    let tk = tuple(Protocol::Udp, "10.0.0.1:5002", "192.0.2.3:9");
    assert_eq!(e.socket_lookup(&tk).unwrap().1.dscp, Some(Dscp::CS0));
    // The admin opens EF to users.
    let mut table = default_table();
    table.user_dscp_allow = 1 << 46;
    e.apply(a, &Request::SetTrafficTable(table)).unwrap();
    e.apply(u, &set(fu, 46)).unwrap();
    assert_refused(&mut e, u, &set(fu, 45), AccessDenied);
    // The custom DSCP survives a type change and a table change; 802.1p follows them.
    e.apply(
        u,
        &Request::SetFlow {
            flow_id: fu,
            op: SetFlow::TrafficType(Background),
        },
    )
    .unwrap();
    let p = priority(&mut e, u, fu);
    assert_eq!((p.conformant_dscp, p.conformant_l2), (46, 2));
    table.tag_adaptive_flows = false;
    e.apply(a, &Request::SetTrafficTable(table)).unwrap();
    let p = priority(&mut e, u, fu);
    assert_eq!((p.conformant_dscp, p.conformant_l2), (46, 0));
    e.check_control_invariants().unwrap();
}

#[test]
fn rates_are_set_and_queried_probing_and_notifications_are_50() {
    let mut e = engine();
    let h = e.open_handle(USER).unwrap();
    let id = add_ok(&mut e, h, &add(udp4(1), Some("192.0.2.1:9"), Voice, 0, 0));
    let rate = |bandwidth, shaping| Request::SetFlow {
        flow_id: id,
        op: SetFlow::OutgoingRate(qosmark_engine::abi::FlowRate {
            bandwidth,
            shaping,
            reason: 0,
        }),
    };
    let query_rate = Request::QueryFlow {
        flow_id: id,
        op: QueryFlow::OutgoingRate,
    };
    // No rate yet: 232 ERROR_NO_DATA (qosmark choice, see the control module docs).
    assert_refused(&mut e, h, &query_rate, NoData);
    assert_eq!(NoData.win32().0, 232);
    assert_refused(
        &mut e,
        h,
        &Request::SetFlow {
            flow_id: 77,
            op: SetFlow::OutgoingRate(qosmark_engine::abi::FlowRate {
                bandwidth: 1_000_000,
                shaping: ShapeAndMark,
                reason: 0,
            }),
        },
        NotFound,
    );
    for bad in [0, 1, 11_999, 100_000_000_001, u64::MAX] {
        assert_refused(&mut e, h, &rate(bad, ShapeOnly), InvalidParameter);
    }
    assert_eq!(e.apply(h, &rate(12_000, ShapeAndMark)), Ok(Response::Done));
    assert_eq!(e.apply(h, &query_rate), Ok(Response::OutgoingRate(12_000)));
    let shaper = e.flow_details().unwrap()[0].shaper.unwrap();
    assert!(e.shaper_live(shaper));
    // A new rate keeps the shaper; a refused one changes nothing.
    assert_eq!(
        e.apply(h, &rate(2_000_000, UseNonConformantMarkings)),
        Ok(Response::Done)
    );
    assert_eq!(e.flow_details().unwrap()[0].shaper, Some(shaper));
    assert_eq!(
        e.apply(h, &query_rate),
        Ok(Response::OutgoingRate(2_000_000))
    );
    assert_refused(&mut e, h, &rate(0, ShapeOnly), InvalidParameter);
    assert_eq!(
        e.apply(h, &query_rate),
        Ok(Response::OutgoingRate(2_000_000))
    );
    // Non-conformant marks are reported only under QOSUseNonConformantMarkings; the flow is
    // adaptive (flags 0), so it requests 802.1p and its excess gets the table's 802.1p.
    let mut table = default_table();
    table.non_conformant_dscp = Dscp::try_new(8).unwrap();
    table.non_conformant_pcp = Pcp::try_new(3).unwrap();
    let a = e.open_handle(ADMIN).unwrap();
    e.apply(a, &Request::SetTrafficTable(table)).unwrap();
    let p = priority(&mut e, h, id);
    assert_eq!(
        (
            p.conformant_dscp,
            p.non_conformant_dscp,
            p.conformant_l2,
            p.non_conformant_l2
        ),
        (56, 8, 7, 3)
    );
    assert_eq!(e.apply(h, &rate(2_000_000, ShapeOnly)), Ok(Response::Done));
    let p = priority(&mut e, h, id);
    assert_eq!((p.non_conformant_dscp, p.non_conformant_l2), (0, 0));
    assert_refused(
        &mut e,
        h,
        &Request::QueryFlow {
            flow_id: id,
            op: QueryFlow::Fundamentals,
        },
        NotSupported,
    );
    for op in [QueryFlow::Fundamentals, QueryFlow::OutgoingRate] {
        assert_refused(&mut e, h, &Request::QueryFlow { flow_id: 77, op }, NotFound);
    }
    // Removing the flow kills its shaper.
    e.apply(
        h,
        &Request::RemoveSocketFromFlow {
            socket: None,
            flow_id: id,
        },
    )
    .unwrap();
    assert!(!e.shaper_live(shaper));
    let id = add_ok(&mut e, h, &add(udp4(1), Some("192.0.2.1:9"), Voice, 0, 0));
    let notify = |flow_id, op, threshold| Request::NotifyFlow {
        flow_id,
        op,
        threshold,
    };
    assert_refused(
        &mut e,
        h,
        &notify(77, NotifyFlow::Congested, None),
        NotFound,
    );
    assert_refused(
        &mut e,
        h,
        &notify(0, NotifyFlow::Available, Some(5)),
        NotFound,
    );
    assert_refused(
        &mut e,
        h,
        &notify(id, NotifyFlow::Congested, None),
        NotSupported,
    );
    assert_refused(
        &mut e,
        h,
        &notify(id, NotifyFlow::Uncongested, None),
        NotSupported,
    );
    assert_refused(
        &mut e,
        h,
        &notify(id, NotifyFlow::Available, Some(1_000)),
        NotSupported,
    );
    assert_refused(
        &mut e,
        h,
        &notify(id, NotifyFlow::Available, None),
        InvalidParameter,
    );
    assert_refused(
        &mut e,
        h,
        &notify(id, NotifyFlow::Congested, Some(1)),
        InvalidParameter,
    );
}

// ---------------------------------------------------------------- enumerate, rules, table, status

#[test]
fn enumerate_admins_see_all_users_their_process() {
    let mut e = engine();
    let u1 = e.open_handle(USER).unwrap();
    let u1b = e.open_handle(USER).unwrap();
    let u2 = e.open_handle(USER2).unwrap();
    let a = e.open_handle(ADMIN).unwrap();
    let k = e.open_handle(KERNEL).unwrap();
    let f1 = add_ok(&mut e, u1, &add(udp4(1), Some("192.0.2.1:9"), Voice, 0, 0));
    let f1b = add_ok(&mut e, u1b, &add(udp4(2), Some("192.0.2.2:9"), Voice, 0, 0));
    let f2 = add_ok(&mut e, u2, &add(udp4(3), Some("192.0.2.3:9"), Voice, 0, 0));
    let mut all = vec![f1, f1b, f2];
    all.sort_unstable();
    assert_eq!(ids(&mut e, a), all);
    assert_eq!(ids(&mut e, k), all);
    let mut mine = vec![f1, f1b];
    mine.sort_unstable();
    assert_eq!(ids(&mut e, u1), mine);
    assert_eq!(ids(&mut e, u2), vec![f2]);
    // Listed, yet another handle's flow stays untouchable (§5 EnumerateFlows).
    assert_refused(
        &mut e,
        u1,
        &Request::QueryFlow {
            flow_id: f1b,
            op: QueryFlow::PacketPriority,
        },
        NotFound,
    );
}

#[test]
fn rules_and_table_changes_need_admin() {
    let mut e = engine();
    let u = e.open_handle(USER).unwrap();
    let a = e.open_handle(ADMIN).unwrap();
    let k = e.open_handle(KERNEL).unwrap();
    let name = qosmark_engine::abi::heapless_name::RuleName::try_new("voip").unwrap();
    let spec = qosmark_engine::abi::RuleSpec {
        name,
        precedence: 127,
        protocol: qosmark_engine::abi::RuleProtocol::Udp,
        local_prefix: None,
        remote_prefix: None,
        local_ports: None,
        remote_ports: Some(qosmark_engine::abi::PortRange {
            first: 5060,
            last: 5061,
        }),
        action: qosmark_engine::abi::RuleAction::Dscp(Dscp::EF),
        pcp: None,
        throttle_bps: None,
    };
    for req in [
        Request::AddRule(spec.clone()),
        Request::RemoveRule(name),
        Request::ListRules,
        Request::SetTrafficTable(default_table()),
    ] {
        assert_refused(&mut e, u, &req, AccessDenied);
    }
    // Privileged callers reach the rule set (its own answers are the rules module's business).
    for h in [a, k] {
        assert!(matches!(
            e.apply(h, &Request::ListRules),
            Ok(Response::Rules(_))
        ));
        assert_ne!(
            e.apply(h, &Request::AddRule(spec.clone())),
            Err(AccessDenied)
        );
        assert_ne!(e.apply(h, &Request::RemoveRule(name)), Err(AccessDenied));
    }
    // Everybody may read the table.
    assert_eq!(
        e.apply(u, &Request::GetTrafficTable),
        Ok(Response::TrafficTable(default_table()))
    );
}

#[test]
fn table_change_re_resolves_live_flows() {
    let mut e = engine();
    let u = e.open_handle(USER).unwrap();
    let a = e.open_handle(ADMIN).unwrap();
    let voice = add_ok(&mut e, u, &add(udp4(1), Some("192.0.2.1:9"), Voice, 0, 0));
    let video = add_ok(
        &mut e,
        u,
        &add(udp4(1), Some("192.0.2.2:9"), AudioVideo, NON_ADAPTIVE, 0),
    );
    let mut table = default_table();
    table.marks[Voice.index()] = TrafficTypeMark {
        dscp: Some(Dscp::EF),
        pcp: Pcp::try_new(6).ok(),
    };
    table.marks[AudioVideo.index()] = TrafficTypeMark {
        dscp: Dscp::try_new(34).ok(),
        pcp: Pcp::try_new(4).ok(),
    };
    e.apply(a, &Request::SetTrafficTable(table)).unwrap();
    assert_eq!(
        e.apply(u, &Request::GetTrafficTable),
        Ok(Response::TrafficTable(table))
    );
    let m = e
        .socket_lookup(&tuple(Protocol::Udp, "10.0.0.1:5000", "192.0.2.1:9"))
        .unwrap()
        .1;
    assert_eq!(
        (m.dscp.map(Dscp::value), m.pcp.map(Pcp::value)),
        (Some(46), Some(6))
    );
    let m = e
        .socket_lookup(&tuple(Protocol::Udp, "10.0.0.1:5000", "192.0.2.2:9"))
        .unwrap()
        .1;
    assert_eq!((m.dscp.map(Dscp::value), m.pcp), (Some(34), None));
    assert_eq!(priority(&mut e, u, voice).conformant_dscp, 46);
    assert_eq!(priority(&mut e, u, video).conformant_l2, 0);
    e.check_control_invariants().unwrap();
}

#[test]
fn status_counts() {
    let mut e = engine();
    let h = e.open_handle(USER).unwrap();
    e.open_handle(ADMIN).unwrap();
    let id = add_ok(
        &mut e,
        h,
        &add(udp4(1), Some("192.0.2.1:9"), Voice, NON_ADAPTIVE, 0),
    );
    add_ok(
        &mut e,
        h,
        &add(udp4(1), Some("192.0.2.2:9"), Voice, NON_ADAPTIVE, id),
    );
    add_ok(&mut e, h, &add(udp4(2), Some("192.0.2.2:9"), Voice, 0, 0));
    let Ok(Response::Status(s)) = e.apply(h, &Request::QueryStatus) else {
        panic!()
    };
    assert_eq!(
        (s.protocol_version, s.handles, s.flows, s.sockets),
        (qosmark_engine::abi::PROTOCOL_VERSION, 2, 2, 3)
    );
}

// ---------------------------------------------------------------- limits

#[test]
fn limits_are_1450_and_change_nothing() {
    let limits = Limits {
        max_flows: 3,
        max_flows_per_handle: 2,
        max_sockets: 5,
        max_sockets_per_handle: 3,
        ..Limits::default()
    };
    let mut e = Engine::new(limits);
    let a = e.open_handle(USER).unwrap();
    let b = e.open_handle(USER).unwrap();
    let c = e.open_handle(USER).unwrap();
    let f = add_ok(
        &mut e,
        a,
        &add(udp4(1), Some("192.0.2.1:1"), Voice, NON_ADAPTIVE, 0),
    );
    add_ok(
        &mut e,
        a,
        &add(udp4(1), Some("192.0.2.1:2"), Voice, NON_ADAPTIVE, 0),
    );
    // Flows per handle.
    assert_refused(
        &mut e,
        a,
        &add(udp4(1), Some("192.0.2.1:3"), Voice, 0, 0),
        LimitReached,
    );
    // Sockets per handle (joining an existing flow).
    add_ok(
        &mut e,
        a,
        &add(udp4(1), Some("192.0.2.1:4"), Voice, NON_ADAPTIVE, f),
    );
    assert_refused(
        &mut e,
        a,
        &add(udp4(1), Some("192.0.2.1:5"), Voice, NON_ADAPTIVE, f),
        LimitReached,
    );
    // Flows in total.
    add_ok(
        &mut e,
        b,
        &add(udp4(2), Some("192.0.2.1:1"), Voice, NON_ADAPTIVE, 0),
    );
    assert_refused(
        &mut e,
        c,
        &add(udp4(3), Some("192.0.2.1:1"), Voice, 0, 0),
        LimitReached,
    );
    // Sockets in total.
    let fb = e
        .flow_details()
        .unwrap()
        .into_iter()
        .find(|x| x.handle == b)
        .unwrap()
        .id;
    add_ok(
        &mut e,
        b,
        &add(udp4(2), Some("192.0.2.1:2"), Voice, NON_ADAPTIVE, fb),
    );
    assert_refused(
        &mut e,
        b,
        &add(udp4(2), Some("192.0.2.1:3"), Voice, NON_ADAPTIVE, fb),
        LimitReached,
    );
    // Freed capacity is usable again.
    e.close_handle(a).unwrap();
    add_ok(&mut e, c, &add(udp4(3), Some("192.0.2.1:1"), Voice, 0, 0));
    e.check_control_invariants().unwrap();
}

// ---------------------------------------------------------------- lookup tiers

#[test]
fn lookup_tier_precedence() {
    let mut e = engine();
    let h = e.open_handle(USER).unwrap();
    let remote = "192.0.2.1:443";
    let unbound = add_ok(
        &mut e,
        h,
        &add(
            tcp(1, Family::V4, "0.0.0.0:0", None),
            Some(remote),
            Background,
            0,
            0,
        ),
    );
    // A TCP socket registered before `connect` matches nothing: its packets cannot be told
    // from another process's packets to the same server (qos-api.md §8).
    assert_eq!(
        hit(&e, &tuple(Protocol::Tcp, "10.0.0.1:40000", remote)),
        None
    );
    assert_eq!(
        hit(&e, &tuple(Protocol::Tcp, "10.0.0.2:40001", remote)),
        None
    );
    // Another user waiting to connect to the same server does not collide with it.
    let other = e.open_handle(USER2).unwrap();
    let theirs = add_ok(
        &mut e,
        other,
        &add(
            tcp(1, Family::V4, "0.0.0.0:0", None),
            Some(remote),
            Voice,
            0,
            0,
        ),
    );
    assert_ne!(theirs, unbound);
    let any = add_ok(
        &mut e,
        h,
        &add(
            tcp(2, Family::V4, "0.0.0.0:40000", None),
            Some(remote),
            Voice,
            0,
            0,
        ),
    );
    assert_eq!(
        hit(&e, &tuple(Protocol::Tcp, "10.0.0.1:40000", remote)),
        Some(any)
    );
    assert_eq!(
        hit(&e, &tuple(Protocol::Tcp, "10.0.0.2:40000", remote)),
        Some(any)
    );
    assert_eq!(
        hit(&e, &tuple(Protocol::Tcp, "10.0.0.2:40001", remote)),
        None
    );
    let exact = add_ok(
        &mut e,
        h,
        &add(
            tcp(3, Family::V4, "10.0.0.1:40000", None),
            Some(remote),
            Control,
            0,
            0,
        ),
    );
    assert_eq!(
        hit(&e, &tuple(Protocol::Tcp, "10.0.0.1:40000", remote)),
        Some(exact)
    );
    assert_eq!(
        hit(&e, &tuple(Protocol::Tcp, "10.0.0.2:40000", remote)),
        Some(any)
    );
    // Removing the exact entry falls back to the next tier.
    e.apply(
        h,
        &Request::RemoveSocketFromFlow {
            socket: Some(3),
            flow_id: exact,
        },
    )
    .unwrap();
    assert_eq!(
        hit(&e, &tuple(Protocol::Tcp, "10.0.0.1:40000", remote)),
        Some(any)
    );
}

#[test]
fn socket_bound_pins_unbound_entries() {
    let mut e = engine();
    let h = e.open_handle(USER).unwrap();
    let other = e.open_handle(USER).unwrap();
    let s = tcp(5, Family::V6, "[::]:0", None);
    let f4 = add_ok(
        &mut e,
        h,
        &add(s, Some("192.0.2.1:443"), Voice, NON_ADAPTIVE, 0),
    );
    add_ok(
        &mut e,
        h,
        &add(s, Some("192.0.2.2:443"), Voice, NON_ADAPTIVE, f4),
    );
    let f6 = add_ok(&mut e, h, &add(s, Some("[2001:db8::1]:443"), Voice, 0, 0));
    let snapshot = e.control_snapshot().unwrap();
    // Port 0, an IPv4 local with an IPv6 entry, a closed handle: refused, nothing changes.
    assert_eq!(
        e.socket_bound(h, 5, sa("10.0.0.1:0")),
        Err(InvalidParameter)
    );
    assert_eq!(
        e.socket_bound(h, 5, sa("10.0.0.1:40000")),
        Err(InvalidParameter)
    );
    assert_eq!(e.control_snapshot().unwrap(), snapshot);
    // Another handle's socket 5 is a different socket: nothing to pin.
    assert_eq!(e.socket_bound(other, 5, sa("[::]:40000")), Ok(0));
    // Bound to [::]:40000 (dual stack): every entry moves to the any-address tier.
    assert_eq!(e.socket_bound(h, 5, sa("[::]:40000")), Ok(3));
    assert_eq!(
        hit(&e, &tuple(Protocol::Tcp, "10.0.0.1:40000", "192.0.2.1:443")),
        Some(f4)
    );
    assert_eq!(
        hit(&e, &tuple(Protocol::Tcp, "10.0.0.1:40001", "192.0.2.1:443")),
        None
    );
    assert_eq!(
        hit(
            &e,
            &tuple(Protocol::Tcp, "[2001:db8::9]:40000", "[2001:db8::1]:443")
        ),
        Some(f6)
    );
    assert!(e
        .flow_details()
        .unwrap()
        .iter()
        .flat_map(|f| &f.sockets)
        .all(|x| x.binding == Binding::AnyAddress { port: 40000 }));
    assert_eq!(e.socket_bound(h, 5, sa("[::]:40000")), Ok(0));
    // Pinning onto a 5-tuple already registered is 183, all or nothing.
    let t = tcp(6, Family::V4, "0.0.0.0:0", None);
    add_ok(
        &mut e,
        h,
        &add(t, Some("192.0.2.3:443"), Voice, NON_ADAPTIVE, 0),
    );
    add_ok(
        &mut e,
        h,
        &add(
            tcp(7, Family::V4, "10.0.0.1:41000", None),
            Some("192.0.2.3:443"),
            Voice,
            0,
            0,
        ),
    );
    let snapshot = e.control_snapshot().unwrap();
    assert_eq!(
        e.socket_bound(h, 6, sa("10.0.0.1:41000")),
        Err(AlreadyExists)
    );
    assert_eq!(e.control_snapshot().unwrap(), snapshot);
    assert_eq!(e.socket_bound(h, 6, sa("10.0.0.1:41001")), Ok(1));
    let pinned = e
        .flow_details()
        .unwrap()
        .into_iter()
        .find(|f| f.sockets.iter().any(|x| x.socket == 6));
    assert_eq!(
        hit(&e, &tuple(Protocol::Tcp, "10.0.0.1:41001", "192.0.2.3:443")),
        pinned.map(|f| f.id)
    );
    assert!(hit(&e, &tuple(Protocol::Tcp, "10.0.0.1:41001", "192.0.2.3:443")).is_some());
    assert_eq!(
        hit(&e, &tuple(Protocol::Tcp, "10.0.0.2:41001", "192.0.2.3:443")),
        None
    );
    e.check_control_invariants().unwrap();
}

#[test]
fn ipv6_scope_ids_do_not_split_keys() {
    let mut e = engine();
    let h = e.open_handle(USER).unwrap();
    let s = udp(1, Family::V6, "[fe80::1%4]:5000");
    let id = add_ok(&mut e, h, &add(s, Some("[fe80::2%4]:9"), Voice, 0, 0));
    // Packet tuples carry no scope id.
    assert_eq!(
        hit(&e, &tuple(Protocol::Udp, "[fe80::1]:5000", "[fe80::2]:9")),
        Some(id)
    );
}

#[test]
fn unused_table_entries_do_not_leak_into_other_types() {
    // A table where every type differs, to catch an off-by-one in the type index.
    let mut e = engine();
    let a = e.open_handle(ADMIN).unwrap();
    let mut table: TrafficTable = default_table();
    for (i, m) in table.marks.iter_mut().enumerate() {
        let i = u8::try_from(i).unwrap();
        *m = TrafficTypeMark {
            dscp: Dscp::try_new(10 + i).ok(),
            pcp: Pcp::try_new(i).ok(),
        };
    }
    e.apply(a, &Request::SetTrafficTable(table)).unwrap();
    for (i, tt) in TrafficType::ALL.into_iter().enumerate() {
        let port = 2000 + u16::try_from(i).unwrap();
        let id = add_ok(
            &mut e,
            a,
            &add(udp4(1), Some(&format!("192.0.2.1:{port}")), tt, 0, 0),
        );
        let p = priority(&mut e, a, id);
        assert_eq!(
            (p.conformant_dscp, p.conformant_l2),
            (10 + u32::try_from(i).unwrap(), u32::try_from(i).unwrap())
        );
    }
}
