//! [`Client`]: one connection to a qosmark back end (one QOS2 handle), sending one
//! [`Request`] and returning its [`Response`] or the Win32 error. `qosmarkctl` and the QOS2
//! API ([`crate::qos2`]) are both built on it.
//!
//! Transports ([`Transport`]):
//! * **in-process** ([`InProcess`]): straight into an `Arc<Mutex<Engine>>` with a given
//!   [`Caller`], for tests. Every request and answer still goes through the `abi` encoder and
//!   decoder, so the in-process path exercises the same records as the real ones. It never
//!   holds a request: a `WatchFlow` that a back end would hold (its state is the one the
//!   caller knows) answers 997 `ERROR_IO_PENDING`;
//! * **unix socket** ([`crate::unix::UnixTransport`], Unix): `qosmarkd`, per
//!   `docs/linux-transport.md`;
//! * **device** (`crate::windows::DeviceTransport`, Windows): `\\.\QosMark` and
//!   `DeviceIoControl`.
//!
//! [`Client::connect`] picks the platform's real back end.

use crate::error::{QosError, Result};
use crate::socket::RawSock;
use qosmark_abi::codec::{self, Reply};
use qosmark_abi::heapless_name::RuleName;
use qosmark_abi::ioctl::RequestKind;
use qosmark_abi::{
    Caller, FlowId, FlowRecord, Request, Response, RuleEntry, RuleSpec, StatusInfo, TrafficTable,
};
use qosmark_engine::{Engine, HandleId};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// One way of carrying requests to a back end. Implementations answer exactly one response
/// (or error) per request, in order.
pub trait Transport: Send {
    /// Sends `request` and waits for its answer. `socket` is the socket named by an
    /// `AddSocketToFlow` (the unix transport passes it with `SCM_RIGHTS`); `None` otherwise.
    ///
    /// # Errors
    /// The back end's Win32 code, or the transport's own (module docs of each transport).
    fn call(&mut self, request: &Request, socket: Option<RawSock>) -> Result<Response>;

    /// The device `HANDLE` value (Windows), for the overlapped QOS2 calls that bypass the
    /// shim.
    #[cfg(windows)]
    fn device(&self) -> Option<usize> {
        None
    }
}

/// Locks a mutex, taking the data of a poisoned one (a panic elsewhere does not make the
/// engine or a connection unusable for the C ABI).
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The in-process transport: one engine handle, opened at creation, closed on drop.
pub struct InProcess {
    engine: Arc<Mutex<Engine>>,
    handle: HandleId,
}

impl InProcess {
    /// Opens a handle on `engine` for `caller`.
    ///
    /// # Errors
    /// 1450 when the engine's handle limit is reached, 8.
    pub fn open(engine: Arc<Mutex<Engine>>, caller: Caller) -> Result<Self> {
        let handle = lock(&engine).open_handle(caller)?;
        Ok(InProcess { engine, handle })
    }

    /// The engine handle (for tests that look at the engine directly).
    #[must_use]
    pub fn handle(&self) -> HandleId {
        self.handle
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        // Closing twice cannot happen (the handle is owned); an error here has no one to go to.
        let _closed = lock(&self.engine).close_handle(self.handle);
    }
}

impl Transport for InProcess {
    fn call(&mut self, request: &Request, _socket: Option<RawSock>) -> Result<Response> {
        // Through the wire format both ways, as the real transports do.
        let mut bytes = Vec::new();
        codec::encode_request(request, &mut bytes)?;
        let decoded = codec::decode_request(&bytes)?;
        let response = lock(&self.engine).apply(self.handle, &decoded)?;
        // A back end would hold a WatchFlow whose state has not changed; this transport
        // cannot (the caller holds no thread of ours), so it says so.
        if matches!(
            (&decoded, &response),
            (Request::WatchFlow { known: Some(k), .. }, Response::FlowState(now)) if k == now
        ) {
            return Err(QosError::new(qosmark_abi::status::Win32Error::IO_PENDING));
        }
        bytes.clear();
        codec::encode_response(&response, &mut bytes)?;
        match codec::decode_response(RequestKind::of(request), &bytes)? {
            Reply::Response(r) => Ok(r),
            Reply::Error(e) => Err(QosError::new(e.win32)),
        }
    }
}

/// One connection to a qosmark back end = one QOS2 handle. Thread-safe: requests from several
/// threads are serialized. Dropping it closes the handle (every flow it created goes away).
pub struct Client {
    transport: Mutex<Box<dyn Transport>>,
    #[cfg(windows)]
    device: Option<usize>,
}

impl core::fmt::Debug for Client {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

fn unexpected(_: Response) -> QosError {
    // The decoder only lets through answers that fit the request (`codec::answers`); a
    // mismatch here would be a back-end bug.
    QosError::GEN_FAILURE
}

impl Client {
    /// A client over any transport.
    #[must_use]
    pub fn from_transport(transport: Box<dyn Transport>) -> Client {
        Client {
            #[cfg(windows)]
            device: transport.device(),
            transport: Mutex::new(transport),
        }
    }

    /// Opens the platform's back end: on Unix the `qosmarkd` socket (`QOSMARK_SOCKET` or
    /// `/run/qosmark/qosmark.sock`), on Windows the `\\.\QosMark` device.
    ///
    /// # Errors
    /// 2 when the back end is absent, 5 without permission, 1306 on a protocol version
    /// mismatch, 31 otherwise (see the transport modules).
    pub fn connect() -> Result<Client> {
        #[cfg(unix)]
        {
            crate::unix::UnixTransport::connect_default()
                .map(|t| Client::from_transport(Box::new(t)))
        }
        #[cfg(windows)]
        {
            crate::windows::DeviceTransport::open().map(|t| Client::from_transport(Box::new(t)))
        }
    }

    /// Connects to the `qosmarkd` socket at `path`.
    ///
    /// # Errors
    /// As [`Client::connect`].
    #[cfg(unix)]
    pub fn connect_unix(path: &std::path::Path) -> Result<Client> {
        crate::unix::UnixTransport::connect(path).map(|t| Client::from_transport(Box::new(t)))
    }

    /// An in-process client on `engine` for `caller` (tests).
    ///
    /// # Errors
    /// As [`InProcess::open`].
    pub fn in_process(engine: Arc<Mutex<Engine>>, caller: Caller) -> Result<Client> {
        InProcess::open(engine, caller).map(|t| Client::from_transport(Box::new(t)))
    }

    /// Sends one request and returns its answer.
    ///
    /// # Errors
    /// The Win32 code of the failure.
    pub fn request(&self, request: &Request) -> Result<Response> {
        lock(&self.transport).call(request, None)
    }

    /// [`Client::request`] for an `AddSocketToFlow` naming `socket`.
    pub(crate) fn request_with_socket(
        &self,
        request: &Request,
        socket: RawSock,
    ) -> Result<Response> {
        lock(&self.transport).call(request, Some(socket))
    }

    /// The device `HANDLE` value (Windows).
    #[cfg(windows)]
    pub(crate) fn device(&self) -> Option<usize> {
        self.device
    }

    /// Protocol version and global counters (`QueryStatus`).
    ///
    /// # Errors
    /// As [`Client::request`].
    pub fn status(&self) -> Result<StatusInfo> {
        match self.request(&Request::QueryStatus)? {
            Response::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Ids of the flows this caller may see (`EnumerateFlows`: administrators all, others
    /// their process's), ascending.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub fn enumerate_flows(&self) -> Result<Vec<FlowId>> {
        match self.request(&Request::EnumerateFlows)? {
            Response::FlowIds(ids) => Ok(ids),
            other => Err(unexpected(other)),
        }
    }

    /// Every visible flow with its details (`ListFlows`, all pages), ascending by id. Each
    /// flow lists at most `codec::MAX_LISTED_SOCKETS` socket entries; `sockets_total` has
    /// the full count.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub fn list_flows(&self) -> Result<Vec<FlowRecord>> {
        let mut out: Vec<FlowRecord> = Vec::new();
        let mut after = 0;
        loop {
            let page = match self.request(&Request::ListFlows { after })? {
                Response::Flows(p) => p,
                other => return Err(unexpected(other)),
            };
            out.try_reserve(page.flows.len())
                .map_err(|_| QosError::NO_MEMORY)?;
            out.extend(page.flows);
            // `next_after` is the last id of a non-empty page (checked by the decoder), so
            // each round moves forward and the loop ends.
            if page.next_after == 0 || page.next_after <= after {
                return Ok(out);
            }
            after = page.next_after;
        }
    }

    /// The administrator rules with their counters, in insertion order (admin).
    ///
    /// # Errors
    /// 5 for non-administrators; as [`Client::request`].
    pub fn rules(&self) -> Result<Vec<RuleEntry>> {
        match self.request(&Request::ListRules)? {
            Response::Rules(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Adds a rule (admin).
    ///
    /// # Errors
    /// 5, 87, 183 (name taken), 1450.
    pub fn add_rule(&self, spec: RuleSpec) -> Result<()> {
        self.done(&Request::AddRule(spec))
    }

    /// Removes the rule called `name` (admin).
    ///
    /// # Errors
    /// 5, 1168 (no such rule).
    pub fn remove_rule(&self, name: RuleName) -> Result<()> {
        self.done(&Request::RemoveRule(name))
    }

    /// Replaces the whole rule set atomically (admin; `qosmarkctl rules load FILE`).
    ///
    /// # Errors
    /// 5, 87 (a rule is invalid), 183 (duplicate names), 1450; nothing changes on error.
    pub fn replace_rules(&self, specs: Vec<RuleSpec>) -> Result<()> {
        self.done(&Request::ReplaceRules(specs))
    }

    /// The traffic-type table and the user DSCP allow-list.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub fn traffic_table(&self) -> Result<TrafficTable> {
        match self.request(&Request::GetTrafficTable)? {
            Response::TrafficTable(t) => Ok(t),
            other => Err(unexpected(other)),
        }
    }

    /// Replaces the traffic-type table (admin).
    ///
    /// # Errors
    /// 5; as [`Client::request`].
    pub fn set_traffic_table(&self, table: TrafficTable) -> Result<()> {
        self.done(&Request::SetTrafficTable(table))
    }

    fn done(&self, request: &Request) -> Result<()> {
        match self.request(request)? {
            Response::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}
