//! The GQoS C ABI (`include/qosmark.h`, section "GQoS"): `QmSetSocketQos`,
//! `QmGetSocketQos`, `QmWaitSocketQosChange`, `QmGetSocketQosHandle`, on one hidden QOS2
//! handle per process ([`crate::gqos::GqosSession`], semantics and codes in the `gqos` module
//! docs).
//!
//! * Same conventions as the QOS2 functions (parent module): `BOOL` + the calling thread's
//!   last error (`GetLastError()` / `QOSGetLastError()`), success leaves it untouched.
//! * The hidden handle opens at the first `QmSetSocketQos` (1068 when no back end runs; the
//!   next call tries again) and lives as long as the process: closing the process closes it,
//!   and every flow it made ends. `QmGetSocketQos` on a process that never set QoS answers
//!   from memory (`SERVICETYPE_NOTRAFFIC`) without opening it.
//! * `ProviderSpecific` is read as one contiguous buffer of `len` bytes; a `QOS_DESTADDR`'s
//!   `SocketAddress` is read for `SocketAddressLength` bytes (at least the size its family
//!   needs).
//! * `QmGetSocketQos` writes one contiguous answer: the `QOS` structure, then one
//!   `RSVP_STATUS_INFO` right behind it, which `ProviderSpecific.buf` points to. A `size`
//!   below that total → `FALSE` + `WSAENOBUFS` (10055) with the total written as a `ULONG`
//!   at the start of the buffer (when `size` ≥ 4) and in `*needed` (when not `NULL`), as
//!   GQoS did.
//! * `QmWaitSocketQosChange(s, NULL)` blocks until the socket's QoS state changes, on a second
//!   connection of the process (module docs of `gqos`). With an `OVERLAPPED` (Windows only,
//!   else 50): the request goes to the hidden handle with the caller's `OVERLAPPED` and
//!   completes through its event, or through the completion port the application associated
//!   with `QmGetSocketQosHandle()`, with 0 bytes (read the new state with `QmGetSocketQos`).
//!   The driver holds it in its cancel-safe queue until the flow changes (`driver/src/
//!   request.rs`, `recheck`; not yet run on Windows).

use super::{
    bytes_in, fail, fail_code, keep_last_error_on_success, open_client, raw_socket, BOOL, DWORD,
    HANDLE, SOCKET, TRUE, ULONG,
};
use crate::client::lock;
use crate::error::QosError;
use crate::gqos::{
    self, Flowspec, GqosSession, ProviderObject, Qos, QosReport, RawObject, RSVP_STATUS_INFO_LEN,
    SERVICETYPE_NOTRAFFIC, WSAENOBUFS, WSA_QOS_BAD_OBJECT, WSA_QOS_EPROVSPECBUF,
};
use core::ffi::c_void;
use qosmark_abi::status::Win32Error;
use std::sync::{Arc, Mutex};

/// `FLOWSPEC` (`qos.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FLOWSPEC {
    /// Bytes/s.
    pub TokenRate: ULONG,
    /// Bytes.
    pub TokenBucketSize: ULONG,
    /// Bytes/s.
    pub PeakBandwidth: ULONG,
    /// µs.
    pub Latency: ULONG,
    /// µs.
    pub DelayVariation: ULONG,
    /// `SERVICETYPE_*`.
    pub ServiceType: ULONG,
    /// Bytes.
    pub MaxSduSize: ULONG,
    /// Bytes.
    pub MinimumPolicedSize: ULONG,
}

impl From<FLOWSPEC> for Flowspec {
    fn from(f: FLOWSPEC) -> Flowspec {
        Flowspec {
            token_rate: f.TokenRate,
            token_bucket_size: f.TokenBucketSize,
            peak_bandwidth: f.PeakBandwidth,
            latency: f.Latency,
            delay_variation: f.DelayVariation,
            service_type: f.ServiceType,
            max_sdu_size: f.MaxSduSize,
            minimum_policed_size: f.MinimumPolicedSize,
        }
    }
}

impl From<Flowspec> for FLOWSPEC {
    fn from(f: Flowspec) -> FLOWSPEC {
        FLOWSPEC {
            TokenRate: f.token_rate,
            TokenBucketSize: f.token_bucket_size,
            PeakBandwidth: f.peak_bandwidth,
            Latency: f.latency,
            DelayVariation: f.delay_variation,
            ServiceType: f.service_type,
            MaxSduSize: f.max_sdu_size,
            MinimumPolicedSize: f.minimum_policed_size,
        }
    }
}

/// `WSABUF` (`winsock2.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WSABUF {
    /// Bytes at `buf`.
    pub len: ULONG,
    /// The bytes.
    pub buf: *mut u8,
}

/// `QOS` (`winsock2.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct QOS {
    /// Sending direction.
    pub SendingFlowspec: FLOWSPEC,
    /// Receiving direction.
    pub ReceivingFlowspec: FLOWSPEC,
    /// Provider-specific objects.
    pub ProviderSpecific: WSABUF,
}

/// Bytes `QmGetSocketQos` needs: the `QOS` and one `RSVP_STATUS_INFO`.
const ANSWER_LEN: usize = size_of::<QOS>() + RSVP_STATUS_INFO_LEN;

static SESSION: Mutex<Option<Arc<GqosSession>>> = Mutex::new(None);

/// The process's session, opened if needed.
fn session() -> crate::error::Result<Arc<GqosSession>> {
    let mut slot = lock(&SESSION);
    if let Some(s) = slot.as_ref() {
        return Ok(Arc::clone(s));
    }
    let s = Arc::new(GqosSession::with_client(
        open_client()?,
        Box::new(open_client),
    ));
    *slot = Some(Arc::clone(&s));
    Ok(s)
}

/// The process's session if one is open.
fn existing_session() -> Option<Arc<GqosSession>> {
    lock(&SESSION).clone()
}

/// Forgets the session (test hook: the next call opens one on the engine now selected).
#[cfg(feature = "test-hooks")]
pub(super) fn reset_session() {
    let old = lock(&SESSION).take();
    drop(old);
}

/// Reads the caller's `QOS` into a [`Qos`], following `QOS_DESTADDR` pointers.
///
/// SAFETY (caller): `qos` points to a readable `QOS` whose `ProviderSpecific` is `len`
/// readable bytes at `buf` (or `len` 0), and each `QOS_DESTADDR.SocketAddress` is readable
/// for `SocketAddressLength` bytes.
unsafe fn read_qos(qos: *const QOS) -> crate::error::Result<Qos> {
    // SAFETY: per this function's contract.
    let q = unsafe { qos.read_unaligned() };
    let ps = q.ProviderSpecific;
    // SAFETY: `len` readable bytes at `buf` per the contract.
    let bytes = match unsafe { bytes_in(ps.buf.cast_const().cast(), ps.len as usize) } {
        Some(b) => b,
        None if ps.len == 0 => &[],
        None => return Err(QosError::new(Win32Error(WSA_QOS_EPROVSPECBUF))),
    };
    let raw = gqos::parse_provider_specific(bytes, size_of::<usize>())?;
    let mut objects = Vec::new();
    objects
        .try_reserve_exact(raw.len())
        .map_err(|_| QosError::NO_MEMORY)?;
    for r in raw {
        objects.push(match r {
            RawObject::Object(o) => o,
            // SAFETY: per this function's contract.
            RawObject::DestAddr { address, length } => unsafe { read_destaddr(address, length) }?,
        });
    }
    Ok(Qos {
        sending: q.SendingFlowspec.into(),
        receiving: q.ReceivingFlowspec.into(),
        objects,
    })
}

/// `QOS_DESTADDR`'s socket address: non-null, `length` at least the size of its family's
/// structure; else `WSA_QOS_BAD_OBJECT`.
///
/// SAFETY (caller): `address` is readable for `length` bytes when non-null.
unsafe fn read_destaddr(address: u64, length: u32) -> crate::error::Result<ProviderObject> {
    let bad = QosError::new(Win32Error(WSA_QOS_BAD_OBJECT));
    let p = usize::try_from(address).map_err(|_| bad)? as *const c_void;
    // SAFETY: `length` readable bytes per this function's contract (null → None).
    let bytes = unsafe { bytes_in(p, length as usize) }.ok_or(bad)?;
    let family = bytes
        .first_chunk::<2>()
        .map(|b| u16::from_ne_bytes(*b))
        .ok_or(bad)?;
    let need = super::super::os::sockaddr_len(family).ok_or(bad)?;
    let exact = bytes.get(..need).ok_or(bad)?;
    super::super::os::sockaddr_from_bytes(exact)
        .map(ProviderObject::DestAddr)
        .map_err(|_| bad)
}

/// `QmSetSocketQos`.
#[no_mangle]
pub unsafe extern "system" fn QmSetSocketQos(Socket: SOCKET, Qos: *const QOS) -> BOOL {
    keep_last_error_on_success(|| {
        if Qos.is_null() {
            return fail(QosError::INVALID_PARAMETER);
        }
        let Some(raw) = raw_socket(Socket) else {
            return fail(QosError::INVALID_PARAMETER);
        };
        // SAFETY: a non-null `const QOS *` per the documented contract.
        let qos = match unsafe { read_qos(Qos) } {
            Ok(q) => q,
            Err(e) => return fail(e),
        };
        // Checked before any back end is needed: a bad QOS is refused even without one.
        if let Err(e) = gqos::plan(&qos) {
            return fail(e);
        }
        let s = match session() {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        match s.set_raw(raw, &qos) {
            Ok(()) => TRUE,
            Err(e) => fail(e),
        }
    })
}

/// Writes `value` as a `ULONG` at `p`.
///
/// SAFETY (caller): `p` is writable for 4 bytes.
unsafe fn put_u32(p: *mut u8, value: u32) {
    // SAFETY: per this function's contract; unaligned writes are fine.
    unsafe { p.cast::<u32>().write_unaligned(value) }
}

/// `QmGetSocketQos`.
#[no_mangle]
pub unsafe extern "system" fn QmGetSocketQos(
    Socket: SOCKET,
    Qos: *mut QOS,
    Size: DWORD,
    Needed: *mut DWORD,
) -> BOOL {
    keep_last_error_on_success(|| {
        let Some(raw) = raw_socket(Socket) else {
            return fail(QosError::INVALID_PARAMETER);
        };
        let need = u32::try_from(ANSWER_LEN).unwrap_or(u32::MAX);
        if !Needed.is_null() {
            // SAFETY: a non-null `DWORD *` per the documented contract.
            unsafe { Needed.write_unaligned(need) };
        }
        if Qos.is_null() || Size < need {
            if !Qos.is_null() && Size >= 4 {
                // SAFETY: `Size` ≥ 4 writable bytes at `Qos` per the contract.
                unsafe { put_u32(Qos.cast(), need) };
            }
            return fail_code(Win32Error(WSAENOBUFS));
        }
        let report = match existing_session() {
            Some(s) => match s.get(raw) {
                Ok(r) => r,
                Err(e) => return fail(e),
            },
            None => QosReport {
                sending: Flowspec::unspecified(SERVICETYPE_NOTRAFFIC),
                receiving: Flowspec::unspecified(gqos::SERVICETYPE_NOCHANGE),
                status_code: gqos::WSA_QOS_NO_RECEIVERS,
                dscp: 0,
                pcp: 0,
            },
        };
        // SAFETY: `Size` ≥ ANSWER_LEN writable bytes at `Qos` (checked above).
        unsafe { write_report(Qos, &report) };
        TRUE
    })
}

/// Writes the answer of `QmGetSocketQos` (module docs).
///
/// SAFETY (caller): `out` is writable for [`ANSWER_LEN`] bytes.
unsafe fn write_report(out: *mut QOS, r: &QosReport) {
    let base = out.cast::<u8>();
    // SAFETY: ANSWER_LEN = size_of::<QOS>() + RSVP_STATUS_INFO_LEN bytes are writable.
    let status = unsafe { base.add(size_of::<QOS>()) };
    let qos = QOS {
        SendingFlowspec: r.sending.into(),
        ReceivingFlowspec: r.receiving.into(),
        ProviderSpecific: WSABUF {
            len: RSVP_STATUS_INFO_LEN as ULONG,
            buf: status,
        },
    };
    // SAFETY: the first size_of::<QOS>() bytes are writable.
    unsafe { out.write_unaligned(qos) };
    let fields = [
        gqos::RSVP_OBJECT_STATUS_INFO,
        RSVP_STATUS_INFO_LEN as u32,
        r.status_code,
        r.dscp,
        r.pcp,
    ];
    for (i, v) in fields.into_iter().enumerate() {
        // SAFETY: 5 ULONGs = RSVP_STATUS_INFO_LEN bytes behind the QOS are writable, so
        // `4 * i` (i < 5) stays inside them.
        let field = unsafe { status.add(4 * i) };
        // SAFETY: `field` is 4 writable bytes (above).
        unsafe { put_u32(field, v) };
    }
}

/// `QmWaitSocketQosChange`.
#[no_mangle]
pub extern "system" fn QmWaitSocketQosChange(Socket: SOCKET, Overlapped: *mut c_void) -> BOOL {
    keep_last_error_on_success(|| {
        let Some(raw) = raw_socket(Socket) else {
            return fail(QosError::INVALID_PARAMETER);
        };
        let Some(s) = existing_session() else {
            return fail_code(Win32Error::NOT_FOUND);
        };
        if !Overlapped.is_null() {
            return overlapped_wait(&s, raw, Overlapped);
        }
        match s.wait_change(raw) {
            Ok(_) => TRUE,
            Err(e) => fail(e),
        }
    })
}

#[cfg(not(windows))]
fn overlapped_wait(_: &GqosSession, _: crate::socket::RawSock, _: *mut c_void) -> BOOL {
    fail_code(Win32Error::NOT_SUPPORTED)
}

/// The wait on the hidden handle with the caller's `OVERLAPPED` (module docs).
#[cfg(windows)]
fn overlapped_wait(s: &GqosSession, raw: crate::socket::RawSock, ov: *mut c_void) -> BOOL {
    use qosmark_abi::codec::{self, FLAG_QOS2_ANSWER};
    use qosmark_abi::ioctl::RequestKind;
    use qosmark_abi::Request;
    let target = match s.watch_target(raw) {
        Ok(Some(t)) => t,
        Ok(None) => return fail_code(Win32Error::NOT_FOUND),
        Err(e) => return fail(e),
    };
    let Some(device) = s.handle().client().device() else {
        return fail_code(Win32Error::NOT_SUPPORTED);
    };
    let request = Request::WatchFlow {
        flow_id: target.0,
        known: Some(target.1),
    };
    let mut input = Vec::new();
    if let Err(e) = codec::encode_request_with_flags(&request, FLAG_QOS2_ANSWER, &mut input) {
        return fail(QosError::from(e));
    }
    // SAFETY: no output buffer (the answer is 0 bytes); `ov` is the caller's OVERLAPPED,
    // valid until completion per the documented contract; the input is copied during the
    // call (METHOD_BUFFERED).
    match unsafe {
        crate::ffi::os::ioctl_overlapped(
            device,
            RequestKind::WatchFlow.code(),
            &input,
            core::ptr::null_mut(),
            0,
            ov,
        )
    } {
        Ok(()) => TRUE,
        Err(e) => fail_code(Win32Error(e)),
    }
}

/// `QmGetSocketQosHandle`: the hidden handle (Windows: the `\\.\QosMark` file handle to
/// associate with an I/O completion port for overlapped `QmWaitSocketQosChange`), opened if
/// needed. `NULL` + last error when it cannot be opened, and `NULL` + 50 on other systems.
#[no_mangle]
pub extern "system" fn QmGetSocketQosHandle() -> HANDLE {
    let failed = |e: QosError| {
        fail(e);
        core::ptr::null_mut()
    };
    #[cfg(windows)]
    {
        match session() {
            Ok(s) => match s.handle().client().device() {
                Some(d) => d as HANDLE,
                None => failed(QosError::NOT_SUPPORTED),
            },
            Err(e) => failed(e),
        }
    }
    #[cfg(not(windows))]
    {
        failed(QosError::NOT_SUPPORTED)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::super::FALSE;
    use super::*;
    use core::mem::offset_of;

    /// The C layouts of `qos.h` / `winsock2.h` on 64-bit systems, written out (the Windows
    /// check compares the header against mingw-w64's independently).
    #[test]
    fn layouts() {
        assert_eq!(size_of::<FLOWSPEC>(), 32);
        assert_eq!(offset_of!(FLOWSPEC, ServiceType), 20);
        assert_eq!(offset_of!(QOS, ReceivingFlowspec), 32);
        #[cfg(target_pointer_width = "64")]
        {
            assert_eq!(offset_of!(QOS, ProviderSpecific), 64);
            assert_eq!(offset_of!(WSABUF, buf), 8);
            assert_eq!(size_of::<QOS>(), 80);
            assert_eq!(ANSWER_LEN, 100);
        }
    }

    #[test]
    fn a_short_buffer_gets_the_size_at_its_start() {
        let mut buf = [0xAAu8; 64];
        let mut needed: DWORD = 0;
        // SAFETY: 64 writable bytes, a live DWORD.
        let r = unsafe { QmGetSocketQos(3, buf.as_mut_ptr().cast(), 64, &raw mut needed) };
        assert_eq!(r, FALSE);
        #[cfg(not(windows))]
        assert_eq!(super::super::QOSGetLastError(), 10055);
        assert_eq!(needed as usize, ANSWER_LEN);
        assert_eq!(
            u32::from_ne_bytes(*buf.first_chunk::<4>().unwrap()) as usize,
            ANSWER_LEN
        );
        assert!(buf.get(4..).unwrap().iter().all(|b| *b == 0xAA));
        // 3 bytes: nothing written, only the code and *needed.
        let mut tiny = [0xAAu8; 3];
        // SAFETY: 3 writable bytes (fewer than a ULONG: never written).
        let r = unsafe { QmGetSocketQos(3, tiny.as_mut_ptr().cast(), 3, core::ptr::null_mut()) };
        assert_eq!(r, FALSE);
        assert_eq!(tiny, [0xAA; 3]);
    }
}
