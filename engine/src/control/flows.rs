//! Storage of handles, flows and socket entries, and the packet-path lookup.
//!
//! ## Data layout
//! * `handles`: [`HandleId`] → caller and per-handle counts (for the per-handle limits).
//! * `flows`: [`FlowId`] → [`Flow`]: owner, traffic type, custom DSCP, adaptivity, the
//!   *resolved* [`Mark`] (recomputed whenever the type, the custom DSCP or the table changes, so
//!   the packet path never consults the table), its counters and its socket entries.
//! * Three lookup tiers, each a `hashbrown` map with a keyed `foldhash` hasher (random seed,
//!   from address-space randomization in `no_std`), from a key to the flow id:
//!   1. **exact**: (protocol, local address, local port, remote address, remote port);
//!   2. **any local address**: (protocol, local port, remote address, remote port) — the socket
//!      is bound to `0.0.0.0` / `::`, so any local address with that port matches;
//!   3. **unbound**: (handle, socket, protocol, remote address, remote port) — a TCP socket
//!      registered before `connect` bound it (local port 0). These entries are private to
//!      their socket and **never match a packet**: until the back end reports the local port
//!      with [`crate::Engine::socket_bound`] (which moves the entry into tier 1 or 2) nothing
//!      tells this socket's packets from those of any other process talking to the same
//!      destination, and marking them all would let one user re-mark another's traffic
//!      (qos-api.md §8: a caller only touches its own sockets). The Windows driver learns the
//!      local port at `ALE_AUTH_CONNECT`, before the SYN leaves.
//!
//!   4. **local endpoint** (kernel clients only; lookup tier 3 in the `control` docs, since
//!      map 3 never matches): (protocol, local address, local port), any
//!      remote — a flow registered through the kernel interface without a remote endpoint
//!      (`QOSMARK_FLOW_ANY_REMOTE`: a listening or unconnected datagram socket of another
//!      driver). The local address may be unspecified (`0.0.0.0` / `::`: any local address of
//!      that family).
//!
//!   [`ControlState::lookup`] probes tiers 1 and 2, then tier 4 with the packet's local
//!   address and then with the unspecified address of its family (first hit wins): four
//!   probes at most, O(1) expected, no allocation, `&self` only.
//!
//! Keys hold IP addresses and ports only, never IPv6 flow labels or scope ids, so a key built
//! from a socket address and one built from packet bytes compare equal. IPv4-mapped addresses
//! are normalized to IPv4 first (qos-api.md §10).
//!
//! ## Invariants (checked by [`ControlState::check_invariants`] in tests)
//! * Every key in a tier map belongs to exactly one entry of the flow it names, and every entry
//!   is in exactly one map: a key is never registered twice.
//! * A live flow has at least one entry and belongs to a live handle.
//! * The handle counts and the global entry count equal what the flows hold.
//!
//! ## Memory per registered socket (64-bit; measured in `tests/packet_path_alloc.rs`)
//! A flow's record (112 bytes: counters, mark, owner, shaper id, and its first [`Entry`]
//! inline, see [`Entries`]) is boxed ([`FlowBox`]), so its `flows` bucket is only 16 + 1
//! bytes; its tier-map bucket is 44 + 1 bytes. A `hashbrown` table is between 7/16 and 7/8
//! full, so every bucket byte costs 8/7 to 16/7 bytes. A one-socket flow measures 239 bytes at
//! 1 000 flows, 236 at 65 536, 254 right after a table doubled (the worst case; the shaper id
//! added 8 bytes to each); a flow's further sockets or
//! destinations move to a vector of 48-byte entries, 100-150 bytes each. The test
//! `memory_per_entry_is_bounded` pins the type sizes this estimate uses.
use super::rate::{Bucket, RateLimit};
use super::{CloseReport, HandleId, SocketHit};
use crate::counters::Counters;
use crate::shaper::{ShaperConfig, ShaperId, ShaperTable};
use crate::traffic::{mark_for, user_may_set};
use crate::tuple::{normalize, normalize_addr};
use crate::{EngineError, FiveTuple, Limits};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::hash::{Hash, Hasher};
use core::net::{IpAddr, SocketAddr};
use foldhash::fast::RandomState;
use hashbrown::HashMap;
use qosmark_abi::kernel::{KernelFlow, KernelMark, MarkClass};
use qosmark_abi::{
    Caller, Dscp, Family, FlowId, FlowState, Mark, Pcp, Privilege, Protocol, ServiceMark,
    SocketInfo, TrafficTable, TrafficType, QOS_NON_ADAPTIVE_FLOW,
};

type Map<K, V> = HashMap<K, V, RandomState>;

fn new_map<K, V>() -> Map<K, V> {
    HashMap::with_hasher(RandomState::default())
}

/// Tier 1 key: the full 5-tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ExactKey {
    protocol: Protocol,
    local_port: u16,
    remote_port: u16,
    local: IpAddr,
    remote: IpAddr,
}

/// Tier 2 key: the socket is bound to the unspecified address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AnyLocalKey {
    protocol: Protocol,
    local_port: u16,
    remote_port: u16,
    remote: IpAddr,
}

/// Map 4 key: a kernel flow by local endpoint, any remote. `local` is the unspecified address
/// of its family for "any local address".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct LocalKey {
    protocol: Protocol,
    local_port: u16,
    local: IpAddr,
}

/// An address as 128 bits for hashing (IPv4 as its v4-mapped form). Only the hash uses it:
/// equality still compares the `IpAddr`s, so a v4 key and its v4-mapped twin merely collide.
fn addr_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Protocol and ports in one word.
fn ports_word(protocol: Protocol, local_port: u16, remote_port: u16) -> u64 {
    (u64::from(protocol.number()) << 32) | (u64::from(local_port) << 16) | u64::from(remote_port)
}

// The packet path hashes one key per tier probe: three wide writes instead of the derived
// field-by-field hash (enum tags, slice lengths, single bytes) cost about half the instructions.
impl Hash for ExactKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(ports_word(self.protocol, self.local_port, self.remote_port));
        state.write_u128(addr_bits(self.local));
        state.write_u128(addr_bits(self.remote));
    }
}

impl Hash for AnyLocalKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(ports_word(self.protocol, self.local_port, self.remote_port));
        state.write_u128(addr_bits(self.remote));
    }
}

/// Tier 3 key: the socket has no local port yet. Owned by one socket of one handle, so two
/// sockets waiting to connect to the same destination never collide; never used for lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct UnboundKey {
    handle: HandleId,
    socket: u64,
    protocol: Protocol,
    remote_port: u16,
    remote: IpAddr,
}

/// Which tier an entry lives in, with its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum EntryKey {
    Exact(ExactKey),
    AnyLocal(AnyLocalKey),
    Unbound(UnboundKey),
    Local(LocalKey),
}

impl EntryKey {
    /// The key of `owner`'s socket (handle, socket value) bound to `local` sending to `remote`
    /// (both already normalized). The owner only enters unbound keys.
    fn new(
        owner: (HandleId, u64),
        protocol: Protocol,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Self {
        let (remote_port, remote) = (remote.port(), remote.ip());
        if local.port() == 0 {
            EntryKey::Unbound(UnboundKey {
                handle: owner.0,
                socket: owner.1,
                protocol,
                remote_port,
                remote,
            })
        } else if local.ip().is_unspecified() {
            EntryKey::AnyLocal(AnyLocalKey {
                protocol,
                local_port: local.port(),
                remote_port,
                remote,
            })
        } else {
            EntryKey::Exact(ExactKey {
                protocol,
                local_port: local.port(),
                remote_port,
                local: local.ip(),
                remote,
            })
        }
    }

    fn protocol(&self) -> Protocol {
        match self {
            EntryKey::Exact(k) => k.protocol,
            EntryKey::AnyLocal(k) => k.protocol,
            EntryKey::Unbound(k) => k.protocol,
            EntryKey::Local(k) => k.protocol,
        }
    }

    fn remote(&self) -> SocketAddr {
        match self {
            EntryKey::Exact(k) => SocketAddr::new(k.remote, k.remote_port),
            EntryKey::AnyLocal(k) => SocketAddr::new(k.remote, k.remote_port),
            EntryKey::Unbound(k) => SocketAddr::new(k.remote, k.remote_port),
            // No remote: reported as the unspecified address of the local family, port 0.
            EntryKey::Local(k) => SocketAddr::new(unspecified_like(k.local), 0),
        }
    }

    /// The public description of the local side.
    fn binding(&self) -> super::Binding {
        match self {
            EntryKey::Exact(k) => super::Binding::Address(SocketAddr::new(k.local, k.local_port)),
            EntryKey::AnyLocal(k) => super::Binding::AnyAddress { port: k.local_port },
            EntryKey::Unbound(_) => super::Binding::NotBound,
            EntryKey::Local(k) if k.local.is_unspecified() => {
                super::Binding::AnyAddress { port: k.local_port }
            }
            EntryKey::Local(k) => super::Binding::Address(SocketAddr::new(k.local, k.local_port)),
        }
    }
}

/// The unspecified address of `ip`'s family.
fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(core::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(core::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// The four tier maps.
#[derive(Debug)]
struct Index {
    exact: Map<ExactKey, FlowId>,
    any_local: Map<AnyLocalKey, FlowId>,
    unbound: Map<UnboundKey, FlowId>,
    local: Map<LocalKey, FlowId>,
}

impl Index {
    fn holder(&self, key: &EntryKey) -> Option<FlowId> {
        match key {
            EntryKey::Exact(k) => self.exact.get(k).copied(),
            EntryKey::AnyLocal(k) => self.any_local.get(k).copied(),
            EntryKey::Unbound(k) => self.unbound.get(k).copied(),
            EntryKey::Local(k) => self.local.get(k).copied(),
        }
    }

    /// Makes room for `n` more keys of `key`'s tier, so a following insert cannot allocate.
    fn reserve(&mut self, key: &EntryKey, n: usize) -> Result<(), EngineError> {
        let r = match key {
            EntryKey::Exact(_) => self.exact.try_reserve(n),
            EntryKey::AnyLocal(_) => self.any_local.try_reserve(n),
            EntryKey::Unbound(_) => self.unbound.try_reserve(n),
            EntryKey::Local(_) => self.local.try_reserve(n),
        };
        r.map_err(|_| EngineError::NoMemory)
    }

    /// Inserts after [`Index::reserve`]; the caller has checked the key is free.
    fn insert(&mut self, key: EntryKey, flow: FlowId) {
        match key {
            EntryKey::Exact(k) => self.exact.insert(k, flow),
            EntryKey::AnyLocal(k) => self.any_local.insert(k, flow),
            EntryKey::Unbound(k) => self.unbound.insert(k, flow),
            EntryKey::Local(k) => self.local.insert(k, flow),
        };
    }

    fn remove(&mut self, key: &EntryKey) {
        match key {
            EntryKey::Exact(k) => self.exact.remove(k),
            EntryKey::AnyLocal(k) => self.any_local.remove(k),
            EntryKey::Unbound(k) => self.unbound.remove(k),
            EntryKey::Local(k) => self.local.remove(k),
        };
    }

    fn len(&self) -> usize {
        self.exact.len() + self.any_local.len() + self.unbound.len() + self.local.len()
    }
}

/// One socket (or one destination of a socket) in a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The socket value as the owning process knows it.
    socket: u64,
    key: EntryKey,
}

/// One QOS2 flow.
#[derive(Debug)]
pub(crate) struct Flow {
    handle: HandleId,
    /// Process id of the handle's caller; every entry of the flow belongs to this process.
    pid: u32,
    /// The handle's caller is a plain user (`Privilege::User`): its packets are subject to the
    /// ownership check.
    user: bool,
    traffic_type: TrafficType,
    /// Added without `QOS_NON_ADAPTIVE_FLOW`. Adaptive flows hold a single socket (§9).
    adaptive: bool,
    /// `QOSSetOutgoingDSCPValue` (or a kernel flow's DSCP), overriding the table's DSCP until
    /// the flow dies.
    custom_dscp: Option<Dscp>,
    /// A kernel flow's explicit 802.1p, overriding the table's (kernel flows are non-adaptive,
    /// so without it they request none). For socket flows only a GQoS service mark
    /// ([`ControlState::set_service`]) sets it.
    custom_pcp: Option<Pcp>,
    /// Cached result of [`resolve`].
    mark: Mark,
    /// Its shaper, once `QOSSetFlow(QOSSetOutgoingRate)` gave it a rate (the rate itself lives
    /// in the shaper). Removed with the flow.
    shaper: Option<ShaperId>,
    counters: Counters,
    /// Insertion order is kept (listing order).
    entries: Entries,
}

/// A flow's socket entries: the first inline (most QOS2 flows hold one socket), more on the
/// heap. Saves the separate 48-byte allocation a one-entry `Vec` costs.
#[derive(Debug)]
pub(crate) enum Entries {
    One(Entry),
    Many(Vec<Entry>),
}

impl Entries {
    fn as_slice(&self) -> &[Entry] {
        match self {
            Entries::One(e) => core::slice::from_ref(e),
            Entries::Many(v) => v,
        }
    }

    fn iter(&self) -> core::slice::Iter<'_, Entry> {
        self.as_slice().iter()
    }

    fn iter_mut(&mut self) -> core::slice::IterMut<'_, Entry> {
        match self {
            Entries::One(e) => core::slice::from_mut(e).iter_mut(),
            Entries::Many(v) => v.iter_mut(),
        }
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// Appends `entry`; on `NoMemory` nothing changed. Grows by exactly one: a flow's sockets
    /// are few, and amortized doubling would waste up to half.
    fn try_push(&mut self, entry: Entry) -> Result<(), EngineError> {
        match self {
            Entries::One(first) => {
                let mut v = Vec::new();
                v.try_reserve_exact(2)?;
                v.push(*first);
                v.push(entry);
                *self = Entries::Many(v);
            }
            Entries::Many(v) => {
                v.try_reserve_exact(1)?;
                v.push(entry);
            }
        }
        Ok(())
    }

    /// Keeps the entries `keep` accepts, in order. Allocates nothing.
    fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        match self {
            Entries::One(e) => {
                if !keep(e) {
                    *self = Entries::Many(Vec::new());
                }
            }
            Entries::Many(v) => v.retain(|e| keep(e)),
        }
    }
}

/// A flow record on the heap, allocated fallibly (`Box::new` aborts when memory runs out). A
/// one-element array box is a thin pointer, so a `flows` bucket is 16 bytes.
#[derive(Debug)]
pub(crate) struct FlowBox(Box<[Flow; 1]>);

impl FlowBox {
    fn try_new(flow: Flow) -> Result<Self, EngineError> {
        let mut v = Vec::new();
        v.try_reserve_exact(1)?;
        v.push(flow);
        // Capacity is exactly 1, so the conversion does not reallocate.
        let boxed: Box<[Flow; 1]> = v
            .into_boxed_slice()
            .try_into()
            .map_err(|_| EngineError::NoMemory)?;
        Ok(FlowBox(boxed))
    }
}

impl core::ops::Deref for FlowBox {
    type Target = Flow;
    fn deref(&self) -> &Flow {
        let [flow] = &*self.0;
        flow
    }
}

impl core::ops::DerefMut for FlowBox {
    fn deref_mut(&mut self) -> &mut Flow {
        let [flow] = &mut *self.0;
        flow
    }
}

impl Flow {
    /// The resolved mark.
    pub(crate) fn mark(&self) -> Mark {
        self.mark
    }
}

/// The mark of a flow: the table's for its type and adaptivity, with the custom DSCP on top.
fn resolve(table: &TrafficTable, tt: TrafficType, adaptive: bool, custom: Option<Dscp>) -> Mark {
    let mut mark = mark_for(table, tt, adaptive);
    if custom.is_some() {
        mark.dscp = custom;
    }
    mark
}

/// [`resolve`] for a live flow, with its explicit 802.1p on top.
fn resolve_flow(table: &TrafficTable, flow: &Flow) -> Mark {
    let mut mark = resolve(table, flow.traffic_type, flow.adaptive, flow.custom_dscp);
    if flow.custom_pcp.is_some() {
        mark.pcp = flow.custom_pcp;
    }
    mark
}

/// An open handle.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HandleState {
    pub(crate) caller: Caller,
    flows: usize,
    entries: usize,
    /// Its budget of control requests (`super::rate`).
    bucket: Bucket,
}

/// Control-plane state: handles, flows, socket entries, the traffic table.
#[derive(Debug)]
pub(crate) struct ControlState {
    limits: Limits,
    /// Per-handle request rate ([`ControlState::charge`]).
    rate: RateLimit,
    table: TrafficTable,
    handles: Map<HandleId, HandleState>,
    /// Boxed: the map's buckets stay small (a hash table is between 7/16 and 7/8 full, so
    /// every byte of a bucket costs up to 16/7 bytes), the record itself is allocated once.
    flows: Map<FlowId, FlowBox>,
    index: Index,
    next_handle: u32,
    next_flow: u32,
}

/// The first id at or after `start` (wrapping, skipping 0) that `live` does not hold. At most
/// `live_count + 2` candidates are tried, so this ends even if the caller's count is wrong.
fn free_id(start: u32, live_count: usize, live: impl Fn(u32) -> bool) -> Result<u32, EngineError> {
    let mut candidate = start;
    for _ in 0..=live_count.saturating_add(1) {
        if candidate != 0 && !live(candidate) {
            return Ok(candidate);
        }
        candidate = candidate.wrapping_add(1);
    }
    Err(EngineError::LimitReached)
}

fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    let (a, b) = (normalize(a), normalize(b));
    a.ip() == b.ip() && a.port() == b.port()
}

fn privileged(caller: Caller) -> bool {
    matches!(caller.privilege, Privilege::Admin | Privilege::Kernel)
}

/// Validates a socket and `DestAddr` (qos-api.md §5 `QOSAddSocketToFlow`, §10) and builds the
/// entry key. Every refusal is 87.
fn entry_key_for(
    handle: HandleId,
    socket: &SocketInfo,
    dest: Option<SocketAddr>,
) -> Result<EntryKey, EngineError> {
    let bad = Err(EngineError::InvalidParameter);
    let local = normalize(socket.local);
    if socket.family == Family::V4 && !local.is_ipv4() {
        return bad;
    }
    // DestAddr is optional for a connected socket and must then equal the peer; mandatory
    // otherwise.
    let remote = match (socket.peer, dest) {
        (Some(peer), None) => peer,
        (Some(peer), Some(d)) if same_endpoint(peer, d) => peer,
        (None, Some(d)) => d,
        (Some(_), Some(_)) | (None, None) => return bad,
    };
    let remote = normalize(remote);
    // An AF_INET socket cannot reach an IPv6 destination; an AF_INET6 socket may reach an IPv4
    // (or v4-mapped) one through dual stack (§10: qWAVE says 87 here, qosmark accepts).
    if socket.family == Family::V4 && !remote.is_ipv4() {
        return bad;
    }
    if remote.ip().is_unspecified() || remote.port() == 0 {
        return bad;
    }
    if local.port() == 0 {
        // Only a TCP socket registered before `connect` may lack a local port; a connected
        // socket is always bound and an unbound UDP socket has nothing to match yet.
        if socket.peer.is_some() || socket.protocol == Protocol::Udp {
            return bad;
        }
    } else if !local.ip().is_unspecified() && local.is_ipv4() != remote.is_ipv4() {
        // Bound to a concrete address of the other family: no packet could ever match.
        return bad;
    }
    Ok(EntryKey::new(
        (handle, socket.socket),
        socket.protocol,
        local,
        remote,
    ))
}

/// The entry key of a kernel flow, validated as a socket would be (all refusals 87). With a
/// remote endpoint the flow is checked exactly as a connected socket with that peer; without
/// one it needs a local port and a local address of its family.
fn kernel_key(handle: HandleId, flow: &KernelFlow) -> Result<EntryKey, EngineError> {
    if let Some(remote) = flow.remote {
        let socket = SocketInfo {
            socket: 0,
            family: flow.family,
            protocol: flow.protocol,
            local: flow.local,
            peer: Some(remote),
        };
        return entry_key_for(handle, &socket, None);
    }
    let local = normalize(flow.local);
    if local.port() == 0 || (flow.family == Family::V4 && !local.is_ipv4()) {
        return Err(EngineError::InvalidParameter);
    }
    Ok(EntryKey::Local(LocalKey {
        protocol: flow.protocol,
        local_port: local.port(),
        local: local.ip(),
    }))
}

/// Traffic type, custom DSCP and 802.1p of a kernel mark. DSCP: above 63 → 87, then the same
/// privilege rule as `QOSSetOutgoingDSCPValue` (kernel callers always pass). 802.1p above 7 →
/// 87; an explicit 802.1p needs an administrator or kernel caller (5), as rules do.
fn kernel_mark(
    table: &TrafficTable,
    caller: Caller,
    mark: &KernelMark,
) -> Result<(TrafficType, Option<Dscp>, Option<Pcp>), EngineError> {
    let pcp = match mark.pcp {
        None => None,
        Some(v) => Some(
            u8::try_from(v)
                .ok()
                .and_then(|v| Pcp::try_new(v).ok())
                .ok_or(EngineError::InvalidParameter)?,
        ),
    };
    let (tt, dscp) = match mark.class {
        MarkClass::TrafficType(tt) => (tt, None),
        MarkClass::Dscp(v) => {
            let d = u8::try_from(v)
                .ok()
                .and_then(|v| Dscp::try_new(v).ok())
                .ok_or(EngineError::InvalidParameter)?;
            if !privileged(caller) && !user_may_set(table, d) {
                return Err(EngineError::AccessDenied);
            }
            (TrafficType::BestEffort, Some(d))
        }
    };
    if pcp.is_some() && !privileged(caller) {
        return Err(EngineError::AccessDenied);
    }
    Ok((tt, dscp, pcp))
}

/// Parameters of `AddSocketToFlow`, as decoded.
pub(crate) struct AddSocket<'a> {
    pub(crate) socket: &'a SocketInfo,
    pub(crate) dest: Option<SocketAddr>,
    pub(crate) traffic_type: TrafficType,
    pub(crate) flags: u32,
    pub(crate) flow_id: FlowId,
}

impl ControlState {
    pub(crate) fn new(limits: &Limits) -> Self {
        ControlState {
            limits: *limits,
            rate: RateLimit::default(),
            table: crate::traffic::default_table(),
            handles: new_map(),
            flows: new_map(),
            index: Index {
                exact: new_map(),
                any_local: new_map(),
                unbound: new_map(),
                local: new_map(),
            },
            next_handle: 1,
            next_flow: 1,
        }
    }

    /// The flow of an outbound packet, by tier precedence (module docs). O(1) expected, no
    /// allocation.
    pub(crate) fn lookup_flow(&self, tuple: &FiveTuple) -> Option<(FlowId, &Flow)> {
        // `FiveTuple`'s fields are public, so a caller may hand in a tuple that
        // `FiveTuple::new` did not normalize.
        let tuple = FiveTuple {
            protocol: tuple.protocol,
            local: normalize(tuple.local),
            remote: SocketAddr::new(normalize_addr(tuple.remote.ip()), tuple.remote.port()),
        };
        self.lookup_normalized(&tuple)
    }

    /// [`ControlState::lookup_flow`] for a tuple built by `FiveTuple::new` (the packet path).
    /// A tier without entries is not probed.
    fn lookup_normalized(&self, tuple: &FiveTuple) -> Option<(FlowId, &Flow)> {
        let (protocol, local_port, remote_port) =
            (tuple.protocol, tuple.local.port(), tuple.remote.port());
        let remote = tuple.remote.ip();
        let exact = || {
            if self.index.exact.is_empty() {
                return None;
            }
            self.index.exact.get(&ExactKey {
                protocol,
                local_port,
                remote_port,
                local: tuple.local.ip(),
                remote,
            })
        };
        let any = || {
            if self.index.any_local.is_empty() {
                return None;
            }
            self.index.any_local.get(&AnyLocalKey {
                protocol,
                local_port,
                remote_port,
                remote,
            })
        };
        // Tier 4 (kernel flows by local endpoint, any remote): the packet's local address,
        // then the unspecified address of its family.
        let local = || {
            if self.index.local.is_empty() {
                return None;
            }
            let key = |local| LocalKey {
                protocol,
                local_port,
                local,
            };
            let local_ip = tuple.local.ip();
            self.index
                .local
                .get(&key(local_ip))
                .or_else(|| self.index.local.get(&key(unspecified_like(local_ip))))
        };
        let id = exact().or_else(any).or_else(local)?;
        self.flows.get(id).map(|f| (*id, &**f))
    }

    /// The mark and counters for an outbound packet whose tuple `FiveTuple::new` built (see
    /// [`ControlState::lookup_flow`]).
    pub(crate) fn lookup(&self, tuple: &FiveTuple) -> Option<SocketHit<'_>> {
        self.lookup_normalized(tuple).map(|(_, f)| SocketHit {
            mark: f.mark,
            shaper: f.shaper,
            counters: &f.counters,
            user_pid: f.user.then_some(f.pid),
        })
    }

    pub(crate) fn traffic_table(&self) -> &TrafficTable {
        &self.table
    }

    /// Replaces the table and re-resolves the mark of every live flow.
    pub(crate) fn set_table(&mut self, table: TrafficTable) {
        self.table = table;
        for flow in self.flows.values_mut() {
            flow.mark = resolve_flow(&table, flow);
        }
    }

    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        (self.handles.len(), self.flows.len(), self.index.len())
    }

    /// Charges one request to `id`'s bucket at `now_ns`: 6 for an unknown handle, 1450 when
    /// its budget is spent (`super::rate`).
    pub(crate) fn charge(&mut self, id: HandleId, now_ns: u64) -> Result<(), EngineError> {
        let rate = self.rate;
        self.handles
            .get_mut(&id)
            .ok_or(EngineError::InvalidHandle)?
            .bucket
            .take(rate, now_ns)
    }

    pub(crate) fn rate(&self) -> RateLimit {
        self.rate
    }

    pub(crate) fn set_rate(&mut self, rate: RateLimit) {
        self.rate = rate;
    }

    /// The handle's state, or 6.
    pub(crate) fn handle(&self, id: HandleId) -> Result<HandleState, EngineError> {
        self.handles
            .get(&id)
            .copied()
            .ok_or(EngineError::InvalidHandle)
    }

    pub(crate) fn open_handle(&mut self, caller: Caller) -> Result<HandleId, EngineError> {
        if self.handles.len() >= self.limits.max_handles {
            return Err(EngineError::LimitReached);
        }
        let raw = free_id(self.next_handle, self.handles.len(), |c| {
            self.handles.contains_key(&HandleId(c))
        })?;
        self.handles
            .try_reserve(1)
            .map_err(|_| EngineError::NoMemory)?;
        self.handles.insert(
            HandleId(raw),
            HandleState {
                caller,
                flows: 0,
                entries: 0,
                bucket: Bucket::full(),
            },
        );
        self.next_handle = raw.wrapping_add(1);
        Ok(HandleId(raw))
    }

    /// Removes the handle and every flow it owns (and their shapers). Allocates nothing, so it
    /// cannot fail once the handle is found.
    pub(crate) fn close_handle(
        &mut self,
        id: HandleId,
        shapers: &mut ShaperTable,
    ) -> Result<CloseReport, EngineError> {
        self.handles.remove(&id).ok_or(EngineError::InvalidHandle)?;
        let mut report = CloseReport {
            flows_removed: 0,
            sockets_removed: 0,
            requests_aborted: 0,
        };
        let index = &mut self.index;
        self.flows.retain(|_, flow| {
            if flow.handle != id {
                return true;
            }
            for e in flow.entries.iter() {
                index.remove(&e.key);
            }
            if let Some(shaper) = flow.shaper {
                shapers.remove(shaper);
            }
            report.flows_removed += 1;
            report.sockets_removed += flow.entries.len();
            false
        });
        Ok(report)
    }

    /// A flow of `handle`, or 1168 (flow id 0, unknown, or another handle's: §9 "do not reveal").
    fn own_flow(&self, handle: HandleId, id: FlowId) -> Result<&Flow, EngineError> {
        self.flows
            .get(&id)
            .map(|f| &**f)
            .filter(|f| f.handle == handle)
            .ok_or(EngineError::NotFound)
    }

    fn own_flow_mut(&mut self, handle: HandleId, id: FlowId) -> Result<&mut Flow, EngineError> {
        self.flows
            .get_mut(&id)
            .map(|f| &mut **f)
            .filter(|f| f.handle == handle)
            .ok_or(EngineError::NotFound)
    }

    /// `QOSAddSocketToFlow` (module docs of `control` for the rules and their order).
    pub(crate) fn add_socket(
        &mut self,
        handle: HandleId,
        req: &AddSocket<'_>,
    ) -> Result<FlowId, EngineError> {
        let hs = self.handle(handle)?;
        if req.flags & !QOS_NON_ADAPTIVE_FLOW != 0 {
            return Err(EngineError::InvalidParameter);
        }
        if req.flow_id != 0 {
            // Joining: only a non-adaptive flow of this handle (§9); anything else is 87 (§5
            // "bad FlowId"), including flows of other handles.
            let flow = self
                .own_flow(handle, req.flow_id)
                .map_err(|_| EngineError::InvalidParameter)?;
            if flow.adaptive {
                return Err(EngineError::InvalidParameter);
            }
        }
        let key = entry_key_for(handle, req.socket, req.dest)?;
        if let Some(holder) = self.index.holder(&key) {
            let same = holder == req.flow_id
                && self.flows.get(&holder).is_some_and(|f| {
                    f.entries
                        .iter()
                        .any(|e| e.key == key && e.socket == req.socket.socket)
                });
            // Repeating an accepted registration is a no-op; the 5-tuple held by any other
            // socket or flow is 183 (a packet could not tell the two apart).
            return if same {
                Ok(holder)
            } else {
                Err(EngineError::AlreadyExists)
            };
        }
        if self.index.len() >= self.limits.max_sockets
            || hs.entries >= self.limits.max_sockets_per_handle
        {
            return Err(EngineError::LimitReached);
        }
        let entry = Entry {
            socket: req.socket.socket,
            key,
        };
        if req.flow_id != 0 {
            let flow = self
                .flows
                .get_mut(&req.flow_id)
                .ok_or(EngineError::InvalidParameter)?;
            // Index room first: once the entry is in, nothing may fail.
            self.index.reserve(&key, 1)?;
            flow.entries.try_push(entry)?;
            self.index.insert(key, req.flow_id);
            self.bump_handle(handle, 0, 1);
            return Ok(req.flow_id);
        }
        if self.flows.len() >= self.limits.max_flows || hs.flows >= self.limits.max_flows_per_handle
        {
            return Err(EngineError::LimitReached);
        }
        let id = free_id(self.next_flow, self.flows.len(), |c| {
            self.flows.contains_key(&c)
        })?;
        let adaptive = req.flags & QOS_NON_ADAPTIVE_FLOW == 0;
        let entries = Entries::One(entry);
        let flow = FlowBox::try_new(Flow {
            handle,
            pid: hs.caller.pid,
            user: !privileged(hs.caller),
            traffic_type: req.traffic_type,
            adaptive,
            custom_dscp: None,
            custom_pcp: None,
            mark: resolve(&self.table, req.traffic_type, adaptive, None),
            shaper: None,
            counters: Counters::default(),
            entries,
        })?;
        self.flows
            .try_reserve(1)
            .map_err(|_| EngineError::NoMemory)?;
        self.index.reserve(&key, 1)?;
        self.flows.insert(id, flow);
        self.index.insert(key, id);
        self.next_flow = id.wrapping_add(1);
        self.bump_handle(handle, 1, 1);
        Ok(id)
    }

    fn bump_handle(&mut self, handle: HandleId, flows: isize, entries: isize) {
        if let Some(h) = self.handles.get_mut(&handle) {
            h.flows = h.flows.saturating_add_signed(flows);
            h.entries = h.entries.saturating_add_signed(entries);
        }
    }

    /// Destroys a flow, unindexing its entries and removing its shaper.
    fn destroy_flow(&mut self, id: FlowId, shapers: &mut ShaperTable) {
        if let Some(flow) = self.flows.remove(&id) {
            for e in flow.entries.iter() {
                self.index.remove(&e.key);
            }
            if let Some(shaper) = flow.shaper {
                shapers.remove(shaper);
            }
            let n = isize::try_from(flow.entries.len()).unwrap_or(isize::MAX);
            self.bump_handle(flow.handle, -1, -n);
        }
    }

    /// `QOSRemoveSocketFromFlow`: `socket` leaves the flow (all its destinations), or the whole
    /// flow goes. A flow left without sockets is destroyed.
    pub(crate) fn remove_socket(
        &mut self,
        handle: HandleId,
        socket: Option<u64>,
        id: FlowId,
        shapers: &mut ShaperTable,
    ) -> Result<(), EngineError> {
        self.handle(handle)?;
        let flow = self
            .flows
            .get_mut(&id)
            .map(|f| &mut **f)
            .filter(|f| f.handle == handle)
            .ok_or(EngineError::NotFound)?;
        let Some(socket) = socket else {
            self.destroy_flow(id, shapers);
            return Ok(());
        };
        if !flow.entries.iter().any(|e| e.socket == socket) {
            return Err(EngineError::NotFound);
        }
        let before = flow.entries.len();
        let index = &mut self.index;
        flow.entries.retain(|e| {
            if e.socket == socket {
                index.remove(&e.key);
                false
            } else {
                true
            }
        });
        let removed = isize::try_from(before - flow.entries.len()).unwrap_or(isize::MAX);
        let empty = flow.entries.is_empty();
        self.bump_handle(handle, 0, -removed);
        if empty {
            // Windows destroys a single-socket flow when its socket leaves (§5); a flow
            // without sockets could never match a packet again.
            self.destroy_flow(id, shapers);
        }
        Ok(())
    }

    /// A connection of process `pid` ended (the Windows driver: its TCP ALE flow was
    /// deleted, which happens when the connected socket is closed or the connection torn
    /// down). The socket registered for exactly this 5-tuple in a flow of that process is
    /// removed as `QOSRemoveSocketFromFlow` would (a flow left empty dies, with its shaper).
    /// Only exact (tier 1) entries: an any-address or unbound entry is not one connection.
    /// Returns the flow the socket left, `None` when nothing matched (another process's
    /// tuple, a socket never registered, one already removed).
    pub(crate) fn connection_closed(
        &mut self,
        tuple: &FiveTuple,
        pid: u32,
        shapers: &mut ShaperTable,
    ) -> Option<FlowId> {
        let local = normalize(tuple.local);
        let remote = normalize(tuple.remote);
        let key = ExactKey {
            protocol: tuple.protocol,
            local_port: local.port(),
            remote_port: remote.port(),
            local: local.ip(),
            remote: remote.ip(),
        };
        let id = *self.index.exact.get(&key)?;
        let flow = self.flows.get(&id).filter(|f| f.pid == pid)?;
        let socket = flow
            .entries
            .iter()
            .find(|e| e.key == EntryKey::Exact(key))?
            .socket;
        let handle = flow.handle;
        self.remove_socket(handle, Some(socket), id, shapers)
            .ok()
            .map(|()| id)
    }

    /// A socket of process `pid` was closed (the Windows driver's `ALE_ENDPOINT_CLOSURE`
    /// callout): every socket entry of that process's flows for this endpoint is removed, as
    /// `QOSRemoveSocketFromFlow` would (flows left empty die, with their shapers). The
    /// endpoint: `protocol`, the local address and port (an unspecified address on either
    /// side matches any), and for a connected socket (`remote` with a non-zero port) the
    /// remote address and port too — accepted TCP sockets share their local port, so a TCP
    /// endpoint without a remote (a listener) removes nothing. Unbound
    /// entries (TCP registered before `connect`, port 0) are not an endpoint and stay. Returns
    /// the number of entries removed.
    pub(crate) fn endpoint_closed(
        &mut self,
        protocol: Protocol,
        local: SocketAddr,
        remote: Option<SocketAddr>,
        pid: u32,
        shapers: &mut ShaperTable,
    ) -> usize {
        let local = normalize(local);
        let remote = remote.map(normalize).filter(|r| r.port() != 0);
        // A TCP socket closed without a remote is a listener (or never connected): it holds
        // no connection, and its local port is shared by the connections it accepted, which
        // must not go with it.
        if local.port() == 0 || (protocol == Protocol::Tcp && remote.is_none()) {
            return 0;
        }
        let addr_matches =
            |a: IpAddr| local.ip().is_unspecified() || a.is_unspecified() || a == local.ip();
        let matches = |key: &EntryKey| match *key {
            EntryKey::Exact(k) => {
                k.protocol == protocol
                    && k.local_port == local.port()
                    && addr_matches(k.local)
                    && remote.is_none_or(|r| r.port() == k.remote_port && r.ip() == k.remote)
            }
            EntryKey::AnyLocal(k) => {
                k.protocol == protocol
                    && k.local_port == local.port()
                    && remote.is_none_or(|r| r.port() == k.remote_port && r.ip() == k.remote)
            }
            EntryKey::Unbound(_) | EntryKey::Local(_) => false,
        };
        // (flow, handle, socket) of every matching entry; then each socket leaves its flow.
        let mut gone: Vec<(FlowId, HandleId, u64)> = Vec::new();
        // No memory for the list: the scan stops; what was found is still removed (the rest
        // stays registered, as if the close had not been seen).
        'scan: for (id, f) in &self.flows {
            if f.pid != pid {
                continue;
            }
            for e in f.entries.iter().filter(|e| matches(&e.key)) {
                if gone.try_reserve(1).is_err() {
                    break 'scan;
                }
                if !gone.contains(&(*id, f.handle, e.socket)) {
                    gone.push((*id, f.handle, e.socket));
                }
            }
        }
        let mut removed = 0;
        for (id, handle, socket) in gone {
            let before = self.flows.get(&id).map_or(0, |f| f.entries.len());
            if self
                .remove_socket(handle, Some(socket), id, shapers)
                .is_ok()
            {
                let after = self.flows.get(&id).map_or(0, |f| f.entries.len());
                removed += before - after;
            }
        }
        removed
    }

    /// `QOSSetFlow(QOSSetTrafficType)`: live change, mark re-resolved.
    pub(crate) fn set_traffic_type(
        &mut self,
        handle: HandleId,
        id: FlowId,
        tt: TrafficType,
    ) -> Result<(), EngineError> {
        let table = self.table;
        let flow = self.own_flow_mut(handle, id)?;
        flow.traffic_type = tt;
        flow.mark = resolve_flow(&table, flow);
        Ok(())
    }

    /// `QOSSetFlow(QOSSetOutgoingDSCPValue)`: > 63 → 87; allowed for administrators and kernel
    /// callers, and for users when the value is on the allow-list; else 5 (§8).
    pub(crate) fn set_dscp(
        &mut self,
        handle: HandleId,
        caller: Caller,
        id: FlowId,
        value: u32,
    ) -> Result<(), EngineError> {
        let table = self.table;
        let flow = self.own_flow_mut(handle, id)?;
        let dscp = u8::try_from(value)
            .ok()
            .and_then(|v| Dscp::try_new(v).ok())
            .ok_or(EngineError::InvalidParameter)?;
        if !privileged(caller) && !user_may_set(&table, dscp) {
            return Err(EngineError::AccessDenied);
        }
        flow.custom_dscp = Some(dscp);
        flow.mark = resolve_flow(&table, flow);
        Ok(())
    }

    /// `SetFlow(Service)` (GQoS, `engine::control` docs): the service type's documented default
    /// DSCP and 802.1p, each replaced by its override when given. The defaults are open to
    /// every caller; an override that differs from its default follows the
    /// `QOSSetOutgoingDSCPValue` rule for DSCP (administrators, kernel, or an allow-listed
    /// value; else 5) and the rule of rules and kernel marks for 802.1p (administrators and
    /// kernel only; else 5). Both are then the flow's custom DSCP and 802.1p until the flow dies
    /// or another `Service` replaces them.
    pub(crate) fn set_service(
        &mut self,
        handle: HandleId,
        caller: Caller,
        id: FlowId,
        service: ServiceMark,
    ) -> Result<(), EngineError> {
        let table = self.table;
        let flow = self.own_flow_mut(handle, id)?;
        let (default_dscp, default_pcp) = service.service.default_mark();
        let dscp = service.dscp.unwrap_or(default_dscp);
        let pcp = service.pcp.unwrap_or(default_pcp);
        if dscp != default_dscp && !privileged(caller) && !user_may_set(&table, dscp) {
            return Err(EngineError::AccessDenied);
        }
        if pcp != default_pcp && !privileged(caller) {
            return Err(EngineError::AccessDenied);
        }
        flow.custom_dscp = Some(dscp);
        flow.custom_pcp = Some(pcp);
        flow.mark = resolve_flow(&table, flow);
        Ok(())
    }

    /// The state of flow `id` as `caller` may see it (`WatchFlow`): administrators and kernel
    /// callers see every flow, others the flows of their own process (any handle, as
    /// `EnumerateFlows`); anything else reads as not alive.
    pub(crate) fn watch_state(&self, caller: Caller, id: FlowId) -> FlowState {
        match self.flows.get(&id) {
            Some(f) if privileged(caller) || f.pid == caller.pid => FlowState {
                alive: true,
                mark: f.mark,
            },
            _ => FlowState::default(),
        }
    }

    /// The resolved mark of a flow of `handle`.
    pub(crate) fn flow_mark(&self, handle: HandleId, id: FlowId) -> Result<Mark, EngineError> {
        self.own_flow(handle, id).map(|f| f.mark)
    }

    /// The shaper of a flow of `handle`, if it has a rate.
    pub(crate) fn flow_shaper(
        &self,
        handle: HandleId,
        id: FlowId,
    ) -> Result<Option<ShaperId>, EngineError> {
        self.own_flow(handle, id).map(|f| f.shaper)
    }

    /// `QOSSetFlow(QOSSetOutgoingRate)`: 1168 for a flow that is not `handle`'s, then 87 for a
    /// rate outside `shaper::MIN_RATE_BPS..=MAX_RATE_BPS`, then 1450 / 8 when a new shaper
    /// cannot be made. The first rate creates the flow's shaper; a later one reconfigures it
    /// (same id, see `ShaperTable::reconfigure`). Nothing changes on error.
    pub(crate) fn set_flow_rate(
        &mut self,
        handle: HandleId,
        id: FlowId,
        config: Result<ShaperConfig, EngineError>,
        shapers: &mut ShaperTable,
    ) -> Result<(), EngineError> {
        let flow = self.own_flow_mut(handle, id)?;
        let config = config?;
        match flow.shaper {
            Some(shaper) if shapers.reconfigure(shaper, config) => {}
            _ => flow.shaper = Some(shapers.create(config)?),
        }
        Ok(())
    }

    /// `SetFlow(ClearOutgoingRate)` (qosmark extension): 1168 for a flow that is not
    /// `handle`'s; else the flow's shaper, if any, is removed (its held packets leave at once,
    /// `ShaperTable::remove`) and the flow is no longer shaped. Never fails otherwise.
    pub(crate) fn clear_flow_rate(
        &mut self,
        handle: HandleId,
        id: FlowId,
        shapers: &mut ShaperTable,
    ) -> Result<(), EngineError> {
        let flow = self.own_flow_mut(handle, id)?;
        if let Some(shaper) = flow.shaper.take() {
            shapers.remove(shaper);
        }
        Ok(())
    }

    /// Flow ids visible to `caller`: all for administrators and kernel callers, else the flows
    /// of the caller's process (§8). Ascending.
    pub(crate) fn enumerate(&self, caller: Caller) -> Result<Vec<FlowId>, EngineError> {
        let all = privileged(caller);
        let visible = |f: &Flow| all || f.pid == caller.pid;
        let mut ids = Vec::new();
        ids.try_reserve_exact(self.flows.values().filter(|f| visible(f)).count())?;
        ids.extend(
            self.flows
                .iter()
                .filter(|(_, f)| visible(f))
                .map(|(id, _)| *id),
        );
        ids.sort_unstable();
        Ok(ids)
    }

    /// Pins the unbound (tier 3) entries of `socket` in `handle`'s flows to `local`. All or
    /// nothing: 87 for a port-0 or wrong-family `local`, 183 when a pinned key is already held.
    pub(crate) fn socket_bound(
        &mut self,
        handle: HandleId,
        socket: u64,
        local: SocketAddr,
    ) -> Result<usize, EngineError> {
        self.handle(handle)?;
        let local = normalize(local);
        if local.port() == 0 {
            return Err(EngineError::InvalidParameter);
        }
        let pinned = |e: &Entry| match e.key {
            EntryKey::Unbound(_) if e.socket == socket => Some(EntryKey::new(
                (handle, socket),
                e.key.protocol(),
                local,
                e.key.remote(),
            )),
            _ => None,
        };
        // Pass 1: validate — every family first, then every conflict, so the answer does not
        // depend on map order. New keys differ by remote, so they are distinct.
        let new_keys = || {
            self.flows
                .values()
                .filter(|f| f.handle == handle)
                .flat_map(|f| f.entries.iter().filter_map(pinned))
        };
        let family_ok =
            |k: EntryKey| local.ip().is_unspecified() || local.is_ipv4() == k.remote().is_ipv4();
        if !new_keys().all(family_ok) {
            return Err(EngineError::InvalidParameter);
        }
        if new_keys().any(|k| self.index.holder(&k).is_some()) {
            return Err(EngineError::AlreadyExists);
        }
        let n = new_keys().count();
        // Every new key has the same local side, so they all go to one tier: `sample`'s.
        let sample = EntryKey::new(
            (handle, socket),
            Protocol::Tcp,
            local,
            SocketAddr::new(local.ip(), 1),
        );
        self.index.reserve(&sample, n)?;
        // Pass 2: commit (no allocation: capacity reserved above).
        let index = &mut self.index;
        let mut count = 0;
        for (id, flow) in self.flows.iter_mut().filter(|(_, f)| f.handle == handle) {
            for e in flow.entries.iter_mut() {
                if let Some(new_key) = pinned(&*e) {
                    index.remove(&e.key);
                    index.insert(new_key, *id);
                    e.key = new_key;
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    /// Registers a kernel flow (see `control::kernel` for the rules). One entry, one new flow.
    pub(crate) fn add_kernel_flow(
        &mut self,
        handle: HandleId,
        flow: &KernelFlow,
    ) -> Result<FlowId, EngineError> {
        let hs = self.handle(handle)?;
        if hs.caller.privilege != Privilege::Kernel {
            return Err(EngineError::AccessDenied);
        }
        let key = kernel_key(handle, flow)?;
        let (traffic_type, custom_dscp, custom_pcp) =
            kernel_mark(&self.table, hs.caller, &flow.mark)?;
        if self.index.holder(&key).is_some() {
            return Err(EngineError::AlreadyExists);
        }
        if self.index.len() >= self.limits.max_sockets
            || hs.entries >= self.limits.max_sockets_per_handle
            || self.flows.len() >= self.limits.max_flows
            || hs.flows >= self.limits.max_flows_per_handle
        {
            return Err(EngineError::LimitReached);
        }
        let id = free_id(self.next_flow, self.flows.len(), |c| {
            self.flows.contains_key(&c)
        })?;
        self.flows
            .try_reserve(1)
            .map_err(|_| EngineError::NoMemory)?;
        self.index.reserve(&key, 1)?;
        let mut new = Flow {
            handle,
            pid: hs.caller.pid,
            // Kernel handles only (checked above): never subject to the ownership check.
            user: false,
            traffic_type,
            adaptive: false,
            custom_dscp,
            custom_pcp,
            mark: Mark::default(),
            shaper: None,
            counters: Counters::default(),
            entries: Entries::One(Entry { socket: 0, key }),
        };
        new.mark = resolve_flow(&self.table, &new);
        let new = FlowBox::try_new(new)?;
        self.flows.insert(id, new);
        self.index.insert(key, id);
        self.next_flow = id.wrapping_add(1);
        self.bump_handle(handle, 1, 1);
        Ok(id)
    }

    /// Replaces a kernel flow's mark. 1168 before 87, as for `QOSSetFlow`.
    pub(crate) fn change_kernel_flow(
        &mut self,
        handle: HandleId,
        id: FlowId,
        mark: &KernelMark,
    ) -> Result<(), EngineError> {
        let caller = self.handle(handle)?.caller;
        if caller.privilege != Privilege::Kernel {
            return Err(EngineError::AccessDenied);
        }
        let table = self.table;
        self.own_flow(handle, id)?;
        let (traffic_type, custom_dscp, custom_pcp) = kernel_mark(&table, caller, mark)?;
        let flow = self.own_flow_mut(handle, id)?;
        flow.traffic_type = traffic_type;
        flow.custom_dscp = custom_dscp;
        flow.custom_pcp = custom_pcp;
        flow.mark = resolve_flow(&table, flow);
        Ok(())
    }

    /// Mark and counters of a flow of `handle`.
    pub(crate) fn flow_state(
        &self,
        handle: HandleId,
        id: FlowId,
    ) -> Result<(Mark, qosmark_abi::CounterSnapshot), EngineError> {
        self.handle(handle)?;
        self.own_flow(handle, id)
            .map(|f| (f.mark, f.counters.snapshot()))
    }

    /// Owned records of every flow (or of one handle's flows), ascending by id.
    pub(crate) fn details(
        &self,
        only: Option<HandleId>,
    ) -> Result<Vec<super::FlowDetail>, EngineError> {
        let mut out = Vec::new();
        out.try_reserve_exact(self.flows.len())?;
        for (id, f) in &self.flows {
            if only.is_some_and(|h| h != f.handle) {
                continue;
            }
            let mut sockets = Vec::new();
            sockets.try_reserve_exact(f.entries.len())?;
            sockets.extend(f.entries.iter().map(|e| super::SocketDetail {
                socket: e.socket,
                protocol: e.key.protocol(),
                binding: e.key.binding(),
                remote: e.key.remote(),
            }));
            out.push(super::FlowDetail {
                id: *id,
                handle: f.handle,
                pid: f.pid,
                traffic_type: f.traffic_type,
                adaptive: f.adaptive,
                custom_dscp: f.custom_dscp,
                mark: f.mark,
                counters: f.counters.snapshot(),
                shaper: f.shaper,
                sockets,
            });
        }
        out.sort_unstable_by_key(|d| d.id);
        Ok(out)
    }

    /// Owned records of the open handles, ascending by id.
    pub(crate) fn handle_details(&self) -> Result<Vec<super::HandleDetail>, EngineError> {
        let mut out = Vec::new();
        out.try_reserve_exact(self.handles.len())?;
        out.extend(self.handles.iter().map(|(id, h)| super::HandleDetail {
            id: *id,
            caller: h.caller,
            flows: h.flows,
            sockets: h.entries,
        }));
        out.sort_unstable_by_key(|d| d.id.0);
        Ok(out)
    }

    /// Checks the invariants in the module docs; the first violation is returned.
    pub(crate) fn check_invariants(&self, shapers: &ShaperTable) -> Result<(), &'static str> {
        let mut entries = 0usize;
        for (id, f) in &self.flows {
            if *id == 0 {
                return Err("flow id 0 is live");
            }
            if f.entries.is_empty() {
                return Err("a live flow has no socket");
            }
            if !self.handles.contains_key(&f.handle) {
                return Err("a flow outlived its handle");
            }
            if f.mark != resolve_flow(&self.table, f) {
                return Err("a cached mark is stale");
            }
            if f.shaper.is_some_and(|s| !shapers.is_live(s)) {
                return Err("a flow's shaper is dead");
            }
            for e in f.entries.iter() {
                if self.index.holder(&e.key) != Some(*id) {
                    return Err("an entry is not indexed to its flow");
                }
            }
            entries += f.entries.len();
        }
        if entries != self.index.len() {
            return Err("the index holds keys no entry owns (or one key twice)");
        }
        for (hid, h) in &self.handles {
            let flows = self.flows.values().filter(|f| f.handle == *hid);
            let (n, e) = flows.fold((0, 0), |(n, e), f| (n + 1, e + f.entries.len()));
            if (n, e) != (h.flows, h.entries) {
                return Err("handle counts disagree with its flows");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        reason = "test code: a failed unwrap or index is a failed test"
    )]
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn sock(family: Family, protocol: Protocol, local: &str, peer: Option<&str>) -> SocketInfo {
        SocketInfo {
            socket: 7,
            family,
            protocol,
            local: sa(local),
            peer: peer.map(sa),
        }
    }

    #[test]
    fn keys_pick_the_tier() {
        let s = sock(Family::V4, Protocol::Udp, "10.0.0.1:5000", None);
        assert!(matches!(
            entry_key_for(HandleId(1), &s, Some(sa("192.0.2.1:9"))),
            Ok(EntryKey::Exact(_))
        ));
        let s = sock(Family::V6, Protocol::Udp, "[::]:5000", None);
        assert!(matches!(
            entry_key_for(HandleId(1), &s, Some(sa("192.0.2.1:9"))),
            Ok(EntryKey::AnyLocal(_))
        ));
        let s = sock(Family::V4, Protocol::Tcp, "0.0.0.0:0", None);
        assert!(matches!(
            entry_key_for(HandleId(1), &s, Some(sa("192.0.2.1:9"))),
            Ok(EntryKey::Unbound(_))
        ));
    }

    #[test]
    fn keys_ignore_scope_and_flowinfo() {
        let s = sock(Family::V6, Protocol::Udp, "[fe80::1%3]:5000", None);
        let k1 = entry_key_for(HandleId(1), &s, Some(sa("[fe80::2%3]:9"))).unwrap();
        let s2 = sock(Family::V6, Protocol::Udp, "[fe80::1]:5000", None);
        let k2 = entry_key_for(HandleId(1), &s2, Some(sa("[fe80::2]:9"))).unwrap();
        assert_eq!(k1, k2);
    }

    #[test]
    fn free_id_skips_zero_and_live_ids() {
        assert_eq!(free_id(0, 0, |_| false), Ok(1));
        assert_eq!(free_id(u32::MAX, 1, |c| c == u32::MAX), Ok(1));
        assert_eq!(free_id(5, 2, |c| c == 5 || c == 6), Ok(7));
        // A lying count cannot make it loop forever.
        assert_eq!(free_id(1, 0, |_| true), Err(EngineError::LimitReached));
    }

    #[test]
    fn memory_per_entry_is_bounded() {
        use core::mem::size_of;
        // The estimate in the module docs rests on these sizes (64-bit targets).
        if size_of::<usize>() == 8 {
            assert!(size_of::<Entry>() <= 48, "{}", size_of::<Entry>());
            assert!(
                size_of::<(ExactKey, FlowId)>() <= 44,
                "{}",
                size_of::<(ExactKey, FlowId)>()
            );
            assert!(size_of::<Entries>() <= 56, "{}", size_of::<Entries>());
            assert!(size_of::<Flow>() <= 112, "{}", size_of::<Flow>());
            // Worst case: map half full right after growing (7/16) → bucket + ctrl byte × 16/7.
            let worst = size_of::<Entry>() + (size_of::<(ExactKey, FlowId)>() + 1) * 16 / 7;
            assert!(worst <= 150, "{worst}");
        }
    }
}
