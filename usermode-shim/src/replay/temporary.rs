//! TEMPORARY, replaced at merge. Stand-ins with the exact names and signatures of APIs other
//! branches are writing right now: `qosmark_engine::{Engine::{open_handle, apply, classify},
//! wire::{set_dscp, set_pcp}}` and `qosmark_shim::rules_file::parse_rules`. They exist only so
//! replay can be built and tested end to end before the merge; the integration tests check
//! replay's output with independent oracles (tshark, etherparse), so they hold for the real
//! engine too. Delete this module at merge (see the `use` lines in `replay.rs`).
//!
//! Semantics implemented (a subset of the engine's, enough for the test captures): IPv4 and
//! IPv6 (hop-by-hop, routing, destination options and fragment headers), TCP/UDP ports,
//! first-fragment memory, admin rules by precedence then number of conditions then insertion
//! order, qWAVE's traffic-type table, per-rule and per-skip-reason counters.
#![allow(
    clippy::missing_errors_doc,
    clippy::unused_self,
    clippy::unnecessary_wraps,
    clippy::trivially_copy_pass_by_ref,
    clippy::needless_pass_by_value,
    clippy::too_many_lines,
    reason = "TEMPORARY stand-in mirroring the engine's signatures, replaced at merge"
)]

use core::cell::RefCell;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use qosmark_abi::{
    Caller, CounterSnapshot, Dscp, Mark, Request, Response, RuleAction, RuleEntry, RuleProtocol,
    RuleSpec, SkipReason, StatusInfo, TrafficType,
};
use qosmark_engine::{Limits, PacketMeta, Verdict};
use std::collections::HashMap;

pub use qosmark_engine::EngineError;

/// Stand-in for `qosmark_engine::HandleId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandleId(pub u32);

/// Stand-in for `qosmark_engine::Engine` (rules and classify only).
#[derive(Debug)]
pub struct Engine {
    rules: Vec<RuleSpec>,
    counters: RefCell<Vec<CounterSnapshot>>,
    status: RefCell<StatusInfo>,
    fragments: RefCell<HashMap<(IpAddr, IpAddr, u32), Option<usize>>>,
}

impl Engine {
    /// An empty engine.
    #[must_use]
    pub fn new(_limits: Limits) -> Self {
        Engine {
            rules: Vec::new(),
            counters: RefCell::new(Vec::new()),
            status: RefCell::new(StatusInfo::default()),
            fragments: RefCell::new(HashMap::new()),
        }
    }

    /// Opens a handle.
    pub fn open_handle(&mut self, _caller: Caller) -> Result<HandleId, EngineError> {
        Ok(HandleId(1))
    }

    /// Applies the requests replay uses.
    pub fn apply(&mut self, _h: HandleId, req: &Request) -> Result<Response, EngineError> {
        match req {
            Request::AddRule(spec) => {
                if self.rules.iter().any(|r| r.name == spec.name) {
                    return Err(EngineError::AlreadyExists);
                }
                spec.validate().map_err(|_| EngineError::InvalidParameter)?;
                self.rules.push(spec.clone());
                self.counters.borrow_mut().push(CounterSnapshot::default());
                Ok(Response::Done)
            }
            Request::ListRules => Ok(Response::Rules(
                self.rules
                    .iter()
                    .zip(self.counters.borrow().iter())
                    .map(|(spec, c)| RuleEntry {
                        spec: spec.clone(),
                        counters: *c,
                    })
                    .collect(),
            )),
            Request::QueryStatus => Ok(Response::Status(*self.status.borrow())),
            _ => Err(EngineError::NotSupported),
        }
    }

    /// Classifies one outbound IP packet.
    pub fn classify(&self, ip: &[u8], meta: &PacketMeta, _now_ns: u64) -> Verdict {
        let verdict = self.decide(ip, meta);
        let mut st = self.status.borrow_mut();
        st.packets += 1;
        match verdict {
            Verdict::Skip(r) => {
                if let Some(c) = st.skipped.get_mut(r as usize) {
                    *c += 1;
                }
            }
            Verdict::AlreadyMarked => st.already_marked += 1,
            Verdict::Mark(_) => st.marked += 1,
        }
        verdict
    }

    fn decide(&self, ip: &[u8], meta: &PacketMeta) -> Verdict {
        let p = match parse(ip) {
            Ok(p) => p,
            Err(r) => return Verdict::Skip(r),
        };
        let key = (p.src, p.dst, p.frag_id);
        let rule = if p.frag_offset != 0 {
            match self.fragments.borrow().get(&key) {
                Some(r) => *r,
                None => return Verdict::Skip(SkipReason::FragmentUnknown),
            }
        } else {
            let Some((proto, sport, dport)) = p.transport else {
                return Verdict::Skip(p.skip);
            };
            let r = self.lookup(proto, p.src, p.dst, sport, dport);
            if p.more_fragments {
                self.fragments.borrow_mut().insert(key, r);
            }
            r
        };
        let Some(idx) = rule else {
            return Verdict::Skip(SkipReason::NoMatch);
        };
        let Some(spec) = self.rules.get(idx) else {
            return Verdict::Skip(SkipReason::NoMatch);
        };
        let dscp = match spec.action {
            RuleAction::Dscp(d) => Some(d),
            RuleAction::TrafficType(tt) => qwave_dscp(tt),
        };
        let mark = Mark {
            dscp,
            pcp: spec.pcp,
        };
        let mut counters = self.counters.borrow_mut();
        let Some(c) = counters.get_mut(idx) else {
            return Verdict::Skip(SkipReason::NoMatch);
        };
        c.packets += 1;
        c.bytes += u64::from(p.ip_len);
        if mark.is_empty() {
            return Verdict::Skip(SkipReason::NoMarkConfigured);
        }
        let dscp_ok = mark.dscp.is_none_or(|d| d.value() == p.dscp);
        let pcp_ok = mark.pcp.is_none_or(|x| meta.current_pcp == Some(x));
        if dscp_ok && pcp_ok {
            c.already_marked += 1;
            Verdict::AlreadyMarked
        } else {
            c.marked += 1;
            Verdict::Mark(mark)
        }
    }

    fn lookup(&self, proto: u8, src: IpAddr, dst: IpAddr, sp: u16, dp: u16) -> Option<usize> {
        let mut best: Option<(usize, &RuleSpec)> = None;
        for (i, r) in self.rules.iter().enumerate() {
            let proto_ok = match r.protocol {
                RuleProtocol::Tcp => proto == 6,
                RuleProtocol::Udp => proto == 17,
                RuleProtocol::Any => true,
            };
            let pre = |p: Option<qosmark_abi::Prefix>, a: IpAddr| p.is_none_or(|p| in_prefix(p, a));
            let port = |r: Option<qosmark_abi::PortRange>, v: u16| {
                r.is_none_or(|r| r.first <= v && v <= r.last)
            };
            if proto_ok
                && pre(r.local_prefix, src)
                && pre(r.remote_prefix, dst)
                && port(r.local_ports, sp)
                && port(r.remote_ports, dp)
            {
                let better = best.is_none_or(|(_, b)| {
                    (r.precedence, r.condition_count()) > (b.precedence, b.condition_count())
                });
                if better {
                    best = Some((i, r));
                }
            }
        }
        best.map(|(i, _)| i)
    }
}

fn in_prefix(p: qosmark_abi::Prefix, a: IpAddr) -> bool {
    match (p.addr, a) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let m = if p.len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(p.len))
            };
            u32::from(a) & m == u32::from(n)
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let m = if p.len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(p.len))
            };
            u128::from(a) & m == u128::from(n)
        }
        _ => false,
    }
}

/// qWAVE's documented DSCP per traffic type (qos-api.md §3).
fn qwave_dscp(tt: TrafficType) -> Option<Dscp> {
    let v = match tt {
        TrafficType::BestEffort => return None,
        TrafficType::Background => 8,
        TrafficType::ExcellentEffort | TrafficType::AudioVideo => 40,
        TrafficType::Voice | TrafficType::Control => 56,
    };
    Dscp::try_new(v).ok()
}

struct Parsed {
    src: IpAddr,
    dst: IpAddr,
    dscp: u8,
    ip_len: u16,
    frag_id: u32,
    frag_offset: u16,
    more_fragments: bool,
    transport: Option<(u8, u16, u16)>,
    skip: SkipReason,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn parse(ip: &[u8]) -> Result<Parsed, SkipReason> {
    let first = *ip.first().ok_or(SkipReason::Truncated)?;
    match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            if ihl < 20 {
                return Err(SkipReason::Malformed);
            }
            if ip.len() < ihl {
                return Err(SkipReason::Truncated);
            }
            let total = be16(ip, 2).ok_or(SkipReason::Truncated)?;
            if usize::from(total) < ihl {
                return Err(SkipReason::Malformed);
            }
            if usize::from(total) > ip.len() {
                return Err(SkipReason::Truncated);
            }
            let b = |i: usize| ip.get(i).copied().unwrap_or(0);
            let frag = be16(ip, 6).ok_or(SkipReason::Truncated)?;
            let proto = b(9);
            let src = IpAddr::V4(Ipv4Addr::new(b(12), b(13), b(14), b(15)));
            let dst = IpAddr::V4(Ipv4Addr::new(b(16), b(17), b(18), b(19)));
            let frag_offset = frag & 0x1fff;
            let payload = ip
                .get(ihl..usize::from(total))
                .ok_or(SkipReason::Truncated)?;
            let (transport, skip) = transport(proto, payload, frag_offset);
            Ok(Parsed {
                src,
                dst,
                dscp: b(1) >> 2,
                ip_len: total,
                frag_id: u32::from(be16(ip, 4).unwrap_or(0)) | (u32::from(proto) << 16),
                frag_offset,
                more_fragments: frag & 0x2000 != 0,
                transport,
                skip,
            })
        }
        6 => {
            if ip.len() < 40 {
                return Err(SkipReason::Truncated);
            }
            let plen = usize::from(be16(ip, 4).ok_or(SkipReason::Truncated)?);
            if 40 + plen > ip.len() {
                return Err(SkipReason::Truncated);
            }
            let addr = |at: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(ip.get(at..at + 16).unwrap_or(&[0; 16]));
                IpAddr::V6(Ipv6Addr::from(a))
            };
            let tc = ((be16(ip, 0).unwrap_or(0) >> 4) & 0xff) as u8;
            let mut nh = ip.get(6).copied().unwrap_or(0);
            let mut at = 40usize;
            let end = 40 + plen;
            let (mut frag_offset, mut more, mut id) = (0u16, false, 0u32);
            for _ in 0..8 {
                match nh {
                    0 | 43 | 60 => {
                        let n = ip.get(at).copied().ok_or(SkipReason::Truncated)?;
                        let l = ip.get(at + 1).copied().ok_or(SkipReason::Truncated)?;
                        nh = n;
                        at += (usize::from(l) + 1) * 8;
                    }
                    44 => {
                        nh = ip.get(at).copied().ok_or(SkipReason::Truncated)?;
                        let f = be16(ip, at + 2).ok_or(SkipReason::Truncated)?;
                        frag_offset = f >> 3;
                        more = f & 1 != 0;
                        let i: [u8; 4] = ip
                            .get(at + 4..at + 8)
                            .and_then(|i| i.try_into().ok())
                            .ok_or(SkipReason::Truncated)?;
                        id = u32::from_be_bytes(i);
                        at += 8;
                    }
                    _ => break,
                }
                if at > end {
                    return Err(SkipReason::Truncated);
                }
            }
            if matches!(nh, 0 | 43 | 60 | 44 | 50 | 51) {
                return Err(SkipReason::TransportUnreachable);
            }
            let payload = ip.get(at..end).ok_or(SkipReason::Truncated)?;
            let (transport, skip) = transport(nh, payload, frag_offset);
            Ok(Parsed {
                src: addr(8),
                dst: addr(24),
                dscp: tc >> 2,
                ip_len: (40 + plen) as u16,
                frag_id: id,
                frag_offset,
                more_fragments: more,
                transport,
                skip,
            })
        }
        _ => Err(SkipReason::NotIp),
    }
}

fn transport(proto: u8, payload: &[u8], frag_offset: u16) -> (Option<(u8, u16, u16)>, SkipReason) {
    if frag_offset != 0 {
        return (None, SkipReason::FragmentUnknown);
    }
    if proto != 6 && proto != 17 {
        return (None, SkipReason::OtherProtocol);
    }
    match (be16(payload, 0), be16(payload, 2)) {
        (Some(s), Some(d)) => (Some((proto, s, d)), SkipReason::NoMatch),
        _ => (None, SkipReason::Truncated),
    }
}

/// Stand-in for `qosmark_engine::wire`.
pub mod wire {
    use qosmark_abi::{Dscp, Pcp};

    /// The rewrite was refused (not IP, too short).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct WireError;

    /// Whether a rewrite changed the packet.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Rewrite {
        /// Bytes were written.
        Changed,
        /// The packet already carried the value.
        Unchanged,
    }

    /// Sets the DSCP of an IPv4 / IPv6 packet, keeping ECN; fixes the IPv4 header checksum.
    pub fn set_dscp(ip: &mut [u8], dscp: Dscp) -> Result<Rewrite, WireError> {
        let first = *ip.first().ok_or(WireError)?;
        let current = match first >> 4 {
            4 => ip.get(1).map(|t| t >> 2),
            6 => match (ip.first(), ip.get(1)) {
                (Some(b0), Some(b1)) => Some((((b0 & 0x0f) << 4) | (b1 >> 4)) >> 2),
                _ => None,
            },
            _ => None,
        };
        if current == Some(dscp.value()) {
            return Ok(Rewrite::Unchanged);
        }
        match first >> 4 {
            4 => {
                let ihl = usize::from(first & 0x0f) * 4;
                let tos = ip.get_mut(1).ok_or(WireError)?;
                *tos = (dscp.value() << 2) | (*tos & 3);
                ip.get_mut(10..12)
                    .ok_or(WireError)?
                    .copy_from_slice(&[0, 0]);
                let hdr = ip.get(..ihl).ok_or(WireError)?;
                let mut sum = 0u32;
                for w in hdr.chunks(2) {
                    sum += u32::from(u16::from_be_bytes([
                        w.first().copied().unwrap_or(0),
                        w.get(1).copied().unwrap_or(0),
                    ]));
                }
                while sum > 0xffff {
                    sum = (sum & 0xffff) + (sum >> 16);
                }
                let c = !(sum as u16);
                ip.get_mut(10..12)
                    .ok_or(WireError)?
                    .copy_from_slice(&c.to_be_bytes());
                Ok(Rewrite::Changed)
            }
            6 => {
                let b0 = ip.first().copied().ok_or(WireError)?;
                let b1 = ip.get(1).copied().ok_or(WireError)?;
                let tc = ((b0 & 0x0f) << 4) | (b1 >> 4);
                let new = (dscp.value() << 2) | (tc & 3);
                *ip.get_mut(0).ok_or(WireError)? = (b0 & 0xf0) | (new >> 4);
                *ip.get_mut(1).ok_or(WireError)? = (b1 & 0x0f) | (new << 4);
                Ok(Rewrite::Changed)
            }
            _ => Err(WireError),
        }
    }

    /// Sets the PCP of the tag at `tag_offset` (its TPID) in an Ethernet frame.
    pub fn set_pcp(frame: &mut [u8], tag_offset: usize, pcp: Pcp) -> Result<Rewrite, WireError> {
        let b = frame.get_mut(tag_offset + 2).ok_or(WireError)?;
        if *b >> 5 == pcp.value() {
            return Ok(Rewrite::Unchanged);
        }
        *b = (pcp.value() << 5) | (*b & 0x1f);
        Ok(Rewrite::Changed)
    }
}

/// Stand-in for `qosmark_shim::rules_file` (TOML: `[[rule]]` tables).
pub mod rules_file {
    use core::net::IpAddr;
    use qosmark_abi::heapless_name::RuleName;
    use qosmark_abi::{
        Dscp, Pcp, PortRange, Prefix, RuleAction, RuleProtocol, RuleSpec, TrafficType,
    };
    use serde::Deserialize;

    /// A rules-file error with its 1-based line.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RulesFileError {
        /// 1-based line.
        pub line: usize,
        /// What is wrong.
        pub message: String,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        rule: Vec<toml::Spanned<Raw>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        name: String,
        #[serde(default = "default_precedence")]
        precedence: u8,
        protocol: Option<String>,
        local_address: Option<String>,
        remote_address: Option<String>,
        local_port: Option<toml::Value>,
        remote_port: Option<toml::Value>,
        dscp: Option<u8>,
        traffic_type: Option<String>,
        priority_8021p: Option<u8>,
    }

    fn default_precedence() -> u8 {
        127
    }

    fn line_of(text: &str, offset: usize) -> usize {
        text.get(..offset)
            .map_or(1, |t| t.matches('\n').count() + 1)
    }

    /// Parses a rules file.
    pub fn parse_rules(text: &str) -> Result<Vec<RuleSpec>, RulesFileError> {
        let file: File = toml::from_str(text).map_err(|e| RulesFileError {
            line: e.span().map_or(1, |s| line_of(text, s.start)),
            message: e.message().to_owned(),
        })?;
        file.rule
            .into_iter()
            .map(|r| {
                let line = line_of(text, r.span().start);
                convert(r.into_inner()).map_err(|message| RulesFileError { line, message })
            })
            .collect()
    }

    fn prefix(s: &str) -> Result<Prefix, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.parse().map_err(|_| format!("bad address {a:?}"))?;
        let len = if l.is_empty() {
            if addr.is_ipv4() {
                32
            } else {
                128
            }
        } else {
            l.parse().map_err(|_| format!("bad prefix length {l:?}"))?
        };
        Ok(Prefix { addr, len })
    }

    fn ports(v: &toml::Value) -> Result<PortRange, String> {
        let bad = || format!("bad port range {v}");
        match v {
            toml::Value::Integer(p) => {
                let p = u16::try_from(*p).map_err(|_| bad())?;
                Ok(PortRange { first: p, last: p })
            }
            toml::Value::String(s) => {
                let (a, b) = s.split_once('-').unwrap_or((s, s));
                Ok(PortRange {
                    first: a.trim().parse().map_err(|_| bad())?,
                    last: b.trim().parse().map_err(|_| bad())?,
                })
            }
            _ => Err(bad()),
        }
    }

    fn convert(r: Raw) -> Result<RuleSpec, String> {
        let name = RuleName::try_new(&r.name).map_err(|e| format!("bad rule name: {e:?}"))?;
        let protocol = match r.protocol.as_deref() {
            None | Some("any") => RuleProtocol::Any,
            Some("tcp") => RuleProtocol::Tcp,
            Some("udp") => RuleProtocol::Udp,
            Some(p) => return Err(format!("unknown protocol {p:?} (tcp, udp or any)")),
        };
        let action = match (r.dscp, r.traffic_type.as_deref()) {
            (Some(d), None) => {
                RuleAction::Dscp(Dscp::try_new(d).map_err(|_| format!("dscp {d} above 63"))?)
            }
            (None, Some(t)) => RuleAction::TrafficType(match t {
                "best-effort" => TrafficType::BestEffort,
                "background" => TrafficType::Background,
                "excellent-effort" => TrafficType::ExcellentEffort,
                "audio-video" => TrafficType::AudioVideo,
                "voice" => TrafficType::Voice,
                "control" => TrafficType::Control,
                _ => return Err(format!("unknown traffic_type {t:?}")),
            }),
            _ => return Err("a rule needs exactly one of dscp or traffic_type".to_owned()),
        };
        let pcp = r
            .priority_8021p
            .map(|p| Pcp::try_new(p).map_err(|_| format!("pcp {p} above 7")))
            .transpose()?;
        let spec = RuleSpec {
            name,
            precedence: r.precedence,
            protocol,
            local_prefix: r.local_address.as_deref().map(prefix).transpose()?,
            remote_prefix: r.remote_address.as_deref().map(prefix).transpose()?,
            local_ports: r.local_port.as_ref().map(ports).transpose()?,
            remote_ports: r.remote_port.as_ref().map(ports).transpose()?,
            action,
            pcp,
        };
        spec.validate()
            .map_err(|e| format!("invalid rule: {e:?}"))?;
        Ok(spec)
    }
}
