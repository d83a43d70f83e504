//! The driver's shared state, reachable from every callback through [`get`].
//!
//! Lifetime (see `entry`): `DriverEntry` allocates and initialises [`Globals`] in non-paged
//! pool, loads the stored configuration into the engine, and publishes the pointer with
//! [`publish`] *before* it creates the device or starts WFP (so no callback can see it
//! missing). `DriverUnload` drops WFP (no classify or flow-delete callback runs afterwards),
//! deletes the device (no dispatch routine runs afterwards: the I/O manager only unloads a
//! legacy driver whose device objects have no open file objects), then [`retract`] clears
//! the pointer and frees the memory last.
//!
//! The pointer is an `AtomicPtr` with Release (publish) / Acquire (get) ordering, so a callback
//! that sees it also sees the initialised contents. Callbacks get `&'static Globals` and never
//! `&mut`: all mutation goes through the locks inside.

use alloc::alloc::{alloc, dealloc, Layout};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, Ordering};

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

/// The published globals, or `None` before `DriverEntry` published them / after unload.
/// Any IRQL.
pub(crate) fn get() -> Option<&'static Globals> {
    let ptr = GLOBALS.load(Ordering::Acquire);
    // SAFETY: a non-null pointer was stored by `publish` from `create`, points to initialised
    // Globals in non-paged pool, and stays valid until `retract`, which DriverUnload calls
    // only after every user of `get` (WFP callbacks, dispatch routines) is gone (module docs).
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
        engine: SpinRwLock::new(Engine::with_seed(Limits::default(), seed)),
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

/// Clears the pointer and returns ownership (dropping the box frees the memory). `None` if
/// nothing was published. Call only once no callback can run (module docs).
pub(crate) fn retract() -> Option<GlobalsBox> {
    let ptr = GLOBALS.swap(core::ptr::null_mut(), Ordering::AcqRel);
    (!ptr.is_null()).then_some(GlobalsBox(ptr))
}
