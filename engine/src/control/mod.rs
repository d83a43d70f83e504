//! The control plane: handles, flows and sockets with QOS2 semantics, and [`Engine::apply`].
//!
//! Section numbers (§n) refer to `shared/reference/qos-api.md`.
//!
//! ## Handles
//! [`Engine::open_handle`] captures the caller (pid, privilege); ids are non-zero and never
//! reused while open. A closed or unknown handle gets 6 for every request (§9: Wine's
//! Windows-validated tests, not the docs' 87). [`Engine::close_handle`] removes every flow of
//! the handle at once (§5 `QOSCloseHandle`); pending requests would complete with 995, but the
//! engine answers every request synchronously and keeps none pending, so
//! [`CloseReport::requests_aborted`] is always 0 today (overlapped I/O is the back end's).
//!
//! ## Flows (`QOSAddSocketToFlow`, §5, §9, §10)
//! Checked in this order; the first failure answers and nothing changes:
//! 1. flags other than 0 / `QOS_NON_ADAPTIVE_FLOW` → 87;
//! 2. flow id 0 creates a flow; a non-zero id must name a **non-adaptive** flow of **this**
//!    handle (only non-adaptive flows hold several sockets), else 87 (§5 "bad FlowId": an id
//!    of another handle gets the same 87 so it is not revealed). A join keeps the flow's traffic
//!    type and adaptivity; the request's type and flags (valid ones) are ignored;
//! 3. the endpoint (all 87): a connected socket may omit `DestAddr`; if given it must equal the
//!    peer (after v4-mapped normalization). An unconnected socket needs `DestAddr`; a TCP socket
//!    may register before `connect` with local port 0 ("unbound", see [`Engine::socket_bound`]),
//!    an unbound UDP socket may not (nothing to match on yet: bind or send first). The
//!    destination must have an address and a port. An `AF_INET` socket with an IPv6
//!    destination → 87; an `AF_INET6` socket with an IPv4 or v4-mapped destination is accepted
//!    and keyed as IPv4 (qWAVE answers 87 here: deliberate divergence, §10). A socket bound to a
//!    concrete address of the other family than the destination → 87;
//! 4. the resulting key (tier + 5-tuple, see *Lookup* below) already registered → the same socket in
//!    the same flow is a no-op success (repeated registration), anything else — another socket
//!    or another flow with the same 5-tuple — is 183 `ALREADY_EXISTS` (a packet could not tell
//!    them apart);
//! 5. limits (sockets global / per handle, then flows global / per handle) → 1450;
//! 6. allocation failure → 8.
//!
//! The same socket may join the same flow again with another destination (Chromium's pattern:
//! the flow gains a destination entry), and may be in several flows with different
//! destinations (one class per peer on a shared server socket). Marking starts with this call
//! (§5 qosmark choice). Each flow records the pid of the handle's caller; all its entries
//! belong to that process.
//!
//! ## `QOSRemoveSocketFromFlow`
//! Flow id 0, unknown, or another handle's → 1168 (§9). With a socket: that socket leaves the
//! flow with all its destinations; a socket not in the flow → 1168 (the documented error
//! list has no 87 for this call). A flow left without sockets is destroyed (as Windows does
//! for single-socket flows, §5). Without a socket: the whole flow is destroyed.
//!
//! ## `QOSSetFlow`, `QOSQueryFlow`, `QOSNotifyFlow`
//! A flow id that is 0, unknown or another handle's → 1168 first. Then:
//! * `SetFlow(TrafficType)`: live change, the mark is re-resolved. A custom DSCP (below) stays.
//! * `SetFlow(OutgoingDscp)`: above 63 → 87; allowed for `Admin` and `Kernel` callers and for
//!   users when the value's bit is in the table's `user_dscp_allow`, else 5 (§8). The custom
//!   DSCP replaces the table's DSCP until the flow dies; 802.1p still follows the table.
//! * `SetFlow(OutgoingRate)`: the bandwidth (bit/s at the IP level) must be
//!   `shaper::MIN_RATE_BPS..=shaper::MAX_RATE_BPS` (12 000 — one 1 500-byte packet per second —
//!   to 10^11), else 87; `Reason` is kept by nobody. The first rate gives the flow a shaper
//!   ([`crate::shaper`]); a later one reconfigures it: same [`ShaperId`], packets already
//!   scheduled keep their times and nothing departs before them (the bucket's debt, measured
//!   in time, is kept), the new rate and behaviour apply from there. No shaper left
//!   (`Limits::max_shapers`) → 1450, no memory → 8; nothing changes on error. The shaper dies
//!   with the flow (removal of the flow or its last socket, `QOSCloseHandle`). Any caller may
//!   set a rate on its own flow (qos-api.md §8: no privilege documented).
//! * `SetFlow(ClearOutgoingRate)` (qosmark extension, for GQoS): the flow's shaper is removed
//!   (held packets leave at once, as when the flow dies) and the flow is no longer shaped;
//!   a flow without a rate stays as it is. Any caller, on its own flow.
//! * `QueryFlow(OutgoingRate)`: the rate set, or **232 `ERROR_NO_DATA`** when none was
//!   (qos-api.md documents no answer for this; 232 is in `QOSQueryFlow`'s documented error
//!   list and means "nothing to return", where 1168 would read "no such flow" and 50 "not
//!   supported").
//! * `SetFlow(Service)` (qosmark extension for GQoS `QmSetSocketQos`): the service type's
//!   documented default DSCP / 802.1p (Qualitative 0/0, `ControlledLoad` 24/4, Guaranteed 40/5,
//!   `NetworkControl` 48/7, qos-api.md §11.4) become the flow's custom DSCP and 802.1p, so they
//!   hold whatever the table, the traffic type or the flow's adaptivity say. The defaults are
//!   open to every caller, as qWAVE's traffic types are: they are fixed, documented values
//!   (the GQoS admin requirement on Vista+ is UNCONFIRMED, §11.4, and GQoS on XP marked for
//!   ordinary users). A `QOS_DS_CLASS` override that differs from the default follows the
//!   `QOSSetOutgoingDSCPValue` rule (administrators, kernel, or a value on the table's user
//!   allow-list; else 5); a `QOS_TRAFFIC_CLASS` override that differs from the default needs an
//!   administrator or kernel caller (5), as an explicit 802.1p in rules and kernel marks does.
//!   A later `SetFlow(OutgoingDscp)` replaces the DSCP, `SetFlow(TrafficType)` changes nothing
//!   of the mark (the custom values win).
//! * `WatchFlow { flow_id, known }` (GQoS `FD_QOS`): the flow's state now (alive + resolved
//!   mark). Unlike the calls above it is not limited to the handle's own flows: a flow of the
//!   caller's **process** (any handle; administrators and kernel: any flow) is visible, so a
//!   client can wait on a second handle while it goes on using the first; any other id reads
//!   as not alive (nothing is revealed). The engine never holds it: a back end that gets
//!   `known == Some(state now)` holds the request until its state changes or the handle
//!   closes (995) — `docs/linux-transport.md`, the driver's `request` module.
//! * `QueryFlow(PacketPriority)`: the resolved mark; "not added" is reported as 0. The
//!   non-conformant values are the traffic table's (`non_conformant_dscp`, and
//!   `non_conformant_pcp` when the flow requests 802.1p) while the flow's shaping is
//!   `QOSUseNonConformantMarkings`, else 0 (no packet of the flow is ever non-conformant).
//! * `QueryFlow(Fundamentals)` and every `NotifyFlow`: 50 (§9, qosmark does no probing).
//!   `NotifyFlow` first checks its buffer: `Available` needs a threshold and the others must
//!   not have one, else 87.
//!
//! ## Enumeration, rules, table
//! * `EnumerateFlows`: `Admin`/`Kernel` see every flow, users the flows of their own process
//!   (same pid, any handle), ascending (§8, §9).
//! * `ListFlows { after }` (`qosmarkctl flows`): the same visibility, as pages of full records
//!   (pid, type, adaptivity, custom DSCP, mark, counters, socket entries) of the flows with an
//!   id above `after`: at most `codec::MAX_FLOWS_PER_PAGE` (512) flows per page and the first
//!   `codec::MAX_LISTED_SOCKETS` (16) entries of each flow (its total is reported), so a page
//!   always fits one record; `next_after` ≠ 0 says more flows follow. Built from
//!   [`Engine::flow_details`] (one pass over every flow per page: diagnostics, not a hot path).
//! * `ReplaceRules`: `Admin`/`Kernel` only (5); validates every rule first (87), then the
//!   limit (1450), then the names (duplicate → 183), and only then swaps the whole set;
//!   counters of the new rules start at zero.
//! * `AddRule`, `RemoveRule`, `ListRules`, `SetTrafficTable`: `Admin`/`Kernel` only, else 5.
//!   `GetTrafficTable` and `QueryStatus` are open to every handle.
//! * `SetTrafficTable` re-resolves the cached mark of every live flow.
//!
//! ## Lookup (packet path)
//! Socket entries are keyed by IP addresses and ports only (no IPv6 scope id or flow label),
//! v4-mapped addresses normalized to IPv4, in tiers probed in this order, first hit wins:
//! 1. exact: protocol, local address and port, remote address and port;
//! 2. any local address: the socket is bound to `0.0.0.0` / `::` — protocol, local port, remote;
//! 3. (kernel flows only, see [`Engine::add_kernel_flow`]) local endpoint, any remote: protocol, local address
//!    and port — first the packet's local address, then the unspecified address of its family.
//!
//! Kernel flows with a remote endpoint share tiers 1 and 2 with socket flows (one key space: a
//! 5-tuple held by a socket cannot be added by a kernel client, and the other way round, 183).
//! A more specific key always wins, whoever registered it; every flow tier beats every rule.
//!
//! A TCP socket registered before `connect` (local port 0, "unbound") marks nothing until the
//! back end reports its local port with [`Engine::socket_bound`], which moves its entries into
//! tier 1 or 2: before that, its packets cannot be told from another process's packets to
//! the same destination, and a caller may only mark its own traffic (qos-api.md §8). Unbound
//! entries belong to their (handle, socket), so two sockets waiting to connect to the same
//! server never collide.
//!
//! Each tier is one hash map (`hashbrown` with a randomly seeded `foldhash`), so a lookup is
//! four probes at most (tier 3 is skipped while it is empty), O(1) expected, without allocation. Each flow caches its resolved
//! [`Mark`]. Memory: about 100-150 bytes per socket entry plus 100-200 per flow (estimate
//! in the `flows` module docs).
//!
//! ## Limits and request rate
//! Handles, flows and socket entries (globally and per handle) and rules are capped by
//! [`crate::Limits`]; reaching a cap answers 1450 and stores nothing. The rate of requests is
//! capped per handle by a token bucket ([`rate`], [`Engine::apply_at`]): 1450 as well.
//!
//! Every failing request leaves the state unchanged: checks come first, capacity is reserved
//! before anything is written (`try_reserve`), and commits cannot fail.
mod flows;
mod kernel;
pub mod rate;

pub use kernel::KernelFlowState;

pub(crate) use flows::ControlState;
pub use rate::RateLimit;

use crate::counters::Counters;
use crate::shaper::{Behaviour, ShaperConfig, ShaperId};
use crate::{traffic, Engine, EngineError, FiveTuple};
use alloc::vec::Vec;
use core::net::SocketAddr;
use qosmark_abi::codec::{MAX_FLOWS_PER_PAGE, MAX_LISTED_SOCKETS};
use qosmark_abi::{
    Caller, CounterSnapshot, Dscp, FlowId, FlowPage, FlowRecord, FlowSocket, Mark, NotifyFlow,
    PacketPriority, Privilege, Protocol, QueryFlow, Request, Response, SetFlow, SocketBinding,
    StatusInfo, TrafficTable, TrafficType, PROTOCOL_VERSION,
};

/// Identifies an open handle. Never 0; not reused while the handle is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HandleId(pub u32);

/// A socket-flow match on the packet path.
#[derive(Debug)]
pub struct SocketHit<'a> {
    /// Mark to apply.
    pub mark: Mark,
    /// The flow's shaper, if it has an outgoing rate.
    pub shaper: Option<ShaperId>,
    /// The flow's counters.
    pub counters: &'a Counters,
    /// The pid of the flow's owner when it was registered through a `Privilege::User` handle
    /// (whose packets are subject to the ownership check, [`crate::Limits::check_owner`]);
    /// `None` for administrators and the kernel.
    pub user_pid: Option<u32>,
}

/// What [`Engine::close_handle`] removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseReport {
    /// Flows destroyed.
    pub flows_removed: usize,
    /// Socket / destination entries removed with them.
    pub sockets_removed: usize,
    /// Pending requests completed with 995. Always 0: the engine keeps no pending requests.
    pub requests_aborted: usize,
}

/// The local side of a socket entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binding {
    /// Bound to this address and port (lookup tier 1).
    Address(SocketAddr),
    /// Bound to the unspecified address with this port: any local address matches (tier 2).
    AnyAddress {
        /// Local port.
        port: u16,
    },
    /// TCP registered before `connect`: matches nothing until [`Engine::socket_bound`].
    NotBound,
}

/// One socket / destination entry of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketDetail {
    /// Socket value as the owning process knows it.
    pub socket: u64,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Local side.
    pub binding: Binding,
    /// Destination (normalized: v4-mapped shown as IPv4; no scope id). A kernel flow without a
    /// remote endpoint (any remote, lookup tier 3) shows the unspecified address of its local
    /// family with port 0; its local side is then [`Binding::Address`] or
    /// [`Binding::AnyAddress`] as for a socket.
    pub remote: SocketAddr,
}

/// One flow, as listed by [`Engine::flow_details`] (`qosmarkctl flows`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowDetail {
    /// Flow id.
    pub id: FlowId,
    /// Owning handle.
    pub handle: HandleId,
    /// Process id of the handle's caller (owner of every socket of the flow).
    pub pid: u32,
    /// Traffic type.
    pub traffic_type: TrafficType,
    /// Added without `QOS_NON_ADAPTIVE_FLOW`.
    pub adaptive: bool,
    /// DSCP set with `QOSSetOutgoingDSCPValue`.
    pub custom_dscp: Option<Dscp>,
    /// The mark packets get.
    pub mark: Mark,
    /// Packet counters.
    pub counters: CounterSnapshot,
    /// Its shaper, once it has an outgoing rate ([`Engine::shaper_config`],
    /// [`Engine::shaper_stats`]).
    pub shaper: Option<ShaperId>,
    /// Entries in registration order.
    pub sockets: Vec<SocketDetail>,
}

/// One open handle, as listed by [`Engine::handle_details`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandleDetail {
    /// Handle id.
    pub id: HandleId,
    /// Who opened it.
    pub caller: Caller,
    /// Flows it owns.
    pub flows: usize,
    /// Socket entries in its flows.
    pub sockets: usize,
}

/// Everything observable about the control plane, for tests ("an error changes nothing") and
/// diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlSnapshot {
    /// Open handles, ascending.
    pub handles: Vec<HandleDetail>,
    /// Live flows, ascending.
    pub flows: Vec<FlowDetail>,
    /// The traffic table.
    pub table: TrafficTable,
}

fn require_admin(caller: Caller) -> Result<(), EngineError> {
    match caller.privilege {
        Privilege::Admin | Privilege::Kernel => Ok(()),
        Privilege::User => Err(EngineError::AccessDenied),
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Engine {
    /// Opens a handle for `caller` (`QOSCreateHandle`; the back end checked the version).
    ///
    /// # Errors
    /// [`EngineError::LimitReached`] at `max_handles`; [`EngineError::NoMemory`].
    pub fn open_handle(&mut self, caller: Caller) -> Result<HandleId, EngineError> {
        self.control.open_handle(caller)
    }

    /// Closes a handle and destroys every flow it created (`QOSCloseHandle`). The engine has no
    /// pending requests, so none is aborted (see [`CloseReport::requests_aborted`]).
    ///
    /// # Errors
    /// [`EngineError::InvalidHandle`] if the handle is not open.
    pub fn close_handle(&mut self, handle: HandleId) -> Result<CloseReport, EngineError> {
        self.control.close_handle(handle, &mut self.shapers)
    }

    /// [`Engine::apply`] under the per-handle request rate ([`rate`]): charges one request to
    /// `handle` at `now_ns` (the back end's monotonic clock, nanoseconds), then applies it.
    /// Back ends call this for every request a caller sends; [`Engine::apply`] alone is for
    /// trusted callers and tests.
    ///
    /// # Errors
    /// 6 for a closed handle; [`EngineError::LimitReached`] (1450) when the handle's budget is
    /// spent — nothing changes; otherwise as [`Engine::apply`].
    pub fn apply_at(
        &mut self,
        handle: HandleId,
        req: &Request,
        now_ns: u64,
    ) -> Result<Response, EngineError> {
        self.control.charge(handle, now_ns)?;
        self.apply(handle, req)
    }

    /// Charges one request to `handle` at `now_ns` without applying anything: for a back end
    /// that routes requests through several paths (some of them several engine calls for one
    /// caller request) and charges each caller request once, where it enters. `apply_at` is
    /// this followed by [`Engine::apply`].
    ///
    /// # Errors
    /// 6 for a closed handle; [`EngineError::LimitReached`] (1450) when the handle's budget is
    /// spent — nothing changes.
    pub fn charge_request(&mut self, handle: HandleId, now_ns: u64) -> Result<(), EngineError> {
        self.control.charge(handle, now_ns)
    }

    /// The per-handle request rate [`Engine::apply_at`] enforces ([`RateLimit::default`] until
    /// changed).
    #[must_use]
    pub fn rate_limit(&self) -> RateLimit {
        self.control.rate()
    }

    /// Sets the per-handle request rate for every handle, open or future (a smaller burst
    /// takes effect at each handle's next request).
    pub fn set_rate_limit(&mut self, rate: RateLimit) {
        self.control.set_rate(rate);
    }

    /// `SetFlow` (module docs): one operation on a flow of `handle`.
    fn set_flow(
        &mut self,
        handle: HandleId,
        caller: Caller,
        flow_id: FlowId,
        op: &SetFlow,
    ) -> Result<(), EngineError> {
        match op {
            SetFlow::TrafficType(tt) => self.control.set_traffic_type(handle, flow_id, *tt),
            SetFlow::OutgoingDscp(v) => self.control.set_dscp(handle, caller, flow_id, *v),
            SetFlow::Service(m) => self.control.set_service(handle, caller, flow_id, *m),
            SetFlow::OutgoingRate(rate) => self.control.set_flow_rate(
                handle,
                flow_id,
                ShaperConfig::from_flow_rate(rate),
                &mut self.shapers,
            ),
            SetFlow::ClearOutgoingRate => {
                self.control
                    .clear_flow_rate(handle, flow_id, &mut self.shapers)
            }
        }
    }

    /// Applies one control request on behalf of `handle` (module docs for every rule).
    ///
    /// # Errors
    /// The exact [`EngineError`] the QOS2 API documents for the case; the state is unchanged.
    pub fn apply(&mut self, handle: HandleId, req: &Request) -> Result<Response, EngineError> {
        let caller = self.control.handle(handle)?.caller;
        match req {
            Request::QueryStatus => Ok(Response::Status(self.status())),
            Request::AddSocketToFlow {
                socket,
                dest,
                traffic_type,
                flags,
                flow_id,
            } => {
                let add = flows::AddSocket {
                    socket,
                    dest: *dest,
                    traffic_type: *traffic_type,
                    flags: *flags,
                    flow_id: *flow_id,
                };
                self.control.add_socket(handle, &add).map(Response::FlowId)
            }
            Request::RemoveSocketFromFlow { socket, flow_id } => self
                .control
                .remove_socket(handle, *socket, *flow_id, &mut self.shapers)
                .map(|()| Response::Done),
            Request::SetFlow { flow_id, op } => self
                .set_flow(handle, caller, *flow_id, op)
                .map(|()| Response::Done),
            Request::QueryFlow { flow_id, op } => self.query_flow(handle, *flow_id, *op),
            Request::NotifyFlow {
                flow_id,
                op,
                threshold,
            } => {
                self.control.flow_mark(handle, *flow_id)?;
                let buffer_ok = match op {
                    NotifyFlow::Available => threshold.is_some(),
                    NotifyFlow::Congested | NotifyFlow::Uncongested => threshold.is_none(),
                };
                if buffer_ok {
                    Err(EngineError::NotSupported)
                } else {
                    Err(EngineError::InvalidParameter)
                }
            }
            Request::EnumerateFlows => self.control.enumerate(caller).map(Response::FlowIds),
            Request::AddRule(spec) => {
                require_admin(caller)?;
                self.rules
                    .insert(spec.clone(), &mut self.shapers)
                    .map(|()| Response::Done)
            }
            Request::RemoveRule(name) => {
                require_admin(caller)?;
                self.rules
                    .remove(name, &mut self.shapers)
                    .map(|()| Response::Done)
            }
            Request::ListRules => {
                require_admin(caller)?;
                self.rules.list().map(Response::Rules)
            }
            Request::GetTrafficTable => Ok(Response::TrafficTable(*self.control.traffic_table())),
            Request::SetTrafficTable(table) => {
                require_admin(caller)?;
                self.control.set_table(*table);
                Ok(Response::Done)
            }
            Request::ListFlows { after } => self.list_flows(caller, *after).map(Response::Flows),
            Request::ReplaceRules(specs) => {
                require_admin(caller)?;
                self.rules
                    .replace(specs, &mut self.shapers)
                    .map(|()| Response::Done)
            }
            // The engine answers with the state now; holding the request while the state
            // equals `known` is the back end's part (module docs).
            Request::WatchFlow { flow_id, .. } => Ok(Response::FlowState(
                self.control.watch_state(caller, *flow_id),
            )),
        }
    }

    /// `QOSQueryFlow` (module docs).
    fn query_flow(
        &self,
        handle: HandleId,
        flow_id: FlowId,
        op: QueryFlow,
    ) -> Result<Response, EngineError> {
        let mark = self.control.flow_mark(handle, flow_id)?;
        let config = self
            .control
            .flow_shaper(handle, flow_id)?
            .and_then(|s| self.shapers.config(s));
        match op {
            QueryFlow::PacketPriority => {
                let nc = match config {
                    Some(c) if c.behaviour() == Behaviour::NonConformantMark => {
                        traffic::non_conformant_mark(self.control.traffic_table(), mark)
                    }
                    _ => Mark::default(),
                };
                Ok(Response::PacketPriority(PacketPriority {
                    conformant_dscp: mark.dscp.map_or(0, |d| u32::from(d.value())),
                    non_conformant_dscp: nc.dscp.map_or(0, |d| u32::from(d.value())),
                    conformant_l2: mark.pcp.map_or(0, |p| u32::from(p.value())),
                    non_conformant_l2: nc.pcp.map_or(0, |p| u32::from(p.value())),
                }))
            }
            QueryFlow::OutgoingRate => config
                .map(|c| Response::OutgoingRate(c.rate_bps()))
                .ok_or(EngineError::NoData),
            QueryFlow::Fundamentals => Err(EngineError::NotSupported),
        }
    }

    /// One `ListFlows` page for `caller`: the visible flows (all for `Admin`/`Kernel`, else
    /// the caller's process's, as `EnumerateFlows`) with an id above `after`, ascending, at
    /// most `MAX_FLOWS_PER_PAGE`, each with its first `MAX_LISTED_SOCKETS` entries.
    fn list_flows(&self, caller: Caller, after: FlowId) -> Result<FlowPage, EngineError> {
        let all = matches!(caller.privilege, Privilege::Admin | Privilege::Kernel);
        let page_max = MAX_FLOWS_PER_PAGE as usize;
        let mut visible = self
            .flow_details()?
            .into_iter()
            .filter(|d| d.id > after && (all || d.pid == caller.pid));
        let mut flows = Vec::new();
        flows.try_reserve_exact(page_max.min(self.control.counts().1))?;
        for d in visible.by_ref().take(page_max) {
            let mut sockets = Vec::new();
            let listed = d.sockets.len().min(MAX_LISTED_SOCKETS as usize);
            sockets.try_reserve_exact(listed)?;
            sockets.extend(d.sockets.iter().take(listed).map(|s| FlowSocket {
                socket: s.socket,
                protocol: s.protocol,
                binding: match s.binding {
                    Binding::Address(a) => SocketBinding::Address(a),
                    Binding::AnyAddress { port } => SocketBinding::AnyAddress { port },
                    Binding::NotBound => SocketBinding::NotBound,
                },
                remote: s.remote,
            }));
            flows.push(FlowRecord {
                id: d.id,
                pid: d.pid,
                traffic_type: d.traffic_type,
                adaptive: d.adaptive,
                custom_dscp: d.custom_dscp,
                mark: d.mark,
                counters: d.counters,
                sockets_total: to_u32(d.sockets.len()),
                sockets,
            });
        }
        let more = visible.next().is_some();
        let next_after = match flows.last() {
            Some(last) if more => last.id,
            _ => 0,
        };
        Ok(FlowPage { flows, next_after })
    }

    fn status(&self) -> StatusInfo {
        let (handles, flows, sockets) = self.control.counts();
        let mut status = StatusInfo {
            protocol_version: PROTOCOL_VERSION,
            handles: to_u32(handles),
            flows: to_u32(flows),
            sockets: to_u32(sockets),
            rules: to_u32(self.rules.len()),
            shapers: to_u32(self.shapers.len()),
            ..StatusInfo::default()
        };
        self.stats.fill_status(&mut status);
        status
    }

    /// Tells the engine that `socket` of `handle`'s process is now bound to `local` (a TCP
    /// socket registered before `connect`, whose local port the back end learned afterwards).
    /// Its unbound entries move to the exact tier (or the any-address tier when `local` is
    /// unspecified). Returns how many entries were pinned (0 if the socket had none).
    ///
    /// # Errors
    /// 6 for a closed handle; 87 for port 0 or a `local` of the other family than an entry's
    /// destination; 183 when a pinned 5-tuple is already registered; 8. All or nothing.
    pub fn socket_bound(
        &mut self,
        handle: HandleId,
        socket: u64,
        local: SocketAddr,
    ) -> Result<usize, EngineError> {
        self.control.socket_bound(handle, socket, local)
    }

    /// The flow an outbound packet with this 5-tuple belongs to, and its mark (the socket-flow
    /// part of classification; diagnostics and `qosmarkctl explain`).
    #[must_use]
    pub fn socket_lookup(&self, tuple: &FiveTuple) -> Option<(FlowId, Mark)> {
        self.control
            .lookup_flow(tuple)
            .map(|(id, f)| (id, f.mark()))
    }

    /// Owned records of every live flow, ascending by id (`qosmarkctl flows`).
    ///
    /// # Errors
    /// [`EngineError::NoMemory`].
    pub fn flow_details(&self) -> Result<Vec<FlowDetail>, EngineError> {
        self.control.details(None)
    }

    /// Owned records of the open handles, ascending by id.
    ///
    /// # Errors
    /// [`EngineError::NoMemory`].
    pub fn handle_details(&self) -> Result<Vec<HandleDetail>, EngineError> {
        self.control.handle_details()
    }

    /// Everything observable about the control plane.
    ///
    /// # Errors
    /// [`EngineError::NoMemory`].
    pub fn control_snapshot(&self) -> Result<ControlSnapshot, EngineError> {
        Ok(ControlSnapshot {
            handles: self.handle_details()?,
            flows: self.flow_details()?,
            table: *self.control.traffic_table(),
        })
    }

    /// A connection of process `pid` ended: the socket registered for exactly `tuple` by a
    /// flow of that process leaves its flow, as `QOSRemoveSocketFromFlow` would (a flow left
    /// empty is destroyed, its shaper with it). The Windows driver calls this when a TCP ALE
    /// flow is deleted (a TCP ALE flow lives as long as its connected socket), so closing or
    /// disconnecting a registered TCP socket ends its marking there as on Linux, where
    /// `qosmarkd` retires closed sockets itself. Returns the flow the socket left, `None`
    /// when nothing matched.
    pub fn connection_closed(&mut self, tuple: &FiveTuple, pid: u32) -> Option<FlowId> {
        self.control
            .connection_closed(tuple, pid, &mut self.shapers)
    }

    /// A socket of process `pid` bound to `local` (connected to `remote`, if given) was
    /// closed: its entries leave their flows, as `QOSRemoveSocketFromFlow` would (flows left
    /// empty are destroyed with their shapers). The Windows driver calls this from its
    /// `ALE_ENDPOINT_CLOSURE` callout, so closing a registered UDP or TCP socket ends its
    /// marking there as on Linux. Matching rules: `control::flows` (`endpoint_closed`). Returns
    /// the number of socket entries removed.
    pub fn endpoint_closed(
        &mut self,
        protocol: qosmark_abi::Protocol,
        local: core::net::SocketAddr,
        remote: Option<core::net::SocketAddr>,
        pid: u32,
    ) -> usize {
        self.control
            .endpoint_closed(protocol, local, remote, pid, &mut self.shapers)
    }

    /// The shaper of the admin rule called `name`, if it throttles (`throttle_bps`): one bucket
    /// for all the traffic the rule matches. Dies when the rule is removed or replaced.
    #[must_use]
    pub fn rule_shaper(&self, name: &qosmark_abi::heapless_name::RuleName) -> Option<ShaperId> {
        self.rules.shaper_of(name)
    }

    /// Checks the control plane's internal invariants (index ⇔ flows ⇔ handle counts, cached
    /// marks up to date, every flow's and rule's shaper live). For tests and debug builds of the back ends.
    ///
    /// # Errors
    /// A description of the first violated invariant.
    pub fn check_control_invariants(&self) -> Result<(), &'static str> {
        self.control.check_invariants(&self.shapers)?;
        self.rules.check_shapers(&self.shapers)
    }
}
