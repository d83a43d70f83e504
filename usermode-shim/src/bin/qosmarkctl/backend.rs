//! The connection to the back end: the shim's [`qosmark::Client`] over the Windows driver
//! (`\\.\QosMark`) or the Linux daemon (`qosmarkd`'s unix socket, `docs/linux-transport.md`).
//!
//! `qosmarkctl` only needs "send one request, get its answer"; [`Backend`] is that, and the
//! commands are written against it so that tests can run them over an in-process engine.
//! The client checks the protocol version when it connects, as `QOSCreateHandle` does. This
//! module turns the Win32 code of a failed connect into a message that says what to do next.

use qosmark::Client;
use qosmark_abi::status::Win32Error;
use qosmark_abi::{Request, Response, PROTOCOL_VERSION};

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
    /// The Win32 code of the failure: the back end's answer, or the transport's (1164 when
    /// the connection broke).
    fn call(&mut self, request: &Request) -> Result<Response, Win32Error>;

    /// Where the back end is: the socket path or the device name.
    fn endpoint(&self) -> String;
}

/// A [`Client`] and the place it is connected to.
#[derive(Debug)]
pub struct ClientBackend {
    client: Client,
    endpoint: String,
}

impl Backend for ClientBackend {
    fn call(&mut self, request: &Request) -> Result<Response, Win32Error> {
        self.client
            .request(request)
            .map_err(qosmark::QosError::code)
    }

    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }
}

/// What to tell the user when connecting to `endpoint` failed with `code`.
#[must_use]
pub fn open_error(endpoint: &str, code: Win32Error) -> OpenError {
    let message = match code.0 {
        1068 if cfg!(windows) => format!(
            "driver not installed or not started ({endpoint} not found): install it with \
             `pnputil /add-driver qosmark.inf /install`, then `sc start QosMark` (as \
             administrator)"
        ),
        1068 => format!(
            "qosmarkd is not running (socket {endpoint}): start it with `sudo qosmarkd`, or set \
             QOSMARK_SOCKET to the socket it listens on"
        ),
        5 if cfg!(windows) => format!("access to {endpoint} denied: run as administrator"),
        5 => format!(
            "no permission to open {endpoint}: run as root, or ask the administrator to make \
             the socket accessible"
        ),
        1306 => format!(
            "{endpoint}: qosmarkctl and the back end are different versions (qosmarkctl speaks \
             protocol {PROTOCOL_VERSION}): install matching versions"
        ),
        n if cfg!(windows) => format!(
            "cannot open {endpoint} (Win32 error {n}): check the QosMark service with \
             `sc query QosMark`"
        ),
        n => format!(
            "cannot talk to qosmarkd at {endpoint} (Win32 error {n}): check that this is \
             qosmarkd's socket and see qosmarkd's log"
        ),
    };
    OpenError {
        win32: code,
        message,
    }
}

/// Opens the platform's back end: the socket of `QOSMARK_SOCKET` or
/// `/run/qosmark/qosmark.sock` on unix, the driver's device on Windows.
///
/// # Errors
/// [`OpenError`] with the message to print.
pub fn open() -> Result<Box<dyn Backend>, OpenError> {
    #[cfg(unix)]
    let (endpoint, connected) = {
        let path = qosmark::unix::socket_path();
        (path.display().to_string(), Client::connect_unix(&path))
    };
    #[cfg(not(unix))]
    let (endpoint, connected) = (
        qosmark_abi::ioctl::USER_DEVICE_PATH.to_owned(),
        Client::connect(),
    );
    let client = connected.map_err(|e| open_error(&endpoint, e.code()))?;
    Ok(Box::new(ClientBackend { client, endpoint }))
}

/// A [`Backend`] over an in-process engine, for tests of the commands.
#[cfg(test)]
pub mod in_process {
    use super::ClientBackend;
    use qosmark::Client;
    use qosmark_abi::{Caller, Privilege};
    use qosmark_engine::{Engine, Limits};
    use std::sync::{Arc, Mutex};

    /// A fresh engine and one handle of `privilege` on it (pid 4242); the engine is returned
    /// too so that tests can add flows from other handles.
    ///
    /// # Panics
    /// If the engine refuses the first handle (it cannot).
    #[must_use]
    pub fn backend(privilege: Privilege) -> (ClientBackend, Arc<Mutex<Engine>>) {
        let engine = Arc::new(Mutex::new(Engine::new(Limits::default())));
        #[allow(clippy::expect_used, reason = "test helper")]
        let client = Client::in_process(
            engine.clone(),
            Caller {
                pid: 4242,
                privilege,
            },
        )
        .expect("first handle");
        (
            ClientBackend {
                client,
                endpoint: "in-process engine".into(),
            },
            engine,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::open_error;
    use qosmark_abi::status::Win32Error;

    #[test]
    fn connect_failures_say_what_to_do() {
        let m = |code| open_error("/run/q.sock", Win32Error(code)).message;
        if cfg!(windows) {
            assert!(m(1068).starts_with("driver not installed or not started"));
            assert!(m(5).contains("run as administrator"));
        } else {
            assert_eq!(
                m(1068),
                "qosmarkd is not running (socket /run/q.sock): start it with `sudo qosmarkd`, \
                 or set QOSMARK_SOCKET to the socket it listens on"
            );
            assert!(m(5).contains("run as root"));
            assert!(m(31).contains("Win32 error 31"));
        }
        assert!(m(1306).contains("different versions"));
        assert_eq!(open_error("x", Win32Error(5)).win32, Win32Error(5));
    }
}
