//! The per-packet decision ([`Engine::classify`]), the DSCP rewrite entry point
//! ([`Engine::rewrite`]) and the global counters.
//!
//! ## Order of decisions
//! 1. `meta.self_injected` → `Skip(SelfInjected)` (our own clone coming round again).
//! 2. [`wire::parse_ip`]; `NotIp`/`Empty` → `Skip(NotIp)`, `Malformed` → `Skip(Malformed)`,
//!    `Truncated` → `Skip(Truncated)`.
//! 3. Non-first fragment (offset > 0): the fragment memory ([`crate::frag`]) gives the mark of
//!    its first fragment → `Mark`/`AlreadyMarked`, or `Skip(FragmentUnknown)`. Such packets
//!    count globally only: the flow or rule is not known any more.
//! 4. Transport: `Unreachable` → `Skip(TransportUnreachable)`, `Other` →
//!    `Skip(OtherProtocol)`, `Truncated` → `Skip(Truncated)`; `Ports` give the 5-tuple
//!    (local = source, remote = destination, normalized by [`FiveTuple::new`]).
//! 5. Socket flows first ([`crate::control`]): a registered socket beats every rule. With
//!    [`crate::Limits::check_owner`] on, a socket flow registered through a `Privilege::User`
//!    handle matches only if the owner table ([`crate::owner`]) says the tuple belongs to that
//!    handle's process; otherwise it is ignored (its counters do not see the packet — it is
//!    another process's). Then the rules ([`crate::rules`]). Nothing → `Skip(NoMatch)`, or
//!    `Skip(NotOwner)` when only an unowned user flow matched.
//! 6. The mark. A socket flow's mark is resolved by the control plane. A rule's mark is its
//!    DSCP action, or for a traffic-type action the table's DSCP for that type; its 802.1p is
//!    the rule's explicit `pcp` only — rules are policies, and Windows policies request 802.1p
//!    only through `PriorityValue8021Action`, never through a traffic type.
//! 7. An empty mark → `Skip(NoMarkConfigured)` (the flow/rule counts the packet as not
//!    marked). A packet that already has the DSCP (or no DSCP is to be set) and whose 802.1p is
//!    already the requested one (or none is requested) → `AlreadyMarked`. Otherwise `Mark`.
//! 8. A first fragment (offset 0, more fragments) that got `Mark` or `AlreadyMarked` is
//!    remembered so its later fragments get the same mark.
//! 9. Shaping ([`crate::shaper`]): when the socket flow (or rule) has a shaper, it decides
//!    last, charging the packet's IP total length. Conformant and not held → the verdict of
//!    step 7. Held → [`Verdict::Delay`] with the conformant mark (or, with
//!    `QOSUseNonConformantMarkings`, the non-conformant mark when the packet is above the rate).
//!    Above the rate under `QOSUseNonConformantMarkings` → step 7's verdict for the
//!    non-conformant mark. No queue room → step 7's verdict, counted as
//!    `FailOpen::ShaperQueueFull`. Even a flow whose mark is empty (`BestEffort`) is shaped:
//!    its `Delay` carries the empty mark. Later fragments are not shaped (they reach no flow or
//!    rule, step 3) and may overtake a held first fragment; reassembly does not mind.
//!
//! Counters: the matched flow or rule counts every packet it matched with its IP total length;
//! the global counters count every classified packet, its outcome and each skip reason.
//! Nothing on this path allocates or takes a lock.

use crate::counters::{Counters, Outcome};
use crate::frag::FragmentKey;
use crate::shaper::{Admit, ShaperId};
use crate::wire::{self, IpSummary, IpVersion, Transport, WireError};
use crate::{traffic, Engine, FiveTuple};
use core::net::SocketAddr;
use core::sync::atomic::{AtomicU64, Ordering};
use qosmark_abi::{FailOpen, Mark, Pcp, Protocol, RuleAction, SkipReason, StatusInfo};

/// What the back end knows about a packet besides its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketMeta {
    /// The back end injected this packet itself.
    pub self_injected: bool,
    /// 802.1p the packet already requests / carries, if known.
    pub current_pcp: Option<Pcp>,
}

/// The engine's decision for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Leave the packet alone, for this reason.
    Skip(SkipReason),
    /// A flow or rule matched and the packet already carries the mark.
    AlreadyMarked,
    /// Rewrite the packet with this mark.
    Mark(Mark),
    /// Rewrite the packet with `mark` now (it may be empty, or already in place: the rewrite
    /// then reports `Unchanged`), hold it, and send it at `until_ns` (which may already have
    /// passed: it then waits only behind the shaper's other held packets). Queue room is
    /// reserved; give it back with [`Engine::shaper_released`] once the packet leaves. Per
    /// shaper, `until_ns` never decreases, so releasing in (`until_ns`, arrival) order —
    /// [`crate::shaper::HeldQueue`] — keeps each flow's order.
    Delay {
        /// The mark to write now.
        mark: Mark,
        /// When to send it (the back end's clock, as passed to `classify`).
        until_ns: u64,
        /// The shaper that holds it.
        shaper: ShaperId,
    },
}

/// Global counters (relaxed atomics: each exact, not a consistent snapshot together). Every
/// classified packet lands in exactly one of them, so the packet total is their sum and costs
/// no atomic add of its own on the packet path.
#[derive(Debug, Default)]
pub(crate) struct GlobalCounters {
    marked: AtomicU64,
    already_marked: AtomicU64,
    delayed: AtomicU64,
    non_conformant: AtomicU64,
    skipped: [AtomicU64; SkipReason::COUNT],
    fail_open: [AtomicU64; FailOpen::COUNT],
}

impl GlobalCounters {
    /// Counts one classified packet with its verdict.
    fn count(&self, verdict: Verdict) {
        let counter = match verdict {
            Verdict::Mark(_) => &self.marked,
            Verdict::AlreadyMarked => &self.already_marked,
            Verdict::Delay { .. } => &self.delayed,
            Verdict::Skip(reason) => match self.skipped.get(reason as usize) {
                Some(c) => c,
                None => return,
            },
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Fills the packet counters of `status` (packets, marked, already marked, skipped).
    pub(crate) fn fill_status(&self, status: &mut StatusInfo) {
        status.marked = self.marked.load(Ordering::Relaxed);
        status.already_marked = self.already_marked.load(Ordering::Relaxed);
        status.delayed = self.delayed.load(Ordering::Relaxed);
        status.non_conformant = self.non_conformant.load(Ordering::Relaxed);
        let mut packets = status
            .marked
            .wrapping_add(status.already_marked)
            .wrapping_add(status.delayed);
        for (out, c) in status.skipped.iter_mut().zip(self.skipped.iter()) {
            *out = c.load(Ordering::Relaxed);
            packets = packets.wrapping_add(*out);
        }
        status.packets = packets;
        for (out, c) in status.fail_open.iter_mut().zip(self.fail_open.iter()) {
            *out = c.load(Ordering::Relaxed);
        }
    }

    /// Counts one packet a back end let go unmarked.
    pub(crate) fn count_fail_open(&self, reason: FailOpen) {
        if let Some(c) = self.fail_open.get(reason as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The verdict for a packet whose current DSCP is known and whose target is `mark`.
///
/// "Already marked" needs every requested part in place. When the mark requests 802.1p and the
/// back end cannot say which priority the packet already carries (`meta.current_pcp` is
/// `None`: raw IP, an untagged frame, the Windows IP layer where 802.1p is out-of-band
/// information), the verdict is `Mark` even if the DSCP is already right: the back end must
/// still request the priority. Its DSCP rewrite then reports `Rewrite::Unchanged`.
fn decide(mark: Mark, summary: &IpSummary, meta: PacketMeta) -> Verdict {
    if mark.is_empty() {
        return Verdict::Skip(SkipReason::NoMarkConfigured);
    }
    let dscp_done = mark.dscp.is_none_or(|d| d == summary.dscp);
    let pcp_done = mark.pcp.is_none_or(|p| meta.current_pcp == Some(p));
    if dscp_done && pcp_done {
        Verdict::AlreadyMarked
    } else {
        Verdict::Mark(mark)
    }
}

/// What [`Engine::resolve`] found for a 5-tuple.
enum Resolved<'a> {
    /// A socket flow or a rule: its mark, counters and shaper.
    Hit(Mark, &'a Counters, Option<ShaperId>),
    /// Nothing matched.
    NoMatch,
    /// Only a user's socket flow matched, and the tuple is not (known to be) its process's.
    NotOwner,
}

fn outcome(verdict: Verdict) -> Outcome {
    match verdict {
        // Not produced by `decide`; a held packet is counted by what its mark does.
        Verdict::Delay { mark, .. } if mark.is_empty() => Outcome::NotMarked,
        Verdict::Mark(_) | Verdict::Delay { .. } => Outcome::Marked,
        Verdict::AlreadyMarked => Outcome::AlreadyMarked,
        Verdict::Skip(_) => Outcome::NotMarked,
    }
}

fn fragment_key(summary: &IpSummary, id: u32) -> FragmentKey {
    match summary.version {
        // The IPv4 identification is 16 bits; the wire summary widens it.
        IpVersion::V4 => FragmentKey::v4(summary.src, summary.dst, summary.protocol, id as u16),
        IpVersion::V6 => FragmentKey::v6(summary.src, summary.dst, id),
    }
}

impl Engine {
    /// Records that the back end sent a packet unmarked although [`Engine::classify`] asked
    /// for a mark (fail open), and why. Lock-free (`&self`, one relaxed atomic add), so it may
    /// be called under the shared lock on the packet path. Shown by `QueryStatus`.
    pub fn record_fail_open(&self, reason: FailOpen) {
        self.stats.count_fail_open(reason);
    }

    /// Classifies one outbound packet (bytes from the IP header on). Never panics, never
    /// allocates; see the module docs for the order of decisions.
    #[must_use]
    pub fn classify(&self, packet: &[u8], meta: &PacketMeta, now_ns: u64) -> Verdict {
        let verdict = self.decide_packet(packet, *meta, now_ns);
        self.stats.count(verdict);
        verdict
    }

    fn decide_packet(&self, packet: &[u8], meta: PacketMeta, now_ns: u64) -> Verdict {
        if meta.self_injected {
            return Verdict::Skip(SkipReason::SelfInjected);
        }
        let summary = match wire::parse_ip(packet) {
            Ok(s) => s,
            Err(WireError::Empty | WireError::NotIp) => return Verdict::Skip(SkipReason::NotIp),
            Err(WireError::Malformed) => return Verdict::Skip(SkipReason::Malformed),
            Err(WireError::Truncated) => return Verdict::Skip(SkipReason::Truncated),
        };
        let (src, dst) = match summary.transport {
            Transport::Ports { src, dst } => (src, dst),
            Transport::NotFirstFragment => {
                let known = summary
                    .fragment
                    .and_then(|f| self.fragments.lookup(&fragment_key(&summary, f.id), now_ns));
                return match known {
                    Some(mark) => decide(mark, &summary, meta),
                    None => Verdict::Skip(SkipReason::FragmentUnknown),
                };
            }
            Transport::Unreachable => return Verdict::Skip(SkipReason::TransportUnreachable),
            Transport::Other => return Verdict::Skip(SkipReason::OtherProtocol),
            Transport::Truncated => return Verdict::Skip(SkipReason::Truncated),
        };
        let protocol = match summary.protocol {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            _ => return Verdict::Skip(SkipReason::OtherProtocol),
        };
        let tuple = FiveTuple::new(
            protocol,
            SocketAddr::new(summary.src, src),
            SocketAddr::new(summary.dst, dst),
        );
        let (mark, counters, shaper) = match self.resolve(&tuple, now_ns) {
            Resolved::Hit(mark, counters, shaper) => (mark, counters, shaper),
            Resolved::NoMatch => return Verdict::Skip(SkipReason::NoMatch),
            Resolved::NotOwner => return Verdict::Skip(SkipReason::NotOwner),
        };
        let mut verdict = decide(mark, &summary, meta);
        // What the packet's mark does (the verdict without holding) and the mark it gets.
        let (mut counted, mut applied) = (verdict, mark);
        if let Some(id) = shaper {
            (counted, verdict, applied) = self.shape(id, mark, verdict, &summary, meta, now_ns);
        }
        counters.record(summary.total_len as u64, outcome(counted));
        if let Some(f) = summary.fragment {
            // Later fragments follow the mark their first fragment got (conformant or not);
            // they are not shaped themselves (step 9).
            if f.offset == 0 && f.more && !matches!(counted, Verdict::Skip(_)) {
                self.fragments
                    .remember(&fragment_key(&summary, f.id), applied, now_ns);
            }
        }
        verdict
    }

    /// The target mark and counters of the socket flow or, failing that, the rule that
    /// `tuple` belongs to. A user's socket flow counts only when the ownership check (if on)
    /// confirms the tuple is its process's; otherwise the rules decide, and without a rule the
    /// answer is [`Resolved::NotOwner`].
    fn resolve(&self, tuple: &FiveTuple, now_ns: u64) -> Resolved<'_> {
        let mut not_owner = false;
        if let Some(hit) = self.control.lookup(tuple) {
            let owned = match hit.user_pid {
                Some(pid) if self.limits.check_owner => {
                    self.owners.owner(tuple, now_ns) == Some(pid)
                }
                _ => true,
            };
            if owned {
                return Resolved::Hit(hit.mark, hit.counters, hit.shaper);
            }
            not_owner = true;
        }
        let Some(hit) = self.rules.lookup(tuple) else {
            return if not_owner {
                Resolved::NotOwner
            } else {
                Resolved::NoMatch
            };
        };
        let dscp = match hit.action {
            RuleAction::Dscp(d) => Some(d),
            RuleAction::TrafficType(tt) => {
                traffic::mark_for(self.control.traffic_table(), tt, false).dscp
            }
        };
        Resolved::Hit(Mark { dscp, pcp: hit.pcp }, hit.counters, hit.shaper)
    }

    /// Step 9 of the module docs: the shaper's say on a packet whose unshaped verdict is
    /// `verdict` (for the conformant `mark`). Returns (what the packet's mark does — for the
    /// flow's counters and the fragment memory —, the verdict, the mark the packet gets).
    fn shape(
        &self,
        id: ShaperId,
        mark: Mark,
        verdict: Verdict,
        summary: &IpSummary,
        meta: PacketMeta,
        now_ns: u64,
    ) -> (Verdict, Verdict, Mark) {
        let ip_len = summary.total_len as u64;
        let (until, conformant) = match self.shapers.admit(id, ip_len, ip_len, now_ns) {
            Admit::Now { conformant } => (None, conformant),
            Admit::Hold {
                until_ns,
                conformant,
            } => (Some(until_ns), conformant),
            Admit::NoRoom => {
                self.stats.count_fail_open(FailOpen::ShaperQueueFull);
                (None, true)
            }
        };
        let (applied, counted) = if conformant {
            (mark, verdict)
        } else {
            self.stats.non_conformant.fetch_add(1, Ordering::Relaxed);
            let nc = traffic::non_conformant_mark(self.control.traffic_table(), mark);
            (nc, decide(nc, summary, meta))
        };
        let verdict = match until {
            Some(until_ns) => Verdict::Delay {
                mark: applied,
                until_ns,
                shaper: id,
            },
            None => counted,
        };
        (counted, verdict, applied)
    }

    /// Writes the DSCP part of `mark` into `packet` (ECN kept, IPv4 checksum fixed). The
    /// 802.1p part is the back end's (NBL out-of-band data on Windows, skb priority on Linux).
    ///
    /// # Errors
    /// [`WireError`] when the packet cannot be parsed; the packet is then unchanged.
    pub fn rewrite(packet: &mut [u8], mark: Mark) -> Result<wire::Rewrite, WireError> {
        match mark.dscp {
            Some(d) => wire::set_dscp(packet, d),
            None => Ok(wire::Rewrite::Unchanged),
        }
    }
}

#[cfg(test)]
mod tests {
    // Tests may unwrap, index and panic: a panic is a test failure. Short names keep packet
    // fixtures readable.
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::panic,
        clippy::many_single_char_names
    )]
    use super::*;
    use crate::Limits;
    use alloc::vec::Vec;
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use proptest::strategy::Strategy;
    use qosmark_abi::{
        heapless_name::RuleName, Caller, Dscp, Family, PortRange, Prefix, Privilege, Request,
        RuleProtocol, RuleSpec, SocketInfo, TrafficType, QOS_NON_ADAPTIVE_FLOW,
    };

    const SEC: u64 = 1_000_000_000;
    const SRC4: [u8; 4] = [10, 0, 0, 1];
    const DST4: [u8; 4] = [192, 0, 2, 9];

    fn dscp(v: u8) -> Dscp {
        Dscp::try_new(v).unwrap()
    }

    fn pcp(v: u8) -> Pcp {
        Pcp::try_new(v).unwrap()
    }

    fn checksum(h: &[u8]) -> u16 {
        let mut sum: u32 = h
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// IPv4 packet: 20-byte header, then `payload` (0xa5 filled unless ports are given).
    fn v4(
        tos: u8,
        protocol: u8,
        id: u16,
        frag: (u16, bool),
        ports: Option<(u16, u16)>,
        payload: usize,
    ) -> Vec<u8> {
        let total = 20 + payload;
        let mut p = alloc::vec![0xa5u8; total];
        p[0] = 0x45;
        p[1] = tos;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        let ff = frag.0 | if frag.1 { 0x2000 } else { 0 };
        p[6..8].copy_from_slice(&ff.to_be_bytes());
        p[8] = 64;
        p[9] = protocol;
        p[10..12].copy_from_slice(&[0, 0]);
        p[12..16].copy_from_slice(&SRC4);
        p[16..20].copy_from_slice(&DST4);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        if let Some((s, d)) = ports {
            p[20..22].copy_from_slice(&s.to_be_bytes());
            p[22..24].copy_from_slice(&d.to_be_bytes());
        }
        p
    }

    fn udp4(tos: u8, sport: u16, dport: u16) -> Vec<u8> {
        v4(tos, 17, 1, (0, false), Some((sport, dport)), 28)
    }

    fn src6() -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)
    }

    fn dst6() -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)
    }

    /// IPv6 UDP packet, optionally with a Fragment header (id, offset in 8-octet units, more).
    fn udp6(tc: u8, frag: Option<(u32, u16, bool)>, ports: (u16, u16)) -> Vec<u8> {
        let mut p = alloc::vec![0xa5u8; 40];
        p[0] = 0x60 | (tc >> 4);
        p[1] = (tc << 4) | 0x0b; // flow label 0xb_cdef
        p[2..4].copy_from_slice(&[0xcd, 0xef]);
        p[6] = if frag.is_some() { 44 } else { 17 };
        p[7] = 64;
        p[8..24].copy_from_slice(&src6().octets());
        p[24..40].copy_from_slice(&dst6().octets());
        if let Some((id, offset, more)) = frag {
            p.extend_from_slice(&[17, 0]);
            p.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
            p.extend_from_slice(&id.to_be_bytes());
        }
        if frag.is_none_or(|f| f.1 == 0) {
            p.extend_from_slice(&ports.0.to_be_bytes());
            p.extend_from_slice(&ports.1.to_be_bytes());
            p.extend_from_slice(&[0, 16, 0, 0]);
        }
        p.extend_from_slice(&[0xa5; 8]);
        let payload = (p.len() - 40) as u16;
        p[4..6].copy_from_slice(&payload.to_be_bytes());
        p
    }

    fn rule(name: &str) -> RuleSpec {
        RuleSpec {
            name: RuleName::try_new(name).unwrap(),
            precedence: 127,
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

    fn engine_with(rules: &[RuleSpec]) -> Engine {
        let mut e = Engine::new(Limits::default());
        for r in rules {
            e.rules.insert(r.clone(), &mut e.shapers).unwrap();
        }
        e
    }

    fn meta() -> PacketMeta {
        PacketMeta::default()
    }

    fn status(e: &Engine) -> StatusInfo {
        let mut s = StatusInfo::default();
        e.stats.fill_status(&mut s);
        s
    }

    fn ef() -> Verdict {
        Verdict::Mark(Mark {
            dscp: Some(Dscp::EF),
            pcp: None,
        })
    }

    #[test]
    fn skips_before_any_lookup() {
        let e = engine_with(&[rule("all")]);
        let injected = PacketMeta {
            self_injected: true,
            current_pcp: None,
        };
        assert_eq!(
            e.classify(&udp4(0, 1, 2), &injected, 0),
            Verdict::Skip(SkipReason::SelfInjected)
        );
        assert_eq!(
            e.classify(&[], &meta(), 0),
            Verdict::Skip(SkipReason::NotIp)
        );
        assert_eq!(
            e.classify(&[0x20; 40], &meta(), 0),
            Verdict::Skip(SkipReason::NotIp)
        );
        let mut bad_ihl = udp4(0, 1, 2);
        bad_ihl[0] = 0x44;
        assert_eq!(
            e.classify(&bad_ihl, &meta(), 0),
            Verdict::Skip(SkipReason::Malformed)
        );
        let p = udp4(0, 1, 2);
        // Back ends may hand over only the headers (Windows: `NdisGetDataBuffer` of the first
        // bytes): a buffer shorter than the IP total length is classified from its headers.
        assert_eq!(e.classify(&p[..30], &meta(), 0), ef());
        // Ports cut off, or the IP header itself cut off.
        assert_eq!(
            e.classify(&p[..22], &meta(), 0),
            Verdict::Skip(SkipReason::Truncated)
        );
        assert_eq!(
            e.classify(&p[..10], &meta(), 0),
            Verdict::Skip(SkipReason::Truncated)
        );
        let icmp = v4(0, 1, 1, (0, false), None, 8);
        assert_eq!(
            e.classify(&icmp, &meta(), 0),
            Verdict::Skip(SkipReason::OtherProtocol)
        );
        // TCP whose ports are cut off by the IP total length.
        let short_tcp = v4(0, 6, 1, (0, false), None, 3);
        assert_eq!(
            e.classify(&short_tcp, &meta(), 0),
            Verdict::Skip(SkipReason::Truncated)
        );
        let mut esp = udp6(0, None, (1, 2));
        esp[6] = 50;
        assert_eq!(
            e.classify(&esp, &meta(), 0),
            Verdict::Skip(SkipReason::TransportUnreachable)
        );
        // Only the headers-only packet reached the rule.
        assert_eq!(e.rules.list().unwrap()[0].counters.packets, 1);
    }

    #[test]
    fn no_rule_no_match() {
        let e = engine_with(&[]);
        assert_eq!(
            e.classify(&udp4(0, 1, 2), &meta(), 0),
            Verdict::Skip(SkipReason::NoMatch)
        );
    }

    #[test]
    fn mark_rewrite_then_already_marked_keeps_ecn() {
        let e = engine_with(&[rule("ef")]);
        let mut p = udp4(0x03, 5000, 53); // DSCP 0, ECN CE
        let v = e.classify(&p, &meta(), 0);
        assert_eq!(v, ef());
        let Verdict::Mark(m) = v else { unreachable!() };
        assert_eq!(Engine::rewrite(&mut p, m), Ok(wire::Rewrite::Changed));
        // Independent check with etherparse.
        let h = etherparse::Ipv4HeaderSlice::from_slice(&p).unwrap();
        assert_eq!(h.dcp().value(), 46);
        assert_eq!(h.ecn().value(), 3);
        assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
        assert_eq!(e.classify(&p, &meta(), 0), Verdict::AlreadyMarked);
        assert_eq!(Engine::rewrite(&mut p, m), Ok(wire::Rewrite::Unchanged));
        // A mark without DSCP leaves the bytes alone.
        let before = p.clone();
        assert_eq!(
            Engine::rewrite(
                &mut p,
                Mark {
                    dscp: None,
                    pcp: Some(pcp(3))
                }
            ),
            Ok(wire::Rewrite::Unchanged)
        );
        assert_eq!(p, before);
    }

    #[test]
    fn ipv6_rewrite_keeps_ecn_and_flow_label() {
        let e = engine_with(&[rule("ef")]);
        let mut p = udp6(0x01, None, (5000, 53));
        let Verdict::Mark(m) = e.classify(&p, &meta(), 0) else {
            panic!("not marked")
        };
        assert_eq!(Engine::rewrite(&mut p, m), Ok(wire::Rewrite::Changed));
        let h = etherparse::Ipv6HeaderSlice::from_slice(&p).unwrap();
        assert_eq!(h.dscp().value(), 46);
        assert_eq!(h.ecn().value(), 1);
        assert_eq!(h.flow_label().value(), 0xb_cdef);
        assert_eq!(e.classify(&p, &meta(), 0), Verdict::AlreadyMarked);
    }

    #[test]
    fn pcp_only_counts_as_done_when_back_end_reports_it() {
        let mut r = rule("ef-pcp5");
        r.pcp = Some(pcp(5));
        let e = engine_with(&[r]);
        let p = udp4(46 << 2, 1, 2);
        let want = Mark {
            dscp: Some(Dscp::EF),
            pcp: Some(pcp(5)),
        };
        assert_eq!(e.classify(&p, &meta(), 0), Verdict::Mark(want));
        let wrong = PacketMeta {
            self_injected: false,
            current_pcp: Some(pcp(4)),
        };
        assert_eq!(e.classify(&p, &wrong, 0), Verdict::Mark(want));
        let right = PacketMeta {
            self_injected: false,
            current_pcp: Some(pcp(5)),
        };
        assert_eq!(e.classify(&p, &right, 0), Verdict::AlreadyMarked);
        // Right PCP but wrong DSCP still needs a rewrite.
        assert_eq!(e.classify(&udp4(0, 1, 2), &right, 0), Verdict::Mark(want));
    }

    #[test]
    fn traffic_type_rule_takes_table_dscp_and_only_its_own_pcp() {
        let mut voice = rule("voice");
        voice.action = RuleAction::TrafficType(TrafficType::Voice);
        voice.pcp = Some(pcp(3));
        let e = engine_with(&[voice]);
        let table = e.control.traffic_table();
        let want = Mark {
            dscp: table.marks[TrafficType::Voice.index()].dscp,
            pcp: Some(pcp(3)),
        };
        assert_eq!(e.classify(&udp4(0, 1, 2), &meta(), 0), Verdict::Mark(want));
    }

    #[test]
    fn best_effort_rule_is_matched_but_not_marked() {
        let mut be = rule("be");
        be.action = RuleAction::TrafficType(TrafficType::BestEffort);
        let e = engine_with(&[be]);
        let v = e.classify(&udp4(0, 1, 2), &meta(), 0);
        assert_eq!(v, Verdict::Skip(SkipReason::NoMarkConfigured));
        let c = e.rules.list().unwrap()[0].counters;
        assert_eq!(
            (c.packets, c.bytes, c.marked, c.already_marked),
            (1, 48, 0, 0)
        );
    }

    #[test]
    fn precedence_and_tie_breaks_through_classify() {
        let mut low = rule("low-specific");
        low.precedence = 10;
        low.remote_prefix = Some(Prefix {
            addr: IpAddr::V4(Ipv4Addr::from(DST4)),
            len: 32,
        });
        low.remote_ports = Some(PortRange {
            first: 53,
            last: 53,
        });
        low.action = RuleAction::Dscp(dscp(10));
        let mut high = rule("high-broad");
        high.precedence = 20;
        high.action = RuleAction::Dscp(dscp(20));
        let mut tie = rule("high-more-conditions");
        tie.precedence = 20;
        tie.protocol = RuleProtocol::Udp;
        tie.action = RuleAction::Dscp(dscp(30));
        let e = engine_with(&[low, high, tie]);
        let want = |d| {
            Verdict::Mark(Mark {
                dscp: Some(dscp(d)),
                pcp: None,
            })
        };
        assert_eq!(e.classify(&udp4(0, 1, 53), &meta(), 0), want(30));
        let tcp = v4(0, 6, 1, (0, false), Some((1, 53)), 20);
        assert_eq!(e.classify(&tcp, &meta(), 0), want(20));
    }

    #[test]
    fn counters_exact() {
        let mut r = rule("dst-53");
        r.remote_ports = Some(PortRange {
            first: 53,
            last: 53,
        });
        let e = engine_with(&[r]);
        let _ = e.classify(&udp4(0, 1, 53), &meta(), 0); // marked, 48 bytes
        let _ = e.classify(&udp4(46 << 2, 1, 53), &meta(), 0); // already marked, 48 bytes
        let _ = e.classify(&udp4(0, 1, 54), &meta(), 0); // no match
        let _ = e.classify(&[0x00], &meta(), 0); // not IP
        let injected = PacketMeta {
            self_injected: true,
            current_pcp: None,
        };
        let _ = e.classify(&udp4(0, 1, 53), &injected, 0);
        let c = e.rules.list().unwrap()[0].counters;
        assert_eq!(
            (c.packets, c.bytes, c.marked, c.already_marked),
            (2, 96, 1, 1)
        );
        let s = status(&e);
        assert_eq!((s.packets, s.marked, s.already_marked), (5, 1, 1));
        let mut skipped = [0u64; SkipReason::COUNT];
        skipped[SkipReason::NoMatch as usize] = 1;
        skipped[SkipReason::NotIp as usize] = 1;
        skipped[SkipReason::SelfInjected as usize] = 1;
        assert_eq!(s.skipped, skipped);
    }

    #[test]
    fn v4_fragments_follow_their_first_fragment() {
        let e = engine_with(&[rule("ef")]);
        let first = v4(0x02, 17, 0x4242, (0, true), Some((5000, 53)), 1480);
        let later = v4(0x02, 17, 0x4242, (185, true), None, 1480);
        let last = v4(0x02, 17, 0x4242, (370, false), None, 100);
        let other = v4(0x02, 17, 0x4343, (185, false), None, 100);
        // Before the first fragment: unknown.
        assert_eq!(
            e.classify(&later, &meta(), 0),
            Verdict::Skip(SkipReason::FragmentUnknown)
        );
        assert_eq!(e.classify(&first, &meta(), SEC), ef());
        assert_eq!(e.classify(&later, &meta(), 2 * SEC), ef());
        assert_eq!(e.classify(&last, &meta(), 2 * SEC), ef());
        assert_eq!(
            e.classify(&other, &meta(), 2 * SEC),
            Verdict::Skip(SkipReason::FragmentUnknown)
        );
        // A later fragment that already carries the mark.
        let mut later_marked = later.clone();
        let rewritten = Engine::rewrite(
            &mut later_marked,
            Mark {
                dscp: Some(Dscp::EF),
                pcp: None,
            },
        )
        .unwrap();
        assert_eq!(rewritten, crate::wire::Rewrite::Changed);
        assert_eq!(
            e.classify(&later_marked, &meta(), 2 * SEC),
            Verdict::AlreadyMarked
        );
        // Expiry ~30 s after the first fragment.
        assert_eq!(
            e.classify(&later, &meta(), 32 * SEC),
            Verdict::Skip(SkipReason::FragmentUnknown)
        );
        // Only the first fragment counted on the rule; the fragments count globally.
        let c = e.rules.list().unwrap()[0].counters;
        assert_eq!((c.packets, c.bytes, c.marked), (1, 1500, 1));
        let s = status(&e);
        assert_eq!((s.packets, s.marked, s.already_marked), (7, 3, 1));
        assert_eq!(s.skipped[SkipReason::FragmentUnknown as usize], 3);
        assert_eq!(e.fragments.stats().hits, 3);
    }

    #[test]
    fn unmarked_first_fragment_is_not_remembered() {
        let mut r = rule("dst-53");
        r.remote_ports = Some(PortRange {
            first: 53,
            last: 53,
        });
        let e = engine_with(&[r]);
        let first = v4(0, 17, 7, (0, true), Some((5000, 54)), 1480);
        let later = v4(0, 17, 7, (185, false), None, 100);
        assert_eq!(
            e.classify(&first, &meta(), 0),
            Verdict::Skip(SkipReason::NoMatch)
        );
        assert_eq!(
            e.classify(&later, &meta(), 0),
            Verdict::Skip(SkipReason::FragmentUnknown)
        );
        assert_eq!(e.fragments.stats().inserts, 0);
    }

    #[test]
    fn fragment_eviction_under_pressure() {
        let mut e = Engine::new(Limits {
            fragment_slots: 1,
            ..Limits::default()
        });
        e.rules.insert(rule("ef"), &mut e.shapers).unwrap();
        let first_a = v4(0, 17, 1, (0, true), Some((5000, 53)), 1480);
        let first_b = v4(0, 17, 2, (0, true), Some((5000, 53)), 1480);
        let later_a = v4(0, 17, 1, (185, false), None, 8);
        let later_b = v4(0, 17, 2, (185, false), None, 8);
        assert_eq!(e.classify(&first_a, &meta(), 0), ef());
        assert_eq!(e.classify(&first_b, &meta(), 0), ef());
        assert_eq!(
            e.classify(&later_a, &meta(), 0),
            Verdict::Skip(SkipReason::FragmentUnknown)
        );
        assert_eq!(e.classify(&later_b, &meta(), 0), ef());
        assert_eq!(e.fragments.stats().evictions, 1);
    }

    #[test]
    fn ipv6_fragment_header() {
        let e = engine_with(&[rule("ef")]);
        let first = udp6(0, Some((0xdead_beef, 0, true)), (5000, 53));
        let later = udp6(0, Some((0xdead_beef, 100, false)), (0, 0));
        let other = udp6(0, Some((0x0000_beef, 100, false)), (0, 0));
        assert_eq!(e.classify(&first, &meta(), 0), ef());
        assert_eq!(e.classify(&later, &meta(), 0), ef());
        assert_eq!(
            e.classify(&other, &meta(), 0),
            Verdict::Skip(SkipReason::FragmentUnknown)
        );
    }

    /// A registered socket beats every rule, even one of the highest precedence.
    #[test]
    fn socket_flow_beats_rule() {
        let mut r = rule("catch-all");
        r.precedence = 255;
        r.action = RuleAction::Dscp(dscp(10));
        let mut e = engine_with(&[r]);
        let p = udp4(0, 5000, 53);
        let rule_mark = Verdict::Mark(Mark {
            dscp: Some(dscp(10)),
            pcp: None,
        });
        assert_eq!(e.classify(&p, &meta(), 0), rule_mark);
        let h = e
            .open_handle(Caller {
                pid: 42,
                privilege: Privilege::User,
            })
            .unwrap();
        let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(SRC4)), 5000);
        let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(DST4)), 53);
        let req = Request::AddSocketToFlow {
            socket: SocketInfo {
                socket: 7,
                family: Family::V4,
                protocol: Protocol::Udp,
                local,
                peer: Some(peer),
            },
            dest: None,
            traffic_type: TrafficType::Voice,
            flags: QOS_NON_ADAPTIVE_FLOW,
            flow_id: 0,
        };
        e.apply(h, &req).unwrap();
        // Voice = CS7 (56) in qWAVE's table; a non-adaptive flow requests no 802.1p.
        let v = e.classify(&p, &meta(), 0);
        assert_eq!(
            v,
            Verdict::Mark(Mark {
                dscp: Some(dscp(56)),
                pcp: None,
            })
        );
        // The rule saw only the packet classified before the socket was registered.
        assert_eq!(e.rules.list().unwrap()[0].counters.packets, 1);
        // Another port of the same host is not the socket: the rule applies.
        assert_eq!(e.classify(&udp4(0, 5001, 53), &meta(), 0), rule_mark);
    }

    /// Later fragments follow the mark their first fragment got from the shaper: conformant
    /// or non-conformant (`QOSUseNonConformantMarkings`).
    #[test]
    fn fragments_follow_the_shaped_mark_of_their_first_fragment() {
        let mut e = engine_with(&[]);
        let h = e
            .open_handle(Caller {
                pid: 42,
                privilege: Privilege::User,
            })
            .unwrap();
        let req = Request::AddSocketToFlow {
            socket: SocketInfo {
                socket: 7,
                family: Family::V4,
                protocol: Protocol::Udp,
                local: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(SRC4)), 5000),
                peer: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(DST4)), 53)),
            },
            dest: None,
            traffic_type: TrafficType::Voice,
            flags: QOS_NON_ADAPTIVE_FLOW,
            flow_id: 0,
        };
        let Ok(qosmark_abi::Response::FlowId(flow_id)) = e.apply(h, &req) else {
            panic!("flow")
        };
        let rate = Request::SetFlow {
            flow_id,
            op: qosmark_abi::SetFlow::OutgoingRate(qosmark_abi::FlowRate {
                bandwidth: 12_000,
                shaping: qosmark_abi::Shaping::UseNonConformantMarkings,
                reason: 0,
            }),
        };
        e.apply(h, &rate).unwrap();
        let cs7 = Verdict::Mark(Mark {
            dscp: Some(dscp(56)),
            pcp: None,
        });
        let first = |id| v4(0, 17, id, (0, true), Some((5000, 53)), 1480);
        let later = |id| v4(0, 17, id, (185, false), None, 100);
        // One packet of credit plus the first: two conformant, then the excess gets DSCP 0,
        // which a TOS-0 packet already carries.
        assert_eq!(e.classify(&first(1), &meta(), SEC), cs7);
        assert_eq!(e.classify(&first(2), &meta(), SEC), cs7);
        assert_eq!(e.classify(&first(3), &meta(), SEC), Verdict::AlreadyMarked);
        assert_eq!(e.classify(&later(1), &meta(), SEC), cs7);
        assert_eq!(e.classify(&later(3), &meta(), SEC), Verdict::AlreadyMarked);
        let mut marked = later(3);
        marked[1] = 56 << 2;
        let c = checksum(&{
            let mut h = marked[..20].to_vec();
            h[10] = 0;
            h[11] = 0;
            h
        });
        marked[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(
            e.classify(&marked, &meta(), SEC),
            Verdict::Mark(Mark {
                dscp: Some(dscp(0)),
                pcp: None
            })
        );
    }

    #[test]
    fn concurrent_classify_counts_exactly() {
        let e = engine_with(&[rule("ef")]);
        let marked = udp4(0, 1, 53);
        let done = udp4(46 << 2, 1, 53);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..500 {
                        assert_eq!(e.classify(&marked, &meta(), 0), ef());
                        assert_eq!(e.classify(&done, &meta(), 0), Verdict::AlreadyMarked);
                    }
                });
            }
        });
        let s = status(&e);
        assert_eq!((s.packets, s.marked, s.already_marked), (4000, 2000, 2000));
        let c = e.rules.list().unwrap()[0].counters;
        assert_eq!(
            (c.packets, c.bytes, c.marked, c.already_marked),
            (4000, 4000 * 48, 2000, 2000)
        );
    }

    #[test]
    fn fail_open_is_counted_per_reason_and_apart_from_verdicts() {
        let e = engine_with(&[]);
        e.record_fail_open(FailOpen::InjectFailed);
        e.record_fail_open(FailOpen::InjectFailed);
        e.record_fail_open(FailOpen::Oversize);
        let s = status(&e);
        let mut want = [0u64; FailOpen::COUNT];
        want[FailOpen::InjectFailed as usize] = 2;
        want[FailOpen::Oversize as usize] = 1;
        assert_eq!(s.fail_open, want);
        // A back-end failure is not a classified packet.
        assert_eq!(s.packets, 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Any bytes: no panic, and every packet lands in exactly one global counter.
        #[test]
        fn arbitrary_bytes_never_panic_and_are_counted_once(
            packets in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
                    // Mostly-valid IPv4/IPv6 headers with random tails and lengths.
                    (
                        proptest::prelude::any::<bool>(),
                        proptest::collection::vec(proptest::prelude::any::<u8>(), 0..60),
                    )
                        .prop_map(|(six, tail)| {
                            let mut p = if six { udp6(0, None, (1, 53)) } else { udp4(0, 1, 53) };
                            for (d, s) in p.iter_mut().skip(1).zip(tail) { *d = s; }
                            p
                        }),
                ],
                1..20,
            ),
            now in proptest::prelude::any::<u64>(),
        ) {
            let e = engine_with(&[rule("ef")]);
            let mut buf = Vec::new();
            for p in &packets {
                let v = e.classify(p, &meta(), now);
                if let Verdict::Mark(m) = v {
                    buf.clone_from(p);
                    proptest::prop_assert!(Engine::rewrite(&mut buf, m).is_ok());
                }
            }
            let s = status(&e);
            let skipped: u64 = s.skipped.iter().sum();
            proptest::prop_assert_eq!(s.packets, packets.len() as u64);
            proptest::prop_assert_eq!(s.marked + s.already_marked + skipped, s.packets);
        }
    }
}
