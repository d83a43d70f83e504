//! # qosmark-engine
//!
//! Every decision qosmark makes lives here, in portable `no_std` Rust without `unsafe`, tested on
//! the host: which flow a packet belongs to, which mark it gets, whether a caller may do
//! something, and which error a bad request gets. The Windows driver and the Linux back end only
//! move bytes in and out.
//!
//! * [`wire`]: checked, zero-copy packet views (Ethernet + 802.1Q, IPv4, IPv6 + extension
//!   headers, TCP/UDP ports) and the DSCP / PCP rewrite.
//! * [`control`]: handles, flows and sockets with QOS2 semantics; [`Engine::apply`].
//! * [`traffic`]: the traffic-type table and the user DSCP allow-list.
//! * [`rules`]: administrator rules (Policy-based QoS equivalent) and their indexed classifier.
//! * [`classify`]: [`Engine::classify`], the per-packet decision, and the global counters.
//! * [`frag`]: the bounded memory of first fragments, so later fragments get the same mark.
//! * [`owner`]: the bounded memory of which process owns which flow (ownership check of user
//!   socket flows, [`Limits::check_owner`]).
//! * [`shaper`]: outgoing-rate shaping — a lock-free GCRA token bucket per rate-limited flow
//!   and per throttled rule, [`Verdict::Delay`], and [`shaper::HeldQueue`], the back ends'
//!   container of held packets.
//!
//! ## Shaping
//! `QOSSetFlow(QOSSetOutgoingRate)` (and a rule's `throttle_bps`) gives a flow (rule) a shaper.
//! Its packets then get, besides the usual verdicts, [`Verdict::Delay`] `{ mark, until_ns,
//! shaper }`: rewrite with `mark` now, hold the packet, send it at `until_ns`. The bucket is one
//! 1 500-byte packet deep, so a flow that sends at its rate is never delayed, and one whose
//! packets bunch by up to two packet times waits at most one (exact statement and proof in
//! [`shaper`]). Without queue room the packet goes out at once with its conformant mark
//! (`FailOpen::ShaperQueueFull`). The back end gives the room back with
//! [`Engine::shaper_released`] and releases the packets of shapers that
//! [`Engine::shaper_live`] calls dead (flow or rule removed, handle closed). See
//! `docs/shaping.md`.
//!
//! ## Concurrency model
//! `classify` takes `&self` and allocates nothing; `apply`, `open_handle` and `close_handle`
//! take `&mut self`. A back end wraps the engine in a reader/writer lock: shared on the packet
//! path, exclusive for control requests. Counters, the fragment memory, the owner table and
//! the shapers' buckets and queue room use atomics (the buckets a CAS loop), so the packet
//! path — [`Engine::classify`], [`Engine::shaper_released`], [`Engine::shaper_live`],
//! [`Engine::not_held`] — never needs the exclusive lock. Shapers are created and removed
//! only under it.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod classify;
pub mod control;
pub mod counters;
pub mod error;
pub mod frag;
pub mod owner;
pub mod rules;
pub mod shaper;
pub mod traffic;
pub mod tuple;
pub mod wire;

pub use classify::{PacketMeta, Verdict};
pub use control::HandleId;
pub use error::EngineError;
pub use qosmark_abi as abi;
pub use shaper::{HeldQueue, ShaperId};
pub use tuple::FiveTuple;

/// Bounds on everything the engine stores. Every limit is enforced with an error, never by
/// growing without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open handles.
    pub max_handles: usize,
    /// Flows in total.
    pub max_flows: usize,
    /// Flows per handle.
    pub max_flows_per_handle: usize,
    /// Socket / destination entries in total.
    pub max_sockets: usize,
    /// Socket / destination entries per handle.
    pub max_sockets_per_handle: usize,
    /// Admin rules.
    pub max_rules: usize,
    /// Slots of the first-fragment memory (rounded up to a power of two).
    pub fragment_slots: usize,
    /// Check flow ownership: a socket flow of a `Privilege::User` handle marks a packet only
    /// when the owner table ([`owner`]) says the packet's 5-tuple belongs to the handle's
    /// process. Off by default: the Linux back end proves ownership when the socket is
    /// registered (`SCM_RIGHTS`); the Windows driver, which cannot, turns it on and reports
    /// flows with [`Engine::report_flow`].
    pub check_owner: bool,
    /// Slots of the owner table (rounded up to a power of two; allocated only when
    /// `check_owner` is on).
    pub owner_slots: usize,
    /// Shapers (flows with an outgoing rate plus throttled rules); slots are allocated as
    /// shapers are created. Default 69 632: every flow and every rule at the default limits.
    pub max_shapers: usize,
    /// Packets one shaper may hold (default 16 384).
    pub shaper_queue_packets: u64,
    /// Bytes one shaper may hold (default 16 MiB: 13 s of backlog at 10 Mbit/s, and room for
    /// 10 000 packets of 1 500 bytes).
    pub shaper_queue_bytes: u64,
    /// Packets all shapers together may hold (default 32 768); a back end sizes its
    /// [`shaper::HeldQueue`] with this.
    pub held_packets_total: u64,
    /// Bytes all shapers together may hold (default 64 MiB).
    pub held_bytes_total: u64,
    /// Longest a back end can hold a delayed packet, in ns (default `u64::MAX`: no cap). A
    /// packet whose departure would be later is sent at once (`FailOpen::ShaperQueueFull`)
    /// without using up the rate. The Windows driver sets 1 s (clones must not be held long).
    pub shaper_max_delay_ns: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_handles: 4096,
            max_flows: 65_536,
            max_flows_per_handle: 16_384,
            max_sockets: 131_072,
            max_sockets_per_handle: 32_768,
            max_rules: 4096,
            fragment_slots: 1024,
            check_owner: false,
            owner_slots: 65_536,
            max_shapers: 65_536 + 4096,
            shaper_queue_packets: 16_384,
            shaper_queue_bytes: 16 << 20,
            held_packets_total: 32_768,
            held_bytes_total: 64 << 20,
            shaper_max_delay_ns: u64::MAX,
        }
    }
}

/// The engine: control state, rules, fragment memory and global counters.
#[derive(Debug)]
pub struct Engine {
    pub(crate) limits: Limits,
    pub(crate) control: control::ControlState,
    pub(crate) rules: rules::RuleSet,
    pub(crate) fragments: frag::FragmentCache,
    pub(crate) owners: owner::OwnerTable,
    pub(crate) stats: classify::GlobalCounters,
    pub(crate) shapers: shaper::ShaperTable,
}

impl Engine {
    /// An empty engine with these limits and the default traffic-type table.
    ///
    /// `max_flows` and `max_rules` are clamped to what one answer record can carry
    /// (`qosmark_abi::codec::MAX_FLOW_IDS`, `MAX_RULES`), so `EnumerateFlows` and `ListRules`
    /// can always be encoded. The fragment memory uses a fixed hash key: back ends with a
    /// source of randomness should prefer [`Engine::with_seed`].
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self::with_seed(limits, frag::DEFAULT_KEY)
    }

    /// [`Engine::new`] with the fragment memory and the owner table keyed by `seed`, so that
    /// nobody outside can predict which datagrams or flows share a slot; a back end seeds it from its platform's random
    /// source.
    #[must_use]
    pub fn with_seed(limits: Limits, seed: u64) -> Self {
        let limits = Limits {
            max_flows: limits.max_flows.min(abi::codec::MAX_FLOW_IDS as usize),
            max_rules: limits.max_rules.min(abi::codec::MAX_RULES as usize),
            ..limits
        };
        Engine {
            limits,
            control: control::ControlState::new(&limits),
            rules: rules::RuleSet::new(limits.max_rules),
            fragments: frag::FragmentCache::with_key(limits.fragment_slots, seed),
            owners: owner::OwnerTable::with_key(
                if limits.check_owner {
                    limits.owner_slots
                } else {
                    0
                },
                seed ^ owner::DEFAULT_KEY,
            ),
            stats: classify::GlobalCounters::default(),
            shapers: shaper::ShaperTable::new(
                limits.max_shapers,
                shaper::QueueLimits {
                    packets_per_shaper: limits.shaper_queue_packets,
                    bytes_per_shaper: limits.shaper_queue_bytes,
                    packets_total: limits.held_packets_total,
                    bytes_total: limits.held_bytes_total,
                    max_delay_ns: limits.shaper_max_delay_ns,
                },
            ),
        }
    }

    /// The limits this engine enforces.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A held packet of `shaper` left the back end's queue — sent, or dropped — so its room
    /// comes back. `bytes` must be what `classify` reserved: [`shaper::held_bytes`] of the
    /// bytes given to `classify` (the packet's IP length), as [`shaper::Held::bytes`] keeps it
    /// when the back end pushed that value. Lock-free (`&self`); a dead shaper's id is ignored.
    pub fn shaper_released(&self, shaper: ShaperId, bytes: u64) {
        self.shapers.released(shaper, bytes);
    }

    /// Whether `shaper` still exists. False once its flow or rule is removed or its handle
    /// closed: the back end then sends that shaper's held packets at once
    /// ([`shaper::HeldQueue::drain_where`]). Lock-free (`&self`).
    #[must_use]
    pub fn shaper_live(&self, shaper: ShaperId) -> bool {
        self.shapers.is_live(shaper)
    }

    /// The rate and behaviour of a live shaper.
    #[must_use]
    pub fn shaper_config(&self, shaper: ShaperId) -> Option<shaper::ShaperConfig> {
        self.shapers.config(shaper)
    }

    /// The counters of a live shaper.
    #[must_use]
    pub fn shaper_stats(&self, shaper: ShaperId) -> Option<shaper::ShaperStats> {
        self.shapers.stats(shaper)
    }

    /// For a back end that cannot hold a packet `classify` answered [`Verdict::Delay`] for (its
    /// own queue is full, a clone failed, or it does not shape yet): gives the reserved room back
    /// ([`Engine::shaper_released`] with [`shaper::held_bytes`]`(packet)`; `packet` = the bytes
    /// given to `classify`), counts `FailOpen::ShaperQueueFull`, and returns what to do with the
    /// packet now: `Mark` with the Delay's mark, or `Skip(NoMarkConfigured)` when that mark is
    /// empty. Any other verdict is returned unchanged. Lock-free (`&self`).
    #[must_use]
    pub fn not_held(&self, verdict: Verdict, packet: &[u8]) -> Verdict {
        let Verdict::Delay { mark, shaper, .. } = verdict else {
            return verdict;
        };
        self.shapers.released(shaper, shaper::held_bytes(packet));
        self.stats.count_fail_open(abi::FailOpen::ShaperQueueFull);
        if mark.is_empty() {
            Verdict::Skip(abi::SkipReason::NoMarkConfigured)
        } else {
            Verdict::Mark(mark)
        }
    }

    /// Packets and bytes held over all shapers (reserved by `classify`, not yet released).
    #[must_use]
    pub fn shaper_held(&self) -> (u64, u64) {
        self.shapers.held()
    }
}
