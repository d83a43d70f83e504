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
//! | `ENOENT`, `ECONNREFUSED` | 1068 `ERROR_SERVICE_DEPENDENCY_FAIL` (qosmarkd is not running) |
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
        Some(libc::ENOENT | libc::ECONNREFUSED) => Win32Error::SERVICE_DEPENDENCY_FAIL,
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
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::panic,
        reason = "test code"
    )]
    use super::*;
    use crate::client::Client;
    use crate::qos2::{FlowQuery, QosHandle};
    use qosmark_abi::codec::ErrorReply;
    use qosmark_abi::{Caller, Privilege, QueryFlow, StatusInfo, TrafficType};
    use qosmark_engine::{Engine, Limits};
    use std::net::UdpSocket;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    #[test]
    fn connect_errors_map_as_documented() {
        let code = |errno| connect_error_code(&io::Error::from_raw_os_error(errno)).0;
        assert_eq!(code(libc::ENOENT), 1068);
        assert_eq!(code(libc::ECONNREFUSED), 1068);
        assert_eq!(code(libc::EACCES), 5);
        assert_eq!(code(libc::EPERM), 5);
        assert_eq!(code(libc::ENOTDIR), 31);
        assert_eq!(code(libc::ETIMEDOUT), 31);
    }

    fn temp_socket(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("qm-unix-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("qosmark.sock")
    }

    #[test]
    fn absent_daemon_is_file_not_found() {
        let path = temp_socket("absent");
        assert_eq!(UnixTransport::connect(&path).unwrap_err().raw(), 1068);
        // A socket file nobody listens on: ECONNREFUSED, also 2.
        drop(UnixListener::bind(&path).unwrap());
        assert_eq!(UnixTransport::connect(&path).unwrap_err().raw(), 1068);
    }

    #[test]
    fn socket_path_follows_the_environment() {
        // The only test that touches QOSMARK_SOCKET.
        std::env::set_var(SOCKET_ENV, "/tmp/elsewhere.sock");
        assert_eq!(socket_path(), PathBuf::from("/tmp/elsewhere.sock"));
        std::env::set_var(SOCKET_ENV, "");
        assert_eq!(socket_path(), PathBuf::from(DEFAULT_SOCKET_PATH));
        std::env::remove_var(SOCKET_ENV);
        assert_eq!(socket_path(), PathBuf::from(DEFAULT_SOCKET_PATH));
    }

    /// Reads one framed record from the client, with the descriptors that came with it.
    fn read_record(fd: i32) -> Option<(Vec<u8>, Vec<OwnedFd>)> {
        let mut fds = Vec::new();
        let mut buf = vec![0u8; HEADER_LEN as usize];
        let mut got = 0;
        let mut need = HEADER_LEN as usize;
        while got < need {
            let (n, mut more) = os::recv_with_fds(fd, &mut buf[got..need]).ok()?;
            if n == 0 {
                return None;
            }
            fds.append(&mut more);
            got += n;
            if got == HEADER_LEN as usize {
                need = codec::record_len(&buf).unwrap() as usize;
                buf.resize(need, 0);
            }
        }
        Some((buf, fds))
    }

    /// What the test server does with one request: the answer bytes, or `None` to hang up.
    type Handler = Box<dyn FnMut(Request, Vec<OwnedFd>) -> Option<Vec<u8>> + Send>;

    /// A one-connection server speaking the documented framing.
    fn serve(path: &Path, mut handler: Handler) -> std::thread::JoinHandle<()> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            while let Some((record, fds)) = read_record(stream.as_raw_fd()) {
                let request = codec::decode_request(&record).unwrap();
                match handler(request, fds) {
                    Some(answer) => {
                        os::send_record(stream.as_raw_fd(), &answer, None).unwrap();
                    }
                    None => return,
                }
            }
        })
    }

    fn encode(r: &Response) -> Vec<u8> {
        let mut out = Vec::new();
        codec::encode_response(r, &mut out).unwrap();
        out
    }

    fn status(version: u16) -> Vec<u8> {
        encode(&Response::Status(StatusInfo {
            protocol_version: version,
            ..StatusInfo::default()
        }))
    }

    #[test]
    fn requests_answers_and_scm_rights() {
        let path = temp_socket("engine");
        let engine = Arc::new(Mutex::new(Engine::new(Limits::default())));
        let caller = Caller {
            pid: 7,
            privilege: Privilege::User,
        };
        let handle = engine.lock().unwrap().open_handle(caller).unwrap();
        let fds_with_add = Arc::new(AtomicUsize::new(0));
        let fds_elsewhere = Arc::new(AtomicUsize::new(0));
        let (with_add, elsewhere) = (Arc::clone(&fds_with_add), Arc::clone(&fds_elsewhere));
        let e = Arc::clone(&engine);
        let server = serve(
            &path,
            Box::new(move |request, fds| {
                let mut request = request;
                if let Request::AddSocketToFlow { socket, .. } = &mut request {
                    assert_eq!(fds.len(), 1, "exactly one descriptor with AddSocketToFlow");
                    with_add.fetch_add(1, Ordering::SeqCst);
                    // As the daemon does: the descriptor itself says where it is bound.
                    let received = UdpSocket::from(fds.into_iter().next().unwrap());
                    assert_eq!(socket.local, received.local_addr().unwrap());
                    socket.local = received.local_addr().unwrap();
                } else {
                    elsewhere.fetch_add(fds.len(), Ordering::SeqCst);
                }
                let reply = e.lock().unwrap().apply(handle, &request);
                Some(match reply {
                    Ok(r) => encode(&r),
                    Err(err) => {
                        let mut out = Vec::new();
                        let error = ErrorReply {
                            win32: err.win32(),
                            required_size: 0,
                        };
                        codec::encode_error(error, &mut out).unwrap();
                        out
                    }
                })
            }),
        );
        let h = QosHandle::with_client(Client::connect_unix(&path).unwrap());
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let f = h
            .add_socket_to_flow(
                &s,
                Some("127.0.0.1:5004".parse().unwrap()),
                TrafficType::Voice,
                0,
                0,
            )
            .unwrap();
        assert_eq!(
            h.query_flow(f, QueryFlow::PacketPriority).unwrap(),
            FlowQuery::PacketPriority(qosmark_abi::PacketPriority {
                conformant_dscp: 56,
                non_conformant_dscp: 0,
                conformant_l2: 7,
                non_conformant_l2: 0,
            })
        );
        // Error records become the request's error; the connection stays usable.
        assert_eq!(
            h.query_flow(f + 1, QueryFlow::PacketPriority)
                .unwrap_err()
                .raw(),
            1168
        );
        assert_eq!(h.client().rules().unwrap_err().raw(), 5);
        // A multi-page-capable answer through the stream.
        assert_eq!(h.client().list_flows().unwrap().len(), 1);
        drop(h);
        server.join().unwrap();
        assert_eq!(fds_with_add.load(Ordering::SeqCst), 1);
        assert_eq!(fds_elsewhere.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn version_mismatch_is_1306() {
        // The daemon speaks the framing but reports another protocol version.
        let path = temp_socket("version");
        let server = serve(&path, Box::new(|_, _| Some(status(PROTOCOL_VERSION + 1))));
        assert_eq!(UnixTransport::connect(&path).unwrap_err().raw(), 1306);
        server.join().unwrap();
        // A daemon whose record headers carry another version.
        let path = temp_socket("header");
        let server = serve(
            &path,
            Box::new(|_, _| {
                let mut answer = status(PROTOCOL_VERSION);
                answer[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
                Some(answer)
            }),
        );
        assert_eq!(UnixTransport::connect(&path).unwrap_err().raw(), 1306);
        server.join().unwrap();
    }

    #[test]
    fn lost_connection_is_1164_for_good() {
        let path = temp_socket("lost");
        let mut answered = 0;
        let server = serve(
            &path,
            Box::new(move |_, _| {
                answered += 1;
                (answered == 1).then(|| status(PROTOCOL_VERSION))
            }),
        );
        let client = Client::connect_unix(&path).unwrap();
        assert_eq!(client.status().unwrap_err().raw(), 1164);
        server.join().unwrap();
        assert_eq!(client.status().unwrap_err().raw(), 1164);
    }

    #[test]
    fn garbled_answer_is_31() {
        let path = temp_socket("garbled");
        let mut n = 0;
        let server = serve(
            &path,
            Box::new(move |_, _| {
                n += 1;
                // First the status, then a well-framed record of the wrong kind.
                Some(if n == 1 {
                    status(PROTOCOL_VERSION)
                } else {
                    encode(&Response::FlowId(3))
                })
            }),
        );
        let client = Client::connect_unix(&path).unwrap();
        assert_eq!(client.traffic_table().unwrap_err().raw(), 31);
        drop(client);
        server.join().unwrap();
    }
}
