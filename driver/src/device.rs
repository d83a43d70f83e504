//! The control device `\Device\QosMark` (+ `\DosDevices\QosMark`) and its dispatch routines.
//!
//! # Device
//!
//! Created with `WdmlibIoCreateDeviceSecure` (`FILE_DEVICE_NETWORK`, `FILE_DEVICE_SECURE_OPEN`,
//! not exclusive) and the SDDL [`SDDL`]:
//!
//! ```text
//! D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GRGW;;;AU)
//! ```
//!
//! a protected DACL (`P`: no inherited ACEs) granting `GENERIC_ALL` to LocalSystem and
//! BUILTIN\Administrators and `GENERIC_READ | GENERIC_WRITE` to Authenticated Users — any
//! logged-on user may open the device and send the IOCTLs (each code requires
//! `FILE_READ_ACCESS` or `FILE_WRITE_ACCESS`, both granted), while *what* a user may do is
//! decided per request by the engine from the caller captured at create time. Anonymous
//! logons and Everyone-without-authentication get nothing. `FILE_DEVICE_SECURE_OPEN` makes
//! the I/O manager apply the same DACL to opens of `\Device\QosMark\anything`; the create
//! routine additionally refuses any open with a file name. The class GUID [`CLASS_GUID`] is
//! our own (not a setup class): `WdmlibIoCreateDeviceSecure` looks up an administrator
//! override of the security descriptor under that GUID in the registry, so it must identify
//! this device type alone.
//!
//! # Dispatch routines (in the requester's thread: this is the only driver of its stack;
//! `PASSIVE_LEVEL` for the requests user mode sends, see the last row for the kernel one)
//!
//! | major function | what |
//! |---|---|
//! | `IRP_MJ_CREATE` | capture pid (`IoGetRequestorProcessId`) and privilege (token groups, `security` module); open an engine handle; its id goes into `FileObject->FsContext` |
//! | `IRP_MJ_CLEANUP` | close the engine handle (every flow of the file object goes), complete the file object's queued IRPs with `STATUS_CANCELLED` |
//! | `IRP_MJ_CLOSE` | nothing left to free: success |
//! | `IRP_MJ_DEVICE_CONTROL` | `request::decode` → engine (exclusive lock) → `request::encode`; configuration changes are written to the registry afterwards |
//! | `IRP_MJ_INTERNAL_DEVICE_CONTROL` | kernel senders only: the kernel-interface query (`crate::kiface::query_interface`); `<= DISPATCH_LEVEL` (a sender may build the IRP with `IoAllocateIrp`), which the query handler allows (no wait, no paged memory) |
//!
//! Every other major function is left at the I/O manager's default
//! (`STATUS_INVALID_DEVICE_REQUEST`).

#![allow(
    clippy::doc_markdown,
    reason = "Windows names (LocalSystem, DRIVER_OBJECT, PASSIVE_LEVEL) in prose"
)]

use alloc::vec::Vec;

use wdk_sys::ntddk::{
    ExFreePoolWithTag, IoCreateSymbolicLink, IoDeleteDevice, IoDeleteSymbolicLink,
    IoGetRequestorProcessId, RtlLengthSid, SeQueryInformationToken,
};
use wdk_sys::{
    FILE_DEVICE_NETWORK, FILE_DEVICE_SECURE_OPEN, GUID, NTSTATUS, PACCESS_TOKEN, PDEVICE_OBJECT,
    PDRIVER_OBJECT, PIRP, PTOKEN_GROUPS, PVOID, SID_AND_ATTRIBUTES, UNICODE_STRING,
};

use qosmark_abi::ioctl::{DOS_DEVICE_NAME, NT_DEVICE_NAME};
use qosmark_abi::status::NtStatus;
use qosmark_abi::{Caller, Privilege};
use qosmark_engine::HandleId;

use crate::ffi::wdmsec::WdmlibIoCreateDeviceSecure;
use crate::globals::{self, Globals};
use crate::{config, irp, request, security};

/// The device's default security descriptor (module docs).
pub(crate) const SDDL: &str = "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GRGW;;;AU)";

/// Device class GUID of the qosmark control device, {6B0F8E6C-2C1F-4C55-9B7E-51D3A1C0F7A2}:
/// generated for this project, used for nothing else.
pub(crate) const CLASS_GUID: GUID = GUID {
    Data1: 0x6B0F_8E6C,
    Data2: 0x2C1F,
    Data3: 0x4C55,
    Data4: [0x9B, 0x7E, 0x51, 0xD3, 0xA1, 0xC0, 0xF7, 0xA2],
};

/// `STATUS_OBJECT_NAME_NOT_FOUND` (ntstatus.h): an open of a name below the device.
const STATUS_OBJECT_NAME_NOT_FOUND: NtStatus =
    NtStatus(i32::from_ne_bytes(0xC000_0034_u32.to_ne_bytes()));

/// UTF-16 of an ASCII constant followed by a NUL, fallibly allocated. The NUL is not part of
/// the counted string ([`counted`]); it is there because `WdmlibIoCreateDeviceSecure`
/// documents its `DeviceName` as a null-terminated string, as `RtlInitUnicodeString` over a
/// literal would give.
fn wide(text: &str) -> Result<Vec<u16>, NTSTATUS> {
    let mut out = Vec::new();
    out.try_reserve_exact(text.len() + 1)
        .map_err(|_| NtStatus::INSUFFICIENT_RESOURCES.0)?;
    out.extend(text.encode_utf16());
    out.push(0);
    Ok(out)
}

/// A counted string over `units` made by [`wide`]: `Length` excludes the final NUL,
/// `MaximumLength` includes it (read-only use by the callee).
fn counted(units: &[u16]) -> Result<UNICODE_STRING, NTSTATUS> {
    let text = units
        .len()
        .checked_sub(1)
        .ok_or(NtStatus::INVALID_PARAMETER.0)?;
    let length = u16::try_from(text * 2).map_err(|_| NtStatus::INVALID_PARAMETER.0)?;
    let maximum = u16::try_from(units.len() * 2).map_err(|_| NtStatus::INVALID_PARAMETER.0)?;
    Ok(UNICODE_STRING {
        Length: length,
        MaximumLength: maximum,
        Buffer: units.as_ptr().cast_mut(),
    })
}

/// The control device and its symbolic link; `Drop` deletes the link, then the device
/// (`PASSIVE_LEVEL`, `DriverUnload` or a failed `DriverEntry`).
pub(crate) struct ControlDevice {
    device: PDEVICE_OBJECT,
    link: Vec<u16>,
    linked: bool,
}

impl ControlDevice {
    /// Creates the device and the link. `PASSIVE_LEVEL`.
    ///
    /// # Errors
    /// The status of `WdmlibIoCreateDeviceSecure` or `IoCreateSymbolicLink` (the device is
    /// deleted again in the second case).
    ///
    /// # Safety
    ///
    /// `driver` is this driver's DRIVER_OBJECT, during `DriverEntry`, with the dispatch table
    /// already filled in.
    pub(crate) unsafe fn create(driver: PDRIVER_OBJECT) -> Result<Self, NTSTATUS> {
        let name = wide(NT_DEVICE_NAME)?;
        let sddl = wide(SDDL)?;
        let link = wide(DOS_DEVICE_NAME)?;
        let mut name_string = counted(&name)?;
        let sddl_string = counted(&sddl)?;
        let class_guid = CLASS_GUID;
        let mut device: PDEVICE_OBJECT = core::ptr::null_mut();
        // SAFETY: PASSIVE_LEVEL in DriverEntry (contract); every pointer refers to a local
        // that outlives the call (the routine copies the name and SDDL); no device extension;
        // not exclusive (several processes may hold handles).
        let status = unsafe {
            WdmlibIoCreateDeviceSecure(
                driver,
                0,
                &raw mut name_string,
                FILE_DEVICE_NETWORK,
                FILE_DEVICE_SECURE_OPEN,
                0,
                &raw const sddl_string,
                &raw const class_guid,
                &raw mut device,
            )
        };
        NtStatus(status).to_result().map_err(|e| e.0)?;
        let mut owned = ControlDevice {
            device,
            link,
            linked: false,
        };
        let mut link_string = counted(&owned.link)?;
        // SAFETY: PASSIVE_LEVEL; both strings are valid counted strings for the call.
        let status = unsafe { IoCreateSymbolicLink(&raw mut link_string, &raw mut name_string) };
        NtStatus(status).to_result().map_err(|e| e.0)?;
        owned.linked = true;
        // DO_DEVICE_INITIALIZING stays set: for a device created in DriverEntry the I/O manager
        // clears it when DriverEntry returns successfully, so no open can reach the device
        // while the rest of DriverEntry (WFP start) may still fail and delete it again.
        Ok(owned)
    }

    /// The device object (for `FwpsCalloutRegister*`).
    pub(crate) fn as_ptr(&self) -> PDEVICE_OBJECT {
        self.device
    }
}

impl Drop for ControlDevice {
    fn drop(&mut self) {
        if self.linked {
            if let Ok(mut link) = counted(&self.link) {
                // SAFETY: PASSIVE_LEVEL; the link was created by `create` and is deleted once.
                let _status = unsafe { IoDeleteSymbolicLink(&raw mut link) };
            }
        }
        // SAFETY: PASSIVE_LEVEL; the device was created by `create` and is deleted once. On a
        // failed DriverEntry it was never openable (DO_DEVICE_INITIALIZING still set); in
        // DriverUnload any file object still open keeps the object alive until its last
        // close, and the dispatch routines reach driver state only under rundown protection
        // (`globals::enter`).
        unsafe { IoDeleteDevice(self.device) };
    }
}

/// Installs the dispatch routines.
///
/// # Safety
/// `driver` is this driver's DRIVER_OBJECT during `DriverEntry` (no other thread touches it).
pub(crate) unsafe fn install_dispatch(driver: PDRIVER_OBJECT) {
    // SAFETY: per the contract a unique reborrow of the driver object is sound here.
    let driver = unsafe { &mut *driver };
    let table: [(u32, wdk_sys::PDRIVER_DISPATCH); 5] = [
        (wdk_sys::IRP_MJ_CREATE, Some(dispatch_create)),
        (wdk_sys::IRP_MJ_CLEANUP, Some(dispatch_cleanup)),
        (wdk_sys::IRP_MJ_CLOSE, Some(dispatch_close)),
        (
            wdk_sys::IRP_MJ_DEVICE_CONTROL,
            Some(dispatch_device_control),
        ),
        (
            wdk_sys::IRP_MJ_INTERNAL_DEVICE_CONTROL,
            Some(dispatch_internal_device_control),
        ),
    ];
    for (major, routine) in table {
        if let Some(slot) = driver.MajorFunction.get_mut(major as usize) {
            *slot = routine;
        }
    }
}

/// Completes `irp` and returns its status, as a dispatch routine does.
///
/// # Safety
/// As [`irp::complete`].
unsafe fn finish(irp: PIRP, status: NtStatus, information: usize) -> NTSTATUS {
    // SAFETY: forwarded.
    unsafe { irp::complete(irp, status.0, information) };
    status.0
}

/// The engine handle stored in a file object (0 = none).
fn handle_of(fs_context: PVOID) -> Option<HandleId> {
    let id = u32::try_from(fs_context as usize).ok()?;
    (id != 0).then_some(HandleId(id))
}

/// `IRP_MJ_CREATE`.
unsafe extern "C" fn dispatch_create(_device: PDEVICE_OBJECT, irp: PIRP) -> NTSTATUS {
    // SAFETY: the I/O manager hands a live IRP to this dispatch routine (PASSIVE_LEVEL).
    let stack = unsafe { irp::current_stack_location(irp) };
    // SAFETY: the stack location of the live IRP; FileObject is set for IRP_MJ_CREATE.
    let file_object = unsafe { (*stack).FileObject };
    if file_object.is_null() {
        // SAFETY: we own the IRP and complete it once.
        return unsafe { finish(irp, NtStatus::INVALID_PARAMETER, 0) };
    }
    // SAFETY: a create's file object is valid for the duration of the request.
    if unsafe { (*file_object).FileName.Length } != 0 {
        // `\\.\QosMark\something`: the device has no namespace.
        // SAFETY: PASSIVE_LEVEL dispatch routine that owns the IRP; it is completed once, here.
        return unsafe { finish(irp, STATUS_OBJECT_NAME_NOT_FOUND, 0) };
    }
    let Some(globals) = globals::enter() else {
        // SAFETY: PASSIVE_LEVEL dispatch routine that owns the IRP; it is completed once, here.
        return unsafe { finish(irp, NtStatus::DEVICE_NOT_READY, 0) };
    };
    // SAFETY: live IRP at PASSIVE_LEVEL; the routine reads the requesting thread's process.
    let pid = unsafe { IoGetRequestorProcessId(irp) };
    // SAFETY: the stack location of a create IRP carries its security context.
    let privilege = unsafe { caller_privilege(stack) };
    let caller = Caller { pid, privilege };
    let opened = globals.engine.write().open_handle(caller);
    match opened {
        Ok(handle) => {
            // SAFETY: this driver owns FsContext of its own device's file objects; a u32 id
            // stored as a pointer-sized integer, never dereferenced.
            unsafe { (*file_object).FsContext = handle.0 as usize as PVOID };
            // SAFETY: PASSIVE_LEVEL dispatch routine that owns the IRP; it is completed once, here.
            unsafe { finish(irp, NtStatus::SUCCESS, 0) }
        }
        // SAFETY: PASSIVE_LEVEL dispatch routine that owns the IRP; it is completed once, here.
        Err(error) => unsafe { finish(irp, request::status_for_open_error(error), 0) },
    }
}

/// The requester's privilege from the create request's subject security context.
///
/// Token: the client (impersonation) token if the opener impersonates, else its primary token
/// — `SeQuerySubjectContextToken`, a macro in ntifs.h, written out; a client token below
/// `SecurityImpersonation` level is not used (`security::effective_token_usable`). Groups:
/// `SeQueryInformationToken(TokenGroups)` (buffer from paged pool, freed with `ExFreePool`;
/// PASSIVE_LEVEL). Any failure gives `Privilege::User` (the safe side).
///
/// # Safety
/// `stack` is the current stack location of a live `IRP_MJ_CREATE`, at `PASSIVE_LEVEL`.
unsafe fn caller_privilege(stack: wdk_sys::PIO_STACK_LOCATION) -> Privilege {
    // SAFETY: per the contract `stack` is the valid current stack location.
    let stack = unsafe { &*stack };
    // SAFETY: for IRP_MJ_CREATE the Create member of the parameters union is the valid one.
    let context = unsafe { stack.Parameters.Create.SecurityContext };
    if context.is_null() {
        return Privilege::User;
    }
    // SAFETY: a non-null IO_SECURITY_CONTEXT of a create in progress is valid.
    let access_state = unsafe { (*context).AccessState };
    if access_state.is_null() {
        return Privilege::User;
    }
    // SAFETY: the ACCESS_STATE of a create in progress is valid; its subject context was
    // captured by the I/O manager for this open and stays valid for the request.
    let subject = unsafe { &raw mut (*access_state).SubjectSecurityContext };
    // SAFETY: as above; reading the two token pointers the ntifs.h macro reads.
    let client: PACCESS_TOKEN = unsafe { (*subject).ClientToken };
    // SAFETY: as above.
    let primary: PACCESS_TOKEN = unsafe { (*subject).PrimaryToken };
    // SAFETY: as above; the level the client token was captured at (meaningful only when
    // `client` is not null).
    let level = unsafe { (*subject).ImpersonationLevel };
    // An anonymous or identification-level client token is not used for the decision
    // (SeQuerySubjectContextToken's documentation): a user.
    if !security::effective_token_usable(!client.is_null(), level) {
        return Privilege::User;
    }
    // SeQuerySubjectContextToken (a macro in ntifs.h): the client token if any, else the
    // primary token.
    let token = if client.is_null() { primary } else { client };
    if token.is_null() {
        return Privilege::User;
    }
    let mut info: PVOID = core::ptr::null_mut();
    // SAFETY: PASSIVE_LEVEL; `token` is referenced by the subject context for the request;
    // on success `info` receives a paged-pool TOKEN_GROUPS that we free below.
    let status = unsafe {
        SeQueryInformationToken(
            token,
            wdk_sys::_TOKEN_INFORMATION_CLASS::TokenGroups,
            &raw mut info,
        )
    };
    if !NtStatus(status).is_success() || info.is_null() {
        return Privilege::User;
    }
    let groups: PTOKEN_GROUPS = info.cast();
    // SAFETY: a TOKEN_GROUPS returned by the routine: GroupCount entries follow in the
    // variable-length Groups array, all inside the returned buffer.
    let count = unsafe { (*groups).GroupCount } as usize;
    // SAFETY: as above; `Groups` is declared with one element, the buffer holds `count`.
    let first: *const SID_AND_ATTRIBUTES = unsafe { (&raw const (*groups).Groups).cast() };
    let mut admin = false;
    for i in 0..count {
        // SAFETY: `i < count`, inside the array described above.
        let entry = unsafe { first.add(i) };
        // SAFETY: as above: a valid, initialised SID_AND_ATTRIBUTES.
        let group = unsafe { &*entry };
        if group.Sid.is_null() {
            continue;
        }
        // SAFETY: a valid SID of the token's group list.
        let len = unsafe { RtlLengthSid(group.Sid) } as usize;
        // SAFETY: RtlLengthSid gives the SID's exact length; the SID lives in the same
        // buffer, which outlives this slice (freed after the loop).
        let sid = unsafe { core::slice::from_raw_parts(group.Sid.cast::<u8>(), len) };
        if security::is_privileged_group(sid, group.Attributes) {
            admin = true;
            break;
        }
    }
    // SAFETY: the buffer came from SeQueryInformationToken, which documents ExFreePool (=
    // ExFreePoolWithTag with tag 0, the function form used here); no
    // pointer into it survives this point.
    unsafe { ExFreePoolWithTag(info, 0) };
    if admin {
        Privilege::Admin
    } else {
        Privilege::User
    }
}

/// `IRP_MJ_CLEANUP`: the last handle to the file object was closed.
unsafe extern "C" fn dispatch_cleanup(_device: PDEVICE_OBJECT, irp: PIRP) -> NTSTATUS {
    // SAFETY: live IRP at PASSIVE_LEVEL.
    let stack = unsafe { irp::current_stack_location(irp) };
    // SAFETY: the stack location of the live IRP.
    let file_object = unsafe { (*stack).FileObject };
    if let (Some(globals), false) = (globals::enter(), file_object.is_null()) {
        // SAFETY: our file object; FsContext holds the id stored by dispatch_create or null.
        let handle = handle_of(unsafe { (*file_object).FsContext });
        {
            // Under the engine lock, as `recheck_held` judges held watches: a watch of this
            // file object is either judged before the handle closes or cancelled here.
            let mut engine = globals.engine.write();
            if let Some(handle) = handle {
                // Every flow of the handle goes with it; the report is diagnostics only. A
                // handle the engine does not know (impossible unless state was lost) is not an
                // error for cleanup.
                let _report = engine.close_handle(handle);
                // SAFETY: as above; the id is not used again.
                unsafe { (*file_object).FsContext = core::ptr::null_mut() };
            }
            // Held watches of this handle: STATUS_CANCELLED (995). Lock order engine → queue.
            globals.pending.cancel_file(file_object);
        }
        // Shaping: the handle's flows are gone; their held packets leave at once (the release
        // timer sends them; no lock is held here).
        crate::wfp::release_dead_shapers();
        // Watches of other handles on this handle's flows (same process) see them end.
        recheck_held(&globals);
    }
    // SAFETY: we own the IRP and complete it once.
    unsafe { finish(irp, NtStatus::SUCCESS, 0) }
}

/// `IRP_MJ_CLOSE`: the file object is going away; cleanup already released everything.
unsafe extern "C" fn dispatch_close(_device: PDEVICE_OBJECT, irp: PIRP) -> NTSTATUS {
    // SAFETY: live IRP at PASSIVE_LEVEL, completed once.
    unsafe { finish(irp, NtStatus::SUCCESS, 0) }
}

/// `IRP_MJ_INTERNAL_DEVICE_CONTROL`: only kernel-mode senders can issue it (user mode's
/// `DeviceIoControl` always sends `IRP_MJ_DEVICE_CONTROL`). The one code served is the
/// kernel-interface query (`crate::kiface`); every other code gets
/// `STATUS_INVALID_DEVICE_REQUEST`. Runs in the client's thread: at `<= APC_LEVEL` when the
/// client used `IoBuildDeviceIoControlRequest` (which requires that), at up to
/// `DISPATCH_LEVEL` when it built the IRP itself (`IoAllocateIrp` + `IoCallDriver`); nothing
/// below waits or touches paged memory.
unsafe extern "C" fn dispatch_internal_device_control(
    _device: PDEVICE_OBJECT,
    irp: PIRP,
) -> NTSTATUS {
    // SAFETY: the live IRP of this dispatch call.
    let stack = unsafe { irp::current_stack_location(irp) };
    // SAFETY: `irp` is the live IRP of this dispatch call and `stack` its current stack
    // location, as `kiface::query_interface` requires; neither is used by anyone else until
    // the IRP is completed below.
    let status = unsafe { crate::kiface::query_interface(irp, stack) };
    // SAFETY: we own the IRP and complete it once.
    unsafe { finish(irp, NtStatus(status), crate::kiface::information(status)) }
}

/// `IRP_MJ_DEVICE_CONTROL` (`METHOD_BUFFERED` only: `request::decode` refuses every other
/// code, including every code with another transfer method).
unsafe extern "C" fn dispatch_device_control(_device: PDEVICE_OBJECT, irp: PIRP) -> NTSTATUS {
    // SAFETY: live IRP at PASSIVE_LEVEL.
    let stack = unsafe { irp::current_stack_location(irp) };
    // SAFETY: the current stack location of the live IRP.
    let stack_ref = unsafe { &*stack };
    // SAFETY: for IRP_MJ_DEVICE_CONTROL the DeviceIoControl parameters are the valid member.
    let params = unsafe { stack_ref.Parameters.DeviceIoControl };
    let code = params.IoControlCode;
    let in_len = params.InputBufferLength as usize;
    let out_len = params.OutputBufferLength;
    // SAFETY: the stack location of the live IRP.
    let file_object = unsafe { (*stack).FileObject };
    // Only METHOD_BUFFERED codes of ours get past this line, so AssociatedIrp.SystemBuffer
    // below really is the system buffer (for METHOD_NEITHER it would not be).
    if qosmark_abi::ioctl::request_kind(code).is_none() {
        // SAFETY: we own the IRP and complete it once.
        return unsafe { finish(irp, NtStatus::INVALID_DEVICE_REQUEST, 0) };
    }
    let Some(globals) = globals::enter() else {
        // SAFETY: we own the IRP and complete it once.
        return unsafe { finish(irp, NtStatus::DEVICE_NOT_READY, 0) };
    };
    let handle = if file_object.is_null() {
        None
    } else {
        // SAFETY: our file object; FsContext was set by dispatch_create.
        handle_of(unsafe { (*file_object).FsContext })
    };
    let Some(handle) = handle else {
        // SAFETY: PASSIVE_LEVEL dispatch routine that owns the IRP; it is completed once, here.
        return unsafe { finish(irp, NtStatus::INVALID_HANDLE, 0) };
    };
    // SAFETY: the live IRP, owned by this dispatch routine.
    let irp_ref = unsafe { &*irp };
    // SAFETY: METHOD_BUFFERED: the SystemBuffer member of the union is the valid one, a
    // non-paged system buffer of max(InputBufferLength, OutputBufferLength) bytes, or null
    // when both are 0.
    let system_buffer: *mut u8 = unsafe { irp_ref.AssociatedIrp.SystemBuffer }.cast();
    let input: &[u8] = if in_len == 0 || system_buffer.is_null() {
        &[]
    } else {
        // SAFETY: `in_len` bytes of the system buffer hold the caller's input (copied in by
        // the I/O manager); the slice is dropped before the buffer is written (the decoded
        // request is an owned value).
        unsafe { core::slice::from_raw_parts(system_buffer, in_len) }
    };
    // request::decode matches the code again (all 32 bits) and decodes the record.
    let decoded = match request::decode(code, input, out_len) {
        Ok(decoded) => decoded,
        // SAFETY: PASSIVE_LEVEL dispatch routine that owns the IRP; it is completed once, here.
        // Error completions carry no data.
        Err(completion) => return unsafe { finish(irp, completion.status, 0) },
    };
    // Every decoded request is charged to the handle's request rate first (1450 when spent;
    // nothing changes). Time: the unbiased interrupt time, in ns.
    // SAFETY: KeQueryUnbiasedInterruptTime takes nothing, only reads the interrupt-time count
    // and is callable at any IRQL (its reference page; PASSIVE here); exported by ntoskrnl.
    let now_ns = unsafe { crate::ffi::KeQueryUnbiasedInterruptTime() }.saturating_mul(100);
    if let Err(completion) = request::charge(&mut globals.engine.write(), handle, now_ns) {
        // SAFETY: PASSIVE_LEVEL dispatch routine that owns the IRP; it is completed once, here.
        // Error completions carry no data.
        return unsafe { finish(irp, completion.status, 0) };
    }
    let outcome = if request::changes_configuration(decoded.kind) {
        request::Outcome::Complete(run_and_persist(&globals, handle, &decoded, out_len))
    } else {
        let result = request::execute(&mut globals.engine.write(), handle, &decoded);
        request::finish(&decoded, &result, out_len)
    };
    // Shaping: a request may have removed a flow, a rule or a rate; the held packets of every
    // shaper that went with it leave at once (the release timer sends them; cheap when
    // nothing is held; no lock is held here).
    crate::wfp::release_dead_shapers();
    let completion = match outcome {
        request::Outcome::Complete(completion) => completion,
        request::Outcome::Hold => {
            // SAFETY: the live IRP of this PASSIVE_LEVEL dispatch routine, not completed; from
            // here on the queue owns it and this routine does not touch it again.
            unsafe { globals.pending.pend(irp) };
            // A change made between `execute` above and the queueing is not missed: every
            // held watch, this one included, is judged again now.
            recheck_held(&globals);
            return NtStatus::PENDING.0;
        }
    };
    // Held watches are judged again after every request that may have changed a flow.
    let changed = decoded.kind.is_mutation() && completion.status == NtStatus::SUCCESS;
    let count = completion.bytes.len();
    if count > out_len as usize || (count > 0 && system_buffer.is_null()) {
        // Cannot happen (request::encode never exceeds the capacity; a non-zero capacity
        // means a system buffer exists); fail the request rather than overrun.
        // SAFETY: PASSIVE_LEVEL dispatch routine that owns the IRP; it is completed once, here.
        return unsafe { finish(irp, NtStatus::UNSUCCESSFUL, 0) };
    }
    if count > 0 {
        // SAFETY: the system buffer has at least OutputBufferLength >= count bytes; the
        // source is our own vector; the regions do not overlap.
        unsafe {
            core::ptr::copy_nonoverlapping(completion.bytes.as_ptr(), system_buffer, count);
        }
    }
    // SAFETY: PASSIVE_LEVEL dispatch routine that owns the IRP; it is completed once, here.
    // Information = bytes copied back (<= OutputBufferLength).
    let status = unsafe { finish(irp, completion.status, count) };
    if changed {
        recheck_held(&globals);
    }
    status
}

/// What a queued `WatchFlow` IRP says about itself: its control code, input record, output
/// capacity, system buffer and engine handle (`None` once its file object was cleaned up).
struct Held<'a> {
    code: u32,
    input: &'a [u8],
    out_len: u32,
    system_buffer: *mut u8,
    handle: Option<HandleId>,
}

/// Reads a queued (or just removed) `WatchFlow` IRP.
///
/// # Safety
/// `irp` is a live IRP this driver queued from `dispatch_device_control` (METHOD_BUFFERED,
/// one of our codes, its system buffer still holding the input record: nothing is written to
/// it before completion) and not completed; the result is used only while that holds.
unsafe fn held<'a>(irp: PIRP) -> Held<'a> {
    // SAFETY: per the contract, a live IRP of ours.
    let stack = unsafe { irp::current_stack_location(irp) };
    // SAFETY: its current stack location is valid while we own it.
    let stack = unsafe { &*stack };
    // SAFETY: IRP_MJ_DEVICE_CONTROL: the DeviceIoControl parameters are the valid member.
    let params = unsafe { stack.Parameters.DeviceIoControl };
    let file_object = stack.FileObject;
    let handle = if file_object.is_null() {
        None
    } else {
        // SAFETY: our file object; FsContext is the engine handle id, or null after cleanup
        // (written under the engine lock, which the callers of this function hold).
        handle_of(unsafe { (*file_object).FsContext })
    };
    // SAFETY: a live IRP of ours (contract).
    let irp_ref = unsafe { &*irp };
    // SAFETY: METHOD_BUFFERED (contract): SystemBuffer is the valid union member.
    let system_buffer: *mut u8 = unsafe { irp_ref.AssociatedIrp.SystemBuffer }.cast();
    let in_len = params.InputBufferLength as usize;
    let input: &[u8] = if in_len == 0 || system_buffer.is_null() {
        &[]
    } else {
        // SAFETY: the first InputBufferLength bytes of the system buffer are the input record,
        // untouched since dispatch (contract).
        unsafe { core::slice::from_raw_parts(system_buffer, in_len) }
    };
    Held {
        code: params.IoControlCode,
        input,
        out_len: params.OutputBufferLength,
        system_buffer,
        handle,
    }
}

/// Judges every held `WatchFlow` again (`request::recheck`) and completes those whose flow
/// changed (or whose handle closed). `IRQL <= DISPATCH_LEVEL`: called at `PASSIVE_LEVEL` after
/// control requests and at up to `DISPATCH_LEVEL` from `flowDeleteFn` when a TCP socket's
/// connection ended (`wfp::callouts::flow_delete`). Everything it does is allowed there: spin
/// locks (engine, cancel-safe queue), allocation from non-paged pool (`wdk-alloc` uses
/// `ExAllocatePool2(POOL_FLAG_NON_PAGED)`), copies into METHOD_BUFFERED system buffers
/// (non-paged), and `IoCompleteRequest` (`IRQL <= DISPATCH_LEVEL`, its reference page).
///
/// Under the engine lock: `PendingQueue::remove_first_where` shows each queued IRP to a
/// predicate (queue spin lock held, `DISPATCH_LEVEL`; `request::recheck` there reads the IRP's
/// input and runs the engine's `WatchFlow`, which never waits and allocates at most the small
/// answer record, from non-paged pool, allowed at `DISPATCH_LEVEL`) that selects
/// one that should complete; it is taken out, its completion computed, and the search starts
/// again, until no queued IRP is selected. IRPs that keep waiting never leave the queue, so
/// cancellation stays the CSQ's. The selected IRPs are completed after the lock is released.
/// A completion list that cannot grow (no memory) ends the round early: the rest are judged
/// at the next change.
pub(crate) fn recheck_held(globals: &Globals) {
    /// A selected IRP with its completion, its system buffer and its output capacity.
    type Done = (PIRP, request::Completion, *mut u8, u32);
    let mut done: Vec<Done> = Vec::new();
    {
        let mut engine = globals.engine.write();
        while done.try_reserve(1).is_ok() {
            let mut accept = |irp: PIRP| {
                // SAFETY: the queue shows only live IRPs it holds, all queued by
                // dispatch_device_control as WatchFlow holds (`Outcome::Hold`).
                let h = unsafe { held(irp) };
                request::recheck(&mut engine, h.handle, h.code, h.input, h.out_len).is_some()
            };
            let Some(irp) = globals.pending.remove_first_where(&mut accept) else {
                break;
            };
            // SAFETY: just removed from the queue: a live IRP of ours, not completed.
            let h = unsafe { held(irp) };
            let completion = request::recheck(&mut engine, h.handle, h.code, h.input, h.out_len)
                // Selected a moment ago under the same engine lock; the state cannot have
                // gone back. Should it, a spurious notification is harmless (FD_QOS).
                .unwrap_or_else(|| request::Completion::status_only(NtStatus::SUCCESS));
            // Reserved above: cannot fail.
            done.push((irp, completion, h.system_buffer, h.out_len));
        }
    }
    for (irp, completion, system_buffer, out_len) in done {
        let count = completion.bytes.len();
        let fits = count <= out_len as usize && (count == 0 || !system_buffer.is_null());
        let (status, count) = if fits {
            if count > 0 {
                // SAFETY: the IRP was removed from the queue above and is ours until completed
                // below; its system buffer holds at least OutputBufferLength >= count bytes;
                // nothing reads its input any more; our vector is the source.
                unsafe {
                    core::ptr::copy_nonoverlapping(completion.bytes.as_ptr(), system_buffer, count);
                }
            }
            (completion.status, count)
        } else {
            (NtStatus::UNSUCCESSFUL, 0)
        };
        // SAFETY: ours, completed once, here; Information <= OutputBufferLength.
        unsafe { irp::complete(irp, status.0, count) };
    }
}

/// A configuration-changing request: under the configuration mutex (PASSIVE_LEVEL), apply it
/// under the engine lock, snapshot the configuration under the same lock hold, release the
/// lock, then write the registry. Lock order: configuration mutex → engine lock.
fn run_and_persist(
    globals: &Globals,
    handle: HandleId,
    decoded: &request::Decoded,
    out_len: u32,
) -> request::Completion {
    let key = globals.config.lock();
    let (result, snapshot) = {
        let mut engine = globals.engine.write();
        let result = request::execute(&mut engine, handle, decoded);
        let snapshot = result.is_ok().then(|| config::snapshot(&mut engine));
        (result, snapshot)
    };
    match snapshot {
        Some(Ok(snapshot)) => {
            let rules = key.write(config::RULES_VALUE, &snapshot.rules);
            let table = key.write(config::TRAFFIC_TABLE_VALUE, &snapshot.table);
            if let (Err(status), _) | (_, Err(status)) = (rules, table) {
                // The change is live; only its persistence failed. Report, don't undo.
                wdk::println!("qosmark: writing Parameters failed: {status:#x}");
            }
        }
        Some(Err(error)) => {
            wdk::println!("qosmark: configuration snapshot failed: {error:?}");
        }
        None => {}
    }
    drop(key);
    request::encode(&result, decoded.qos2_answer, out_len)
}
