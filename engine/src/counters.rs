//! Lock-free packet counters, updated on the packet path under a shared lock.

use core::sync::atomic::{AtomicU64, Ordering};
use qosmark_abi::CounterSnapshot;

/// Counters of one flow or rule. Relaxed atomics: each value is exact, the four are not a
/// consistent snapshot of one instant (nothing depends on that). A matched packet costs two
/// atomic adds (its bytes and its outcome); the packet count is the sum of the outcomes.
#[derive(Debug, Default)]
pub struct Counters {
    not_marked: AtomicU64,
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
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let counter = match outcome {
            Outcome::Marked => &self.marked,
            Outcome::AlreadyMarked => &self.already_marked,
            Outcome::NotMarked => &self.not_marked,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Current values.
    #[must_use]
    pub fn snapshot(&self) -> CounterSnapshot {
        let marked = self.marked.load(Ordering::Relaxed);
        let already_marked = self.already_marked.load(Ordering::Relaxed);
        let not_marked = self.not_marked.load(Ordering::Relaxed);
        CounterSnapshot {
            packets: marked.wrapping_add(already_marked).wrapping_add(not_marked),
            bytes: self.bytes.load(Ordering::Relaxed),
            marked,
            already_marked,
        }
    }
}
