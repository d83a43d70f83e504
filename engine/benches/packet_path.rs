//! Criterion benchmarks of the per-packet path: `Engine::classify` + `Engine::rewrite`, side by
//! side with the rewrite-only baseline (`wire::set_dscp` on the same packets: the checked header
//! view, the DSCP write and the IPv4 checksum — the floor any marker pays).
//!
//! `cargo bench -p qosmark-engine --bench packet_path` (see BENCHMARKS.md for the settings and
//! the figures). Every case runs a batch of [`BATCH`] packets per iteration; criterion reports
//! the time per packet (throughput in elements).
//!
//! ## Cases
//! * `flows/<n>/<kind>/<class>`: `n` ∈ {1, 1000, 100000} registered socket entries of the
//!   packet's kind (IPv4/IPv6 × TCP/UDP), no rules. Up to 65 536 entries are one-socket flows;
//!   above that (the engine caps flows at 65 536, the size of one `EnumerateFlows` answer) the
//!   entries are spread two per non-adaptive flow, so 100 000 entries = 50 000 flows.
//! * `rules/<r>/<kind>/<class>`: `r` ∈ {1, 100, 1000} admin rules, no socket flows.
//! * `class`: `marked` (the packet matches and needs the rewrite), `already` (it already carries
//!   the mark: classify says `AlreadyMarked`, nothing is written), `unmatched` (no flow, no rule).
//! * `shaped/1000/<kind>/<shaping>`: 1 000 flows as above, each with an outgoing rate
//!   (`QOSSetOutgoingRate`, issue 7): `conformant` (1 Gbit/s, far above the offered load:
//!   `Verdict::Mark`), `delayed` (`QOSShapeOnly` at 12 kbit/s: `Verdict::Delay`, the bucket
//!   arithmetic and the queue-room reservation; the harness returns the room at once with
//!   `shaper_released`, as a back end does when it sends the packet), `nonconformant`
//!   (`QOSUseNonConformantMarkings` at 12 kbit/s: the excess gets the non-conformant mark).
//!   The clock advances 1 ms per packet for `conformant` and 1 µs for the other two; setup
//!   checks that every packet of a second pass takes the named path.
//!
//! Each case has two functions: `engine` (classify, then rewrite when told to) and `baseline`
//! (`set_dscp` with the DSCP the engine would write, or EF for unmatched packets).
//!
//! ## Realistic packets
//! The 5-tuples are varied: flows get pseudo-random local ports and remote addresses and
//! ports (a fixed-seed xorshift, so runs are comparable), and each batch holds [`BATCH`]
//! packets of randomly chosen flows in random order, each packet its own heap buffer. At
//! 100 000 entries the flow tables (several MB) do not fit the caches, so lookups miss. Rules
//! are drawn from four shapes per address family (host + port, subnet, wider subnet + port
//! range, local port range) with random precedences, as an administrator's list would mix them.
//!
//! Setup checks every packet's verdict before measuring, so a case cannot silently measure
//! the wrong path.
//!
//! ## Instruction counts (load-independent)
//! With `QOSMARK_BENCH_COUNT=<case>` (e.g. `flows/100000/v4-udp/marked`) the binary runs that
//! case's `engine` and `baseline` loops [`COUNT_ROUNDS`] times without criterion, for
//! `valgrind --tool=callgrind --toggle-collect=*run_engine* ...` (see BENCHMARKS.md).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::missing_panics_doc,
    reason = "benchmark harness: inputs are built here, a panic is a broken benchmark"
)]

use core::cell::Cell;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use criterion::{black_box, BatchSize, Criterion, Throughput};
use qosmark_engine::abi::{
    heapless_name::RuleName, Caller, Dscp, Family, FlowRate, Mark, PortRange, Prefix, Privilege,
    Protocol, Request, Response, RuleAction, RuleProtocol, RuleSpec, SetFlow, Shaping, SkipReason,
    SocketInfo, TrafficType, QOS_NON_ADAPTIVE_FLOW,
};
use qosmark_engine::{wire, Engine, Limits, PacketMeta, Verdict};
use std::time::Duration;

/// Packets per measured iteration.
const BATCH: usize = 1024;
/// Rounds of the callgrind mode.
const COUNT_ROUNDS: usize = 20;
/// Socket-entry counts.
const FLOW_COUNTS: [usize; 3] = [1, 1_000, 100_000];
/// Rule counts.
const RULE_COUNTS: [usize; 3] = [1, 100, 1_000];

/// xorshift64*: deterministic pseudo-random numbers for the inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn port(&mut self) -> u16 {
        1024 + (self.next() % 60_000) as u16
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    V4Tcp,
    V4Udp,
    V6Tcp,
    V6Udp,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::V4Tcp, Kind::V4Udp, Kind::V6Tcp, Kind::V6Udp];
    fn name(self) -> &'static str {
        match self {
            Kind::V4Tcp => "v4-tcp",
            Kind::V4Udp => "v4-udp",
            Kind::V6Tcp => "v6-tcp",
            Kind::V6Udp => "v6-udp",
        }
    }
    fn v6(self) -> bool {
        matches!(self, Kind::V6Tcp | Kind::V6Udp)
    }
    fn protocol(self) -> Protocol {
        match self {
            Kind::V4Tcp | Kind::V6Tcp => Protocol::Tcp,
            Kind::V4Udp | Kind::V6Udp => Protocol::Udp,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Marked,
    Already,
    Unmatched,
}

impl Class {
    const ALL: [Class; 3] = [Class::Marked, Class::Already, Class::Unmatched];
    fn name(self) -> &'static str {
        match self {
            Class::Marked => "marked",
            Class::Already => "already",
            Class::Unmatched => "unmatched",
        }
    }
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An outbound packet `local` → `remote` with DSCP 0 (ECN 01): IPv4 20 + TCP 20 / UDP 8 +
/// 64 payload bytes; IPv6 40 + the same.
fn packet(protocol: Protocol, local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
    let (proto, l4_len) = match protocol {
        Protocol::Tcp => (6u8, 20usize),
        Protocol::Udp => (17u8, 8usize),
    };
    let payload = 64;
    let mut l4 = vec![0u8; l4_len + payload];
    l4[0..2].copy_from_slice(&local.port().to_be_bytes());
    l4[2..4].copy_from_slice(&remote.port().to_be_bytes());
    if protocol == Protocol::Tcp {
        l4[12] = 0x50; // data offset 5
        l4[13] = 0x18; // PSH ACK
    } else {
        l4[4..6].copy_from_slice(&((l4_len + payload) as u16).to_be_bytes());
    }
    for (i, b) in l4[l4_len..].iter_mut().enumerate() {
        *b = i as u8;
    }
    match (local.ip(), remote.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = 20 + l4.len();
            let mut p = vec![0u8; 20];
            p[0] = 0x45;
            p[1] = 0x01;
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p[6] = 0x40; // DF
            p[8] = 64;
            p[9] = proto;
            p[12..16].copy_from_slice(&s.octets());
            p[16..20].copy_from_slice(&d.octets());
            let c = checksum(&p);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            p.extend_from_slice(&l4);
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut p = vec![0u8; 40];
            p[0] = 0x60;
            p[1] = 0x10; // ECN 01
            p[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
            p[6] = proto;
            p[7] = 64;
            p[8..24].copy_from_slice(&s.octets());
            p[24..40].copy_from_slice(&d.octets());
            p.extend_from_slice(&l4);
            p
        }
        _ => panic!("mixed families"),
    }
}

fn v4(rng: &mut Rng, net: [u8; 2]) -> IpAddr {
    let r = rng.next();
    IpAddr::V4(Ipv4Addr::new(net[0], net[1], (r >> 8) as u8, r as u8))
}

fn v6(rng: &mut Rng, net: u16) -> IpAddr {
    let r = rng.next();
    IpAddr::V6(Ipv6Addr::new(
        0x2001,
        0x0db8,
        net,
        (r >> 48) as u16,
        0,
        0,
        (r >> 16) as u16,
        r as u16,
    ))
}

/// The host's own address for `kind`.
fn local_ip(kind: Kind) -> IpAddr {
    if kind.v6() {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
    }
}

/// A remote address of `kind` from the flows' space (`198.18.0.0/16`, `2001:db8:1::/48`).
fn flow_remote(rng: &mut Rng, kind: Kind) -> IpAddr {
    if kind.v6() {
        v6(rng, 1)
    } else {
        v4(rng, [198, 18])
    }
}

/// A remote address nobody registered and no rule covers (`203.0.0.0/16`,
/// `2001:db8:dead::/48`).
fn stranger(rng: &mut Rng, kind: Kind) -> IpAddr {
    if kind.v6() {
        v6(rng, 0xdead)
    } else {
        v4(rng, [203, 0])
    }
}

/// One measured case: the engine and the packets, with the DSCP the baseline writes.
struct Case {
    engine: Engine,
    packets: Vec<Vec<u8>>,
    target: Vec<Dscp>,
}

fn big_limits() -> Limits {
    Limits {
        max_handles: 16,
        max_flows: 65_536,
        max_flows_per_handle: 65_536,
        max_sockets: 200_000,
        max_sockets_per_handle: 200_000,
        max_rules: 4096,
        fragment_slots: 1024,
        ..Limits::default()
    }
}

const USER: Caller = Caller {
    pid: 100,
    privilege: Privilege::User,
};
const ADMIN: Caller = Caller {
    pid: 1,
    privilege: Privilege::Admin,
};

/// An engine with `n` socket entries of `kind` (connected sockets, Voice, non-adaptive:
/// DSCP 56, no 802.1p) and the 5-tuples registered.
fn engine_with_flows(
    n: usize,
    kind: Kind,
    rng: &mut Rng,
) -> (Engine, Vec<(SocketAddr, SocketAddr)>) {
    let mut e = Engine::new(big_limits());
    let h = e.open_handle(USER).unwrap();
    let per_flow = if n > 65_536 { 2 } else { 1 };
    let mut tuples = Vec::with_capacity(n);
    let mut flow = 0;
    let mut i = 0u64;
    while tuples.len() < n {
        let local = SocketAddr::new(local_ip(kind), rng.port());
        let remote = SocketAddr::new(flow_remote(rng, kind), rng.port());
        let req = Request::AddSocketToFlow {
            socket: SocketInfo {
                socket: i,
                family: if kind.v6() { Family::V6 } else { Family::V4 },
                protocol: kind.protocol(),
                local,
                peer: Some(remote),
            },
            dest: None,
            traffic_type: TrafficType::Voice,
            flags: QOS_NON_ADAPTIVE_FLOW,
            flow_id: if tuples.len() % per_flow == 0 {
                0
            } else {
                flow
            },
        };
        i += 1;
        match e.apply(h, &req) {
            Ok(Response::FlowId(id)) => {
                flow = id;
                tuples.push((local, remote));
            }
            // A random 5-tuple drawn twice: draw again.
            Err(qosmark_engine::EngineError::AlreadyExists) => {}
            other => panic!("registration failed: {other:?}"),
        }
    }
    (e, tuples)
}

fn name(i: usize) -> RuleName {
    RuleName::try_new(&format!("rule-{i}")).unwrap()
}

/// Rule `i` of a realistic list for `kind`'s family: four shapes in turn.
fn rule(i: usize, kind: Kind, rng: &mut Rng) -> RuleSpec {
    let precedence = (rng.next() % 256) as u8;
    let action = RuleAction::Dscp(Dscp::try_new([46, 34, 26, 18, 10][i % 5]).unwrap());
    let mut spec = RuleSpec {
        name: name(i),
        precedence,
        protocol: RuleProtocol::Any,
        local_prefix: None,
        remote_prefix: None,
        local_ports: None,
        remote_ports: None,
        action,
        pcp: None,
        throttle_bps: None,
    };
    let host = flow_remote(rng, kind);
    let port = rng.port();
    let prefix = |addr: IpAddr, len4: u8, len6: u8| {
        let len = if kind.v6() { len6 } else { len4 };
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(
                u32::from(a) & (u32::MAX << (32 - u32::from(len))),
            )),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(
                u128::from(a) & (u128::MAX << (128 - u32::from(len))),
            )),
        };
        Some(Prefix { addr, len })
    };
    match i % 4 {
        0 => {
            spec.protocol = if i % 8 == 0 {
                RuleProtocol::Udp
            } else {
                RuleProtocol::Any
            };
            spec.remote_prefix = prefix(host, 32, 128);
            spec.remote_ports = Some(PortRange {
                first: port,
                last: port,
            });
        }
        1 => spec.remote_prefix = prefix(host, 24, 64),
        2 => {
            spec.remote_prefix = prefix(host, 20, 56);
            let first = port.min(60_000);
            spec.remote_ports = Some(PortRange {
                first,
                last: first + 99,
            });
        }
        _ => {
            // Local port ranges sit below 1024, where the packets' ephemeral ports never are.
            let first = (i % 1000) as u16;
            spec.local_ports = Some(PortRange {
                first,
                last: first + 1,
            });
        }
    }
    if matches!(spec.protocol, RuleProtocol::Udp) && kind.protocol() == Protocol::Tcp {
        spec.protocol = RuleProtocol::Any;
    }
    spec
}

/// A 5-tuple of `kind` that `spec` matches.
fn tuple_for(spec: &RuleSpec, kind: Kind, rng: &mut Rng) -> (SocketAddr, SocketAddr) {
    let mut local_port = rng.port();
    if let Some(r) = spec.local_ports {
        local_port = r.first + (rng.next() % u64::from(r.last - r.first + 1)) as u16;
    }
    let mut remote_port = rng.port();
    if let Some(r) = spec.remote_ports {
        remote_port = r.first + (rng.next() % u64::from(r.last - r.first + 1)) as u16;
    }
    let remote_ip = match spec.remote_prefix {
        None => flow_remote(rng, kind),
        Some(p) => match p.addr {
            IpAddr::V4(a) => {
                let host_bits = if p.len == 32 {
                    0
                } else {
                    (rng.next() as u32) & (u32::MAX >> p.len)
                };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) | host_bits))
            }
            IpAddr::V6(a) => {
                let host_bits = if p.len == 128 {
                    0
                } else {
                    u128::from(rng.next()) & (u128::MAX >> p.len)
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) | host_bits))
            }
        },
    };
    (
        SocketAddr::new(local_ip(kind), local_port),
        SocketAddr::new(remote_ip, remote_port),
    )
}

fn engine_with_rules(r: usize, kind: Kind, rng: &mut Rng) -> (Engine, Vec<RuleSpec>) {
    let mut e = Engine::new(big_limits());
    let h = e.open_handle(ADMIN).unwrap();
    let mut specs = Vec::with_capacity(r);
    for i in 0..r {
        let spec = rule(i, kind, rng);
        e.apply(h, &Request::AddRule(spec.clone())).unwrap();
        specs.push(spec);
    }
    (e, specs)
}

/// Builds the batch of `class` packets from `pick` (a matching 5-tuple per call) and checks
/// every verdict.
fn finish_case(
    engine: Engine,
    kind: Kind,
    class: Class,
    rng: &mut Rng,
    mut pick: impl FnMut(&mut Rng) -> (SocketAddr, SocketAddr),
) -> Case {
    let meta = PacketMeta::default();
    let mut packets = Vec::with_capacity(BATCH);
    let mut target = Vec::with_capacity(BATCH);
    while packets.len() < BATCH {
        let (local, remote) = if class == Class::Unmatched {
            (
                SocketAddr::new(local_ip(kind), rng.port()),
                SocketAddr::new(stranger(rng, kind), rng.port()),
            )
        } else {
            pick(rng)
        };
        let mut p = packet(kind.protocol(), local, remote);
        match (class, engine.classify(&p, &meta, 0)) {
            (Class::Unmatched, Verdict::Skip(SkipReason::NoMatch)) => target.push(Dscp::EF),
            (Class::Marked, Verdict::Mark(Mark { dscp: Some(d), .. })) => target.push(d),
            (Class::Already, Verdict::Mark(m @ Mark { dscp: Some(d), .. })) => {
                let _ = Engine::rewrite(&mut p, m).unwrap();
                assert_eq!(engine.classify(&p, &meta, 0), Verdict::AlreadyMarked);
                target.push(d);
            }
            (c, v) => panic!("{kind:?} {c:?}: unexpected verdict {v:?}"),
        }
        packets.push(p);
    }
    Case {
        engine,
        packets,
        target,
    }
}

fn flows_case(n: usize, kind: Kind, class: Class) -> Case {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (n as u64) << 8 ^ kind as u64);
    let (engine, tuples) = engine_with_flows(n, kind, &mut rng);
    finish_case(engine, kind, class, &mut rng, |rng| {
        tuples[rng.below(tuples.len())]
    })
}

fn rules_case(r: usize, kind: Kind, class: Class) -> Case {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ (r as u64) << 8 ^ kind as u64);
    let (engine, specs) = engine_with_rules(r, kind, &mut rng);
    finish_case(engine, kind, class, &mut rng, |rng| {
        let spec = &specs[rng.below(specs.len())];
        tuple_for(spec, kind, rng)
    })
}

/// How a shaped case's flows are shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Conformant,
    Delayed,
    NonConformant,
}

impl Shape {
    const ALL: [Shape; 3] = [Shape::Conformant, Shape::Delayed, Shape::NonConformant];
    fn name(self) -> &'static str {
        match self {
            Shape::Conformant => "conformant",
            Shape::Delayed => "delayed",
            Shape::NonConformant => "nonconformant",
        }
    }
    /// Rate (bit/s), shaping, and the fake clock's step per packet (ns).
    fn setting(self) -> (u64, Shaping, u64) {
        match self {
            Shape::Conformant => (1_000_000_000, Shaping::ShapeOnly, 1_000_000),
            Shape::Delayed => (12_000, Shaping::ShapeOnly, 1_000),
            Shape::NonConformant => (12_000, Shaping::UseNonConformantMarkings, 1_000),
        }
    }
}

/// A case of rate-limited flows: the engine, the packets, the DSCP the engine writes, and the
/// fake clock (ns) the measured loop advances.
struct ShapedCase {
    case: Case,
    step_ns: u64,
    clock: Cell<u64>,
}

/// 1 000 Voice flows of `kind`, each with the rate of `shape`.
fn shaped_case(kind: Kind, shape: Shape) -> ShapedCase {
    let mut rng = Rng(0x51_7cc1_b727_220a ^ kind as u64 ^ (shape as u64) << 4);
    let (mut engine, tuples) = engine_with_flows(1_000, kind, &mut rng);
    let (bandwidth, shaping, step_ns) = shape.setting();
    let h = engine.handle_details().unwrap()[0].id;
    // The excess gets CS1, so that its mark is written too (DSCP 0 on these TOS-0 packets
    // would be `AlreadyMarked`).
    let cs1 = Dscp::try_new(8).unwrap();
    let admin = engine.open_handle(ADMIN).unwrap();
    let mut table = qosmark_engine::traffic::default_table();
    table.non_conformant_dscp = cs1;
    assert_eq!(
        engine.apply(admin, &Request::SetTrafficTable(table)),
        Ok(Response::Done)
    );
    for f in engine.flow_details().unwrap() {
        let rate = Request::SetFlow {
            flow_id: f.id,
            op: SetFlow::OutgoingRate(FlowRate {
                bandwidth,
                shaping,
                reason: 0,
            }),
        };
        assert_eq!(engine.apply(h, &rate), Ok(Response::Done));
    }
    let mut packets = Vec::with_capacity(BATCH);
    while packets.len() < BATCH {
        let (local, remote) = tuples[rng.below(tuples.len())];
        packets.push(packet(kind.protocol(), local, remote));
    }
    let case = ShapedCase {
        case: Case {
            engine,
            target: vec![
                if shape == Shape::NonConformant {
                    cs1
                } else {
                    Dscp::try_new(56).unwrap()
                };
                BATCH
            ],
            packets,
        },
        step_ns,
        clock: Cell::new(0),
    };
    // A flow's bucket starts with one 1 500-byte packet of credit (≈ 16 of these packets):
    // 20 passes use it up, then every packet of a check pass must take the named path (under
    // `QOSUseNonConformantMarkings` a packet conforms again now and then as the clock catches
    // up: at least 95 % non-conformant).
    let nc = Mark {
        dscp: Some(cs1),
        pcp: None,
    };
    let meta = PacketMeta::default();
    let mut nonconformant = 0;
    for pass in 0..=20 {
        for p in &case.case.packets {
            let now = case.clock.get() + case.step_ns;
            case.clock.set(now);
            let v = case.case.engine.classify(p, &meta, now);
            if let Verdict::Delay { shaper, .. } = v {
                case.case
                    .engine
                    .shaper_released(shaper, qosmark_engine::shaper::held_bytes(p));
            }
            if pass < 20 {
                continue;
            }
            let voice = Verdict::Mark(Mark {
                dscp: Some(Dscp::try_new(56).unwrap()),
                pcp: None,
            });
            let ok = match shape {
                Shape::Conformant => v == voice,
                Shape::Delayed => matches!(v, Verdict::Delay { .. }),
                Shape::NonConformant => {
                    nonconformant += usize::from(v == Verdict::Mark(nc));
                    v == Verdict::Mark(nc) || v == voice
                }
            };
            assert!(ok, "{kind:?} {shape:?}: unexpected verdict {v:?}");
        }
    }
    if shape == Shape::NonConformant {
        assert!(
            nonconformant * 100 >= BATCH * 95,
            "{nonconformant} of {BATCH}"
        );
    }
    case
}

/// The measured shaped path: classify at the case's clock, rewrite with the verdict's mark
/// (held or not), return a held packet's queue room at once.
#[inline(never)]
fn run_shaped(case: &ShapedCase, packets: &mut [Vec<u8>]) -> usize {
    let meta = PacketMeta::default();
    let engine = &case.case.engine;
    let mut changed = 0;
    for p in packets.iter_mut() {
        let now = case.clock.get() + case.step_ns;
        case.clock.set(now);
        let mark = match engine.classify(p, &meta, now) {
            Verdict::Mark(m) => m,
            Verdict::Delay { mark, shaper, .. } => {
                engine.shaper_released(shaper, qosmark_engine::shaper::held_bytes(p));
                mark
            }
            _ => continue,
        };
        if Engine::rewrite(p, mark) == Ok(wire::Rewrite::Changed) {
            changed += 1;
        }
    }
    changed
}

fn measure_shaped(c: &mut Criterion, id: &str, case: &ShapedCase) {
    let mut group = c.benchmark_group(id);
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("engine", |b| {
        b.iter_batched_ref(
            || case.case.packets.clone(),
            |p| black_box(run_shaped(case, p)),
            BatchSize::SmallInput,
        );
    });
    group.bench_function("baseline", |b| {
        b.iter_batched_ref(
            || case.case.packets.clone(),
            |p| black_box(run_baseline(p, &case.case.target)),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

/// The measured packet path: classify, rewrite when told to.
#[inline(never)]
fn run_engine(engine: &Engine, packets: &mut [Vec<u8>]) -> usize {
    let meta = PacketMeta::default();
    let mut changed = 0;
    for p in packets.iter_mut() {
        if let Verdict::Mark(m) = engine.classify(p, &meta, 0) {
            if Engine::rewrite(p, m) == Ok(wire::Rewrite::Changed) {
                changed += 1;
            }
        }
    }
    changed
}

/// The baseline: only the DSCP rewrite (checked header, write, IPv4 checksum) of the same
/// packets.
#[inline(never)]
fn run_baseline(packets: &mut [Vec<u8>], target: &[Dscp]) -> usize {
    let mut changed = 0;
    for (p, d) in packets.iter_mut().zip(target) {
        if wire::set_dscp(p, *d) == Ok(wire::Rewrite::Changed) {
            changed += 1;
        }
    }
    changed
}

fn measure(c: &mut Criterion, id: &str, case: &Case) {
    let mut group = c.benchmark_group(id);
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("engine", |b| {
        b.iter_batched_ref(
            || case.packets.clone(),
            |p| black_box(run_engine(&case.engine, p)),
            BatchSize::SmallInput,
        );
    });
    group.bench_function("baseline", |b| {
        b.iter_batched_ref(
            || case.packets.clone(),
            |p| black_box(run_baseline(p, &case.target)),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

/// Every case id with its builder.
fn cases() -> Vec<(String, Box<dyn Fn() -> Case>)> {
    let mut out: Vec<(String, Box<dyn Fn() -> Case>)> = Vec::new();
    for n in FLOW_COUNTS {
        for kind in Kind::ALL {
            for class in Class::ALL {
                out.push((
                    format!("flows/{n}/{}/{}", kind.name(), class.name()),
                    Box::new(move || flows_case(n, kind, class)),
                ));
            }
        }
    }
    for r in RULE_COUNTS {
        for kind in Kind::ALL {
            for class in Class::ALL {
                out.push((
                    format!("rules/{r}/{}/{}", kind.name(), class.name()),
                    Box::new(move || rules_case(r, kind, class)),
                ));
            }
        }
    }
    out
}

/// Callgrind mode: run one case's loops a fixed number of times.
fn count(id: &str) {
    for kind in [Kind::V4Udp, Kind::V6Udp] {
        for shape in Shape::ALL {
            if id == format!("shaped/1000/{}/{}", kind.name(), shape.name()) {
                let case = shaped_case(kind, shape);
                let mut total = 0;
                for _ in 0..COUNT_ROUNDS {
                    let mut p = case.case.packets.clone();
                    total += run_shaped(&case, &mut p);
                    let mut p = case.case.packets.clone();
                    total += run_baseline(&mut p, &case.case.target);
                }
                println!("{id}: {COUNT_ROUNDS} rounds x {BATCH} packets, {total} rewrites");
                return;
            }
        }
    }
    let (_, build) = cases()
        .into_iter()
        .find(|(name, _)| name == id)
        .unwrap_or_else(|| panic!("no case {id}"));
    let case = build();
    let mut total = 0;
    for _ in 0..COUNT_ROUNDS {
        let mut p = case.packets.clone();
        total += run_engine(&case.engine, &mut p);
        let mut p = case.packets.clone();
        total += run_baseline(&mut p, &case.target);
    }
    println!("{id}: {COUNT_ROUNDS} rounds x {BATCH} packets, {total} rewrites");
}

fn main() {
    if let Ok(id) = std::env::var("QOSMARK_BENCH_COUNT") {
        count(&id);
        return;
    }
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    for (id, build) in cases() {
        // Skip building cases the command-line filter excludes (100 000 flows take a while).
        if !filter_matches(&id) {
            continue;
        }
        let case = build();
        measure(&mut c, &id, &case);
    }
    for kind in [Kind::V4Udp, Kind::V6Udp] {
        for shape in Shape::ALL {
            let id = format!("shaped/1000/{}/{}", kind.name(), shape.name());
            if filter_matches(&id) {
                measure_shaped(&mut c, &id, &shaped_case(kind, shape));
            }
        }
    }
    c.final_summary();
}

/// Whether criterion's filter (the first argument that is neither an option nor an option's
/// value; treated here as a substring) selects `id`. Without one, everything runs.
fn filter_matches(id: &str) -> bool {
    const WITH_VALUE: [&str; 14] = [
        "--measurement-time",
        "--warm-up-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--load-baseline",
        "--output-format",
        "--color",
        "--profile-time",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--nresamples",
        "--plotting-backend",
    ];
    let mut args = std::env::args().skip(1);
    let mut filter = None;
    while let Some(a) = args.next() {
        if WITH_VALUE.contains(&a.as_str()) {
            args.next();
        } else if !a.starts_with('-') {
            filter = Some(a);
            break;
        }
    }
    filter.is_none_or(|f| id.contains(&f))
}
