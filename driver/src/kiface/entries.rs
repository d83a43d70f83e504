//! What each entry of the kernel interface does, on Rust values: the part of the glue that
//! needs no Windows API, so the host tests run exactly the code the driver runs.
//!
//! The glue (`glue.rs`) checks `Context` and the pointers, copies the caller's structure,
//! takes a [`super::lifetime::CallGuard`] and the engine lock (exclusive for changes, shared for
//! `QueryFlow`), then calls one function here and writes its result back. Every error is an
//! [`NtStatus`]: engine errors through `EngineError::win32` and
//! [`qosmark_abi::status::ntstatus_for`] — the mapping the IOCTL path uses — and malformed
//! structures as `STATUS_INVALID_PARAMETER` (what a malformed IOCTL record gets).
//!
//! Handles: the engine's [`HandleId`] in the low 32 bits, the load's tag
//! ([`super::lifetime::Lifetime::handle_tag`]) in the high 32 bits. A value whose tag is not this
//! load's, or whose id is 0, is `STATUS_INVALID_HANDLE` without asking the engine.
//!
//! Nothing here blocks; the engine allocates only for `OpenHandle` and `AddFlow`, from the
//! global allocator (non-paged pool in the driver). All of it is fine at `DISPATCH_LEVEL`.

use qosmark_abi::kernel::{FlowInfo, FlowMark, FlowSpec, KernelHandle};
use qosmark_abi::status::{ntstatus_for, NtStatus};
use qosmark_abi::{Caller, FlowId, Privilege};
use qosmark_engine::{Engine, EngineError, HandleId};

/// The caller every kernel handle is opened for: pid 0, [`Privilege::Kernel`].
pub(crate) const KERNEL_CALLER: Caller = Caller {
    pid: 0,
    privilege: Privilege::Kernel,
};

/// The status for an engine error, as the IOCTL path reports it.
pub(crate) fn status(e: EngineError) -> NtStatus {
    ntstatus_for(e.win32())
}

/// The handle value a client gets for `id` in the load tagged `tag`.
pub(crate) fn encode_handle(tag: u32, id: HandleId) -> KernelHandle {
    (u64::from(tag) << 32) | u64::from(id.0)
}

/// The engine handle of a client's value, if it belongs to the load tagged `tag`.
pub(crate) fn decode_handle(tag: u32, handle: KernelHandle) -> Result<HandleId, NtStatus> {
    let id = handle as u32;
    if (handle >> 32) as u32 != tag || id == 0 {
        return Err(NtStatus::INVALID_HANDLE);
    }
    Ok(HandleId(id))
}

/// `OpenHandle`: `flags` must be 0.
pub(crate) fn open_handle(
    engine: &mut Engine,
    tag: u32,
    flags: u32,
) -> Result<KernelHandle, NtStatus> {
    if flags != 0 {
        return Err(NtStatus::INVALID_PARAMETER);
    }
    let id = engine.open_handle(KERNEL_CALLER).map_err(status)?;
    Ok(encode_handle(tag, id))
}

/// `CloseHandle`: closes the handle and every flow it added.
pub(crate) fn close_handle(
    engine: &mut Engine,
    tag: u32,
    handle: KernelHandle,
) -> Result<(), NtStatus> {
    let id = decode_handle(tag, handle)?;
    engine.close_handle(id).map(|_| ()).map_err(status)
}

/// `AddFlow`.
pub(crate) fn add_flow(
    engine: &mut Engine,
    tag: u32,
    handle: KernelHandle,
    spec: &FlowSpec,
) -> Result<FlowId, NtStatus> {
    let id = decode_handle(tag, handle)?;
    let flow = spec.decode().map_err(|_| NtStatus::INVALID_PARAMETER)?;
    engine.add_kernel_flow(id, &flow).map_err(status)
}

/// `ChangeFlow`. An unknown flow is reported before a malformed mark, as `QOSSetFlow` does.
pub(crate) fn change_flow(
    engine: &mut Engine,
    tag: u32,
    handle: KernelHandle,
    flow_id: FlowId,
    mark: &FlowMark,
) -> Result<(), NtStatus> {
    let id = decode_handle(tag, handle)?;
    engine.query_kernel_flow(id, flow_id).map_err(status)?;
    let mark = mark.decode().map_err(|_| NtStatus::INVALID_PARAMETER)?;
    engine
        .change_kernel_flow(id, flow_id, &mark)
        .map_err(status)
}

/// `QueryFlow`.
pub(crate) fn query_flow(
    engine: &Engine,
    tag: u32,
    handle: KernelHandle,
    flow_id: FlowId,
) -> Result<FlowInfo, NtStatus> {
    let id = decode_handle(tag, handle)?;
    engine
        .query_kernel_flow(id, flow_id)
        .map(|s| s.info())
        .map_err(status)
}

/// `RemoveFlow`.
pub(crate) fn remove_flow(
    engine: &mut Engine,
    tag: u32,
    handle: KernelHandle,
    flow_id: FlowId,
) -> Result<(), NtStatus> {
    let id = decode_handle(tag, handle)?;
    engine.remove_kernel_flow(id, flow_id).map_err(status)
}
