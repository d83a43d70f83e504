//! Model-based test: random request sequences run against the engine and against a plain,
//! independent model (`BTreeMap`s, linear scans, rules written out as in qos-api.md §5-§10).
//! After every step the answers, the listings and the lookups of a fixed set of packet tuples
//! must agree, and the engine's invariants must hold.
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

use control_common::{sa, ADMIN, KERNEL, USER, USER2};
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use proptest::prelude::*;
use qosmark_engine::abi::{
    Caller, CounterSnapshot, Dscp, Family, FlowId, FlowRate, Mark, NotifyFlow, PacketPriority, Pcp,
    Privilege, Protocol, QueryFlow, Request, Response, SetFlow, Shaping, SocketInfo, TrafficTable,
    TrafficType, TrafficTypeMark,
};
use qosmark_engine::control::{Binding, FlowDetail, HandleDetail, SocketDetail};
use qosmark_engine::shaper::Behaviour;
use qosmark_engine::{Engine, EngineError, FiveTuple, HandleId, Limits};
use std::collections::BTreeMap;

// ------------------------------------------------------------------ the model

/// Local side of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Local {
    Exact(IpAddr, u16),
    Any(u16),
    Unbound,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct MEntry {
    socket: u64,
    proto: Protocol,
    local: Local,
    remote: (IpAddr, u16),
}

#[derive(Clone, Debug)]
struct MFlow {
    handle: u32,
    pid: u32,
    tt: TrafficType,
    adaptive: bool,
    custom: Option<u8>,
    /// `QOSSetOutgoingRate`: bit/s and `QOS_SHAPING` value.
    rate: Option<(u64, u32)>,
    entries: Vec<MEntry>,
}

struct Model {
    limits: Limits,
    table: TrafficTable,
    handles: BTreeMap<u32, Caller>,
    flows: BTreeMap<FlowId, MFlow>,
}

/// `::ffff:a.b.c.d` → `a.b.c.d`, written out on the segments.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if s[..5] == [0, 0, 0, 0, 0] && s[5] == 0xffff {
                let o = v6.octets();
                IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
            } else {
                ip
            }
        }
        IpAddr::V4(_) => ip,
    }
}

fn privileged(c: Caller) -> bool {
    c.privilege != Privilege::User
}

type R<T> = Result<T, EngineError>;

impl Model {
    fn own(&self, h: u32, id: FlowId) -> R<&MFlow> {
        self.flows
            .get(&id)
            .filter(|f| f.handle == h)
            .ok_or(EngineError::NotFound)
    }

    fn caller(&self, h: u32) -> R<Caller> {
        self.handles
            .get(&h)
            .copied()
            .ok_or(EngineError::InvalidHandle)
    }

    fn mark(&self, f: &MFlow) -> Mark {
        let row = self.table.marks[f.tt as usize];
        let dscp = match f.custom {
            Some(v) => Dscp::try_new(v).ok(),
            None => row.dscp,
        };
        let pcp = if f.adaptive && self.table.tag_adaptive_flows {
            row.pcp
        } else {
            None
        };
        Mark { dscp, pcp }
    }

    /// The entry holding this key. Unbound keys are private to their (handle, socket), so
    /// only that owner's entry can hold one.
    fn holder(
        &self,
        owner: (u32, u64),
        proto: Protocol,
        local: Local,
        remote: (IpAddr, u16),
    ) -> Option<(FlowId, &MEntry)> {
        self.flows.iter().find_map(|(id, f)| {
            f.entries
                .iter()
                .find(|e| {
                    e.proto == proto
                        && e.local == local
                        && e.remote == remote
                        && (local != Local::Unbound || (f.handle, e.socket) == owner)
                })
                .map(|e| (*id, e))
        })
    }

    fn handle_entries(&self, h: u32) -> usize {
        self.flows
            .values()
            .filter(|f| f.handle == h)
            .map(|f| f.entries.len())
            .sum()
    }

    fn total_entries(&self) -> usize {
        self.flows.values().map(|f| f.entries.len()).sum()
    }

    /// The key rules of §5 / §10, as a list of refusals.
    fn key(s: &SocketInfo, dest: Option<SocketAddr>) -> R<(Local, (IpAddr, u16))> {
        let bad = Err(EngineError::InvalidParameter);
        let lip = unmap(s.local.ip());
        let lport = s.local.port();
        let remote = match (s.peer, dest) {
            (None, None) => return bad,
            (Some(p), None) => p,
            (None, Some(d)) => d,
            (Some(p), Some(d)) => {
                if unmap(p.ip()) != unmap(d.ip()) || p.port() != d.port() {
                    return bad;
                }
                p
            }
        };
        let rip = unmap(remote.ip());
        let rport = remote.port();
        let v4_socket = s.family == Family::V4;
        if v4_socket && (!lip.is_ipv4() || !rip.is_ipv4()) {
            return bad;
        }
        if rip.is_unspecified() || rport == 0 {
            return bad;
        }
        if lport == 0 {
            if s.peer.is_some() || s.protocol == Protocol::Udp {
                return bad;
            }
            return Ok((Local::Unbound, (rip, rport)));
        }
        if lip.is_unspecified() {
            return Ok((Local::Any(lport), (rip, rport)));
        }
        if lip.is_ipv4() != rip.is_ipv4() {
            return bad;
        }
        Ok((Local::Exact(lip, lport), (rip, rport)))
    }

    /// Returns `Ok(None)` when the engine must create a flow (its id is then checked).
    fn add(
        &self,
        h: u32,
        s: &SocketInfo,
        dest: Option<SocketAddr>,
        flags: u32,
        flow: FlowId,
    ) -> R<Option<FlowId>> {
        self.caller(h)?;
        if flags != 0 && flags != 2 {
            return Err(EngineError::InvalidParameter);
        }
        if flow != 0 {
            let f = self
                .own(h, flow)
                .map_err(|_| EngineError::InvalidParameter)?;
            if f.adaptive {
                return Err(EngineError::InvalidParameter);
            }
        }
        let (local, remote) = Self::key(s, dest)?;
        if let Some((id, e)) = self.holder((h, s.socket), s.protocol, local, remote) {
            return if id == flow && e.socket == s.socket {
                Ok(Some(id))
            } else {
                Err(EngineError::AlreadyExists)
            };
        }
        if self.total_entries() >= self.limits.max_sockets
            || self.handle_entries(h) >= self.limits.max_sockets_per_handle
        {
            return Err(EngineError::LimitReached);
        }
        if flow != 0 {
            return Ok(Some(flow));
        }
        let hf = self.flows.values().filter(|f| f.handle == h).count();
        if self.flows.len() >= self.limits.max_flows || hf >= self.limits.max_flows_per_handle {
            return Err(EngineError::LimitReached);
        }
        Ok(None)
    }

    fn details(&self) -> Vec<FlowDetail> {
        self.flows
            .iter()
            .map(|(id, f)| FlowDetail {
                id: *id,
                handle: HandleId(f.handle),
                pid: f.pid,
                traffic_type: f.tt,
                adaptive: f.adaptive,
                custom_dscp: f.custom.and_then(|v| Dscp::try_new(v).ok()),
                mark: self.mark(f),
                counters: CounterSnapshot::default(),
                // Ids are the engine's; `run` compares the shapers' configurations instead.
                shaper: None,
                sockets: f
                    .entries
                    .iter()
                    .map(|e| SocketDetail {
                        socket: e.socket,
                        protocol: e.proto,
                        binding: match e.local {
                            Local::Exact(ip, p) => Binding::Address(SocketAddr::new(ip, p)),
                            Local::Any(port) => Binding::AnyAddress { port },
                            Local::Unbound => Binding::NotBound,
                        },
                        remote: SocketAddr::new(e.remote.0, e.remote.1),
                    })
                    .collect(),
            })
            .collect()
    }

    fn handle_details(&self) -> Vec<HandleDetail> {
        self.handles
            .iter()
            .map(|(h, c)| HandleDetail {
                id: HandleId(*h),
                caller: *c,
                flows: self.flows.values().filter(|f| f.handle == *h).count(),
                sockets: self.handle_entries(*h),
            })
            .collect()
    }

    /// Linear scan in tier order. Unbound entries (TCP before `connect`) never match.
    fn lookup(&self, t: &FiveTuple) -> Option<(FlowId, Mark)> {
        let lip = unmap(t.local.ip());
        let remote = (unmap(t.remote.ip()), t.remote.port());
        let tiers = [
            Local::Exact(lip, t.local.port()),
            Local::Any(t.local.port()),
        ];
        tiers.into_iter().find_map(|want| {
            self.flows.iter().find_map(|(id, f)| {
                f.entries
                    .iter()
                    .any(|e| e.proto == t.protocol && e.remote == remote && e.local == want)
                    .then(|| (*id, self.mark(f)))
            })
        })
    }
}

// ------------------------------------------------------------------ operations

/// Size of the socket pool.
const SOCKETS: usize = 14;

const CALLERS: [Caller; 5] = [USER, USER, USER2, ADMIN, KERNEL];

fn sockets() -> Vec<SocketInfo> {
    let s = |socket, family, protocol, local: &str, peer: Option<&str>| SocketInfo {
        socket,
        family,
        protocol,
        local: sa(local),
        peer: peer.map(sa),
    };
    vec![
        s(1, Family::V4, Protocol::Udp, "10.0.0.1:5000", None),
        s(2, Family::V4, Protocol::Udp, "0.0.0.0:5001", None),
        s(3, Family::V6, Protocol::Udp, "[::]:5002", None),
        s(4, Family::V6, Protocol::Udp, "[2001:db8::1]:5003", None),
        s(5, Family::V4, Protocol::Tcp, "0.0.0.0:0", None),
        s(6, Family::V6, Protocol::Tcp, "[::]:0", None),
        s(
            7,
            Family::V4,
            Protocol::Tcp,
            "10.0.0.1:40000",
            Some("192.0.2.1:443"),
        ),
        s(8, Family::V4, Protocol::Udp, "0.0.0.0:0", None),
        s(9, Family::V6, Protocol::Udp, "[::ffff:10.0.0.1]:5004", None),
        // Another socket on socket 1's address (SO_REUSEADDR): same 5-tuples collide.
        s(10, Family::V4, Protocol::Udp, "10.0.0.1:5000", None),
        s(
            11,
            Family::V6,
            Protocol::Tcp,
            "[::ffff:10.0.0.1]:40005",
            Some("[::ffff:192.0.2.1]:443"),
        ),
        // Same ports in different tiers, so tier precedence is exercised often.
        s(12, Family::V4, Protocol::Tcp, "0.0.0.0:40003", None),
        s(13, Family::V4, Protocol::Tcp, "10.0.0.7:40003", None),
        s(14, Family::V4, Protocol::Udp, "0.0.0.0:5000", None),
    ]
}

fn dests() -> Vec<Option<SocketAddr>> {
    let scoped: SocketAddr = "[fe80::2%3]:9".parse().unwrap();
    vec![
        None,
        Some(sa("192.0.2.1:443")),
        Some(sa("192.0.2.1:9")),
        Some(sa("[::ffff:192.0.2.1]:9")),
        Some(sa("192.0.2.2:9")),
        Some(sa("[2001:db8::2]:9")),
        Some(sa("0.0.0.0:9")),
        Some(sa("192.0.2.1:0")),
        Some(scoped),
    ]
}

fn bound_locals() -> Vec<SocketAddr> {
    [
        "10.0.0.1:40001",
        "[::]:40002",
        "0.0.0.0:40003",
        "10.0.0.1:0",
        "[2001:db8::1]:40004",
        "[::ffff:10.0.0.1]:40006",
    ]
    .into_iter()
    .map(sa)
    .collect()
}

fn tables() -> Vec<TrafficTable> {
    let d = qosmark_engine::traffic::default_table();
    let mut open = d;
    open.user_dscp_allow = (1 << 46) | 1;
    open.tag_adaptive_flows = false;
    let mut custom = d;
    for (i, m) in custom.marks.iter_mut().enumerate() {
        let i = u8::try_from(i).unwrap();
        *m = TrafficTypeMark {
            dscp: Dscp::try_new(63 - i).ok(),
            pcp: Pcp::try_new(7 - i).ok(),
        };
    }
    custom.marks[0] = TrafficTypeMark {
        dscp: None,
        pcp: Pcp::try_new(1).ok(),
    };
    custom.non_conformant_dscp = Dscp::try_new(8).unwrap();
    custom.non_conformant_pcp = Pcp::try_new(3).unwrap();
    vec![d, open, custom]
}

fn probes() -> Vec<FiveTuple> {
    let locals = [
        "10.0.0.1:5000",
        "10.0.0.2:5001",
        "10.0.0.2:5000",
        "10.0.0.1:5002",
        "[2001:db8::1]:5003",
        "[2001:db8::7]:5002",
        "10.0.0.1:40000",
        "10.0.0.1:40001",
        "10.0.0.7:40003",
        "[2001:db8::5]:40002",
        "10.0.0.1:5004",
        "10.0.0.1:40005",
        "10.0.0.1:12345",
        "[fe80::1]:5002",
    ];
    let remotes = [
        "192.0.2.1:443",
        "192.0.2.1:9",
        "192.0.2.2:9",
        "[2001:db8::2]:9",
        "[fe80::2]:9",
    ];
    let mut out = Vec::new();
    for proto in [Protocol::Udp, Protocol::Tcp] {
        for l in locals {
            for r in remotes {
                out.push(FiveTuple::new(proto, sa(l), sa(r)));
            }
        }
    }
    out
}

#[derive(Clone, Debug)]
enum Op {
    Open(usize),
    Close(usize),
    Add {
        h: usize,
        sock: usize,
        dest: usize,
        tt: usize,
        flags: u32,
        flow: usize,
    },
    Remove {
        h: usize,
        sock: Option<usize>,
        flow: usize,
    },
    SetType {
        h: usize,
        flow: usize,
        tt: usize,
    },
    SetDscp {
        h: usize,
        flow: usize,
        value: u32,
    },
    /// `recent`: on the flow added last, through its handle, when there is one (random picks
    /// rarely meet a handle's own flow).
    SetRate {
        h: usize,
        flow: usize,
        bandwidth: u64,
        shaping: Shaping,
        recent: bool,
    },
    Query {
        h: usize,
        flow: usize,
        op: usize,
    },
    Notify {
        h: usize,
        flow: usize,
        op: usize,
        threshold: bool,
    },
    Enumerate(usize),
    /// `recent`: the handle and flow of the last rate set, when there is one (random picks
    /// rarely meet a flow with a rate).
    ClearRate {
        h: usize,
        flow: usize,
        recent: bool,
    },
    SetTable {
        h: usize,
        table: usize,
    },
    Bound {
        h: usize,
        sock: usize,
        local: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let h = 0usize..8;
    let flow = 0usize..10;
    prop_oneof![
        2 => (0usize..CALLERS.len()).prop_map(Op::Open),
        1 => h.clone().prop_map(Op::Close),
        10 => (h.clone(), 0usize..SOCKETS, 0usize..9, 0usize..6, prop::sample::select(vec![0u32, 2, 2, 1, 0x8000_0002]), flow.clone())
            .prop_map(|(h, sock, dest, tt, flags, flow)| Op::Add { h, sock, dest, tt, flags, flow }),
        3 => (h.clone(), prop::option::of(0usize..SOCKETS), flow.clone()).prop_map(|(h, sock, flow)| Op::Remove { h, sock, flow }),
        2 => (h.clone(), flow.clone(), 0usize..6).prop_map(|(h, flow, tt)| Op::SetType { h, flow, tt }),
        2 => (h.clone(), flow.clone(), prop::sample::select(vec![0u32, 46, 63, 10, 64, 300])).prop_map(|(h, flow, value)| Op::SetDscp { h, flow, value }),
        2 => (h.clone(), flow.clone(), prop::sample::select(vec![0u64, 1, 11_999, 12_000, 1_000_000, 100_000_000_000, 100_000_000_001, u64::MAX]),
              prop::sample::select(vec![Shaping::ShapeOnly, Shaping::ShapeAndMark, Shaping::UseNonConformantMarkings]))
            .prop_map(|(h, flow, bandwidth, shaping)| Op::SetRate { h, flow, bandwidth, shaping, recent: false }),
        2 => (prop::sample::select(vec![12_000u64, 1_000_000, 100_000_000_000, 0]),
              prop::sample::select(vec![Shaping::ShapeOnly, Shaping::UseNonConformantMarkings]))
            .prop_map(|(bandwidth, shaping)| Op::SetRate { h: 0, flow: 0, bandwidth, shaping, recent: true }),
        2 => (h.clone(), flow.clone(), 0usize..3).prop_map(|(h, flow, op)| Op::Query { h, flow, op }),
        1 => (h.clone(), flow.clone(), 0usize..3, any::<bool>()).prop_map(|(h, flow, op, threshold)| Op::Notify { h, flow, op, threshold }),
        1 => h.clone().prop_map(Op::Enumerate),
        2 => (h.clone(), flow.clone(), any::<bool>()).prop_map(|(h, flow, recent)| Op::ClearRate { h, flow, recent }),
        1 => (h.clone(), 0usize..3).prop_map(|(h, table)| Op::SetTable { h, table }),
        2 => (h, 0usize..SOCKETS, 0usize..6).prop_map(|(h, sock, local)| Op::Bound { h, sock, local }),
    ]
}

/// Runs one sequence; handles and flows are picked by index among all ids seen so far (live or
/// dead), plus invalid ones.
fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let limits = Limits {
        max_handles: 4,
        max_flows: 6,
        max_flows_per_handle: 4,
        max_sockets: 9,
        max_sockets_per_handle: 6,
        ..Limits::default()
    };
    let mut e = Engine::new(limits);
    let mut m = Model {
        limits,
        table: *e.control_snapshot().unwrap().table_ref(),
        handles: BTreeMap::new(),
        flows: BTreeMap::new(),
    };
    let (socks, dests, locals, tables, probes) =
        (sockets(), dests(), bound_locals(), tables(), probes());
    let mut seen_handles: Vec<u32> = vec![0xdead];
    let mut seen_flows: Vec<FlowId> = vec![0, 0xbeef];
    let mut last_rated: Option<(u32, FlowId)> = None;
    let mut last_added: Option<(u32, FlowId)> = None;
    let hpick = |seen: &Vec<u32>, i: usize| seen[i % seen.len()];
    // A `recent` op's (handle, flow): the remembered pair if there is one, else picked by index.
    let pick = |last: Option<(u32, FlowId)>,
                recent: bool,
                (h, flow): (usize, usize),
                handles: &Vec<u32>,
                flows: &Vec<FlowId>| match last {
        Some(pair) if recent => pair,
        _ => (hpick(handles, h), flows[flow % flows.len()]),
    };
    for op in ops {
        match *op {
            Op::Open(c) => {
                let caller = CALLERS[c];
                let got = e.open_handle(caller);
                if m.handles.len() >= limits.max_handles {
                    prop_assert_eq!(got, Err(EngineError::LimitReached));
                } else {
                    let id = got.unwrap().0;
                    prop_assert!(id != 0 && !m.handles.contains_key(&id));
                    m.handles.insert(id, caller);
                    seen_handles.push(id);
                }
            }
            Op::Close(i) => {
                let h = hpick(&seen_handles, i);
                let got = e.close_handle(HandleId(h));
                if m.handles.remove(&h).is_some() {
                    let gone: Vec<FlowId> = m
                        .flows
                        .iter()
                        .filter(|(_, f)| f.handle == h)
                        .map(|(id, _)| *id)
                        .collect();
                    let sockets: usize = gone.iter().map(|id| m.flows[id].entries.len()).sum();
                    for id in &gone {
                        m.flows.remove(id);
                    }
                    let r = got.unwrap();
                    prop_assert_eq!(
                        (r.flows_removed, r.sockets_removed, r.requests_aborted),
                        (gone.len(), sockets, 0)
                    );
                } else {
                    prop_assert_eq!(got, Err(EngineError::InvalidHandle));
                }
            }
            Op::Add {
                h,
                sock,
                dest,
                tt,
                flags,
                flow,
            } => {
                let h = hpick(&seen_handles, h);
                let flow = seen_flows[flow % seen_flows.len()];
                let s = socks[sock];
                let d = dests[dest];
                let tt = TrafficType::ALL[tt];
                let req = Request::AddSocketToFlow {
                    socket: s,
                    dest: d,
                    traffic_type: tt,
                    flags,
                    flow_id: flow,
                };
                let expect = m.add(h, &s, d, flags, flow);
                let got = e.apply(HandleId(h), &req);
                match expect {
                    Err(err) => prop_assert_eq!(got, Err(err)),
                    Ok(Some(id)) => {
                        prop_assert_eq!(got, Ok(Response::FlowId(id)));
                        let (local, remote) = Model::key(&s, d).unwrap();
                        let entry = MEntry {
                            socket: s.socket,
                            proto: s.protocol,
                            local,
                            remote,
                        };
                        let f = m.flows.get_mut(&id).unwrap();
                        if !f.entries.contains(&entry) {
                            f.entries.push(entry);
                        }
                    }
                    Ok(None) => {
                        let Ok(Response::FlowId(id)) = got else {
                            return Err(TestCaseError::fail(format!(
                                "expected a new flow, got {got:?}"
                            )));
                        };
                        prop_assert!(id != 0 && !m.flows.contains_key(&id), "bad new id {}", id);
                        let (local, remote) = Model::key(&s, d).unwrap();
                        let pid = m.handles[&h].pid;
                        let entries = vec![MEntry {
                            socket: s.socket,
                            proto: s.protocol,
                            local,
                            remote,
                        }];
                        m.flows.insert(
                            id,
                            MFlow {
                                handle: h,
                                pid,
                                tt,
                                adaptive: flags == 0,
                                custom: None,
                                rate: None,
                                entries,
                            },
                        );
                        seen_flows.push(id);
                        last_added = Some((h, id));
                    }
                }
            }
            Op::Remove { h, sock, flow } => {
                let h = hpick(&seen_handles, h);
                let flow = seen_flows[flow % seen_flows.len()];
                let socket = sock.map(|i| socks[i].socket);
                let got = e.apply(
                    HandleId(h),
                    &Request::RemoveSocketFromFlow {
                        socket,
                        flow_id: flow,
                    },
                );
                let expect = m
                    .caller(h)
                    .and_then(|_| m.own(h, flow).map(|_| ()))
                    .and_then(|()| match socket {
                        None => Ok(()),
                        Some(s) if m.flows[&flow].entries.iter().any(|x| x.socket == s) => Ok(()),
                        Some(_) => Err(EngineError::NotFound),
                    });
                match expect {
                    Err(err) => prop_assert_eq!(got, Err(err)),
                    Ok(()) => {
                        prop_assert_eq!(got, Ok(Response::Done));
                        let f = m.flows.get_mut(&flow).unwrap();
                        if let Some(s) = socket {
                            f.entries.retain(|x| x.socket != s);
                        }
                        if socket.is_none() || f.entries.is_empty() {
                            m.flows.remove(&flow);
                        }
                    }
                }
            }
            Op::SetType { h, flow, tt } => {
                let h = hpick(&seen_handles, h);
                let flow = seen_flows[flow % seen_flows.len()];
                let tt = TrafficType::ALL[tt];
                let got = e.apply(
                    HandleId(h),
                    &Request::SetFlow {
                        flow_id: flow,
                        op: SetFlow::TrafficType(tt),
                    },
                );
                match m.caller(h).and_then(|_| m.own(h, flow).map(|_| ())) {
                    Err(err) => prop_assert_eq!(got, Err(err)),
                    Ok(()) => {
                        prop_assert_eq!(got, Ok(Response::Done));
                        m.flows.get_mut(&flow).unwrap().tt = tt;
                    }
                }
            }
            Op::SetDscp { h, flow, value } => {
                let h = hpick(&seen_handles, h);
                let flow = seen_flows[flow % seen_flows.len()];
                let got = e.apply(
                    HandleId(h),
                    &Request::SetFlow {
                        flow_id: flow,
                        op: SetFlow::OutgoingDscp(value),
                    },
                );
                let expect = m.caller(h).and_then(|c| {
                    m.own(h, flow)?;
                    if value > 63 {
                        return Err(EngineError::InvalidParameter);
                    }
                    if !privileged(c) && (m.table.user_dscp_allow >> value) & 1 == 0 {
                        return Err(EngineError::AccessDenied);
                    }
                    Ok(())
                });
                match expect {
                    Err(err) => prop_assert_eq!(got, Err(err)),
                    Ok(()) => {
                        prop_assert_eq!(got, Ok(Response::Done));
                        m.flows.get_mut(&flow).unwrap().custom = Some(u8::try_from(value).unwrap());
                    }
                }
            }
            Op::SetRate {
                h,
                flow,
                bandwidth,
                shaping,
                recent,
            } => {
                let (h, flow) = pick(last_added, recent, (h, flow), &seen_handles, &seen_flows);
                let got = e.apply(
                    HandleId(h),
                    &Request::SetFlow {
                        flow_id: flow,
                        op: SetFlow::OutgoingRate(FlowRate {
                            bandwidth,
                            shaping,
                            reason: 0,
                        }),
                    },
                );
                // 1168 first, then 87 outside 12 000..=10^11 bit/s.
                let expect = m.caller(h).and_then(|_| m.own(h, flow)).and_then(|_| {
                    if (12_000..=100_000_000_000).contains(&bandwidth) {
                        Ok(())
                    } else {
                        Err(EngineError::InvalidParameter)
                    }
                });
                match expect {
                    Err(err) => prop_assert_eq!(got, Err(err)),
                    Ok(()) => {
                        prop_assert_eq!(got, Ok(Response::Done));
                        m.flows.get_mut(&flow).unwrap().rate = Some((bandwidth, shaping as u32));
                        last_rated = Some((h, flow));
                    }
                }
            }
            Op::ClearRate { h, flow, recent } => {
                let (h, flow) = pick(last_rated, recent, (h, flow), &seen_handles, &seen_flows);
                let got = e.apply(
                    HandleId(h),
                    &Request::SetFlow {
                        flow_id: flow,
                        op: SetFlow::ClearOutgoingRate,
                    },
                );
                // 1168 for a flow that is not the handle's; else the rate (if any) is gone.
                match m.caller(h).and_then(|_| m.own(h, flow)) {
                    Err(err) => prop_assert_eq!(got, Err(err)),
                    Ok(_) => {
                        prop_assert_eq!(got, Ok(Response::Done));
                        m.flows.get_mut(&flow).unwrap().rate = None;
                    }
                }
            }
            Op::Query { h, flow, op } => {
                let h = hpick(&seen_handles, h);
                let flow = seen_flows[flow % seen_flows.len()];
                let qop = [
                    QueryFlow::Fundamentals,
                    QueryFlow::PacketPriority,
                    QueryFlow::OutgoingRate,
                ][op];
                let got = e.apply(
                    HandleId(h),
                    &Request::QueryFlow {
                        flow_id: flow,
                        op: qop,
                    },
                );
                let expect = m.caller(h).and_then(|_| m.own(h, flow)).and_then(|f| {
                    match qop {
                        QueryFlow::Fundamentals => return Err(EngineError::NotSupported),
                        // qosmark choice: no rate set → 232 ERROR_NO_DATA.
                        QueryFlow::OutgoingRate => {
                            return f
                                .rate
                                .map(|r| Response::OutgoingRate(r.0))
                                .ok_or(EngineError::NoData)
                        }
                        QueryFlow::PacketPriority => {}
                    }
                    let mark = m.mark(f);
                    // Non-conformant values only under QOSUseNonConformantMarkings (2): the
                    // table's DSCP always, its 802.1p when the flow requests 802.1p.
                    let nc = f.rate.is_some_and(|r| r.1 == 2);
                    Ok(Response::PacketPriority(PacketPriority {
                        conformant_dscp: mark.dscp.map_or(0, |d| u32::from(d.value())),
                        non_conformant_dscp: if nc {
                            u32::from(m.table.non_conformant_dscp.value())
                        } else {
                            0
                        },
                        conformant_l2: mark.pcp.map_or(0, |p| u32::from(p.value())),
                        non_conformant_l2: if nc && mark.pcp.is_some() {
                            u32::from(m.table.non_conformant_pcp.value())
                        } else {
                            0
                        },
                    }))
                });
                prop_assert_eq!(got, expect);
            }
            Op::Notify {
                h,
                flow,
                op,
                threshold,
            } => {
                let h = hpick(&seen_handles, h);
                let flow = seen_flows[flow % seen_flows.len()];
                let nop = [
                    NotifyFlow::Congested,
                    NotifyFlow::Uncongested,
                    NotifyFlow::Available,
                ][op];
                let threshold = threshold.then_some(1_000_000u64);
                let got = e.apply(
                    HandleId(h),
                    &Request::NotifyFlow {
                        flow_id: flow,
                        op: nop,
                        threshold,
                    },
                );
                let expect = m.caller(h).and_then(|_| m.own(h, flow)).and_then(|_| {
                    if (nop == NotifyFlow::Available) == threshold.is_some() {
                        Err(EngineError::NotSupported)
                    } else {
                        Err(EngineError::InvalidParameter)
                    }
                });
                prop_assert_eq!(got, expect);
            }
            Op::Enumerate(h) => {
                let h = hpick(&seen_handles, h);
                let got = e.apply(HandleId(h), &Request::EnumerateFlows);
                let expect = m.caller(h).map(|c| {
                    Response::FlowIds(
                        m.flows
                            .iter()
                            .filter(|(_, f)| privileged(c) || f.pid == c.pid)
                            .map(|(id, _)| *id)
                            .collect(),
                    )
                });
                prop_assert_eq!(got, expect);
            }
            Op::SetTable { h, table } => {
                let h = hpick(&seen_handles, h);
                let got = e.apply(HandleId(h), &Request::SetTrafficTable(tables[table]));
                match m.caller(h) {
                    Err(err) => prop_assert_eq!(got, Err(err)),
                    Ok(c) if !privileged(c) => prop_assert_eq!(got, Err(EngineError::AccessDenied)),
                    Ok(_) => {
                        prop_assert_eq!(got, Ok(Response::Done));
                        m.table = tables[table];
                    }
                }
            }
            Op::Bound { h, sock, local } => {
                let h = hpick(&seen_handles, h);
                let socket = socks[sock].socket;
                let local = locals[local];
                let got = e.socket_bound(HandleId(h), socket, local);
                let lip = unmap(local.ip());
                let new_local = if lip.is_unspecified() {
                    Local::Any(local.port())
                } else {
                    Local::Exact(lip, local.port())
                };
                let targets: Vec<(FlowId, usize)> = m
                    .flows
                    .iter()
                    .filter(|(_, f)| f.handle == h)
                    .flat_map(|(id, f)| {
                        f.entries
                            .iter()
                            .enumerate()
                            .filter(|(_, x)| x.socket == socket && x.local == Local::Unbound)
                            .map(|(i, _)| (*id, i))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let expect = m.caller(h).and_then(|_| {
                    if local.port() == 0 {
                        return Err(EngineError::InvalidParameter);
                    }
                    let entry = |&(id, i): &(FlowId, usize)| &m.flows[&id].entries[i];
                    if targets.iter().any(|t| {
                        !lip.is_unspecified() && lip.is_ipv4() != entry(t).remote.0.is_ipv4()
                    }) {
                        return Err(EngineError::InvalidParameter);
                    }
                    if targets.iter().any(|t| {
                        m.holder((h, socket), entry(t).proto, new_local, entry(t).remote)
                            .is_some()
                    }) {
                        return Err(EngineError::AlreadyExists);
                    }
                    Ok(targets.len())
                });
                prop_assert_eq!(got, expect);
                if expect.is_ok() {
                    for (id, i) in targets {
                        m.flows.get_mut(&id).unwrap().entries[i].local = new_local;
                    }
                }
            }
        }
        // After every step: same state, same lookups, invariants hold.
        e.check_control_invariants().map_err(TestCaseError::fail)?;
        let mut details = e.flow_details().unwrap();
        for d in &mut details {
            let shaper = d.shaper.take();
            let got = shaper
                .and_then(|s| e.shaper_config(s))
                .map(|c| (c.rate_bps(), c.behaviour()));
            let want = m.flows[&d.id].rate.map(|(bw, sh)| {
                (
                    bw,
                    if sh == 2 {
                        Behaviour::NonConformantMark
                    } else {
                        Behaviour::Shape
                    },
                )
            });
            prop_assert_eq!(got, want, "rate of flow {} after {:?}", d.id, op);
        }
        prop_assert_eq!(details, m.details(), "after {:?}", op);
        let live_shapers = m.flows.values().filter(|f| f.rate.is_some()).count();
        prop_assert_eq!(
            e.apply(
                HandleId(seen_handles[seen_handles.len() - 1]),
                &Request::QueryStatus
            )
            .ok()
            .and_then(|r| match r {
                Response::Status(s) => Some(s.shapers as usize),
                _ => None,
            })
            .unwrap_or(live_shapers),
            live_shapers
        );
        prop_assert_eq!(e.handle_details().unwrap(), m.handle_details());
        for t in &probes {
            prop_assert_eq!(
                e.socket_lookup(t),
                m.lookup(t),
                "lookup {:?} after {:?}",
                t,
                op
            );
        }
    }
    Ok(())
}

trait TableRef {
    fn table_ref(&self) -> &TrafficTable;
}

impl TableRef for qosmark_engine::control::ControlSnapshot {
    fn table_ref(&self) -> &TrafficTable {
        &self.table
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops)?;
    }
}

/// A fixed sequence through the same harness, so the harness itself is exercised on a known
/// path (every request kind, joins, pinning, close).
#[test]
fn scripted_sequence_matches_model() {
    let ops = vec![
        Op::Open(0),
        Op::Open(3),
        Op::Add {
            h: 1,
            sock: 2,
            dest: 2,
            tt: 4,
            flags: 2,
            flow: 0,
        },
        Op::Add {
            h: 1,
            sock: 2,
            dest: 5,
            tt: 4,
            flags: 2,
            flow: 2,
        },
        Op::Add {
            h: 1,
            sock: 4,
            dest: 1,
            tt: 1,
            flags: 0,
            flow: 0,
        },
        Op::Bound {
            h: 1,
            sock: 4,
            local: 0,
        },
        Op::SetDscp {
            h: 1,
            flow: 2,
            value: 46,
        },
        Op::SetTable { h: 2, table: 1 },
        Op::SetDscp {
            h: 1,
            flow: 2,
            value: 46,
        },
        Op::Query {
            h: 1,
            flow: 2,
            op: 1,
        },
        Op::Enumerate(1),
        Op::Remove {
            h: 1,
            sock: Some(2),
            flow: 2,
        },
        Op::Close(1),
    ];
    run(&ops).unwrap();
}
