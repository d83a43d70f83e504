//! The engine lock: one [`EngineLock`] owns the daemon's [`Engine`]; the packet thread takes
//! it with [`EngineLock::read`] once per batch, every control-side change with
//! [`EngineLock::write`] / [`EngineLock::write_as`].
//!
//! ## Why a priority-inheritance mutex, not a reader/writer lock
//! The packet thread runs `SCHED_FIFO` (it must win the CPU, [`crate::nfq`]); the control
//! threads (connections, reaper, bind watcher) run at normal priority. With a
//! `std::sync::RwLock` a control thread holding the write side can be preempted by any other
//! runnable normal thread — on a loaded machine, for tens or hundreds of milliseconds — while
//! the real-time packet thread sleeps on the read side: a priority inversion, and the kernel
//! queue fills and fails open (packets of registered flows leave unmarked). The std lock also
//! prefers writers, so a writer merely *waiting* behind the packet thread's read lock already
//! blocks its next read.
//!
//! Here the lock is a `pthread_mutex_t` with `PTHREAD_PRIO_INHERIT` ([`crate::sys::PiMutex`]):
//! while the packet thread waits, the kernel runs the holder at the packet thread's real-time
//! priority, so the wait is bounded by the holder's own work (microseconds to a few
//! milliseconds for the largest section), never by the machine's load. Shared access buys
//! nothing: the packet thread is the only reader on the hot path, and every other user writes.
//! The evidence (lock wait times measured in the soak before and after) is in
//! `linux/README.md`.
//!
//! ## Rules for holders
//! * One lock at a time per thread: the mutex is not recursive.
//! * Lock order: a module's own list (pending sockets, reaper registry), then the engine.
//! * Nothing slow under the lock: no socket I/O, no file writes, no waiting for the packet
//!   thread ([`crate::nfq::Drain`]) — prepare outside, apply inside.
//!
//! ## Measurements
//! The lock counts, for the packet thread, how often it found the lock taken, how long it
//! waited (total and longest) and who held it then; and per [`Holder`], how often and how long
//! the write side was held. [`EngineLock::stats`] returns them; the daemon logs them at exit,
//! and logs at once any packet-thread wait or write hold longer than [`SLOW`].

use crate::sys::{PiGuard, PiMutex};
use qosmark_engine::Engine;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// A packet-thread wait or a write hold longer than this is logged when it happens.
pub const SLOW: Duration = Duration::from_millis(20);

/// Who holds (or last held) the engine lock for writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Holder {
    /// A connection opening its engine handle.
    Open = 0,
    /// A connection closing its engine handle (every flow of the handle goes).
    Close,
    /// The per-request rate charge.
    Charge,
    /// `AddSocketToFlow` (through the reaper's registry).
    AddSocket,
    /// Any other request that changes no persisted state.
    Request,
    /// A request that changes persisted state (rules, table), with the state snapshot.
    Persist,
    /// Pinning TCP sockets registered before `connect` (packet thread or bind watcher).
    Pin,
    /// The reaper retiring closed sockets.
    Reaper,
    /// Start-up and shutdown.
    Daemon,
    /// Anything else (tests, callers that do not say).
    Other,
}

impl Holder {
    /// Every holder, in `repr` order.
    pub const ALL: [Holder; 10] = [
        Holder::Open,
        Holder::Close,
        Holder::Charge,
        Holder::AddSocket,
        Holder::Request,
        Holder::Persist,
        Holder::Pin,
        Holder::Reaper,
        Holder::Daemon,
        Holder::Other,
    ];
    const COUNT: usize = Self::ALL.len();
    /// `current_holder` while nobody writes.
    const NONE: u8 = u8::MAX;

    /// A short name for logs.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Holder::Open => "open-handle",
            Holder::Close => "close-handle",
            Holder::Charge => "charge",
            Holder::AddSocket => "add-socket",
            Holder::Request => "request",
            Holder::Persist => "persist",
            Holder::Pin => "pin-tcp",
            Holder::Reaper => "reaper",
            Holder::Daemon => "daemon",
            Holder::Other => "other",
        }
    }

    fn from_index(i: u8) -> Option<Holder> {
        Self::ALL.get(usize::from(i)).copied()
    }

    fn index(self) -> usize {
        self as usize
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Write-side figures of one [`Holder`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HoldStats {
    /// Times the lock was taken for writing.
    pub count: u64,
    /// Total time held, ns.
    pub total_ns: u64,
    /// Longest hold, ns.
    pub max_ns: u64,
}

/// A snapshot of the lock's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockStats {
    /// Packet-thread acquisitions.
    pub reads: u64,
    /// Of those, how many found the lock taken and waited.
    pub read_waits: u64,
    /// Total packet-thread wait, ns.
    pub read_wait_total_ns: u64,
    /// Longest packet-thread wait, ns.
    pub read_wait_max_ns: u64,
    /// Who held the lock when that longest wait began (`None`: the holder had just let go).
    pub read_wait_max_holder: Option<Holder>,
    /// Per holder, in [`Holder::ALL`] order.
    pub holds: [HoldStats; Holder::COUNT],
}

impl fmt::Display for LockStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "engine lock: packet thread {} reads, {} waited, total wait {} us, longest {} us (holder {}); write holds:",
            self.reads,
            self.read_waits,
            self.read_wait_total_ns / 1000,
            self.read_wait_max_ns / 1000,
            self.read_wait_max_holder.map_or("-", Holder::name)
        )?;
        for (h, s) in Holder::ALL.iter().zip(&self.holds) {
            if s.count > 0 {
                write!(
                    f,
                    " {} {}x max {} us avg {} us;",
                    h.name(),
                    s.count,
                    s.max_ns / 1000,
                    s.total_ns / s.count / 1000
                )?;
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct Hold {
    count: AtomicU64,
    total_ns: AtomicU64,
    max_ns: AtomicU64,
}

/// The daemon's engine behind a priority-inheritance mutex (module docs).
pub struct EngineLock {
    inner: PiMutex<Engine>,
    current: AtomicU8,
    reads: AtomicU64,
    read_waits: AtomicU64,
    read_wait_total_ns: AtomicU64,
    read_wait_max_ns: AtomicU64,
    read_wait_max_holder: AtomicU8,
    holds: [Hold; Holder::COUNT],
}

/// The packet thread's access to the engine (`&Engine`: classify and the lock-free counters).
#[must_use = "the lock is released when the guard is dropped"]
pub struct ReadGuard<'a> {
    guard: PiGuard<'a, Engine>,
}

/// Exclusive access to the engine for a control-side change; records its hold time when
/// dropped.
#[must_use = "the lock is released when the guard is dropped"]
pub struct WriteGuard<'a> {
    guard: PiGuard<'a, Engine>,
    lock: &'a EngineLock,
    holder: Holder,
    since: Instant,
}

impl EngineLock {
    /// Puts `engine` behind the lock.
    ///
    /// # Errors
    /// The mutex could not be created ([`PiMutex::new`]).
    pub fn new(engine: Engine) -> io::Result<Self> {
        Ok(EngineLock {
            inner: PiMutex::new(engine)?,
            current: AtomicU8::new(Holder::NONE),
            reads: AtomicU64::new(0),
            read_waits: AtomicU64::new(0),
            read_wait_total_ns: AtomicU64::new(0),
            read_wait_max_ns: AtomicU64::new(0),
            read_wait_max_holder: AtomicU8::new(Holder::NONE),
            holds: Default::default(),
        })
    }

    /// The packet path's access. Uncontended: one `trylock` (no system call, no clock read).
    /// Contended: waits — the holder running at our priority meanwhile — and records the wait.
    pub fn read(&self) -> ReadGuard<'_> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if let Some(guard) = self.inner.try_lock() {
            return ReadGuard { guard };
        }
        let holder = self.current.load(Ordering::Relaxed);
        let began = Instant::now();
        let guard = self.inner.lock();
        let waited = began.elapsed();
        let ns = nanos(waited);
        self.read_waits.fetch_add(1, Ordering::Relaxed);
        self.read_wait_total_ns.fetch_add(ns, Ordering::Relaxed);
        if self.read_wait_max_ns.fetch_max(ns, Ordering::Relaxed) < ns {
            self.read_wait_max_holder.store(holder, Ordering::Relaxed);
        }
        if waited > SLOW {
            // Rare by construction; stderr is unbuffered and `eprintln!` formats without a
            // heap allocation.
            eprintln!(
                "qosmarkd: engine lock: the packet thread waited {} us (holder {})",
                ns / 1000,
                Holder::from_index(holder).map_or("-", Holder::name)
            );
        }
        ReadGuard { guard }
    }

    /// Exclusive access for an unnamed holder ([`Holder::Other`]).
    pub fn write(&self) -> WriteGuard<'_> {
        self.write_as(Holder::Other)
    }

    /// Exclusive access for `holder` (named in the statistics and in slow-hold logs).
    pub fn write_as(&self, holder: Holder) -> WriteGuard<'_> {
        let guard = self.inner.lock();
        self.current.store(holder as u8, Ordering::Relaxed);
        WriteGuard {
            guard,
            lock: self,
            holder,
            since: Instant::now(),
        }
    }

    /// The counters so far.
    #[must_use]
    pub fn stats(&self) -> LockStats {
        let mut holds = [HoldStats::default(); Holder::COUNT];
        for (out, h) in holds.iter_mut().zip(&self.holds) {
            *out = HoldStats {
                count: h.count.load(Ordering::Relaxed),
                total_ns: h.total_ns.load(Ordering::Relaxed),
                max_ns: h.max_ns.load(Ordering::Relaxed),
            };
        }
        LockStats {
            reads: self.reads.load(Ordering::Relaxed),
            read_waits: self.read_waits.load(Ordering::Relaxed),
            read_wait_total_ns: self.read_wait_total_ns.load(Ordering::Relaxed),
            read_wait_max_ns: self.read_wait_max_ns.load(Ordering::Relaxed),
            read_wait_max_holder: Holder::from_index(
                self.read_wait_max_holder.load(Ordering::Relaxed),
            ),
            holds,
        }
    }
}

impl std::ops::Deref for ReadGuard<'_> {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.guard
    }
}

impl std::ops::Deref for WriteGuard<'_> {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.guard
    }
}

impl std::ops::DerefMut for WriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut Engine {
        &mut self.guard
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        let held = self.since.elapsed();
        let ns = nanos(held);
        self.lock.current.store(Holder::NONE, Ordering::Relaxed);
        if let Some(h) = self.lock.holds.get(self.holder.index()) {
            h.count.fetch_add(1, Ordering::Relaxed);
            h.total_ns.fetch_add(ns, Ordering::Relaxed);
            h.max_ns.fetch_max(ns, Ordering::Relaxed);
        }
        if held > SLOW {
            eprintln!(
                "qosmarkd: engine lock: held {} us by {}",
                ns / 1000,
                self.holder.name()
            );
        }
        // The mutex itself is released when `guard` drops, right after this.
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::cast_possible_truncation,
        reason = "test code"
    )]
    use super::*;
    use qosmark_engine::abi::{Caller, Privilege};
    use qosmark_engine::Limits;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Barrier};

    fn engine_lock() -> EngineLock {
        EngineLock::new(Engine::new(Limits::default())).unwrap()
    }

    #[test]
    fn writes_are_exclusive_and_visible_to_readers() {
        let lock = Arc::new(engine_lock());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let mut e = lock.write_as(Holder::Open);
                        let h = e
                            .open_handle(Caller {
                                pid: 1,
                                privilege: Privilege::User,
                            })
                            .unwrap();
                        e.close_handle(h).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        lock.read().check_control_invariants().unwrap();
        let stats = lock.stats();
        assert_eq!(stats.holds[Holder::Open.index()].count, 200);
        assert_eq!(stats.reads, 1);
        assert_eq!(stats.holds[Holder::Close.index()], HoldStats::default());
    }

    #[test]
    fn a_contended_read_is_counted_with_its_holder() {
        let lock = Arc::new(engine_lock());
        let held = Arc::new(Barrier::new(2));
        let writer = {
            let (lock, held) = (Arc::clone(&lock), Arc::clone(&held));
            std::thread::spawn(move || {
                let _g = lock.write_as(Holder::Persist);
                held.wait();
                std::thread::sleep(Duration::from_millis(30));
            })
        };
        held.wait();
        let began = Instant::now();
        drop(lock.read());
        let waited = began.elapsed();
        writer.join().unwrap();
        let s = lock.stats();
        assert_eq!((s.reads, s.read_waits), (1, 1));
        assert_eq!(s.read_wait_max_holder, Some(Holder::Persist));
        // (How long depends on when this thread got the CPU back; other tests may hog one.)
        assert!(s.read_wait_max_ns > 0, "{s:?}");
        assert!(s.read_wait_max_ns <= nanos(waited), "{s:?} vs {waited:?}");
        assert!(s.holds[Holder::Persist.index()].max_ns >= 30_000_000);
        let text = s.to_string();
        assert!(text.contains("persist 1x"), "{text}");
    }

    /// A failed `try_lock` must leave the holder's lock held (a guard built for the failed
    /// attempt would unlock it on drop: with a non-PI mutex that broke mutual exclusion).
    #[test]
    fn a_failed_try_lock_leaves_the_lock_held() {
        let m = Arc::new(crate::sys::PiMutex::new(0u32).unwrap());
        let held = Arc::new(Barrier::new(2));
        let holder = {
            let (m, held) = (Arc::clone(&m), Arc::clone(&held));
            std::thread::spawn(move || {
                let mut g = m.lock();
                held.wait();
                std::thread::sleep(Duration::from_millis(50));
                *g = 1;
            })
        };
        held.wait();
        assert!(m.try_lock().is_none());
        assert!(m.try_lock().is_none());
        // Only after the holder's write may we get in.
        assert_eq!(*m.lock(), 1);
        holder.join().unwrap();
        assert_eq!(*m.try_lock().unwrap(), 1);
    }

    /// The property the lock exists for: a `SCHED_FIFO` reader never waits for the CPU share
    /// of a normal-priority writer. Every thread shares one CPU. A writer at nice 19 takes the
    /// lock; two nice-0 "noise" threads spin for 600 ms (the machine's other work), leaving the
    /// writer under 1 % of the CPU; the writer's section needs 5 ms of CPU time. The
    /// `SCHED_FIFO` "packet" thread then asks for the lock. With priority inheritance the
    /// writer runs at the packet thread's priority at once and the wait is its 5 ms of work;
    /// without (a plain mutex, or the `std::sync::RwLock` the daemon had) the packet thread
    /// waits until the noise ends (≥ 500 ms; linux/README.md has both figures).
    /// Needs root for the real-time class; reports and passes without it.
    #[test]
    fn a_real_time_reader_is_not_held_up_by_a_preempted_writer() {
        const CPU: usize = 0;
        const NOISE: Duration = Duration::from_millis(600);
        const WORK: Duration = Duration::from_millis(5);
        // Probe for the privilege on a throwaway thread.
        let can_rt = std::thread::spawn(|| crate::sys::set_thread_realtime(1).is_ok())
            .join()
            .unwrap();
        if !can_rt {
            eprintln!("SKIPPED: no SCHED_FIFO here (needs root / CAP_SYS_NICE)");
            return;
        }
        let lock = Arc::new(engine_lock());
        let locked = Arc::new(Barrier::new(2));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (lock, locked) = (Arc::clone(&lock), Arc::clone(&locked));
            std::thread::spawn(move || {
                crate::sys::pin_thread_to_cpu(CPU).unwrap();
                crate::sys::set_thread_nice(19).unwrap();
                let g = lock.write_as(Holder::Request);
                locked.wait();
                let start = crate::sys::thread_cpu_time();
                while crate::sys::thread_cpu_time().saturating_sub(start) < WORK {
                    for _ in 0..1000 {
                        std::hint::spin_loop();
                    }
                }
                drop(g);
            })
        };
        locked.wait();
        let noise: Vec<_> = (0..2)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    crate::sys::pin_thread_to_cpu(CPU).unwrap();
                    let t = Instant::now();
                    while t.elapsed() < NOISE && !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let packet = {
            let lock = Arc::clone(&lock);
            std::thread::spawn(move || {
                crate::sys::pin_thread_to_cpu(CPU).unwrap();
                crate::sys::set_thread_realtime(10).unwrap();
                // Let the noise take the CPU from the writer first.
                std::thread::sleep(Duration::from_millis(100));
                let began = Instant::now();
                drop(lock.read());
                began.elapsed()
            })
        };
        let waited = packet.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        for n in noise {
            n.join().unwrap();
        }
        writer.join().unwrap();
        eprintln!("the real-time reader waited {waited:?}");
        assert!(
            waited < Duration::from_millis(100),
            "the real-time reader waited {waited:?} behind a preempted writer"
        );
        assert_eq!(lock.stats().read_wait_max_holder, Some(Holder::Request));
    }
}
