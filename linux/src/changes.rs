//! Wakes held `WatchFlow` requests (GQoS `FD_QOS`) when a flow may have changed.
//!
//! A `WatchFlow` whose known state equals the flow's state now is **held** by its connection
//! thread ([`crate::control`]): the thread sleeps on this process-wide condition variable and
//! re-reads the flow's state from the engine each time [`notify`] is called. Everything that
//! can end a flow or change its mark calls [`notify`] after it changed the engine: every
//! request that changes state (`RequestKind::is_mutation`), a connection's close (its handle's
//! flows go), and the reaper when it retires sockets (closed, shut down for sending,
//! disconnected). A wake-up that changed nothing is harmless: the thread compares and sleeps
//! again. No thread polls the engine; the held thread also wakes every
//! [`HANG_UP_CHECK`] to see whether its client hung up (then the request is abandoned and the
//! connection ends as any other).

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

/// How often a held request checks whether its client is still connected.
pub const HANG_UP_CHECK: Duration = Duration::from_millis(500);

static SEQUENCE: Mutex<u64> = Mutex::new(0);
static CHANGED: Condvar = Condvar::new();

/// Something may have changed: wakes every held request.
pub fn notify() {
    let mut seq = SEQUENCE.lock().unwrap_or_else(PoisonError::into_inner);
    *seq = seq.wrapping_add(1);
    CHANGED.notify_all();
}

/// The current change number (read it before looking at the engine, then
/// [`wait_past`] it: a change in between is not missed).
#[must_use]
pub fn current() -> u64 {
    *SEQUENCE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits until the change number differs from `seen`, or `timeout` passed.
pub fn wait_past(seen: u64, timeout: Duration) {
    let guard = SEQUENCE.lock().unwrap_or_else(PoisonError::into_inner);
    let _unused = CHANGED
        .wait_timeout_while(guard, timeout, |seq| *seq == seen)
        .unwrap_or_else(PoisonError::into_inner);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_notification_wakes_a_waiter_and_a_missed_one_is_not_waited_for() {
        let seen = current();
        let waiter = std::thread::spawn(move || {
            let t = Instant::now();
            wait_past(seen, Duration::from_secs(10));
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        notify();
        let slept = waiter.join().unwrap_or(Duration::MAX);
        assert!(slept < Duration::from_secs(5), "woken: {slept:?}");
        // Already past: returns at once.
        let t = Instant::now();
        wait_past(seen, Duration::from_secs(10));
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
