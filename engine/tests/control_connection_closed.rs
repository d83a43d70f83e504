//! `Engine::connection_closed`: the Windows driver's report that a TCP connection (ALE flow)
//! of a process ended. The socket registered for exactly that 5-tuple by that process leaves
//! its flow; nothing else changes. Expectations come from the registrations made here, and
//! every "nothing matched" case is checked against a full control snapshot.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    reason = "test code: a panic is a failed test; each test is one scenario step by step"
)]

mod control_common;

use control_common::*;
use qosmark_engine::abi::{
    Family, FlowRate, Protocol, QueryFlow, Request, Response, SetFlow, Shaping, TrafficType,
};
use qosmark_engine::{Engine, Limits};

fn engine() -> Engine {
    Engine::new(Limits::default())
}

#[test]
fn a_closed_connection_leaves_its_flow_and_nothing_else_changes() {
    let mut e = engine();
    let h = e.open_handle(USER).unwrap();
    let a = add_ok(
        &mut e,
        h,
        &add(
            tcp(1, Family::V4, "10.0.0.1:40000", Some("192.0.2.1:5060")),
            None,
            TrafficType::Voice,
            0,
            0,
        ),
    );
    // A second flow with a rate, to see its shaper die with it.
    let b = add_ok(
        &mut e,
        h,
        &add(
            tcp(2, Family::V4, "10.0.0.1:40001", Some("192.0.2.1:5061")),
            None,
            TrafficType::Voice,
            0,
            0,
        ),
    );
    let rate = Request::SetFlow {
        flow_id: b,
        op: SetFlow::OutgoingRate(FlowRate {
            bandwidth: 1_000_000,
            shaping: Shaping::ShapeOnly,
            reason: 0,
        }),
    };
    assert_eq!(e.apply(h, &rate), Ok(Response::Done));
    let shaper = e
        .flow_details()
        .unwrap()
        .iter()
        .find(|f| f.id == b)
        .unwrap()
        .shaper
        .unwrap();
    let ta = tuple(Protocol::Tcp, "10.0.0.1:40000", "192.0.2.1:5060");
    let tb = tuple(Protocol::Tcp, "10.0.0.1:40001", "192.0.2.1:5061");

    // Nothing matches: another process's report, a tuple nobody registered, UDP for a TCP
    // registration. The state stays exactly as it was.
    let before = e.control_snapshot().unwrap();
    assert_eq!(e.connection_closed(&ta, USER2.pid), None);
    assert_eq!(
        e.connection_closed(
            &tuple(Protocol::Tcp, "10.0.0.1:40000", "192.0.2.9:5060"),
            USER.pid
        ),
        None
    );
    assert_eq!(
        e.connection_closed(
            &tuple(Protocol::Udp, "10.0.0.1:40000", "192.0.2.1:5060"),
            USER.pid
        ),
        None
    );
    assert_eq!(e.control_snapshot().unwrap(), before);

    // The owner's report: that socket (a one-socket flow) goes, the other flow stays.
    assert_eq!(e.connection_closed(&ta, USER.pid), Some(a));
    assert_eq!(hit(&e, &ta), None);
    assert_eq!(hit(&e, &tb), Some(b));
    let ids: Vec<u32> = e.flow_details().unwrap().iter().map(|f| f.id).collect();
    assert_eq!(ids, [b]);
    // Reported again (the flow-delete of a second context, a late report): nothing.
    assert_eq!(e.connection_closed(&ta, USER.pid), None);
    // The shaped flow's socket: flow and shaper go; the handle lives on, its rate query 1168.
    assert!(e.shaper_live(shaper));
    assert_eq!(e.connection_closed(&tb, USER.pid), Some(b));
    assert!(!e.shaper_live(shaper));
    assert!(e.flow_details().unwrap().is_empty());
    assert_eq!(
        e.apply(
            h,
            &Request::QueryFlow {
                flow_id: b,
                op: QueryFlow::OutgoingRate
            }
        ),
        Err(qosmark_engine::EngineError::NotFound)
    );
    assert_eq!(e.handle_details().unwrap()[0].flows, 0);
    e.check_control_invariants().unwrap();
}

#[test]
fn only_the_closed_socket_of_a_shared_flow_goes_and_mapped_addresses_match() {
    let mut e = engine();
    let h = e.open_handle(ADMIN).unwrap();
    // A non-adaptive flow with two TCP sockets, one of them dual-stack (IPv6 socket, IPv4
    // peer: the engine keys it by the IPv4 addresses).
    let f = add_ok(
        &mut e,
        h,
        &add(
            tcp(5, Family::V4, "10.0.0.1:41000", Some("192.0.2.1:443")),
            None,
            TrafficType::AudioVideo,
            NON_ADAPTIVE,
            0,
        ),
    );
    add_ok(
        &mut e,
        h,
        &add(
            tcp(
                6,
                Family::V6,
                "[::ffff:10.0.0.1]:41001",
                Some("[::ffff:192.0.2.1]:443"),
            ),
            None,
            TrafficType::AudioVideo,
            NON_ADAPTIVE,
            f,
        ),
    );
    // Windows reports the dual-stack connection with the mapped addresses.
    let mapped = tuple(
        Protocol::Tcp,
        "[::ffff:10.0.0.1]:41001",
        "[::ffff:192.0.2.1]:443",
    );
    assert_eq!(e.connection_closed(&mapped, ADMIN.pid), Some(f));
    let flows = e.flow_details().unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].sockets.len(), 1);
    assert_eq!(flows[0].sockets[0].socket, 5);
    assert_eq!(
        hit(&e, &tuple(Protocol::Tcp, "10.0.0.1:41000", "192.0.2.1:443")),
        Some(f)
    );
    // An unconnected UDP sender (tier 2, any local address) is not one connection: a TCP or
    // UDP report for one of its destinations does not touch it.
    let u = add_ok(
        &mut e,
        h,
        &add(
            udp(7, Family::V4, "0.0.0.0:5004"),
            Some("192.0.2.7:5004"),
            TrafficType::Voice,
            NON_ADAPTIVE,
            0,
        ),
    );
    let before = e.control_snapshot().unwrap();
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        assert_eq!(
            e.connection_closed(
                &tuple(protocol, "10.0.0.1:5004", "192.0.2.7:5004"),
                ADMIN.pid
            ),
            None
        );
    }
    assert_eq!(e.control_snapshot().unwrap(), before);
    assert!(e.flow_details().unwrap().iter().any(|d| d.id == u));
    e.check_control_invariants().unwrap();
}

#[test]
fn a_closed_endpoint_takes_its_socket_out_of_every_flow_and_nothing_else() {
    let mut e = engine();
    let h = e.open_handle(USER).unwrap();
    // An unconnected UDP sender bound to 0.0.0.0:5004 with two destinations (one flow), a
    // second UDP socket on another port, and two accepted TCP connections sharing their
    // local port 5060.
    let media = add_ok(
        &mut e,
        h,
        &add(
            udp(1, Family::V4, "0.0.0.0:5004"),
            Some("192.0.2.1:6000"),
            TrafficType::Voice,
            NON_ADAPTIVE,
            0,
        ),
    );
    add_ok(
        &mut e,
        h,
        &add(
            udp(1, Family::V4, "0.0.0.0:5004"),
            Some("192.0.2.2:6000"),
            TrafficType::Voice,
            NON_ADAPTIVE,
            media,
        ),
    );
    let other = add_ok(
        &mut e,
        h,
        &add(
            udp(2, Family::V4, "10.0.0.1:5006"),
            Some("192.0.2.1:6002"),
            TrafficType::Voice,
            NON_ADAPTIVE,
            0,
        ),
    );
    let sip_a = add_ok(
        &mut e,
        h,
        &add(
            tcp(3, Family::V4, "10.0.0.1:5060", Some("192.0.2.5:40000")),
            None,
            TrafficType::Control,
            0,
            0,
        ),
    );
    let sip_b = add_ok(
        &mut e,
        h,
        &add(
            tcp(4, Family::V4, "10.0.0.1:5060", Some("192.0.2.6:40000")),
            None,
            TrafficType::Control,
            0,
            0,
        ),
    );
    let ids = |e: &Engine| -> Vec<u32> { e.flow_details().unwrap().iter().map(|f| f.id).collect() };
    // Another process's closure, a closure on another port, an unbound report: nothing.
    let before = e.control_snapshot().unwrap();
    assert_eq!(
        e.endpoint_closed(Protocol::Udp, sa("0.0.0.0:5004"), None, USER2.pid),
        0
    );
    assert_eq!(
        e.endpoint_closed(Protocol::Udp, sa("10.0.0.1:5008"), None, USER.pid),
        0
    );
    assert_eq!(
        e.endpoint_closed(Protocol::Tcp, sa("10.0.0.1:5004"), None, USER.pid),
        0,
        "TCP closure for a UDP port"
    );
    assert_eq!(
        e.endpoint_closed(Protocol::Udp, sa("0.0.0.0:0"), None, USER.pid),
        0
    );
    assert_eq!(e.control_snapshot().unwrap(), before);
    // The listener (local port 5060, no remote) closes: the accepted connections stay.
    assert_eq!(
        e.endpoint_closed(Protocol::Tcp, sa("0.0.0.0:5060"), None, USER.pid),
        0
    );
    assert_eq!(e.control_snapshot().unwrap(), before);
    // One accepted TCP connection closes (remote given): only it goes.
    assert_eq!(
        e.endpoint_closed(
            Protocol::Tcp,
            sa("10.0.0.1:5060"),
            Some(sa("192.0.2.5:40000")),
            USER.pid
        ),
        1
    );
    assert_eq!(ids(&e), [media, other, sip_b]);
    assert_eq!(
        hit(
            &e,
            &tuple(Protocol::Tcp, "10.0.0.1:5060", "192.0.2.6:40000")
        ),
        Some(sip_b)
    );
    assert_eq!(
        hit(
            &e,
            &tuple(Protocol::Tcp, "10.0.0.1:5060", "192.0.2.5:40000")
        ),
        None,
        "flow {sip_a} is gone"
    );
    // The media socket closes (reported with its concrete local address, no remote): both
    // destinations go, with their flow; the other UDP socket stays.
    assert_eq!(
        e.endpoint_closed(Protocol::Udp, sa("10.0.0.1:5004"), None, USER.pid),
        2
    );
    assert_eq!(ids(&e), [other, sip_b]);
    assert_eq!(
        hit(&e, &tuple(Protocol::Udp, "10.0.0.1:5004", "192.0.2.2:6000")),
        None
    );
    // Closing again finds nothing.
    assert_eq!(
        e.endpoint_closed(Protocol::Udp, sa("10.0.0.1:5004"), None, USER.pid),
        0
    );
    assert_eq!(e.handle_details().unwrap()[0].sockets, 2);
    e.check_control_invariants().unwrap();
}
