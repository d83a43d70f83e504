//! Fuzz target `control_sequence`: random sequences of control operations — open and close
//! handles, every `Request` kind with random fields, `socket_bound`, and the classification of
//! packets of registered sockets — run against the engine and against a small independent
//! model written from the QOS2 rules in `shared/reference/qos-api.md` (§3 marks, §5 per-call
//! rules and errors, §8 privileges, §9 qosmark's choices, §10 dual stack) and the engine's
//! documented control contract (tiers, limits). After every step the answers (value or Win32
//! code) must agree; packets must get the model's mark.
//!
//! The model is deliberately plain: `BTreeMap`s and linear scans, addresses compared after a
//! v4-mapped unmapping written on the octets. It predicts everything except the value of a
//! new flow id, which it takes from the engine after checking it is fresh and non-zero.
//!
//! Input: a byte string read as a sequence of operations (one selector byte, then the fields
//! the operation needs); running out of bytes ends the sequence. Seeds: `corpus/control_sequence`.
// Built by cargo-fuzz (`--cfg fuzzing`) as a libFuzzer binary; included as a module by
// `tests/tests/fuzz_regressions.rs`, which runs `check` on every committed input.
#![cfg_attr(fuzzing, no_main)]

use qosmark_engine::abi::{
    heapless_name::RuleName, Caller, Dscp, Family, FlowId, FlowRate, FlowState, Mark, NotifyFlow,
    Pcp, PortRange, Privilege, Protocol, QueryFlow, Request, Response, RuleAction, RuleProtocol,
    RuleSpec, ServiceMark, ServiceType, SetFlow, Shaping, SkipReason, SocketInfo, TrafficTable,
    TrafficType, TrafficTypeMark,
};
use qosmark_engine::{Engine, EngineError, HandleId, Limits, PacketMeta, Verdict};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const LIMITS: Limits = Limits {
    max_handles: 4,
    max_flows: 6,
    max_flows_per_handle: 4,
    max_sockets: 9,
    max_sockets_per_handle: 6,
    max_rules: 3,
    fragment_slots: 8,
    // The model has no owner table: ownership is proven by the back end (the Linux setting).
    check_owner: false,
    owner_slots: 64,
    // Shapers: one per flow at most here; small queues so the limits are reached.
    max_shapers: 6,
    shaper_queue_packets: 4,
    shaper_queue_bytes: 4096,
    held_packets_total: 8,
    held_bytes_total: 8192,
    shaper_max_delay_ns: u64::MAX,
};

// Win32 codes (qos-api.md §7).
const E_ACCESS: u32 = 5;
const E_HANDLE: u32 = 6;
const E_NOT_SUPPORTED: u32 = 50;
const E_NO_DATA: u32 = 232;
const E_PARAM: u32 = 87;
const E_EXISTS: u32 = 183;
const E_NOT_FOUND: u32 = 1168;
const E_RESOURCES: u32 = 1450;

/// Bytes → fields; zeros once the input is used up (`done` then ends the sequence).
struct Input<'a> {
    data: &'a [u8],
    done: bool,
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => {
                self.done = true;
                0
            }
        }
    }
    fn pick<T: Copy>(&mut self, options: &[T]) -> T {
        options[usize::from(self.byte()) % options.len()]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d` (qos-api.md §10), by octets.
fn unmap(a: SocketAddr) -> SocketAddr {
    if let IpAddr::V6(v6) = a.ip() {
        let o = v6.octets();
        if o[..10].iter().all(|b| *b == 0) && o[10] == 0xff && o[11] == 0xff {
            return SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15])),
                a.port(),
            );
        }
    }
    SocketAddr::new(a.ip(), a.port())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MKey {
    Exact(Protocol, SocketAddr, SocketAddr),
    Any(Protocol, u16, SocketAddr),
    Unbound(u32, u64, Protocol, SocketAddr),
}

#[derive(Clone, Debug)]
struct MFlow {
    handle: u32,
    pid: u32,
    tt: TrafficType,
    adaptive: bool,
    custom: Option<u8>,
    /// The 802.1p of a GQoS service mark (`SetFlow(Service)`), which holds whatever the
    /// table and the flow's adaptivity say.
    custom_pcp: Option<u8>,
    /// `QOSSetOutgoingRate`: bit/s and shaping.
    rate: Option<(u64, Shaping)>,
    /// (socket, key) in registration order.
    entries: Vec<(u64, MKey)>,
}

struct Model {
    handles: BTreeMap<u32, Caller>,
    flows: BTreeMap<FlowId, MFlow>,
    table: TrafficTable,
    rules: Vec<RuleName>,
}

/// qos-api.md §3, as qosmark's defaults (802.1p for adaptive flows).
fn doc_table() -> TrafficTable {
    let m = |d: u8, p: u8| TrafficTypeMark {
        dscp: Dscp::try_new(d).ok(),
        pcp: Pcp::try_new(p).ok(),
    };
    TrafficTable {
        marks: [
            TrafficTypeMark {
                dscp: None,
                pcp: None,
            },
            m(8, 2),
            m(40, 5),
            m(40, 5),
            m(56, 7),
            m(56, 7),
        ],
        user_dscp_allow: 0,
        tag_adaptive_flows: true,
        non_conformant_dscp: Dscp::CS0,
        // Psched's non-conforming 802.1p (qos-api.md §11.4).
        non_conformant_pcp: Pcp::try_new(1).expect("3 bits"),
    }
}

fn privileged(c: Caller) -> bool {
    c.privilege != Privilege::User
}

impl Model {
    fn mark(&self, f: &MFlow) -> Mark {
        let row = self.table.marks[f.tt as usize];
        Mark {
            dscp: match f.custom {
                Some(d) => Dscp::try_new(d).ok(),
                None => row.dscp,
            },
            pcp: match f.custom_pcp {
                Some(p) => Pcp::try_new(p).ok(),
                None if f.adaptive && self.table.tag_adaptive_flows => row.pcp,
                None => None,
            },
        }
    }

    fn own(&self, h: u32, id: FlowId) -> Result<&MFlow, u32> {
        self.flows
            .get(&id)
            .filter(|f| f.handle == h)
            .ok_or(E_NOT_FOUND)
    }

    fn holder(&self, key: MKey) -> Option<(FlowId, u64)> {
        self.flows
            .iter()
            .find_map(|(id, f)| f.entries.iter().find(|e| e.1 == key).map(|e| (*id, e.0)))
    }

    fn entries_of(&self, h: u32) -> usize {
        self.flows
            .values()
            .filter(|f| f.handle == h)
            .map(|f| f.entries.len())
            .sum()
    }

    fn all_entries(&self) -> usize {
        self.flows.values().map(|f| f.entries.len()).sum()
    }

    /// `WatchFlow`: alive with its mark for a flow the caller may see (administrators and
    /// kernel: any; users: their process's), else not alive with no mark.
    fn watch(&self, c: Caller, id: FlowId) -> FlowState {
        match self.flows.get(&id) {
            Some(f) if privileged(c) || f.pid == c.pid => FlowState {
                alive: true,
                mark: self.mark(f),
            },
            _ => FlowState {
                alive: false,
                mark: Mark {
                    dscp: None,
                    pcp: None,
                },
            },
        }
    }

    fn visible(&self, c: Caller) -> Vec<FlowId> {
        self.flows
            .iter()
            .filter(|(_, f)| privileged(c) || f.pid == c.pid)
            .map(|(id, _)| *id)
            .collect()
    }

    /// `QOSAddSocketToFlow` up to the point where a new flow id is needed: the error, or
    /// `Ok(Some(existing id))` for a join / repeated registration, `Ok(None)` for a new flow.
    fn add(
        &self,
        h: u32,
        s: &SocketInfo,
        dest: Option<SocketAddr>,
        flags: u32,
        flow_id: FlowId,
    ) -> Result<(Option<FlowId>, MKey), u32> {
        let caller = *self.handles.get(&h).ok_or(E_HANDLE)?;
        let _ = caller;
        if flags & !2 != 0 {
            return Err(E_PARAM);
        }
        if flow_id != 0 {
            match self.flows.get(&flow_id) {
                Some(f) if f.handle == h && !f.adaptive => {}
                _ => return Err(E_PARAM),
            }
        }
        let local = unmap(s.local);
        if s.family == Family::V4 && !local.is_ipv4() {
            return Err(E_PARAM);
        }
        let remote = match (s.peer, dest) {
            (Some(p), None) => p,
            (Some(p), Some(d)) if unmap(p) == unmap(d) => p,
            (None, Some(d)) => d,
            _ => return Err(E_PARAM),
        };
        let remote = unmap(remote);
        if s.family == Family::V4 && !remote.is_ipv4() {
            return Err(E_PARAM);
        }
        if remote.ip().is_unspecified() || remote.port() == 0 {
            return Err(E_PARAM);
        }
        let key = if local.port() == 0 {
            if s.peer.is_some() || s.protocol == Protocol::Udp {
                return Err(E_PARAM);
            }
            MKey::Unbound(h, s.socket, s.protocol, remote)
        } else if local.ip().is_unspecified() {
            MKey::Any(s.protocol, local.port(), remote)
        } else {
            if local.is_ipv4() != remote.is_ipv4() {
                return Err(E_PARAM);
            }
            MKey::Exact(s.protocol, local, remote)
        };
        if let Some((holder, socket)) = self.holder(key) {
            return if holder == flow_id && socket == s.socket {
                Ok((Some(holder), key))
            } else {
                Err(E_EXISTS)
            };
        }
        if self.all_entries() >= LIMITS.max_sockets
            || self.entries_of(h) >= LIMITS.max_sockets_per_handle
        {
            return Err(E_RESOURCES);
        }
        if flow_id != 0 {
            return Ok((Some(flow_id), key));
        }
        let own_flows = self.flows.values().filter(|f| f.handle == h).count();
        if self.flows.len() >= LIMITS.max_flows || own_flows >= LIMITS.max_flows_per_handle {
            return Err(E_RESOURCES);
        }
        Ok((None, key))
    }
}

fn code<T>(r: &Result<T, EngineError>) -> Result<(), u32> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(e.win32().0),
    }
}

fn local_pool(input: &mut Input<'_>, family: Family) -> SocketAddr {
    let port = input.pick(&[0u16, 1000, 1001, 1000]);
    let ip: IpAddr = match (family, input.byte() % 4) {
        (Family::V4, 0 | 1) => Ipv4Addr::new(10, 0, 0, 1).into(),
        (Family::V4, 2) => Ipv4Addr::UNSPECIFIED.into(),
        (Family::V6, 0) => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
        (Family::V6, 1) => Ipv6Addr::UNSPECIFIED.into(),
        (Family::V6, 2) => Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped().into(),
        // The other family's address (refused for an AF_INET socket).
        (Family::V4, _) => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
        (Family::V6, _) => Ipv4Addr::new(10, 0, 0, 1).into(),
    };
    SocketAddr::new(ip, port)
}

fn remote_pool(input: &mut Input<'_>) -> SocketAddr {
    input.pick(&[
        SocketAddr::new(Ipv4Addr::new(192, 0, 2, 1).into(), 53),
        SocketAddr::new(Ipv4Addr::new(192, 0, 2, 2).into(), 443),
        SocketAddr::new(Ipv4Addr::new(192, 0, 2, 1).into(), 0),
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 53),
        SocketAddr::new(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2).into(), 53),
        SocketAddr::new(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped().into(), 53),
    ])
}

fn traffic_type(input: &mut Input<'_>) -> TrafficType {
    TrafficType::try_from_u32(u32::from(input.byte() % 6)).expect("0..=5")
}

fn rule_spec(input: &mut Input<'_>) -> RuleSpec {
    let name = input.pick(&["a", "b", "c", "d", "e"]);
    let first = u16::from(input.byte());
    RuleSpec {
        name: RuleName::try_new(name).expect("valid name"),
        precedence: input.byte(),
        protocol: input.pick(&[RuleProtocol::Any, RuleProtocol::Tcp, RuleProtocol::Udp]),
        local_prefix: None,
        remote_prefix: None,
        local_ports: None,
        remote_ports: Some(PortRange {
            first,
            last: first + u16::from(input.byte()),
        }),
        action: RuleAction::Dscp(Dscp::try_new(input.byte() % 64).expect("below 64")),
        pcp: None,
        throttle_bps: None,
    }
}

fn random_table(input: &mut Input<'_>) -> TrafficTable {
    let mut t = doc_table();
    for m in &mut t.marks {
        let b = input.byte();
        m.dscp = if b & 0x80 != 0 {
            None
        } else {
            Dscp::try_new(b % 64).ok()
        };
        let p = input.byte();
        m.pcp = if p & 0x80 != 0 {
            None
        } else {
            Pcp::try_new(p % 8).ok()
        };
    }
    t.user_dscp_allow = u64::from(input.u32()) | (u64::from(input.u32()) << 32);
    t.tag_adaptive_flows = input.byte() & 1 == 1;
    t.non_conformant_dscp = Dscp::try_new(input.byte() % 64).expect("6 bits");
    t.non_conformant_pcp = Pcp::try_new(input.byte() % 8).expect("3 bits");
    t
}

/// An IPv4/IPv6 TCP/UDP packet `local` → `remote` with TOS 0 (addresses of one family).
fn packet(proto: Protocol, local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
    let number = proto.number();
    let mut l4 = vec![0u8; if number == 6 { 20 } else { 8 }];
    l4[0..2].copy_from_slice(&local.port().to_be_bytes());
    l4[2..4].copy_from_slice(&remote.port().to_be_bytes());
    if number == 6 {
        l4[12] = 0x50;
    }
    match (local.ip(), remote.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, number, 0, 0];
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let total = (20 + l4.len()) as u16;
            p[2..4].copy_from_slice(&total.to_be_bytes());
            let mut sum: u32 = p
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                .sum();
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
            p.extend_from_slice(&l4);
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut p = vec![0x60, 0, 0, 0];
            p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            p.extend_from_slice(&[number, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&l4);
            p
        }
        _ => unreachable!("one family"),
    }
}

/// The packet a registered entry sends, if its key can match one (unbound entries cannot).
fn packet_of(key: MKey) -> Option<(Protocol, SocketAddr, SocketAddr)> {
    match key {
        MKey::Exact(p, l, r) => Some((p, l, r)),
        MKey::Any(p, port, r) => {
            let ip: IpAddr = if r.is_ipv4() {
                Ipv4Addr::new(10, 9, 9, 9).into()
            } else {
                Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 9).into()
            };
            Some((p, SocketAddr::new(ip, port), r))
        }
        MKey::Unbound(..) => None,
    }
}

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| check(data));

/// The target's checks on one input (panics on a violation). The fuzzer calls it, and so does
/// `cargo test` for every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`.
pub fn check(data: &[u8]) {
    let mut input = Input { data, done: false };
    let mut e = Engine::new(LIMITS);
    let mut m = Model {
        handles: BTreeMap::new(),
        flows: BTreeMap::new(),
        table: doc_table(),
        rules: Vec::new(),
    };
    // Handle ids the sequence refers to by index; closed ones stay (then 6).
    let mut known: Vec<u32> = vec![999];
    for step in 0..64 {
        let op = input.byte();
        if input.done {
            break;
        }
        let h = input.pick(&known);
        let hid = HandleId(h);
        match op % 20 {
            0 => {
                let caller = Caller {
                    pid: input.pick(&[100, 200]),
                    privilege: input.pick(&[
                        Privilege::User,
                        Privilege::User,
                        Privilege::Admin,
                        Privilege::Kernel,
                    ]),
                };
                match e.open_handle(caller) {
                    Ok(id) => {
                        assert!(
                            m.handles.len() < LIMITS.max_handles,
                            "step {step}: open beyond the limit"
                        );
                        assert!(
                            id.0 != 0 && !m.handles.contains_key(&id.0),
                            "step {step}: handle id reused"
                        );
                        m.handles.insert(id.0, caller);
                        known.push(id.0);
                    }
                    Err(err) => {
                        assert_eq!(err, EngineError::LimitReached, "step {step}");
                        assert_eq!(m.handles.len(), LIMITS.max_handles, "step {step}");
                    }
                }
            }
            1 => {
                let got = e.close_handle(hid).map(|r| r.flows_removed);
                if m.handles.remove(&h).is_some() {
                    let before = m.flows.len();
                    m.flows.retain(|_, f| f.handle != h);
                    assert_eq!(got, Ok(before - m.flows.len()), "step {step}: close");
                } else {
                    assert_eq!(got, Err(EngineError::InvalidHandle), "step {step}: close");
                }
            }
            2..=5 => {
                let family = input.pick(&[Family::V4, Family::V6]);
                let protocol = input.pick(&[Protocol::Udp, Protocol::Tcp]);
                let local = local_pool(&mut input, family);
                let connected = input.byte().is_multiple_of(3);
                let peer = connected.then(|| remote_pool(&mut input));
                let dest = (!input.byte().is_multiple_of(4)).then(|| remote_pool(&mut input));
                let tt = traffic_type(&mut input);
                let flags = input.pick(&[0u32, 2, 2, 1, 0x12]);
                let existing: Vec<FlowId> = m.flows.keys().copied().collect();
                let flow_id = match input.byte() % 4 {
                    0 | 1 => 0,
                    2 if !existing.is_empty() => input.pick(&existing),
                    _ => input.u32() % 16,
                };
                let socket = SocketInfo {
                    socket: u64::from(input.byte() % 4),
                    family,
                    protocol,
                    local,
                    peer,
                };
                let req = Request::AddSocketToFlow {
                    socket,
                    dest,
                    traffic_type: tt,
                    flags,
                    flow_id,
                };
                let want = m.add(h, &socket, dest, flags, flow_id);
                let got = e.apply(hid, &req);
                match (want, &got) {
                    (Err(c), _) => assert_eq!(code(&got), Err(c), "step {step}: {req:?}"),
                    (Ok((Some(id), key)), Ok(Response::FlowId(g))) => {
                        assert_eq!(*g, id, "step {step}: {req:?}");
                        let f = m.flows.get_mut(&id).expect("model flow");
                        if !f.entries.contains(&(socket.socket, key)) {
                            f.entries.push((socket.socket, key));
                        }
                    }
                    (Ok((None, key)), Ok(Response::FlowId(g))) => {
                        assert!(
                            *g != 0 && !m.flows.contains_key(g),
                            "step {step}: flow id {g} not fresh"
                        );
                        let pid = m.handles[&h].pid;
                        m.flows.insert(
                            *g,
                            MFlow {
                                handle: h,
                                pid,
                                tt,
                                adaptive: flags & 2 == 0,
                                custom: None,
                                custom_pcp: None,
                                rate: None,
                                entries: vec![(socket.socket, key)],
                            },
                        );
                    }
                    (want, got) => panic!("step {step}: {req:?}: model {want:?}, engine {got:?}"),
                }
            }
            6 => {
                let existing: Vec<FlowId> = m.flows.keys().copied().collect();
                let flow_id = if existing.is_empty() || input.byte().is_multiple_of(4) {
                    input.u32() % 16
                } else {
                    input.pick(&existing)
                };
                let socket = (input.byte().is_multiple_of(2)).then(|| u64::from(input.byte() % 4));
                let got = e.apply(hid, &Request::RemoveSocketFromFlow { socket, flow_id });
                let want = if !m.handles.contains_key(&h) {
                    Err(E_HANDLE)
                } else {
                    match (
                        m.own(h, flow_id)
                            .map(|f| f.entries.iter().any(|x| Some(x.0) == socket)),
                        socket,
                    ) {
                        (Err(c), _) => Err(c),
                        (Ok(_), None) => {
                            m.flows.remove(&flow_id);
                            Ok(())
                        }
                        (Ok(false), Some(_)) => Err(E_NOT_FOUND),
                        (Ok(true), Some(s)) => {
                            let f = m.flows.get_mut(&flow_id).expect("own flow");
                            f.entries.retain(|x| x.0 != s);
                            if f.entries.is_empty() {
                                m.flows.remove(&flow_id);
                            }
                            Ok(())
                        }
                    }
                };
                assert_eq!(
                    code(&got),
                    want,
                    "step {step}: remove {socket:?} from {flow_id}"
                );
            }
            7..=9 => {
                let existing: Vec<FlowId> = m.flows.keys().copied().collect();
                let flow_id = if existing.is_empty() || input.byte().is_multiple_of(5) {
                    input.u32() % 16
                } else {
                    input.pick(&existing)
                };
                let which = input.byte() % 12;
                let (req, want): (Request, Result<Option<Mark>, u32>) = {
                    let base = if !m.handles.contains_key(&h) {
                        Err(E_HANDLE)
                    } else {
                        m.own(h, flow_id).map(|f| m.mark(f))
                    };
                    match which {
                        0 | 1 => {
                            let tt = traffic_type(&mut input);
                            if base.is_ok() {
                                m.flows.get_mut(&flow_id).expect("own").tt = tt;
                            }
                            (
                                Request::SetFlow {
                                    flow_id,
                                    op: SetFlow::TrafficType(tt),
                                },
                                base.map(|_| None),
                            )
                        }
                        2 | 3 => {
                            let v = if input.byte().is_multiple_of(4) {
                                input.u32()
                            } else {
                                u32::from(input.byte() % 70)
                            };
                            let want = base.and_then(|_| {
                                if v > 63 {
                                    return Err(E_PARAM);
                                }
                                let caller = m.handles[&h];
                                if !privileged(caller) && (m.table.user_dscp_allow >> v) & 1 == 0 {
                                    return Err(E_ACCESS);
                                }
                                m.flows.get_mut(&flow_id).expect("own").custom = Some(v as u8);
                                Ok(None)
                            });
                            (
                                Request::SetFlow {
                                    flow_id,
                                    op: SetFlow::OutgoingDscp(v),
                                },
                                want,
                            )
                        }
                        4 => {
                            let bandwidth = match input.byte() % 4 {
                                0 => u64::from(input.u32()),
                                1 => input.pick(&[
                                    0,
                                    11_999,
                                    12_000,
                                    100_000_000_000,
                                    100_000_000_001,
                                ]),
                                _ => 12_000 + u64::from(input.u32() % 10_000_000),
                            };
                            let shaping = input.pick(&[
                                Shaping::ShapeOnly,
                                Shaping::ShapeAndMark,
                                Shaping::UseNonConformantMarkings,
                            ]);
                            // 1168 first, then 87 outside 12 000..=10^11 bit/s (one 1500-byte
                            // packet per second .. 100 Gbit/s).
                            let want = base.and_then(|_| {
                                if !(12_000..=100_000_000_000).contains(&bandwidth) {
                                    return Err(E_PARAM);
                                }
                                m.flows.get_mut(&flow_id).expect("own").rate =
                                    Some((bandwidth, shaping));
                                Ok(None)
                            });
                            (
                                Request::SetFlow {
                                    flow_id,
                                    op: SetFlow::OutgoingRate(FlowRate {
                                        bandwidth,
                                        shaping,
                                        reason: 0,
                                    }),
                                },
                                want,
                            )
                        }
                        5 | 6 => (
                            Request::QueryFlow {
                                flow_id,
                                op: QueryFlow::PacketPriority,
                            },
                            base.map(Some),
                        ),
                        7 => {
                            let op =
                                input.pick(&[QueryFlow::Fundamentals, QueryFlow::OutgoingRate]);
                            let want = match op {
                                QueryFlow::OutgoingRate => {
                                    base.and_then(|_| match m.flows[&flow_id].rate {
                                        Some((bw, _)) => {
                                            assert_eq!(
                                                e.apply(hid, &Request::QueryFlow { flow_id, op }),
                                                Ok(Response::OutgoingRate(bw)),
                                                "step {step}"
                                            );
                                            Ok(None)
                                        }
                                        None => Err(E_NO_DATA),
                                    })
                                }
                                _ => base.and(Err(E_NOT_SUPPORTED)),
                            };
                            (Request::QueryFlow { flow_id, op }, want)
                        }
                        9 | 10 => {
                            // GQoS service mark: qos-api.md §11.4's defaults, written out.
                            let (service, default_dscp, default_pcp) = input.pick(&[
                                (ServiceType::ControlledLoad, 24u8, 4u8),
                                (ServiceType::Guaranteed, 40, 5),
                                (ServiceType::NetworkControl, 48, 7),
                                (ServiceType::Qualitative, 0, 0),
                            ]);
                            let dscp = match input.byte() % 4 {
                                0 => Some(default_dscp),
                                1 => Some(input.byte() % 64),
                                _ => None,
                            };
                            let pcp = match input.byte() % 4 {
                                0 => Some(default_pcp),
                                1 => Some(input.byte() % 8),
                                _ => None,
                            };
                            // An override other than the default: DSCP for administrators,
                            // kernel callers and allow-listed values; 802.1p for
                            // administrators and kernel callers; else 5.
                            let want = base.and_then(|_| {
                                let caller = m.handles[&h];
                                let d = dscp.unwrap_or(default_dscp);
                                let p = pcp.unwrap_or(default_pcp);
                                if d != default_dscp
                                    && !privileged(caller)
                                    && (m.table.user_dscp_allow >> d) & 1 == 0
                                {
                                    return Err(E_ACCESS);
                                }
                                if p != default_pcp && !privileged(caller) {
                                    return Err(E_ACCESS);
                                }
                                let f = m.flows.get_mut(&flow_id).expect("own");
                                f.custom = Some(d);
                                f.custom_pcp = Some(p);
                                Ok(None)
                            });
                            (
                                Request::SetFlow {
                                    flow_id,
                                    op: SetFlow::Service(ServiceMark {
                                        service,
                                        dscp: dscp.map(|d| Dscp::try_new(d).expect("below 64")),
                                        pcp: pcp.map(|p| Pcp::try_new(p).expect("below 8")),
                                    }),
                                },
                                want,
                            )
                        }
                        11 => {
                            // qosmark extension: the rate (if any) goes, the flow stays.
                            let want = base.map(|_| {
                                m.flows.get_mut(&flow_id).expect("own").rate = None;
                                None
                            });
                            (
                                Request::SetFlow {
                                    flow_id,
                                    op: SetFlow::ClearOutgoingRate,
                                },
                                want,
                            )
                        }
                        _ => {
                            let op = input.pick(&[
                                NotifyFlow::Congested,
                                NotifyFlow::Uncongested,
                                NotifyFlow::Available,
                            ]);
                            let threshold = (input.byte().is_multiple_of(2)).then_some(1_000_000);
                            let buffer_ok = (op == NotifyFlow::Available) == threshold.is_some();
                            (
                                Request::NotifyFlow {
                                    flow_id,
                                    op,
                                    threshold,
                                },
                                base.and(Err(if buffer_ok { E_NOT_SUPPORTED } else { E_PARAM })),
                            )
                        }
                    }
                };
                let got = e.apply(hid, &req);
                match (&want, &got) {
                    (Ok(Some(mark)), Ok(Response::PacketPriority(p))) => {
                        assert_eq!(
                            p.conformant_dscp,
                            mark.dscp.map_or(0, |d| u32::from(d.value())),
                            "step {step}"
                        );
                        assert_eq!(
                            p.conformant_l2,
                            mark.pcp.map_or(0, |d| u32::from(d.value())),
                            "step {step}"
                        );
                        // Non-conformant values only under QOSUseNonConformantMarkings: the
                        // table's DSCP, and its 802.1p when the flow requests 802.1p.
                        let nc = m.flows[&flow_id]
                            .rate
                            .is_some_and(|r| r.1 == Shaping::UseNonConformantMarkings);
                        let nc_dscp = if nc {
                            u32::from(m.table.non_conformant_dscp.value())
                        } else {
                            0
                        };
                        let nc_l2 = if nc && mark.pcp.is_some() {
                            u32::from(m.table.non_conformant_pcp.value())
                        } else {
                            0
                        };
                        assert_eq!(
                            (p.non_conformant_dscp, p.non_conformant_l2),
                            (nc_dscp, nc_l2),
                            "step {step}"
                        );
                    }
                    (Ok(None), Ok(Response::OutgoingRate(_))) => {}
                    _ => assert_eq!(code(&got), want.map(|_| ()), "step {step}: {req:?}"),
                }
            }
            10 if input.byte().is_multiple_of(2) => {
                let got = e.apply(hid, &Request::EnumerateFlows);
                match m.handles.get(&h) {
                    None => assert_eq!(code(&got), Err(E_HANDLE)),
                    Some(c) => assert_eq!(got, Ok(Response::FlowIds(m.visible(*c))), "step {step}"),
                }
            }
            10 => {
                // WatchFlow (GQoS FD_QOS): the state now, whatever state the caller says it
                // knows (holding the request is the back end's business).
                let existing: Vec<FlowId> = m.flows.keys().copied().collect();
                let flow_id = if existing.is_empty() || input.byte().is_multiple_of(4) {
                    input.u32() % 16
                } else {
                    input.pick(&existing)
                };
                let known = match (input.byte() % 3, m.handles.get(&h)) {
                    (0, _) | (_, None) => None,
                    (1, Some(c)) => Some(m.watch(*c, flow_id)),
                    (_, Some(_)) => Some(FlowState {
                        alive: true,
                        mark: Mark {
                            dscp: Some(Dscp::EF),
                            pcp: None,
                        },
                    }),
                };
                let got = e.apply(hid, &Request::WatchFlow { flow_id, known });
                match m.handles.get(&h) {
                    None => assert_eq!(code(&got), Err(E_HANDLE), "step {step}"),
                    Some(c) => assert_eq!(
                        got,
                        Ok(Response::FlowState(m.watch(*c, flow_id))),
                        "step {step}: watch {flow_id}"
                    ),
                }
            }
            11 => {
                let after = input.pick(&[0u32, 1, 2, 5]);
                let got = e.apply(hid, &Request::ListFlows { after });
                match (m.handles.get(&h), got) {
                    (None, got) => assert_eq!(code(&got), Err(E_HANDLE)),
                    (Some(c), Ok(Response::Flows(page))) => {
                        let want: Vec<FlowId> =
                            m.visible(*c).into_iter().filter(|id| *id > after).collect();
                        let ids: Vec<FlowId> = page.flows.iter().map(|f| f.id).collect();
                        assert_eq!(ids, want, "step {step}: list after {after}");
                        for f in &page.flows {
                            let mf = &m.flows[&f.id];
                            assert_eq!(f.mark, m.mark(mf), "step {step}: flow {}", f.id);
                            assert_eq!(f.sockets_total as usize, mf.entries.len(), "step {step}");
                            assert_eq!(
                                (f.traffic_type, f.adaptive, f.pid),
                                (mf.tt, mf.adaptive, mf.pid)
                            );
                        }
                    }
                    (Some(_), got) => panic!("step {step}: ListFlows {got:?}"),
                }
            }
            12 | 13 => {
                let which = input.byte() % 4;
                let spec = rule_spec(&mut input);
                let admin = m.handles.get(&h).map(|c| privileged(*c));
                let (req, want) = match which {
                    0 | 1 => {
                        let want = match admin {
                            None => Err(E_HANDLE),
                            Some(false) => Err(E_ACCESS),
                            Some(true) if m.rules.contains(&spec.name) => Err(E_EXISTS),
                            Some(true) if m.rules.len() >= LIMITS.max_rules => Err(E_RESOURCES),
                            Some(true) => {
                                m.rules.push(spec.name);
                                Ok(())
                            }
                        };
                        (Request::AddRule(spec), want)
                    }
                    2 => {
                        let want = match admin {
                            None => Err(E_HANDLE),
                            Some(false) => Err(E_ACCESS),
                            Some(true) => match m.rules.iter().position(|n| *n == spec.name) {
                                Some(i) => {
                                    m.rules.remove(i);
                                    Ok(())
                                }
                                None => Err(E_NOT_FOUND),
                            },
                        };
                        (Request::RemoveRule(spec.name), want)
                    }
                    _ => {
                        let n = usize::from(input.byte() % 5);
                        let specs: Vec<RuleSpec> = (0..n).map(|_| rule_spec(&mut input)).collect();
                        let mut names: Vec<RuleName> = specs.iter().map(|s| s.name).collect();
                        let want = match admin {
                            None => Err(E_HANDLE),
                            Some(false) => Err(E_ACCESS),
                            Some(true) if n > LIMITS.max_rules => Err(E_RESOURCES),
                            Some(true) => {
                                let mut sorted = names.clone();
                                sorted.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                                sorted.dedup();
                                if sorted.len() != names.len() {
                                    Err(E_EXISTS)
                                } else {
                                    m.rules = std::mem::take(&mut names);
                                    Ok(())
                                }
                            }
                        };
                        (Request::ReplaceRules(specs), want)
                    }
                };
                let got = e.apply(hid, &req);
                assert_eq!(code(&got), want, "step {step}: {req:?}");
            }
            14 => {
                let got = e.apply(hid, &Request::ListRules);
                match m.handles.get(&h).map(|c| privileged(*c)) {
                    None => assert_eq!(code(&got), Err(E_HANDLE)),
                    Some(false) => assert_eq!(code(&got), Err(E_ACCESS)),
                    Some(true) => match got {
                        Ok(Response::Rules(list)) => {
                            let names: Vec<RuleName> = list.iter().map(|r| r.spec.name).collect();
                            assert_eq!(names, m.rules, "step {step}");
                        }
                        other => panic!("step {step}: ListRules {other:?}"),
                    },
                }
            }
            15 => {
                let set = input.byte().is_multiple_of(2);
                let table = random_table(&mut input);
                let req = if set {
                    Request::SetTrafficTable(table)
                } else {
                    Request::GetTrafficTable
                };
                let got = e.apply(hid, &req);
                match (m.handles.get(&h).map(|c| privileged(*c)), set) {
                    (None, _) => assert_eq!(code(&got), Err(E_HANDLE)),
                    (Some(_), false) => {
                        assert_eq!(got, Ok(Response::TrafficTable(m.table)), "step {step}")
                    }
                    (Some(false), true) => assert_eq!(code(&got), Err(E_ACCESS)),
                    (Some(true), true) => {
                        assert_eq!(got, Ok(Response::Done));
                        m.table = table;
                    }
                }
            }
            16 => {
                let got = e.apply(hid, &Request::QueryStatus);
                match (m.handles.contains_key(&h), got) {
                    (false, got) => assert_eq!(code(&got), Err(E_HANDLE)),
                    (true, Ok(Response::Status(s))) => {
                        let want = (
                            m.handles.len(),
                            m.flows.len(),
                            m.all_entries(),
                            m.rules.len(),
                        );
                        assert_eq!(
                            (
                                s.handles as usize,
                                s.flows as usize,
                                s.sockets as usize,
                                s.rules as usize
                            ),
                            want,
                            "step {step}"
                        );
                    }
                    (true, got) => panic!("step {step}: QueryStatus {got:?}"),
                }
            }
            17 => {
                // The back end learned a TCP socket's local port (qos-api.md §5: add may come
                // before connect).
                let socket = u64::from(input.byte() % 4);
                let family = input.pick(&[Family::V4, Family::V6]);
                let local = local_pool(&mut input, family);
                let got = e.socket_bound(hid, socket, local);
                let local = unmap(local);
                let want: Result<usize, u32> = if !m.handles.contains_key(&h) {
                    Err(E_HANDLE)
                } else if local.port() == 0 {
                    Err(E_PARAM)
                } else {
                    let pinned: Vec<(FlowId, usize, MKey)> = m
                        .flows
                        .iter()
                        .filter(|(_, f)| f.handle == h)
                        .flat_map(|(id, f)| {
                            f.entries
                                .iter()
                                .enumerate()
                                .filter_map(move |(i, (s, k))| match *k {
                                    MKey::Unbound(_, ks, p, r) if ks == socket && *s == socket => {
                                        Some((
                                            *id,
                                            i,
                                            if local.ip().is_unspecified() {
                                                MKey::Any(p, local.port(), r)
                                            } else {
                                                MKey::Exact(p, local, r)
                                            },
                                        ))
                                    }
                                    _ => None,
                                })
                        })
                        .collect();
                    let family_ok = |k: &MKey| match k {
                        MKey::Exact(_, l, r) => l.is_ipv4() == r.is_ipv4(),
                        _ => true,
                    };
                    if !pinned.iter().all(|p| family_ok(&p.2)) {
                        Err(E_PARAM)
                    } else if pinned.iter().any(|p| m.holder(p.2).is_some()) {
                        Err(E_EXISTS)
                    } else {
                        for (id, i, k) in &pinned {
                            m.flows.get_mut(id).expect("flow").entries[*i].1 = *k;
                        }
                        Ok(pinned.len())
                    }
                };
                assert_eq!(
                    got.map_err(|e| e.win32().0),
                    want,
                    "step {step}: socket_bound {socket} {local}"
                );
            }
            _ => {
                // Classify the packet of a registered entry; it gets its flow's mark, which
                // the rewrite writes, after which the packet counts as already marked.
                let live: Vec<(FlowId, MKey)> = m
                    .flows
                    .iter()
                    .flat_map(|(id, f)| f.entries.iter().map(move |e| (*id, e.1)))
                    .filter(|(_, k)| packet_of(*k).is_some())
                    .collect();
                if live.is_empty() {
                    continue;
                }
                let (id, key) = input.pick(&live);
                let (proto, local, remote) = packet_of(key).expect("bound");
                let mut p = packet(proto, local, remote);
                // Exact entries win over any-address ones (the engine's tier order).
                let owner = live
                    .iter()
                    .find(|(_, k)| {
                        matches!(k, MKey::Exact(..))
                            && packet_of(*k) == Some((proto, local, remote))
                    })
                    .map_or(id, |(fid, _)| *fid);
                let mark = m.mark(&m.flows[&owner]);
                let meta = PacketMeta::default();
                let v = e.classify(&p, &meta, step);
                if let Some((_, shaping)) = m.flows[&owner].rate {
                    // A shaped flow: the shaper may hold the packet (with the conformant mark
                    // when shaping, either mark when marking non-conformant packets) or send it
                    // with either mark; its room goes back at once (no queue here). The shaper
                    // itself is checked against a reference in engine/tests/shaper_*.rs.
                    let nc = qosmark_engine::traffic::non_conformant_mark(&m.table, mark);
                    let held = match v {
                        Verdict::Delay {
                            mark: dm, shaper, ..
                        } => {
                            assert!(e.shaper_live(shaper), "step {step}");
                            assert!(
                                dm == mark
                                    || (shaping == Shaping::UseNonConformantMarkings && dm == nc),
                                "step {step}: {v:?}"
                            );
                            e.shaper_released(shaper, qosmark_engine::shaper::held_bytes(&p));
                            true
                        }
                        _ => false,
                    };
                    assert!(
                        held || matches!(
                            v,
                            Verdict::Mark(_)
                                | Verdict::AlreadyMarked
                                | Verdict::Skip(SkipReason::NoMarkConfigured)
                        ),
                        "step {step}: {v:?}"
                    );
                    continue;
                }
                if mark.dscp.is_none() && mark.pcp.is_none() {
                    assert_eq!(
                        v,
                        Verdict::Skip(SkipReason::NoMarkConfigured),
                        "step {step}"
                    );
                } else if mark.dscp.is_none_or(|d| d.value() == 0) && mark.pcp.is_none() {
                    assert_eq!(v, Verdict::AlreadyMarked, "step {step}");
                } else {
                    assert_eq!(v, Verdict::Mark(mark), "step {step}: {key:?}");
                    let _ = Engine::rewrite(&mut p, mark).expect("rewritable");
                    if mark.pcp.is_none() {
                        assert_eq!(
                            e.classify(&p, &meta, step),
                            Verdict::AlreadyMarked,
                            "step {step}"
                        );
                    }
                }
            }
        }
        e.check_control_invariants().expect("engine invariants");
    }
}
