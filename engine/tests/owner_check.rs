//! The flow-ownership check (`Limits::check_owner`) through the public API, as the Windows
//! driver drives it: ALE callouts report (5-tuple, pid) with `report_flow`, flow deletion
//! calls `retire_flow`, and `classify` marks a user's socket flow only for packets of its own
//! process. Packets come from etherparse's builder (an independent encoder).
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests: a panic is a failed test"
)]

use core::net::SocketAddr;
use etherparse::PacketBuilder;
use qosmark_engine::abi::heapless_name::RuleName;
use qosmark_engine::abi::{
    Caller, Dscp, Family, Mark, Privilege, Protocol, Request, Response, RuleAction, RuleProtocol,
    RuleSpec, SkipReason, SocketInfo, StatusInfo, TrafficType, QOS_NON_ADAPTIVE_FLOW,
};
use qosmark_engine::{Engine, FiveTuple, Limits, PacketMeta, Verdict};

const USER_PID: u32 = 4242;
const OTHER_PID: u32 = 5151;
const SEC: u64 = 1_000_000_000;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn udp_packet(local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
    let payload = [0x5au8; 16];
    let builder = match (local, remote) {
        (SocketAddr::V4(l), SocketAddr::V4(r)) => {
            PacketBuilder::ipv4(l.ip().octets(), r.ip().octets(), 64)
        }
        (SocketAddr::V6(l), SocketAddr::V6(r)) => {
            PacketBuilder::ipv6(l.ip().octets(), r.ip().octets(), 64)
        }
        _ => panic!("mixed families"),
    }
    .udp(local.port(), remote.port());
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, &payload).unwrap();
    out
}

fn engine(check_owner: bool) -> Engine {
    Engine::new(Limits {
        check_owner,
        ..Limits::default()
    })
}

/// Registers a connected UDP socket `local` → `remote` for `caller` (voice: CS7, no 802.1p).
fn register(e: &mut Engine, caller: Caller, local: &str, remote: &str) {
    let h = e.open_handle(caller).unwrap();
    let req = Request::AddSocketToFlow {
        socket: SocketInfo {
            socket: 7,
            family: if sa(local).is_ipv4() {
                Family::V4
            } else {
                Family::V6
            },
            protocol: Protocol::Udp,
            local: sa(local),
            peer: Some(sa(remote)),
        },
        dest: None,
        traffic_type: TrafficType::Voice,
        flags: QOS_NON_ADAPTIVE_FLOW,
        flow_id: 0,
    };
    assert!(matches!(e.apply(h, &req), Ok(Response::FlowId(_))));
}

fn user() -> Caller {
    Caller {
        pid: USER_PID,
        privilege: Privilege::User,
    }
}

fn cs7() -> Verdict {
    Verdict::Mark(Mark {
        dscp: Some(Dscp::try_new(56).unwrap()),
        pcp: None,
    })
}

fn tuple(local: &str, remote: &str) -> FiveTuple {
    FiveTuple::new(Protocol::Udp, sa(local), sa(remote))
}

fn status(e: &mut Engine) -> StatusInfo {
    let h = e
        .open_handle(Caller {
            pid: 1,
            privilege: Privilege::Admin,
        })
        .unwrap();
    let Ok(Response::Status(s)) = e.apply(h, &Request::QueryStatus) else {
        panic!("no status")
    };
    e.close_handle(h).unwrap();
    s
}

const LOCAL: &str = "10.0.0.1:5000";
const REMOTE: &str = "192.0.2.9:53";

#[test]
fn check_off_marks_as_before() {
    let mut e = engine(false);
    register(&mut e, user(), LOCAL, REMOTE);
    let p = udp_packet(sa(LOCAL), sa(REMOTE));
    assert_eq!(e.classify(&p, &PacketMeta::default(), 0), cs7());
    // With the check off the table is not even allocated: reports are ignored.
    e.report_flow(&tuple(LOCAL, REMOTE), OTHER_PID, 0);
    assert_eq!(e.flow_owner(&tuple(LOCAL, REMOTE), 0), None);
    assert_eq!(e.classify(&p, &PacketMeta::default(), 0), cs7());
}

#[test]
fn check_on_marks_only_the_owners_packets() {
    let mut e = engine(true);
    register(&mut e, user(), LOCAL, REMOTE);
    let p = udp_packet(sa(LOCAL), sa(REMOTE));
    let meta = PacketMeta::default();
    // Unknown flow (never reported): not marked.
    assert_eq!(
        e.classify(&p, &meta, 0),
        Verdict::Skip(SkipReason::NotOwner)
    );
    // Another process owns the tuple: not marked.
    e.report_flow(&tuple(LOCAL, REMOTE), OTHER_PID, 0);
    assert_eq!(
        e.classify(&p, &meta, 0),
        Verdict::Skip(SkipReason::NotOwner)
    );
    // The registering process owns it: marked.
    e.report_flow(&tuple(LOCAL, REMOTE), USER_PID, SEC);
    assert_eq!(e.classify(&p, &meta, SEC), cs7());
    // The flow ends: not marked any more.
    assert!(e.retire_flow(&tuple(LOCAL, REMOTE), USER_PID));
    assert_eq!(
        e.classify(&p, &meta, 2 * SEC),
        Verdict::Skip(SkipReason::NotOwner)
    );
    let s = status(&mut e);
    assert_eq!(s.skipped[SkipReason::NotOwner as usize], 3);
    assert_eq!((s.packets, s.marked), (4, 1));
    // The flow's counters saw only its own packet.
    let flows = e.flow_details().unwrap();
    assert_eq!(flows[0].counters.packets, 1);
    assert_eq!(e.owner_stats().retired, 1);
}

#[test]
fn connected_before_registration_is_known() {
    // The flow was reported (connect) long before the socket was registered.
    let mut e = engine(true);
    e.report_flow(&tuple(LOCAL, REMOTE), USER_PID, 0);
    register(&mut e, user(), LOCAL, REMOTE);
    let p = udp_packet(sa(LOCAL), sa(REMOTE));
    assert_eq!(e.classify(&p, &PacketMeta::default(), 3600 * SEC), cs7());
}

#[test]
fn unconnected_udp_needs_one_flow_per_destination() {
    // A socket bound to any address, registered with two destinations: each destination is
    // its own ALE flow and must be reported on its own.
    let mut e = engine(true);
    let h = e.open_handle(user()).unwrap();
    let mut flow_id = 0;
    for dest in ["192.0.2.9:53", "198.51.100.7:53"] {
        let req = Request::AddSocketToFlow {
            socket: SocketInfo {
                socket: 3,
                family: Family::V4,
                protocol: Protocol::Udp,
                local: sa("0.0.0.0:6000"),
                peer: None,
            },
            dest: Some(sa(dest)),
            traffic_type: TrafficType::Voice,
            flags: QOS_NON_ADAPTIVE_FLOW,
            flow_id,
        };
        let Ok(Response::FlowId(id)) = e.apply(h, &req) else {
            panic!("not added")
        };
        flow_id = id;
    }
    e.report_flow(&tuple("10.0.0.1:6000", "192.0.2.9:53"), USER_PID, 0);
    let first = udp_packet(sa("10.0.0.1:6000"), sa("192.0.2.9:53"));
    let second = udp_packet(sa("10.0.0.1:6000"), sa("198.51.100.7:53"));
    let meta = PacketMeta::default();
    assert_eq!(e.classify(&first, &meta, 0), cs7());
    assert_eq!(
        e.classify(&second, &meta, 0),
        Verdict::Skip(SkipReason::NotOwner)
    );
    e.report_flow(&tuple("10.0.0.1:6000", "198.51.100.7:53"), USER_PID, 0);
    assert_eq!(e.classify(&second, &meta, 0), cs7());
}

#[test]
fn v4_mapped_reports_match_v4_packets() {
    // A dual-stack socket: the driver sees v4-mapped addresses at the ALE layer of an IPv6
    // socket talking to an IPv4 peer; the packet is IPv4.
    let mut e = engine(true);
    register(&mut e, user(), LOCAL, REMOTE);
    e.report_flow(
        &tuple("[::ffff:10.0.0.1]:5000", "[::ffff:192.0.2.9]:53"),
        USER_PID,
        0,
    );
    let p = udp_packet(sa(LOCAL), sa(REMOTE));
    assert_eq!(e.classify(&p, &PacketMeta::default(), 0), cs7());
}

#[test]
fn ipv6_flows() {
    let mut e = engine(true);
    let (l, r) = ("[2001:db8::1]:5000", "[2001:db8::2]:53");
    register(&mut e, user(), l, r);
    let p = udp_packet(sa(l), sa(r));
    assert_eq!(
        e.classify(&p, &PacketMeta::default(), 0),
        Verdict::Skip(SkipReason::NotOwner)
    );
    e.report_flow(&tuple(l, r), USER_PID, 0);
    assert_eq!(e.classify(&p, &PacketMeta::default(), 0), cs7());
}

#[test]
fn admin_and_kernel_flows_are_not_checked() {
    for privilege in [Privilege::Admin, Privilege::Kernel] {
        let mut e = engine(true);
        register(&mut e, Caller { pid: 99, privilege }, LOCAL, REMOTE);
        let p = udp_packet(sa(LOCAL), sa(REMOTE));
        // Nothing reported, or another process reported: still marked.
        assert_eq!(e.classify(&p, &PacketMeta::default(), 0), cs7());
        e.report_flow(&tuple(LOCAL, REMOTE), OTHER_PID, 0);
        assert_eq!(e.classify(&p, &PacketMeta::default(), 0), cs7());
    }
}

#[test]
fn unowned_user_flow_does_not_hide_admin_rules() {
    // A user registering another process's tuple must not take it away from the admin rules.
    let mut e = engine(true);
    let admin = e
        .open_handle(Caller {
            pid: 1,
            privilege: Privilege::Admin,
        })
        .unwrap();
    let rule = RuleSpec {
        name: RuleName::try_new("dns-af41").unwrap(),
        precedence: 127,
        protocol: RuleProtocol::Udp,
        local_prefix: None,
        remote_prefix: None,
        local_ports: None,
        remote_ports: None,
        action: RuleAction::Dscp(Dscp::try_new(34).unwrap()),
        pcp: None,
        throttle_bps: None,
    };
    e.apply(admin, &Request::AddRule(rule)).unwrap();
    register(&mut e, user(), LOCAL, REMOTE);
    e.report_flow(&tuple(LOCAL, REMOTE), OTHER_PID, 0);
    let p = udp_packet(sa(LOCAL), sa(REMOTE));
    let af41 = Verdict::Mark(Mark {
        dscp: Some(Dscp::try_new(34).unwrap()),
        pcp: None,
    });
    assert_eq!(e.classify(&p, &PacketMeta::default(), 0), af41);
    // Once the user's process owns it, the socket flow wins again.
    e.report_flow(&tuple(LOCAL, REMOTE), USER_PID, 0);
    assert_eq!(e.classify(&p, &PacketMeta::default(), 0), cs7());
}

#[test]
fn bounded_table_evicts_old_flows() {
    let mut e = Engine::new(Limits {
        check_owner: true,
        owner_slots: 64,
        ..Limits::default()
    });
    register(&mut e, user(), LOCAL, REMOTE);
    e.report_flow(&tuple(LOCAL, REMOTE), USER_PID, 0);
    // Many newer flows of other processes push it out of its set.
    for port in 1..=2000u16 {
        let t = FiveTuple::new(
            Protocol::Tcp,
            sa("10.0.0.2:1"),
            SocketAddr::new(sa(REMOTE).ip(), port),
        );
        e.report_flow(&t, OTHER_PID, 10 * SEC);
    }
    let p = udp_packet(sa(LOCAL), sa(REMOTE));
    assert_eq!(
        e.classify(&p, &PacketMeta::default(), 10 * SEC),
        Verdict::Skip(SkipReason::NotOwner)
    );
    assert!(e.owner_stats().evictions >= 2000 - 64);
}
