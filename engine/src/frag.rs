//! Bounded, lock-free memory of first fragments, so the later fragments of a marked datagram
//! (which carry no transport header, hence no ports) get the same mark.
//!
//! ## What is remembered
//! When `classify` marks (or finds already marked) a *first* fragment — offset 0, more
//! fragments set — it stores the datagram's mark under the datagram's reassembly key:
//! * IPv4: (source, destination, protocol, 16-bit identification) — RFC 791's key;
//! * IPv6: (source, destination, 32-bit identification) — RFC 8200's key. The protocol is
//!   deliberately left out: in a non-first fragment the Fragment header's "next header" names
//!   the header after it, which need not be the transport header the first fragment reached.
//!
//! A later fragment (offset > 0) looks its key up and gets the stored mark. Fragments that
//! arrive *before* their first fragment (reordering, or a first fragment the engine never saw)
//! stay unmarked: `SkipReason::FragmentUnknown`. So does every fragment of an unmarked datagram
//! and every fragment whose entry expired or was evicted. That is the fail-open direction.
//!
//! ## Layout
//! `2^k` direct-mapped slots (the requested count rounded up to a power of two, at most
//! [`MAX_SLOTS`], fixed at construction; 0 disables the cache). Each slot is **one**
//! `AtomicU64`:
//!
//! ```text
//!  63      62..52         51..36             35..0
//! +-----+-------------+---------------+------------------+
//! |valid| mark (11 b) | time (16 b)   | tag (36 b)       |
//! +-----+-------------+---------------+------------------+
//!  mark = dscp present (1) | dscp (6) | pcp present (1) | pcp (3)
//! ```
//!
//! The key is hashed with a keyed 64-bit hash (foldhash, seeded per cache); the low bits pick
//! the slot, bits 28..63 are the tag. Since at most 2^20 slots are used, index bits and tag bits
//! are disjoint, so two keys share a slot *and* a tag with probability 2^-36 per lookup.
//! A newer first fragment simply overwrites its slot (eviction under pressure; counted).
//!
//! ## Time
//! `now_ns` is passed in (monotonic nanoseconds, as the back end knows it). The slot stores
//! `now_ns >> 28` (ticks of 2^28 ns ≈ 268 ms) modulo 2^16. An entry expires after
//! [`TIMEOUT_TICKS`] ticks ≈ 30 s: the order of the reassembly timeouts receivers use (RFC 8200
//! gives 60 s for IPv6; RFC 1122 recommends a fixed 60–120 s for IPv4), shortened because the
//! fragments of one outbound datagram leave the sender back to back, and a shorter life limits
//! confusion with a later datagram that reuses the 16-bit IPv4 identification. Ages are
//! computed modulo 2^16 ticks (≈ 4.9 h): a clock that goes backwards makes entries look very
//! old, i.e. expired (fail open); an entry left untouched for a multiple of 4.9 h could look
//! fresh again, but it still needs the same 36-bit tag — i.e. the same datagram key — to be
//! used.
//!
//! ## Concurrency and torn reads
//! `remember` and `lookup` take `&self` (classify runs under a shared lock, possibly on several
//! CPUs). A slot is written by a single atomic store and read by a single atomic load, so a
//! reader sees either the complete old entry or the complete new entry — a read cannot be torn
//! and can never combine one datagram's tag with another's mark or time. Two writers racing on a
//! slot: the last store wins and the other datagram's entry is lost — its later fragments go
//! unmarked (fail open). The only way to apply a wrong mark is a 36-bit tag collision between
//! two live datagrams in the same slot: probability ≤ 2^-36 per lookup. Relaxed ordering is
//! enough: the slot word is self-contained and publishes no other memory.

use core::hash::BuildHasher;
use core::net::IpAddr;
use core::sync::atomic::{AtomicU64, Ordering};
use foldhash::fast::FixedState;
use qosmark_abi::{Dscp, Mark, Pcp};

use alloc::vec::Vec;

/// Largest number of slots (2^20 = 8 MiB of slots).
pub const MAX_SLOTS: usize = 1 << 20;
/// Tick length: 2^`TICK_SHIFT` ns.
pub const TICK_SHIFT: u32 = 28;
/// Entry lifetime in ticks (112 × 268.4 ms ≈ 30.06 s).
pub const TIMEOUT_TICKS: u64 = 112;
/// Hash key of the fragment memory of [`crate::Engine::new`] (no random source).
pub(crate) const DEFAULT_KEY: u64 = 0x6a09_e667_f3bc_c908;

const VALID: u64 = 1 << 63;
const MARK_SHIFT: u32 = 52;
const TIME_SHIFT: u32 = 36;
const TIME_MASK: u64 = 0xffff;
const TAG_MASK: u64 = (1 << 36) - 1;

/// The reassembly key of a fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    src: IpAddr,
    dst: IpAddr,
    /// Protocol for IPv4; 0 for IPv6 (not part of the IPv6 key).
    protocol: u8,
    id: u32,
}

impl FragmentKey {
    /// The key of an IPv4 fragment (`id` is the 16-bit identification).
    #[must_use]
    pub fn v4(src: IpAddr, dst: IpAddr, protocol: u8, id: u16) -> Self {
        FragmentKey {
            src,
            dst,
            protocol,
            id: u32::from(id),
        }
    }

    /// The key of an IPv6 fragment.
    #[must_use]
    pub fn v6(src: IpAddr, dst: IpAddr, id: u32) -> Self {
        FragmentKey {
            src,
            dst,
            protocol: 0,
            id,
        }
    }
}

/// Counters of the fragment memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentStats {
    /// Lookups that found a live entry.
    pub hits: u64,
    /// Lookups that found nothing (empty, other datagram, expired).
    pub misses: u64,
    /// First fragments remembered.
    pub inserts: u64,
    /// Live entries of another datagram overwritten by an insert.
    pub evictions: u64,
}

/// Bounded memory of first fragments.
pub(crate) struct FragmentCache {
    slots: Vec<AtomicU64>,
    hasher: FixedState,
    hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
    evictions: AtomicU64,
}

impl core::fmt::Debug for FragmentCache {
    /// Slot count and counters only (not thousands of slot words).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FragmentCache")
            .field("slots", &self.slots.len())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn pack_mark(mark: Mark) -> u64 {
    let dscp = mark.dscp.map_or(0, |d| 0x40 | u64::from(d.value()));
    let pcp = mark.pcp.map_or(0, |p| 0x8 | u64::from(p.value()));
    (dscp << 4) | pcp
}

fn unpack_mark(bits: u64) -> Mark {
    let dscp_bits = (bits >> 4) & 0x7f;
    let pcp_bits = bits & 0xf;
    Mark {
        dscp: if dscp_bits & 0x40 != 0 {
            Dscp::try_new((dscp_bits & 0x3f) as u8).ok()
        } else {
            None
        },
        pcp: if pcp_bits & 0x8 != 0 {
            Pcp::try_new((pcp_bits & 0x7) as u8).ok()
        } else {
            None
        },
    }
}

fn ticks(now_ns: u64) -> u64 {
    (now_ns >> TICK_SHIFT) & TIME_MASK
}

impl FragmentCache {
    /// [`FragmentCache::with_key`] with [`DEFAULT_KEY`] (tests).
    #[cfg(test)]
    pub(crate) fn new(slots: usize) -> Self {
        Self::with_key(slots, DEFAULT_KEY)
    }

    /// A cache of `slots` slots rounded up to a power of two (at most [`MAX_SLOTS`]), keyed by
    /// `key` (a back end with a random source should pass a random key so slot and tag cannot
    /// be predicted); 0 slots, or a failed allocation, gives a disabled cache that remembers
    /// nothing (fail open).
    pub(crate) fn with_key(slots: usize, key: u64) -> Self {
        let n = if slots == 0 {
            0
        } else {
            slots.min(MAX_SLOTS).next_power_of_two()
        };
        let mut v = Vec::new();
        if v.try_reserve_exact(n).is_ok() {
            v.extend((0..n).map(|_| AtomicU64::new(0)));
        }
        FragmentCache {
            slots: v,
            hasher: FixedState::with_seed(key),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// Number of slots (a power of two, or 0 when disabled).
    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Slot and tag of `key`.
    fn locate(&self, key: &FragmentKey) -> Option<(&AtomicU64, u64)> {
        let hash = self.hasher.hash_one(key);
        let mask = self.slots.len().checked_sub(1)?;
        let slot = self.slots.get((hash as usize) & mask)?;
        Some((slot, (hash >> 28) & TAG_MASK))
    }

    /// Remembers `mark` for the datagram `key` (its first fragment was seen at `now_ns`).
    /// An empty mark is not stored.
    pub(crate) fn remember(&self, key: &FragmentKey, mark: Mark, now_ns: u64) {
        if mark.is_empty() {
            return;
        }
        let Some((slot, tag)) = self.locate(key) else {
            return;
        };
        let word = VALID | (pack_mark(mark) << MARK_SHIFT) | (ticks(now_ns) << TIME_SHIFT) | tag;
        let old = slot.swap(word, Ordering::Relaxed);
        self.inserts.fetch_add(1, Ordering::Relaxed);
        if Self::live(old, now_ns) && old & TAG_MASK != tag {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn live(word: u64, now_ns: u64) -> bool {
        let age = ticks(now_ns).wrapping_sub((word >> TIME_SHIFT) & TIME_MASK) & TIME_MASK;
        word & VALID != 0 && age <= TIMEOUT_TICKS
    }

    /// The mark remembered for `key`, if its first fragment was seen less than the timeout ago.
    pub(crate) fn lookup(&self, key: &FragmentKey, now_ns: u64) -> Option<Mark> {
        let found = self.locate(key).and_then(|(slot, tag)| {
            let word = slot.load(Ordering::Relaxed);
            (Self::live(word, now_ns) && word & TAG_MASK == tag)
                .then(|| unpack_mark((word >> MARK_SHIFT) & 0x7ff))
        });
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Current counters.
    pub(crate) fn stats(&self) -> FragmentStats {
        FragmentStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            inserts: self.inserts.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    // Tests may unwrap and index: a panic is a test failure.
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};
    use proptest::prelude::*;
    use std::collections::HashMap;

    const SEC: u64 = 1_000_000_000;

    fn v4key(id: u16) -> FragmentKey {
        FragmentKey::v4(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
            17,
            id,
        )
    }

    fn mark(d: u8, p: Option<u8>) -> Mark {
        Mark {
            dscp: Some(Dscp::try_new(d).unwrap()),
            pcp: p.map(|p| Pcp::try_new(p).unwrap()),
        }
    }

    #[test]
    fn slots_round_up_and_cap() {
        assert_eq!(FragmentCache::new(0).slots(), 0);
        assert_eq!(FragmentCache::new(1).slots(), 1);
        assert_eq!(FragmentCache::new(1000).slots(), 1024);
        assert_eq!(FragmentCache::new(1024).slots(), 1024);
        assert_eq!(FragmentCache::new(usize::MAX).slots(), MAX_SLOTS);
    }

    #[test]
    fn debug_is_short() {
        let text = std::format!("{:?}", FragmentCache::new(1024));
        assert!(text.contains("slots: 1024") && text.len() < 200, "{text}");
    }

    #[test]
    fn disabled_cache_remembers_nothing() {
        let c = FragmentCache::new(0);
        c.remember(&v4key(1), mark(46, None), 0);
        assert_eq!(c.lookup(&v4key(1), 0), None);
        assert_eq!(
            c.stats(),
            FragmentStats {
                hits: 0,
                misses: 1,
                inserts: 0,
                evictions: 0
            }
        );
    }

    #[test]
    fn remember_then_hit_and_other_key_misses() {
        let c = FragmentCache::new(64);
        let m = mark(46, Some(5));
        c.remember(&v4key(7), m, 10 * SEC);
        assert_eq!(c.lookup(&v4key(7), 10 * SEC + 1), Some(m));
        assert_eq!(c.lookup(&v4key(8), 10 * SEC + 1), None);
        // Protocol is part of the IPv4 key.
        let other_proto = FragmentKey::v4(v4key(7).src, v4key(7).dst, 6, 7);
        assert_eq!(c.lookup(&other_proto, 10 * SEC), None);
        assert_eq!(
            c.stats(),
            FragmentStats {
                hits: 1,
                misses: 2,
                inserts: 1,
                evictions: 0
            }
        );
    }

    #[test]
    fn empty_mark_is_not_stored() {
        let c = FragmentCache::new(8);
        c.remember(&v4key(1), Mark::default(), 0);
        assert_eq!(c.lookup(&v4key(1), 0), None);
        assert_eq!(c.stats().inserts, 0);
    }

    #[test]
    fn expiry_at_thirty_seconds() {
        let c = FragmentCache::new(8);
        let t0 = 1_000 * SEC;
        c.remember(&v4key(1), mark(10, None), t0);
        assert!(c.lookup(&v4key(1), t0 + 29 * SEC).is_some());
        assert_eq!(c.lookup(&v4key(1), t0 + 31 * SEC), None);
        // A clock that runs backwards makes the entry look expired (fail open).
        assert_eq!(c.lookup(&v4key(1), t0 - 5 * SEC), None);
    }

    #[test]
    fn eviction_under_pressure_is_counted_and_loses_old_entries() {
        // One slot: every new datagram evicts the previous one.
        let c = FragmentCache::new(1);
        c.remember(&v4key(1), mark(8, None), 0);
        c.remember(&v4key(2), mark(40, None), 0);
        assert_eq!(c.lookup(&v4key(1), 0), None);
        assert_eq!(c.lookup(&v4key(2), 0), Some(mark(40, None)));
        // Overwriting an expired entry is not an eviction.
        c.remember(&v4key(3), mark(56, None), 100 * SEC);
        assert_eq!(
            c.stats(),
            FragmentStats {
                hits: 1,
                misses: 1,
                inserts: 3,
                evictions: 1
            }
        );
    }

    #[test]
    fn ipv6_key_ignores_protocol_and_uses_32_bit_id() {
        let a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let b = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        let c = FragmentCache::new(256);
        c.remember(&FragmentKey::v6(a, b, 0x1234_5678), mark(46, None), 0);
        assert_eq!(
            c.lookup(&FragmentKey::v6(a, b, 0x1234_5678), 0),
            Some(mark(46, None))
        );
        assert_eq!(c.lookup(&FragmentKey::v6(a, b, 0x0000_5678), 0), None);
        assert_eq!(c.lookup(&FragmentKey::v6(b, a, 0x1234_5678), 0), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Oracle: a plain map of the most recent insert per *slot*. Every hit must return the
        /// mark of the last remember() of the same key, and a key remembered last in its slot
        /// and still fresh must hit.
        #[test]
        fn behaves_like_a_direct_mapped_map(
            ops in proptest::collection::vec(
                (0u16..40, 0u8..64, proptest::option::of(0u8..8), any::<bool>()),
                1..200,
            ),
        ) {
            let c = FragmentCache::new(16);
            let mut last: HashMap<u16, Mark> = HashMap::new();
            let mut slot_owner: HashMap<usize, u16> = HashMap::new();
            for (id, d, p, write) in ops {
                let k = v4key(id);
                let (slot_ptr, _) = c.locate(&k).unwrap();
                let slot = c.slots.iter().position(|s| core::ptr::eq(s, slot_ptr)).unwrap();
                if write {
                    let m = mark(d, p);
                    c.remember(&k, m, 5 * SEC);
                    last.insert(id, m);
                    slot_owner.insert(slot, id);
                } else {
                    let got = c.lookup(&k, 5 * SEC);
                    if slot_owner.get(&slot) == Some(&id) {
                        prop_assert_eq!(got, last.get(&id).copied());
                    } else {
                        prop_assert_eq!(got, None);
                    }
                }
            }
        }

        #[test]
        fn mark_packing_round_trips(
            d in proptest::option::of(0u8..64),
            p in proptest::option::of(0u8..8),
        ) {
            let m = Mark {
                dscp: d.map(|d| Dscp::try_new(d).unwrap()),
                pcp: p.map(|p| Pcp::try_new(p).unwrap()),
            };
            prop_assert_eq!(unpack_mark(pack_mark(m)), m);
        }
    }
}
