//! Helpers shared by the `control_*` integration tests: callers, sockets, requests, and the
//! "an error changes nothing" check.
#![allow(
    dead_code,
    reason = "each test crate uses a different subset of the helpers"
)]
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    clippy::panic,
    reason = "test helpers: a panic is a failed test"
)]

use core::net::SocketAddr;
use qosmark_engine::abi::{
    Caller, Family, FlowId, Privilege, Protocol, Request, Response, SocketInfo, TrafficType,
    QOS_NON_ADAPTIVE_FLOW,
};
use qosmark_engine::{Engine, EngineError, FiveTuple, HandleId};

pub const USER: Caller = Caller {
    pid: 100,
    privilege: Privilege::User,
};
pub const USER2: Caller = Caller {
    pid: 200,
    privilege: Privilege::User,
};
pub const ADMIN: Caller = Caller {
    pid: 300,
    privilege: Privilege::Admin,
};
pub const KERNEL: Caller = Caller {
    pid: 0,
    privilege: Privilege::Kernel,
};
pub const NON_ADAPTIVE: u32 = QOS_NON_ADAPTIVE_FLOW;

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A UDP socket of `family` bound to `local`, not connected.
pub fn udp(socket: u64, family: Family, local: &str) -> SocketInfo {
    SocketInfo {
        socket,
        family,
        protocol: Protocol::Udp,
        local: sa(local),
        peer: None,
    }
}

/// A TCP socket of `family` bound to `local`, connected to `peer` when given.
pub fn tcp(socket: u64, family: Family, local: &str, peer: Option<&str>) -> SocketInfo {
    SocketInfo {
        socket,
        family,
        protocol: Protocol::Tcp,
        local: sa(local),
        peer: peer.map(sa),
    }
}

pub fn add(
    socket: SocketInfo,
    dest: Option<&str>,
    tt: TrafficType,
    flags: u32,
    flow_id: FlowId,
) -> Request {
    Request::AddSocketToFlow {
        socket,
        dest: dest.map(sa),
        traffic_type: tt,
        flags,
        flow_id,
    }
}

pub fn tuple(protocol: Protocol, local: &str, remote: &str) -> FiveTuple {
    FiveTuple::new(protocol, sa(local), sa(remote))
}

/// Applies an `AddSocketToFlow` that must succeed and returns the flow id.
pub fn add_ok(e: &mut Engine, h: HandleId, req: &Request) -> FlowId {
    match e.apply(h, req) {
        Ok(Response::FlowId(id)) => id,
        other => panic!("expected a flow id, got {other:?} for {req:?}"),
    }
}

/// Applies `req`, expects `err`, and checks that nothing observable changed.
pub fn assert_refused(e: &mut Engine, h: HandleId, req: &Request, err: EngineError) {
    let before = e.control_snapshot().unwrap();
    assert_eq!(e.apply(h, req), Err(err), "{req:?}");
    assert_eq!(
        e.control_snapshot().unwrap(),
        before,
        "state changed by refused {req:?}"
    );
    e.check_control_invariants().unwrap();
}

/// The flow id a packet with this tuple is classified into, if any.
pub fn hit(e: &Engine, t: &FiveTuple) -> Option<FlowId> {
    e.socket_lookup(t).map(|(id, _)| id)
}
