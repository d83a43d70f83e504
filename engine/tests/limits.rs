//! Limits (issue 9, hardening 3): every configured cap — handles, flows and socket entries
//! globally and per handle, rules (one by one and by `ReplaceRules`), the per-handle request
//! rate — answers its documented error (1450 `ERROR_NO_SYSTEM_RESOURCES`; 6 for a closed
//! handle), changes nothing, and never lets memory grow: thousands of refused requests leave
//! the bytes live (counted by this binary's allocator, per thread) where they were.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "test code: a panic is a failed test"
)]

use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use qosmark_engine::abi::status::Win32Error;
use qosmark_engine::abi::{
    heapless_name::RuleName, Caller, Dscp, Family, Privilege, Protocol, Request, Response,
    RuleAction, RuleProtocol, RuleSpec, SocketInfo, TrafficType, QOS_NON_ADAPTIVE_FLOW,
};
use qosmark_engine::control::RateLimit;
use qosmark_engine::{Engine, EngineError, HandleId, Limits};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

std::thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

struct Counting;

fn note(bytes: i64) {
    let _ = LIVE.try_with(|l| l.set(l.get() + bytes));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// bookkeeping touches only a thread-local `Cell` and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as i64);
        // SAFETY: the caller's `layout` contract is passed through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as i64));
        // SAFETY: `ptr` was allocated by `System` with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as i64 - layout.size() as i64);
        // SAFETY: as in `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> i64 {
    LIVE.with(Cell::get)
}

const MS: u64 = 1_000_000;

fn caller(pid: u32, privilege: Privilege) -> Caller {
    Caller { pid, privilege }
}

/// A new one-socket flow for local port `port` (distinct 5-tuples by port and `host`).
fn add(socket: u64, host: u8, port: u16, flow_id: u32) -> Request {
    Request::AddSocketToFlow {
        socket: SocketInfo {
            socket,
            family: Family::V4,
            protocol: Protocol::Udp,
            local: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, host)), port),
            peer: None,
        },
        dest: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 53)),
        traffic_type: TrafficType::Voice,
        flags: QOS_NON_ADAPTIVE_FLOW,
        flow_id,
    }
}

fn rule(name: &str) -> RuleSpec {
    RuleSpec {
        name: RuleName::try_new(name).unwrap(),
        precedence: 1,
        protocol: RuleProtocol::Any,
        local_prefix: None,
        remote_prefix: None,
        local_ports: None,
        remote_ports: None,
        action: RuleAction::Dscp(Dscp::EF),
        pcp: None,
        throttle_bps: None,
    }
}

fn small() -> Limits {
    Limits {
        max_handles: 3,
        max_flows: 8,
        max_flows_per_handle: 5,
        max_sockets: 12,
        max_sockets_per_handle: 7,
        max_rules: 4,
        fragment_slots: 16,
        ..Limits::default()
    }
}

/// `req` on `h` must fail with `err` (and its Win32 code `code`), change nothing, and — asked
/// `times` times — leave the live bytes where they were.
fn refused_without_growth(
    e: &mut Engine,
    h: HandleId,
    req: &Request,
    err: EngineError,
    code: Win32Error,
    times: usize,
) {
    assert_eq!(err.win32(), code);
    let snapshot = e.control_snapshot().unwrap();
    let rules = rules_view(e);
    // Warm up once (an error path may build a temporary and free it).
    assert_eq!(e.apply(h, req), Err(err), "{req:?}");
    let before = live();
    for _ in 0..times {
        assert_eq!(e.apply(h, req), Err(err), "{req:?}");
    }
    assert_eq!(live(), before, "{req:?}: memory grew while refusing");
    assert_eq!(
        e.control_snapshot().unwrap(),
        snapshot,
        "{req:?} changed the state"
    );
    assert_eq!(rules_view(e), rules);
    e.check_control_invariants().unwrap();
}

/// The rule list, read through a kernel handle opened and closed for the purpose (the status,
/// which counts the rules, stands in when the handle limit is reached).
fn rules_view(e: &mut Engine) -> Response {
    match e.open_handle(caller(0, Privilege::Kernel)) {
        Ok(h) => {
            let r = e.apply(h, &Request::ListRules).unwrap();
            e.close_handle(h).unwrap();
            r
        }
        Err(_) => e.control_snapshot().map(|_| Response::Done).unwrap(),
    }
}

#[test]
fn flow_socket_and_handle_limits_answer_1450_and_never_grow() {
    let mut e = Engine::new(small());
    let a = e.open_handle(caller(10, Privilege::User)).unwrap();
    let b = e.open_handle(caller(20, Privilege::User)).unwrap();
    // Per-handle flow limit: 5 flows on `a`.
    for port in 0..5u16 {
        assert!(matches!(
            e.apply(a, &add(u64::from(port), 1, 1000 + port, 0)),
            Ok(Response::FlowId(_))
        ));
    }
    refused_without_growth(
        &mut e,
        a,
        &add(99, 1, 2000, 0),
        EngineError::LimitReached,
        Win32Error::NO_SYSTEM_RESOURCES,
        2000,
    );
    // `a` may still add sockets to a flow it has (per-handle socket limit 7: two more).
    let flow = match e.apply(a, &Request::EnumerateFlows).unwrap() {
        Response::FlowIds(ids) => ids[0],
        other => panic!("{other:?}"),
    };
    for port in 0..2u16 {
        assert_eq!(
            e.apply(a, &add(50 + u64::from(port), 2, 3000 + port, flow)),
            Ok(Response::FlowId(flow))
        );
    }
    refused_without_growth(
        &mut e,
        a,
        &add(60, 2, 3100, flow),
        EngineError::LimitReached,
        Win32Error::NO_SYSTEM_RESOURCES,
        2000,
    );
    // Global flow limit 8: `b` gets 3, then 1450 although its own limit (5) is not reached.
    for port in 0..3u16 {
        assert!(matches!(
            e.apply(b, &add(u64::from(port), 3, 1000 + port, 0)),
            Ok(Response::FlowId(_))
        ));
    }
    refused_without_growth(
        &mut e,
        b,
        &add(9, 3, 1999, 0),
        EngineError::LimitReached,
        Win32Error::NO_SYSTEM_RESOURCES,
        2000,
    );
    // Global socket limit 12 (a: 7, b: 3): b's flows take 2 more, then 1450.
    let b_flow = match e.apply(b, &Request::EnumerateFlows).unwrap() {
        Response::FlowIds(ids) => ids[0],
        other => panic!("{other:?}"),
    };
    for port in 0..2u16 {
        assert_eq!(
            e.apply(b, &add(70 + u64::from(port), 4, 4000 + port, b_flow)),
            Ok(Response::FlowId(b_flow))
        );
    }
    refused_without_growth(
        &mut e,
        b,
        &add(80, 4, 4100, b_flow),
        EngineError::LimitReached,
        Win32Error::NO_SYSTEM_RESOURCES,
        2000,
    );
    // Handle limit 3.
    let c = e.open_handle(caller(30, Privilege::Admin)).unwrap();
    let before = live();
    for _ in 0..2000 {
        assert_eq!(
            e.open_handle(caller(40, Privilege::User)),
            Err(EngineError::LimitReached)
        );
    }
    assert_eq!(live(), before);
    // Closing frees capacity: `a` goes, `b` can create flows again, and a handle opens.
    e.close_handle(a).unwrap();
    assert!(matches!(
        e.apply(b, &add(90, 5, 5000, 0)),
        Ok(Response::FlowId(_))
    ));
    assert!(e.open_handle(caller(40, Privilege::User)).is_ok());
    e.close_handle(c).unwrap();
    e.check_control_invariants().unwrap();
}

#[test]
fn rule_limit_answers_1450_one_by_one_and_replaced() {
    let mut e = Engine::new(small());
    let admin = e.open_handle(caller(1, Privilege::Admin)).unwrap();
    for i in 0..4 {
        assert_eq!(
            e.apply(admin, &Request::AddRule(rule(&format!("r{i}")))),
            Ok(Response::Done)
        );
    }
    refused_without_growth(
        &mut e,
        admin,
        &Request::AddRule(rule("one-too-many")),
        EngineError::LimitReached,
        Win32Error::NO_SYSTEM_RESOURCES,
        1000,
    );
    let five = Request::ReplaceRules((0..5).map(|i| rule(&format!("n{i}"))).collect());
    refused_without_growth(
        &mut e,
        admin,
        &five,
        EngineError::LimitReached,
        Win32Error::NO_SYSTEM_RESOURCES,
        200,
    );
    let four = Request::ReplaceRules((0..4).map(|i| rule(&format!("n{i}"))).collect());
    assert_eq!(e.apply(admin, &four), Ok(Response::Done));
}

#[test]
fn request_rate_per_handle() {
    let mut e = Engine::new(Limits::default());
    assert_eq!(
        e.rate_limit(),
        RateLimit {
            burst: 4096,
            per_second: 2000
        }
    );
    e.set_rate_limit(RateLimit {
        burst: 10,
        per_second: 100,
    });
    let busy = e.open_handle(caller(10, Privilege::User)).unwrap();
    let calm = e.open_handle(caller(20, Privilege::User)).unwrap();
    let t0 = 5_000 * MS;
    // The burst: ten requests of any kind, answered or refused.
    assert!(matches!(
        e.apply_at(busy, &add(1, 1, 1000, 0), t0),
        Ok(Response::FlowId(_))
    ));
    for _ in 0..8 {
        assert!(e.apply_at(busy, &Request::QueryStatus, t0).is_ok());
    }
    assert_eq!(
        e.apply_at(
            busy,
            &Request::RemoveSocketFromFlow {
                socket: None,
                flow_id: 999
            },
            t0
        ),
        Err(EngineError::NotFound)
    );
    // Eleventh: 1450, and nothing happens (a refused add creates nothing).
    let snapshot = e.control_snapshot().unwrap();
    let refused = e.apply_at(busy, &add(2, 1, 1001, 0), t0);
    assert_eq!(refused, Err(EngineError::LimitReached));
    assert_eq!(
        refused.unwrap_err().win32(),
        Win32Error::NO_SYSTEM_RESOURCES
    );
    assert_eq!(e.control_snapshot().unwrap(), snapshot);
    // Another handle has its own bucket; a closed handle is still 6, not 1450.
    assert_eq!(
        e.apply_at(calm, &Request::QueryStatus, t0).map(|_| ()),
        Ok(())
    );
    assert_eq!(
        e.apply_at(HandleId(999), &Request::QueryStatus, t0),
        Err(EngineError::InvalidHandle)
    );
    // 100 per second: one request per 10 ms.
    assert_eq!(
        e.apply_at(busy, &Request::QueryStatus, t0 + 9 * MS)
            .map(|_| ()),
        Err(EngineError::LimitReached)
    );
    assert_eq!(
        e.apply_at(busy, &Request::QueryStatus, t0 + 10 * MS)
            .map(|_| ()),
        Ok(())
    );
    assert_eq!(
        e.apply_at(busy, &Request::QueryStatus, t0 + 10 * MS)
            .map(|_| ()),
        Err(EngineError::LimitReached)
    );
    // A sustained flood over one simulated second admits at most burst + rate.
    let start = t0 + 1_000 * MS;
    let admitted = (0..10_000u64)
        .filter(|i| {
            e.apply_at(busy, &Request::QueryStatus, start + i * (MS / 10))
                .is_ok()
        })
        .count();
    assert!((100..=111).contains(&admitted), "{admitted}");
    // `apply` (trusted callers) is not charged; UNLIMITED switches the limit off.
    assert!(e.apply(busy, &Request::QueryStatus).is_ok());
    e.set_rate_limit(RateLimit::UNLIMITED);
    for _ in 0..1000 {
        assert!(e.apply_at(busy, &Request::QueryStatus, start).is_ok());
    }
    e.check_control_invariants().unwrap();
}
