//! Windows glue of the kernel interface: the [`Backend`] over the driver's globals, the
//! query handler for `IRP_MJ_INTERNAL_DEVICE_CONTROL`, and the start/unload hooks.
//!
//! | function | caller | IRQL |
//! |---|---|---|
//! | [`start`] | `DriverEntry`, before the device is created | `PASSIVE_LEVEL` |
//! | [`query_interface`] | the `IRP_MJ_INTERNAL_DEVICE_CONTROL` dispatch routine, for [`IOCTL_QOSMARK_QUERY_KERNEL_INTERFACE`] | the client's thread: `<= APC_LEVEL` through `IoBuildDeviceIoControlRequest` (which requires it), `<= DISPATCH_LEVEL` for an IRP the client built itself; no wait, no paged memory |
//! | [`unload`] | `DriverUnload`, before the engine and the device are torn down | `PASSIVE_LEVEL` |
//! | the table's entries (`super::table`) | other drivers | `<= DISPATCH_LEVEL` |
//!
//! Lock: the entries take `crate::globals::enter()` (rundown protection) and its `engine`
//! (drvdev's `SpinRwLock<Engine>`),
//! exclusive for changes and shared for `QueryFlow`, the same lock the IOCTL path and the
//! classify path use; nothing else is held while it is, and nothing is held across calls.

use qosmark_abi::kernel::{KernelInterface, IOCTL_QOSMARK_QUERY_KERNEL_INTERFACE};
use qosmark_abi::status::NtStatus;
use qosmark_engine::Engine;
use wdk_sys::ntddk::{KeDelayExecutionThread, KeQuerySystemTimePrecise};
use wdk_sys::{_MODE, LARGE_INTEGER, NTSTATUS, PIO_STACK_LOCATION, PIRP};

use super::lifetime::Lifetime;
use super::table::{answer_query, Backend};

/// The lifetime of this load; its address is the table's `Context`.
static LIFETIME: Lifetime = Lifetime::new();

/// The driver's backend: the engine in `crate::globals`, the lifetime above.
pub(crate) struct Driver;

impl Backend for Driver {
    fn lifetime() -> &'static Lifetime {
        &LIFETIME
    }

    // `globals::enter` takes drvdev's rundown protection (callable at <= DISPATCH_LEVEL), so
    // the globals cannot be retracted under a running entry even if an unload order changed.
    fn write<R>(f: impl FnOnce(&mut Engine) -> R) -> Option<R> {
        let globals = crate::globals::enter()?;
        let result = f(&mut *globals.engine.write());
        // Shaping: a change may have removed a flow or closed a handle; the held packets of
        // every shaper that went with it leave at once — sent by the release timer, never in
        // the client's context. The engine lock is released (statement above).
        crate::wfp::release_dead_shapers();
        Some(result)
    }

    fn read<R>(f: impl FnOnce(&Engine) -> R) -> Option<R> {
        let globals = crate::globals::enter()?;
        let engine = globals.engine.read();
        Some(f(&engine))
    }
}

/// Starts this load's interface with a new generation: the system time in 100 ns units,
/// which differs between any two loads. Call once from `DriverEntry` at `PASSIVE_LEVEL`.
pub(crate) fn start() {
    let mut now = LARGE_INTEGER { QuadPart: 0 };
    // SAFETY: KeQuerySystemTimePrecise writes one LARGE_INTEGER through a valid, exclusive
    // pointer to a local; callable at any IRQL (PASSIVE here).
    unsafe { KeQuerySystemTimePrecise(&mut now) };
    // SAFETY: every variant of LARGE_INTEGER is plain integers; QuadPart covers all 8 bytes
    // the call wrote.
    let ticks = unsafe { now.QuadPart };
    LIFETIME.start(ticks.unsigned_abs());
}

/// Refuses new queries and entry calls, then waits (10 ms sleeps, `PASSIVE_LEVEL`) until
/// every reference is released, then once more. Call from `DriverUnload` before the engine is
/// freed; the function pointers handed out stay valid until this returns.
///
/// The last sleep covers the instructions an entry or `InterfaceDereference` still executes
/// in this image after its release made the count 0 (its epilogue and `ret`): the count alone
/// cannot cover them. A 10 ms grace period plus the rest of the unload (WFP teardown) makes
/// that window practically closed, but not provably so — a client vCPU descheduled by the
/// hypervisor between the decrement and its `ret` for longer than that is the residual case
/// (docs/kernel-interface.md, lifetime).
pub(crate) fn unload() {
    let mut drained = LIFETIME.begin_unload();
    loop {
        // Negative = relative time, in 100 ns units: 10 ms.
        let mut interval = LARGE_INTEGER { QuadPart: -100_000 };
        // SAFETY: PASSIVE_LEVEL in DriverUnload, so the thread may wait; KernelMode and
        // non-alertable, so it cannot return early with an APC status that would matter (the
        // loop re-checks anyway); `interval` is a valid local.
        let _ = unsafe { KeDelayExecutionThread(_MODE::KernelMode as _, 0, &mut interval) };
        if drained {
            // Slept once after the count was seen at 0 (grace period above).
            return;
        }
        drained = LIFETIME.is_drained();
    }
}

/// Handles `IRP_MJ_INTERNAL_DEVICE_CONTROL` with [`IOCTL_QOSMARK_QUERY_KERNEL_INTERFACE`]:
/// sets `IoStatus.Information` and returns the status; the dispatch routine stores the
/// status in `IoStatus.Status` and completes the IRP. Any other code →
/// `STATUS_INVALID_DEVICE_REQUEST`.
///
/// # Safety
/// `irp` must be the live IRP of an `IRP_MJ_INTERNAL_DEVICE_CONTROL` dispatch call and
/// `stack` its current stack location; the caller completes the IRP after this returns.
pub(crate) unsafe fn query_interface(irp: PIRP, stack: PIO_STACK_LOCATION) -> NTSTATUS {
    // SAFETY: the I/O manager passes the current stack location of the live IRP, valid for
    // the duration of the dispatch call (the client's thread, <= DISPATCH_LEVEL).
    let stack_ref = unsafe { &*stack };
    // SAFETY: for IRP_MJ_INTERNAL_DEVICE_CONTROL the `DeviceIoControl` member of the
    // parameters union is the one the I/O manager filled in.
    let params = unsafe { stack_ref.Parameters.DeviceIoControl };
    let (code, in_len, out_len) = (
        params.IoControlCode,
        params.InputBufferLength,
        params.OutputBufferLength,
    );
    // SAFETY: the live IRP of this dispatch call; only read through this reference, which is
    // not used after the buffer pointer is copied out.
    let irp_ref = unsafe { &*irp };
    // SAFETY: METHOD_BUFFERED: `SystemBuffer` is the valid member of AssociatedIrp.
    let buffer = unsafe { irp_ref.AssociatedIrp.SystemBuffer }.cast::<u8>();
    let status = if code != IOCTL_QOSMARK_QUERY_KERNEL_INTERFACE {
        NtStatus(wdk_sys::STATUS_INVALID_DEVICE_REQUEST)
    } else if buffer.is_null() {
        NtStatus::INVALID_PARAMETER
    } else {
        // SAFETY: for METHOD_BUFFERED the I/O manager's system buffer holds at least
        // max(InputBufferLength, OutputBufferLength) bytes, the first InputBufferLength of
        // them the caller's input; non-paged, exclusively ours during dispatch. The slice is
        // dropped before the buffer is written below.
        let input = unsafe { core::slice::from_raw_parts(buffer, in_len as usize) };
        match answer_query::<Driver>(input, out_len as usize) {
            Ok(table) => {
                // SAFETY: `answer_query` checked OutputBufferLength >= size_of::<KernelInterface>(),
                // so the system buffer has room; the write is unaligned-safe and the input
                // slice is no longer used.
                unsafe { buffer.cast::<KernelInterface>().write_unaligned(table) };
                // SAFETY: `irp` is this dispatch call's live IRP (function contract).
                unsafe { set_information(irp, core::mem::size_of::<KernelInterface>()) };
                return NtStatus::SUCCESS.0;
            }
            Err(status) => status,
        }
    };
    // SAFETY: as above.
    unsafe { set_information(irp, 0) };
    status.0
}

/// Writes `IoStatus.Information`.
///
/// # Safety
/// `irp` is the live IRP of the dispatch call that owns it and has not completed it.
unsafe fn set_information(irp: PIRP, bytes: usize) {
    // SAFETY: per the contract `irp` is valid and owned by this dispatch call; only it writes
    // the status block before completion. `Information` is a ULONG_PTR (pointer-sized).
    unsafe { (*irp).IoStatus.Information = bytes as _ };
}

/// `IoStatus.Information` for a query completed with `status`: the table's size on success,
/// else 0 (for the dispatch routine, which passes it to its completion helper).
pub(crate) fn information(status: NTSTATUS) -> usize {
    if status == NtStatus::SUCCESS.0 {
        core::mem::size_of::<KernelInterface>()
    } else {
        0
    }
}
