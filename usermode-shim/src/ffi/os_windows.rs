//! Windows system calls: Winsock socket facts, the `\\.\QosMark` device (`CreateFileW`,
//! `DeviceIoControl`, `CancelIoEx`).
//!
//! Synchronous IOCTLs use a private `OVERLAPPED` whose `hEvent` has its low-order bit set: the
//! handle is opened with `FILE_FLAG_OVERLAPPED` and an application may associate it with its
//! own I/O completion port, and the low bit tells the I/O manager not to queue a completion
//! packet for this operation (abi codec docs, *I/O completion ports*), so the application
//! never dequeues a packet for an `OVERLAPPED` it does not own.

use super::{SocketFacts, SocketIdentity};
use crate::error::{QosError, Result};
use core::ffi::c_void;
use core::mem::size_of;
use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use qosmark_abi::{Family, Protocol};
use std::os::windows::io::RawSocket;
use windows_sys::Win32::Foundation::{
    CloseHandle, GetLastError, ERROR_IO_PENDING, GENERIC_READ, GENERIC_WRITE, HANDLE,
    INVALID_HANDLE_VALUE, STATUS_PENDING, WAIT_OBJECT_0,
};
use windows_sys::Win32::Networking::WinSock::{
    getpeername, getsockname, getsockopt, WSAGetLastError, AF_INET, AF_INET6, SOCKADDR,
    SOCKADDR_STORAGE, SOCK_DGRAM, SOCK_STREAM, SOL_SOCKET, SO_PROTOCOL_INFOW, SO_TYPE, WSAEINVAL,
    WSAENOTCONN, WSAENOTSOCK, WSAPROTOCOL_INFOW,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_FLAG_OVERLAPPED, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING,
};
use windows_sys::Win32::System::Threading::{CreateEventW, Sleep, WaitForSingleObject, INFINITE};
use windows_sys::Win32::System::IO::{
    CancelIoEx, DeviceIoControl, GetOverlappedResult, OVERLAPPED,
};

fn last_error() -> u32 {
    // SAFETY: reads the calling thread's last-error value.
    unsafe { GetLastError() }
}

fn wsa_error() -> i32 {
    // SAFETY: reads the calling thread's Winsock error.
    unsafe { WSAGetLastError() }
}

/// A `SOCKADDR_STORAGE` as bytes, parsed field by field.
fn storage_addr(storage: &SOCKADDR_STORAGE, len: i32) -> Option<SocketAddr> {
    let len = usize::try_from(len)
        .ok()?
        .min(size_of::<SOCKADDR_STORAGE>());
    let raw = core::ptr::from_ref(storage).cast::<u8>();
    // SAFETY: `storage` is a live SOCKADDR_STORAGE; `len` is clamped to its size.
    let bytes = unsafe { core::slice::from_raw_parts(raw, len) };
    sockaddr_from_bytes(bytes).ok()
}

type NameFn = unsafe extern "system" fn(usize, *mut SOCKADDR, *mut i32) -> i32;

fn name_of(s: RawSocket, f: NameFn) -> core::result::Result<Option<SocketAddr>, i32> {
    let mut storage = SOCKADDR_STORAGE::default();
    let mut len = i32::try_from(size_of::<SOCKADDR_STORAGE>()).unwrap_or(i32::MAX);
    let socket = usize::try_from(s).map_err(|_| WSAEINVAL)?;
    // SAFETY: `storage` is writable for `len` bytes and `len` is a valid in/out length.
    let rc = unsafe {
        f(
            socket,
            core::ptr::from_mut(&mut storage).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(wsa_error());
    }
    Ok(storage_addr(&storage, len))
}

/// Family, protocol, local address (`None` when not bound yet: `WSAEINVAL`) and connected
/// peer of a Winsock socket. Not an `AF_INET` / `AF_INET6` TCP or UDP socket → 87.
pub(crate) fn socket_facts(s: RawSocket) -> Result<SocketFacts> {
    let bad = QosError::INVALID_PARAMETER;
    let socket = usize::try_from(s).map_err(|_| bad)?;
    let mut info = WSAPROTOCOL_INFOW::default();
    let mut len = i32::try_from(size_of::<WSAPROTOCOL_INFOW>()).unwrap_or(i32::MAX);
    // SAFETY: `info` is writable for `len` bytes.
    let rc = unsafe {
        getsockopt(
            socket,
            SOL_SOCKET,
            SO_PROTOCOL_INFOW,
            core::ptr::from_mut(&mut info).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(bad);
    }
    let family = match u16::try_from(info.iAddressFamily) {
        Ok(AF_INET) => Family::V4,
        Ok(AF_INET6) => Family::V6,
        _ => return Err(bad),
    };
    let protocol = match (info.iSocketType, info.iProtocol) {
        (SOCK_STREAM, 0 | 6) => Protocol::Tcp,
        (SOCK_DGRAM, 0 | 17) => Protocol::Udp,
        _ => return Err(bad),
    };
    let local = match name_of(s, getsockname) {
        Ok(a) => a,
        Err(WSAEINVAL) => None,
        Err(_) => return Err(bad),
    };
    let peer = match name_of(s, getpeername) {
        Ok(a) => a,
        Err(WSAENOTCONN) => None,
        Err(_) => return Err(bad),
    };
    Ok(SocketFacts {
        family,
        protocol,
        local,
        peer,
    })
}

/// Which socket `s` is now (`SocketIdentity`): Winsock gives a socket no identity beyond its
/// value, so an open socket is `Open` and a value `getsockopt` calls `WSAENOTSOCK` (closed)
/// is `Closed`. A value closed and handed out again for another socket is not detected.
pub(crate) fn socket_identity(s: RawSocket) -> SocketIdentity {
    let Ok(socket) = usize::try_from(s) else {
        return SocketIdentity::Closed;
    };
    let mut kind: i32 = 0;
    let mut len = i32::try_from(size_of::<i32>()).unwrap_or(i32::MAX);
    // SAFETY: `kind` is a writable i32 and `len` its size; any SOCKET value may be passed:
    // Winsock validates it and fails with WSAENOTSOCK for one that is not a socket.
    let rc = unsafe {
        getsockopt(
            socket,
            SOL_SOCKET,
            SO_TYPE,
            (&raw mut kind).cast(),
            &raw mut len,
        )
    };
    if rc != 0 && wsa_error() == WSAENOTSOCK {
        SocketIdentity::Closed
    } else {
        SocketIdentity::Open
    }
}

/// Size of `SOCKADDR_IN` / `SOCKADDR_IN6` for `family`.
pub(crate) fn sockaddr_len(family: u16) -> Option<usize> {
    match family {
        AF_INET => Some(16),
        AF_INET6 => Some(28),
        _ => None,
    }
}

/// Reads a `SOCKADDR_IN` / `SOCKADDR_IN6` from its bytes (port and flow info in network
/// order, scope id in host order); 87 for another family or a short buffer.
pub(crate) fn sockaddr_from_bytes(b: &[u8]) -> Result<SocketAddr> {
    let parse = || -> Option<SocketAddr> {
        let family = u16::from_ne_bytes(*b.first_chunk::<2>()?);
        let port = u16::from_be_bytes(*b.get(2..4)?.first_chunk::<2>()?);
        match family {
            AF_INET => {
                let a: [u8; 4] = *b.get(4..8)?.first_chunk::<4>()?;
                Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), port)))
            }
            AF_INET6 => {
                let flow = u32::from_be_bytes(*b.get(4..8)?.first_chunk::<4>()?);
                let a: [u8; 16] = *b.get(8..24)?.first_chunk::<16>()?;
                let scope = u32::from_ne_bytes(*b.get(24..28)?.first_chunk::<4>()?);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a),
                    port,
                    flow,
                    scope,
                )))
            }
            _ => None,
        }
    };
    parse().ok_or(QosError::INVALID_PARAMETER)
}

/// Opens `path` (the device) for read and write with `FILE_FLAG_OVERLAPPED`; returns the
/// `HANDLE` value or the Win32 error.
pub(crate) fn open_device(path: &str) -> core::result::Result<usize, u32> {
    let wide: Vec<u16> = path.encode_utf16().chain(core::iter::once(0)).collect();
    // SAFETY: `wide` is a NUL-terminated UTF-16 string that outlives the call; the other
    // pointers are null, which CreateFileW accepts.
    let h = unsafe {
        CreateFileW(
            wide.as_ptr(),
            GENERIC_READ | GENERIC_WRITE,
            FILE_SHARE_READ | FILE_SHARE_WRITE,
            core::ptr::null(),
            OPEN_EXISTING,
            FILE_FLAG_OVERLAPPED,
            core::ptr::null_mut(),
        )
    };
    if h == INVALID_HANDLE_VALUE || h.is_null() {
        Err(last_error())
    } else {
        Ok(h as usize)
    }
}

/// Closes a handle returned by [`open_device`].
pub(crate) fn close(handle: usize) {
    // SAFETY: `handle` came from `open_device` and is closed exactly once (by its owner's
    // `Drop`).
    unsafe {
        CloseHandle(handle as HANDLE);
    }
}

/// `STATUS_PENDING` (0x103) as `OVERLAPPED::Internal` holds it.
const PENDING: usize = STATUS_PENDING.unsigned_abs() as usize;

/// The outcome of a synchronous IOCTL.
pub(crate) struct IoctlResult {
    /// Bytes written to the output buffer.
    pub(crate) bytes: u32,
    /// `ERROR_MORE_DATA`: the output holds an Error record with the required size.
    pub(crate) more_data: bool,
}

/// `DeviceIoControl` with a private event-backed `OVERLAPPED` (low bit set: no completion
/// packet), waiting for completion.
pub(crate) fn ioctl_sync(
    device: usize,
    code: u32,
    input: &[u8],
    output: &mut [u8],
) -> core::result::Result<IoctlResult, u32> {
    let in_len = u32::try_from(input.len()).map_err(|_| 87u32)?;
    let out_len = u32::try_from(output.len()).map_err(|_| 87u32)?;
    // SAFETY: no security attributes, manual reset, not signalled, unnamed.
    let event = unsafe { CreateEventW(core::ptr::null(), 1, 0, core::ptr::null()) };
    if event.is_null() {
        return Err(last_error());
    }
    let mut ov = OVERLAPPED {
        hEvent: (event as usize | 1) as HANDLE,
        ..OVERLAPPED::default()
    };
    let mut bytes = 0u32;
    // SAFETY: the buffers are valid for their lengths and, with `ov` and `event`, outlive the
    // operation: we wait for completion below before returning.
    let ok = unsafe {
        DeviceIoControl(
            device as HANDLE,
            code,
            input.as_ptr().cast(),
            in_len,
            output.as_mut_ptr().cast(),
            out_len,
            &raw mut bytes,
            &raw mut ov,
        )
    };
    let mut result = if ok != 0 { Ok(()) } else { Err(last_error()) };
    if result == Err(ERROR_IO_PENDING) {
        // SAFETY: `event` is our event handle.
        let waited = unsafe { WaitForSingleObject(event, INFINITE) };
        if waited != WAIT_OBJECT_0 {
            // Cannot happen with our own event; but `input`, `output` and `ov` must not be
            // freed under a pending operation, so fall back to polling `Internal` until it is
            // no longer STATUS_PENDING (the documented `HasOverlappedIoCompleted` test).
            // SAFETY: `ov` is live; the kernel writes `Internal` at completion, hence the
            // volatile read.
            while unsafe { core::ptr::read_volatile(&raw const ov.Internal) } == PENDING {
                // SAFETY: plain sleep.
                unsafe { Sleep(1) };
            }
        }
        result = Ok(());
    }
    if result.is_ok() || result == Err(234) {
        // SAFETY: the operation has completed (event signalled or synchronous completion);
        // `ov` is the OVERLAPPED it used.
        let done =
            unsafe { GetOverlappedResult(device as HANDLE, &raw const ov, &raw mut bytes, 0) };
        result = if done != 0 { Ok(()) } else { Err(last_error()) };
    }
    // SAFETY: our own event, no longer used by the completed operation.
    unsafe { CloseHandle(event) };
    match result {
        Ok(()) => Ok(IoctlResult {
            bytes,
            more_data: false,
        }),
        Err(234) => Ok(IoctlResult {
            bytes,
            more_data: true,
        }),
        Err(e) => Err(e),
    }
}

/// `DeviceIoControl` with the caller's buffer and `OVERLAPPED`: `Ok` when it completed at
/// once, else the error (997 `ERROR_IO_PENDING` for a pending operation).
///
/// SAFETY (caller): `out` is null or writable for `out_len` bytes, and `out` and `overlapped`
/// stay valid until the operation completes.
pub(crate) unsafe fn ioctl_overlapped(
    device: usize,
    code: u32,
    input: &[u8],
    out: *mut c_void,
    out_len: u32,
    overlapped: *mut c_void,
) -> core::result::Result<(), u32> {
    let in_len = u32::try_from(input.len()).map_err(|_| 87u32)?;
    // SAFETY: `input` is copied by the I/O manager during the call (METHOD_BUFFERED); `out`
    // and `overlapped` per this function's contract.
    let ok = unsafe {
        DeviceIoControl(
            device as HANDLE,
            code,
            input.as_ptr().cast(),
            in_len,
            out,
            out_len,
            core::ptr::null_mut(),
            overlapped.cast::<OVERLAPPED>(),
        )
    };
    if ok != 0 {
        Ok(())
    } else {
        Err(last_error())
    }
}

/// `CancelIoEx(device, overlapped)`.
pub(crate) fn cancel_io(device: usize, overlapped: *mut c_void) -> core::result::Result<(), u32> {
    // SAFETY: CancelIoEx only compares the pointer with pending operations of the handle.
    let ok = unsafe { CancelIoEx(device as HANDLE, overlapped.cast::<OVERLAPPED>()) };
    if ok != 0 {
        Ok(())
    } else {
        Err(last_error())
    }
}
