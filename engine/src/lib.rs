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
//!
//! ## Concurrency model
//! `classify` takes `&self` and allocates nothing; `apply`, `open_handle` and `close_handle`
//! take `&mut self`. A back end wraps the engine in a reader/writer lock: shared on the packet
//! path, exclusive for control requests. Counters, the fragment memory and the owner table use atomics so the
//! packet path never needs the exclusive lock.
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
pub mod traffic;
pub mod tuple;
pub mod wire;

pub use classify::{PacketMeta, Verdict};
pub use control::HandleId;
pub use error::EngineError;
pub use qosmark_abi as abi;
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
        }
    }

    /// The limits this engine enforces.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}
