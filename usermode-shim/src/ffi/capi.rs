//! The exported C ABI: the eleven QOS2 functions of `qos2.h` with the same names, parameter
//! order, types and values (declared in `usermode-shim/include/qosmark.h`), exported from
//! `libqosmark.so` / `qosmark.dll`.
//!
//! * Every function returns `BOOL` (`int`): `TRUE` (1) or `FALSE` (0) with the Win32 code in
//!   the calling thread's last error — `SetLastError` on Windows, the exported
//!   `QOSGetLastError()` on other systems. Success leaves the last error untouched.
//! * Handles are keys of a process-wide table, never pointers: a closed, foreign or made-up
//!   handle (`NULL`, `0xdeadbeef`) answers 6 `ERROR_INVALID_HANDLE` (Wine's Windows-validated
//!   tests, qos-api.md §5), without touching memory. On Windows the key is the `\\.\QosMark`
//!   file handle itself, so, as with qWAVE, the application may associate the QOS2 handle with
//!   its I/O completion port and pass it to `GetOverlappedResult` / `CancelIoEx`; elsewhere
//!   (and for in-process handles) it is a counter value.
//! * Checks, in order: handle (6); then the parameters this layer reads (87); then the back
//!   end's answer; then the output size.
//! * Size protocol (`QOSQueryFlow`, `QOSNotifyFlow`, `QOSEnumerateFlows`): `*Size` in = bytes
//!   available at `Buffer`; on success `*Size` = bytes written; when the answer does not fit
//!   (or `Buffer` is `NULL`) → `FALSE` + 122 `ERROR_INSUFFICIENT_BUFFER` with `*Size` = the
//!   bytes needed, nothing written.
//! * `Socket` is the descriptor (Unix, `uintptr_t`) or the Winsock `SOCKET`. For
//!   `QOSRemoveSocketFromFlow`, `Socket` = 0 means "no socket: destroy the whole flow", as in
//!   QOS2 (so descriptor 0 cannot be named there).
//! * `Overlapped`: on Windows `QOSSetFlow` / `QOSQueryFlow` / `QOSNotifyFlow` with an
//!   `OVERLAPPED` hand the caller's `Buffer` and `OVERLAPPED` to `DeviceIoControl` with
//!   `FLAG_QOS2_ANSWER` (abi codec docs) and return `FALSE` + 997 `ERROR_IO_PENDING`, or the
//!   immediate error; `QOSCancel` is `CancelIoEx`. Elsewhere an `OVERLAPPED` → `FALSE` + 50
//!   `ERROR_NOT_SUPPORTED`, and `QOSCancel` → 1168 (nothing can be pending).
//! * `QOSCreateHandle`: `Version` must be 1.0 and `QOSHandle` non-null (87). A missing back
//!   end → 1068 `ERROR_SERVICE_DEPENDENCY_FAIL`, qWAVE's code for "the QoS service could not
//!   start" (no `\\.\QosMark` device / no `qosmarkd` socket).
//!
//! The GQoS functions (`QmSetSocketQos`, `QmGetSocketQos`, `QmWaitSocketQosChange`,
//! `QmGetSocketQosHandle`) follow the same conventions; they live in `capi_gqos.rs`.
//!
//! With the cargo feature `test-hooks` (test builds only), `QmTestUseInProcessEngine(int
//! admin)` makes later `QOSCreateHandle` calls open handles on one in-process engine per
//! process, as an administrator (`admin` ≠ 0) or a user, so C tests run without a daemon.

#![allow(
    non_snake_case,
    non_camel_case_types,
    clippy::upper_case_acronyms,
    reason = "the exported names and types are qos2.h's"
)]
#![allow(
    clippy::missing_safety_doc,
    reason = "the safety contract is the QOS2 function's documented parameter contract, \
              stated once in the module docs and per pointer in each SAFETY comment"
)]

use crate::client::lock;
use crate::error::QosError;
use crate::qos2::{FlowQuery, QosHandle};
use crate::socket::RawSock;
use core::ffi::c_void;
use core::net::SocketAddr;
use qosmark_abi::status::Win32Error;
use qosmark_abi::{FlowRate, NotifyFlow, QueryFlow, SetFlow, Shaping, TrafficType};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// `BOOL`.
pub type BOOL = i32;
/// `DWORD`.
pub type DWORD = u32;
/// `ULONG` (32 bits on every qosmark platform, as on Windows).
pub type ULONG = u32;
/// `HANDLE`.
pub type HANDLE = *mut c_void;
/// `SOCKET` (`UINT_PTR` on Windows, the descriptor as `uintptr_t` elsewhere).
pub type SOCKET = usize;
/// `QOS_FLOWID`.
pub type QOS_FLOWID = u32;

const TRUE: BOOL = 1;
const FALSE: BOOL = 0;

/// `QOS_QUERYFLOW_FRESH`.
const QOS_QUERYFLOW_FRESH: DWORD = 0x0000_0001;

/// `QOS_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct QOS_VERSION {
    /// Must be 1.
    pub MajorVersion: u16,
    /// Must be 0.
    pub MinorVersion: u16,
}

#[path = "capi_gqos.rs"]
mod gqos;
pub use gqos::{
    QmGetSocketQos, QmGetSocketQosHandle, QmSetSocketQos, QmWaitSocketQosChange, FLOWSPEC, QOS,
    WSABUF,
};

// ------------------------------------------------------------------------------------------
// Last error

#[cfg(not(windows))]
std::thread_local! {
    static LAST_ERROR: core::cell::Cell<u32> = const { core::cell::Cell::new(0) };
}

fn set_last_error(code: u32) {
    #[cfg(not(windows))]
    LAST_ERROR.with(|c| c.set(code));
    #[cfg(windows)]
    // SAFETY: SetLastError only stores a value in the calling thread's TEB.
    unsafe {
        windows_sys::Win32::Foundation::SetLastError(code);
    }
}

fn fail(e: QosError) -> BOOL {
    set_last_error(e.raw());
    FALSE
}

fn fail_code(code: Win32Error) -> BOOL {
    fail(QosError::new(code))
}

/// Runs an exported function's body; when it succeeds, the calling thread's last error is
/// what it was before the call (qos-api.md §5: success leaves it untouched), although the
/// system calls made on the way (a pending `DeviceIoControl`, `getpeername` on an unconnected
/// socket, ...) may have changed it. Only Windows has such a shared last error.
fn keep_last_error_on_success(body: impl FnOnce() -> BOOL) -> BOOL {
    #[cfg(windows)]
    {
        use windows_sys::Win32::Foundation::GetLastError;
        // SAFETY: reads the calling thread's last-error value.
        let before = unsafe { GetLastError() };
        let r = body();
        if r != FALSE {
            set_last_error(before);
        }
        r
    }
    #[cfg(not(windows))]
    {
        body()
    }
}

fn done(r: crate::error::Result<()>) -> BOOL {
    match r {
        Ok(()) => TRUE,
        Err(e) => fail(e),
    }
}

/// The calling thread's last QOS2 error code (the `GetLastError()` of systems without one).
#[cfg(not(windows))]
#[no_mangle]
pub extern "system" fn QOSGetLastError() -> DWORD {
    LAST_ERROR.with(core::cell::Cell::get)
}

// ------------------------------------------------------------------------------------------
// Handle table

type HandleTable = BTreeMap<usize, Arc<QosHandle>>;

static HANDLES: Mutex<HandleTable> = Mutex::new(BTreeMap::new());
/// Handle values of handles without a device (Unix, in-process): `0x51_0000`, then every 4.
static NEXT_HANDLE: AtomicUsize = AtomicUsize::new(0x51_0000);
/// How many counter values [`insert_handle`] tries before giving up (only a wrapped counter
/// in a process with that many live handles could exhaust it).
const KEY_ATTEMPTS: usize = 16;

/// The device file handle under `h` (Windows); `None` elsewhere and for in-process handles.
fn device_of(h: &QosHandle) -> Option<usize> {
    #[cfg(windows)]
    {
        h.client().device()
    }
    #[cfg(not(windows))]
    {
        let _ = h;
        None
    }
}

/// Puts `h` in `table` and returns its QOS2 `HANDLE` value.
///
/// * With a device (Windows), the value **is** the `\\.\QosMark` file handle, as qWAVE's
///   handle is a file handle: the application may associate it with its I/O completion port
///   (`CreateIoCompletionPort`) and pass it to `GetOverlappedResult` / `CancelIoEx` for its
///   overlapped `QOSSetFlow` / `QOSQueryFlow` / `QOSNotifyFlow` (qos-api.md §1, §6).
/// * Otherwise a value from `next`, never 0 and never one in use (a value already in the table
///   is skipped, so a live handle is never replaced).
///
/// `Err(h)` (→ 1450) when no free value was found: the caller drops `h` outside the lock.
fn insert_handle(
    table: &mut HandleTable,
    next: &AtomicUsize,
    device: Option<usize>,
    h: Arc<QosHandle>,
) -> Result<usize, Arc<QosHandle>> {
    let free = |table: &HandleTable, v: usize| v != 0 && !table.contains_key(&v);
    let value = match device {
        Some(d) => Some(d).filter(|&d| free(table, d)),
        None => (0..KEY_ATTEMPTS)
            .map(|_| next.fetch_add(4, Ordering::Relaxed))
            .find(|&v| free(table, v)),
    };
    match value {
        Some(v) => {
            table.insert(v, h);
            Ok(v)
        }
        None => Err(h),
    }
}

fn lookup(h: HANDLE) -> Option<Arc<QosHandle>> {
    lock(&HANDLES).get(&(h as usize)).cloned()
}

macro_rules! handle_or_fail {
    ($h:expr) => {
        match lookup($h) {
            Some(h) => h,
            None => return fail(QosError::INVALID_HANDLE),
        }
    };
}

#[cfg(feature = "test-hooks")]
static TEST_ENGINE: Mutex<Option<(Arc<Mutex<qosmark_engine::Engine>>, bool)>> = Mutex::new(None);

/// Test hook (cargo feature `test-hooks` only): later `QOSCreateHandle` calls open handles on
/// one in-process engine shared by the process, as an administrator when `admin` ≠ 0.
#[cfg(feature = "test-hooks")]
#[no_mangle]
pub extern "system" fn QmTestUseInProcessEngine(admin: i32) {
    let mut slot = lock(&TEST_ENGINE);
    let engine = slot.take().map_or_else(
        || {
            Arc::new(Mutex::new(qosmark_engine::Engine::new(
                qosmark_engine::Limits::default(),
            )))
        },
        |(e, _)| e,
    );
    *slot = Some((engine, admin != 0));
    drop(slot);
    gqos::reset_session();
}

fn open_client() -> crate::error::Result<crate::client::Client> {
    #[cfg(feature = "test-hooks")]
    if let Some((engine, admin)) = lock(&TEST_ENGINE).clone() {
        let caller = qosmark_abi::Caller {
            pid: std::process::id(),
            privilege: if admin {
                qosmark_abi::Privilege::Admin
            } else {
                qosmark_abi::Privilege::User
            },
        };
        return crate::client::Client::in_process(engine, caller);
    }
    crate::client::Client::connect()
}

// ------------------------------------------------------------------------------------------
// Reading the caller's memory

/// Reads `*p` (a `ULONG`/`DWORD`/`QOS_FLOWID`). `None` for a null pointer.
///
/// SAFETY (caller): `p` is null or valid for reading 4 bytes, as every QOS2 `PULONG` /
/// `PQOS_FLOWID` parameter must be.
unsafe fn read_u32(p: *const u32) -> Option<u32> {
    if p.is_null() {
        None
    } else {
        // SAFETY: non-null and valid for reads per this function's contract; unaligned reads
        // are tolerated.
        Some(unsafe { p.read_unaligned() })
    }
}

/// Writes `*p = v` when `p` is not null.
///
/// SAFETY (caller): `p` is null or valid for writing 4 bytes.
unsafe fn write_u32(p: *mut u32, v: u32) {
    if !p.is_null() {
        // SAFETY: non-null and writable per this function's contract.
        unsafe { p.write_unaligned(v) }
    }
}

/// The `len` bytes at `p` (empty for `len` 0).
///
/// SAFETY (caller): `p` is valid for reading `len` bytes when `len` > 0 (the QOS2
/// `_In_reads_bytes_(Size)` contract), and not written while the slice lives.
unsafe fn bytes_in<'a>(p: *const c_void, len: usize) -> Option<&'a [u8]> {
    if p.is_null() {
        return None;
    }
    if len == 0 {
        return Some(&[]);
    }
    // SAFETY: non-null, readable for `len` bytes per this function's contract.
    Some(unsafe { core::slice::from_raw_parts(p.cast::<u8>(), len) })
}

/// Copies `data` to `p`.
///
/// SAFETY (caller): `p` is valid for writing `data.len()` bytes (checked by the caller against
/// the QOS2 `*Size`).
unsafe fn copy_out(p: *mut c_void, data: &[u8]) {
    if !data.is_empty() {
        // SAFETY: `p` is writable for `data.len()` bytes per this function's contract; `data`
        // is our own buffer, so the regions do not overlap.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), p.cast::<u8>(), data.len()) }
    }
}

/// Reads a `SOCKADDR_IN` / `SOCKADDR_IN6` (as its family says). `Ok(None)` for null, 87 for
/// an unknown family.
///
/// SAFETY (caller): `p` is null or points to a socket address whose family field says how
/// long it is (the QOS2 `PSOCKADDR` contract).
unsafe fn read_sockaddr(p: *const c_void) -> crate::error::Result<Option<SocketAddr>> {
    // SAFETY: a non-null PSOCKADDR has at least its 2-byte family field.
    let Some(head) = (unsafe { bytes_in(p, 2) }) else {
        return Ok(None);
    };
    let family = head
        .first_chunk::<2>()
        .map(|b| u16::from_ne_bytes(*b))
        .ok_or(QosError::INVALID_PARAMETER)?;
    let len = super::os::sockaddr_len(family).ok_or(QosError::INVALID_PARAMETER)?;
    // SAFETY: the family says the structure is `len` bytes long.
    let all = unsafe { bytes_in(p, len) }.ok_or(QosError::INVALID_PARAMETER)?;
    super::os::sockaddr_from_bytes(all).map(Some)
}

fn raw_socket(s: SOCKET) -> Option<RawSock> {
    RawSock::try_from(s).ok()
}

/// Applies the size protocol: `data` fits `*size` bytes at `buffer` → copied, `*size` = its
/// length, TRUE; else 122 with `*size` = the length needed.
///
/// SAFETY (caller): `size` is valid for reads and writes; `buffer` is null or writable for
/// `*size` bytes.
unsafe fn answer_sized(size: *mut ULONG, buffer: *mut c_void, data: &[u8]) -> BOOL {
    let Ok(need) = u32::try_from(data.len()) else {
        return fail_code(Win32Error::NOT_ENOUGH_MEMORY);
    };
    // SAFETY: `size` valid per this function's contract (checked non-null by the callers).
    let have = unsafe { read_u32(size) }.unwrap_or(0);
    if need > have || (buffer.is_null() && need > 0) {
        // SAFETY: as above.
        unsafe { write_u32(size, need) };
        return fail_code(Win32Error::INSUFFICIENT_BUFFER);
    }
    // SAFETY: `buffer` is writable for `have` ≥ `need` bytes per the contract.
    unsafe { copy_out(buffer, data) };
    // SAFETY: as above.
    unsafe { write_u32(size, need) };
    TRUE
}

// ------------------------------------------------------------------------------------------
// The eleven functions

/// `QOSCreateHandle`.
#[no_mangle]
pub unsafe extern "system" fn QOSCreateHandle(
    Version: *const QOS_VERSION,
    QOSHandle: *mut HANDLE,
) -> BOOL {
    keep_last_error_on_success(|| {
        if Version.is_null() || QOSHandle.is_null() {
            return fail(QosError::INVALID_PARAMETER);
        }
        // SAFETY: non-null `PQOS_VERSION` (4 bytes) per the QOS2 contract.
        let v = unsafe { Version.read_unaligned() };
        if v.MajorVersion != 1 || v.MinorVersion != 0 {
            return fail(QosError::INVALID_PARAMETER);
        }
        let handle = match open_client() {
            Ok(c) => QosHandle::with_client(c),
            Err(e) => return fail(e),
        };
        let device = device_of(&handle);
        let inserted = insert_handle(&mut lock(&HANDLES), &NEXT_HANDLE, device, Arc::new(handle));
        let value = match inserted {
            Ok(v) => v,
            Err(unused) => {
                // Closed here, outside the table lock.
                drop(unused);
                return fail_code(Win32Error::NO_SYSTEM_RESOURCES);
            }
        };
        // SAFETY: non-null `PHANDLE` per the QOS2 contract.
        unsafe { QOSHandle.write_unaligned(value as HANDLE) };
        TRUE
    })
}

/// `QOSCloseHandle`.
#[no_mangle]
pub extern "system" fn QOSCloseHandle(QOSHandle: HANDLE) -> BOOL {
    keep_last_error_on_success(|| {
        let removed = lock(&HANDLES).remove(&(QOSHandle as usize));
        // Dropped outside the table lock: the last reference closes the connection.
        match removed {
            Some(h) => {
                drop(h);
                TRUE
            }
            None => fail(QosError::INVALID_HANDLE),
        }
    })
}

/// `QOSAddSocketToFlow`.
#[no_mangle]
pub unsafe extern "system" fn QOSAddSocketToFlow(
    QOSHandle: HANDLE,
    Socket: SOCKET,
    DestAddr: *const c_void,
    TrafficType: u32,
    Flags: DWORD,
    FlowId: *mut QOS_FLOWID,
) -> BOOL {
    keep_last_error_on_success(|| {
        let h = handle_or_fail!(QOSHandle);
        // SAFETY: `PQOS_FLOWID` in/out per the QOS2 contract (null is refused).
        let Some(flow_in) = (unsafe { read_u32(FlowId) }) else {
            return fail(QosError::INVALID_PARAMETER);
        };
        let Ok(tt) = TrafficType::try_from_u32(TrafficType) else {
            return fail(QosError::INVALID_PARAMETER);
        };
        // SAFETY: `PSOCKADDR` per the QOS2 contract.
        let dest = match unsafe { read_sockaddr(DestAddr) } {
            Ok(d) => d,
            Err(e) => return fail(e),
        };
        let Some(socket) = raw_socket(Socket) else {
            return fail(QosError::INVALID_PARAMETER);
        };
        match h.add_raw_socket_to_flow(socket, dest, tt, Flags, flow_in) {
            Ok(id) => {
                // SAFETY: as above.
                unsafe { write_u32(FlowId, id) };
                TRUE
            }
            Err(e) => fail(e),
        }
    })
}

/// `QOSRemoveSocketFromFlow`.
#[no_mangle]
pub extern "system" fn QOSRemoveSocketFromFlow(
    QOSHandle: HANDLE,
    Socket: SOCKET,
    FlowId: QOS_FLOWID,
    Flags: DWORD,
) -> BOOL {
    keep_last_error_on_success(|| {
        let h = handle_or_fail!(QOSHandle);
        if Flags != 0 {
            return fail(QosError::INVALID_PARAMETER);
        }
        let socket = if Socket == 0 {
            None
        } else {
            match raw_socket(Socket) {
                Some(s) => Some(s),
                None => return fail_code(Win32Error::NOT_FOUND),
            }
        };
        done(h.remove_raw_socket_from_flow(socket, FlowId))
    })
}

/// The `QOSSetFlow` operation from its buffer; 87 for a short buffer or a bad value.
fn set_flow_op(op: u32, buf: &[u8]) -> crate::error::Result<SetFlow> {
    let bad = QosError::INVALID_PARAMETER;
    let u32_at = |o: usize| {
        buf.get(o..o + 4)
            .and_then(|b| b.first_chunk::<4>())
            .map(|b| u32::from_ne_bytes(*b))
            .ok_or(bad)
    };
    match op {
        0 => TrafficType::try_from_u32(u32_at(0)?)
            .map(SetFlow::TrafficType)
            .map_err(|_| bad),
        1 => {
            let bw = buf
                .get(0..8)
                .and_then(|b| b.first_chunk::<8>())
                .map(|b| u64::from_ne_bytes(*b))
                .ok_or(bad)?;
            let shaping = match u32_at(8)? {
                0 => Shaping::ShapeOnly,
                1 => Shaping::ShapeAndMark,
                2 => Shaping::UseNonConformantMarkings,
                _ => return Err(bad),
            };
            Ok(SetFlow::OutgoingRate(FlowRate {
                bandwidth: bw,
                shaping,
                reason: u32_at(12)?,
            }))
        }
        2 => Ok(SetFlow::OutgoingDscp(u32_at(0)?)),
        _ => Err(bad),
    }
}

/// `QOSSetFlow`.
#[no_mangle]
pub unsafe extern "system" fn QOSSetFlow(
    QOSHandle: HANDLE,
    FlowId: QOS_FLOWID,
    Operation: u32,
    Size: ULONG,
    Buffer: *const c_void,
    Flags: DWORD,
    Overlapped: *mut c_void,
) -> BOOL {
    keep_last_error_on_success(|| {
        let h = handle_or_fail!(QOSHandle);
        if Flags != 0 {
            return fail(QosError::INVALID_PARAMETER);
        }
        // SAFETY: `_In_reads_bytes_(Size) PVOID Buffer` per the QOS2 contract.
        let Some(buf) = (unsafe { bytes_in(Buffer, Size as usize) }) else {
            return fail(QosError::INVALID_PARAMETER);
        };
        let op = match set_flow_op(Operation, buf) {
            Ok(op) => op,
            Err(e) => return fail(e),
        };
        if !Overlapped.is_null() {
            return overlapped::set_flow(&h, FlowId, op, Overlapped);
        }
        done(h.set_flow(FlowId, op))
    })
}

/// `QOSQueryFlow`.
#[no_mangle]
pub unsafe extern "system" fn QOSQueryFlow(
    QOSHandle: HANDLE,
    FlowId: QOS_FLOWID,
    Operation: u32,
    Size: *mut ULONG,
    Buffer: *mut c_void,
    Flags: DWORD,
    Overlapped: *mut c_void,
) -> BOOL {
    keep_last_error_on_success(|| {
        let h = handle_or_fail!(QOSHandle);
        let op = match Operation {
            0 => QueryFlow::Fundamentals,
            1 => QueryFlow::PacketPriority,
            2 => QueryFlow::OutgoingRate,
            _ => return fail(QosError::INVALID_PARAMETER),
        };
        let fresh_ok =
            Flags == 0 || (Flags == QOS_QUERYFLOW_FRESH && op == QueryFlow::Fundamentals);
        if Size.is_null() || !fresh_ok {
            return fail(QosError::INVALID_PARAMETER);
        }
        if !Overlapped.is_null() {
            // SAFETY: `Size` / `Buffer` per the QOS2 contract, handed on unchanged.
            return unsafe { overlapped::query_flow(&h, FlowId, op, Size, Buffer, Overlapped) };
        }
        let data: Vec<u8> = match h.query_flow(FlowId, op) {
            Ok(FlowQuery::PacketPriority(p)) => [
                p.conformant_dscp,
                p.non_conformant_dscp,
                p.conformant_l2,
                p.non_conformant_l2,
            ]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect(),
            Ok(FlowQuery::OutgoingRate(r)) => r.to_ne_bytes().to_vec(),
            Err(e) => return fail(e),
        };
        // SAFETY: `_Inout_ PULONG Size`, `_Out_writes_bytes_(*Size) PVOID Buffer`.
        unsafe { answer_sized(Size, Buffer, &data) }
    })
}

/// `QOSNotifyFlow`.
#[no_mangle]
pub unsafe extern "system" fn QOSNotifyFlow(
    QOSHandle: HANDLE,
    FlowId: QOS_FLOWID,
    Operation: u32,
    Size: *mut ULONG,
    Buffer: *mut c_void,
    Flags: DWORD,
    Overlapped: *mut c_void,
) -> BOOL {
    keep_last_error_on_success(|| {
        let h = handle_or_fail!(QOSHandle);
        let op = match Operation {
            0 => NotifyFlow::Congested,
            1 => NotifyFlow::Uncongested,
            2 => NotifyFlow::Available,
            _ => return fail(QosError::INVALID_PARAMETER),
        };
        if Flags != 0 {
            return fail(QosError::INVALID_PARAMETER);
        }
        let threshold = match op {
            NotifyFlow::Available => {
                // SAFETY: `_Inout_opt_ PULONG Size` per the QOS2 contract.
                let Some(have) = (unsafe { read_u32(Size) }) else {
                    return fail(QosError::INVALID_PARAMETER);
                };
                if have < 8 || Buffer.is_null() {
                    // SAFETY: as above; `Size` is non-null here.
                    unsafe { write_u32(Size, 8) };
                    return fail_code(Win32Error::INSUFFICIENT_BUFFER);
                }
                // SAFETY: `Buffer` holds `*Size` ≥ 8 bytes (`_Inout_updates_bytes_opt_(*Size)`).
                let b = unsafe { bytes_in(Buffer, 8) };
                let Some(v) = b
                    .and_then(|b| b.first_chunk::<8>())
                    .map(|b| u64::from_ne_bytes(*b))
                else {
                    return fail(QosError::INVALID_PARAMETER);
                };
                Some(v)
            }
            NotifyFlow::Congested | NotifyFlow::Uncongested => {
                if !Buffer.is_null() {
                    return fail(QosError::INVALID_PARAMETER);
                }
                None
            }
        };
        if !Overlapped.is_null() {
            return overlapped::notify_flow(&h, FlowId, op, threshold, Overlapped);
        }
        done(h.notify_flow(FlowId, op, threshold))
    })
}

/// `QOSCancel`.
#[no_mangle]
pub extern "system" fn QOSCancel(QOSHandle: HANDLE, Overlapped: *mut c_void) -> BOOL {
    keep_last_error_on_success(|| {
        let h = handle_or_fail!(QOSHandle);
        if Overlapped.is_null() {
            return fail(QosError::INVALID_PARAMETER);
        }
        overlapped::cancel(&h, Overlapped)
    })
}

/// `QOSEnumerateFlows`.
#[no_mangle]
pub unsafe extern "system" fn QOSEnumerateFlows(
    QOSHandle: HANDLE,
    Size: *mut ULONG,
    Buffer: *mut c_void,
) -> BOOL {
    keep_last_error_on_success(|| {
        let h = handle_or_fail!(QOSHandle);
        if Size.is_null() {
            return fail(QosError::INVALID_PARAMETER);
        }
        let ids = match h.enumerate_flows() {
            Ok(ids) => ids,
            Err(e) => return fail(e),
        };
        let data: Vec<u8> = ids.iter().flat_map(|id| id.to_ne_bytes()).collect();
        // SAFETY: `_Inout_ PULONG Size`, `_Out_writes_bytes_(*Size) PVOID Buffer`.
        unsafe { answer_sized(Size, Buffer, &data) }
    })
}

/// `QOSStartTrackingClient`: accepted, nothing to do (see `qos2` module docs).
#[no_mangle]
pub unsafe extern "system" fn QOSStartTrackingClient(
    QOSHandle: HANDLE,
    DestAddr: *const c_void,
    Flags: DWORD,
) -> BOOL {
    // SAFETY: `_In_ PSOCKADDR DestAddr` per the QOS2 contract.
    unsafe { tracking(QOSHandle, DestAddr, Flags, true) }
}

/// `QOSStopTrackingClient`: accepted, nothing to do.
#[no_mangle]
pub unsafe extern "system" fn QOSStopTrackingClient(
    QOSHandle: HANDLE,
    DestAddr: *const c_void,
    Flags: DWORD,
) -> BOOL {
    // SAFETY: as for `QOSStartTrackingClient`.
    unsafe { tracking(QOSHandle, DestAddr, Flags, false) }
}

/// SAFETY (caller): `dest` is null or a valid `PSOCKADDR`.
unsafe fn tracking(handle: HANDLE, dest: *const c_void, flags: DWORD, start: bool) -> BOOL {
    keep_last_error_on_success(|| {
        let h = handle_or_fail!(handle);
        // SAFETY: per this function's contract.
        let dest = match unsafe { read_sockaddr(dest) } {
            Ok(Some(d)) => d,
            Ok(None) => return fail(QosError::INVALID_PARAMETER),
            Err(e) => return fail(e),
        };
        done(if start {
            h.start_tracking_client(dest, flags)
        } else {
            h.stop_tracking_client(dest, flags)
        })
    })
}

// ------------------------------------------------------------------------------------------
// Overlapped calls

#[cfg(not(windows))]
mod overlapped {
    //! Without Windows overlapped I/O: every `OVERLAPPED` is refused with 50, and nothing is
    //! ever pending for `QOSCancel` (1168).
    use super::{fail_code, BOOL, ULONG};
    use crate::qos2::QosHandle;
    use core::ffi::c_void;
    use qosmark_abi::status::Win32Error;
    use qosmark_abi::{FlowId, NotifyFlow, QueryFlow, SetFlow};

    pub(super) fn set_flow(_: &QosHandle, _: FlowId, _: SetFlow, _: *mut c_void) -> BOOL {
        fail_code(Win32Error::NOT_SUPPORTED)
    }

    pub(super) unsafe fn query_flow(
        _: &QosHandle,
        _: FlowId,
        _: QueryFlow,
        _: *mut ULONG,
        _: *mut c_void,
        _: *mut c_void,
    ) -> BOOL {
        fail_code(Win32Error::NOT_SUPPORTED)
    }

    pub(super) fn notify_flow(
        _: &QosHandle,
        _: FlowId,
        _: NotifyFlow,
        _: Option<u64>,
        _: *mut c_void,
    ) -> BOOL {
        fail_code(Win32Error::NOT_SUPPORTED)
    }

    pub(super) fn cancel(_: &QosHandle, _: *mut c_void) -> BOOL {
        fail_code(Win32Error::NOT_FOUND)
    }
}

#[cfg(windows)]
mod overlapped {
    //! Windows: the request goes to the device with `FLAG_QOS2_ANSWER` and the caller's
    //! `Buffer` / `OVERLAPPED`; completion reaches the caller's event or completion port with
    //! the bare QOS2 structure (abi codec docs, *QOS2 answers*). The request record is an
    //! input buffer, which `METHOD_BUFFERED` copies during the call, so it may live on our
    //! stack.
    use super::{answer_fixed_size, fail, fail_code, BOOL, ULONG};
    use crate::error::QosError;
    use crate::qos2::QosHandle;
    use core::ffi::c_void;
    use qosmark_abi::codec::{self, FLAG_QOS2_ANSWER};
    use qosmark_abi::ioctl::RequestKind;
    use qosmark_abi::status::Win32Error;
    use qosmark_abi::{FlowId, NotifyFlow, QueryFlow, Request, SetFlow};

    /// SAFETY (caller): `out` is null or writable for `out_len` bytes, and it and
    /// `overlapped` stay valid until the operation completes (the QOS2 overlapped contract).
    unsafe fn issue(
        h: &QosHandle,
        request: &Request,
        out: *mut c_void,
        out_len: u32,
        overlapped: *mut c_void,
    ) -> BOOL {
        let Some(device) = h.client().device() else {
            return fail_code(Win32Error::NOT_SUPPORTED);
        };
        let mut input = Vec::new();
        if let Err(e) = codec::encode_request_with_flags(request, FLAG_QOS2_ANSWER, &mut input) {
            return fail(QosError::from(e));
        }
        let code = RequestKind::of(request).code();
        // SAFETY: per this function's contract.
        match unsafe {
            crate::ffi::os::ioctl_overlapped(device, code, &input, out, out_len, overlapped)
        } {
            Ok(()) => 1,
            Err(e) => fail_code(Win32Error(e)),
        }
    }

    pub(super) fn set_flow(h: &QosHandle, flow_id: FlowId, op: SetFlow, ov: *mut c_void) -> BOOL {
        // SAFETY: no output buffer; `ov` is the caller's OVERLAPPED.
        unsafe {
            issue(
                h,
                &Request::SetFlow { flow_id, op },
                core::ptr::null_mut(),
                0,
                ov,
            )
        }
    }

    pub(super) unsafe fn query_flow(
        h: &QosHandle,
        flow_id: FlowId,
        op: QueryFlow,
        size: *mut ULONG,
        buffer: *mut c_void,
        ov: *mut c_void,
    ) -> BOOL {
        let need = match op {
            QueryFlow::PacketPriority => 16,
            QueryFlow::OutgoingRate => 8,
            QueryFlow::Fundamentals => 40,
        };
        // SAFETY: `size` non-null (checked by the caller), `buffer` per the QOS2 contract.
        let Some(len) = (unsafe { answer_fixed_size(size, buffer, need) }) else {
            return 0;
        };
        // SAFETY: `buffer` is writable for `len` bytes until completion (QOS2 contract).
        unsafe { issue(h, &Request::QueryFlow { flow_id, op }, buffer, len, ov) }
    }

    pub(super) fn notify_flow(
        h: &QosHandle,
        flow_id: FlowId,
        op: NotifyFlow,
        threshold: Option<u64>,
        ov: *mut c_void,
    ) -> BOOL {
        let r = Request::NotifyFlow {
            flow_id,
            op,
            threshold,
        };
        // SAFETY: no output buffer; `ov` is the caller's OVERLAPPED.
        unsafe { issue(h, &r, core::ptr::null_mut(), 0, ov) }
    }

    pub(super) fn cancel(h: &QosHandle, ov: *mut c_void) -> BOOL {
        let Some(device) = h.client().device() else {
            return fail_code(Win32Error::NOT_FOUND);
        };
        match crate::ffi::os::cancel_io(device, ov) {
            Ok(()) => 1,
            Err(e) => fail_code(Win32Error(e)),
        }
    }
}

/// Checks `*size` against a fixed answer size before an overlapped call: too small → 122
/// with `*size` = `need` and `None`; else `*size` = `need` and `Some(need)`.
///
/// SAFETY (caller): `size` is valid for reads and writes.
#[cfg(windows)]
unsafe fn answer_fixed_size(size: *mut ULONG, buffer: *mut c_void, need: u32) -> Option<u32> {
    // SAFETY: per this function's contract.
    let have = unsafe { read_u32(size) }.unwrap_or(0);
    // SAFETY: as above.
    unsafe { write_u32(size, need) };
    if have < need || buffer.is_null() {
        fail_code(Win32Error::INSUFFICIENT_BUFFER);
        None
    } else {
        Some(need)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code: a failure is a test failure")]
    use super::*;
    use qosmark_abi::{Caller, Privilege};
    use qosmark_engine::{Engine, Limits};

    fn a_handle() -> Arc<QosHandle> {
        let engine = Arc::new(Mutex::new(Engine::new(Limits::default())));
        let caller = Caller {
            pid: 1,
            privilege: Privilege::User,
        };
        Arc::new(QosHandle::with_client(
            crate::client::Client::in_process(engine, caller).unwrap(),
        ))
    }

    #[test]
    fn a_device_handle_is_its_own_qos2_handle() {
        let mut table = HandleTable::new();
        let next = AtomicUsize::new(0x100);
        assert_eq!(
            insert_handle(&mut table, &next, Some(0x2c4), a_handle()).ok(),
            Some(0x2c4)
        );
        // The counter is not used for device handles.
        assert_eq!(next.load(Ordering::Relaxed), 0x100);
        // A value already in the table is never replaced.
        assert!(insert_handle(&mut table, &next, Some(0x2c4), a_handle()).is_err());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn counter_values_skip_zero_and_values_in_use() {
        let mut table = HandleTable::new();
        let next = AtomicUsize::new(0x2c4);
        assert!(insert_handle(&mut table, &next, Some(0x2c8), a_handle()).is_ok());
        assert_eq!(
            insert_handle(&mut table, &next, None, a_handle()).ok(),
            Some(0x2c4)
        );
        // 0x2c8 is taken by the device handle: skipped.
        assert_eq!(
            insert_handle(&mut table, &next, None, a_handle()).ok(),
            Some(0x2cc)
        );
        // A wrapped counter never hands out 0 (NULL).
        let wrapped = AtomicUsize::new(usize::MAX - 3);
        let v = insert_handle(&mut table, &wrapped, None, a_handle()).unwrap();
        assert_eq!(v, usize::MAX - 3);
        let v = insert_handle(&mut table, &wrapped, None, a_handle()).unwrap();
        assert_eq!(v, 4, "0 skipped after the wrap");
        assert_eq!(table.len(), 5);
    }

    /// The calling thread's last error, as a C program reads it.
    fn last_error() -> u32 {
        #[cfg(windows)]
        {
            // SAFETY: reads the calling thread's last-error value.
            unsafe { windows_sys::Win32::Foundation::GetLastError() }
        }
        #[cfg(not(windows))]
        {
            QOSGetLastError()
        }
    }

    #[test]
    fn last_error_is_per_thread_and_handles_are_shared_safely() {
        let threads: Vec<_> = (0..8u32)
            .map(|i| {
                std::thread::spawn(move || {
                    // Even threads fail with 6, odd ones with 87, interleaved.
                    let mine = if i % 2 == 0 { 6 } else { 87 };
                    for _ in 0..100 {
                        let key =
                            insert_handle(&mut lock(&HANDLES), &NEXT_HANDLE, None, a_handle())
                                .unwrap();
                        let h = key as HANDLE;
                        if mine == 6 {
                            assert_eq!(QOSCloseHandle(core::ptr::null_mut()), FALSE);
                        } else {
                            // SAFETY: null pointers are refused before use.
                            let r = unsafe {
                                QOSCreateHandle(core::ptr::null(), core::ptr::null_mut())
                            };
                            assert_eq!(r, FALSE);
                        }
                        std::thread::yield_now();
                        assert_eq!(last_error(), mine);
                        // A success leaves this thread's code alone.
                        let mut size: ULONG = 0;
                        // SAFETY: `size` is a live ULONG; a NULL buffer with no flows is fine.
                        let r =
                            unsafe { QOSEnumerateFlows(h, &raw mut size, core::ptr::null_mut()) };
                        assert_eq!((r, size), (TRUE, 0));
                        assert_eq!(last_error(), mine);
                        assert_eq!(QOSCloseHandle(h), TRUE);
                        assert_eq!(QOSCloseHandle(h), FALSE);
                        assert_eq!(last_error(), 6);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
