//! The Linux (Unix) transport to `qosmarkd`, as `docs/linux-transport.md` specifies.
//!
//! * One `SOCK_STREAM` unix-socket connection = one QOS2 handle. Path: the environment
//!   variable `QOSMARK_SOCKET`, else [`DEFAULT_SOCKET_PATH`].
//! * At connect the client sends `QueryStatus` and requires the daemon's
//!   `protocol_version` to equal [`qosmark_abi::PROTOCOL_VERSION`].
//! * Requests are `abi` records; the answer is read as a 16-byte header, the length from
//!   [`codec::record_len`], then the rest. An `Error` record is the request's failure.
//! * `AddSocketToFlow` attaches the socket's descriptor with `SCM_RIGHTS` to the `sendmsg`
//!   that carries the record's first byte; no other request carries a descriptor.
//!
//! Connect failures (the contract's table):
//!
//! | `connect` result | code |
//! |---|---|
//! | `ENOENT`, `ECONNREFUSED` | 2 `ERROR_FILE_NOT_FOUND` (qosmarkd is not running) |
//! | `EACCES`, `EPERM` | 5 `ERROR_ACCESS_DENIED` |
//! | protocol version differs (status, or a header the client cannot frame) | 1306 `ERROR_REVISION_MISMATCH` |
//! | anything else | 31 `ERROR_GEN_FAILURE` |
//!
//! After connect, a connection that breaks (read or write fails, end of stream) answers
//! 1164 `ERROR_DEVICE_REINITIALIZATION_NEEDED` to that request and every later one: the
//! daemon has dropped the handle and its flows, and QOS2 callers re-create the handle on 1164.
//! An answer that does not decode as an answer to the request is 31.

use crate::client::Transport;
use crate::error::{QosError, Result};
use crate::ffi::os;
use crate::socket::RawSock;
use qosmark_abi::codec::{self, AbiError, Reply, HEADER_LEN};
use qosmark_abi::ioctl::RequestKind;
use qosmark_abi::status::Win32Error;
use qosmark_abi::{Request, Response, PROTOCOL_VERSION};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Where `qosmarkd` listens unless `QOSMARK_SOCKET` says otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/run/qosmark/qosmark.sock";
/// The environment variable that overrides [`DEFAULT_SOCKET_PATH`] for clients.
pub const SOCKET_ENV: &str = "QOSMARK_SOCKET";

/// The socket path a client uses: `QOSMARK_SOCKET` if set and not empty, else the default.
#[must_use]
pub fn socket_path() -> PathBuf {
    match std::env::var_os(SOCKET_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_SOCKET_PATH),
    }
}

/// The Win32 code for a failed `connect` (module docs).
#[must_use]
pub fn connect_error_code(e: &io::Error) -> Win32Error {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ECONNREFUSED) => Win32Error::FILE_NOT_FOUND,
        Some(libc::EACCES | libc::EPERM) => Win32Error::ACCESS_DENIED,
        _ => Win32Error::GEN_FAILURE,
    }
}

/// A connection to `qosmarkd`.
#[derive(Debug)]
pub struct UnixTransport {
    stream: UnixStream,
    broken: bool,
}

impl UnixTransport {
    /// Connects to [`socket_path`].
    ///
    /// # Errors
    /// As [`UnixTransport::connect`].
    pub fn connect_default() -> Result<Self> {
        Self::connect(&socket_path())
    }

    /// Connects to the daemon at `path` and checks the protocol version.
    ///
    /// # Errors
    /// 2, 5, 1306 or 31 (module docs).
    pub fn connect(path: &Path) -> Result<Self> {
        let stream =
            UnixStream::connect(path).map_err(|e| QosError::new(connect_error_code(&e)))?;
        let mut t = UnixTransport {
            stream,
            broken: false,
        };
        let status = match t.call(&Request::QueryStatus, None) {
            Ok(Response::Status(s)) => s,
            Ok(_) => return Err(QosError::GEN_FAILURE),
            // The daemon may refuse our header's version with 1306 itself.
            Err(e) if e == QosError::REINITIALIZE => return Err(QosError::GEN_FAILURE),
            Err(e) => return Err(e),
        };
        if status.protocol_version != PROTOCOL_VERSION {
            return Err(QosError::new(Win32Error::REVISION_MISMATCH));
        }
        Ok(t)
    }

    fn exchange(&mut self, bytes: &[u8], socket: Option<RawSock>) -> Result<Vec<u8>> {
        let lost = |_: io::Error| QosError::REINITIALIZE;
        os::send_record(self.stream.as_raw_fd(), bytes, socket).map_err(lost)?;
        let mut header = [0u8; HEADER_LEN as usize];
        self.stream.read_exact(&mut header).map_err(lost)?;
        let len = match codec::record_len(&header) {
            Ok(len) => len,
            Err(AbiError::BadVersion) => return Err(QosError::new(Win32Error::REVISION_MISMATCH)),
            Err(_) => return Err(QosError::GEN_FAILURE),
        };
        let mut record = Vec::new();
        record
            .try_reserve_exact(len as usize)
            .map_err(|_| QosError::NO_MEMORY)?;
        record.extend_from_slice(&header);
        record.resize(len as usize, 0);
        let rest = record.get_mut(HEADER_LEN as usize..).unwrap_or_default();
        self.stream.read_exact(rest).map_err(lost)?;
        Ok(record)
    }
}

impl Transport for UnixTransport {
    fn call(&mut self, request: &Request, socket: Option<RawSock>) -> Result<Response> {
        if self.broken {
            return Err(QosError::REINITIALIZE);
        }
        let kind = RequestKind::of(request);
        // Only AddSocketToFlow carries a descriptor (the daemon refuses any other with 87).
        let socket = socket.filter(|_| kind == RequestKind::AddSocketToFlow);
        let mut bytes = Vec::new();
        codec::encode_request(request, &mut bytes)?;
        let answer = match self.exchange(&bytes, socket) {
            Ok(a) => a,
            Err(e) => {
                // Framing is lost for good after a failed exchange.
                self.broken = true;
                return Err(e);
            }
        };
        match codec::decode_response(kind, &answer) {
            Ok(Reply::Response(r)) => Ok(r),
            Ok(Reply::Error(e)) => Err(QosError::new(e.win32)),
            Err(_) => Err(QosError::GEN_FAILURE),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    #[test]
    fn connect_errors_map_as_documented() {
        let code = |errno| connect_error_code(&io::Error::from_raw_os_error(errno)).0;
        assert_eq!(code(libc::ENOENT), 2);
        assert_eq!(code(libc::ECONNREFUSED), 2);
        assert_eq!(code(libc::EACCES), 5);
        assert_eq!(code(libc::EPERM), 5);
        assert_eq!(code(libc::ENOTDIR), 31);
        assert_eq!(code(libc::ETIMEDOUT), 31);
    }

    #[test]
    fn absent_daemon_is_file_not_found() {
        let dir = std::env::temp_dir().join(format!("qm-absent-{}", std::process::id()));
        let e = UnixTransport::connect(&dir.join("none.sock")).unwrap_err();
        assert_eq!(e.raw(), 2);
    }
}
