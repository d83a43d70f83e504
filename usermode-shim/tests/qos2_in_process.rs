//! The QOS2 API in Rust ([`QosHandle`]) through the in-process transport, with real sockets
//! bound on `127.0.0.1` / `::1` (no traffic is sent). One test per rule of qos-api.md §5; expected
//! codes are the documented Win32 values, written out as numbers.
#![cfg(unix)]
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    clippy::many_single_char_names,
    reason = "test code: a failure is a test failure; short names for sockets and handles"
)]

use qosmark::client::Client;
use qosmark::qos2::{FlowQuery, QosHandle, QosVersion};
use qosmark::QosError;
use qosmark_abi::{
    Caller, FlowRate, NotifyFlow, PacketPriority, Privilege, QueryFlow, SetFlow, Shaping,
    SocketBinding, TrafficType, QOS_NON_ADAPTIVE_FLOW,
};
use qosmark_engine::{Engine, Limits};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};

const USER: Caller = Caller {
    pid: 1000,
    privilege: Privilege::User,
};
const USER2: Caller = Caller {
    pid: 2000,
    privilege: Privilege::User,
};
const ADMIN: Caller = Caller {
    pid: 3000,
    privilege: Privilege::Admin,
};

fn engine() -> Arc<Mutex<Engine>> {
    Arc::new(Mutex::new(Engine::new(Limits::default())))
}

fn handle(e: &Arc<Mutex<Engine>>, caller: Caller) -> QosHandle {
    QosHandle::with_client(Client::in_process(Arc::clone(e), caller).unwrap())
}

fn code<T: core::fmt::Debug>(r: Result<T, QosError>) -> u32 {
    r.unwrap_err().raw()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn udp4() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

#[test]
fn version_must_be_1_0() {
    for (major, minor) in [(0, 0), (1, 5), (2, 0), (1, 1)] {
        assert_eq!(
            code(QosHandle::create_version(QosVersion { major, minor })),
            87
        );
    }
}

#[test]
fn new_flow_and_existing_flow_id() {
    let e = engine();
    let h = handle(&e, USER);
    let a = udp4();
    let b = udp4();
    // Flow id 0 creates a flow; a non-adaptive flow takes more sockets by id.
    let f = h
        .add_socket_to_flow(
            &a,
            Some(sa("127.0.0.1:5004")),
            TrafficType::Voice,
            QOS_NON_ADAPTIVE_FLOW,
            0,
        )
        .unwrap();
    assert_ne!(f, 0);
    let g = h
        .add_socket_to_flow(&b, Some(sa("127.0.0.1:5006")), TrafficType::Voice, 0, f)
        .unwrap();
    assert_eq!(g, f, "joined the existing flow");
    let flows = h.client().list_flows().unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].sockets_total, 2);
    // The entries carry the sockets' real local addresses.
    let locals: Vec<_> = flows[0].sockets.iter().map(|s| s.binding).collect();
    assert_eq!(
        locals,
        vec![
            SocketBinding::Address(a.local_addr().unwrap()),
            SocketBinding::Address(b.local_addr().unwrap())
        ]
    );
    // An adaptive flow holds one socket: joining it is 87; an unknown id is 87 too.
    let c = udp4();
    let adaptive = h
        .add_socket_to_flow(&c, Some(sa("127.0.0.1:7000")), TrafficType::Voice, 0, 0)
        .unwrap();
    let d = udp4();
    assert_eq!(
        code(h.add_socket_to_flow(
            &d,
            Some(sa("127.0.0.1:7001")),
            TrafficType::Voice,
            0,
            adaptive
        )),
        87
    );
    assert_eq!(
        code(h.add_socket_to_flow(&d, Some(sa("127.0.0.1:7001")), TrafficType::Voice, 0, 9999)),
        87
    );
    // Bad flags and a bad traffic-type-independent flag bit: 87.
    assert_eq!(
        code(h.add_socket_to_flow(&d, Some(sa("127.0.0.1:7001")), TrafficType::Voice, 0x10, 0)),
        87
    );
}

#[test]
fn unconnected_udp_several_destinations_one_flow() {
    let e = engine();
    let h = handle(&e, USER);
    let s = udp4();
    let f = h
        .add_socket_to_flow(
            &s,
            Some(sa("127.0.0.1:6000")),
            TrafficType::AudioVideo,
            QOS_NON_ADAPTIVE_FLOW,
            0,
        )
        .unwrap();
    for port in [6001, 6002] {
        let dest = SocketAddr::new("127.0.0.1".parse().unwrap(), port);
        assert_eq!(
            h.add_socket_to_flow(&s, Some(dest), TrafficType::AudioVideo, 0, f)
                .unwrap(),
            f
        );
    }
    let flows = h.client().list_flows().unwrap();
    let remotes: Vec<u16> = flows[0].sockets.iter().map(|s| s.remote.port()).collect();
    assert_eq!(remotes, vec![6000, 6001, 6002]);
    // Unconnected without DestAddr: 87.
    let t = udp4();
    assert_eq!(
        code(h.add_socket_to_flow(&t, None, TrafficType::AudioVideo, 0, 0)),
        87
    );
}

#[test]
fn dest_addr_must_match_a_connected_peer() {
    let e = engine();
    let h = handle(&e, USER);
    let s = udp4();
    s.connect("127.0.0.1:5555").unwrap();
    assert_eq!(
        code(h.add_socket_to_flow(&s, Some(sa("127.0.0.1:5556")), TrafficType::Voice, 0, 0)),
        87
    );
    // Equal, or omitted: accepted (the same registration twice is a no-op success).
    let f = h
        .add_socket_to_flow(&s, Some(sa("127.0.0.1:5555")), TrafficType::Voice, 0, 0)
        .unwrap();
    // The same 5-tuple (DestAddr omitted this time) into a second, new flow: 183, a packet
    // could not tell the two flows apart.
    assert_eq!(
        code(h.add_socket_to_flow(&s, None, TrafficType::Voice, 0, 0)),
        183
    );
    // TCP: connected stream, DestAddr omitted; and a TCP socket before connect (std cannot
    // make one unconnected and unbound, so a listener's accepted peer stands in for bound).
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let g = h
        .add_socket_to_flow(&c, None, TrafficType::Control, 0, 0)
        .unwrap();
    assert_ne!(g, f);
    assert_eq!(
        code(h.add_socket_to_flow(&c, Some(sa("127.0.0.1:1")), TrafficType::Control, 0, 0)),
        87
    );
}

#[test]
fn dual_stack_and_v4_mapped_destinations() {
    let e = engine();
    let h = handle(&e, USER);
    // An AF_INET6 socket bound to :: (dual stack) with a v4-mapped and a plain IPv4 destination.
    let s = UdpSocket::bind("[::]:0").unwrap();
    let port = s.local_addr().unwrap().port();
    let f = h
        .add_socket_to_flow(
            &s,
            Some(sa("[::ffff:127.0.0.1]:9000")),
            TrafficType::Voice,
            QOS_NON_ADAPTIVE_FLOW,
            0,
        )
        .unwrap();
    h.add_socket_to_flow(&s, Some(sa("127.0.0.2:9000")), TrafficType::Voice, 0, f)
        .unwrap();
    // The same destination written both ways is one registration (no-op), not two.
    h.add_socket_to_flow(&s, Some(sa("127.0.0.1:9000")), TrafficType::Voice, 0, f)
        .unwrap();
    let flows = h.client().list_flows().unwrap();
    assert_eq!(flows[0].sockets_total, 2);
    assert_eq!(flows[0].sockets[0].remote, sa("127.0.0.1:9000"));
    assert_eq!(
        flows[0].sockets[0].binding,
        SocketBinding::AnyAddress { port }
    );
    // An AF_INET socket cannot name an IPv6 destination: 87. An AF_INET6 socket on ::1 with
    // an IPv4 destination: 87 (bound to a concrete address of the other family).
    let v4 = udp4();
    assert_eq!(
        code(h.add_socket_to_flow(&v4, Some(sa("[::1]:9000")), TrafficType::Voice, 0, 0)),
        87
    );
    let v6 = UdpSocket::bind("[::1]:0").unwrap();
    assert_eq!(
        code(h.add_socket_to_flow(&v6, Some(sa("127.0.0.1:9000")), TrafficType::Voice, 0, 0)),
        87
    );
    h.add_socket_to_flow(&v6, Some(sa("[::1]:9000")), TrafficType::Voice, 0, 0)
        .unwrap();
}

#[test]
fn remove_with_and_without_socket() {
    let e = engine();
    let h = handle(&e, USER);
    let a = udp4();
    let b = udp4();
    let f = h
        .add_socket_to_flow(
            &a,
            Some(sa("127.0.0.1:4000")),
            TrafficType::Voice,
            QOS_NON_ADAPTIVE_FLOW,
            0,
        )
        .unwrap();
    h.add_socket_to_flow(&b, Some(sa("127.0.0.1:4000")), TrafficType::Voice, 0, f)
        .unwrap();
    // One socket leaves; the flow stays with the other.
    h.remove_socket_from_flow(Some(&a), f).unwrap();
    assert_eq!(h.enumerate_flows().unwrap(), vec![f]);
    // A socket not in the flow, an unknown id, flow id 0: 1168.
    assert_eq!(code(h.remove_socket_from_flow(Some(&a), f)), 1168);
    assert_eq!(
        code(h.remove_socket_from_flow(None::<&UdpSocket>, 4242)),
        1168
    );
    assert_eq!(code(h.remove_socket_from_flow(None::<&UdpSocket>, 0)), 1168);
    // Without a socket: the whole flow goes.
    h.remove_socket_from_flow(None::<&UdpSocket>, f).unwrap();
    assert!(h.enumerate_flows().unwrap().is_empty());
    // Another handle's flow is unknown to this one.
    let other = handle(&e, USER);
    let g = other
        .add_socket_to_flow(&a, Some(sa("127.0.0.1:4001")), TrafficType::Voice, 0, 0)
        .unwrap();
    assert_eq!(code(h.remove_socket_from_flow(None::<&UdpSocket>, g)), 1168);
}

#[test]
fn set_query_notify_and_unknown_flows() {
    let e = engine();
    let h = handle(&e, USER);
    let s = udp4();
    let f = h
        .add_socket_to_flow(&s, Some(sa("127.0.0.1:4000")), TrafficType::Voice, 0, 0)
        .unwrap();
    // Documented defaults (qos-api.md §3): Voice = DSCP 56 / 802.1p 7 (adaptive flow).
    assert_eq!(
        h.query_flow(f, QueryFlow::PacketPriority).unwrap(),
        FlowQuery::PacketPriority(PacketPriority {
            conformant_dscp: 56,
            non_conformant_dscp: 0,
            conformant_l2: 7,
            non_conformant_l2: 0
        })
    );
    h.set_flow(f, SetFlow::TrafficType(TrafficType::Background))
        .unwrap();
    assert_eq!(
        h.query_flow(f, QueryFlow::PacketPriority).unwrap(),
        FlowQuery::PacketPriority(PacketPriority {
            conformant_dscp: 8,
            non_conformant_dscp: 0,
            conformant_l2: 2,
            non_conformant_l2: 0
        })
    );
    // Rates pass through to the engine: none yet → 232, then the rate set; 0 → 87.
    assert_eq!(code(h.query_flow(f, QueryFlow::OutgoingRate)), 232);
    let rate = |bandwidth, shaping| {
        SetFlow::OutgoingRate(FlowRate {
            bandwidth,
            shaping,
            reason: 0,
        })
    };
    h.set_flow(f, rate(1_000_000, Shaping::UseNonConformantMarkings))
        .unwrap();
    assert_eq!(
        h.query_flow(f, QueryFlow::OutgoingRate).unwrap(),
        FlowQuery::OutgoingRate(1_000_000)
    );
    // Excess marks (table defaults DSCP 0 / 802.1p 1) are reported under
    // QOSUseNonConformantMarkings.
    assert_eq!(
        h.query_flow(f, QueryFlow::PacketPriority).unwrap(),
        FlowQuery::PacketPriority(PacketPriority {
            conformant_dscp: 8,
            non_conformant_dscp: 0,
            conformant_l2: 2,
            non_conformant_l2: 1
        })
    );
    assert_eq!(code(h.set_flow(f, rate(0, Shaping::ShapeOnly))), 87);
    assert_eq!(code(h.set_flow(f, rate(11_999, Shaping::ShapeOnly))), 87);
    assert_eq!(
        h.query_flow(f, QueryFlow::OutgoingRate).unwrap(),
        FlowQuery::OutgoingRate(1_000_000)
    );
    // Unsupported: fundamentals, notifications (50: no path probing).
    assert_eq!(code(h.query_flow(f, QueryFlow::Fundamentals)), 50);
    assert_eq!(code(h.notify_flow(f, NotifyFlow::Congested, None)), 50);
    assert_eq!(code(h.notify_flow(f, NotifyFlow::Available, Some(1))), 50);
    // Wrong buffers for NotifyFlow: 87.
    assert_eq!(code(h.notify_flow(f, NotifyFlow::Available, None)), 87);
    assert_eq!(code(h.notify_flow(f, NotifyFlow::Uncongested, Some(1))), 87);
    // Unknown flow ids: 1168 everywhere.
    for id in [0, f + 100] {
        assert_eq!(code(h.set_flow(id, SetFlow::OutgoingDscp(46))), 1168);
        assert_eq!(code(h.query_flow(id, QueryFlow::PacketPriority)), 1168);
        assert_eq!(code(h.notify_flow(id, NotifyFlow::Congested, None)), 1168);
    }
    // DSCP above 63: 87. Cancel: nothing pending, 1168. Tracking: accepted.
    assert_eq!(code(h.cancel()), 1168);
    h.start_tracking_client(sa("127.0.0.1:4000"), 0).unwrap();
    h.stop_tracking_client(sa("127.0.0.1:4000"), 0).unwrap();
    assert_eq!(code(h.start_tracking_client(sa("127.0.0.1:4000"), 1)), 87);
}

#[test]
fn privilege_failures() {
    let e = engine();
    let user = handle(&e, USER);
    let admin = handle(&e, ADMIN);
    let s = udp4();
    let f = user
        .add_socket_to_flow(&s, Some(sa("127.0.0.1:4000")), TrafficType::Voice, 0, 0)
        .unwrap();
    // A user may not set an arbitrary DSCP (5), nor touch rules or the table.
    assert_eq!(code(user.set_flow(f, SetFlow::OutgoingDscp(46))), 5);
    assert_eq!(code(user.client().rules()), 5);
    assert_eq!(code(user.client().replace_rules(vec![])), 5);
    let mut table = user.client().traffic_table().unwrap();
    assert_eq!(code(user.client().set_traffic_table(table)), 5);
    // Once the administrator allows EF for users, it works; 64 is 87 either way.
    table.user_dscp_allow = 1 << 46;
    admin.client().set_traffic_table(table).unwrap();
    user.set_flow(f, SetFlow::OutgoingDscp(46)).unwrap();
    assert_eq!(
        user.query_flow(f, QueryFlow::PacketPriority).unwrap(),
        FlowQuery::PacketPriority(PacketPriority {
            conformant_dscp: 46,
            non_conformant_dscp: 0,
            conformant_l2: 7,
            non_conformant_l2: 0
        })
    );
    assert_eq!(code(user.set_flow(f, SetFlow::OutgoingDscp(64))), 87);
    // The administrator may not change another handle's flow (1168: not revealed).
    assert_eq!(code(admin.set_flow(f, SetFlow::OutgoingDscp(10))), 1168);
    assert!(admin.client().rules().unwrap().is_empty());
}

#[test]
fn enumerate_admin_and_non_admin() {
    let e = engine();
    let u1 = handle(&e, USER);
    let u2 = handle(&e, USER2);
    let admin = handle(&e, ADMIN);
    let a = udp4();
    let b = udp4();
    let f1 = u1
        .add_socket_to_flow(&a, Some(sa("127.0.0.1:4000")), TrafficType::Voice, 0, 0)
        .unwrap();
    let f2 = u2
        .add_socket_to_flow(&b, Some(sa("127.0.0.1:4000")), TrafficType::Voice, 0, 0)
        .unwrap();
    assert_eq!(u1.enumerate_flows().unwrap(), vec![f1]);
    assert_eq!(u2.enumerate_flows().unwrap(), vec![f2]);
    let mut all = vec![f1, f2];
    all.sort_unstable();
    assert_eq!(admin.enumerate_flows().unwrap(), all);
    let listed: Vec<u32> = admin
        .client()
        .list_flows()
        .unwrap()
        .iter()
        .map(|f| f.id)
        .collect();
    assert_eq!(listed, all);
    assert_eq!(u1.client().list_flows().unwrap().len(), 1);
}

#[test]
fn closing_the_handle_removes_its_flows() {
    let e = engine();
    let admin = handle(&e, ADMIN);
    let s = udp4();
    {
        let h = handle(&e, USER);
        h.add_socket_to_flow(&s, Some(sa("127.0.0.1:4000")), TrafficType::Voice, 0, 0)
            .unwrap();
        assert_eq!(admin.enumerate_flows().unwrap().len(), 1);
    }
    assert!(admin.enumerate_flows().unwrap().is_empty());
    assert_eq!(admin.client().status().unwrap().handles, 1);
}

#[test]
fn not_a_socket_is_87() {
    let e = engine();
    let h = handle(&e, USER);
    let f = std::fs::File::open("/dev/null").unwrap();
    assert_eq!(
        code(h.add_socket_to_flow(&f, Some(sa("127.0.0.1:1")), TrafficType::Voice, 0, 0)),
        87
    );
    let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
    assert_eq!(
        code(h.add_socket_to_flow(&x, Some(sa("127.0.0.1:1")), TrafficType::Voice, 0, 0)),
        87
    );
}
