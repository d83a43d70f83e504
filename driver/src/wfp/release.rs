//! [`Shaping`]: the held clones of delayed packets, their lock, and the high-resolution
//! release timer (Windows only). The decisions — what to release when, when to set the
//! timer — are `super::shaping`'s, tested on the host; this module owns the kernel objects
//! and carries them out. Walkthrough: `docs/packet-path.md`, "Shaping".
//!
//! | function | caller | IRQL |
//! |---|---|---|
//! | [`Shaping::with_capacity`], [`Shaping::start_timer`] | `Wfp::start` | `PASSIVE_LEVEL` |
//! | [`Shaping::hold`] | mark classify (`callouts`) | `<= DISPATCH_LEVEL` (DISPATCH while the lock is held) |
//! | `on_timer` (`EXT_CALLBACK`) | the kernel, when the timer expires | `DISPATCH_LEVEL` |
//! | [`release_dead_shapers`] (sets the timer for "now"; sends nothing itself) | after control requests: `device` (IOCTL, cleanup), `kiface` (kernel interface) | `<= DISPATCH_LEVEL` |
//! | [`Shaping::shutdown`] | `Wfp::drop`, first | `PASSIVE_LEVEL` |
//!
//! Lock: `held` is an `EX_SPIN_LOCK` used exclusively. Order: engine lock (shared) → `held`,
//! never the reverse (only the timer callback takes both, to ask `shaper_live` while taking
//! packets out); neither is held across a call into WFP (injection can re-enter classify on
//! this CPU, which takes both locks). `ExSetTimer` *is* called under `held` — it does not wait and
//! is callable at `DISPATCH_LEVEL` — so that the last timer set always matches the queue.

use core::ffi::c_void;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};

use qosmark_abi::FailOpen;

use crate::ffi::ndis::NET_BUFFER_LIST;
use crate::ffi::timer::{
    ExAllocateTimer, ExDeleteTimer, ExSetTimer, EXT_DELETE_PARAMETERS, EX_TIMER_HIGH_RESOLUTION,
    PEX_TIMER,
};
use crate::ffi::KeDelayExecutionThread;
use crate::lock::SpinRwLock;

use super::callouts::now_ns;
use super::decide::HoldPlan;
use super::gate::Gate;
use super::packet;
use super::registration::{shared, Shared};
use super::shaping::{relative_due, Batch, Held, Step, TimerOp, CALLBACK_BUDGET};

/// One held clone: everything its injection needs, captured at classify time.
#[derive(Debug)]
pub(crate) struct HeldNbl {
    /// Our clone (rewritten, out-of-band info copied), not yet injected.
    clone: NonNull<NET_BUFFER_LIST>,
    /// `compartmentId` metadata of the classify (or `UNSPECIFIED_COMPARTMENT_ID`).
    compartment: u32,
    /// IPv6 (selects the injection handle).
    v6: bool,
    /// Its packets (`NET_BUFFER`s): each holds one packet of the engine's queue room.
    packets: u8,
}

// SAFETY: a `HeldNbl` is the sole owner of its clone (no other reference exists while it is
// held); the clone is an NDIS object usable from any CPU at <= DISPATCH_LEVEL. It is only
// reached under `Shaping::held`'s lock or after being moved out of it.
unsafe impl Send for HeldNbl {}
// SAFETY: as above; shared references to a `HeldNbl` never touch the clone.
unsafe impl Sync for HeldNbl {}

/// Keeps [`release_dead_shapers`] (called from dispatch routines and kernel-interface
/// entries, which may in principle race with unload) out of `Shared` once unload has begun.
/// A `static`, so it outlives the `Shared` it guards; `Wfp::drop` closes and drains it before
/// [`Shaping::shutdown`].
pub(crate) static RELEASE_GATE: Gate = Gate::new();

/// Held clones + the release timer.
pub(crate) struct Shaping {
    held: SpinRwLock<Held<HeldNbl>>,
    /// The `EX_TIMER` (null: no timer — shaping is off and every delay is sent at once).
    timer: AtomicPtr<c_void>,
}

impl Shaping {
    /// Room for `capacity` held NBLs, allocated now (non-paged; nothing is allocated in
    /// classify). `None` without memory (the driver does not load then, as for the flow
    /// registry; a missing *timer* only turns shaping off). `PASSIVE_LEVEL`.
    pub(crate) fn with_capacity(capacity: usize) -> Option<Shaping> {
        Some(Shaping {
            held: SpinRwLock::new(Held::with_capacity(capacity)?),
            timer: AtomicPtr::new(ptr::null_mut()),
        })
    }

    /// Allocates the high-resolution release timer. Call once, at `PASSIVE_LEVEL`, after
    /// `Shared` is published (the callback finds it through `shared()`). Failure leaves
    /// shaping off (delays go out at once, counted); the driver still loads.
    ///
    /// Why `ExAllocateTimer` + `EX_TIMER_HIGH_RESOLUTION` (Windows 8.1+; our floor is
    /// Windows 10 1709, `docs/packet-path.md` §8): a default-resolution timer — `KeSetTimerEx`
    /// or `KeSetCoalescableTimer`, or an `EX_TIMER` without the flag — fires up to ~15 ms
    /// early or late (*High-Resolution Timers*), so a shaped flow would leave in bursts one
    /// clock tick apart: ~13 full-size packets at a time at 10 Mbit/s. A high-resolution timer
    /// fires at most ~1 ms late and never early. Its cost — the system clock runs at its
    /// maximum rate shortly before each expiry — is paid only while packets are held: the
    /// timer is one-shot, set only for the earliest held packet, never periodic.
    pub(crate) fn start_timer(&self) {
        // SAFETY: PASSIVE_LEVEL (<= DISPATCH_LEVEL is required); `on_timer` is our
        // EXT_CALLBACK; no context (the callback uses the published `Shared`, which outlives
        // the timer: `shutdown` deletes it, waiting, before `Shared` is freed); high
        // resolution alone (not combined with EX_TIMER_NO_WAKE, which would bugcheck).
        let timer =
            unsafe { ExAllocateTimer(Some(on_timer), ptr::null_mut(), EX_TIMER_HIGH_RESOLUTION) };
        self.timer.store(timer, Ordering::Release);
    }

    /// Performs `op` on the timer. Called with `held` locked (hence `DISPATCH_LEVEL`).
    fn apply(&self, op: TimerOp) {
        let TimerOp::Set(due) = op else {
            return;
        };
        let timer: PEX_TIMER = self.timer.load(Ordering::Acquire);
        if timer.is_null() {
            return;
        }
        // SAFETY: our live timer object (deleted only by `shutdown`, after `close` made every
        // later `TimerOp` a `Leave`; a set racing with the deletion is documented to return
        // FALSE and do nothing); relative due time, as a high-resolution timer requires; not
        // periodic; no extended parameters. Callable at <= DISPATCH_LEVEL.
        let _ = unsafe { ExSetTimer(timer, relative_due(due, now_ns()), 0, ptr::null()) };
    }

    /// Holds `clone` per `plan`. `Err(clone)`: not held (no timer, unload begun, the queue
    /// full, or the delay longer than `shaping::MAX_HOLD_NS`) — the caller injects it now,
    /// with its mark, counts it and returns its room.
    ///
    /// # Safety
    /// `clone` is our rewritten, not yet injected clone; on `Ok` ownership passes to the
    /// queue. `<= DISPATCH_LEVEL`; the caller holds no lock.
    pub(crate) unsafe fn hold(
        &self,
        clone: NonNull<NET_BUFFER_LIST>,
        compartment: u32,
        v6: bool,
        plan: HoldPlan,
    ) -> Result<(), NonNull<NET_BUFFER_LIST>> {
        if self.timer.load(Ordering::Acquire).is_null() {
            return Err(clone);
        }
        let item = HeldNbl {
            clone,
            compartment,
            v6,
            packets: plan.packets,
        };
        let mut held = self.held.write();
        match held.hold(item, plan.until_ns, plan.shaper, plan.bytes, now_ns()) {
            Ok(op) => {
                self.apply(op);
                Ok(())
            }
            Err(item) => Err(item.clone),
        }
    }

    /// Unload, `PASSIVE_LEVEL`, before the injection handles are destroyed: closes the set
    /// (classify sends delays at once from now on), deletes the timer — cancelling a pending
    /// expiry and **waiting** for a running callback — then injects every held clone.
    pub(crate) fn shutdown(&self, shared: &Shared) {
        // Every queued packet moves to the outbox; nothing is held or timed from now on.
        self.held.write().close();
        let timer = self.timer.swap(ptr::null_mut(), Ordering::AcqRel);
        if !timer.is_null() {
            let mut parameters = EXT_DELETE_PARAMETERS::initialized();
            // SAFETY: our timer, deleted once (swapped out above); Cancel = TRUE and
            // Wait = TRUE (Wait requires Cancel) at PASSIVE_LEVEL (<= APC_LEVEL required);
            // not called from the callback. The record is initialised as
            // ExInitializeDeleteTimerParameters does and lives across the call. Afterwards no
            // callback runs and the timer pointer is not used again.
            let _ = unsafe { ExDeleteTimer(timer, 1, 1, &raw mut parameters) };
        }
        // Send the outbox. The timer is gone (a callback that was sending has finished) and
        // `release_dead_shapers` is kept out by its gate (drained before this call), so this
        // thread is the only sender: take batches until nothing is left.
        loop {
            let mut batch = Batch::default();
            let step = self
                .held
                .write()
                .keep_sending(now_ns(), |_| true, &mut batch);
            send(shared, &mut batch);
            if step != Step::More {
                break;
            }
        }
    }
}

/// Injects every clone of `batch` (no lock held), then returns its packets' queue room to
/// the engine. A failed injection frees the clone: the packet is lost — the original was
/// absorbed at classify — and counted as `InjectFailed` (see `docs/packet-path.md`,
/// Shaping). `<= DISPATCH_LEVEL`.
fn send(shared: &Shared, batch: &mut Batch<HeldNbl>) {
    if batch.len() == 0 {
        return;
    }
    let mut lost = 0usize;
    for released in batch.drain() {
        let (shaper, bytes) = (released.shaper, released.bytes);
        let HeldNbl {
            clone,
            compartment,
            v6,
            packets,
        } = released.item;
        let handle = if v6 {
            shared.inject_v6
        } else {
            shared.inject_v4
        };
        // SAFETY: `handle` is our live injection handle of the clone's family (destroyed only
        // after `shutdown` returned); the clone starts at the IP header and is not touched
        // after a successful call (the completion routine frees it).
        if unsafe { packet::inject(handle, compartment, clone.as_ptr()) }.is_err() {
            // SAFETY: not injected, still ours; freed once.
            unsafe { packet::free_clone(clone.as_ptr()) };
            // Counted per packet, like every fail-open count.
            lost += usize::from(packets);
        }
        // The room comes back per packet: the NBL's bytes (the sum its packets reserved, as
        // pushed) with the first, nothing more with the others — the engine's totals are
        // then exactly what classify reserved.
        let engine = shared.globals.engine.read();
        for i in 0..packets {
            engine.shaper_released(shaper, if i == 0 { bytes } else { 0 });
        }
    }
    if lost > 0 {
        let engine = shared.globals.engine.read();
        for _ in 0..lost {
            engine.record_fail_open(FailOpen::InjectFailed);
        }
    }
}

/// `EXT_CALLBACK` of the release timer: `DISPATCH_LEVEL`. Becomes the sender (unless another
/// expiry is sending: that one sends everything) and injects, in batches with the lock
/// dropped, first the packets of shapers that died (if a control request asked for the
/// check), then every packet due, at most [`CALLBACK_BUDGET`] per call; then the timer is
/// set for the next due time (or for "now" when the budget ran out).
unsafe extern "system" fn on_timer(_timer: PEX_TIMER, _context: *mut c_void) {
    // `Shared` outlives the timer (`shutdown` deletes the timer, waiting for this callback,
    // before `Shared` is freed).
    let Some(shared) = shared() else {
        return;
    };
    let shaping = &shared.shaping;
    let mut batch = Batch::default();
    let mut step = {
        // Lock order: engine (shared, for `shaper_live`) → held.
        let engine = shared.globals.engine.read();
        let mut held = shaping.held.write();
        let step = held.timer_fired(now_ns(), |s| engine.shaper_live(s), &mut batch);
        shaping.settle(step)
    };
    let mut sent = 0usize;
    loop {
        sent += batch.len();
        send(shared, &mut batch);
        if step != Step::More {
            return;
        }
        let engine = shared.globals.engine.read();
        let mut held = shaping.held.write();
        step = if sent >= CALLBACK_BUDGET {
            // Enough for one DPC: the next expiry (set for "now") carries on.
            let op = held.stop_sending(now_ns());
            shaping.apply(op);
            Step::Done(op)
        } else {
            let next = held.keep_sending(now_ns(), |s| engine.shaper_live(s), &mut batch);
            shaping.settle(next)
        };
    }
}

/// After a control request that may have removed flows, handles, rules or rates: asks for
/// every held clone whose shaper is gone (`Engine::shaper_live`) to be sent at once. Nothing
/// is injected here — the release timer is set for "now" and its callback sends them, ahead
/// of the packets that are merely due (`shaping::Held::request_dead_check`), so callers (the
/// IOCTL path, handle cleanup, other drivers' kernel-interface calls) never re-enter the
/// network stack. Cheap when nothing is held (one lock round trip). `<= DISPATCH_LEVEL`; the
/// caller holds no lock.
pub(crate) fn release_dead_shapers() {
    let Some(_inside) = RELEASE_GATE.enter() else {
        return; // unload has begun; `shutdown` releases everything
    };
    // Inside the gate `Shared` stays alive (`Wfp::drop` drains the gate before tearing down).
    let Some(shared) = shared() else {
        return;
    };
    let shaping = &shared.shaping;
    let mut held = shaping.held.write();
    let op = held.request_dead_check(now_ns());
    shaping.apply(op);
}

impl Shaping {
    /// Under the `held` lock: a finished step's timer operation is carried out now.
    fn settle(&self, step: Step) -> Step {
        if let Step::Done(op) = step {
            self.apply(op);
        }
        step
    }
}

/// Waits (10 ms sleeps, `PASSIVE_LEVEL`) until no [`release_dead_shapers`] is inside the
/// gate; `Wfp::drop` closes the gate first.
pub(crate) fn drain_release_gate() {
    while !RELEASE_GATE.is_drained() {
        let interval: i64 = -100_000;
        // SAFETY: PASSIVE_LEVEL (unload's system thread); KernelMode, not alertable;
        // `interval` lives across the call.
        let _ = unsafe { KeDelayExecutionThread(0, 0, &raw const interval) };
    }
}
