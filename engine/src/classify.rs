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
//! 5. Socket flows first ([`crate::control`]): a registered socket beats every rule. Then the
//!    rules ([`crate::rules`]). Nothing → `Skip(NoMatch)`.
//! 6. The mark. A socket flow's mark is resolved by the control plane. A rule's mark is its
//!    DSCP action, or for a traffic-type action the table's DSCP for that type; its 802.1p is
//!    the rule's explicit `pcp` only — rules are policies, and Windows policies request 802.1p
//!    only through `PriorityValue8021Action`, never through a traffic type.
//! 7. An empty mark → `Skip(NoMarkConfigured)` (the flow/rule counts the packet as not
//!    marked). A packet that already has the DSCP (or no DSCP is to be set) and whose 802.1p is
//!    already the requested one (or none is requested) → `AlreadyMarked`. Otherwise `Mark`.
//! 8. A first fragment (offset 0, more fragments) that got `Mark` or `AlreadyMarked` is
//!    remembered so its later fragments get the same mark.
//!
//! Counters: the matched flow or rule counts every packet it matched with its IP total length;
//! the global counters count every classified packet, its outcome and each skip reason.
//! Nothing on this path allocates or takes a lock.

use crate::counters::{Counters, Outcome};
use crate::frag::FragmentKey;
use crate::wire::{self, IpSummary, IpVersion, Transport, WireError};
use crate::{traffic, Engine, FiveTuple};
use core::net::SocketAddr;
use core::sync::atomic::{AtomicU64, Ordering};
use qosmark_abi::{Mark, Pcp, Protocol, RuleAction, SkipReason, StatusInfo};

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
}

/// Global counters (relaxed atomics: each exact, not a consistent snapshot together).
#[derive(Debug, Default)]
pub(crate) struct GlobalCounters {
    packets: AtomicU64,
    marked: AtomicU64,
    already_marked: AtomicU64,
    skipped: [AtomicU64; SkipReason::COUNT],
}

impl GlobalCounters {
    /// Counts one classified packet with its verdict.
    fn count(&self, verdict: Verdict) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        let counter = match verdict {
            Verdict::Mark(_) => &self.marked,
            Verdict::AlreadyMarked => &self.already_marked,
            Verdict::Skip(reason) => match self.skipped.get(reason as usize) {
                Some(c) => c,
                None => return,
            },
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Fills the packet counters of `status` (packets, marked, already marked, skipped).
    #[allow(
        dead_code,
        reason = "called by control::apply(QueryStatus), wired at merge"
    )]
    pub(crate) fn fill_status(&self, status: &mut StatusInfo) {
        status.packets = self.packets.load(Ordering::Relaxed);
        status.marked = self.marked.load(Ordering::Relaxed);
        status.already_marked = self.already_marked.load(Ordering::Relaxed);
        for (out, c) in status.skipped.iter_mut().zip(self.skipped.iter()) {
            *out = c.load(Ordering::Relaxed);
        }
    }
}

/// The verdict for a packet whose current DSCP / 802.1p are known and whose target is `mark`.
fn decide(mark: Mark, summary: &IpSummary, meta: &PacketMeta) -> Verdict {
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

fn outcome(verdict: Verdict) -> Outcome {
    match verdict {
        Verdict::Mark(_) => Outcome::Marked,
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
    /// Classifies one outbound packet (bytes from the IP header on). Never panics, never
    /// allocates; see the module docs for the order of decisions.
    #[must_use]
    pub fn classify(&self, packet: &[u8], meta: &PacketMeta, now_ns: u64) -> Verdict {
        let verdict = self.decide_packet(packet, meta, now_ns);
        self.stats.count(verdict);
        verdict
    }

    fn decide_packet(&self, packet: &[u8], meta: &PacketMeta, now_ns: u64) -> Verdict {
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
        let Some((mark, counters)) = self.resolve(&tuple) else {
            return Verdict::Skip(SkipReason::NoMatch);
        };
        let verdict = decide(mark, &summary, meta);
        counters.record(summary.total_len as u64, outcome(verdict));
        if let Some(f) = summary.fragment {
            if f.offset == 0 && f.more && !matches!(verdict, Verdict::Skip(_)) {
                self.fragments
                    .remember(&fragment_key(&summary, f.id), mark, now_ns);
            }
        }
        verdict
    }

    /// The target mark and counters of the socket flow or, failing that, the rule that
    /// `tuple` belongs to.
    fn resolve(&self, tuple: &FiveTuple) -> Option<(Mark, &Counters)> {
        if let Some(hit) = self.control.lookup(tuple) {
            return Some((hit.mark, hit.counters));
        }
        let hit = self.rules.lookup(tuple)?;
        let dscp = match hit.action {
            RuleAction::Dscp(d) => Some(d),
            RuleAction::TrafficType(tt) => {
                traffic::mark_for(self.control.traffic_table(), tt, false).dscp
            }
        };
        Some((Mark { dscp, pcp: hit.pcp }, hit.counters))
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
