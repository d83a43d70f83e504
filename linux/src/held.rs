//! Storage for the bytes of held (delayed) packets: a preallocated pool of fixed-size chunks.
//!
//! A packet the engine delays (`Verdict::Delay`) stays in the kernel's queue until its
//! departure time, but the kernel keeps the packet as it was queued: the rewritten bytes (the
//! conformant mark, the recomputed IPv4 checksum) must travel with the deferred verdict
//! (`NFQA_PAYLOAD`). The receive buffers are reused at the next `recvmmsg`, so those bytes
//! are copied here.
//!
//! The pool is one byte array cut into [`CHUNK`]-byte chunks and a `next` link per chunk; a
//! packet takes `ceil(len / CHUNK)` chunks linked into a chain, taken from and returned to a
//! free list. Nothing allocates after [`Payloads::new`]; the byte array is zero-initialised
//! memory the kernel maps lazily, so an idle pool costs address space, not resident memory.
//! When there are not enough free chunks, [`Payloads::store`] says so and the caller sends the
//! packet at once (a shaping fail-open): held bytes never exceed the budget.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bytes per chunk: a 1,500-byte packet takes 6, a 200-byte voice packet 1.
pub const CHUNK: usize = 256;
/// End of a chain / of the free list.
const NONE: u32 = u32::MAX;

/// A stored packet: its first chunk and its length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    first: u32,
    len: u32,
}

impl Stored {
    /// Length of the stored bytes.
    #[must_use]
    pub fn len(self) -> usize {
        self.len as usize
    }

    /// Whether no bytes are stored.
    #[must_use]
    pub fn is_empty(self) -> bool {
        self.len == 0
    }
}

/// The chunk pool (module docs).
#[derive(Debug)]
pub struct Payloads {
    bytes: Vec<u8>,
    /// Per chunk: the next chunk of its chain, or of the free list.
    next: Vec<u32>,
    /// Head of the list of returned chunks.
    free: u32,
    /// Chunks from here on were never used (free, not on the list): nothing is written at
    /// start, so `bytes` and `next` stay untouched zero pages until needed.
    fresh: u32,
    free_count: usize,
}

impl Payloads {
    /// A pool of `budget` bytes (rounded down to whole chunks, at most `u32::MAX - 1` chunks).
    #[must_use]
    pub fn new(budget: usize) -> Self {
        let chunks = (budget / CHUNK).min(NONE as usize - 1);
        Payloads {
            bytes: vec![0u8; chunks * CHUNK],
            next: vec![0u32; chunks],
            free: NONE,
            fresh: 0,
            free_count: chunks,
        }
    }

    /// One free chunk (the caller checked `free_count`).
    fn take(&mut self) -> Option<u32> {
        if self.free != NONE {
            let chunk = self.free;
            self.free = self.next.get(chunk as usize).copied().unwrap_or(NONE);
            Some(chunk)
        } else if (self.fresh as usize) < self.next.len() {
            self.fresh += 1;
            Some(self.fresh - 1)
        } else {
            None
        }
    }

    /// Chunks in the pool.
    #[must_use]
    pub fn capacity_chunks(&self) -> usize {
        self.next.len()
    }

    /// Chunks in use.
    #[must_use]
    pub fn used_chunks(&self) -> usize {
        self.next.len() - self.free_count
    }

    /// Copies `data` into the pool; `None` (nothing taken) when there are not enough free
    /// chunks or `data` is empty or longer than `u32::MAX`.
    pub fn store(&mut self, data: &[u8]) -> Option<Stored> {
        let len = u32::try_from(data.len()).ok().filter(|l| *l > 0)?;
        let need = data.len().div_ceil(CHUNK);
        if need > self.free_count {
            return None;
        }
        let mut first = NONE;
        let mut last = NONE;
        for piece in data.chunks(CHUNK) {
            // Cannot fail: `need` chunks are free (checked above).
            let chunk = self.take()?;
            self.free_count -= 1;
            let start = (chunk as usize) * CHUNK;
            if let Some(dst) = self.bytes.get_mut(start..start + piece.len()) {
                dst.copy_from_slice(piece);
            }
            match self.next.get_mut(last as usize) {
                Some(link) => *link = chunk,
                None => first = chunk,
            }
            last = chunk;
        }
        if let Some(link) = self.next.get_mut(last as usize) {
            *link = NONE;
        }
        Some(Stored { first, len })
    }

    /// The stored bytes, chunk by chunk, in order.
    pub fn pieces(&self, stored: Stored) -> impl Iterator<Item = &[u8]> + '_ {
        let mut at = stored.first;
        let mut left = stored.len as usize;
        std::iter::from_fn(move || {
            if left == 0 || at == NONE {
                return None;
            }
            let take = left.min(CHUNK);
            let start = (at as usize).checked_mul(CHUNK)?;
            let piece = self.bytes.get(start..start + take)?;
            left -= take;
            at = self.next.get(at as usize).copied().unwrap_or(NONE);
            Some(piece)
        })
    }

    /// Returns the chunks of `stored` to the free list.
    pub fn release(&mut self, stored: Stored) {
        let need = (stored.len as usize).div_ceil(CHUNK);
        let mut at = stored.first;
        for _ in 0..need {
            let Some(link) = self.next.get_mut(at as usize) else {
                return;
            };
            let following = *link;
            *link = self.free;
            self.free = at;
            self.free_count += 1;
            at = following;
        }
    }
}

/// Shaping state shared by the packet thread and the main thread: the shutdown handshake
/// (release every held packet before the queue goes away) and the counters the exit log
/// shows. Only the packet thread writes the counters.
#[derive(Debug, Default)]
pub struct ShapeShared {
    stop: AtomicBool,
    released_all: AtomicBool,
    /// Packets held now.
    pub held_now: AtomicU64,
    /// Packets held since the start.
    pub held: AtomicU64,
    /// Held packets sent at their departure time.
    pub released: AtomicU64,
    /// Held packets sent early because their shaper went away (flow or rule removed, handle
    /// closed).
    pub released_early: AtomicU64,
    /// Held packets sent at shutdown.
    pub released_at_exit: AtomicU64,
    /// Packets the engine delayed that could not be held (the back end's bound on held
    /// packets or bytes was reached): sent at once with their mark.
    pub fail_open: AtomicU64,
}

impl ShapeShared {
    /// Fresh state.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the packet thread to send every held packet now and to hold nothing from now on.
    pub fn request_release_all(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// [`ShapeShared::request_release_all`], then waits (at most `timeout`) until the packet
    /// thread has done it; returns whether it has.
    #[must_use]
    pub fn wait_released_all_after_request(&self, timeout: Duration) -> bool {
        self.request_release_all();
        let deadline = Instant::now() + timeout;
        while !self.released_all.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    pub(crate) fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub(crate) fn set_released_all(&self) {
        self.released_all.store(true, Ordering::SeqCst);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    /// One log line with the counters.
    #[must_use]
    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "shaping: {} held, {} released on time, {} released early (shaper gone), {} released at exit, {} held now, {} failed open (hold limit)",
            get(&self.held),
            get(&self.released),
            get(&self.released_early),
            get(&self.released_at_exit),
            get(&self.held_now),
            get(&self.fail_open)
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    use super::*;

    fn gather(p: &Payloads, s: Stored) -> Vec<u8> {
        p.pieces(s).flatten().copied().collect()
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn stores_and_returns_exact_bytes_across_chunks() {
        let mut p = Payloads::new(16 * CHUNK);
        let lens = [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7];
        let stored: Vec<_> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| (p.store(&data(l, i as u8)).unwrap(), l, i as u8))
            .collect();
        assert_eq!(p.used_chunks(), 1 + 1 + 1 + 2 + 4);
        for &(s, l, seed) in &stored {
            assert_eq!(s.len(), l);
            assert_eq!(gather(&p, s), data(l, seed));
        }
        for (s, _, _) in stored {
            p.release(s);
        }
        assert_eq!(p.used_chunks(), 0);
    }

    #[test]
    fn full_pool_refuses_and_takes_nothing() {
        let mut p = Payloads::new(4 * CHUNK + 100);
        assert_eq!(p.capacity_chunks(), 4);
        let a = p.store(&data(3 * CHUNK, 1)).unwrap();
        assert_eq!(p.store(&data(CHUNK + 1, 2)), None, "needs 2, 1 free");
        assert_eq!(p.used_chunks(), 3);
        let b = p.store(&data(CHUNK, 3)).unwrap();
        assert_eq!(p.store(&[1]), None);
        assert_eq!(p.store(&[]), None, "empty payloads are not stored");
        p.release(a);
        let c = p.store(&data(2 * CHUNK, 4)).unwrap();
        assert_eq!(gather(&p, b), data(CHUNK, 3));
        assert_eq!(gather(&p, c), data(2 * CHUNK, 4));
        assert_eq!(
            Payloads::new(CHUNK - 1).store(&[1]),
            None,
            "no chunk at all"
        );
    }

    /// Random store/release sequences against a model (a map of expected contents): every
    /// stored packet reads back exactly, the chunk count matches, nothing leaks.
    #[test]
    fn random_churn_matches_a_model() {
        let mut pool = Payloads::new(64 * CHUNK);
        let mut live: Vec<(Stored, Vec<u8>)> = Vec::new();
        let mut state: u32 = 0x1234_5678;
        let mut rnd = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for round in 0..5_000u32 {
            if rnd() % 3 == 0 && !live.is_empty() {
                let at = rnd() as usize % live.len();
                let (stored, bytes) = live.swap_remove(at);
                assert_eq!(gather(&pool, stored), bytes);
                pool.release(stored);
            } else {
                let len = 1 + rnd() as usize % (6 * CHUNK);
                let d = data(len, round as u8);
                let free = pool.capacity_chunks() - pool.used_chunks();
                match pool.store(&d) {
                    Some(s) => live.push((s, d)),
                    None => assert!(len.div_ceil(CHUNK) > free),
                }
            }
            let used: usize = live.iter().map(|(_, d)| d.len().div_ceil(CHUNK)).sum();
            assert_eq!(pool.used_chunks(), used);
        }
        for (s, d) in live {
            assert_eq!(gather(&pool, s), d);
        }
    }
}
