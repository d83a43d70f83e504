//! Allocation failure: with every allocation of the current thread refused, requests that need
//! memory answer 8 (`NoMemory`) and change nothing; nothing aborts.
//!
//! This test binary installs a global allocator that forwards to the system allocator unless
//! the calling thread has switched refusal on.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]
#![allow(
    clippy::many_single_char_names,
    reason = "one straight script with short names"
)]

mod control_common;

use control_common::{add, sa, udp, ADMIN, NON_ADAPTIVE, USER};
use qosmark_engine::abi::{Family, Request, TrafficType};
use qosmark_engine::{Engine, EngineError, HandleId, Limits};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

std::thread_local! {
    static REFUSE: Cell<bool> = const { Cell::new(false) };
}

struct Refusing;

// SAFETY: every method forwards to `System`, which upholds the `GlobalAlloc` contract, or
// returns null, which `alloc`/`realloc` may always do to report failure.
unsafe impl GlobalAlloc for Refusing {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if REFUSE.with(Cell::get) {
            return core::ptr::null_mut();
        }
        // SAFETY: the caller's `layout` contract is passed through unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc`/`realloc` with this layout (we never hand out
        // anything else), as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if REFUSE.with(Cell::get) {
            return core::ptr::null_mut();
        }
        // SAFETY: as in `dealloc`; `new_size` is the caller's, passed through.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Refusing = Refusing;

/// Runs `f` with allocation refused on this thread.
fn refused<T>(f: impl FnOnce() -> T) -> T {
    REFUSE.with(|r| r.set(true));
    let out = f();
    REFUSE.with(|r| r.set(false));
    out
}

fn expect_nomem(e: &mut Engine, h: HandleId, req: &Request) {
    let before = e.control_snapshot().unwrap();
    let got = refused(|| e.apply(h, req).map(|_| ()));
    assert_eq!(got, Err(EngineError::NoMemory), "{req:?}");
    assert_eq!(
        e.control_snapshot().unwrap(),
        before,
        "{req:?} changed the state"
    );
    e.check_control_invariants().unwrap();
}

#[test]
fn requests_needing_memory_answer_8_and_change_nothing() {
    let mut e = Engine::new(Limits::default());
    // Opening the first handle must grow the (empty) handle map.
    assert_eq!(refused(|| e.open_handle(USER)), Err(EngineError::NoMemory));
    assert!(e.handle_details().unwrap().is_empty());
    let h = e.open_handle(USER).unwrap();
    let s = udp(1, Family::V4, "10.0.0.1:5000");
    // New flow: the flow map, the entry vector and the tier map are all empty.
    expect_nomem(
        &mut e,
        h,
        &add(s, Some("192.0.2.1:9"), TrafficType::Voice, NON_ADAPTIVE, 0),
    );
    let Ok(qosmark_engine::abi::Response::FlowId(id)) = e.apply(
        h,
        &add(s, Some("192.0.2.1:9"), TrafficType::Voice, NON_ADAPTIVE, 0),
    ) else {
        panic!("add failed with memory available");
    };
    // Joining: the flow's entry vector holds exactly one entry, so a second needs memory.
    expect_nomem(
        &mut e,
        h,
        &add(s, Some("192.0.2.2:9"), TrafficType::Voice, NON_ADAPTIVE, id),
    );
    // Listing allocates its answer.
    expect_nomem(&mut e, h, &Request::EnumerateFlows);
    // Pinning an unbound entry into the (still empty) any-address tier needs memory too.
    let t = qosmark_engine::abi::SocketInfo {
        protocol: qosmark_engine::abi::Protocol::Tcp,
        ..udp(2, Family::V4, "0.0.0.0:0")
    };
    e.apply(h, &add(t, Some("192.0.2.3:443"), TrafficType::Voice, 0, 0))
        .unwrap();
    let before = e.control_snapshot().unwrap();
    assert_eq!(
        refused(|| e.socket_bound(h, 2, sa("0.0.0.0:40000"))),
        Err(EngineError::NoMemory)
    );
    assert_eq!(e.control_snapshot().unwrap(), before);
    // Requests that need no memory still work without it, and closing never needs any.
    let a = e.open_handle(ADMIN).unwrap();
    assert!(refused(|| e.apply(
        h,
        &Request::RemoveSocketFromFlow {
            socket: None,
            flow_id: id
        }
    ))
    .is_ok());
    assert!(refused(|| e.apply(
        a,
        &Request::SetTrafficTable(qosmark_engine::traffic::default_table())
    ))
    .is_ok());
    let report = refused(|| e.close_handle(h)).unwrap();
    assert_eq!((report.flows_removed, report.sockets_removed), (1, 1));
    e.check_control_invariants().unwrap();
}

/// The packet-path lookup allocates nothing: with allocation refused it still answers for
/// both tiers, and misses (an unbound TCP entry matches nothing) cost nothing either (an
/// allocation would abort the test binary).
#[test]
fn lookup_allocates_nothing() {
    use control_common::{tcp, tuple};
    use qosmark_engine::abi::Protocol;
    let mut e = Engine::new(Limits::default());
    let h = e.open_handle(USER).unwrap();
    let exact = udp(1, Family::V4, "10.0.0.1:5000");
    let any = udp(2, Family::V6, "[::]:5001");
    let unbound = tcp(3, Family::V4, "0.0.0.0:0", None);
    for (s, d) in [
        (exact, "192.0.2.1:9"),
        (any, "192.0.2.1:9"),
        (unbound, "192.0.2.1:443"),
    ] {
        e.apply(h, &add(s, Some(d), TrafficType::Voice, 0, 0))
            .unwrap();
    }
    let probes = [
        tuple(Protocol::Udp, "10.0.0.1:5000", "192.0.2.1:9"),
        tuple(Protocol::Udp, "10.0.0.9:5001", "[::ffff:192.0.2.1]:9"),
        tuple(Protocol::Tcp, "10.0.0.9:40000", "192.0.2.1:443"),
        tuple(Protocol::Tcp, "[2001:db8::1]:1", "[2001:db8::2]:2"),
    ];
    let hits = refused(|| {
        probes
            .iter()
            .map(|t| e.socket_lookup(t).is_some())
            .fold(0, |n, hit| n + usize::from(hit))
    });
    assert_eq!(hits, 2);
}
