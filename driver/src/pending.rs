//! Pending IOCTLs: a cancel-safe IRP queue (`IoCsqInitialize` family).
//!
//! The held `WatchFlow` requests (GQoS `FD_QOS`, `request::Outcome::Hold`) wait here until
//! their flow changes; every other request is answered synchronously. The queue is
//! initialised in `DriverEntry` and drained for every file object in `IRP_MJ_CLEANUP`:
//!
//! * [`PendingQueue::pend`] inserts an IRP (marked pending; the dispatch routine then returns
//!   `STATUS_PENDING`). If the requester cancels it, the I/O manager's cancel routine (the
//!   CSQ's) removes it under the queue lock and calls our `complete_canceled`, which completes
//!   it with `STATUS_CANCELLED`.
//! * [`PendingQueue::cancel_file`] removes every IRP of one file object and completes each with
//!   `STATUS_CANCELLED` (`IRP_MJ_CLEANUP`: the handle is closing; the engine's
//!   `close_handle` aborts with 995 = `ERROR_OPERATION_ABORTED`, which is what
//!   `STATUS_CANCELLED` maps to).
//! * [`PendingQueue::remove_first_where`] removes the first queued IRP a predicate accepts
//!   (the predicate runs under the queue's spin lock, in `IO_CSQ_PEEK_NEXT_IRP`, at
//!   `DISPATCH_LEVEL`): the re-evaluation of held watches after a change (`device`). It never
//!   takes an IRP out of the queue that it does not complete, so cancellation stays the CSQ's.
//!
//! The peek context handed to `IoCsqRemoveNextIrp` is always a [`Peek`], never a bare file
//! object.
//!
//! The system's CSQ routines handle the cancel race (an IRP is completed exactly once, by
//! whoever removes it from the queue). The queue is an intrusive list through
//! `Irp->Tail.Overlay.ListEntry`, which a driver may use while it owns the IRP, guarded by a
//! `KSPIN_LOCK` (IRQL raised to `DISPATCH_LEVEL` while held; nothing else is done under it).
//!
//! IRQL: `pend` and `cancel_file` `<= DISPATCH_LEVEL` (they run at `PASSIVE_LEVEL`); the CSQ
//! callbacks below run at the IRQL the system calls them at, `<= DISPATCH_LEVEL`.

use core::cell::UnsafeCell;

use wdk_sys::ntddk::{
    IoCsqInitialize, IoCsqInsertIrp, IoCsqRemoveNextIrp, KeAcquireSpinLockRaiseToDpc,
    KeReleaseSpinLock,
};
use wdk_sys::{
    IO_CSQ, KIRQL, KSPIN_LOCK, LIST_ENTRY, NTSTATUS, PFILE_OBJECT, PIO_CSQ, PIRP, PKIRQL,
    PLIST_ENTRY, PVOID,
};

use crate::irp;
use qosmark_abi::status::NtStatus;

/// The queue. `#[repr(C)]` with the `IO_CSQ` first, so the `PIO_CSQ` the system hands to the
/// callbacks is also a pointer to the whole queue.
#[repr(C)]
pub(crate) struct PendingQueue {
    csq: UnsafeCell<IO_CSQ>,
    lock: UnsafeCell<KSPIN_LOCK>,
    head: UnsafeCell<LIST_ENTRY>,
}

// SAFETY: every field is reached only through the CSQ routines and the callbacks below, which
// hold `lock` while they touch `head` or a queued IRP's list entry.
unsafe impl Sync for PendingQueue {}
// SAFETY: nothing in the queue is tied to a thread; it is never moved after `init` (globals).
unsafe impl Send for PendingQueue {}

impl PendingQueue {
    /// An uninitialised queue; [`PendingQueue::init`] makes it usable where it then lives.
    pub(crate) fn new() -> Self {
        Self {
            csq: UnsafeCell::new(IO_CSQ::default()),
            // KeInitializeSpinLock sets a KSPIN_LOCK to 0 (an inline routine in wdm.h).
            lock: UnsafeCell::new(0),
            head: UnsafeCell::new(LIST_ENTRY::default()),
        }
    }

    /// Initialises the list head and the CSQ in place. `PASSIVE_LEVEL` (`DriverEntry`).
    ///
    /// # Errors
    /// The status of `IoCsqInitialize`.
    ///
    /// # Safety
    ///
    /// Called once, before any other method, on a value in non-paged memory that never moves
    /// afterwards and that no other thread can reach yet (`globals::create`).
    pub(crate) unsafe fn init(&self) -> Result<(), NTSTATUS> {
        let head = self.head.get();
        // SAFETY: `head` is this queue's own LIST_ENTRY, not yet shared (contract);
        // InitializeListHead makes it point to itself.
        unsafe { link(head, head) };
        // SAFETY: the IO_CSQ lives at its final non-paged address (contract); the callbacks
        // have the IO_CSQ_* signatures of wdm.h and recover the queue from the PIO_CSQ they
        // are given, which is sound because `csq` is the first field of this #[repr(C)] type.
        let status = unsafe {
            IoCsqInitialize(
                self.csq.get(),
                Some(insert_irp),
                Some(remove_irp),
                Some(peek_next_irp),
                Some(acquire_lock),
                Some(release_lock),
                Some(complete_canceled),
            )
        };
        NtStatus(status).to_result().map_err(|e| e.0)
    }

    /// Queues `irp` and marks it pending; the caller's dispatch routine must return
    /// `STATUS_PENDING` and not touch the IRP again.
    ///
    /// # Safety
    ///
    /// `irp` is a live IRP this driver owns, received by a dispatch routine that has not
    /// completed it. `<= DISPATCH_LEVEL`.
    pub(crate) unsafe fn pend(&self, irp: PIRP) {
        // SAFETY: forwarded contract: a live IRP owned by this driver.
        unsafe { irp::mark_pending(irp) };
        // SAFETY: the CSQ was initialised (`init` contract); the IRP is live and ours, and
        // from now on the CSQ owns it (we pass no IO_CSQ_IRP_CONTEXT: the IRP is only ever
        // removed by file object or by cancellation).
        unsafe { IoCsqInsertIrp(self.csq.get(), irp, core::ptr::null_mut()) };
    }

    /// Completes every queued IRP of `file_object` with `STATUS_CANCELLED`.
    /// `<= DISPATCH_LEVEL` (called at `PASSIVE_LEVEL` from `IRP_MJ_CLEANUP`).
    pub(crate) fn cancel_file(&self, file_object: PFILE_OBJECT) {
        let mut peek = Peek::File(file_object);
        loop {
            // SAFETY: the CSQ was initialised in DriverEntry before the device existed, so
            // before any IRP_MJ_CLEANUP; the peek context is our live `Peek`, read only by
            // `peek_next_irp` during this call.
            let irp = unsafe { IoCsqRemoveNextIrp(self.csq.get(), (&raw mut peek).cast()) };
            if irp.is_null() {
                break;
            }
            // SAFETY: IoCsqRemoveNextIrp handed us a queued IRP whose cancel routine it
            // disarmed: we own it and complete it exactly once.
            unsafe { irp::complete(irp, NtStatus::CANCELLED.0, 0) };
        }
    }
}

impl PendingQueue {
    /// Removes and returns the first queued IRP that `accept` accepts, or `None`. The caller
    /// owns the returned IRP (its cancel routine is disarmed) and must complete it.
    ///
    /// `accept` runs with the queue's spin lock held (`DISPATCH_LEVEL`), once per queued IRP
    /// it is shown, each a live queued IRP: it may read the IRP, its current stack location
    /// and its system buffer, must not complete, queue or free anything, nor wait.
    /// `<= DISPATCH_LEVEL`.
    pub(crate) fn remove_first_where(&self, accept: &mut dyn FnMut(PIRP) -> bool) -> Option<PIRP> {
        let mut peek = Peek::Where(accept);
        // SAFETY: the CSQ was initialised in DriverEntry (before any IRP could be queued);
        // the peek context is our live `Peek`, used by `peek_next_irp` only during this call.
        let irp = unsafe { IoCsqRemoveNextIrp(self.csq.get(), (&raw mut peek).cast()) };
        (!irp.is_null()).then_some(irp)
    }
}

/// The peek context of every `IoCsqRemoveNextIrp` call of this module.
pub(crate) enum Peek<'a> {
    /// IRPs of this file object.
    File(PFILE_OBJECT),
    /// IRPs the predicate accepts.
    Where(&'a mut dyn FnMut(PIRP) -> bool),
}

/// The queue an `IO_CSQ` pointer belongs to.
fn queue_of(csq: PIO_CSQ) -> *const PendingQueue {
    csq.cast_const().cast()
}

/// The list entry a queued IRP is linked by.
///
/// # Safety
/// `irp` is a live IRP.
unsafe fn entry_of(irp: PIRP) -> PLIST_ENTRY {
    // SAFETY: `irp` is live; taking the address of a field creates no reference.
    unsafe { &raw mut (*irp).Tail.Overlay.__bindgen_anon_2.ListEntry }
}

/// The IRP a list entry belongs to (`CONTAINING_RECORD(entry, IRP, Tail.Overlay.ListEntry)`).
///
/// # Safety
/// `entry` is the `Tail.Overlay.ListEntry` of a live IRP.
unsafe fn irp_of(entry: PLIST_ENTRY) -> PIRP {
    let offset = core::mem::offset_of!(wdk_sys::IRP, Tail.Overlay.__bindgen_anon_2.ListEntry);
    // SAFETY: per the contract `entry` lies `offset` bytes into an IRP, so stepping back stays
    // inside that allocation.
    unsafe { entry.cast::<u8>().sub(offset).cast() }
}

/// `a.Flink = b; b.Blink = a` — one step of every list edit below.
///
/// # Safety
/// `a` and `b` are valid list entries that only the caller (holding the queue lock, or
/// owning a not-yet-shared queue) touches.
unsafe fn link(a: PLIST_ENTRY, b: PLIST_ENTRY) {
    // SAFETY: `a` is valid and exclusively ours per the contract.
    let a_ref = unsafe { &mut *a };
    a_ref.Flink = b;
    // SAFETY: as above for `b` (it may be `a` itself: the reference above is no longer used).
    let b_ref = unsafe { &mut *b };
    b_ref.Blink = a;
}

/// `entry.Flink` / `entry.Blink`.
///
/// # Safety
/// `entry` is a valid list entry (queue lock held).
unsafe fn neighbours(entry: PLIST_ENTRY) -> (PLIST_ENTRY, PLIST_ENTRY) {
    // SAFETY: per the contract.
    let entry = unsafe { &*entry };
    (entry.Flink, entry.Blink)
}

/// `IO_CSQ_INSERT_IRP`: appends to the list (called with the queue lock held).
unsafe extern "C" fn insert_irp(csq: PIO_CSQ, irp: PIRP) {
    // SAFETY: `csq` is our queue's IO_CSQ (we passed it to IoCsqInsertIrp), so the queue is
    // valid; its lock is held by the CSQ library during this callback.
    let queue = unsafe { &*queue_of(csq) };
    let head = queue.head.get();
    // SAFETY: `irp` is the live IRP being inserted.
    let entry = unsafe { entry_of(irp) };
    // SAFETY: the head is valid under the lock.
    let (_, tail) = unsafe { neighbours(head) };
    // InsertTailList: tail <-> entry <-> head.
    // SAFETY: `tail` and `head` are entries of the well-formed list, `entry` is on no list;
    // the lock is held.
    unsafe { link(tail, entry) };
    // SAFETY: as above.
    unsafe { link(entry, head) };
}

/// `IO_CSQ_REMOVE_IRP`: unlinks (called with the queue lock held).
unsafe extern "C" fn remove_irp(_csq: PIO_CSQ, irp: PIRP) {
    // SAFETY: `irp` is a live, queued IRP (the CSQ library only removes IRPs it inserted).
    let entry = unsafe { entry_of(irp) };
    // SAFETY: `entry` is on the list, under the lock.
    let (next, prev) = unsafe { neighbours(entry) };
    // RemoveEntryList.
    // SAFETY: `prev` and `next` are valid entries of the list (lock held).
    unsafe { link(prev, next) };
    // The removed entry points to itself, so a stray second unlink is harmless.
    // SAFETY: `entry` is valid and now off the list.
    unsafe { link(entry, entry) };
}

/// `IO_CSQ_PEEK_NEXT_IRP`: the first IRP after `irp` (or from the head when `irp` is null)
/// that the [`Peek`] at `peek_context` selects (any IRP when `peek_context` is null). Called
/// with the queue lock held.
unsafe extern "C" fn peek_next_irp(csq: PIO_CSQ, irp: PIRP, peek_context: PVOID) -> PIRP {
    // SAFETY: `csq` is our queue's IO_CSQ; the lock is held.
    let queue = unsafe { &*queue_of(csq) };
    let head = queue.head.get();
    let start = if irp.is_null() {
        head
    } else {
        // SAFETY: `irp` is a queued IRP, so its entry is on the list.
        unsafe { entry_of(irp) }
    };
    let peek = peek_context.cast::<Peek<'_>>();
    // SAFETY: `start` is the head or a queued entry, valid under the lock.
    let mut entry = unsafe { neighbours(start) }.0;
    while entry != head {
        // SAFETY: every entry on the list other than the head is a queued IRP's ListEntry.
        let candidate = unsafe { irp_of(entry) };
        if peek.is_null() {
            return candidate;
        }
        // SAFETY: a non-null peek context is always a live `Peek` of the caller of
        // IoCsqRemoveNextIrp (module docs), which waits for this callback; nothing else uses
        // it meanwhile.
        let selected = match unsafe { &mut *peek } {
            Peek::File(file_object) => {
                // SAFETY: the candidate is a live queued IRP.
                let stack = unsafe { irp::current_stack_location(candidate) };
                // SAFETY: its current stack location is valid while it is queued.
                let stack = unsafe { &*stack };
                stack.FileObject == *file_object
            }
            Peek::Where(accept) => accept(candidate),
        };
        if selected {
            return candidate;
        }
        // SAFETY: `entry` is on the list; its Flink is the next entry or the head.
        entry = unsafe { neighbours(entry) }.0;
    }
    core::ptr::null_mut()
}

/// `IO_CSQ_ACQUIRE_LOCK`.
unsafe extern "C" fn acquire_lock(csq: PIO_CSQ, irql: PKIRQL) {
    // SAFETY: `csq` is our queue's IO_CSQ (the queue outlives every callback).
    let queue = unsafe { &*queue_of(csq) };
    // SAFETY: the spin lock is initialised (0) and non-paged. KeAcquireSpinLockRaiseToDpc
    // (what KeAcquireSpinLock expands to on x64/ARM64) may be called at <= DISPATCH_LEVEL,
    // which is where the CSQ library calls this.
    let old: KIRQL = unsafe { KeAcquireSpinLockRaiseToDpc(queue.lock.get()) };
    // SAFETY: `irql` is the library's out-parameter for the saved IRQL.
    unsafe { *irql = old };
}

/// `IO_CSQ_RELEASE_LOCK`.
unsafe extern "C" fn release_lock(csq: PIO_CSQ, irql: KIRQL) {
    // SAFETY: `csq` is our queue's IO_CSQ.
    let queue = unsafe { &*queue_of(csq) };
    // SAFETY: the CSQ library releases the lock it acquired through `acquire_lock`, at
    // DISPATCH_LEVEL, with the IRQL that call saved.
    unsafe { KeReleaseSpinLock(queue.lock.get(), irql) };
}

/// `IO_CSQ_COMPLETE_CANCELED_IRP`: the requester cancelled a queued IRP; the library already
/// removed it. Called without the queue lock, at `<= DISPATCH_LEVEL`.
unsafe extern "C" fn complete_canceled(_csq: PIO_CSQ, irp: PIRP) {
    // SAFETY: the CSQ library hands over a removed, live IRP; completing it once is ours.
    unsafe { irp::complete(irp, NtStatus::CANCELLED.0, 0) };
}
