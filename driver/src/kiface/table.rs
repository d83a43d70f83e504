//! The function table itself: the `extern "system"` entries other drivers call, the
//! `InterfaceReference`/`InterfaceDereference` pair and the query answer.
//!
//! Everything is generic over [`Backend`], which says where the engine and the [`Lifetime`]
//! live: the driver's `glue` module implements it over `crate::globals` and a `static`;
//! the host tests implement it over a `std` mutex. So the host tests call the very functions
//! whose addresses the driver hands out, through the C ABI, with the same pointer checks.
//!
//! Per entry, in this order: `Context` must be this load's (else `STATUS_INVALID_PARAMETER`);
//! output pointers must not be null (else `STATUS_INVALID_PARAMETER`); a call reference is
//! taken (else [`STATUS_QOSMARK_UNLOADING`], or success for `CloseHandle`); input structures
//! are copied with an unaligned read; the engine lock is taken (exclusive, or shared for
//! `QueryFlow`) and [`super::entries`] does the work; the output is written with an
//! unaligned write only on success. IRQL: `<= DISPATCH_LEVEL` for every one (the backend's
//! lock is a spin lock; nothing waits; see the crate-level `abi::kernel` docs).

use core::ffi::c_void;
use core::ptr;

use qosmark_abi::kernel::{
    FlowInfo, FlowMark, FlowSpec, KernelHandle, KernelInterface, QueryInterfaceInput,
    KERNEL_INTERFACE_MAX_IRQL, KERNEL_INTERFACE_SIZE, KERNEL_INTERFACE_VERSION,
    STATUS_QOSMARK_UNLOADING,
};
use qosmark_abi::status::NtStatus;
use qosmark_engine::Engine;

use super::entries;
use super::lifetime::Lifetime;

/// Where the engine and the lifetime of one load live.
pub(crate) trait Backend: 'static {
    /// The load's lifetime; its address is the table's `Context`.
    fn lifetime() -> &'static Lifetime;
    /// Runs `f` with the engine locked exclusively; `None` if there is no engine (not started
    /// or already torn down).
    fn write<R>(f: impl FnOnce(&mut Engine) -> R) -> Option<R>;
    /// Runs `f` with the engine locked shared; `None` if there is no engine.
    fn read<R>(f: impl FnOnce(&Engine) -> R) -> Option<R>;
}

fn is_ours<B: Backend>(context: *mut c_void) -> bool {
    ptr::eq(context.cast_const().cast::<Lifetime>(), B::lifetime())
}

fn code(r: Result<(), NtStatus>) -> i32 {
    match r {
        Ok(()) => NtStatus::SUCCESS.0,
        Err(s) => s.0,
    }
}

/// `InterfaceReference`.
///
/// # Safety
/// Callable with any argument; `context` is only compared, never dereferenced.
pub(crate) unsafe extern "system" fn interface_reference<B: Backend>(context: *mut c_void) {
    if is_ours::<B>(context) {
        // Cannot fail but by overflow (2^31 references): then the count is left alone, and
        // the client's matching dereference releases one of its other references.
        let _ = B::lifetime().add_reference();
    }
}

/// `InterfaceDereference`.
///
/// # Safety
/// Callable with any argument; `context` is only compared, never dereferenced.
pub(crate) unsafe extern "system" fn interface_dereference<B: Backend>(context: *mut c_void) {
    if is_ours::<B>(context) {
        // An extra dereference (a client bug) is ignored instead of wrapping the count.
        let _ = B::lifetime().release();
    }
}

/// `OpenHandle`.
///
/// # Safety
/// `handle`, if not null, must be valid for a write of a `u64` (non-paged memory when the
/// caller runs at `DISPATCH_LEVEL`).
pub(crate) unsafe extern "system" fn open_handle<B: Backend>(
    context: *mut c_void,
    flags: u32,
    handle: *mut KernelHandle,
) -> i32 {
    if !is_ours::<B>(context) || handle.is_null() {
        return NtStatus::INVALID_PARAMETER.0;
    }
    let lifetime = B::lifetime();
    let Ok(_call) = lifetime.enter() else {
        return STATUS_QOSMARK_UNLOADING.0;
    };
    let tag = lifetime.handle_tag();
    let result =
        B::write(|e| entries::open_handle(e, tag, flags)).unwrap_or(Err(STATUS_QOSMARK_UNLOADING));
    code(result.map(|h| {
        // SAFETY: `handle` is not null and, by this function's contract, valid for writing a
        // u64; an unaligned write makes no alignment assumption. Non-paged per the contract
        // when at DISPATCH_LEVEL.
        unsafe { handle.write_unaligned(h) }
    }))
}

/// `CloseHandle`. Succeeds once unloading: the unload closes every handle.
///
/// # Safety
/// Callable with any argument.
pub(crate) unsafe extern "system" fn close_handle<B: Backend>(
    context: *mut c_void,
    handle: KernelHandle,
) -> i32 {
    if !is_ours::<B>(context) {
        return NtStatus::INVALID_PARAMETER.0;
    }
    let lifetime = B::lifetime();
    let Ok(_call) = lifetime.enter() else {
        return NtStatus::SUCCESS.0;
    };
    let tag = lifetime.handle_tag();
    code(B::write(|e| entries::close_handle(e, tag, handle)).unwrap_or(Ok(())))
}

/// `AddFlow`.
///
/// # Safety
/// `spec`, if not null, must be valid for reading a `QOSMARK_FLOW_SPEC`, and `flow_id`, if
/// not null, for writing a `u32` (non-paged memory at `DISPATCH_LEVEL`).
pub(crate) unsafe extern "system" fn add_flow<B: Backend>(
    context: *mut c_void,
    handle: KernelHandle,
    spec: *const FlowSpec,
    flow_id: *mut u32,
) -> i32 {
    if !is_ours::<B>(context) || spec.is_null() || flow_id.is_null() {
        return NtStatus::INVALID_PARAMETER.0;
    }
    let lifetime = B::lifetime();
    let Ok(_call) = lifetime.enter() else {
        return STATUS_QOSMARK_UNLOADING.0;
    };
    // SAFETY: `spec` is not null and, by this function's contract, valid for reading one
    // FlowSpec; every bit pattern is a valid FlowSpec (integers and byte arrays only), and the
    // unaligned read copies it before anything else runs.
    let spec = unsafe { spec.read_unaligned() };
    let tag = lifetime.handle_tag();
    let result = B::write(|e| entries::add_flow(e, tag, handle, &spec))
        .unwrap_or(Err(STATUS_QOSMARK_UNLOADING));
    code(result.map(|id| {
        // SAFETY: `flow_id` is not null and valid for writing a u32 by the contract.
        unsafe { flow_id.write_unaligned(id) }
    }))
}

/// `ChangeFlow`.
///
/// # Safety
/// `mark`, if not null, must be valid for reading a `QOSMARK_FLOW_MARK`.
pub(crate) unsafe extern "system" fn change_flow<B: Backend>(
    context: *mut c_void,
    handle: KernelHandle,
    flow_id: u32,
    mark: *const FlowMark,
) -> i32 {
    if !is_ours::<B>(context) || mark.is_null() {
        return NtStatus::INVALID_PARAMETER.0;
    }
    let lifetime = B::lifetime();
    let Ok(_call) = lifetime.enter() else {
        return STATUS_QOSMARK_UNLOADING.0;
    };
    // SAFETY: `mark` is not null and valid for reading one FlowMark (three u32s, any bit
    // pattern valid) by the contract; copied at once.
    let mark = unsafe { mark.read_unaligned() };
    let tag = lifetime.handle_tag();
    code(
        B::write(|e| entries::change_flow(e, tag, handle, flow_id, &mark))
            .unwrap_or(Err(STATUS_QOSMARK_UNLOADING)),
    )
}

/// `QueryFlow`.
///
/// # Safety
/// `info`, if not null, must be valid for writing a `QOSMARK_FLOW_INFO`.
pub(crate) unsafe extern "system" fn query_flow<B: Backend>(
    context: *mut c_void,
    handle: KernelHandle,
    flow_id: u32,
    info: *mut FlowInfo,
) -> i32 {
    if !is_ours::<B>(context) || info.is_null() {
        return NtStatus::INVALID_PARAMETER.0;
    }
    let lifetime = B::lifetime();
    let Ok(_call) = lifetime.enter() else {
        return STATUS_QOSMARK_UNLOADING.0;
    };
    let tag = lifetime.handle_tag();
    let result = B::read(|e| entries::query_flow(e, tag, handle, flow_id))
        .unwrap_or(Err(STATUS_QOSMARK_UNLOADING));
    code(result.map(|answer| {
        // SAFETY: `info` is not null and valid for writing one FlowInfo by the contract.
        unsafe { info.write_unaligned(answer) }
    }))
}

/// `RemoveFlow`.
///
/// # Safety
/// Callable with any argument.
pub(crate) unsafe extern "system" fn remove_flow<B: Backend>(
    context: *mut c_void,
    handle: KernelHandle,
    flow_id: u32,
) -> i32 {
    if !is_ours::<B>(context) {
        return NtStatus::INVALID_PARAMETER.0;
    }
    let lifetime = B::lifetime();
    let Ok(_call) = lifetime.enter() else {
        return STATUS_QOSMARK_UNLOADING.0;
    };
    let tag = lifetime.handle_tag();
    code(
        B::write(|e| entries::remove_flow(e, tag, handle, flow_id))
            .unwrap_or(Err(STATUS_QOSMARK_UNLOADING)),
    )
}

/// The table of this load (before the query took its reference).
pub(crate) fn table<B: Backend>() -> KernelInterface {
    KernelInterface {
        size: KERNEL_INTERFACE_SIZE,
        version: KERNEL_INTERFACE_VERSION,
        context: ptr::from_ref(B::lifetime()).cast_mut().cast::<c_void>(),
        interface_reference: Some(interface_reference::<B>),
        interface_dereference: Some(interface_dereference::<B>),
        generation: B::lifetime().generation(),
        open_handle: Some(open_handle::<B>),
        close_handle: Some(close_handle::<B>),
        add_flow: Some(add_flow::<B>),
        change_flow: Some(change_flow::<B>),
        query_flow: Some(query_flow::<B>),
        remove_flow: Some(remove_flow::<B>),
        max_irql: KERNEL_INTERFACE_MAX_IRQL,
        reserved: 0,
    }
}

/// Answers the query: checks `input` (the request's input bytes) against `output_len`, takes
/// the client's reference and returns the table to copy out. The caller copies the input out
/// of a `METHOD_BUFFERED` system buffer before writing the answer into the same buffer: this
/// function returns by value for that reason.
///
/// # Errors
/// The status to complete the request with (module docs of `qosmark_abi::kernel`); no
/// reference is held then.
pub(crate) fn answer_query<B: Backend>(
    input: &[u8],
    output_len: usize,
) -> Result<KernelInterface, NtStatus> {
    QueryInterfaceInput::check(input, output_len)
        .map_err(qosmark_abi::kernel::QueryError::status)?;
    B::lifetime()
        .try_reference()
        .map_err(|_| STATUS_QOSMARK_UNLOADING)?;
    Ok(table::<B>())
}
