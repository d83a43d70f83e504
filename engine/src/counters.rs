//! Lock-free packet counters, updated on the packet path under a shared lock.

use core::sync::atomic::{AtomicU64, Ordering};
use qosmark_abi::CounterSnapshot;

/// Counters of one flow or rule. Relaxed atomics: each value is exact, the four are not a
/// consistent snapshot of one instant (nothing depends on that).
#[derive(Debug, Default)]
pub struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    marked: AtomicU64,
    already_marked: AtomicU64,
}

/// What happened to one matched packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The packet needs rewriting.
    Marked,
    /// The packet already carried the target mark.
    AlreadyMarked,
    /// Matched, but nothing to mark (best effort).
    NotMarked,
}

impl Counters {
    /// Counts one matched packet of `bytes` bytes.
    pub fn record(&self, bytes: u64, outcome: Outcome) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        match outcome {
            Outcome::Marked => {
                self.marked.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::AlreadyMarked => {
                self.already_marked.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::NotMarked => {}
        }
    }

    /// Current values.
    #[must_use]
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            marked: self.marked.load(Ordering::Relaxed),
            already_marked: self.already_marked.load(Ordering::Relaxed),
        }
    }
}
