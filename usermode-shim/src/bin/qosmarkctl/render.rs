//! Output: every command's result as text (for people) and as JSON (for scripts).
//!
//! Plain functions from values to `String` / [`serde_json::Value`], no I/O, so the formats are
//! unit-tested. The JSON shapes are the stable schema documented in the crate README; fields
//! are only ever added, never renamed or removed.

use crate::args::traffic_type_name;
use qosmark_abi::{
    CounterSnapshot, Dscp, FailOpen, FlowRecord, FlowSocket, PortRange, Prefix, RuleAction,
    RuleEntry, RuleProtocol, SkipReason, SocketBinding, StatusInfo, TrafficTable, TrafficType,
};
use serde_json::{json, Value};
use std::fmt::Write as _;

/// A command's successful result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// `status`.
    Status {
        /// Socket path or device name.
        endpoint: String,
        /// `QueryStatus`.
        info: StatusInfo,
    },
    /// `flows`.
    Flows(Vec<FlowRecord>),
    /// `rules list`.
    Rules(Vec<RuleEntry>),
    /// `rules export`: a rules file.
    RulesFile(String),
    /// `rules add`.
    RuleAdded(String),
    /// `rules remove`.
    RuleRemoved(String),
    /// `rules load`: how many rules are now in force, and from where.
    RulesLoaded {
        /// Rules loaded.
        count: usize,
        /// The file.
        path: String,
    },
    /// `table` (and every `table` change: the table as it is now).
    Table(TrafficTable),
}

/// The text form, ending with a newline.
#[must_use]
pub fn text(output: &Output) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail; the results of `writeln!` are ignored below.
    match output {
        Output::Status { endpoint, info } => status_text(&mut s, endpoint, info),
        Output::Flows(flows) => flows_text(&mut s, flows),
        Output::Rules(rules) => rules_text(&mut s, rules),
        Output::RulesFile(toml) => s.push_str(toml),
        Output::RuleAdded(name) => {
            let _ = writeln!(s, "rule {name} added");
        }
        Output::RuleRemoved(name) => {
            let _ = writeln!(s, "rule {name} removed");
        }
        Output::RulesLoaded { count, path } => {
            let _ = writeln!(
                s,
                "{count} rule{} loaded from {path} (every previous rule replaced)",
                if *count == 1 { "" } else { "s" }
            );
        }
        Output::Table(t) => table_text(&mut s, t),
    }
    s
}

/// The JSON form (one object).
#[must_use]
pub fn json(output: &Output) -> Value {
    match output {
        Output::Status { endpoint, info } => status_json(endpoint, info),
        Output::Flows(flows) => json!({ "flows": flows.iter().map(flow_json).collect::<Vec<_>>() }),
        Output::Rules(rules) => json!({ "rules": rules.iter().map(rule_json).collect::<Vec<_>>() }),
        Output::RulesFile(toml) => json!({ "rules_file": toml }),
        Output::RuleAdded(name) => json!({ "added": name }),
        Output::RuleRemoved(name) => json!({ "removed": name }),
        Output::RulesLoaded { count, path } => json!({ "loaded": count, "file": path }),
        Output::Table(t) => table_json(t),
    }
}

/// The JSON form of a failure (`exit` = the process exit code, `win32` = the back end's
/// error code when it answered one).
#[must_use]
pub fn error_json(exit: u8, win32: Option<u32>, message: &str) -> Value {
    json!({ "error": { "exit": exit, "win32": win32, "message": message } })
}

fn named_counts<const N: usize>(names: [&'static str; N], values: &[u64; N]) -> Value {
    Value::Object(
        names
            .iter()
            .zip(values)
            .map(|(n, v)| ((*n).to_owned(), json!(v)))
            .collect(),
    )
}

fn skip_names() -> [&'static str; SkipReason::COUNT] {
    SkipReason::ALL.map(SkipReason::name)
}

fn fail_open_names() -> [&'static str; FailOpen::COUNT] {
    FailOpen::ALL.map(FailOpen::name)
}

fn nonzero_list<const N: usize>(names: [&'static str; N], values: &[u64; N]) -> String {
    let parts: Vec<String> = names
        .iter()
        .zip(values)
        .filter(|(_, v)| **v > 0)
        .map(|(n, v)| format!("{n} {v}"))
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

fn status_text(s: &mut String, endpoint: &str, i: &StatusInfo) {
    let _ = writeln!(
        s,
        "back end: {endpoint} (reachable, protocol version {})",
        i.protocol_version
    );
    let _ = writeln!(
        s,
        "handles {}  flows {}  sockets {}  rules {}  shapers {}",
        i.handles, i.flows, i.sockets, i.rules, i.shapers
    );
    let skipped: u64 = i.skipped.iter().fold(0u64, |a, b| a.saturating_add(*b));
    let _ = writeln!(
        s,
        "packets {}: marked {}, already marked {}, delayed {}, skipped {}",
        i.packets, i.marked, i.already_marked, i.delayed, skipped
    );
    let _ = writeln!(
        s,
        "non-conformant (shaped, sent with the non-conformant mark): {}",
        i.non_conformant
    );
    let _ = writeln!(s, "skipped: {}", nonzero_list(skip_names(), &i.skipped));
    let _ = writeln!(
        s,
        "fail open (wanted a mark, sent unmarked; or wanted delayed, sent at once): {}",
        nonzero_list(fail_open_names(), &i.fail_open)
    );
}

fn status_json(endpoint: &str, i: &StatusInfo) -> Value {
    json!({
        "reachable": true,
        "endpoint": endpoint,
        "protocol_version": i.protocol_version,
        "handles": i.handles,
        "flows": i.flows,
        "sockets": i.sockets,
        "rules": i.rules,
        "shapers": i.shapers,
        "packets": i.packets,
        "marked": i.marked,
        "already_marked": i.already_marked,
        "delayed": i.delayed,
        "non_conformant": i.non_conformant,
        "skipped": named_counts(skip_names(), &i.skipped),
        "fail_open": named_counts(fail_open_names(), &i.fail_open),
    })
}

fn counters_json(c: &CounterSnapshot) -> Value {
    json!({
        "packets": c.packets,
        "bytes": c.bytes,
        "marked": c.marked,
        "already_marked": c.already_marked,
        "not_marked": c.not_marked(),
    })
}

fn opt_dscp(d: Option<Dscp>) -> Value {
    d.map_or(Value::Null, |d| json!(d.value()))
}

fn protocol_name(p: qosmark_abi::Protocol) -> &'static str {
    match p {
        qosmark_abi::Protocol::Tcp => "tcp",
        qosmark_abi::Protocol::Udp => "udp",
    }
}

/// The local side as text: `addr:port`, `*:port` (any local address), or `-` (not bound yet).
fn local_text(b: SocketBinding) -> String {
    match b {
        SocketBinding::Address(a) => a.to_string(),
        SocketBinding::AnyAddress { port } => format!("*:{port}"),
        SocketBinding::NotBound => "-".to_owned(),
    }
}

fn socket_json(k: &FlowSocket) -> Value {
    let (binding, local) = match k.binding {
        SocketBinding::Address(a) => ("address", json!(a.to_string())),
        SocketBinding::AnyAddress { port } => ("any_address", json!(format!("*:{port}"))),
        SocketBinding::NotBound => ("not_bound", Value::Null),
    };
    json!({
        "socket": k.socket,
        "protocol": protocol_name(k.protocol),
        "binding": binding,
        "local": local,
        "remote": k.remote.to_string(),
    })
}

fn flow_json(f: &FlowRecord) -> Value {
    json!({
        "id": f.id,
        "pid": f.pid,
        "traffic_type": traffic_type_name(f.traffic_type),
        "adaptive": f.adaptive,
        "custom_dscp": opt_dscp(f.custom_dscp),
        "mark": {
            "dscp": opt_dscp(f.mark.dscp),
            "pcp": f.mark.pcp.map_or(Value::Null, |p| json!(p.value())),
        },
        "counters": counters_json(&f.counters),
        "sockets_total": f.sockets_total,
        "sockets": f.sockets.iter().map(socket_json).collect::<Vec<_>>(),
    })
}

fn mark_text(dscp: Option<Dscp>, pcp: Option<qosmark_abi::Pcp>) -> String {
    let d = dscp.map_or_else(|| "-".to_owned(), |d| d.value().to_string());
    let p = pcp.map_or_else(|| "-".to_owned(), |p| p.value().to_string());
    format!("dscp {d} / 802.1p {p}")
}

fn flows_text(s: &mut String, flows: &[FlowRecord]) {
    if flows.is_empty() {
        let _ = writeln!(s, "no flows");
        return;
    }
    for f in flows {
        let custom = f.custom_dscp.map_or_else(String::new, |d| {
            format!(" (DSCP {} set by the app)", d.value())
        });
        let _ = writeln!(
            s,
            "flow {} pid {} {}{}{}: {}; packets {}, bytes {}, marked {}, already marked {}, \
             not marked {}",
            f.id,
            f.pid,
            traffic_type_name(f.traffic_type),
            if f.adaptive { "" } else { " non-adaptive" },
            custom,
            mark_text(f.mark.dscp, f.mark.pcp),
            f.counters.packets,
            f.counters.bytes,
            f.counters.marked,
            f.counters.already_marked,
            f.counters.not_marked(),
        );
        for k in &f.sockets {
            let _ = writeln!(
                s,
                "  socket {} {} {} -> {}",
                k.socket,
                protocol_name(k.protocol),
                local_text(k.binding),
                k.remote
            );
        }
        let listed = u32::try_from(f.sockets.len()).unwrap_or(u32::MAX);
        if f.sockets_total > listed {
            let _ = writeln!(s, "  ... and {} more", f.sockets_total - listed);
        }
    }
}

fn prefix_text(p: Option<Prefix>) -> Option<String> {
    p.map(|p| format!("{}/{}", p.addr, p.len))
}

fn ports_text(r: Option<PortRange>) -> Option<String> {
    r.map(|r| {
        if r.first == r.last {
            r.first.to_string()
        } else {
            format!("{}-{}", r.first, r.last)
        }
    })
}

fn rule_protocol(p: RuleProtocol) -> &'static str {
    match p {
        RuleProtocol::Tcp => "tcp",
        RuleProtocol::Udp => "udp",
        RuleProtocol::Any => "any",
    }
}

/// Keys are the rules-file keys, so a rule can be read back field by field.
fn rule_json(r: &RuleEntry) -> Value {
    let s = &r.spec;
    let (dscp, tt) = match s.action {
        RuleAction::Dscp(d) => (json!(d.value()), Value::Null),
        RuleAction::TrafficType(t) => (Value::Null, json!(traffic_type_name(t))),
    };
    json!({
        "name": s.name.as_str(),
        "precedence": s.precedence,
        "protocol": rule_protocol(s.protocol),
        "local_address": prefix_text(s.local_prefix),
        "remote_address": prefix_text(s.remote_prefix),
        "local_port": ports_text(s.local_ports),
        "remote_port": ports_text(s.remote_ports),
        "dscp": dscp,
        "traffic_type": tt,
        "priority_8021p": s.pcp.map(qosmark_abi::Pcp::value),
        "throttle_bps": s.throttle_bps,
        "counters": counters_json(&r.counters),
    })
}

fn rules_text(s: &mut String, rules: &[RuleEntry]) {
    if rules.is_empty() {
        let _ = writeln!(s, "no rules");
        return;
    }
    for r in rules {
        let spec = &r.spec;
        let mut cond = Vec::new();
        if spec.protocol != RuleProtocol::Any {
            cond.push(rule_protocol(spec.protocol).to_owned());
        }
        for (what, v) in [
            ("local", prefix_text(spec.local_prefix)),
            ("remote", prefix_text(spec.remote_prefix)),
            ("local port", ports_text(spec.local_ports)),
            ("remote port", ports_text(spec.remote_ports)),
        ] {
            if let Some(v) = v {
                cond.push(format!("{what} {v}"));
            }
        }
        let cond = if cond.is_empty() {
            "all TCP/UDP".to_owned()
        } else {
            cond.join(", ")
        };
        let action = match spec.action {
            RuleAction::Dscp(d) => format!("dscp {}", d.value()),
            RuleAction::TrafficType(t) => format!("traffic type {}", traffic_type_name(t)),
        };
        let pcp = spec
            .pcp
            .map_or_else(String::new, |p| format!(", 802.1p {}", p.value()));
        let throttle = spec
            .throttle_bps
            .map_or_else(String::new, |t| format!(", throttle {t} bit/s"));
        let c = &r.counters;
        let _ = writeln!(
            s,
            "{} (precedence {}): {cond} -> {action}{pcp}{throttle}; packets {}, bytes {}, \
             marked {}, already marked {}",
            spec.name, spec.precedence, c.packets, c.bytes, c.marked, c.already_marked
        );
    }
}

fn allowed(t: &TrafficTable) -> Vec<u8> {
    (0u8..64)
        .filter(|n| t.user_dscp_allow.checked_shr(u32::from(*n)).unwrap_or(0) & 1 == 1)
        .collect()
}

fn table_json(t: &TrafficTable) -> Value {
    let types: Vec<Value> = TrafficType::ALL
        .iter()
        .map(|tt| {
            let m = t.marks.get(tt.index());
            json!({
                "traffic_type": traffic_type_name(*tt),
                "value": *tt as u32,
                "dscp": opt_dscp(m.and_then(|m| m.dscp)),
                "pcp": m.and_then(|m| m.pcp).map(qosmark_abi::Pcp::value),
            })
        })
        .collect();
    json!({
        "traffic_types": types,
        "user_dscp_allow": allowed(t),
        "tag_adaptive_flows": t.tag_adaptive_flows,
        "non_conformant": {
            "dscp": t.non_conformant_dscp.value(),
            "pcp": t.non_conformant_pcp.value(),
        },
    })
}

fn table_text(s: &mut String, t: &TrafficTable) {
    let _ = writeln!(s, "{:<18} {:>5} {:>6}", "traffic type", "dscp", "802.1p");
    for tt in TrafficType::ALL {
        let entry = t.marks.get(tt.index());
        let dscp = entry
            .and_then(|m| m.dscp)
            .map_or_else(|| "-".to_owned(), |d| d.value().to_string());
        let pcp = entry
            .and_then(|m| m.pcp)
            .map_or_else(|| "-".to_owned(), |p| p.value().to_string());
        let _ = writeln!(
            s,
            "{:<18} {dscp:>5} {pcp:>6}",
            format!("{} ({})", traffic_type_name(tt), tt as u32)
        );
    }
    let a = allowed(t);
    let list = if a.is_empty() {
        "none (administrators only, as qWAVE)".to_owned()
    } else {
        a.iter().map(u8::to_string).collect::<Vec<_>>().join(" ")
    };
    let _ = writeln!(s, "DSCP values users may set: {list}");
    let _ = writeln!(
        s,
        "802.1p for adaptive flows: {}",
        if t.tag_adaptive_flows { "on" } else { "off" }
    );
    let _ = writeln!(
        s,
        "non-conformant (above a QOSUseNonConformantMarkings rate): dscp {}, 802.1p {} \
         (802.1p only for flows that request one)",
        t.non_conformant_dscp.value(),
        t.non_conformant_pcp.value()
    );
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
    use qosmark_abi::heapless_name::RuleName;
    #[allow(
        unused_imports,
        reason = "Dscp may already be in scope through super::*"
    )]
    use qosmark_abi::Dscp as _;
    use qosmark_abi::{Mark, Pcp, Protocol, RuleSpec};

    fn status() -> StatusInfo {
        let mut skipped = [0u64; SkipReason::COUNT];
        skipped[SkipReason::NoMatch as usize] = 70;
        skipped[SkipReason::Truncated as usize] = 2;
        let mut fail_open = [0u64; FailOpen::COUNT];
        fail_open[FailOpen::VerdictFailed as usize] = 3;
        StatusInfo {
            protocol_version: 1,
            handles: 2,
            flows: 3,
            sockets: 4,
            rules: 5,
            shapers: 6,
            packets: 107,
            marked: 20,
            already_marked: 8,
            skipped,
            fail_open,
            delayed: 7,
            non_conformant: 1,
        }
    }

    #[test]
    fn status_both_forms() {
        let o = Output::Status {
            endpoint: "/run/x.sock".into(),
            info: status(),
        };
        let t = text(&o);
        assert!(
            t.contains("back end: /run/x.sock (reachable, protocol version 1)"),
            "{t}"
        );
        assert!(
            t.contains("handles 2  flows 3  sockets 4  rules 5  shapers 6"),
            "{t}"
        );
        assert!(
            t.contains("packets 107: marked 20, already marked 8, delayed 7, skipped 72"),
            "{t}"
        );
        assert!(
            t.contains("non-conformant (shaped, sent with the non-conformant mark): 1"),
            "{t}"
        );
        assert!(t.contains("skipped: no_match 70, truncated 2\n"), "{t}");
        assert!(t.contains("verdict_failed 3"), "{t}");
        let j = json(&o);
        assert_eq!(j["reachable"], true);
        assert_eq!(j["endpoint"], "/run/x.sock");
        assert_eq!(j["rules"], 5);
        assert_eq!(j["skipped"]["no_match"], 70);
        assert_eq!(j["skipped"]["self_injected"], 0);
        assert_eq!(j["skipped"].as_object().unwrap().len(), SkipReason::COUNT);
        assert_eq!(j["fail_open"]["verdict_failed"], 3);
        assert_eq!(j["fail_open"]["shaper_queue_full"], 0);
        assert_eq!(j["fail_open"].as_object().unwrap().len(), FailOpen::COUNT);
        assert_eq!(
            (j["shapers"].clone(), j["delayed"].clone()),
            (json!(6), json!(7))
        );
        assert_eq!(j["non_conformant"], 1);
    }

    fn flow() -> FlowRecord {
        FlowRecord {
            id: 7,
            pid: 99,
            traffic_type: TrafficType::Voice,
            adaptive: false,
            custom_dscp: Some(Dscp::EF),
            mark: Mark {
                dscp: Some(Dscp::EF),
                pcp: None,
            },
            counters: CounterSnapshot {
                packets: 10,
                bytes: 1000,
                marked: 6,
                already_marked: 1,
            },
            sockets_total: 3,
            sockets: vec![
                FlowSocket {
                    socket: 5,
                    protocol: Protocol::Udp,
                    binding: SocketBinding::AnyAddress { port: 5004 },
                    remote: "192.0.2.1:6000".parse().unwrap(),
                },
                FlowSocket {
                    socket: 6,
                    protocol: Protocol::Tcp,
                    binding: SocketBinding::NotBound,
                    remote: "[2001:db8::1]:443".parse().unwrap(),
                },
            ],
        }
    }

    #[test]
    fn flows_both_forms() {
        let o = Output::Flows(vec![flow()]);
        let t = text(&o);
        assert!(
            t.starts_with(
                "flow 7 pid 99 voice non-adaptive (DSCP 46 set by the app): dscp 46 / 802.1p -; \
                 packets 10, bytes 1000, marked 6, already marked 1, not marked 3\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("  socket 5 udp *:5004 -> 192.0.2.1:6000\n"),
            "{t}"
        );
        assert!(t.contains("  socket 6 tcp - -> [2001:db8::1]:443\n"), "{t}");
        assert!(t.contains("  ... and 1 more\n"), "{t}");
        let j = json(&o);
        let f = &j["flows"][0];
        assert_eq!(f["id"], 7);
        assert_eq!(f["traffic_type"], "voice");
        assert_eq!(f["adaptive"], false);
        assert_eq!(f["custom_dscp"], 46);
        assert_eq!(f["mark"]["dscp"], 46);
        assert_eq!(f["mark"]["pcp"], Value::Null);
        assert_eq!(f["counters"]["not_marked"], 3);
        assert_eq!(f["sockets_total"], 3);
        assert_eq!(f["sockets"][0]["binding"], "any_address");
        assert_eq!(f["sockets"][0]["local"], "*:5004");
        assert_eq!(f["sockets"][1]["binding"], "not_bound");
        assert_eq!(f["sockets"][1]["local"], Value::Null);
        assert_eq!(f["sockets"][1]["remote"], "[2001:db8::1]:443");
        assert_eq!(text(&Output::Flows(vec![])), "no flows\n");
        assert_eq!(json(&Output::Flows(vec![])), json!({ "flows": [] }));
    }

    #[test]
    fn rules_both_forms() {
        let spec = RuleSpec {
            name: RuleName::try_new("sip").unwrap(),
            precedence: 200,
            protocol: RuleProtocol::Udp,
            local_prefix: None,
            remote_prefix: Some(Prefix {
                addr: "10.0.0.0".parse().unwrap(),
                len: 8,
            }),
            local_ports: Some(PortRange {
                first: 5060,
                last: 5060,
            }),
            remote_ports: Some(PortRange {
                first: 1000,
                last: 2000,
            }),
            action: RuleAction::Dscp(Dscp::try_new(24).unwrap()),
            pcp: Some(Pcp::try_new(3).unwrap()),
            throttle_bps: None,
        };
        let o = Output::Rules(vec![RuleEntry {
            spec,
            counters: CounterSnapshot {
                packets: 4,
                bytes: 400,
                marked: 3,
                already_marked: 1,
            },
        }]);
        assert_eq!(
            text(&o),
            "sip (precedence 200): udp, remote 10.0.0.0/8, local port 5060, remote port \
             1000-2000 -> dscp 24, 802.1p 3; packets 4, bytes 400, marked 3, already marked 1\n"
        );
        let j = json(&o);
        let r = &j["rules"][0];
        assert_eq!(r["name"], "sip");
        assert_eq!(r["remote_address"], "10.0.0.0/8");
        assert_eq!(r["local_address"], Value::Null);
        assert_eq!(r["local_port"], "5060");
        assert_eq!(r["remote_port"], "1000-2000");
        assert_eq!(r["dscp"], 24);
        assert_eq!(r["traffic_type"], Value::Null);
        assert_eq!(r["priority_8021p"], 3);
        assert_eq!(r["counters"]["marked"], 3);
        assert_eq!(r["throttle_bps"], Value::Null);
        assert_eq!(text(&Output::Rules(vec![])), "no rules\n");
        let Output::Rules(mut list) = o else { panic!() };
        list[0].spec.throttle_bps = Some(2_000_000);
        let o = Output::Rules(list);
        assert!(
            text(&o).contains("-> dscp 24, 802.1p 3, throttle 2000000 bit/s; packets 4"),
            "{}",
            text(&o)
        );
        assert_eq!(json(&o)["rules"][0]["throttle_bps"], 2_000_000);
    }

    #[test]
    fn table_both_forms() {
        let mut t = qosmark_engine::traffic::default_table();
        t.user_dscp_allow = (1u64 << 46) | (1u64 << 34);
        let o = Output::Table(t);
        let s = text(&o);
        assert!(s.contains("best-effort (0)        -      -\n"), "{s}");
        assert!(s.contains("voice (4)             56      7\n"), "{s}");
        assert!(s.contains("DSCP values users may set: 34 46\n"), "{s}");
        assert!(s.contains("802.1p for adaptive flows: on\n"), "{s}");
        let j = json(&o);
        assert_eq!(j["traffic_types"][0]["dscp"], Value::Null);
        assert_eq!(j["traffic_types"][1]["traffic_type"], "background");
        assert_eq!(j["traffic_types"][1]["value"], 1);
        assert_eq!(j["traffic_types"][1]["dscp"], 8);
        assert_eq!(j["traffic_types"][1]["pcp"], 2);
        assert_eq!(j["user_dscp_allow"], json!([34, 46]));
        assert_eq!(j["tag_adaptive_flows"], true);
        assert_eq!(j["non_conformant"], json!({"dscp": 0, "pcp": 1}));
        assert!(
            s.contains(
                "non-conformant (above a QOSUseNonConformantMarkings rate): dscp 0, 802.1p 1"
            ),
            "{s}"
        );
        t.non_conformant_dscp = Dscp::try_new(8).unwrap();
        t.non_conformant_pcp = Pcp::try_new(3).unwrap();
        assert_eq!(
            json(&Output::Table(t))["non_conformant"],
            json!({"dscp": 8, "pcp": 3})
        );
        let s = text(&Output::Table(qosmark_engine::traffic::default_table()));
        assert!(s.contains("none (administrators only, as qWAVE)"), "{s}");
    }

    #[test]
    fn small_results_and_errors() {
        assert_eq!(text(&Output::RuleAdded("a".into())), "rule a added\n");
        assert_eq!(
            json(&Output::RuleRemoved("a".into())),
            json!({"removed": "a"})
        );
        assert_eq!(
            text(&Output::RulesLoaded {
                count: 1,
                path: "r.toml".into()
            }),
            "1 rule loaded from r.toml (every previous rule replaced)\n"
        );
        assert_eq!(
            error_json(3, Some(2), "down"),
            json!({"error": {"exit": 3, "win32": 2, "message": "down"}})
        );
        assert_eq!(
            error_json(2, None, "x"),
            json!({"error": {"exit": 2, "win32": null, "message": "x"}})
        );
    }
}
