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
    // SAFETY: per the contract `irp` is a live IRP owned by this driver for the call; the
    // field is the union member wdm.h's IoGetCurrentIrpStackLocation reads.
    unsafe {
        (*irp)
            .Tail
            .Overlay
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
    // SAFETY: per the contract the driver owns `irp`; writing its status block is how a
    // driver reports the result.
    unsafe {
        (*irp).IoStatus.__bindgen_anon_1.Status = status;
    }
    // SAFETY: as above; `Information` is a ULONG_PTR (pointer-sized) count.
    unsafe {
        (*irp).IoStatus.Information = information as _;
    }
    // SAFETY: the IRP is owned by this driver and carries its final status; IO_NO_INCREMENT
    // (0) is the priority boost for requests that completed quickly (CCHAR).
    unsafe { IofCompleteRequest(irp, IO_NO_INCREMENT as _) };
}
