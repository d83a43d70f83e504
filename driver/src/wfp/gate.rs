//! [`Gate`]: lets a callback that the driver cannot cancel synchronously (the BFE state-change
//! callback) touch driver state only while the driver is not tearing that state down.
//!
//! Why: `FwpmBfeStateUnsubscribeChanges0`'s reference page says the callback must be
//! deregistered before unload, but not that the call waits for a callback already running.
//! Unload therefore [`close`](Gate::close)s the gate, unsubscribes, and waits until
//! [`is_drained`](Gate::is_drained) before it closes the session and frees `Shared`; a callback
//! that [`enter`](Gate::enter)s after the close gets `None` and returns without touching its
//! context.
//!
//! Soundness of the handshake: `enter` increments `in_flight`, *then* reads `closing`; `close`
//! writes `closing`, and the waiter *then* reads `in_flight`. With sequentially consistent
//! operations, either `enter` sees `closing` (and leaves), or the waiter sees its increment
//! (and waits for the guard's drop). The gate must outlive every caller: the driver keeps it in
//! a `static`, never inside the memory it guards.
//!
//! Plain atomics: usable at any IRQL, never blocks, unit-tested on the host (also from several
//! threads).

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Gate {
    closing: AtomicBool,
    in_flight: AtomicU32,
}

/// A callback inside the gate; leaving it (drop) lets a waiting `close` proceed.
#[must_use = "the callback is inside the gate only while the guard lives"]
#[derive(Debug)]
pub(crate) struct GateGuard<'g>(&'g Gate);

impl Gate {
    /// An open gate with nobody inside.
    pub(crate) const fn new() -> Self {
        Gate {
            closing: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
        }
    }

    /// (Re)opens the gate (driver start, before the callback is registered).
    pub(crate) fn open(&self) {
        self.closing.store(false, Ordering::SeqCst);
    }

    /// Enters, unless the gate is closed.
    pub(crate) fn enter(&self) -> Option<GateGuard<'_>> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.closing.load(Ordering::SeqCst) {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            None
        } else {
            Some(GateGuard(self))
        }
    }

    /// Closes the gate: every later `enter` fails. Callbacks already inside stay until their
    /// guard drops; wait for [`Gate::is_drained`].
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Nobody is inside (meaningful after `close`: then it stays true).
    pub(crate) fn is_drained(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
    }
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn enter_close_drain() {
        let g = Gate::new();
        assert!(g.is_drained());
        let a = g.enter().unwrap();
        let b = g.enter().unwrap();
        g.close();
        assert!(g.enter().is_none(), "closed");
        assert!(!g.is_drained(), "two inside");
        drop(a);
        assert!(!g.is_drained());
        drop(b);
        assert!(g.is_drained());
        assert!(g.enter().is_none());
        assert!(g.is_drained(), "a refused enter leaves no trace");
        g.open();
        assert!(g.enter().is_some());
    }

    /// The property unload relies on: once `close` has returned and `is_drained` has been
    /// seen, no thread is or will be inside.
    #[test]
    fn nobody_inside_after_close_and_drain() {
        static GATE: Gate = Gate::new();
        let inside = Arc::new(AtomicUsize::new(0));
        let violations = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (inside, stop) = (Arc::clone(&inside), Arc::clone(&stop));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        if let Some(_guard) = GATE.enter() {
                            inside.fetch_add(1, Ordering::SeqCst);
                            std::hint::spin_loop();
                            inside.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(20));
        GATE.close();
        while !GATE.is_drained() {
            std::hint::spin_loop();
        }
        // From here on nobody may get in.
        for _ in 0..200_000 {
            if inside.load(Ordering::SeqCst) != 0 {
                violations.fetch_add(1, Ordering::SeqCst);
            }
        }
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(violations.load(Ordering::SeqCst), 0);
        assert!(GATE.is_drained());
    }
}
