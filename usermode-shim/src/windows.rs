//! The Windows transport: the `\\.\QosMark` control device of the qosmark driver.
//!
//! * `QOSCreateHandle` = `CreateFileW(\\.\QosMark, GENERIC_READ | GENERIC_WRITE,
//!   FILE_FLAG_OVERLAPPED)`, then `QueryStatus` to check the protocol version (1306 when it
//!   differs). The driver absent (`ERROR_FILE_NOT_FOUND` / `ERROR_PATH_NOT_FOUND` from
//!   `CreateFileW`) → 1068 `ERROR_SERVICE_DEPENDENCY_FAIL`, the code qWAVE gives when its
//!   service cannot start (qos-api.md §5), which `qosmarkctl` turns into "driver not
//!   installed or not started". Other `CreateFileW` errors (5 for instance) are passed on.
//! * Each request is one `DeviceIoControl` with the request's IOCTL code, the `abi` record as
//!   input, and an output buffer of at least `MIN_OUTPUT_LEN` bytes. Synchronous calls use a
//!   private `OVERLAPPED` whose event handle has its low bit set (no completion packet to an
//!   application's port; `ffi::os_windows`).
//! * Size protocol (abi codec docs): a variable answer that does not fit completes with
//!   `ERROR_MORE_DATA` and an Error record { 122, required size }; the transport then retries
//!   with that size (a few times: flows may be added in between). A required size above
//!   `MAX_RECORD_LEN` is a driver fault (31); buffers are allocated fallibly (8).
//! * The socket of an `AddSocketToFlow` is described by the record only; the driver confirms
//!   ownership at the ALE layers.

use crate::client::Transport;
use crate::error::{QosError, Result};
use crate::ffi::os;
use crate::socket::RawSock;
use qosmark_abi::codec::{self, AbiError, Reply, MAX_RECORD_LEN, MIN_OUTPUT_LEN};
use qosmark_abi::ioctl::{RequestKind, USER_DEVICE_PATH};
use qosmark_abi::status::Win32Error;
use qosmark_abi::{Request, Response, PROTOCOL_VERSION};

/// First output buffer size for answers of unknown length.
const FIRST_OUTPUT_LEN: u32 = 4096;
/// How often a request is retried with a larger buffer after `ERROR_MORE_DATA`.
const MORE_DATA_RETRIES: usize = 4;

/// An open `\\.\QosMark` handle.
#[derive(Debug)]
pub struct DeviceTransport {
    handle: usize,
}

impl Drop for DeviceTransport {
    fn drop(&mut self) {
        os::close(self.handle);
    }
}

impl DeviceTransport {
    /// Opens the device and checks the protocol version.
    ///
    /// # Errors
    /// 2 when the driver is absent, 1306 on a version mismatch, or `CreateFileW`'s error.
    pub fn open() -> Result<Self> {
        let handle = os::open_device(USER_DEVICE_PATH).map_err(|e| match e {
            2 | 3 => QosError::BACKEND_ABSENT,
            other => QosError::new(Win32Error(other)),
        })?;
        let mut t = DeviceTransport { handle };
        match t.call(&Request::QueryStatus, None)? {
            Response::Status(s) if s.protocol_version == PROTOCOL_VERSION => Ok(t),
            Response::Status(_) => Err(QosError::new(Win32Error::REVISION_MISMATCH)),
            _ => Err(QosError::GEN_FAILURE),
        }
    }
}

/// Output capacity for a request: the fixed answer size when there is one, else a first guess.
fn first_capacity(kind: RequestKind) -> u32 {
    match kind {
        RequestKind::EnumerateFlows | RequestKind::ListRules | RequestKind::ListFlows => {
            FIRST_OUTPUT_LEN
        }
        // Every fixed answer (Status, the largest, is 16 + 176 bytes) fits this.
        _ => 256,
    }
    .max(MIN_OUTPUT_LEN)
}

/// The code for an answer that does not decode: a record of another protocol version is
/// 1306 (as on the unix transport, so `qosmarkctl` says "different versions"), anything else
/// a driver fault (31).
fn answer_error(e: AbiError) -> QosError {
    if matches!(e, AbiError::BadVersion) {
        QosError::new(Win32Error::REVISION_MISMATCH)
    } else {
        QosError::GEN_FAILURE
    }
}

/// The output capacity for the retry after `ERROR_MORE_DATA` asked for `required` bytes: more
/// than `current`, and never above `MAX_RECORD_LEN` (no answer is longer, so a larger request
/// is a driver fault: 31, rather than an allocation the driver chose).
fn next_capacity(required: u32, current: u32) -> Result<u32> {
    let next = required.max(current.saturating_add(1));
    if next > MAX_RECORD_LEN {
        Err(QosError::GEN_FAILURE)
    } else {
        Ok(next)
    }
}

impl Transport for DeviceTransport {
    fn call(&mut self, request: &Request, _socket: Option<RawSock>) -> Result<Response> {
        let kind = RequestKind::of(request);
        let mut input = Vec::new();
        codec::encode_request(request, &mut input)?;
        let mut capacity = first_capacity(kind);
        for _ in 0..MORE_DATA_RETRIES {
            let mut output = Vec::new();
            output
                .try_reserve_exact(capacity as usize)
                .map_err(|_| QosError::NO_MEMORY)?;
            output.resize(capacity as usize, 0);
            let r = os::ioctl_sync(self.handle, kind.code(), &input, &mut output)
                .map_err(|e| QosError::new(Win32Error(e)))?;
            let got = output.get(..r.bytes as usize).unwrap_or_default();
            let reply = codec::decode_response(kind, got).map_err(answer_error)?;
            match reply {
                Reply::Response(resp) if !r.more_data => return Ok(resp),
                Reply::Error(e) if e.win32 == Win32Error::INSUFFICIENT_BUFFER && r.more_data => {
                    capacity = next_capacity(e.required_size, capacity)?;
                }
                Reply::Error(e) => return Err(QosError::new(e.win32)),
                Reply::Response(_) => return Err(QosError::GEN_FAILURE),
            }
        }
        Err(QosError::new(Win32Error::INSUFFICIENT_BUFFER))
    }

    fn device(&self) -> Option<usize> {
        Some(self.handle)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code: a failure is a test failure")]
    use super::*;

    #[test]
    fn an_answer_of_another_protocol_version_is_1306() {
        let mut bytes = Vec::new();
        codec::encode_response(&qosmark_abi::Response::Done, &mut bytes).unwrap_or_default();
        // The header's version field follows the 4-byte magic (abi codec docs).
        if let Some(v) = bytes.get_mut(4) {
            *v = v.wrapping_add(1);
        }
        let e = codec::decode_response(RequestKind::SetFlow, &bytes).unwrap_err();
        assert_eq!(answer_error(e).raw(), 1306);
        assert_eq!(answer_error(AbiError::Truncated).raw(), 31);
    }

    #[test]
    fn more_data_capacity_grows_and_is_bounded() {
        assert_eq!(next_capacity(10_000, 4096), Ok(10_000));
        // A driver that asks for no more than it gave still makes progress.
        assert_eq!(next_capacity(100, 4096), Ok(4097));
        assert_eq!(next_capacity(MAX_RECORD_LEN, 4096), Ok(MAX_RECORD_LEN));
        assert_eq!(
            next_capacity(MAX_RECORD_LEN + 1, 4096),
            Err(QosError::GEN_FAILURE)
        );
        assert_eq!(next_capacity(u32::MAX, 4096), Err(QosError::GEN_FAILURE));
        assert_eq!(next_capacity(0, MAX_RECORD_LEN), Err(QosError::GEN_FAILURE));
    }
}
