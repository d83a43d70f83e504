//! Typed requests, responses and bounded values shared by the driver, the shim, the Linux back
//! end, kernel clients and the engine.
//!
//! These are the *decoded* forms: every value here is already valid by construction (bounded
//! newtypes, closed enums). The byte-level encoding lives in [`crate::codec`]; decoding untrusted
//! bytes is the only way untrusted input becomes one of these types.

use core::net::{IpAddr, SocketAddr};

/// A QOS2 flow id (`QOS_FLOWID`). 0 means "new flow" on input and is never assigned.
pub type FlowId = u32;

/// Maximum length in bytes (UTF-8) of a rule name.
pub const MAX_RULE_NAME_LEN: usize = 64;

/// The smallest outgoing rate or rule throttle, bit/s: one 1 500-byte packet per second.
/// Below it (0 included) `QOSSetOutgoingRate` and a rule's `throttle_bps` are refused with 87.
pub const MIN_RATE_BPS: u64 = 1500 * 8;

/// The largest outgoing rate or rule throttle, bit/s (100 Gbit/s): above it a minimal packet
/// would take less than the shaper's 1 ns clock unit (see the engine's `shaper` module).
pub const MAX_RATE_BPS: u64 = 100_000_000_000;

/// Error returned by the `try_new` constructors of bounded values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfRange;

/// A `DiffServ` code point, 0..=63 (RFC 2474: the upper six bits of the IPv4 TOS / IPv6 Traffic
/// Class octet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dscp(u8);

impl Dscp {
    /// Expedited Forwarding (RFC 3246), 46.
    pub const EF: Dscp = Dscp(46);
    /// Class selector 0 (default forwarding).
    pub const CS0: Dscp = Dscp(0);

    /// A DSCP from its 6-bit value.
    ///
    /// # Errors
    /// [`OutOfRange`] when `value > 63`.
    pub const fn try_new(value: u8) -> Result<Self, OutOfRange> {
        if value <= 63 {
            Ok(Dscp(value))
        } else {
            Err(OutOfRange)
        }
    }

    /// The 6-bit value.
    #[must_use]
    pub const fn value(self) -> u8 {
        self.0
    }
}

/// An IEEE 802.1p priority code point (PCP), 0..=7.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pcp(u8);

impl Pcp {
    /// Priority 0 (best effort).
    pub const ZERO: Pcp = Pcp(0);
    /// Priority 1 (802.1D background): the Windows packet scheduler's 802.1p for packets that
    /// do not conform to their flow's rate (qos-api.md §11.4).
    pub const ONE: Pcp = Pcp(1);

    /// A PCP from its 3-bit value.
    ///
    /// # Errors
    /// [`OutOfRange`] when `value > 7`.
    pub const fn try_new(value: u8) -> Result<Self, OutOfRange> {
        if value <= 7 {
            Ok(Pcp(value))
        } else {
            Err(OutOfRange)
        }
    }

    /// The 3-bit value.
    #[must_use]
    pub const fn value(self) -> u8 {
        self.0
    }
}

/// What to write into a packet. `None` fields are left as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Mark {
    /// DSCP to set (ECN bits are always kept).
    pub dscp: Option<Dscp>,
    /// 802.1p priority to request.
    pub pcp: Option<Pcp>,
}

impl Mark {
    /// True when the mark changes nothing.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.dscp.is_none() && self.pcp.is_none()
    }
}

/// `QOS_TRAFFIC_TYPE` (qos2.h), values 0..=5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum TrafficType {
    /// `QOSTrafficTypeBestEffort` = 0: no mark is added.
    BestEffort = 0,
    /// `QOSTrafficTypeBackground` = 1.
    Background = 1,
    /// `QOSTrafficTypeExcellentEffort` = 2.
    ExcellentEffort = 2,
    /// `QOSTrafficTypeAudioVideo` = 3.
    AudioVideo = 3,
    /// `QOSTrafficTypeVoice` = 4.
    Voice = 4,
    /// `QOSTrafficTypeControl` = 5.
    Control = 5,
}

impl TrafficType {
    /// All six traffic types in value order.
    pub const ALL: [TrafficType; 6] = [
        TrafficType::BestEffort,
        TrafficType::Background,
        TrafficType::ExcellentEffort,
        TrafficType::AudioVideo,
        TrafficType::Voice,
        TrafficType::Control,
    ];

    /// The type with this `QOS_TRAFFIC_TYPE` value.
    ///
    /// # Errors
    /// [`OutOfRange`] for values above 5.
    pub const fn try_from_u32(value: u32) -> Result<Self, OutOfRange> {
        match value {
            0 => Ok(TrafficType::BestEffort),
            1 => Ok(TrafficType::Background),
            2 => Ok(TrafficType::ExcellentEffort),
            3 => Ok(TrafficType::AudioVideo),
            4 => Ok(TrafficType::Voice),
            5 => Ok(TrafficType::Control),
            _ => Err(OutOfRange),
        }
    }

    /// The index of this type in [`TrafficType::ALL`] (its `QOS_TRAFFIC_TYPE` value).
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Transport protocol of a socket flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    #[must_use]
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// Address family of a socket (`AF_INET` / `AF_INET6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 socket.
    V4,
    /// IPv6 socket (possibly dual-stack).
    V6,
}

/// What the back end knows about a socket named in `QOSAddSocketToFlow` /
/// `QOSRemoveSocketFromFlow`. The back end fills it from the socket itself (Windows shim:
/// `getsockname`/`getpeername`, confirmed by the driver at the ALE layers; Linux: the descriptor
/// passed with `SCM_RIGHTS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketInfo {
    /// Opaque socket value (`SOCKET` / file descriptor) as the application knows it; scoped to the
    /// owning process.
    pub socket: u64,
    /// Address family the socket was created with.
    pub family: Family,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Local address and port; port 0 = not bound yet (TCP registered before `connect`).
    pub local: SocketAddr,
    /// Connected peer, if the socket is connected.
    pub peer: Option<SocketAddr>,
}

/// `QOSAddSocketToFlow` flags (`QOS_NON_ADAPTIVE_FLOW`).
pub const QOS_NON_ADAPTIVE_FLOW: u32 = 0x0000_0002;

/// `QOS_SHAPING` (qos2.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Shaping {
    /// `QOSShapeOnly` = 0.
    ShapeOnly = 0,
    /// `QOSShapeAndMark` = 1.
    ShapeAndMark = 1,
    /// `QOSUseNonConformantMarkings` = 2.
    UseNonConformantMarkings = 2,
}

/// `QOS_FLOWRATE_OUTGOING` (qos2.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowRate {
    /// Bits per second measured at the IP level.
    pub bandwidth: u64,
    /// Shaping behaviour.
    pub shaping: Shaping,
    /// `QOS_FLOWRATE_REASON` value, 0..=4, kept as given.
    pub reason: u32,
}

/// `QOS_SET_FLOW` operation with its input buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SetFlow {
    /// `QOSSetTrafficType` = 0.
    TrafficType(TrafficType),
    /// `QOSSetOutgoingRate` = 1.
    OutgoingRate(FlowRate),
    /// `QOSSetOutgoingDSCPValue` = 2. Kept as the caller's `DWORD`: values above 63 are rejected
    /// by the engine with 87, as qWAVE would.
    OutgoingDscp(u32),
    /// qosmark extension, operation 3 (not in `qos2.h`): the mark of a GQoS sending flowspec
    /// (`QmSetSocketQos`). The engine maps the service type to its documented default DSCP and
    /// 802.1p and applies the overrides under the privilege rules of `engine::control`.
    Service(ServiceMark),
    /// qosmark extension, operation 4 (not in `qos2.h`, which has no way to take a rate back):
    /// the flow stops being shaped and its shaper is removed (held packets leave at once). A
    /// flow without a rate is left as it is. GQoS needs it: a `QmSetSocketQos` without
    /// `QOS_SD_MODE` ends shaping, and a failed set must restore a flow that had no rate.
    ClearOutgoingRate,
}

/// The GQoS `SERVICETYPE` values (`qos.h`) that give a sending flow a mark. `NOTRAFFIC` and
/// `BESTEFFORT` end the flow and `NOCHANGE` keeps it, so they never reach the back end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ServiceType {
    /// `SERVICETYPE_CONTROLLEDLOAD` = 2: DSCP 24 (CS3), 802.1p 4.
    ControlledLoad = 2,
    /// `SERVICETYPE_GUARANTEED` = 3: DSCP 40 (CS5), 802.1p 5.
    Guaranteed = 3,
    /// `SERVICETYPE_NETWORK_CONTROL` = 0xA: DSCP 48 (CS6), 802.1p 7.
    NetworkControl = 0xA,
    /// `SERVICETYPE_QUALITATIVE` = 0xD: DSCP 0, 802.1p 0.
    Qualitative = 0xD,
}

impl ServiceType {
    /// The type with this `SERVICETYPE` value.
    ///
    /// # Errors
    /// [`OutOfRange`] for any other value.
    pub const fn try_from_u32(value: u32) -> Result<Self, OutOfRange> {
        match value {
            2 => Ok(ServiceType::ControlledLoad),
            3 => Ok(ServiceType::Guaranteed),
            0xA => Ok(ServiceType::NetworkControl),
            0xD => Ok(ServiceType::Qualitative),
            _ => Err(OutOfRange),
        }
    }

    /// The documented default conforming DSCP and 802.1p of the service type (qos-api.md
    /// §11.4: `QOS_DS_CLASS` and the Psched `UserPriorityMapping` defaults).
    #[must_use]
    pub const fn default_mark(self) -> (Dscp, Pcp) {
        let (d, p) = match self {
            ServiceType::Qualitative => (0, 0),
            ServiceType::ControlledLoad => (24, 4),
            ServiceType::Guaranteed => (40, 5),
            ServiceType::NetworkControl => (48, 7),
        };
        (Dscp(d), Pcp(p))
    }
}

/// [`SetFlow::Service`]: a service type and the optional `QOS_DS_CLASS` / `QOS_TRAFFIC_CLASS`
/// overrides of its DSCP and 802.1p.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceMark {
    /// The sending flowspec's service type.
    pub service: ServiceType,
    /// `QOS_DS_CLASS.DSField`, if given.
    pub dscp: Option<Dscp>,
    /// `QOS_TRAFFIC_CLASS.TrafficClass`, if given.
    pub pcp: Option<Pcp>,
}

/// What a flow looks like to [`Request::WatchFlow`]: alive or not, and its mark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowState {
    /// The flow exists (and the caller may see it).
    pub alive: bool,
    /// Its resolved mark; empty when not alive.
    pub mark: Mark,
}

/// `QOS_QUERY_FLOW` operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum QueryFlow {
    /// `QOSQueryFlowFundamentals` = 0.
    Fundamentals = 0,
    /// `QOSQueryPacketPriority` = 1.
    PacketPriority = 1,
    /// `QOSQueryOutgoingRate` = 2.
    OutgoingRate = 2,
}

/// `QOS_NOTIFY_FLOW` operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum NotifyFlow {
    /// `QOSNotifyCongested` = 0.
    Congested = 0,
    /// `QOSNotifyUncongested` = 1.
    Uncongested = 1,
    /// `QOSNotifyAvailable` = 2.
    Available = 2,
}

/// `QOS_PACKET_PRIORITY` (qos2.h): four `ULONG`s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PacketPriority {
    /// DSCP of conformant packets.
    pub conformant_dscp: u32,
    /// DSCP of non-conformant packets (only with `QOSUseNonConformantMarkings`).
    pub non_conformant_dscp: u32,
    /// 802.1p of conformant packets.
    pub conformant_l2: u32,
    /// 802.1p of non-conformant packets.
    pub non_conformant_l2: u32,
}

/// An IPv4 or IPv6 prefix (address + length). Addresses are stored masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    /// Network address (host bits zero).
    pub addr: IpAddr,
    /// Prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub len: u8,
}

/// An inclusive port range; a single port is `first == last`. Invariant: `first <= last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (inclusive).
    pub last: u16,
}

/// Protocol condition of a rule (`IPProtocolMatchCondition`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleProtocol {
    /// TCP only.
    Tcp,
    /// UDP only.
    Udp,
    /// TCP or UDP (the default).
    Any,
}

/// What a rule does to matching packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleAction {
    /// Set this DSCP (0 means "set 0").
    Dscp(Dscp),
    /// Mark as this traffic type through the traffic-type table (`BestEffort` = add no DSCP).
    TrafficType(TrafficType),
}

/// An administrator rule, the equivalent of a Windows policy-based `QoS` policy. Valid by
/// construction only when built through [`RuleSpec::validate`] or decoded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleSpec {
    /// Unique name, 1..=[`MAX_RULE_NAME_LEN`] bytes of UTF-8, no control characters.
    pub name: heapless_name::RuleName,
    /// 0..=255, higher wins.
    pub precedence: u8,
    /// Protocol condition.
    pub protocol: RuleProtocol,
    /// Local (source) address condition.
    pub local_prefix: Option<Prefix>,
    /// Remote (destination) address condition.
    pub remote_prefix: Option<Prefix>,
    /// Local (source) port condition.
    pub local_ports: Option<PortRange>,
    /// Remote (destination) port condition.
    pub remote_ports: Option<PortRange>,
    /// DSCP or traffic type.
    pub action: RuleAction,
    /// Optional 802.1p priority.
    pub pcp: Option<Pcp>,
    /// Optional throttle, bit/s at the IP level (`ThrottleRateActionBitsPerSecond`):
    /// [`MIN_RATE_BPS`]..=[`MAX_RATE_BPS`]. One token bucket for all the traffic the rule
    /// matches; traffic above the rate is delayed (shaped), as Windows' packet scheduler does.
    pub throttle_bps: Option<u64>,
}

/// Why a [`RuleSpec`] is not valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleSpecError {
    /// The local and remote prefixes are of different address families.
    MixedFamilies,
    /// A prefix length is too long for its family, or host bits are set.
    BadPrefix,
    /// An IPv4-mapped IPv6 prefix (inside `::ffff:0:0/96`): it could never match, because the
    /// engine keys IPv4 traffic of dual-stack sockets as IPv4. Write the IPv4 prefix instead.
    MappedPrefix,
    /// A port range has `first > last`.
    BadPortRange,
    /// The throttle is outside [`MIN_RATE_BPS`]..=[`MAX_RATE_BPS`].
    BadThrottle,
}

impl RuleSpec {
    /// Checks the invariants that the field types alone do not carry.
    ///
    /// # Errors
    /// The first violated invariant.
    pub fn validate(&self) -> Result<(), RuleSpecError> {
        for p in [self.local_prefix, self.remote_prefix]
            .into_iter()
            .flatten()
        {
            let max = match p.addr {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            };
            if p.len > max || !prefix_is_masked(p) {
                return Err(RuleSpecError::BadPrefix);
            }
            if let IpAddr::V6(a) = p.addr {
                if p.len >= 96 && a.to_ipv4_mapped().is_some() {
                    return Err(RuleSpecError::MappedPrefix);
                }
            }
        }
        if let (Some(a), Some(b)) = (self.local_prefix, self.remote_prefix) {
            if a.addr.is_ipv4() != b.addr.is_ipv4() {
                return Err(RuleSpecError::MixedFamilies);
            }
        }
        for r in [self.local_ports, self.remote_ports].into_iter().flatten() {
            if r.first > r.last {
                return Err(RuleSpecError::BadPortRange);
            }
        }
        if self
            .throttle_bps
            .is_some_and(|t| !(MIN_RATE_BPS..=MAX_RATE_BPS).contains(&t))
        {
            return Err(RuleSpecError::BadThrottle);
        }
        Ok(())
    }

    /// Number of conditions set (protocol other than `Any`, prefixes, ports): the first
    /// tie-breaker between rules of equal precedence.
    #[must_use]
    pub fn condition_count(&self) -> u32 {
        u32::from(self.protocol != RuleProtocol::Any)
            + u32::from(self.local_prefix.is_some())
            + u32::from(self.remote_prefix.is_some())
            + u32::from(self.local_ports.is_some())
            + u32::from(self.remote_ports.is_some())
    }
}

fn prefix_is_masked(p: Prefix) -> bool {
    match p.addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = if p.len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(p.len.min(32)))
            };
            bits & !mask == 0
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = if p.len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(p.len.min(128)))
            };
            bits & !mask == 0
        }
    }
}

/// Rule names: a small fixed-capacity UTF-8 string so the type stays `no_std` without `alloc`.
pub mod heapless_name {
    use super::MAX_RULE_NAME_LEN;

    /// A validated rule name (1..=64 bytes of UTF-8, no control characters).
    #[derive(Clone, Copy, PartialEq, Eq, Hash)]
    pub struct RuleName {
        len: u8,
        bytes: [u8; MAX_RULE_NAME_LEN],
    }

    /// Why a name was refused.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum NameError {
        /// Empty name.
        Empty,
        /// More than 64 bytes.
        TooLong,
        /// Not UTF-8, or contains a control character.
        BadCharacter,
    }

    impl RuleName {
        /// Validates and copies a name.
        ///
        /// # Errors
        /// [`NameError`] describing the first problem.
        pub fn try_new(name: &str) -> Result<Self, NameError> {
            if name.is_empty() {
                return Err(NameError::Empty);
            }
            if name.len() > MAX_RULE_NAME_LEN {
                return Err(NameError::TooLong);
            }
            if name.chars().any(char::is_control) {
                return Err(NameError::BadCharacter);
            }
            let mut bytes = [0u8; MAX_RULE_NAME_LEN];
            for (dst, src) in bytes.iter_mut().zip(name.as_bytes()) {
                *dst = *src;
            }
            Ok(RuleName {
                len: name.len() as u8,
                bytes,
            })
        }

        /// Validates raw bytes (as decoded from the wire).
        ///
        /// # Errors
        /// [`NameError::BadCharacter`] when not UTF-8; otherwise as [`RuleName::try_new`].
        pub fn from_utf8(bytes: &[u8]) -> Result<Self, NameError> {
            let s = core::str::from_utf8(bytes).map_err(|_| NameError::BadCharacter)?;
            Self::try_new(s)
        }

        /// The name.
        #[must_use]
        pub fn as_str(&self) -> &str {
            let bytes = self.bytes.get(..usize::from(self.len)).unwrap_or_default();
            // Constructed only from a valid `&str` of exactly `len` bytes.
            core::str::from_utf8(bytes).unwrap_or_default()
        }
    }

    impl core::fmt::Debug for RuleName {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            core::fmt::Debug::fmt(self.as_str(), f)
        }
    }

    impl core::fmt::Display for RuleName {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str(self.as_str())
        }
    }
}

/// The mark one traffic type maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrafficTypeMark {
    /// DSCP, or `None` for "not added" (`BestEffort` by default).
    pub dscp: Option<Dscp>,
    /// 802.1p, or `None` for "not added".
    pub pcp: Option<Pcp>,
}

/// The administrator-editable traffic-type table and user privileges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrafficTable {
    /// Mark per traffic type, indexed by [`TrafficType::index`].
    pub marks: [TrafficTypeMark; 6],
    /// Bit `n` set = DSCP `n` may be set with `QOSSetOutgoingDSCPValue` by callers that are not
    /// administrators. Default 0 (qWAVE: administrators only).
    pub user_dscp_allow: u64,
    /// Whether adaptive flows (added without `QOS_NON_ADAPTIVE_FLOW`) request 802.1p. qWAVE tags
    /// only adaptive flows, and non-adaptive flows never.
    pub tag_adaptive_flows: bool,
    /// DSCP of packets above the rate of a flow shaped with `QOSUseNonConformantMarkings`
    /// (`QOS_PACKET_PRIORITY.NonConformantDSCPValue`). Default 0 (best effort).
    pub non_conformant_dscp: Dscp,
    /// 802.1p of those packets, requested only when the flow's conformant mark requests one
    /// (`QOS_PACKET_PRIORITY.NonConformantL2Value`). Default 1 (the Windows packet scheduler's
    /// non-conforming 802.1p, qos-api.md §11.4).
    pub non_conformant_pcp: Pcp,
}

/// Identity of the caller that opened a handle, captured by the back end at open time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Caller {
    /// Process id of the opener (0 for kernel callers).
    pub pid: u32,
    /// Privilege level.
    pub privilege: Privilege,
}

/// Privilege of a caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Privilege {
    /// Ordinary user.
    User,
    /// Administrators or Network Configuration Operators (Linux: uid 0 or `CAP_NET_ADMIN`).
    Admin,
    /// Another kernel driver through the kernel interface: trusted for DSCP values.
    Kernel,
}

/// A control request, decoded. Handle open/close are not requests: they are the back end's
/// `IRP_MJ_CREATE`/`IRP_MJ_CLEANUP` (Windows) or connection open/close (Linux).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Protocol version and global counters.
    QueryStatus,
    /// `QOSAddSocketToFlow`.
    AddSocketToFlow {
        /// The socket, as the back end resolved it.
        socket: SocketInfo,
        /// `DestAddr`, if given.
        dest: Option<SocketAddr>,
        /// Traffic type.
        traffic_type: TrafficType,
        /// 0 or [`QOS_NON_ADAPTIVE_FLOW`]; other bits → 87.
        flags: u32,
        /// 0 = new flow, else an existing flow of this handle.
        flow_id: FlowId,
    },
    /// `QOSRemoveSocketFromFlow`: one socket (`Some`) or the whole flow (`None`).
    RemoveSocketFromFlow {
        /// The socket to remove, or `None` for the whole flow.
        socket: Option<u64>,
        /// Flow id.
        flow_id: FlowId,
    },
    /// `QOSSetFlow`.
    SetFlow {
        /// Flow id.
        flow_id: FlowId,
        /// Operation and value.
        op: SetFlow,
    },
    /// `QOSQueryFlow`.
    QueryFlow {
        /// Flow id.
        flow_id: FlowId,
        /// Operation.
        op: QueryFlow,
    },
    /// `QOSNotifyFlow`.
    NotifyFlow {
        /// Flow id.
        flow_id: FlowId,
        /// Operation.
        op: NotifyFlow,
        /// Threshold for `QOSNotifyAvailable` (bit/s).
        threshold: Option<u64>,
    },
    /// `QOSEnumerateFlows`: admins get every flow, others their own.
    EnumerateFlows,
    /// Add an admin rule (admin only).
    AddRule(RuleSpec),
    /// Remove an admin rule by name (admin only).
    RemoveRule(heapless_name::RuleName),
    /// List admin rules with counters.
    ListRules,
    /// Read the traffic-type table and user DSCP allow-list.
    GetTrafficTable,
    /// Replace the traffic-type table and user DSCP allow-list (admin only).
    SetTrafficTable(TrafficTable),
    /// One page of flow details (`qosmarkctl flows`): the flows with an id above `after`,
    /// ascending. Administrators see every flow, others the flows of their own process (the
    /// rule of [`Request::EnumerateFlows`]).
    ListFlows {
        /// Only flows with a larger id (0 = from the first flow).
        after: FlowId,
    },
    /// Replace the whole rule set atomically (admin only): every rule is validated first and
    /// on any error nothing changes. Rule counters start again from zero.
    ReplaceRules(alloc::vec::Vec<RuleSpec>),
    /// qosmark extension (GQoS `FD_QOS`): the state of a flow of the caller's **process** (any
    /// of its handles; administrators and kernel callers: any flow). With `known: None` the
    /// back end answers at once. With `known: Some(s)` it answers at once when the state differs
    /// from `s`, and otherwise **holds** the request until the state changes (the flow ends or
    /// its mark changes) or the handle closes (995). A flow the caller may not see reads as not
    /// alive.
    WatchFlow {
        /// The flow.
        flow_id: FlowId,
        /// The state the caller knows.
        known: Option<FlowState>,
    },
}

/// The local side of a listed socket entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketBinding {
    /// Bound to this address and port.
    Address(SocketAddr),
    /// Bound to the unspecified address with this port (any local address matches).
    AnyAddress {
        /// Local port.
        port: u16,
    },
    /// A TCP socket registered before `connect`: it matches nothing until its local port is
    /// known.
    NotBound,
}

/// One socket / destination entry of a listed flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowSocket {
    /// Socket value as the owning process knows it.
    pub socket: u64,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Local side.
    pub binding: SocketBinding,
    /// Destination (v4-mapped shown as IPv4).
    pub remote: SocketAddr,
}

/// One flow as listed by [`Request::ListFlows`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    /// Flow id (never 0).
    pub id: FlowId,
    /// Process id of the owner.
    pub pid: u32,
    /// Traffic type.
    pub traffic_type: TrafficType,
    /// Added without `QOS_NON_ADAPTIVE_FLOW`.
    pub adaptive: bool,
    /// DSCP set with `QOSSetOutgoingDSCPValue`.
    pub custom_dscp: Option<Dscp>,
    /// The mark the flow's packets get.
    pub mark: Mark,
    /// Packet counters.
    pub counters: CounterSnapshot,
    /// How many socket entries the flow has; `sockets` holds the first
    /// `min(sockets_total, MAX_LISTED_SOCKETS)` of them (`codec::MAX_LISTED_SOCKETS`).
    pub sockets_total: u32,
    /// The first socket entries, in registration order.
    pub sockets: alloc::vec::Vec<FlowSocket>,
}

/// One page of [`Request::ListFlows`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowPage {
    /// Flows, ascending by id (at most `codec::MAX_FLOWS_PER_PAGE`).
    pub flows: alloc::vec::Vec<FlowRecord>,
    /// 0 when this is the last page; otherwise the id of the last flow listed, to be passed as
    /// `after` for the next page.
    pub next_after: FlowId,
}

/// Per-object (flow or rule) packet counters, as reported.
///
/// A packet reaches a flow's or a rule's counters only once it matched, so the only reason a
/// matched packet goes unmarked is that the flow or rule adds no mark (`BestEffort`): those
/// are `packets - marked - already_marked` (see [`CounterSnapshot::not_marked`]). Every other
/// skip reason arises before a match and is counted globally ([`StatusInfo::skipped`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CounterSnapshot {
    /// Packets that matched.
    pub packets: u64,
    /// Bytes (IP length) of packets that matched.
    pub bytes: u64,
    /// Packets rewritten.
    pub marked: u64,
    /// Packets that already carried the target mark.
    pub already_marked: u64,
}

impl CounterSnapshot {
    /// Matched packets left unmarked because the flow or rule adds no mark
    /// ([`SkipReason::NoMarkConfigured`]).
    #[must_use]
    pub const fn not_marked(&self) -> u64 {
        self.packets
            .saturating_sub(self.marked)
            .saturating_sub(self.already_marked)
    }
}

/// Why the engine let a packet go without marking it. Each reason has its own global counter;
/// the numeric values are part of the wire contract (index into [`StatusInfo::skipped`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SkipReason {
    /// No socket flow and no rule matched.
    NoMatch = 0,
    /// The matching flow or rule adds no mark (`BestEffort`).
    NoMarkConfigured = 1,
    /// Not IPv4 or IPv6.
    NotIp = 2,
    /// IP header malformed (bad version, IHL, lengths).
    Malformed = 3,
    /// Shorter than its headers claim.
    Truncated = 4,
    /// Transport header unreachable: ESP, AH, unknown extension header, extension chain too long.
    TransportUnreachable = 5,
    /// Non-first IPv4/IPv6 fragment whose first fragment was not seen (or expired).
    FragmentUnknown = 6,
    /// Neither TCP nor UDP.
    OtherProtocol = 7,
    /// Injected by qosmark itself (back end told us).
    SelfInjected = 8,
    /// Only a user's socket flow matched, and the flow-ownership check (on in the Windows
    /// driver) could not confirm the packet belongs to that user's process.
    NotOwner = 9,
}

impl SkipReason {
    /// Number of reasons (length of [`StatusInfo::skipped`]).
    pub const COUNT: usize = 10;

    /// All reasons in value order.
    pub const ALL: [SkipReason; Self::COUNT] = [
        SkipReason::NoMatch,
        SkipReason::NoMarkConfigured,
        SkipReason::NotIp,
        SkipReason::Malformed,
        SkipReason::Truncated,
        SkipReason::TransportUnreachable,
        SkipReason::FragmentUnknown,
        SkipReason::OtherProtocol,
        SkipReason::SelfInjected,
        SkipReason::NotOwner,
    ];

    /// Short stable name, for logs and JSON.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            SkipReason::NoMatch => "no_match",
            SkipReason::NoMarkConfigured => "no_mark_configured",
            SkipReason::NotIp => "not_ip",
            SkipReason::Malformed => "malformed",
            SkipReason::Truncated => "truncated",
            SkipReason::TransportUnreachable => "transport_unreachable",
            SkipReason::FragmentUnknown => "fragment_unknown",
            SkipReason::OtherProtocol => "other_protocol",
            SkipReason::SelfInjected => "self_injected",
            SkipReason::NotOwner => "not_owner",
        }
    }
}

/// Why a packet went out other than the engine first decided (fail open): unmarked although
/// the engine asked for a mark — the back end reports those with `Engine::record_fail_open` —
/// or at once although its shaper wanted it delayed ([`FailOpen::ShaperQueueFull`], counted
/// by the engine itself). `QueryStatus` shows them next to the engine's own [`SkipReason`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FailOpen {
    /// Windows: the classify call did not carry `FWPS_RIGHT_ACTION_WRITE` (another callout
    /// decided first).
    NoWriteRight = 0,
    /// The headers could not be read contiguously (`NdisGetDataBuffer` failed; a netfilter
    /// message without a payload).
    HeaderUnreadable = 1,
    /// Allocating the modified copy failed (`FwpsAllocateCloneNetBufferList0`, or no memory).
    CloneFailed = 2,
    /// The engine's rewrite refused a packet it had classified (should not happen; counted).
    RewriteFailed = 3,
    /// Re-injection failed (`FwpsInjectNetworkSendAsync0` returned an error).
    InjectFailed = 4,
    /// Linux: the verdict carrying the rewritten packet could not be sent; the packet was
    /// accepted unchanged instead.
    VerdictFailed = 5,
    /// The packet was larger than the back end's buffer for rewriting it.
    Oversize = 6,
    /// The engine: a packet its shaper should have delayed found no queue room (the shaper's
    /// or the global packet / byte limit, `Limits::shaper_queue_*` / `held_*_total`), or the
    /// back end could not hold it. It was sent at once with its conformant mark instead.
    ShaperQueueFull = 7,
}

impl FailOpen {
    /// Number of reasons (length of [`StatusInfo::fail_open`]).
    pub const COUNT: usize = 8;

    /// All reasons in value order.
    pub const ALL: [FailOpen; Self::COUNT] = [
        FailOpen::NoWriteRight,
        FailOpen::HeaderUnreadable,
        FailOpen::CloneFailed,
        FailOpen::RewriteFailed,
        FailOpen::InjectFailed,
        FailOpen::VerdictFailed,
        FailOpen::Oversize,
        FailOpen::ShaperQueueFull,
    ];

    /// Short stable name, for logs and JSON.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            FailOpen::NoWriteRight => "no_write_right",
            FailOpen::HeaderUnreadable => "header_unreadable",
            FailOpen::CloneFailed => "clone_failed",
            FailOpen::RewriteFailed => "rewrite_failed",
            FailOpen::InjectFailed => "inject_failed",
            FailOpen::VerdictFailed => "verdict_failed",
            FailOpen::Oversize => "oversize",
            FailOpen::ShaperQueueFull => "shaper_queue_full",
        }
    }
}

/// Global engine state and counters (`QueryStatus`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StatusInfo {
    /// Wire protocol version the engine speaks ([`crate::PROTOCOL_VERSION`]).
    pub protocol_version: u16,
    /// Open handles.
    pub handles: u32,
    /// Live flows.
    pub flows: u32,
    /// Registered sockets / destinations.
    pub sockets: u32,
    /// Admin rules.
    pub rules: u32,
    /// Live shapers (rate-limited flows and throttled rules).
    pub shapers: u32,
    /// Packets classified: `marked + already_marked + delayed + sum(skipped)`.
    pub packets: u64,
    /// Packets rewritten.
    pub marked: u64,
    /// Packets that already carried their target mark.
    pub already_marked: u64,
    /// Packets left unmarked, per [`SkipReason`].
    pub skipped: [u64; SkipReason::COUNT],
    /// Packets the engine wanted marked that the back end sent unmarked, or wanted delayed
    /// and sent at once, per [`FailOpen`].
    pub fail_open: [u64; FailOpen::COUNT],
    /// Packets a shaper told the back end to hold (`Verdict::Delay`).
    pub delayed: u64,
    /// Packets a shaper gave the non-conformant mark (`QOSUseNonConformantMarkings`); they are
    /// also counted in `marked`, `already_marked` or `delayed`.
    pub non_conformant: u64,
}

/// One rule as listed, with its counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleEntry {
    /// The rule.
    pub spec: RuleSpec,
    /// Its counters.
    pub counters: CounterSnapshot,
}

/// A successful answer, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Request done, nothing to return.
    Done,
    /// `QueryStatus`.
    Status(StatusInfo),
    /// `AddSocketToFlow`: the flow id (new or the one given).
    FlowId(FlowId),
    /// `QueryFlow(PacketPriority)`.
    PacketPriority(PacketPriority),
    /// `QueryFlow(OutgoingRate)`: bit/s.
    OutgoingRate(u64),
    /// `EnumerateFlows`.
    FlowIds(alloc::vec::Vec<FlowId>),
    /// `ListRules`, in insertion order.
    Rules(alloc::vec::Vec<RuleEntry>),
    /// `GetTrafficTable`.
    TrafficTable(TrafficTable),
    /// `ListFlows`: one page.
    Flows(FlowPage),
    /// `WatchFlow`: the flow's state now.
    FlowState(FlowState),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    fn spec(remote: Prefix) -> RuleSpec {
        RuleSpec {
            name: heapless_name::RuleName::try_new("r").unwrap(),
            precedence: 127,
            protocol: RuleProtocol::Any,
            local_prefix: None,
            remote_prefix: Some(remote),
            local_ports: None,
            remote_ports: None,
            action: RuleAction::Dscp(Dscp::EF),
            pcp: None,
            throttle_bps: None,
        }
    }

    #[test]
    fn validate_prefixes() {
        let p = |a: &str, len| Prefix {
            addr: a.parse().unwrap(),
            len,
        };
        assert_eq!(spec(p("10.1.0.0", 16)).validate(), Ok(()));
        assert_eq!(
            spec(p("10.1.0.1", 16)).validate(),
            Err(RuleSpecError::BadPrefix)
        );
        assert_eq!(
            spec(p("10.0.0.0", 33)).validate(),
            Err(RuleSpecError::BadPrefix)
        );
        assert_eq!(
            spec(p("::ffff:10.1.2.0", 120)).validate(),
            Err(RuleSpecError::MappedPrefix)
        );
        // Prefixes that merely contain the mapped range are ordinary IPv6 prefixes.
        assert_eq!(spec(p("::", 0)).validate(), Ok(()));
        assert_eq!(spec(p("::", 80)).validate(), Ok(()));
        assert_eq!(spec(p("2001:db8::", 32)).validate(), Ok(()));
    }

    #[test]
    fn validate_throttle() {
        let mut s = spec(Prefix {
            addr: "10.0.0.0".parse().unwrap(),
            len: 8,
        });
        for (t, ok) in [
            (0, false),
            (MIN_RATE_BPS - 1, false),
            (MIN_RATE_BPS, true),
            (MAX_RATE_BPS, true),
            (MAX_RATE_BPS + 1, false),
            (u64::MAX, false),
        ] {
            s.throttle_bps = Some(t);
            let want = if ok {
                Ok(())
            } else {
                Err(RuleSpecError::BadThrottle)
            };
            assert_eq!(s.validate(), want, "{t}");
        }
    }
}
