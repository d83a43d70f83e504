//! Conformance of the shaper (issue 7) through the public packet path: `Engine::classify` on a
//! flow with a rate, a back end simulated with `HeldQueue` (it releases what is due before
//! each packet and gives the room back with `Engine::shaper_released`).
//!
//! The oracle is a separate **token-bucket simulation** written here in exact integer
//! arithmetic — a level in bit·nanoseconds that refills at `rate` per nanosecond, is capped at
//! one 1 500-byte packet, lets a packet go whenever it is not negative (FIFO) and then takes
//! its bits — not the engine's GCRA recurrence. With rates that divide 8 · 10⁹ (so a packet time
//! is a whole number of nanoseconds) the two must agree to the nanosecond; with any other rate
//! the engine rounds each packet time up, so it may be later by at most one nanosecond per
//! packet and earlier by at most one (the rounded-up depth).
//!
//! Covered: synthetic arrival sequences (burst, steady at the rate, idle then burst, mixed
//! sizes) for all three `QOS_SHAPING` values; the documented delay guarantee (a J-early flow
//! waits at most max(0, J − τ), tight); departure order per shaper and `HeldQueue` release
//! order; queue limits (packets, bytes, global) failing open and counted; rate validation;
//! shaper lifetime (flow removal, handle close); several CPUs on one shaper; proptests over
//! arbitrary sequences against the oracle.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::too_many_lines,
    reason = "test code: a panic is a failed test; values are small and checked by the test"
)]
#![allow(
    clippy::many_single_char_names,
    reason = "tests read best with short names: e engine, w world, h handle, q queue, p packet"
)]

use proptest::prelude::*;
use qosmark_engine::abi::{
    Caller, Dscp, FailOpen, Family, FlowRate, Mark, Pcp, Privilege, Protocol, QueryFlow, Request,
    Response, SetFlow, Shaping, SocketInfo, StatusInfo, TrafficType,
};
use qosmark_engine::shaper::{depth_ns, held_bytes, HeldQueue};
use qosmark_engine::{Engine, EngineError, HandleId, Limits, PacketMeta, ShaperId, Verdict};

const USER: Caller = Caller {
    pid: 100,
    privilege: Privilege::User,
};
const ADMIN: Caller = Caller {
    pid: 1,
    privilege: Privilege::Admin,
};
const MS: u64 = 1_000_000;
/// A start time far from 0, so "idle since boot" is not a special case.
const T0: u64 = 5_000 * MS;

// ------------------------------------------------------------------------- the oracle

/// What the oracle (or the engine) did with one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Sent at this time (ns) — at arrival, or later when held.
    Sent { at: u64, conformant: bool },
    /// Should have been held, but the queue was full: sent at arrival, bucket untouched.
    NoRoom,
}

/// Token bucket, FIFO, in exact integers: `level` in bit·ns (bits × 10⁹), refilled by `rate`
/// per ns, capped at 1 500 bytes; a packet may go when `level >= 0`, then `level -= bits·10⁹`.
struct Oracle {
    rate: u128,
    cap: i128,
    level: i128,
    at: u64,
    shape: bool,
    max_packets: usize,
    max_bytes: u64,
    /// Departure times and sizes of packets held at the last arrival.
    held: Vec<(u64, u64)>,
}

impl Oracle {
    fn new(rate: u64, shape: bool, max_packets: usize, max_bytes: u64) -> Self {
        let cap = 1500 * 8 * 1_000_000_000;
        Oracle {
            rate: u128::from(rate),
            cap,
            level: cap,
            at: 0,
            shape,
            max_packets,
            max_bytes,
            held: Vec::new(),
        }
    }

    fn level_at(&self, t: u64) -> i128 {
        let refill = (self.rate * u128::from(t - self.at)) as i128;
        (self.level + refill).min(self.cap)
    }

    fn packet(&mut self, t: u64, bytes: u64) -> Fate {
        // The back end releases everything due at `t` before the packet arrives.
        self.held.retain(|&(d, _)| d > t);
        let cost = i128::from(bytes) * 8 * 1_000_000_000;
        let start = t.max(self.at);
        let level = self.level_at(start);
        if !self.shape {
            // Policer: not in debt → conformant, takes its bits; else marked, takes nothing.
            if level >= 0 {
                self.level = level - cost;
                self.at = start;
                return Fate::Sent {
                    at: t,
                    conformant: true,
                };
            }
            return Fate::Sent {
                at: t,
                conformant: false,
            };
        }
        let wait = if level >= 0 {
            0
        } else {
            // Smallest whole ns at which the level is back to 0.
            (((-level) as u128).div_ceil(self.rate)) as u64
        };
        let depart = start + wait;
        if depart > t {
            let bytes_held: u64 = self.held.iter().map(|h| h.1).sum();
            if self.held.len() >= self.max_packets || bytes_held + bytes > self.max_bytes {
                return Fate::NoRoom;
            }
            self.held.push((depart, bytes));
        }
        self.level = self.level_at_from(level, start, depart) - cost;
        self.at = depart;
        Fate::Sent {
            at: depart,
            conformant: true,
        }
    }

    fn level_at_from(&self, level: i128, from: u64, to: u64) -> i128 {
        (level + (self.rate * u128::from(to - from)) as i128).min(self.cap)
    }
}

// ------------------------------------------------------------------------- the harness

/// An IPv4 UDP packet 10.0.0.1:5000 → 192.0.2.9:53 of `total` bytes (≥ 28), TOS 0.
fn packet(total: u16) -> Vec<u8> {
    let mut p = vec![0u8; usize::from(total)];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[192, 0, 2, 9]);
    p[20..22].copy_from_slice(&5000u16.to_be_bytes());
    p[22..24].copy_from_slice(&53u16.to_be_bytes());
    p[24..26].copy_from_slice(&(total - 20).to_be_bytes());
    p
}

fn socket() -> Request {
    Request::AddSocketToFlow {
        socket: SocketInfo {
            socket: 7,
            family: Family::V4,
            protocol: Protocol::Udp,
            local: "10.0.0.1:5000".parse().unwrap(),
            peer: Some("192.0.2.9:53".parse().unwrap()),
        },
        dest: None,
        traffic_type: TrafficType::Voice,
        flags: 0,
        flow_id: 0,
    }
}

fn set_rate(bandwidth: u64, shaping: Shaping, flow_id: u32) -> Request {
    Request::SetFlow {
        flow_id,
        op: SetFlow::OutgoingRate(FlowRate {
            bandwidth,
            shaping,
            reason: 0,
        }),
    }
}

/// Voice, adaptive: DSCP 56 / 802.1p 7 by default.
fn conformant() -> Mark {
    Mark {
        dscp: Some(Dscp::try_new(56).unwrap()),
        pcp: Some(Pcp::try_new(7).unwrap()),
    }
}

struct World {
    e: Engine,
    h: HandleId,
    flow: u32,
}

fn world(rate: u64, shaping: Shaping, limits: Limits) -> World {
    let mut e = Engine::new(limits);
    let h = e.open_handle(USER).unwrap();
    let Ok(Response::FlowId(flow)) = e.apply(h, &socket()) else {
        panic!("flow")
    };
    assert_eq!(
        e.apply(h, &set_rate(rate, shaping, flow)),
        Ok(Response::Done)
    );
    World { e, h, flow }
}

fn status(e: &mut Engine, h: HandleId) -> StatusInfo {
    match e.apply(h, &Request::QueryStatus) {
        Ok(Response::Status(s)) => s,
        other => panic!("{other:?}"),
    }
}

/// Runs `arrivals` (time, total length) through the engine and a simulated back end; returns
/// each packet's fate and checks the per-packet invariants on the way.
fn run_engine(w: &World, arrivals: &[(u64, u16)], nc_mark: Mark) -> Vec<Fate> {
    let mut q: HeldQueue<usize> = HeldQueue::with_capacity(1 << 16).unwrap();
    let mut fates = vec![None; arrivals.len()];
    let mut last_until: Option<(ShaperId, u64)> = None;
    let release = |q: &mut HeldQueue<usize>, now: u64, fates: &mut Vec<Option<Fate>>| {
        while let Some(h) = q.pop_due(now) {
            w.e.shaper_released(h.shaper, h.bytes);
            assert!(fates[h.item].is_some());
        }
    };
    for (i, &(t, len)) in arrivals.iter().enumerate() {
        release(&mut q, t, &mut fates);
        let p = packet(len);
        let v = w.e.classify(&p, &PacketMeta::default(), t);
        let fate = match v {
            Verdict::Delay {
                mark,
                until_ns,
                shaper,
            } => {
                assert!(until_ns >= t, "packet {i}: held until {until_ns} < {t}");
                if let Some((s, u)) = last_until {
                    assert_eq!(s, shaper);
                    assert!(
                        until_ns >= u,
                        "departures went backwards: {u} then {until_ns}"
                    );
                }
                last_until = Some((shaper, until_ns));
                q.push(until_ns, shaper, held_bytes(&p), i).unwrap();
                Fate::Sent {
                    at: until_ns,
                    conformant: mark == conformant(),
                }
            }
            Verdict::Mark(m) if m == conformant() => Fate::Sent {
                at: t,
                conformant: true,
            },
            Verdict::Mark(m) if m == nc_mark => Fate::Sent {
                at: t,
                conformant: false,
            },
            // Non-conformant DSCP 0 on a TOS-0 packet: only 802.1p to request.
            Verdict::AlreadyMarked => Fate::Sent {
                at: t,
                conformant: false,
            },
            other => panic!("packet {i}: {other:?}"),
        };
        fates[i] = Some(fate);
    }
    fates.into_iter().map(Option::unwrap).collect()
}

/// The engine's fates, with `NoRoom` recovered from the fail-open counter: a `Mark` that is
/// neither held nor non-conformant under shaping is a fail-open exactly when the oracle says
/// `NoRoom` (checked by count and position).
fn compare(rate: u64, shaping: Shaping, limits: Limits, arrivals: &[(u64, u16)], exact: bool) {
    let mut w = world(rate, shaping, limits);
    let nc = Mark {
        dscp: Some(Dscp::CS0),
        pcp: Some(Pcp::ONE),
    };
    let got = run_engine(&w, arrivals, nc);
    let shape = shaping != Shaping::UseNonConformantMarkings;
    let mut oracle = Oracle::new(
        rate,
        shape,
        limits.shaper_queue_packets as usize,
        limits.shaper_queue_bytes,
    );
    let mut no_room = 0;
    for (i, (&(t, len), g)) in arrivals.iter().zip(&got).enumerate() {
        let want = oracle.packet(t, u64::from(len));
        match (want, *g) {
            (Fate::NoRoom, Fate::Sent { at, conformant }) => {
                no_room += 1;
                assert_eq!((at, conformant), (t, true), "packet {i}: fail-open");
            }
            (
                Fate::Sent {
                    at: want_at,
                    conformant: want_c,
                },
                Fate::Sent { at, conformant },
            ) => {
                assert_eq!(conformant, want_c, "packet {i} at {t}: conformance");
                if exact {
                    assert_eq!(at, want_at, "packet {i} at {t} ({len} B): departure");
                } else {
                    let slack = i as u64 + 1;
                    assert!(
                        at + 1 >= want_at && at <= want_at + slack,
                        "packet {i} at {t}: engine {at}, oracle {want_at}, slack {slack}"
                    );
                }
            }
            (w, g) => panic!("packet {i}: oracle {w:?}, engine {g:?}"),
        }
    }
    let s = status(&mut w.e, w.h);
    assert_eq!(s.fail_open[FailOpen::ShaperQueueFull as usize], no_room);
    let delayed = got
        .iter()
        .zip(arrivals)
        .filter(|(g, a)| matches!(g, Fate::Sent { at, .. } if *at > a.0))
        .count() as u64;
    assert!(s.delayed >= delayed, "{} < {delayed}", s.delayed);
    let nc_count = got
        .iter()
        .filter(|g| {
            matches!(
                g,
                Fate::Sent {
                    conformant: false,
                    ..
                }
            )
        })
        .count() as u64;
    assert_eq!(s.non_conformant, nc_count);
    assert_eq!(
        s.packets,
        s.marked + s.already_marked + s.delayed + s.skipped.iter().sum::<u64>()
    );
}

fn big_queue() -> Limits {
    Limits {
        shaper_queue_packets: 1 << 20,
        shaper_queue_bytes: 1 << 40,
        held_packets_total: 1 << 20,
        held_bytes_total: 1 << 40,
        ..Limits::default()
    }
}

const ALL_SHAPING: [Shaping; 3] = [
    Shaping::ShapeOnly,
    Shaping::ShapeAndMark,
    Shaping::UseNonConformantMarkings,
];

/// Rates whose packet times are whole nanoseconds for every size (they divide 8 · 10⁹).
const EXACT_RATES: [u64; 6] = [
    16_000,
    1_000_000,
    8_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
];

// ------------------------------------------------------------------------- scenarios

#[test]
fn burst_steady_idle_and_mixed_sizes_match_the_oracle() {
    for rate in EXACT_RATES {
        let t = |bytes: u64| bytes * 8 * 1_000_000_000 / rate;
        let burst: Vec<(u64, u16)> = (0..50).map(|_| (T0, 1500)).collect();
        let steady: Vec<(u64, u16)> = (0..50).map(|i| (T0 + i * t(1000), 1000)).collect();
        let mut idle_burst: Vec<(u64, u16)> = (0..10).map(|i| (T0 + i * t(1500), 1500)).collect();
        let resume = T0 + 100 * t(1500);
        idle_burst.extend((0..30).map(|_| (resume, 1500)));
        idle_burst.extend((0..10).map(|i| (resume + 10 * t(1500) + i * t(64), 64)));
        let sizes = [28u16, 64, 200, 576, 1280, 1500, 9000, 40];
        let mixed: Vec<(u64, u16)> = (0..80)
            .map(|i| (T0 + (i as u64) * t(300), sizes[i % sizes.len()]))
            .collect();
        for shaping in ALL_SHAPING {
            for seq in [&burst, &steady, &idle_burst, &mixed] {
                compare(rate, shaping, big_queue(), seq, true);
            }
        }
    }
}

#[test]
fn inexact_rates_stay_within_a_nanosecond_per_packet() {
    for rate in [
        12_000,
        33_333,
        777_777,
        9_999_999,
        123_456_789,
        99_999_999_999,
    ] {
        let t = |bytes: u64| bytes * 8 * 1_000_000_000 / rate;
        let burst: Vec<(u64, u16)> = (0..40).map(|i| (T0 + i * t(100), 1500)).collect();
        for shaping in ALL_SHAPING {
            compare(rate, shaping, big_queue(), &burst, false);
        }
    }
}

/// The documented numbers: 1 Mbit/s, 1500-byte packets take 12 ms and so does the depth.
#[test]
fn a_burst_leaves_at_the_rate_after_one_packet_of_credit() {
    let w = world(1_000_000, Shaping::ShapeOnly, big_queue());
    let p = packet(1500);
    let mut out = vec![];
    for _ in 0..5 {
        out.push(w.e.classify(&p, &PacketMeta::default(), T0));
    }
    assert_eq!(out[0], Verdict::Mark(conformant()));
    assert_eq!(out[1], Verdict::Mark(conformant()));
    for (k, v) in out[2..].iter().enumerate() {
        match v {
            Verdict::Delay { until_ns, mark, .. } => {
                assert_eq!(*until_ns, T0 + 12 * MS * (k as u64 + 1));
                assert_eq!(*mark, conformant());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(w.e.shaper_held(), (3, 4500));
}

/// `ShapeOnly` and `ShapeAndMark` are the same (qos-api.md §2.2: the difference is unconfirmed).
#[test]
fn shape_only_and_shape_and_mark_are_identical() {
    let seq: Vec<(u64, u16)> = (0..60u64)
        .map(|i| (T0 + i * i * 37_000, [1500u16, 60, 700][i as usize % 3]))
        .collect();
    let a = world(2_000_000, Shaping::ShapeOnly, big_queue());
    let b = world(2_000_000, Shaping::ShapeAndMark, big_queue());
    let nc = Mark::default();
    assert_eq!(run_engine(&a, &seq, nc), run_engine(&b, &seq, nc));
}

/// Non-conformant packets get the table's marks (here DSCP 10, 802.1p 1) and go at once.
#[test]
fn non_conformant_marking_uses_the_table() {
    let mut w = world(1_000_000, Shaping::UseNonConformantMarkings, big_queue());
    let a = w.e.open_handle(ADMIN).unwrap();
    let mut table = qosmark_engine::traffic::default_table();
    table.non_conformant_dscp = Dscp::try_new(10).unwrap();
    table.non_conformant_pcp = Pcp::try_new(3).unwrap();
    w.e.apply(a, &Request::SetTrafficTable(table)).unwrap();
    let nc = Mark {
        dscp: Some(Dscp::try_new(10).unwrap()),
        pcp: Some(Pcp::try_new(3).unwrap()),
    };
    let p = packet(1500);
    let got: Vec<Verdict> = (0..4)
        .map(|_| w.e.classify(&p, &PacketMeta::default(), T0))
        .collect();
    assert_eq!(
        got,
        [
            Verdict::Mark(conformant()),
            Verdict::Mark(conformant()),
            Verdict::Mark(nc),
            Verdict::Mark(nc)
        ]
    );
    // 12 ms later exactly one more fits.
    assert_eq!(
        w.e.classify(&p, &PacketMeta::default(), T0 + 12 * MS),
        Verdict::Mark(conformant())
    );
    assert_eq!(
        w.e.classify(&p, &PacketMeta::default(), T0 + 12 * MS),
        Verdict::Mark(nc)
    );
    let s = status(&mut w.e, w.h);
    assert_eq!((s.non_conformant, s.delayed, s.marked), (3, 0, 6));
    assert_eq!(w.e.shaper_held(), (0, 0));
    // The flow's counters see every packet as marked.
    let c = w.e.flow_details().unwrap()[0].counters;
    assert_eq!((c.packets, c.marked, c.bytes), (6, 6, 9000));
}

// ------------------------------------------------------------------------- the guarantee

/// The module docs' delay formula and bound. A flow that never runs ahead of its rate by more
/// than J waits at most max(0, J − τ): never for J ≤ τ, at most one packet time for J ≤ 2τ.
fn j_early(rate: u64, sizes: &[u16], early: &[u64], gaps: &[u64]) -> Vec<(u64, u16)> {
    let mut ideal = T0 + 10 * depth_ns(rate);
    let mut out: Vec<(u64, u16)> = Vec::new();
    for (k, &len) in sizes.iter().enumerate() {
        let t = (ideal - early[k]).max(out.last().map_or(0, |l| l.0));
        out.push((t, len));
        ideal += u64::from(len) * 8 * 1_000_000_000 / rate + gaps[k];
    }
    out
}

fn max_delay(rate: u64, arrivals: &[(u64, u16)]) -> u64 {
    let w = world(rate, Shaping::ShapeOnly, big_queue());
    run_engine(&w, arrivals, Mark::default())
        .iter()
        .zip(arrivals)
        .map(|(f, a)| match f {
            Fate::Sent { at, .. } => at - a.0,
            Fate::NoRoom => panic!("no room"),
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn the_bound_is_reached_three_full_packets_at_once() {
    // J = 2τ (the third packet is two packet times early): it waits exactly one packet time.
    for rate in EXACT_RATES {
        let tau = depth_ns(rate);
        assert_eq!(max_delay(rate, &[(T0, 1500), (T0, 1500), (T0, 1500)]), tau);
        assert_eq!(max_delay(rate, &[(T0, 1500), (T0, 1500)]), 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn j_early_flows_wait_at_most_j_minus_tau(
        rate_i in 0usize..EXACT_RATES.len(),
        sizes in prop::collection::vec(prop::sample::select(vec![28u16, 64, 200, 1000, 1500]), 1..60),
        early_frac in prop::collection::vec(0u64..=1000, 60),
        gaps in prop::collection::vec(prop::sample::select(vec![0u64, 0, 0, 1, 1_000, 50_000_000]), 60),
        j_tenths in 0u64..=20,
    ) {
        let rate = EXACT_RATES[rate_i];
        let tau = depth_ns(rate);
        // J between 0 and 2τ; each packet early by a fraction of J.
        let j = tau * j_tenths / 10;
        let early: Vec<u64> = early_frac.iter().map(|f| j * f / 1000).collect();
        let arrivals = j_early(rate, &sizes, &early, &gaps);
        let worst = max_delay(rate, &arrivals);
        prop_assert!(worst <= j.saturating_sub(tau), "J {} τ {} worst {}", j, tau, worst);
        if j <= tau {
            prop_assert_eq!(worst, 0);
        }
        prop_assert!(worst <= tau);
    }

    /// Arbitrary arrival sequences, sizes, behaviours and queue limits against the oracle.
    #[test]
    fn arbitrary_sequences_match_the_oracle(
        rate_i in 0usize..EXACT_RATES.len(),
        shaping_i in 0usize..3,
        steps in prop::collection::vec((0u64..4, 28u16..=1500), 1..120),
        scale in prop::sample::select(vec![1u64, 1_000, 100_000, 10_000_000]),
        max_packets in prop::sample::select(vec![1u64, 3, 16, 1 << 20]),
        max_bytes in prop::sample::select(vec![1500u64, 4000, 1 << 40]),
    ) {
        let mut t = T0;
        let arrivals: Vec<(u64, u16)> = steps
            .iter()
            .map(|&(gap, len)| {
                t += gap * gap * scale;
                (t, len)
            })
            .collect();
        let limits = Limits {
            shaper_queue_packets: max_packets,
            shaper_queue_bytes: max_bytes,
            ..big_queue()
        };
        compare(EXACT_RATES[rate_i], ALL_SHAPING[shaping_i], limits, &arrivals, true);
    }
}

// ------------------------------------------------------------------------- order, queues

/// Several flows, one queue: the queue hands packets out by departure, and within a flow in
/// arrival order.
#[test]
fn held_queue_releases_each_flow_in_order() {
    let mut e = Engine::new(big_queue());
    let h = e.open_handle(USER).unwrap();
    let mut flows = vec![];
    for (sock, port, rate) in [(1u64, 5000u16, 1_000_000u64), (2, 5001, 3_000_000)] {
        let Ok(Response::FlowId(f)) = e.apply(
            h,
            &Request::AddSocketToFlow {
                socket: SocketInfo {
                    socket: sock,
                    family: Family::V4,
                    protocol: Protocol::Udp,
                    local: std::net::SocketAddr::new([10, 0, 0, 1].into(), port),
                    peer: Some("192.0.2.9:53".parse().unwrap()),
                },
                dest: None,
                traffic_type: TrafficType::Background,
                flags: 0,
                flow_id: 0,
            },
        ) else {
            panic!()
        };
        e.apply(h, &set_rate(rate, Shaping::ShapeOnly, f)).unwrap();
        flows.push(port);
    }
    let mut q = HeldQueue::with_capacity(1000).unwrap();
    let mut sent: Vec<(u16, u32, u64)> = vec![];
    let mut n = 0u32;
    for round in 0..200u64 {
        let now = T0 + round * 100_000;
        while let Some(held) = q.pop_due(now) {
            let (port, seq): (u16, u32) = held.item;
            e.shaper_released(held.shaper, held.bytes);
            sent.push((port, seq, held.until_ns));
        }
        for &port in &flows {
            let mut p = packet(1000);
            p[20..22].copy_from_slice(&port.to_be_bytes());
            match e.classify(&p, &PacketMeta::default(), now) {
                Verdict::Delay {
                    until_ns, shaper, ..
                } => q.push(until_ns, shaper, held_bytes(&p), (port, n)).unwrap(),
                Verdict::Mark(_) => sent.push((port, n, now)),
                other => panic!("{other:?}"),
            }
            n += 1;
        }
    }
    q.drain_all(|held| {
        e.shaper_released(held.shaper, held.bytes);
        sent.push((held.item.0, held.item.1, held.until_ns));
    });
    // Global departure order, and per flow arrival order.
    assert!(
        sent.windows(2).all(|w| w[0].2 <= w[1].2),
        "departures out of order"
    );
    for port in flows {
        let seqs: Vec<u32> = sent.iter().filter(|s| s.0 == port).map(|s| s.1).collect();
        assert_eq!(seqs.len(), 200);
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "flow {port} reordered"
        );
    }
    assert_eq!(e.shaper_held(), (0, 0));
}

#[test]
fn queue_limits_fail_open_and_are_counted() {
    // Per-shaper packets.
    let limits = Limits {
        shaper_queue_packets: 3,
        ..big_queue()
    };
    let mut w = world(1_000_000, Shaping::ShapeOnly, limits);
    let p = packet(1000);
    let verdicts: Vec<Verdict> = (0..8)
        .map(|_| w.e.classify(&p, &PacketMeta::default(), T0))
        .collect();
    let held = verdicts
        .iter()
        .filter(|v| matches!(v, Verdict::Delay { .. }))
        .count();
    assert_eq!(held, 3);
    // Two go on credit (12 ms depth, 8 ms each), three are held, three fail open.
    assert_eq!(
        verdicts
            .iter()
            .filter(|v| **v == Verdict::Mark(conformant()))
            .count(),
        5
    );
    let s = status(&mut w.e, w.h);
    assert_eq!(s.fail_open[FailOpen::ShaperQueueFull as usize], 3);
    let stats =
        w.e.shaper_stats(w.e.flow_details().unwrap()[0].shaper.unwrap())
            .unwrap();
    assert_eq!(
        (stats.held_packets, stats.no_room, stats.delayed),
        (3, 3, 3)
    );

    // Per-shaper bytes: 2500 bytes hold two 1000-byte packets.
    let limits = Limits {
        shaper_queue_bytes: 2500,
        ..big_queue()
    };
    let w = world(1_000_000, Shaping::ShapeOnly, limits);
    let held = (0..8)
        .map(|_| w.e.classify(&p, &PacketMeta::default(), T0))
        .filter(|v| matches!(v, Verdict::Delay { .. }))
        .count();
    assert_eq!(held, 2);
    assert_eq!(w.e.shaper_held(), (2, 2000));

    // Global packets: two flows share a total of 4.
    let limits = Limits {
        held_packets_total: 4,
        ..big_queue()
    };
    let mut w = world(1_000_000, Shaping::ShapeOnly, limits);
    let mut second = socket();
    if let Request::AddSocketToFlow { socket, .. } = &mut second {
        socket.socket = 8;
        socket.local = "10.0.0.1:5001".parse().unwrap();
    }
    let Ok(Response::FlowId(f2)) = w.e.apply(w.h, &second) else {
        panic!()
    };
    w.e.apply(w.h, &set_rate(1_000_000, Shaping::ShapeOnly, f2))
        .unwrap();
    let mut p2 = packet(1000);
    p2[20..22].copy_from_slice(&5001u16.to_be_bytes());
    let mut held = 0;
    for _ in 0..6 {
        for q in [&p, &p2] {
            if matches!(
                w.e.classify(q, &PacketMeta::default(), T0),
                Verdict::Delay { .. }
            ) {
                held += 1;
            }
        }
    }
    assert_eq!(held, 4);
    assert_eq!(w.e.shaper_held().0, 4);
    let s = status(&mut w.e, w.h);
    assert_eq!(s.fail_open[FailOpen::ShaperQueueFull as usize], 4);
}

/// A back end that is late (its timer fired after a departure time) still keeps the order:
/// while the shaper holds packets, a packet whose own departure has passed waits behind them.
#[test]
fn late_back_end_keeps_order() {
    let w = world(1_000_000, Shaping::ShapeOnly, big_queue());
    let p = packet(1500);
    let meta = PacketMeta::default();
    let _ = w.e.classify(&p, &meta, T0);
    let _ = w.e.classify(&p, &meta, T0);
    let Verdict::Delay {
        until_ns: first, ..
    } = w.e.classify(&p, &meta, T0)
    else {
        panic!()
    };
    // Long after `first`, nothing released yet: the new packet is due at once but held.
    match w.e.classify(&p, &meta, first + 100 * MS) {
        Verdict::Delay { until_ns, .. } => assert_eq!(until_ns, first + 100 * MS),
        other => panic!("{other:?}"),
    }
}

/// `not_held`: a back end that cannot hold a packet gets its mark back and the room returns.
#[test]
fn not_held_returns_the_room() {
    let mut w = world(1_000_000, Shaping::ShapeOnly, big_queue());
    let p = packet(1500);
    let meta = PacketMeta::default();
    let _ = w.e.classify(&p, &meta, T0);
    let _ = w.e.classify(&p, &meta, T0);
    let v = w.e.classify(&p, &meta, T0);
    assert!(matches!(v, Verdict::Delay { .. }));
    assert_eq!(w.e.shaper_held(), (1, 1500));
    assert_eq!(w.e.not_held(v, &p), Verdict::Mark(conformant()));
    assert_eq!(w.e.shaper_held(), (0, 0));
    let s = status(&mut w.e, w.h);
    assert_eq!(s.fail_open[FailOpen::ShaperQueueFull as usize], 1);
    // Other verdicts pass through untouched.
    let m = Verdict::Mark(conformant());
    assert_eq!(w.e.not_held(m, &p), m);
}

// ------------------------------------------------------------------------- rates, lifetime

#[test]
fn rate_validation_changes_nothing() {
    let mut w = world(1_000_000, Shaping::ShapeOnly, big_queue());
    let before = w.e.control_snapshot().unwrap();
    let shaper = before.flows[0].shaper.unwrap();
    for bad in [0, 1, 11_999, 100_000_000_001, u64::MAX] {
        for shaping in ALL_SHAPING {
            assert_eq!(
                w.e.apply(w.h, &set_rate(bad, shaping, w.flow)),
                Err(EngineError::InvalidParameter)
            );
        }
    }
    assert_eq!(w.e.control_snapshot().unwrap(), before);
    let c = w.e.shaper_config(shaper).unwrap();
    assert_eq!(c.rate_bps(), 1_000_000);
    // The edges are accepted.
    for good in [12_000, 100_000_000_000] {
        assert_eq!(
            w.e.apply(w.h, &set_rate(good, Shaping::ShapeOnly, w.flow)),
            Ok(Response::Done)
        );
        assert_eq!(w.e.shaper_config(shaper).unwrap().rate_bps(), good);
    }
}

#[test]
fn removal_and_close_kill_the_shaper_and_return_its_room() {
    for how in ["remove flow", "remove socket", "close handle"] {
        let mut w = world(1_000_000, Shaping::ShapeOnly, big_queue());
        let p = packet(1500);
        let mut held = vec![];
        for _ in 0..6 {
            if let Verdict::Delay { shaper, .. } = w.e.classify(&p, &PacketMeta::default(), T0) {
                held.push(shaper);
            }
        }
        assert_eq!(held.len(), 4);
        let shaper = held[0];
        assert!(w.e.shaper_live(shaper));
        match how {
            "remove flow" => {
                w.e.apply(
                    w.h,
                    &Request::RemoveSocketFromFlow {
                        socket: None,
                        flow_id: w.flow,
                    },
                )
                .unwrap();
            }
            "remove socket" => {
                w.e.apply(
                    w.h,
                    &Request::RemoveSocketFromFlow {
                        socket: Some(7),
                        flow_id: w.flow,
                    },
                )
                .unwrap();
            }
            _ => {
                w.e.close_handle(w.h).unwrap();
            }
        }
        assert!(!w.e.shaper_live(shaper), "{how}");
        assert_eq!(w.e.shaper_held(), (0, 0), "{how}");
        // The back end's late releases of the dead shaper are harmless.
        w.e.shaper_released(shaper, 1500);
        assert_eq!(w.e.shaper_held(), (0, 0));
        // A new flow may reuse the slot; the old id stays dead and does not touch it.
        let h = w.e.open_handle(USER).unwrap();
        let Ok(Response::FlowId(f)) = w.e.apply(h, &socket()) else {
            panic!()
        };
        w.e.apply(h, &set_rate(1_000_000, Shaping::ShapeOnly, f))
            .unwrap();
        for _ in 0..3 {
            let _ = w.e.classify(&p, &PacketMeta::default(), T0);
        }
        assert_eq!(w.e.shaper_held(), (1, 1500));
        w.e.shaper_released(shaper, 1500);
        assert_eq!(
            w.e.shaper_held(),
            (1, 1500),
            "{how}: a dead id released room"
        );
        assert!(!w.e.shaper_live(shaper));
        // The back end drains what `shaper_live` calls dead.
        let mut q = HeldQueue::with_capacity(8).unwrap();
        for (i, s) in held.iter().enumerate() {
            q.push(T0 + 1_000 * MS, *s, 1500, i).unwrap();
        }
        let new = w.e.flow_details().unwrap()[0].shaper.unwrap();
        q.push(T0 + 2_000 * MS, new, 1500, 99).unwrap();
        let mut out = vec![];
        assert_eq!(
            q.drain_where(|s| !w.e.shaper_live(s), |h| out.push(h.item)),
            4
        );
        assert_eq!(out, [0, 1, 2, 3]);
        assert_eq!(q.len(), 1);
        w.e.check_control_invariants().unwrap();
    }
}

/// `SetFlow(ClearOutgoingRate)` (GQoS): the shaper dies as on removal (room returned, held
/// packets drained by the back end), the flow lives on unshaped with its mark, 232 for the
/// rate; clearing a flow without a rate or another handle's flow changes nothing.
#[test]
fn clearing_the_rate_kills_the_shaper_and_keeps_the_flow() {
    let mut w = world(1_000_000, Shaping::ShapeOnly, big_queue());
    let p = packet(1500);
    let meta = PacketMeta::default();
    let mut held = vec![];
    for _ in 0..6 {
        if let Verdict::Delay { shaper, .. } = w.e.classify(&p, &meta, T0) {
            held.push(shaper);
        }
    }
    assert_eq!(held.len(), 4);
    let shaper = held[0];
    let clear = Request::SetFlow {
        flow_id: w.flow,
        op: SetFlow::ClearOutgoingRate,
    };
    // Another handle (same user) may not clear it: 1168, and the shaper lives on.
    let other = w.e.open_handle(USER).unwrap();
    assert_eq!(w.e.apply(other, &clear), Err(EngineError::NotFound));
    assert!(w.e.shaper_live(shaper));
    assert_eq!(w.e.shaper_held(), (4, 6000));
    assert_eq!(w.e.apply(w.h, &clear), Ok(Response::Done));
    assert!(!w.e.shaper_live(shaper));
    assert_eq!(w.e.shaper_held(), (0, 0));
    let query = Request::QueryFlow {
        flow_id: w.flow,
        op: QueryFlow::OutgoingRate,
    };
    assert_eq!(w.e.apply(w.h, &query), Err(EngineError::NoData));
    // The flow is still there and marks without delay, far beyond the old rate.
    for _ in 0..20 {
        assert_eq!(w.e.classify(&p, &meta, T0 + 1), Verdict::Mark(conformant()));
    }
    assert_eq!(w.e.flow_details().unwrap()[0].shaper, None);
    // Clearing again (no rate now) is not an error and changes nothing.
    assert_eq!(w.e.apply(w.h, &clear), Ok(Response::Done));
    // A new rate makes a new, live shaper.
    w.e.apply(w.h, &set_rate(1_000_000, Shaping::ShapeOnly, w.flow))
        .unwrap();
    let new = w.e.flow_details().unwrap()[0].shaper.unwrap();
    assert!(w.e.shaper_live(new));
    assert!(!w.e.shaper_live(shaper));
    w.e.check_control_invariants().unwrap();
}

/// A rate change keeps the id and the order of what is already scheduled.
#[test]
fn rate_change_keeps_id_and_order() {
    let mut w = world(100_000, Shaping::ShapeOnly, big_queue());
    let p = packet(1500);
    let meta = PacketMeta::default();
    let mut last = 0;
    let mut id = None;
    for _ in 0..5 {
        if let Verdict::Delay {
            until_ns, shaper, ..
        } = w.e.classify(&p, &meta, T0)
        {
            last = until_ns;
            id = Some(shaper);
        }
    }
    w.e.apply(w.h, &set_rate(1_000_000_000, Shaping::ShapeOnly, w.flow))
        .unwrap();
    match w.e.classify(&p, &meta, T0 + 1) {
        Verdict::Delay {
            until_ns, shaper, ..
        } => {
            assert_eq!(Some(shaper), id);
            assert!(until_ns >= last);
        }
        other => panic!("{other:?}"),
    }
}

/// Several CPUs on one shaper: every Delay is counted and reserved exactly once, and each
/// thread sees its own departures in order.
#[test]
fn concurrent_classify_on_one_shaper() {
    let w = world(10_000_000, Shaping::ShapeOnly, big_queue());
    let p = packet(1000);
    let results: Vec<(usize, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|k| {
                let (w, p) = (&w, &p);
                s.spawn(move || {
                    let mut held = 0;
                    let mut last = 0;
                    for i in 0..500u64 {
                        let now = T0 + i * 200_000 + k;
                        if let Verdict::Delay { until_ns, .. } =
                            w.e.classify(p, &PacketMeta::default(), now)
                        {
                            assert!(until_ns >= last, "thread {k}: {last} then {until_ns}");
                            last = until_ns;
                            held += 1;
                        }
                    }
                    (held, last)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let held: usize = results.iter().map(|r| r.0).sum();
    assert!(held > 0);
    assert_eq!(w.e.shaper_held(), (held as u64, held as u64 * 1000));
    // 2000 packets of 1000 bytes at 10 Mbit/s take 1.6 s from the first: the last departure
    // is at least that far, less the 1500-byte credit and its own packet time, whatever the
    // interleaving.
    let last = results.iter().map(|r| r.1).max().unwrap();
    assert!(
        last + depth_ns(10_000_000) + 800_000 >= T0 + 2000 * 800_000,
        "{last}"
    );
}

// ------------------------------------------------------------------------- rule throttles

fn throttled_rule(name: &str, bps: Option<u64>) -> qosmark_engine::abi::RuleSpec {
    use qosmark_engine::abi::{heapless_name::RuleName, Prefix, RuleAction, RuleProtocol};
    qosmark_engine::abi::RuleSpec {
        name: RuleName::try_new(name).unwrap(),
        precedence: 100,
        protocol: RuleProtocol::Udp,
        local_prefix: None,
        remote_prefix: Some(Prefix {
            addr: "192.0.2.0".parse().unwrap(),
            len: 24,
        }),
        local_ports: None,
        remote_ports: None,
        action: RuleAction::Dscp(Dscp::try_new(10).unwrap()),
        pcp: None,
        throttle_bps: bps,
    }
}

/// A UDP packet from 10.0.0.1:`sport` to 192.0.2.9:53.
fn packet_from(sport: u16, total: u16) -> Vec<u8> {
    let mut p = packet(total);
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p
}

/// `ThrottleRateActionBitsPerSecond`: one bucket for everything the rule matches, whatever
/// the 5-tuple, and traffic above it is delayed.
#[test]
fn a_rule_throttle_is_one_bucket_for_all_its_traffic() {
    let mut e = Engine::new(big_queue());
    let a = e.open_handle(ADMIN).unwrap();
    e.apply(
        a,
        &Request::AddRule(throttled_rule("bulk", Some(1_000_000))),
    )
    .unwrap();
    let name = qosmark_engine::abi::heapless_name::RuleName::try_new("bulk").unwrap();
    let shaper = e.rule_shaper(&name).unwrap();
    let mark = Mark {
        dscp: Some(Dscp::try_new(10).unwrap()),
        pcp: None,
    };
    // Ten 1500-byte packets from ten different source ports at once: 2 go on credit, the
    // rest 12 ms apart, as if they were one flow.
    let mut untils = vec![];
    for i in 0..10u16 {
        match e.classify(&packet_from(6000 + i, 1500), &PacketMeta::default(), T0) {
            Verdict::Mark(m) => {
                assert_eq!(m, mark);
                assert!(i < 2);
            }
            Verdict::Delay {
                mark: m,
                until_ns,
                shaper: s,
            } => {
                assert_eq!((m, s), (mark, shaper));
                untils.push(until_ns);
            }
            other => panic!("{other:?}"),
        }
    }
    let want: Vec<u64> = (1..=8).map(|k| T0 + k * 12 * MS).collect();
    assert_eq!(untils, want);
    // ListRules shows the throttle.
    let Ok(Response::Rules(rules)) = e.apply(a, &Request::ListRules) else {
        panic!()
    };
    assert_eq!(rules[0].spec.throttle_bps, Some(1_000_000));
    assert_eq!(rules[0].counters.packets, 10);
    e.check_control_invariants().unwrap();
}

/// A registered socket beats every rule: without a rate of its own it is not throttled by
/// the rule at all; with one, only its own bucket applies.
#[test]
fn a_socket_flow_beats_a_throttled_rule() {
    let mut e = Engine::new(big_queue());
    let a = e.open_handle(ADMIN).unwrap();
    e.apply(a, &Request::AddRule(throttled_rule("bulk", Some(12_000))))
        .unwrap();
    let h = e.open_handle(USER).unwrap();
    let Ok(Response::FlowId(flow)) = e.apply(h, &socket()) else {
        panic!()
    };
    let p = packet(1500);
    for _ in 0..20 {
        assert_eq!(
            e.classify(&p, &PacketMeta::default(), T0),
            Verdict::Mark(conformant())
        );
    }
    e.apply(h, &set_rate(1_000_000, Shaping::ShapeOnly, flow))
        .unwrap();
    let own = e.flow_details().unwrap()[0].shaper.unwrap();
    let name = qosmark_engine::abi::heapless_name::RuleName::try_new("bulk").unwrap();
    let rule = e.rule_shaper(&name).unwrap();
    assert_ne!(own, rule);
    let mut held = 0;
    for _ in 0..5 {
        if let Verdict::Delay { shaper, .. } = e.classify(&p, &PacketMeta::default(), T0) {
            assert_eq!(shaper, own);
            held += 1;
        }
    }
    assert_eq!(held, 3);
    // The rule's bucket never saw these packets: another port still gets its credit.
    assert!(matches!(
        e.classify(&packet_from(6000, 1500), &PacketMeta::default(), T0),
        Verdict::Mark(_)
    ));
}

#[test]
fn rule_removal_and_replacement_kill_its_shaper() {
    let mut e = Engine::new(big_queue());
    let a = e.open_handle(ADMIN).unwrap();
    let name = |n| qosmark_engine::abi::heapless_name::RuleName::try_new(n).unwrap();
    e.apply(a, &Request::AddRule(throttled_rule("r1", Some(1_000_000))))
        .unwrap();
    e.apply(a, &Request::AddRule(throttled_rule("r2", None)))
        .unwrap();
    assert_eq!(e.rule_shaper(&name("r2")), None);
    let s1 = e.rule_shaper(&name("r1")).unwrap();
    for _ in 0..4 {
        let _ = e.classify(&packet_from(7000, 1500), &PacketMeta::default(), T0);
    }
    assert_eq!(e.shaper_held(), (2, 3000));
    e.apply(a, &Request::RemoveRule(name("r1"))).unwrap();
    assert!(!e.shaper_live(s1));
    assert_eq!(e.shaper_held(), (0, 0));
    // ReplaceRules: new shapers, the old ones die.
    e.apply(a, &Request::AddRule(throttled_rule("r1", Some(1_000_000))))
        .unwrap();
    let s1 = e.rule_shaper(&name("r1")).unwrap();
    e.apply(
        a,
        &Request::ReplaceRules(vec![
            throttled_rule("r1", Some(2_000_000)),
            throttled_rule("r3", Some(64_000)),
        ]),
    )
    .unwrap();
    assert!(!e.shaper_live(s1));
    let new = e.rule_shaper(&name("r1")).unwrap();
    assert!(e.shaper_live(new));
    assert_eq!(e.shaper_config(new).unwrap().rate_bps(), 2_000_000);
    let Ok(Response::Status(s)) = e.apply(a, &Request::QueryStatus) else {
        panic!()
    };
    assert_eq!(s.shapers, 2);
    e.check_control_invariants().unwrap();
}

#[test]
fn bad_or_unplaceable_throttles_change_nothing() {
    let mut e = Engine::new(Limits {
        max_shapers: 1,
        ..big_queue()
    });
    let a = e.open_handle(ADMIN).unwrap();
    let list = |e: &mut Engine| e.apply(a, &Request::ListRules);
    for bad in [0, 11_999, 100_000_000_001] {
        assert_eq!(
            e.apply(a, &Request::AddRule(throttled_rule("x", Some(bad)))),
            Err(EngineError::InvalidParameter)
        );
    }
    e.apply(a, &Request::AddRule(throttled_rule("one", Some(50_000))))
        .unwrap();
    let before = list(&mut e);
    // The shaper table is full: 1450, and nothing changes.
    assert_eq!(
        e.apply(a, &Request::AddRule(throttled_rule("two", Some(50_000)))),
        Err(EngineError::LimitReached)
    );
    assert_eq!(
        e.apply(
            a,
            &Request::ReplaceRules(vec![throttled_rule("two", Some(50_000))])
        ),
        Err(EngineError::LimitReached)
    );
    assert_eq!(
        e.apply(
            a,
            &Request::ReplaceRules(vec![
                throttled_rule("ok", None),
                throttled_rule("bad", Some(5))
            ])
        ),
        Err(EngineError::InvalidParameter)
    );
    assert_eq!(list(&mut e), before);
    let name = qosmark_engine::abi::heapless_name::RuleName::try_new("one").unwrap();
    assert!(e.shaper_live(e.rule_shaper(&name).unwrap()));
    // A user may not add one at all.
    let u = e.open_handle(USER).unwrap();
    assert_eq!(
        e.apply(u, &Request::AddRule(throttled_rule("u", Some(50_000)))),
        Err(EngineError::AccessDenied)
    );
    e.check_control_invariants().unwrap();
}
