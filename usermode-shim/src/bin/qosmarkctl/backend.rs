//! The connection to the back end: the Windows driver (`\\.\QosMark`) or the Linux daemon
//! (`qosmarkd`'s unix socket, `docs/linux-transport.md`).
//!
//! `qosmarkctl` only needs "send one request, get its answer"; [`Backend`] is that, and the
//! commands are written against it so that tests can run them over an in-process engine.
//! Opening a connection checks the protocol version with `QueryStatus`, as `QOSCreateHandle`
//! does. Every failure carries a message that says what to do next.

use qosmark_abi::codec::{self, Reply};
use qosmark_abi::ioctl::RequestKind;
use qosmark_abi::status::Win32Error;
use qosmark_abi::{Request, Response, PROTOCOL_VERSION};

/// Why a request did not produce an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// The back end answered with this Win32 error.
    Refused(Win32Error),
    /// The connection failed or the answer was unreadable.
    Transport(String),
}

/// Why no connection could be opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenError {
    /// The Win32 code `QOSCreateHandle` reports for the same failure.
    pub win32: Win32Error,
    /// What happened and what to do.
    pub message: String,
}

/// One open connection (one handle) to the back end.
pub trait Backend {
    /// Sends `request` and waits for its answer.
    ///
    /// # Errors
    /// [`CallError`].
    fn call(&mut self, request: &Request) -> Result<Response, CallError>;

    /// Where the back end is: the socket path or the device name.
    fn endpoint(&self) -> String;
}

/// The back end this platform uses: the socket of `QOSMARK_SOCKET` or
/// [`unix::DEFAULT_SOCKET`] on unix, the driver's device on Windows.
///
/// # Errors
/// [`OpenError`] with the message to print.
pub fn open() -> Result<Box<dyn Backend>, OpenError> {
    #[cfg(unix)]
    {
        let path = std::env::var_os("QOSMARK_SOCKET")
            .filter(|p| !p.is_empty())
            .map_or_else(|| unix::DEFAULT_SOCKET.into(), std::path::PathBuf::from);
        unix::SocketBackend::connect(&path).map(|b| Box::new(b) as Box<dyn Backend>)
    }
    #[cfg(windows)]
    {
        windows::DeviceBackend::open().map(|b| Box::new(b) as Box<dyn Backend>)
    }
    #[cfg(not(any(unix, windows)))]
    {
        Err(OpenError {
            win32: Win32Error::NOT_SUPPORTED,
            message: "qosmark has no back end on this platform (Windows and Linux only)".into(),
        })
    }
}

/// Decodes the answer record to `request`.
fn decode(request: &Request, bytes: &[u8]) -> Result<Response, CallError> {
    match codec::decode_response(RequestKind::of(request), bytes) {
        Ok(Reply::Response(r)) => Ok(r),
        Ok(Reply::Error(e)) => Err(CallError::Refused(e.win32)),
        Err(e) => Err(CallError::Transport(format!(
            "unreadable answer from the back end ({e:?}): are qosmarkctl and the back end \
             from the same release?"
        ))),
    }
}

/// `QueryStatus` right after opening: the back end must speak our protocol version.
fn check_version(b: &mut dyn Backend) -> Result<(), OpenError> {
    let endpoint = b.endpoint();
    let mismatch = |theirs: &str| OpenError {
        win32: Win32Error::REVISION_MISMATCH,
        message: format!(
            "{endpoint}: client and back end versions differ (qosmarkctl speaks protocol \
             {PROTOCOL_VERSION}, the back end {theirs}): install matching versions"
        ),
    };
    match b.call(&Request::QueryStatus) {
        Ok(Response::Status(s)) if s.protocol_version == PROTOCOL_VERSION => Ok(()),
        Ok(Response::Status(s)) => Err(mismatch(&s.protocol_version.to_string())),
        Ok(_) => Err(mismatch("answers QueryStatus with something else")),
        Err(CallError::Transport(t)) => Err(OpenError {
            win32: Win32Error::GEN_FAILURE,
            message: format!("{endpoint}: {t}"),
        }),
        Err(CallError::Refused(code)) => Err(OpenError {
            win32: code,
            message: format!(
                "{endpoint}: QueryStatus refused with Win32 error {}",
                code.0
            ),
        }),
    }
}

/// The Linux transport: one `SOCK_STREAM` unix-socket connection to `qosmarkd`.
#[cfg(unix)]
pub mod unix {
    use super::{check_version, decode, Backend, CallError, OpenError};
    use qosmark_abi::codec;
    use qosmark_abi::status::Win32Error;
    use qosmark_abi::{Request, Response};
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::{Path, PathBuf};

    /// `qosmarkd`'s socket when `QOSMARK_SOCKET` is not set.
    pub const DEFAULT_SOCKET: &str = "/run/qosmark/qosmark.sock";

    /// A connection to `qosmarkd`.
    #[derive(Debug)]
    pub struct SocketBackend {
        stream: UnixStream,
        path: PathBuf,
    }

    impl SocketBackend {
        /// Connects and checks the protocol version.
        ///
        /// # Errors
        /// [`OpenError`] as `docs/linux-transport.md` tabulates, with what to do next.
        pub fn connect(path: &Path) -> Result<Self, OpenError> {
            let shown = path.display();
            let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
                ErrorKind::NotFound | ErrorKind::ConnectionRefused => OpenError {
                    win32: Win32Error::FILE_NOT_FOUND,
                    message: format!(
                        "qosmarkd is not running (socket {shown}): start it with `sudo \
                         qosmarkd`, or set QOSMARK_SOCKET to the socket it listens on"
                    ),
                },
                ErrorKind::PermissionDenied => OpenError {
                    win32: Win32Error::ACCESS_DENIED,
                    message: format!(
                        "no permission to open {shown}: run as root, or ask the administrator \
                         to make the socket accessible"
                    ),
                },
                _ => OpenError {
                    win32: Win32Error::GEN_FAILURE,
                    message: format!("cannot connect to qosmarkd at {shown}: {e}"),
                },
            })?;
            let mut b = SocketBackend {
                stream,
                path: path.to_owned(),
            };
            check_version(&mut b)?;
            Ok(b)
        }

        fn broken(&self, e: &std::io::Error) -> CallError {
            CallError::Transport(format!(
                "connection to qosmarkd ({}) failed: {e}; is qosmarkd still running?",
                self.path.display()
            ))
        }
    }

    impl Backend for SocketBackend {
        fn call(&mut self, request: &Request) -> Result<Response, CallError> {
            let mut out = Vec::new();
            codec::encode_request(request, &mut out)
                .map_err(|e| CallError::Transport(format!("request cannot be encoded: {e:?}")))?;
            self.stream.write_all(&out).map_err(|e| self.broken(&e))?;
            let mut record = vec![0u8; codec::HEADER_LEN as usize];
            self.stream
                .read_exact(&mut record)
                .map_err(|e| self.broken(&e))?;
            let len = codec::record_len(&record).map_err(|e| {
                CallError::Transport(format!(
                    "qosmarkd ({}) sent an unframeable answer ({e:?}): versions differ?",
                    self.path.display()
                ))
            })?;
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            let mut rest = vec![0u8; len.saturating_sub(record.len())];
            self.stream
                .read_exact(&mut rest)
                .map_err(|e| self.broken(&e))?;
            record.extend_from_slice(&rest);
            decode(request, &record)
        }

        fn endpoint(&self) -> String {
            self.path.display().to_string()
        }
    }
}

/// The Windows transport: the driver's control device, synchronous `DeviceIoControl`.
#[cfg(windows)]
pub mod windows {
    use super::{check_version, decode, Backend, CallError, OpenError};
    use qosmark_abi::codec::{self, Reply};
    use qosmark_abi::ioctl::{RequestKind, USER_DEVICE_PATH};
    use qosmark_abi::status::Win32Error;
    use qosmark_abi::{Request, Response};
    use std::ffi::c_void;

    type Handle = *mut c_void;
    const INVALID_HANDLE_VALUE: Handle = usize::MAX as Handle;
    const GENERIC_READ: u32 = 0x8000_0000;
    const GENERIC_WRITE: u32 = 0x4000_0000;
    const OPEN_EXISTING: u32 = 3;
    const ERROR_MORE_DATA: u32 = 234;

    #[link(name = "kernel32")]
    extern "system" {
        fn CreateFileW(
            name: *const u16,
            access: u32,
            share: u32,
            security: *mut c_void,
            disposition: u32,
            flags: u32,
            template: Handle,
        ) -> Handle;
        fn DeviceIoControl(
            device: Handle,
            code: u32,
            input: *const c_void,
            input_len: u32,
            output: *mut c_void,
            output_len: u32,
            returned: *mut u32,
            overlapped: *mut c_void,
        ) -> i32;
        fn CloseHandle(handle: Handle) -> i32;
        fn GetLastError() -> u32;
    }

    /// An open `\\.\QosMark` handle.
    #[derive(Debug)]
    pub struct DeviceBackend {
        handle: Handle,
    }

    impl Drop for DeviceBackend {
        fn drop(&mut self) {
            // SAFETY: `handle` came from a successful CreateFileW, is owned by this value
            // alone and is closed exactly once, here.
            unsafe { CloseHandle(self.handle) };
        }
    }

    impl DeviceBackend {
        /// Opens the device (no overlapped I/O) and checks the protocol version.
        ///
        /// # Errors
        /// [`OpenError`] with what to do next.
        pub fn open() -> Result<Self, OpenError> {
            let name: Vec<u16> = USER_DEVICE_PATH.encode_utf16().chain([0]).collect();
            // SAFETY: `name` is a NUL-terminated UTF-16 string that outlives the call; the
            // security attributes and template are null, which CreateFileW allows.
            let handle = unsafe {
                CreateFileW(
                    name.as_ptr(),
                    GENERIC_READ | GENERIC_WRITE,
                    0,
                    std::ptr::null_mut(),
                    OPEN_EXISTING,
                    0,
                    std::ptr::null_mut(),
                )
            };
            if handle == INVALID_HANDLE_VALUE || handle.is_null() {
                // SAFETY: no other call since CreateFileW on this thread.
                let code = unsafe { GetLastError() };
                return Err(match code {
                    2 | 3 => OpenError {
                        win32: Win32Error(code),
                        message: format!(
                            "driver not installed or not started ({USER_DEVICE_PATH}: error \
                             {code}): install it with `pnputil /add-driver qosmark.inf \
                             /install`, then `sc start QosMark` (as administrator)"
                        ),
                    },
                    5 => OpenError {
                        win32: Win32Error(code),
                        message: format!(
                            "access to {USER_DEVICE_PATH} denied: run as administrator"
                        ),
                    },
                    _ => OpenError {
                        win32: Win32Error(code),
                        message: format!("cannot open {USER_DEVICE_PATH}: Win32 error {code}"),
                    },
                });
            }
            let mut b = DeviceBackend { handle };
            check_version(&mut b)?;
            Ok(b)
        }

        /// One `DeviceIoControl` with an output buffer of `capacity` bytes.
        fn ioctl(&mut self, code: u32, input: &[u8], capacity: usize) -> Result<Vec<u8>, u32> {
            let mut output = vec![0u8; capacity];
            let mut returned = 0u32;
            let in_len = u32::try_from(input.len()).unwrap_or(u32::MAX);
            let out_len = u32::try_from(output.len()).unwrap_or(u32::MAX);
            // SAFETY: both buffers are live for the whole synchronous call and their lengths
            // are what is passed; the handle was opened without FILE_FLAG_OVERLAPPED, so a
            // null OVERLAPPED makes the call complete before it returns.
            let ok = unsafe {
                DeviceIoControl(
                    self.handle,
                    code,
                    input.as_ptr().cast(),
                    in_len,
                    output.as_mut_ptr().cast(),
                    out_len,
                    &raw mut returned,
                    std::ptr::null_mut(),
                )
            };
            let error = if ok == 0 {
                // SAFETY: reads this thread's last-error value; no other call since
                // DeviceIoControl on this thread.
                unsafe { GetLastError() }
            } else {
                0
            };
            if ok == 0 && error != ERROR_MORE_DATA {
                return Err(error);
            }
            output.truncate(usize::try_from(returned).unwrap_or(0));
            Ok(output)
        }
    }

    impl Backend for DeviceBackend {
        fn call(&mut self, request: &Request) -> Result<Response, CallError> {
            let mut input = Vec::new();
            codec::encode_request(request, &mut input)
                .map_err(|e| CallError::Transport(format!("request cannot be encoded: {e:?}")))?;
            let code = RequestKind::of(request).code();
            let mut capacity = 4096usize;
            // A list that does not fit is answered with 122 and the size that would: one retry
            // with that size, and one more should the list have grown meanwhile.
            for _ in 0..3 {
                let out = self
                    .ioctl(code, &input, capacity)
                    .map_err(|e| CallError::Refused(Win32Error(e)))?;
                match codec::decode_response(RequestKind::of(request), &out) {
                    Ok(Reply::Error(e))
                        if e.win32 == Win32Error::INSUFFICIENT_BUFFER
                            && e.required_size as usize > capacity =>
                    {
                        capacity = e.required_size as usize;
                    }
                    _ => return decode(request, &out),
                }
            }
            Err(CallError::Transport(
                "the answer kept growing; try again".into(),
            ))
        }

        fn endpoint(&self) -> String {
            USER_DEVICE_PATH.to_owned()
        }
    }
}

/// An engine in this process, for tests of the commands.
#[cfg(test)]
pub mod in_process {
    use super::{Backend, CallError};
    use qosmark_abi::{Caller, Privilege, Request, Response};
    use qosmark_engine::{Engine, HandleId, Limits};

    /// One handle on an engine owned by the test.
    #[derive(Debug)]
    pub struct EngineBackend {
        /// The engine (tests inspect it).
        pub engine: Engine,
        /// This connection's handle.
        pub handle: HandleId,
    }

    impl EngineBackend {
        /// A fresh engine and a handle of `privilege`.
        ///
        /// # Panics
        /// If the engine refuses the first handle (it cannot).
        #[must_use]
        pub fn new(privilege: Privilege) -> Self {
            let mut engine = Engine::new(Limits::default());
            #[allow(clippy::expect_used, reason = "test helper")]
            let handle = engine
                .open_handle(Caller {
                    pid: 4242,
                    privilege,
                })
                .expect("first handle");
            EngineBackend { engine, handle }
        }
    }

    impl Backend for EngineBackend {
        fn call(&mut self, request: &Request) -> Result<Response, CallError> {
            self.engine
                .apply(self.handle, request)
                .map_err(|e| CallError::Refused(e.win32()))
        }

        fn endpoint(&self) -> String {
            "in-process engine".into()
        }
    }
}
