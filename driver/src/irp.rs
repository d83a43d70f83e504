//! The few `wdm.h` inline routines and macros of IRP handling, which bindgen cannot turn into
//! bindings (`FORCEINLINE` functions and `#define`s), written out from their definitions.
//!
//! IRQL: every routine here may run at `<= DISPATCH_LEVEL`; the dispatch routines that use
//! them run at `PASSIVE_LEVEL`.

use wdk_sys::ntddk::IofCompleteRequest;
use wdk_sys::{IO_NO_INCREMENT, NTSTATUS, PIO_STACK_LOCATION, PIRP, SL_PENDING_RETURNED};

/// `IoGetCurrentIrpStackLocation`: the stack location of the driver the IRP is at now
/// (`Irp->Tail.Overlay.CurrentStackLocation`).
///
/// # Safety
///
/// `irp` points to a valid IRP that the I/O manager handed to this driver and that the driver
/// has not completed.
pub(crate) unsafe fn current_stack_location(irp: PIRP) -> PIO_STACK_LOCATION {
    // SAFETY: per the contract `irp` is a live IRP owned by this driver for the call.
    let irp = unsafe { &*irp };
    // SAFETY: `Tail` is a union; while the driver owns the IRP the `Overlay` member is the
    // valid one (wdm.h's IoGetCurrentIrpStackLocation reads through it).
    let overlay = unsafe { irp.Tail.Overlay };
    // SAFETY: the stack-location member of the inner union is the one the I/O manager keeps
    // current for a dispatched IRP.
    unsafe {
        overlay
            .__bindgen_anon_2
            .__bindgen_anon_1
            .CurrentStackLocation
    }
}

/// `IoMarkIrpPending`: sets `SL_PENDING_RETURNED` in the current stack location, as a
/// dispatch routine must before it returns `STATUS_PENDING` for an IRP it queued.
///
/// # Safety
///
/// As [`current_stack_location`].
pub(crate) unsafe fn mark_pending(irp: PIRP) {
    // SAFETY: as `current_stack_location`'s contract (forwarded).
    let stack = unsafe { current_stack_location(irp) };
    // SAFETY: the stack location of a live IRP is valid and this driver owns the IRP; the
    // flag is a u8 bit (wdm.h: `Control |= SL_PENDING_RETURNED`).
    unsafe { (*stack).Control |= SL_PENDING_RETURNED as u8 };
}

/// Completes `irp` with `status` and `information` bytes (`IoCompleteRequest` with
/// `IO_NO_INCREMENT`). After this call the IRP belongs to the I/O manager again.
///
/// # Safety
///
/// `irp` is a live IRP this driver owns (not queued, not completed), and for
/// `METHOD_BUFFERED` requests `information` is at most the output buffer length. Callable at
/// `<= DISPATCH_LEVEL`.
pub(crate) unsafe fn complete(irp: PIRP, status: NTSTATUS, information: usize) {
    // SAFETY: per the contract the driver owns `irp` until IofCompleteRequest below; no other
    // reference to it exists in this driver.
    let irp_ref = unsafe { &mut *irp };
    // Writing the status block is how a driver reports the result (writing a union member is
    // safe; `Status` is the member the I/O manager reads).
    irp_ref.IoStatus.__bindgen_anon_1.Status = status;
    // `Information` is a ULONG_PTR (pointer-sized) byte count.
    irp_ref.IoStatus.Information = information as _;
    // SAFETY: the IRP is owned by this driver and carries its final status; the reference
    // above is not used again; IO_NO_INCREMENT (0) is the priority boost for requests that
    // completed quickly (CCHAR).
    unsafe { IofCompleteRequest(irp, IO_NO_INCREMENT as _) };
}
