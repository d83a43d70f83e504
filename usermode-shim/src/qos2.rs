//! The QOS2 (qWAVE) API in Rust: [`QosHandle`] mirrors `QOSCreateHandle` … `QOSCancel` with
//! the same semantics and the same Win32 codes (qos-api.md §4-§10), as [`QosError`]s.
//!
//! | QOS2 | here |
//! |---|---|
//! | `QOSCreateHandle` | [`QosHandle::create`] (platform back end), [`QosHandle::with_client`] |
//! | `QOSCloseHandle` | `drop` (every flow of the handle goes away) |
//! | `QOSAddSocketToFlow` | [`QosHandle::add_socket_to_flow`] (flow id in: 0 = new; out: the id) |
//! | `QOSRemoveSocketFromFlow` | [`QosHandle::remove_socket_from_flow`] (`None` = whole flow) |
//! | `QOSSetFlow` | [`QosHandle::set_flow`] |
//! | `QOSQueryFlow` | [`QosHandle::query_flow`] |
//! | `QOSNotifyFlow` | [`QosHandle::notify_flow`] |
//! | `QOSCancel` | [`QosHandle::cancel`] |
//! | `QOSEnumerateFlows` | [`QosHandle::enumerate_flows`] |
//! | `QOSStartTrackingClient` / `QOSStopTrackingClient` | [`QosHandle::start_tracking_client`] / [`QosHandle::stop_tracking_client`] |
//!
//! What qosmark does differently from qWAVE (all documented in qos-api.md):
//! * marking starts with `add_socket_to_flow`; dual-stack sockets with IPv4 / IPv4-mapped
//!   destinations are accepted (qWAVE: 87);
//! * `set_flow(OutgoingRate)` / `query_flow(OutgoingRate)` pass through to the back end's
//!   engine: a rate of 12 000 ..= 100 000 000 000 bit/s (else 87) shapes the flow
//!   (`docs/shaping.md`); querying a flow without a rate answers 232 `ERROR_NO_DATA`;
//! * `query_flow(Fundamentals)` and every `notify_flow` answer 50 `ERROR_NOT_SUPPORTED`:
//!   qosmark runs no path probing;
//! * `start_tracking_client` / `stop_tracking_client` succeed and do nothing: tracking exists
//!   for qWAVE's path experiments, and qosmark's marking never depends on them;
//! * the Rust API is synchronous, so nothing is ever pending: [`QosHandle::cancel`] answers
//!   1168 `ERROR_NOT_FOUND` (what `CancelIoEx` answers when nothing matches). Overlapped
//!   calls exist in the C ABI on Windows.

use crate::client::Client;
use crate::error::{QosError, Result};
use crate::socket::{self, AsQosSocket, RawSock};
use core::net::SocketAddr;
use qosmark_abi::status::Win32Error;
use qosmark_abi::{
    FlowId, NotifyFlow, PacketPriority, QueryFlow, Request, Response, SetFlow, TrafficType,
};

/// `QOS_VERSION`: the only version QOS2 (and qosmark) accepts is 1.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QosVersion {
    /// Must be 1.
    pub major: u16,
    /// Must be 0.
    pub minor: u16,
}

impl QosVersion {
    /// 1.0.
    pub const V1_0: QosVersion = QosVersion { major: 1, minor: 0 };
}

/// The result of [`QosHandle::query_flow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowQuery {
    /// `QOSQueryPacketPriority`: `QOS_PACKET_PRIORITY`.
    PacketPriority(PacketPriority),
    /// `QOSQueryOutgoingRate`: bit/s.
    OutgoingRate(u64),
}

/// A QOS2 handle (`QOSCreateHandle`). Closing it is `Drop`.
#[derive(Debug)]
pub struct QosHandle {
    client: Client,
}

impl QosHandle {
    /// `QOSCreateHandle(1.0)` on the platform back end.
    ///
    /// # Errors
    /// 2 back end absent, 5, 1306, 31 ([`Client::connect`]).
    pub fn create() -> Result<QosHandle> {
        Client::connect().map(QosHandle::with_client)
    }

    /// `QOSCreateHandle` with an explicit version: anything but 1.0 → 87 (qos-api.md §5).
    ///
    /// # Errors
    /// 87 for another version; as [`QosHandle::create`].
    pub fn create_version(version: QosVersion) -> Result<QosHandle> {
        if version != QosVersion::V1_0 {
            return Err(QosError::INVALID_PARAMETER);
        }
        Self::create()
    }

    /// A handle over an existing client (any transport; tests use the in-process one).
    #[must_use]
    pub fn with_client(client: Client) -> QosHandle {
        QosHandle { client }
    }

    /// The underlying client.
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `QOSAddSocketToFlow`: registers `socket` (with `dest` when given) in flow `flow_id` (0 =
    /// a new flow) and returns the flow id. Local side, protocol and peer come from the socket
    /// ([`crate::socket`] for the `DestAddr` rules).
    ///
    /// # Errors
    /// 87 (bad socket, flags, flow id, destination), 183 (the 5-tuple is another socket's or
    /// flow's), 1450, 8, 6.
    pub fn add_socket_to_flow<S: AsQosSocket + ?Sized>(
        &self,
        socket: &S,
        dest: Option<SocketAddr>,
        traffic_type: TrafficType,
        flags: u32,
        flow_id: FlowId,
    ) -> Result<FlowId> {
        self.add_raw_socket_to_flow(socket.raw_socket(), dest, traffic_type, flags, flow_id)
    }

    /// [`QosHandle::add_socket_to_flow`] with a raw socket value (the C ABI's `SOCKET`).
    ///
    /// # Errors
    /// As [`QosHandle::add_socket_to_flow`].
    pub fn add_raw_socket_to_flow(
        &self,
        socket: RawSock,
        dest: Option<SocketAddr>,
        traffic_type: TrafficType,
        flags: u32,
        flow_id: FlowId,
    ) -> Result<FlowId> {
        let info = socket::socket_info(socket)?;
        let request = Request::AddSocketToFlow {
            socket: info,
            dest,
            traffic_type,
            flags,
            flow_id,
        };
        match self.client.request_with_socket(&request, socket)? {
            Response::FlowId(id) => Ok(id),
            _ => Err(QosError::GEN_FAILURE),
        }
    }

    /// `QOSRemoveSocketFromFlow`: `socket` leaves flow `flow_id`, or (`None`) the whole flow
    /// is destroyed.
    ///
    /// # Errors
    /// 1168 (flow id 0, unknown, another handle's, or the socket is not in the flow), 6.
    pub fn remove_socket_from_flow<S: AsQosSocket + ?Sized>(
        &self,
        socket: Option<&S>,
        flow_id: FlowId,
    ) -> Result<()> {
        self.remove_raw_socket_from_flow(socket.map(AsQosSocket::raw_socket), flow_id)
    }

    /// [`QosHandle::remove_socket_from_flow`] with a raw socket value.
    ///
    /// # Errors
    /// As [`QosHandle::remove_socket_from_flow`].
    pub fn remove_raw_socket_from_flow(
        &self,
        socket: Option<RawSock>,
        flow_id: FlowId,
    ) -> Result<()> {
        self.done(&Request::RemoveSocketFromFlow {
            socket: socket.map(socket::socket_value),
            flow_id,
        })
    }

    /// `QOSSetFlow`: traffic type, outgoing rate (shaping: 12 000 ..= 10^11 bit/s, else 87;
    /// the engine's `shaper` module) or outgoing DSCP
    /// (administrators, or users for DSCP values the administrator allowed; else 5).
    ///
    /// # Errors
    /// 1168, 87 (DSCP > 63, rate out of range), 5, 1450 (no shaper left), 8, 6.
    pub fn set_flow(&self, flow_id: FlowId, op: SetFlow) -> Result<()> {
        self.done(&Request::SetFlow { flow_id, op })
    }

    /// `QOSQueryFlow`: packet priority (the marks the flow's packets get; "not added" reads 0;
    /// the non-conformant values are the table's under `QOSUseNonConformantMarkings`, else 0)
    /// or outgoing rate (232 `ERROR_NO_DATA` when the flow has none). Fundamentals → 50
    /// `ERROR_NOT_SUPPORTED` (qosmark does no path probing).
    ///
    /// # Errors
    /// 1168, 232, 50, 6.
    pub fn query_flow(&self, flow_id: FlowId, op: QueryFlow) -> Result<FlowQuery> {
        match self.client.request(&Request::QueryFlow { flow_id, op })? {
            Response::PacketPriority(p) => Ok(FlowQuery::PacketPriority(p)),
            Response::OutgoingRate(r) => Ok(FlowQuery::OutgoingRate(r)),
            _ => Err(QosError::GEN_FAILURE),
        }
    }

    /// `QOSNotifyFlow`: `threshold` (bit/s) is required for `Available` and must be `None`
    /// otherwise (87). qosmark does not observe congestion: a valid request answers 50.
    ///
    /// # Errors
    /// 1168, 87, 50, 6.
    pub fn notify_flow(
        &self,
        flow_id: FlowId,
        op: NotifyFlow,
        threshold: Option<u64>,
    ) -> Result<()> {
        self.done(&Request::NotifyFlow {
            flow_id,
            op,
            threshold,
        })
    }

    /// `QOSCancel`: nothing is ever pending on this synchronous API, so this answers 1168
    /// `ERROR_NOT_FOUND` (module docs).
    ///
    /// # Errors
    /// Always 1168.
    pub fn cancel(&self) -> Result<()> {
        Err(QosError::new(Win32Error::NOT_FOUND))
    }

    /// `QOSEnumerateFlows`: administrators get every flow, other callers the flows of their
    /// own process (qosmark choice; qWAVE requires administrators, qos-api.md §8).
    ///
    /// # Errors
    /// 6, 8.
    pub fn enumerate_flows(&self) -> Result<Vec<FlowId>> {
        self.client.enumerate_flows()
    }

    /// `QOSStartTrackingClient`: accepted, nothing to do (module docs).
    ///
    /// # Errors
    /// 87 when `flags` is not 0 (reserved).
    pub fn start_tracking_client(&self, _dest: SocketAddr, flags: u32) -> Result<()> {
        reserved(flags)
    }

    /// `QOSStopTrackingClient`: accepted, nothing to do (module docs).
    ///
    /// # Errors
    /// 87 when `flags` is not 0 (reserved).
    pub fn stop_tracking_client(&self, _dest: SocketAddr, flags: u32) -> Result<()> {
        reserved(flags)
    }

    fn done(&self, request: &Request) -> Result<()> {
        match self.client.request(request)? {
            Response::Done => Ok(()),
            _ => Err(QosError::GEN_FAILURE),
        }
    }
}

fn reserved(flags: u32) -> Result<()> {
    if flags == 0 {
        Ok(())
    } else {
        Err(QosError::INVALID_PARAMETER)
    }
}
