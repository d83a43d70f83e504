//! Held packets of the shaping path and every decision about the one release timer, as plain
//! Rust (no Windows API), unit-tested on the host. `wfp::release` (Windows only) owns the
//! lock, the timer object and the clones, and carries out what this module returns.
//!
//! # Model
//!
//! A `Verdict::Delay { until_ns, shaper, .. }` NBL is cloned, rewritten and absorbed like a
//! marked one, but its clone is *held* ([`Held::hold`]) in the engine's
//! [`HeldQueue`] (ordered by departure time, then arrival) instead of injected. One timer
//! serves every held packet. [`Held`] remembers the due time the timer was last set for
//! (`armed`), and every operation that can make the earliest due time earlier returns a
//! [`TimerOp`] that the caller performs **while still holding the lock** that guards the
//! `Held` — so the last `ExSetTimer` issued always matches `armed`, whichever CPU issued it.
//!
//! Invariant (checked by the tests after every step): while packets are queued, the set is
//! not closed and nobody is sending, `armed` is `Some(t)` with `t <= next_due` — the timer
//! fires no later than the earliest packet is due — or `t` is the time a sender gave up with
//! work left (the timer is then set to fire as soon as possible). An expiry with nothing due
//! (its packet left early because its shaper died, or a `hold` moved the timer) only re-arms;
//! a packet never leaves before its time except when its shaper dies
//! ([`Held::request_dead_check`]) or at unload ([`Held::close`]).
//!
//! # One sender, bounded work per lock hold
//!
//! Injection can re-enter the classify callback on the same CPU, so nothing is injected
//! under the lock: packets move into a fixed-size [`Batch`] on the caller's stack, the lock
//! is dropped, the batch is injected, and the caller comes back for more ([`Step::More`]).
//!
//! The timer callback is the sender ([`Held::timer_fired`], then [`Held::keep_sending`]), and
//! the unload thread after the timer is gone. Only one sends at a time (`sending`): a second
//! expiry on another CPU leaves at once, and the sender takes everything due or waiting
//! before it stops (its last look is under the lock), so packets are injected from one CPU at
//! a time, in the order they were taken — a shaper's packets cannot overtake each other on
//! two CPUs. Control requests send nothing themselves: [`Held::request_dead_check`] sets the
//! timer for "now", and the sender's next step moves every packet of a dead shaper into the
//! *outbox* (one `HeldQueue::drain_where`, in order, no allocation; a second buffer
//! allocated at start with the queue's capacity). Per batch a sender takes the outbox first,
//! then the packets due now, [`BATCH`] at a time.
//!
//! A sender stops after [`CALLBACK_BUDGET`] packets and sets the timer for "now"
//! ([`Held::stop_sending`]), so a long backlog does not keep one CPU at `DISPATCH_LEVEL`.
//!
//! Room: the queue and the outbox together never hold more than the capacity (`hold` refuses
//! beyond it), so moving packets into the outbox never needs memory.
//!
//! Time is the engine's (`KeQueryUnbiasedInterruptTime` × 100, in ns), passed in;
//! [`relative_due`] converts a due time to `ExSetTimer`'s negative 100 ns interval.

use alloc::vec::Vec;

use qosmark_engine::shaper::{Held as Queued, HeldQueue, ShaperId};

/// Packets moved out per lock hold (the [`Batch`] size).
pub(crate) const BATCH: usize = 32;

/// Packets one timer callback releases before it yields (sets the timer for "now" and
/// returns). At one injection per packet this keeps a callback short; measuring it is a VM
/// item (`docs/packet-path.md`, Shaping).
pub(crate) const CALLBACK_BUDGET: usize = 256;

/// Longest a clone is held: a delay verdict further out than this is not held but sent at
/// once with its mark (a shaping fail-open, counted as `ShaperQueueFull`).
///
/// Why a cap: `FwpsAllocateCloneNetBufferList0`'s *Guidelines for Managing Cloned Packets*
/// say a callout "must not hold cloned packets indefinitely" — a clone can interfere with
/// power management on an idle computer — that clones are meant for "relatively fast"
/// operations, and that a potentially lengthy wait calls for a deep copy
/// (`FwpsAllocateNetBufferAndNetBufferList0`) instead. A shaper's delay is computed, not
/// arbitrary, but a backlog at a low rate can reach hours (16 384 packets of 1 500 bytes at
/// the 12 kbit/s minimum). One second keeps every hold short; deep copies for longer delays
/// would need allocations and copies per packet (not in classify; perhaps in the timer
/// callback) and are left for later (`docs/packet-path.md`, Shaping).
pub(crate) const MAX_HOLD_NS: u64 = 1_000_000_000;

/// What the caller does with the release timer, under the same lock hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimerOp {
    /// Nothing: the timer is already set early enough, or nothing is queued.
    Leave,
    /// `ExSetTimer` for this due time (engine ns); it replaces any pending expiry.
    Set(u64),
}

/// A held packet on its way out.
pub(crate) type Released<T> = Queued<T>;

/// Up to [`BATCH`] released packets, on the caller's stack (no allocation).
#[derive(Debug)]
pub(crate) struct Batch<T> {
    items: [Option<Released<T>>; BATCH],
    len: usize,
}

impl<T> Default for Batch<T> {
    fn default() -> Self {
        Batch {
            items: [const { None }; BATCH],
            len: 0,
        }
    }
}

impl<T> Batch<T> {
    fn is_full(&self) -> bool {
        self.len >= BATCH
    }

    /// Adds `item`, or hands it back when the batch is full.
    fn push(&mut self, item: Released<T>) -> Result<(), Released<T>> {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(item);
                self.len += 1;
                Ok(())
            }
            None => Err(item),
        }
    }

    /// Number of packets in the batch.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Takes the packets out, in release order.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Released<T>> + '_ {
        let n = core::mem::take(&mut self.len);
        self.items.iter_mut().take(n).filter_map(Option::take)
    }
}

/// Whether a release loop has more to do after this batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Send this batch (lock dropped), then call again.
    More,
    /// Send this batch; nothing more for this caller. For the timer callback: perform this
    /// [`TimerOp`] (already decided under the lock).
    Done(TimerOp),
}

/// The held packets and the timer's state. Lives behind one spin lock (`wfp::release`).
#[derive(Debug)]
pub(crate) struct Held<T> {
    queue: HeldQueue<T>,
    /// Packets taken out of `queue` at once (dead shapers, unload), earliest **last** (so
    /// `pop` gives the next one), waiting for the sender.
    outbox: Vec<Released<T>>,
    /// Most packets `queue` and `outbox` hold together.
    capacity: usize,
    /// A caller is sending (the timer callback, a dead-shaper release, or unload); others
    /// leave the sending to it.
    sending: bool,
    /// The due time the timer was last set for and no callback has consumed yet.
    armed: Option<u64>,
    /// Unload has begun: nothing new is held, the timer is never set again.
    closed: bool,
    /// A control request asked the next sender to look for dead shapers.
    dead_check: bool,
}

impl<T> Held<T> {
    /// An empty set with room for `capacity` held NBLs (queue and outbox, allocated now,
    /// never in classify). `None` without memory (`Wfp::start` then fails, as it does when
    /// the flow registry cannot be allocated).
    pub(crate) fn with_capacity(capacity: usize) -> Option<Self> {
        let mut outbox = Vec::new();
        outbox.try_reserve_exact(capacity).ok()?;
        Some(Held {
            queue: HeldQueue::with_capacity(capacity).ok()?,
            outbox,
            capacity,
            sending: false,
            armed: None,
            closed: false,
            dead_check: false,
        })
    }

    /// Holds `item` (which took `bytes` of the engine's queue room) until `until_ns` for
    /// `shaper`, seen at `now_ns`. `Err(item)` when the set is closed or full, or the delay
    /// exceeds [`MAX_HOLD_NS`]: the caller sends the packet now instead, counts it and
    /// returns its room.
    pub(crate) fn hold(
        &mut self,
        item: T,
        until_ns: u64,
        shaper: ShaperId,
        bytes: u64,
        now_ns: u64,
    ) -> Result<TimerOp, T> {
        if self.closed
            || self.queue.len() + self.outbox.len() >= self.capacity
            || until_ns.saturating_sub(now_ns) > MAX_HOLD_NS
        {
            return Err(item);
        }
        self.queue.push(until_ns, shaper, bytes, item)?;
        Ok(self.arm_for(until_ns))
    }

    /// Makes sure the timer fires no later than `due`.
    fn arm_for(&mut self, due: u64) -> TimerOp {
        match self.armed {
            Some(armed) if armed <= due => TimerOp::Leave,
            _ => {
                self.armed = Some(due);
                TimerOp::Set(due)
            }
        }
    }

    /// The timer for the queue's next due time (or none), after the pending expiry was
    /// consumed.
    fn rearm(&mut self) -> TimerOp {
        self.armed = None;
        match self.queue.next_due() {
            Some(due) if !self.closed => self.arm_for(due),
            _ => TimerOp::Leave,
        }
    }

    /// The timer expired: its pending expiry is consumed, then as [`Held::start_sending`].
    pub(crate) fn timer_fired(
        &mut self,
        now_ns: u64,
        is_live: impl FnMut(ShaperId) -> bool,
        out: &mut Batch<T>,
    ) -> Step {
        self.armed = None;
        self.start_sending(now_ns, is_live, out)
    }

    /// Becomes the sender, unless another caller is sending: then nothing (`Done(Leave)`) —
    /// that caller sends whatever is due, dead or in the outbox before it stops, so packets
    /// leave from one CPU at a time, in order. Otherwise the first batch, as
    /// [`Held::keep_sending`].
    pub(crate) fn start_sending(
        &mut self,
        now_ns: u64,
        is_live: impl FnMut(ShaperId) -> bool,
        out: &mut Batch<T>,
    ) -> Step {
        if self.sending {
            return Step::Done(TimerOp::Leave);
        }
        self.sending = true;
        self.keep_sending(now_ns, is_live, out)
    }

    /// The sender's next batch. If a dead-shaper check was requested
    /// ([`Held::request_dead_check`]), every packet whose shaper is gone (`is_live` is false:
    /// flow removed, handle closed, rule removed, rate cleared) first moves to the outbox.
    /// Then the outbox (dead shapers, unload), then the packets due at `now_ns`, in (due,
    /// arrival) order. [`Step::More`]: send it and come back. [`Step::Done`] (the batch is
    /// empty): the sender stops, and the timer is set for the next due time.
    pub(crate) fn keep_sending(
        &mut self,
        now_ns: u64,
        mut is_live: impl FnMut(ShaperId) -> bool,
        out: &mut Batch<T>,
    ) -> Step {
        if core::mem::take(&mut self.dead_check) {
            self.move_to_outbox(|s| !is_live(s));
        }
        self.fill_from_outbox(out);
        while !out.is_full() {
            let Some(packet) = self.queue.pop_due(now_ns) else {
                break;
            };
            if let Err(packet) = out.push(packet) {
                // Unreachable (`is_full` was checked); keep the packet rather than lose it.
                let _ = self
                    .queue
                    .push(packet.until_ns, packet.shaper, packet.bytes, packet.item);
                break;
            }
        }
        if out.len() > 0 {
            return Step::More;
        }
        self.sending = false;
        Step::Done(self.rearm())
    }

    /// The sender used up its [`CALLBACK_BUDGET`] and stops with work left: the timer is set
    /// for "now" (the caller sets the shortest relative time) and the next expiry carries on.
    pub(crate) fn stop_sending(&mut self, now_ns: u64) -> TimerOp {
        self.sending = false;
        if self.closed || self.is_empty() {
            return self.rearm();
        }
        self.armed = Some(now_ns);
        TimerOp::Set(now_ns)
    }

    /// A control request may have removed shapers: the next sender moves their packets to
    /// the outbox and sends them first. Nothing is sent in the caller's context — the timer is
    /// set for "now" and its callback does it (or the sender already running, at its next
    /// step). Nothing held → nothing to do. The packets leave at once, not at their time.
    pub(crate) fn request_dead_check(&mut self, now_ns: u64) -> TimerOp {
        if self.closed || self.queue.is_empty() {
            return TimerOp::Leave;
        }
        self.dead_check = true;
        self.armed = Some(now_ns);
        TimerOp::Set(now_ns)
    }

    /// Unload: nothing is held from now on, the timer is never set again, and every queued
    /// packet moves to the outbox. The caller then deletes the timer (waiting for a running
    /// callback, which may still be sending) and sends the rest with [`Held::keep_sending`].
    pub(crate) fn close(&mut self) {
        self.closed = true;
        self.armed = None;
        self.move_to_outbox(|_| true);
    }

    /// Moves the queued packets of the shapers `which` selects into the outbox. The outbox
    /// is kept earliest-last: packets already in it leave first, then the new ones in
    /// (departure, arrival) order.
    fn move_to_outbox(&mut self, which: impl FnMut(ShaperId) -> bool) {
        let before = self.outbox.len();
        let outbox = &mut self.outbox;
        let mut overflow: Option<Released<T>> = None;
        self.queue.drain_where(which, |packet| {
            if outbox.len() < outbox.capacity() {
                outbox.push(packet);
            } else if overflow.is_none() {
                // Unreachable: `hold` keeps queue + outbox within the outbox's capacity.
                overflow = Some(packet);
            }
        });
        if let Some(p) = overflow {
            let _ = self.queue.push(p.until_ns, p.shaper, p.bytes, p.item);
        }
        // drain_where hands them over earliest first: reverse them (earliest last), then put
        // them in front of the packets that were already waiting.
        let added = self.outbox.len() - before;
        if let Some(new) = self.outbox.get_mut(before..) {
            new.reverse();
        }
        self.outbox.rotate_right(added);
    }

    fn fill_from_outbox(&mut self, out: &mut Batch<T>) {
        while !out.is_full() {
            let Some(packet) = self.outbox.pop() else {
                return;
            };
            if let Err(packet) = out.push(packet) {
                self.outbox.push(packet);
                return;
            }
        }
    }

    /// Nothing is queued or waiting in the outbox.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.outbox.is_empty()
    }

    /// The due time the timer is set for.
    #[cfg(test)]
    pub(crate) fn armed(&self) -> Option<u64> {
        self.armed
    }

    /// When the earliest queued packet is due.
    #[cfg(test)]
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.queue.next_due()
    }
}

/// `ExSetTimer`'s `DueTime` for `due_ns` seen at `now_ns`: a negative (relative) interval in
/// 100 ns units, rounded up, at least one unit, at most a day (the callback re-arms from the
/// queue anyway). A high-resolution timer accepts only relative times (an absolute one
/// bugchecks), and a relative time is immune to changes of the system clock.
pub(crate) fn relative_due(due_ns: u64, now_ns: u64) -> i64 {
    const DAY_UNITS: u64 = 864_000_000_000;
    let units = due_ns
        .saturating_sub(now_ns)
        .div_ceil(100)
        .clamp(1, DAY_UNITS);
    // `units <= DAY_UNITS < i64::MAX`, so the conversion cannot fail.
    -i64::try_from(units).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::match_wild_err_arm,
        reason = "tests index and unwrap values they built; a panic is a failed test"
    )]
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn shaper(n: u32) -> ShaperId {
        ShaperId::from_u64((1u64 << 32) | u64::from(n)).unwrap()
    }

    /// Everything a batch holds, as (item, shaper).
    fn take(batch: &mut Batch<u32>) -> Vec<(u32, ShaperId)> {
        batch.drain().map(|p| (p.item, p.shaper)).collect()
    }

    /// The invariant of the module docs (for an idle set: nobody sending), at time `now`:
    /// the timer is set no later than the earliest due time, or — with packets overdue after
    /// a sender stopped — no later than now.
    fn check_armed(h: &Held<u32>, now: u64) {
        if let (Some(next), false, false) = (h.next_due(), h.closed, h.sending) {
            let armed = h.armed().expect("packets queued but no timer set");
            assert!(
                armed <= next.max(now),
                "timer at {armed} after the next due {next}"
            );
        }
    }

    /// Every shaper is alive.
    fn all_live(_: ShaperId) -> bool {
        true
    }

    /// A sender's whole turn: first step `first`, then `keep_sending` until done (no budget),
    /// with the shapers `is_live` keeps.
    fn send_all(
        h: &mut Held<u32>,
        now: u64,
        is_live: impl Fn(ShaperId) -> bool,
        first: impl FnOnce(&mut Held<u32>, &mut Batch<u32>) -> Step,
    ) -> (Vec<(u32, ShaperId)>, TimerOp) {
        let mut b = Batch::default();
        let mut out = Vec::new();
        let mut step = first(h, &mut b);
        loop {
            out.extend(take(&mut b));
            match step {
                Step::More => step = h.keep_sending(now, &is_live, &mut b),
                Step::Done(op) => return (out, op),
            }
        }
    }

    /// A timer expiry at `now`, sending everything, all shapers alive.
    fn expire(h: &mut Held<u32>, now: u64) -> (Vec<(u32, ShaperId)>, TimerOp) {
        send_all(h, now, all_live, |h, b| h.timer_fired(now, all_live, b))
    }

    #[test]
    fn hold_sets_the_timer_only_when_the_earliest_moves_earlier() {
        let mut h = Held::with_capacity(8).unwrap();
        assert_eq!(h.hold(1, 500, shaper(1), 40, 0), Ok(TimerOp::Set(500)));
        assert_eq!(h.hold(2, 700, shaper(1), 40, 0), Ok(TimerOp::Leave));
        assert_eq!(h.hold(3, 500, shaper(2), 40, 0), Ok(TimerOp::Leave));
        assert_eq!(h.hold(4, 200, shaper(2), 40, 0), Ok(TimerOp::Set(200)));
        assert_eq!(h.armed(), Some(200));
        check_armed(&h, 0);
    }

    #[test]
    fn an_expiry_releases_what_is_due_in_order_and_rearms() {
        let mut h = Held::with_capacity(8).unwrap();
        for (item, until, s) in [
            (1, 300, 1),
            (2, 100, 2),
            (3, 300, 2),
            (4, 900, 1),
            (5, 100, 1),
        ] {
            h.hold(item, until, shaper(s), 1, 0).unwrap();
        }
        // Fired early (or nothing due yet): nothing leaves, the timer is set again.
        assert_eq!(expire(&mut h, 99), (vec![], TimerOp::Set(100)));
        // At 300: the four packets due by then, by (due time, arrival).
        let (out, op) = expire(&mut h, 300);
        assert_eq!(
            out,
            [
                (2, shaper(2)),
                (5, shaper(1)),
                (1, shaper(1)),
                (3, shaper(2))
            ]
        );
        assert_eq!(op, TimerOp::Set(900));
        check_armed(&h, 300);
        assert_eq!(
            expire(&mut h, 2_000),
            (vec![(4, shaper(1))], TimerOp::Leave)
        );
        assert!(h.is_empty());
        assert_eq!(h.armed(), None, "idle: no timer");
        // The next hold sets it again.
        assert_eq!(h.hold(6, 5_000, shaper(1), 1, 0), Ok(TimerOp::Set(5_000)));
    }

    #[test]
    fn long_backlogs_leave_in_batches_and_a_sender_can_stop() {
        let n = 3 * BATCH + 5;
        let mut h = Held::with_capacity(n + 1).unwrap();
        for i in 0..n {
            h.hold(u32::try_from(i).unwrap(), 10, shaper(1), 1, 0)
                .unwrap();
        }
        let mut b = Batch::default();
        let mut out = Vec::new();
        let mut step = h.timer_fired(10, all_live, &mut b);
        let mut batches = 0;
        while step == Step::More {
            assert!(b.len() <= BATCH);
            batches += 1;
            out.extend(take(&mut b).into_iter().map(|(i, _)| i));
            step = h.keep_sending(10, all_live, &mut b);
        }
        assert_eq!(step, Step::Done(TimerOp::Leave));
        assert_eq!(batches, 4);
        assert_eq!(out, (0..u32::try_from(n).unwrap()).collect::<Vec<_>>());
        // A sender that stops with packets left sets the timer for now.
        for i in 0..=BATCH {
            h.hold(u32::try_from(i).unwrap(), 10, shaper(1), 1, 0)
                .unwrap();
        }
        assert_eq!(h.timer_fired(20, all_live, &mut b), Step::More);
        assert_eq!(h.stop_sending(20), TimerOp::Set(20));
        assert_eq!((h.armed(), h.next_due()), (Some(20), Some(10)));
        // The next expiry carries on.
        let (rest, op) = expire(&mut h, 21);
        assert_eq!((rest.len(), op), (1, TimerOp::Leave));
        // Stopping with nothing left sets nothing.
        let mut empty = Held::<u32>::with_capacity(1).unwrap();
        assert_eq!(empty.stop_sending(20), TimerOp::Leave);
    }

    #[test]
    fn dead_shapers_leave_at_the_next_expiry_in_order_and_others_stay() {
        let mut h = Held::with_capacity(16).unwrap();
        for (item, until, s) in [
            (1, 500, 1),
            (2, 400, 2),
            (3, 600, 1),
            (4, 100, 2),
            (5, 700, 3),
        ] {
            h.hold(item, until, shaper(s), 1, 0).unwrap();
        }
        // The control request sends nothing itself; it sets the timer for now.
        assert_eq!(h.request_dead_check(50), TimerOp::Set(50));
        let live = |s: ShaperId| s == shaper(2);
        let (out, op) = send_all(&mut h, 50, live, |h, b| h.timer_fired(50, live, b));
        assert_eq!(out, [(1, shaper(1)), (3, shaper(1)), (5, shaper(3))]);
        // Shaper 2 keeps its packets and its due times; the timer follows the queue.
        assert_eq!(op, TimerOp::Set(100));
        assert_eq!(h.next_due(), Some(100));
        check_armed(&h, 50);
        // No check requested: an expiry does not look for dead shapers.
        let (out, _) = send_all(
            &mut h,
            60,
            |_| false,
            |h, b| h.timer_fired(60, |_| false, b),
        );
        assert!(out.is_empty());
        // A check with nothing dead, at 150: only what is due leaves.
        assert_eq!(h.request_dead_check(150), TimerOp::Set(150));
        assert_eq!(
            expire(&mut h, 150),
            (vec![(4, shaper(2))], TimerOp::Set(400))
        );
        assert_eq!(expire(&mut h, 1_000).0, [(2, shaper(2))]);
        // Nothing held: nothing to check.
        assert_eq!(h.request_dead_check(2_000), TimerOp::Leave);
    }

    #[test]
    fn one_sender_at_a_time_and_it_sends_what_others_left() {
        // BATCH + 5 packets per shaper: some of the first dead shaper's are still in the
        // outbox when the second one dies.
        let mut h = Held::with_capacity(4 * BATCH).unwrap();
        for i in 0..(2 * BATCH + 10) {
            let i = u32::try_from(i).unwrap();
            h.hold(i, 1_000 + u64::from(i), shaper(1 + i % 2), 1, 0)
                .unwrap();
        }
        // Shaper 1 dies; expiry A (one CPU) becomes the sender (first batch).
        h.request_dead_check(0);
        let mut a = Batch::default();
        let live_a = |s: ShaperId| s != shaper(1);
        assert_eq!(h.timer_fired(0, live_a, &mut a), Step::More);
        let mut sent: Vec<(u32, ShaperId)> = take(&mut a);
        // Shaper 2 dies too; expiry B (another CPU) leaves the sending to A.
        assert_eq!(h.request_dead_check(0), TimerOp::Set(0));
        let live_b = |s: ShaperId| s != shaper(1) && s != shaper(2);
        let mut b = Batch::default();
        assert_eq!(h.timer_fired(0, live_b, &mut b), Step::Done(TimerOp::Leave));
        assert_eq!(b.len(), 0);
        // A sends everything: first shaper 1's rest, then shaper 2's, each in order.
        let mut step = h.keep_sending(0, live_b, &mut a);
        while step == Step::More {
            sent.extend(take(&mut a));
            step = h.keep_sending(0, live_b, &mut a);
        }
        assert_eq!(sent.len(), 2 * BATCH + 10);
        for s in [shaper(1), shaper(2)] {
            let items: Vec<u32> = sent.iter().filter(|p| p.1 == s).map(|p| p.0).collect();
            assert!(items.windows(2).all(|w| w[0] < w[1]), "{items:?}");
            assert_eq!(items.len(), BATCH + 5);
        }
        let first_two = sent.iter().position(|p| p.1 == shaper(2)).unwrap();
        let last_one = sent.iter().rposition(|p| p.1 == shaper(1)).unwrap();
        assert!(last_one < first_two, "{sent:?}");
        assert!(h.is_empty());
        // Sending is free again: the next expiry is the sender.
        h.hold(7, 1, shaper(3), 1, 0).unwrap();
        assert_eq!(expire(&mut h, 5).0, [(7, shaper(3))]);
    }

    #[test]
    fn close_refuses_new_packets_and_hands_out_every_held_one_in_order() {
        let mut h = Held::with_capacity(2 * BATCH).unwrap();
        for i in 0..(BATCH + 3) {
            let i = u32::try_from(i).unwrap();
            h.hold(i, 1_000 - u64::from(i) / 2 * 2, shaper(i % 3), 1, 0)
                .unwrap();
        }
        h.close();
        assert_eq!(h.armed(), None);
        assert_eq!(h.hold(99, 5, shaper(1), 1, 0), Err(99));
        assert_eq!(h.request_dead_check(0), TimerOp::Leave);
        // The unload thread sends the rest (after deleting the timer).
        let (out, op) = send_all(&mut h, 0, all_live, |h, b| h.keep_sending(0, all_live, b));
        assert_eq!(op, TimerOp::Leave, "closed: the timer is never set again");
        let out: Vec<u32> = out.into_iter().map(|(i, _)| i).collect();
        let mut all: Vec<u32> = (0..u32::try_from(BATCH + 3).unwrap()).collect();
        // Oracle: (due time, arrival) order computed independently.
        all.sort_by_key(|&i| (1_000 - u64::from(i) / 2 * 2, i));
        assert_eq!(out, all);
        assert!(h.is_empty());
        // A callback still running at close finds nothing and sets no timer.
        assert_eq!(expire(&mut h, u64::MAX), (vec![], TimerOp::Leave));
        assert_eq!(h.stop_sending(u64::MAX), TimerOp::Leave);
    }

    #[test]
    fn capacity_counts_the_outbox_too() {
        let cap = BATCH + 2;
        let mut h = Held::with_capacity(cap).unwrap();
        for i in 0..=BATCH {
            h.hold(u32::try_from(i).unwrap(), 10, shaper(1), 1, 0)
                .unwrap();
        }
        h.hold(500, 10, shaper(2), 1, 0).unwrap();
        assert_eq!(h.hold(501, 10, shaper(2), 1, 0), Err(501), "full");
        // Shaper 1 dies; the sender's first batch takes BATCH of its packets, one stays in
        // the outbox until the next batch.
        h.request_dead_check(0);
        let mut b = Batch::default();
        assert_eq!(h.timer_fired(0, |s| s != shaper(1), &mut b), Step::More);
        assert_eq!(b.len(), BATCH);
        // Queue 1 + outbox 1: room for BATCH more, not one beyond.
        for i in 0..BATCH {
            h.hold(600 + u32::try_from(i).unwrap(), 10, shaper(2), 1, 0)
                .unwrap();
        }
        assert_eq!(h.hold(700, 10, shaper(2), 1, 0), Err(700), "outbox counted");
    }

    #[test]
    fn long_delays_are_not_held() {
        let mut h = Held::with_capacity(4).unwrap();
        let now = 5_000;
        assert_eq!(
            h.hold(1, now + MAX_HOLD_NS, shaper(1), 1, now),
            Ok(TimerOp::Set(now + MAX_HOLD_NS))
        );
        assert_eq!(h.hold(2, now + MAX_HOLD_NS + 1, shaper(1), 1, now), Err(2));
        // Overdue (the shaper's backlog was already due) is held: it leaves at the next fire.
        assert_eq!(h.hold(3, 10, shaper(1), 1, now), Ok(TimerOp::Set(10)));
    }

    #[test]
    fn relative_due_times() {
        assert_eq!(relative_due(1_000, 1_000), -1, "due now: shortest wait");
        assert_eq!(relative_due(500, 1_000), -1, "overdue: shortest wait");
        assert_eq!(relative_due(1_100, 1_000), -1);
        assert_eq!(relative_due(1_101, 1_000), -2, "rounded up, never early");
        assert_eq!(relative_due(2_000_000, 0), -20_000, "2 ms");
        assert_eq!(
            relative_due(u64::MAX, 0),
            -864_000_000_000,
            "capped at a day"
        );
    }

    /// The driver's shaping path on the host, against the real engine: a UDP flow limited to
    /// 1 Mbit/s sends 20 NBLs of three 1 028-byte datagrams, 2 ms apart (12× its rate). Each
    /// datagram is classified on the slice the driver classifies (`header_read_len`), its room
    /// recorded with `shaper::held_bytes`, the NBL planned (`NblPlan::hold`) and either held —
    /// released later by a simulated timer that fires exactly when set (a high-resolution
    /// timer never fires early; late fires are the random walk's) with the room returned as
    /// `release::send` does (the NBL's sum once, then 0 per further packet) — or, when mixed,
    /// sent at once with every delayed buffer's room returned (`callouts::unreserve`). The
    /// engine's held counters must agree with the driver's queue at every step (wrong room
    /// would leave them off); every datagram leaves once, in order, never before its
    /// `until_ns`, and at the rate. Then a second burst is held and the flow removed: the
    /// control path's request makes the next expiry send them all at once.
    #[test]
    #[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
    fn simulated_shaping_path_against_the_engine() {
        use crate::wfp::decide::{header_read_len, NbVerdict, NblPlan};
        use core::net::SocketAddr;
        use qosmark_abi::{
            Caller, Family, FlowRate, Privilege, Protocol, Request, Response, SetFlow, Shaping,
            SocketInfo, TrafficType, QOS_NON_ADAPTIVE_FLOW,
        };
        use qosmark_engine::shaper::held_bytes;
        use qosmark_engine::{Engine, Limits, PacketMeta, Verdict};

        /// A datagram's departure: (number, time, `until_ns` if it was held).
        type Departure = (u8, u64, Option<u64>);
        /// A held NBL in the simulation: its first datagram's number and its packets.
        type Item = (u8, u8);

        const MS: u64 = 1_000_000;
        /// Datagrams per NBL.
        const K: u8 = 3;
        const RATE: u64 = 1_000_000;
        let datagram = |n: u8| {
            let b =
                etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [192, 0, 2, 9], 64).udp(5000, 53);
            let mut out = Vec::new();
            b.write(&mut out, &[n; 1000]).unwrap();
            out
        };
        let ip_len = datagram(0).len() as u64;
        // Packet time at the rate, computed here (not by the engine): ceil(8 * L * 1e9 / r).
        let packet_ns = (8 * ip_len * 1_000_000_000).div_ceil(RATE);

        let mut engine = Engine::new(Limits::default());
        let h = engine
            .open_handle(Caller {
                pid: 1,
                privilege: Privilege::Admin,
            })
            .unwrap();
        let local: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let peer: SocketAddr = "192.0.2.9:53".parse().unwrap();
        let Ok(Response::FlowId(flow_id)) = engine.apply(
            h,
            &Request::AddSocketToFlow {
                socket: SocketInfo {
                    socket: 1,
                    family: Family::V4,
                    protocol: Protocol::Udp,
                    local,
                    peer: Some(peer),
                },
                dest: None,
                traffic_type: TrafficType::ExcellentEffort,
                flags: QOS_NON_ADAPTIVE_FLOW,
                flow_id: 0,
            },
        ) else {
            panic!("flow not added")
        };
        engine
            .apply(
                h,
                &Request::SetFlow {
                    flow_id,
                    op: SetFlow::OutgoingRate(FlowRate {
                        bandwidth: RATE,
                        shaping: Shaping::ShapeOnly,
                        reason: 0,
                    }),
                },
            )
            .unwrap();

        let mut held: Held<Item> = Held::with_capacity(64).unwrap();
        let mut timer: Option<u64> = None;
        let mut departures: Vec<Departure> = Vec::new();
        // Packets the driver holds; the engine must count exactly these, at the IP length.
        let mut queued = 0u64;
        let mut unheld = 0usize;
        let fire = |held: &mut Held<Item>,
                    engine: &Engine,
                    at: u64,
                    departures: &mut Vec<Departure>,
                    queued: &mut u64|
         -> Option<u64> {
            let live = |s| engine.shaper_live(s);
            let mut batch = Batch::default();
            let mut step = held.timer_fired(at, live, &mut batch);
            loop {
                for p in batch.drain() {
                    let (first, packets) = p.item;
                    for k in 0..packets {
                        departures.push((first + k, at, Some(p.until_ns)));
                        // As `release::send`: the NBL's room once, then 0 per packet.
                        engine.shaper_released(p.shaper, if k == 0 { p.bytes } else { 0 });
                    }
                    *queued -= u64::from(packets);
                    assert_eq!(engine.shaper_held(), (*queued, *queued * ip_len));
                }
                match step {
                    Step::More => step = held.keep_sending(at, live, &mut batch),
                    Step::Done(TimerOp::Set(t)) => return Some(t),
                    Step::Done(TimerOp::Leave) => return None,
                }
            }
        };
        let send = |engine: &Engine,
                    held: &mut Held<Item>,
                    first: u8,
                    now: u64,
                    timer: &mut Option<u64>,
                    departures: &mut Vec<Departure>,
                    queued: &mut u64,
                    unheld: &mut usize| {
            let mut plan = NblPlan::default();
            for n in first..first + K {
                let pkt = datagram(n);
                let len = u32::try_from(pkt.len()).unwrap();
                let slice = &pkt[..header_read_len(len) as usize];
                let v = engine.classify(slice, &PacketMeta::default(), now);
                let room = match v {
                    Verdict::Delay { .. } => held_bytes(slice),
                    _ => 0,
                };
                assert!(plan.push_sized(NbVerdict::Classified(v), room));
            }
            let reserved = plan.delayed().count() as u64;
            assert_eq!(
                engine.shaper_held(),
                (*queued + reserved, (*queued + reserved) * ip_len)
            );
            if let Some(hold) = plan.hold() {
                assert_eq!(hold.bytes, u64::from(hold.packets) * ip_len);
                match held.hold(
                    (first, hold.packets),
                    hold.until_ns,
                    hold.shaper,
                    hold.bytes,
                    now,
                ) {
                    Ok(TimerOp::Set(t)) => *timer = Some(t),
                    Ok(TimerOp::Leave) => {}
                    Err(_) => panic!("queue full"),
                }
                *queued += u64::from(hold.packets);
            } else {
                // Marked, or mixed: sent now; every delayed buffer's room comes back.
                for (shaper, room) in plan.delayed() {
                    engine.shaper_released(shaper, room);
                    *unheld += 1;
                }
                for n in first..first + K {
                    departures.push((n, now, None));
                }
            }
            assert_eq!(engine.shaper_held(), (*queued, *queued * ip_len));
        };

        // Burst 1: 20 NBLs of K datagrams, 2 ms apart; the timer fires whenever it is due.
        let mut now = 0u64;
        for i in 0..20u8 {
            while let Some(t) = timer.filter(|t| *t <= now) {
                timer = fire(&mut held, &engine, t, &mut departures, &mut queued);
            }
            send(
                &engine,
                &mut held,
                K * i,
                now,
                &mut timer,
                &mut departures,
                &mut queued,
                &mut unheld,
            );
            now += 2 * MS;
        }
        while let Some(t) = timer {
            timer = fire(&mut held, &engine, t, &mut departures, &mut queued);
        }
        assert!(held.is_empty());
        assert_eq!(engine.shaper_held(), (0, 0), "all room returned");
        assert_eq!(
            unheld, 1,
            "the backlog began inside an NBL: one mixed NBL sent at once"
        );
        let order: Vec<u8> = departures.iter().map(|d| d.0).collect();
        assert_eq!(
            order,
            (0..20 * K).collect::<Vec<_>>(),
            "every datagram once, in order"
        );
        assert!(
            departures.iter().filter(|d| d.2.is_some()).count() >= 50,
            "most were held"
        );
        for &(_, at, until) in &departures {
            if let Some(until) = until {
                assert_eq!(at, until, "released exactly when due (never early)");
            }
        }
        // At the rate: the held NBLs leave at least K packet times apart (allowing 1 ns of
        // the engine's rounding per packet), and the last datagram leaves no earlier than 59
        // packet times after the first minus the bucket depth the engine documents (one
        // 1 500-byte packet time at the rate, 12 ms at 1 Mbit/s — computed here).
        let held_nbls: Vec<u64> = departures
            .iter()
            .filter(|d| d.2.is_some() && d.0 % K == 0)
            .map(|d| d.1)
            .collect();
        for w in held_nbls.windows(2) {
            assert!(
                w[1] - w[0] + 3 >= 3 * packet_ns,
                "{} < 3 x {packet_ns}",
                w[1] - w[0]
            );
        }
        let depth_ns = (8 * 1_500 * 1_000_000_000u64).div_ceil(RATE);
        let span = departures.last().unwrap().1 - departures.first().unwrap().1;
        assert!(
            span + depth_ns >= 59 * packet_ns,
            "60 datagrams cannot leave at 1 Mbit/s in {span} ns"
        );
        assert!(
            span <= 59 * packet_ns + 60,
            "no slower than the rate either: {span}"
        );

        // Burst 2: held, then the flow is removed — the control path requests a check, the
        // expiry it sets (for now) sends them all at once, in order.
        departures.clear();
        for i in 20..25u8 {
            send(
                &engine,
                &mut held,
                K * i,
                now,
                &mut timer,
                &mut departures,
                &mut queued,
                &mut unheld,
            );
        }
        assert!(!held.is_empty());
        engine
            .apply(
                h,
                &Request::RemoveSocketFromFlow {
                    socket: None,
                    flow_id,
                },
            )
            .unwrap();
        assert_eq!(
            engine.shaper_held(),
            (0, 0),
            "a removed shaper's room is returned"
        );
        assert_eq!(held.request_dead_check(now), TimerOp::Set(now));
        let live = |s| engine.shaper_live(s);
        let mut batch = Batch::default();
        let mut step = held.timer_fired(now, live, &mut batch);
        while step == Step::More {
            for p in batch.drain() {
                for k in 0..p.item.1 {
                    departures.push((p.item.0 + k, now, Some(p.until_ns)));
                    // Harmless for a dead shaper (ignored).
                    engine.shaper_released(p.shaper, if k == 0 { p.bytes } else { 0 });
                }
            }
            step = held.keep_sending(now, live, &mut batch);
        }
        assert!(held.is_empty());
        let order: Vec<u8> = departures.iter().map(|d| d.0).collect();
        assert_eq!(order, (20 * K..25 * K).collect::<Vec<_>>());
        assert_eq!(engine.shaper_held(), (0, 0));
    }

    /// One operation of the random walk below.
    #[derive(Clone, Debug)]
    enum Op {
        /// A packet of shaper `s` arrives `gap` ns after the shaper's last one.
        Hold { s: u32, gap: u64 },
        /// The timer callback runs at the current time; time advances by `dt` first.
        Fire { dt: u64 },
        /// A control request kills shaper `s`.
        Kill { s: u32 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u32..4, 0u64..1_000).prop_map(|(s, gap)| Op::Hold { s, gap }),
            2 => (0u64..8_000).prop_map(|dt| Op::Fire { dt }),
            1 => (0u32..4).prop_map(|s| Op::Kill { s }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Against a model (a plain list of what is held): every packet leaves exactly once;
        /// a fire releases exactly the packets due by then (up to the callback's budget), in
        /// (due, arrival) order; a dead shaper's packets leave at once, in order; packets
        /// leave no later than one callback after their time (the timer invariant holds after
        /// every step); unload hands out everything left.
        #[test]
        fn random_walk_against_a_model(
            ops in proptest::collection::vec(op(), 1..120),
            budget in 1usize..80,
        ) {
            let mut h = Held::with_capacity(64).unwrap();
            let mut now = 0u64;
            let mut next_item = 0u32;
            // Model: item -> (due, shaper); per-shaper last due time (never decreases, as the
            // engine promises).
            let mut model: BTreeMap<u32, (u64, u32)> = BTreeMap::new();
            let mut last_due: BTreeMap<u32, u64> = BTreeMap::new();
            let mut dead: Vec<u32> = Vec::new();
            let mut released: Vec<u32> = Vec::new();
            let mut timer: Option<u64> = None;
            for op in ops {
                match op {
                    Op::Hold { s, gap } => {
                        if dead.contains(&s) {
                            continue; // the engine delays nothing for a dead shaper
                        }
                        let due = last_due.get(&s).copied().unwrap_or(now).max(now) + gap;
                        last_due.insert(s, due);
                        let item = next_item;
                        next_item += 1;
                        match h.hold(item, due, shaper(s), 1, now) {
                            Ok(TimerOp::Set(t)) => timer = Some(t),
                            Ok(TimerOp::Leave) => {}
                            Err(back) => {
                                // Full: the driver sends it at once instead.
                                prop_assert_eq!(back, item);
                                prop_assert!(model.len() >= 64);
                                released.push(item);
                                continue;
                            }
                        }
                        model.insert(item, (due, s));
                    }
                    Op::Fire { dt } => {
                        now += dt;
                        if timer.is_none_or(|t| t > now) {
                            continue; // the timer has not expired
                        }
                        timer = None;
                        // A random budget (the driver's is CALLBACK_BUDGET), mostly small, so
                        // that stopping with work left is exercised too.
                        let mut sent = 0;
                        let mut batch = Batch::default();
                        let live = |id: ShaperId| !dead.iter().any(|d| shaper(*d) == id);
                        let mut step = h.timer_fired(now, live, &mut batch);
                        loop {
                            for (item, s) in take(&mut batch) {
                                let (due, ms) = model.remove(&item).unwrap();
                                prop_assert!(due <= now, "released early");
                                prop_assert_eq!(shaper(ms), s);
                                // In (due, arrival) order: nothing earlier is still held.
                                prop_assert!(model.iter().all(|(i, (d, _))| (*d, *i) > (due, item)));
                                released.push(item);
                                sent += 1;
                            }
                            let op = match step {
                                Step::More if sent >= budget => h.stop_sending(now),
                                Step::More => {
                                    step = h.keep_sending(now, live, &mut batch);
                                    continue;
                                }
                                Step::Done(op) => op,
                            };
                            if let TimerOp::Set(t) = op {
                                timer = Some(t);
                            }
                            break;
                        }
                        // Nothing due is left behind unless the budget ran out.
                        if sent < budget {
                            prop_assert!(model.values().all(|(due, _)| *due > now));
                        }
                    }
                    Op::Kill { s } => {
                        dead.push(s);
                        // The control path only requests a check and sets the timer for now;
                        // the expiry (at the same instant here) sends the packets.
                        match h.request_dead_check(now) {
                            TimerOp::Set(t) => prop_assert_eq!(t, now),
                            TimerOp::Leave => prop_assert!(model.is_empty()),
                        }
                        let live = |id: ShaperId| !dead.iter().any(|d| shaper(*d) == id);
                        let mut batch = Batch::default();
                        let mut step = h.timer_fired(now, live, &mut batch);
                        timer = None;
                        let mut out = Vec::new();
                        loop {
                            out.extend(take(&mut batch));
                            match step {
                                Step::More => step = h.keep_sending(now, live, &mut batch),
                                Step::Done(TimerOp::Set(t)) => { timer = Some(t); break; }
                                Step::Done(TimerOp::Leave) => break,
                            }
                        }
                        // Oracle: the dead shapers' packets in (due, arrival) order, then
                        // the live packets due now, in (due, arrival) order.
                        let mut dead_expect: Vec<(u64, u32)> = model
                            .iter()
                            .filter(|(_, (_, ms))| dead.contains(ms))
                            .map(|(i, (due, _))| (*due, *i))
                            .collect();
                        dead_expect.sort_unstable();
                        let mut due_expect: Vec<(u64, u32)> = model
                            .iter()
                            .filter(|(_, (due, ms))| !dead.contains(ms) && *due <= now)
                            .map(|(i, (due, _))| (*due, *i))
                            .collect();
                        due_expect.sort_unstable();
                        let expect: Vec<u32> =
                            dead_expect.iter().chain(&due_expect).map(|e| e.1).collect();
                        let got: Vec<u32> = out.iter().map(|p| p.0).collect();
                        prop_assert_eq!(got, expect);
                        for (item, _) in out {
                            model.remove(&item);
                            released.push(item);
                        }
                    }
                }
                // The timer invariant, seen from the outside: a model packet is due no
                // earlier than the timer the caller last set.
                if let Some(min_due) = model.values().map(|(d, _)| *d).min() {
                    let t = timer.expect("held packets but no timer");
                    prop_assert!(
                        t <= min_due.max(now),
                        "timer at {} after the next due {}",
                        t,
                        min_due
                    );
                }
                check_armed(&h, now);
            }
            // Unload.
            h.close();
            let mut batch = Batch::default();
            loop {
                let step = h.keep_sending(now, all_live, &mut batch);
                for (item, _) in take(&mut batch) {
                    prop_assert!(model.remove(&item).is_some());
                    released.push(item);
                }
                if step != Step::More { break; }
            }
            prop_assert!(model.is_empty(), "unload left {} packets", model.len());
            prop_assert!(h.is_empty());
            released.sort_unstable();
            prop_assert_eq!(released, (0..next_item).collect::<Vec<_>>());
        }
    }
}
