//! `ListFlows` (paged flow details for `qosmarkctl flows`) and `ReplaceRules` (atomic rule-set
//! swap for `qosmarkctl rules load`), through `Engine::apply`.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    clippy::many_single_char_names,
    reason = "test code: a failure is a test failure; short names as in the other control tests"
)]

mod control_common;

use control_common::{add, add_ok, sa, tcp, udp, ADMIN, NON_ADAPTIVE, USER, USER2};
use qosmark_engine::abi::codec::{MAX_FLOWS_PER_PAGE, MAX_LISTED_SOCKETS};
use qosmark_engine::abi::heapless_name::RuleName;
use qosmark_engine::abi::{
    CounterSnapshot, Dscp, Family, FlowPage, FlowRecord, FlowSocket, Mark, Pcp, PortRange,
    Protocol, Request, Response, RuleAction, RuleProtocol, RuleSpec, SetFlow, SocketBinding,
    TrafficType,
};
use qosmark_engine::{Engine, EngineError, HandleId, Limits};

fn engine() -> Engine {
    Engine::new(Limits::default())
}

fn page(e: &mut Engine, h: HandleId, after: u32) -> FlowPage {
    match e.apply(h, &Request::ListFlows { after }) {
        Ok(Response::Flows(p)) => p,
        other => panic!("expected a Flows page, got {other:?}"),
    }
}

/// Every page from the start, concatenated; checks the paging contract on the way.
fn all_pages(e: &mut Engine, h: HandleId) -> Vec<FlowRecord> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let p = page(e, h, after);
        assert!(p.flows.len() <= MAX_FLOWS_PER_PAGE as usize);
        assert!(p.flows.iter().all(|f| f.id > after));
        out.extend(p.flows.iter().cloned());
        if p.next_after == 0 {
            return out;
        }
        assert_eq!(p.next_after, p.flows.last().unwrap().id);
        after = p.next_after;
    }
}

#[test]
fn list_flows_reports_every_field() {
    let mut e = engine();
    let u = e.open_handle(USER).unwrap();
    // Flow A: non-adaptive Voice, one UDP socket bound to the any address, two destinations,
    // plus a TCP socket registered before connect.
    let s1 = udp(11, Family::V6, "[::]:50000");
    let a = add_ok(
        &mut e,
        u,
        &add(
            s1,
            Some("192.0.2.7:5004"),
            TrafficType::Voice,
            NON_ADAPTIVE,
            0,
        ),
    );
    add_ok(
        &mut e,
        u,
        &add(
            s1,
            Some("[::ffff:192.0.2.8]:5004"),
            TrafficType::Voice,
            0,
            a,
        ),
    );
    let t = tcp(12, Family::V6, "[::]:0", None);
    add_ok(
        &mut e,
        u,
        &add(t, Some("[2001:db8::1]:443"), TrafficType::Voice, 0, a),
    );
    // Flow B: adaptive AudioVideo, connected TCP, custom DSCP 46 (EF allowed for users).
    let Ok(Response::TrafficTable(mut table)) = e.apply(u, &Request::GetTrafficTable) else {
        panic!("table");
    };
    table.user_dscp_allow = 1 << 46;
    let admin = e.open_handle(ADMIN).unwrap();
    e.apply(admin, &Request::SetTrafficTable(table)).unwrap();
    let c = tcp(13, Family::V4, "10.1.2.3:49152", Some("192.0.2.80:443"));
    let b = add_ok(&mut e, u, &add(c, None, TrafficType::AudioVideo, 0, 0));
    e.apply(
        u,
        &Request::SetFlow {
            flow_id: b,
            op: SetFlow::OutgoingDscp(46),
        },
    )
    .unwrap();

    let p = page(&mut e, u, 0);
    assert_eq!(p.next_after, 0);
    let dscp = |v| Some(Dscp::try_new(v).unwrap());
    let pcp = |v| Some(Pcp::try_new(v).unwrap());
    // Expected values written out from the documented defaults (qos-api.md §3): Voice = DSCP
    // 56, 802.1p only for adaptive flows (7 for Voice), AudioVideo = 5.
    let expected = vec![
        FlowRecord {
            id: a,
            pid: USER.pid,
            traffic_type: TrafficType::Voice,
            adaptive: false,
            custom_dscp: None,
            mark: Mark {
                dscp: dscp(56),
                pcp: None,
            },
            counters: CounterSnapshot::default(),
            sockets_total: 3,
            sockets: vec![
                FlowSocket {
                    socket: 11,
                    protocol: Protocol::Udp,
                    binding: SocketBinding::AnyAddress { port: 50000 },
                    remote: sa("192.0.2.7:5004"),
                },
                FlowSocket {
                    socket: 11,
                    protocol: Protocol::Udp,
                    binding: SocketBinding::AnyAddress { port: 50000 },
                    remote: sa("192.0.2.8:5004"),
                },
                FlowSocket {
                    socket: 12,
                    protocol: Protocol::Tcp,
                    binding: SocketBinding::NotBound,
                    remote: sa("[2001:db8::1]:443"),
                },
            ],
        },
        FlowRecord {
            id: b,
            pid: USER.pid,
            traffic_type: TrafficType::AudioVideo,
            adaptive: true,
            custom_dscp: dscp(46),
            mark: Mark {
                dscp: dscp(46),
                pcp: pcp(5),
            },
            counters: CounterSnapshot::default(),
            sockets_total: 1,
            sockets: vec![FlowSocket {
                socket: 13,
                protocol: Protocol::Tcp,
                binding: SocketBinding::Address(sa("10.1.2.3:49152")),
                remote: sa("192.0.2.80:443"),
            }],
        },
    ];
    assert_eq!(p.flows, expected);
    // Every page answer encodes (fits a record).
    let mut out = Vec::new();
    qosmark_engine::abi::codec::encode_response(&Response::Flows(p), &mut out).unwrap();
}

#[test]
fn list_flows_visibility_follows_enumerate() {
    let mut e = engine();
    let u1 = e.open_handle(USER).unwrap();
    let u1b = e.open_handle(USER).unwrap();
    let u2 = e.open_handle(USER2).unwrap();
    let admin = e.open_handle(ADMIN).unwrap();
    let f1 = add_ok(
        &mut e,
        u1,
        &add(
            udp(1, Family::V4, "10.0.0.1:1000"),
            Some("192.0.2.1:9"),
            TrafficType::Control,
            0,
            0,
        ),
    );
    let f2 = add_ok(
        &mut e,
        u2,
        &add(
            udp(1, Family::V4, "10.0.0.2:1000"),
            Some("192.0.2.1:9"),
            TrafficType::Control,
            0,
            0,
        ),
    );
    let ids = |e: &mut Engine, h| {
        all_pages(e, h)
            .into_iter()
            .map(|f| f.id)
            .collect::<Vec<_>>()
    };
    // Same process on another handle sees its flow; the other user does not.
    assert_eq!(ids(&mut e, u1b), vec![f1]);
    assert_eq!(ids(&mut e, u2), vec![f2]);
    assert_eq!(ids(&mut e, admin), vec![f1, f2]);
    for h in [u1, u2, admin] {
        let Ok(Response::FlowIds(enumerated)) = e.apply(h, &Request::EnumerateFlows) else {
            panic!("enumerate");
        };
        assert_eq!(ids(&mut e, h), enumerated);
    }
    // A closed handle gets 6.
    e.close_handle(u1b).unwrap();
    assert_eq!(
        e.apply(u1b, &Request::ListFlows { after: 0 }),
        Err(EngineError::InvalidHandle)
    );
}

#[test]
fn list_flows_pages_and_caps_entries() {
    let mut e = engine();
    let u = e.open_handle(USER).unwrap();
    // 20 destinations on one non-adaptive flow: 16 listed, total 20.
    let s = udp(1, Family::V4, "10.0.0.1:4000");
    let big = add_ok(
        &mut e,
        u,
        &add(s, Some("192.0.2.1:1"), TrafficType::Voice, NON_ADAPTIVE, 0),
    );
    for port in 2..=20u16 {
        let dest = format!("192.0.2.1:{port}");
        add_ok(
            &mut e,
            u,
            &add(s, Some(&dest), TrafficType::Voice, NON_ADAPTIVE, big),
        );
    }
    // Enough further flows for three pages.
    let n = MAX_FLOWS_PER_PAGE as usize * 2 + 10;
    for i in 0..n {
        let port = 10_000 + u16::try_from(i).unwrap();
        let sock = udp(100 + i as u64, Family::V4, &format!("10.0.0.2:{port}"));
        add_ok(
            &mut e,
            u,
            &add(sock, Some("192.0.2.9:9"), TrafficType::Background, 0, 0),
        );
    }
    let first = page(&mut e, u, 0);
    assert_eq!(first.flows.len(), MAX_FLOWS_PER_PAGE as usize);
    assert_ne!(first.next_after, 0);
    let flows = all_pages(&mut e, u);
    assert_eq!(flows.len(), n + 1);
    let mut ids: Vec<_> = flows.iter().map(|f| f.id).collect();
    let sorted = {
        let mut s = ids.clone();
        s.sort_unstable();
        s.dedup();
        s
    };
    assert_eq!(ids, sorted, "pages are ascending and disjoint");
    let Ok(Response::FlowIds(enumerated)) = e.apply(u, &Request::EnumerateFlows) else {
        panic!("enumerate");
    };
    assert_eq!(ids, enumerated);
    let b = flows.iter().find(|f| f.id == big).unwrap();
    assert_eq!(b.sockets_total, 20);
    assert_eq!(b.sockets.len(), MAX_LISTED_SOCKETS as usize);
    let ports: Vec<u16> = b.sockets.iter().map(|s| s.remote.port()).collect();
    assert_eq!(ports, (1..=16).collect::<Vec<u16>>(), "registration order");
    // A page after the last id is empty and final.
    ids.sort_unstable();
    let last = *ids.last().unwrap();
    assert_eq!(page(&mut e, u, last), FlowPage::default());
    assert_eq!(page(&mut e, u, u32::MAX), FlowPage::default());
}

fn rule(name: &str, port: u16) -> RuleSpec {
    RuleSpec {
        name: RuleName::try_new(name).unwrap(),
        precedence: 100,
        protocol: RuleProtocol::Udp,
        local_prefix: None,
        remote_prefix: None,
        local_ports: None,
        remote_ports: Some(PortRange {
            first: port,
            last: port,
        }),
        action: RuleAction::Dscp(Dscp::EF),
        pcp: None,
        throttle_bps: None,
    }
}

fn rule_names(e: &mut Engine, h: HandleId) -> Vec<String> {
    match e.apply(h, &Request::ListRules) {
        Ok(Response::Rules(r)) => r.iter().map(|r| r.spec.name.to_string()).collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn replace_rules_is_atomic() {
    let mut e = Engine::new(Limits {
        max_rules: 3,
        ..Limits::default()
    });
    let admin = e.open_handle(ADMIN).unwrap();
    let user = e.open_handle(USER).unwrap();
    e.apply(admin, &Request::AddRule(rule("old", 1))).unwrap();
    let before = rule_names(&mut e, admin);
    let refused = |e: &mut Engine, h, specs: Vec<RuleSpec>, err| {
        assert_eq!(e.apply(h, &Request::ReplaceRules(specs)), Err(err));
        assert_eq!(rule_names(e, admin), before);
    };
    // Users may not.
    refused(&mut e, user, vec![rule("a", 1)], EngineError::AccessDenied);
    // An invalid rule anywhere in the list (port range first > last).
    let mut bad = rule("b", 2);
    bad.remote_ports = Some(PortRange { first: 9, last: 1 });
    refused(
        &mut e,
        admin,
        vec![rule("a", 1), bad],
        EngineError::InvalidParameter,
    );
    // Duplicate names.
    refused(
        &mut e,
        admin,
        vec![rule("a", 1), rule("z", 3), rule("a", 2)],
        EngineError::AlreadyExists,
    );
    // More than the limit.
    refused(
        &mut e,
        admin,
        vec![rule("a", 1), rule("b", 2), rule("c", 3), rule("d", 4)],
        EngineError::LimitReached,
    );
    // Success: the whole set is replaced, in the given order; the old name may come back.
    e.apply(
        admin,
        &Request::ReplaceRules(vec![rule("x", 5), rule("old", 6)]),
    )
    .unwrap();
    assert_eq!(rule_names(&mut e, admin), vec!["x", "old"]);
    let Ok(Response::Rules(listed)) = e.apply(admin, &Request::ListRules) else {
        panic!("list");
    };
    assert_eq!(
        listed[1].spec,
        rule("old", 6),
        "the new spec, not the old one"
    );
    assert!(listed
        .iter()
        .all(|r| r.counters == CounterSnapshot::default()));
    // Empty list clears the set.
    e.apply(admin, &Request::ReplaceRules(vec![])).unwrap();
    assert!(rule_names(&mut e, admin).is_empty());
}
