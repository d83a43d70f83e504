//! The driver's shared state, reachable from every callback through [`get`].
//!
//! Lifetime (see `entry`): `DriverEntry` allocates and initialises [`Globals`] in non-paged
//! pool, loads the stored configuration into the engine, and publishes the pointer with
//! [`publish`] *before* it creates the device or starts WFP (so no callback can see it
//! missing). `DriverUnload` drops WFP (no classify or flow-delete callback runs afterwards),
//! deletes the device, then [`retract`] frees the memory last.
//!
//! Two ways in:
//! * WFP callbacks receive `&'static Globals` from `Wfp::start`; `Wfp` is dropped (all
//!   callouts unregistered, injections completed) before `retract`, which is what makes that
//!   reference valid for as long as they can run.
//! * Dispatch routines call [`enter`], which takes **rundown protection** (`EX_RUNDOWN_REF`)
//!   for the duration of the request. [`retract`] first waits for every such request to leave
//!   (`ExWaitForRundownProtectionRelease`) and refuses new ones, and only then clears the
//!   pointer and frees the memory. The I/O manager should not unload a legacy driver while
//!   file objects of its devices are open, but this does not rely on it: a request that
//!   arrives during or after unload gets `None` and completes with `STATUS_DEVICE_NOT_READY`.
//!
//! The pointer is an `AtomicPtr` with Release (publish) / Acquire (load) ordering, so a
//! callback that sees it also sees the initialised contents. Callbacks get shared references
//! and never `&mut`: all mutation goes through the locks inside.

use alloc::alloc::{alloc, dealloc, Layout};
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ops::Deref;
use core::sync::atomic::{AtomicPtr, Ordering};

use wdk_sys::ntddk::{
    ExAcquireRundownProtection, ExReleaseRundownProtection, ExWaitForRundownProtectionRelease,
};
use wdk_sys::EX_RUNDOWN_REF;

use qosmark_engine::{Engine, Limits};

use crate::lock::{PassiveMutex, SpinRwLock};
use crate::pending::PendingQueue;
use crate::registry::ParametersKey;

/// Everything the callbacks share.
pub(crate) struct Globals {
    /// The engine: shared lock on the packet path, exclusive for control requests.
    pub(crate) engine: SpinRwLock<Engine>,
    /// The `Parameters` key; holding this mutex serialises "change configuration, snapshot,
    /// write registry" so the registry ends with the last committed state.
    pub(crate) config: PassiveMutex<ParametersKey>,
    /// Pending IRPs.
    pub(crate) pending: PendingQueue,
}

static GLOBALS: AtomicPtr<Globals> = AtomicPtr::new(core::ptr::null_mut());

/// Rundown protection of the dispatch routines' access to [`GLOBALS`]. In the image's data
/// section (non-paged), fresh for every load. An all-zero `EX_RUNDOWN_REF` is the initialised
/// state (`ExInitializeRundownProtection` sets the count to 0).
struct Rundown(UnsafeCell<EX_RUNDOWN_REF>);

// SAFETY: the cell is only passed to the Ex*RundownProtection* routines, which update it
// atomically from any thread.
unsafe impl Sync for Rundown {}

// SAFETY: EX_RUNDOWN_REF is a plain C union of an integer count and a pointer, for which all
// zero bytes are a valid value — and exactly the initialised, not-run-down state.
static RUNDOWN: Rundown = Rundown(UnsafeCell::new(unsafe {
    core::mem::zeroed::<EX_RUNDOWN_REF>()
}));

/// The globals as seen by one dispatch routine; releases rundown protection when dropped.
#[must_use = "rundown protection is released as soon as the guard is dropped"]
pub(crate) struct Entered(&'static Globals);

impl Deref for Entered {
    type Target = Globals;
    fn deref(&self) -> &Globals {
        self.0
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: this guard acquired rundown protection in `enter` and releases it once;
        // callable at <= DISPATCH_LEVEL.
        unsafe { ExReleaseRundownProtection(RUNDOWN.0.get()) };
    }
}

/// The globals for a dispatch routine, or `None` before `DriverEntry` published them or once
/// unload has begun. `<= DISPATCH_LEVEL` (dispatch routines: `PASSIVE_LEVEL`).
pub(crate) fn enter() -> Option<Entered> {
    // SAFETY: RUNDOWN is a valid, initialised EX_RUNDOWN_REF for the image's lifetime;
    // ExAcquireRundownProtection may be called at <= DISPATCH_LEVEL and fails (FALSE) once
    // ExWaitForRundownProtectionRelease has begun.
    if unsafe { ExAcquireRundownProtection(RUNDOWN.0.get()) } == 0 {
        return None;
    }
    let ptr = GLOBALS.load(Ordering::Acquire);
    // SAFETY: a non-null pointer was stored by `publish` from `create` and points to
    // initialised Globals; `retract` frees them only after waiting for the rundown protection
    // we now hold, so they outlive the guard.
    if let Some(globals) = unsafe { ptr.as_ref() } {
        return Some(Entered(globals));
    }
    // SAFETY: acquired just above and not handed out; released once.
    unsafe { ExReleaseRundownProtection(RUNDOWN.0.get()) };
    None
}

/// The published globals for code that cannot race with unload (`DriverEntry` after
/// publication). Any IRQL.
pub(crate) fn get() -> Option<&'static Globals> {
    let ptr = GLOBALS.load(Ordering::Acquire);
    // SAFETY: as in `enter`: non-null means published and initialised; the only callers run in
    // DriverEntry, before DriverUnload can run.
    unsafe { ptr.as_ref() }
}

/// Owner of the allocation until it is published (and again during unload).
pub(crate) struct GlobalsBox(*mut Globals);

impl GlobalsBox {
    /// The globals, for set-up before publication.
    pub(crate) fn get(&self) -> &Globals {
        // SAFETY: `self.0` is the initialised, exclusively owned allocation made by `create`.
        unsafe { &*self.0 }
    }
}

impl Drop for GlobalsBox {
    fn drop(&mut self) {
        // SAFETY: `self.0` was allocated by `create` with this layout and initialised; it is
        // not published (or was retracted), so nothing else refers to it. Dropping the Globals
        // drops the engine (PASSIVE_LEVEL: frees pool only).
        unsafe {
            core::ptr::drop_in_place(self.0);
        }
        // SAFETY: same allocation, same layout, freed once.
        unsafe { dealloc(self.0.cast(), Layout::new::<Globals>()) };
    }
}

/// Allocates and initialises the globals in non-paged pool. `PASSIVE_LEVEL`.
///
/// # Errors
/// `STATUS_INSUFFICIENT_RESOURCES` when the allocation fails; the status of
/// `IoCsqInitialize`.
pub(crate) fn create(parameters_path: Vec<u16>, seed: u64) -> Result<GlobalsBox, i32> {
    let layout = Layout::new::<Globals>();
    #[allow(
        clippy::cast_ptr_alignment,
        reason = "alloc with Layout::new::<Globals>() returns memory aligned for Globals"
    )]
    // SAFETY: Globals is not zero-sized; the global allocator (wdk-alloc, non-paged pool,
    // 16-byte aligned blocks — Globals needs at most 8) returns null on failure, checked below.
    let ptr = unsafe { alloc(layout) }.cast::<Globals>();
    if ptr.is_null() {
        return Err(qosmark_abi::status::NtStatus::INSUFFICIENT_RESOURCES.0);
    }
    let value = Globals {
        // check_owner: a user's flow marks only packets whose ALE flow the packet path
        // recorded for that user's process (docs/packet-path.md, flow ownership).
        engine: SpinRwLock::new(Engine::with_seed(
            Limits {
                check_owner: true,
                // Held clones leave within `MAX_HOLD_NS`; a later departure is refused by
                // the engine before it charges the bucket (docs/packet-path.md §10).
                shaper_max_delay_ns: crate::wfp::shaping::MAX_HOLD_NS,
                ..Limits::default()
            },
            seed,
        )),
        config: PassiveMutex::new(ParametersKey::new(parameters_path)),
        pending: PendingQueue::new(),
    };
    // SAFETY: `ptr` is a fresh allocation of the right layout; writing initialises it.
    unsafe { ptr.write(value) };
    let owned = GlobalsBox(ptr);
    // SAFETY: the mutex and queue are now at their final address (the allocation never
    // moves) and nobody else can reach them; each is initialised exactly once here.
    unsafe { owned.get().config.init() };
    // SAFETY: as above.
    unsafe { owned.get().pending.init() }?;
    Ok(owned)
}

/// Makes the globals reachable through [`get`]. The box is consumed: the memory now belongs
/// to the published pointer until [`retract`].
pub(crate) fn publish(owned: GlobalsBox) {
    let ptr = owned.0;
    core::mem::forget(owned);
    GLOBALS.store(ptr, Ordering::Release);
}

/// Waits until no dispatch routine is inside [`enter`], refuses new ones, clears the pointer
/// and returns ownership (dropping the box frees the memory). `None` if nothing was
/// published. `PASSIVE_LEVEL`; call only after `Wfp` was dropped (module docs).
pub(crate) fn retract() -> Option<GlobalsBox> {
    // SAFETY: RUNDOWN is valid; ExWaitForRundownProtectionRelease is called at PASSIVE_LEVEL
    // (DriverUnload or a failing DriverEntry), once per load; afterwards every
    // ExAcquireRundownProtection fails, so `enter` can no longer hand out the pointer.
    unsafe { ExWaitForRundownProtectionRelease(RUNDOWN.0.get()) };
    let ptr = GLOBALS.swap(core::ptr::null_mut(), Ordering::AcqRel);
    (!ptr.is_null()).then_some(GlobalsBox(ptr))
}
