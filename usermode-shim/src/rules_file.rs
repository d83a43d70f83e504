//! The administrator rules file: TOML in, [`RuleSpec`]s out, and back ([`to_toml`]).
//!
//! ## Format
//! ```toml
//! [[rule]]
//! name = "voip"                  # required, unique, 1..=64 bytes, no control characters
//! precedence = 200               # 0..=255, higher wins; default 127
//! protocol = "udp"               # "tcp" | "udp" | "any" (TCP or UDP); default "any"
//! local_address = "10.0.0.0/8"   # prefix "addr/len" or a bare address (= host prefix)
//! remote_address = "192.0.2.9"   # same family as local_address
//! local_port = 5060              # a port, or "first-last" (first <= last), or "port"
//! remote_port = "16384-32767"
//! dscp = 46                      # 0..=63 ...
//! # traffic_type = "voice"       # ... or one of best-effort, background, excellent-effort,
//!                                #     audio-video, voice, control — exactly one of the two
//! priority_8021p = 5             # optional 802.1p, 0..=7
//! throttle_bps = 2000000         # optional throttle, bit/s, 12000..=100000000000
//! ```
//! The names, ranges and semantics follow Windows Policy-based `QoS` (`New-NetQosPolicy`), see
//! the engine's `rules` module for matching and precedence.
//!
//! ## Choices
//! * Port 0 is accepted, exactly like the engine (and the IOCTL) accept it: ranges such as
//!   `"0-1023"` are natural to write, an exact port 0 simply never matches, and every rule the
//!   engine holds must survive persistence through [`to_toml`] and back.
//! * Host bits set in a prefix (`"10.0.0.1/24"`) are an error that names the intended prefix,
//!   rather than being silently masked.
//! * A rule's local and remote prefix must be of one family. An IPv4-mapped IPv6 prefix
//!   (`::ffff:a.b.c.d/len`, len ≥ 96) is an error that names the IPv4 prefix to write: the
//!   engine keys the IPv4 traffic of dual-stack sockets as IPv4, so it could never match (the
//!   engine refuses such a rule too).
//! * `protocol = "any"` means TCP or UDP: rules only ever match TCP and UDP packets (a QoS
//!   policy's `IPProtocolMatchCondition` is TCP, UDP or both); other protocols go unmarked.
//! * `throttle_bps` is `ThrottleRateActionBitsPerSecond`: bits per second at the IP level, one
//!   token bucket for **all** the traffic the rule matches (not one per connection), and what
//!   exceeds it is **delayed** (shaped), as Windows' packet scheduler does — never dropped;
//!   when the queue is full the excess goes out at once (counted as `shaper_queue_full`). The
//!   range is the engine's: at least one 1 500-byte packet per second (12 000), at most
//!   100 Gbit/s; 0 is an error (leave the key out for no throttle). A socket flow registered
//!   through QOS2 beats every rule, so its packets are never throttled by a rule; it is
//!   shaped only by its own `QOSSetOutgoingRate`.
//!
//! ## Errors
//! Every error names a 1-based line: the line of the offending key (strictly: where its value
//! starts, which for `key = value` is the key's line), the `[[rule]]` header for what is missing
//! from a rule, or the position toml reports for syntax errors. The first error in document
//! order wins.

use qosmark_abi::heapless_name::{NameError, RuleName};
use qosmark_abi::{
    Dscp, Pcp, PortRange, Prefix, RuleAction, RuleProtocol, RuleSpec, TrafficType, MAX_RATE_BPS,
    MAX_RULE_NAME_LEN, MIN_RATE_BPS,
};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::HashMap;
use std::fmt;
use std::fmt::Write as _;
use std::net::IpAddr;
use toml::Spanned;

/// A rules-file error with the 1-based line it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RulesFileError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for RulesFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for RulesFileError {}

/// Any TOML value, with the span of every nested value (keys keep document order).
#[derive(Debug)]
enum Node {
    Str(String),
    Int(i64),
    Float,
    Bool,
    Array(Vec<Spanned<Node>>),
    Table(Vec<(String, Spanned<Node>)>),
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::Str(_) => "a string",
            Node::Int(_) => "an integer",
            Node::Float => "a float",
            Node::Bool => "a boolean",
            Node::Array(_) => "an array",
            Node::Table(_) => "a table",
        }
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Bool)
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Node, E> {
        i64::try_from(v)
            .map(Node::Int)
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Float)
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Node::Table(entries))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

/// Maps byte offsets to 1-based lines.
struct Lines<'a>(&'a str);

impl Lines<'_> {
    fn line(&self, offset: usize) -> usize {
        let upto = self.0.get(..offset).unwrap_or(self.0);
        upto.bytes().filter(|&b| b == b'\n').count() + 1
    }

    fn err(&self, offset: usize, message: impl Into<String>) -> RulesFileError {
        RulesFileError {
            line: self.line(offset),
            message: message.into(),
        }
    }
}

const MIXED_FAMILIES: &str =
    "`local_address` and `remote_address` must be of the same family (both IPv4 or both IPv6)";

const KEYS: [&str; 11] = [
    "name",
    "precedence",
    "protocol",
    "local_address",
    "remote_address",
    "local_port",
    "remote_port",
    "dscp",
    "traffic_type",
    "priority_8021p",
    "throttle_bps",
];

const TRAFFIC_TYPES: [(&str, TrafficType); 6] = [
    ("best-effort", TrafficType::BestEffort),
    ("background", TrafficType::Background),
    ("excellent-effort", TrafficType::ExcellentEffort),
    ("audio-video", TrafficType::AudioVideo),
    ("voice", TrafficType::Voice),
    ("control", TrafficType::Control),
];

/// Parses a rules file, allowing the engine's default maximum number of rules
/// (`Limits::default().max_rules`).
///
/// # Errors
/// The first problem, with its line.
pub fn parse_rules(text: &str) -> Result<Vec<RuleSpec>, RulesFileError> {
    parse_rules_with_max(text, qosmark_engine::Limits::default().max_rules)
}

/// Parses a rules file holding at most `max` rules.
///
/// # Errors
/// The first problem, with its line.
pub fn parse_rules_with_max(text: &str, max: usize) -> Result<Vec<RuleSpec>, RulesFileError> {
    let lines = Lines(text);
    let root: Node = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        // toml cannot attach a span to a date-time or to a table made by a dotted key; the
        // span-keeping deserializer then fails with serde_spanned's internal wording. Neither
        // is valid in a rules file anyway.
        let m = e.message();
        let message = if m.contains("spanned value") || m.contains("borrowed string") {
            String::from("dotted keys and dates/times are not valid in a rules file")
        } else {
            e.message().trim().replace('\n', ": ")
        };
        lines.err(offset, message)
    })?;
    let Node::Table(top) = root else {
        return Err(lines.err(0, "a rules file is a TOML table"));
    };
    let mut specs = Vec::new();
    for (key, value) in top {
        if key != "rule" {
            return Err(lines.err(
                value.span().start,
                format!("unknown top-level key `{key}` (only [[rule]] tables are allowed)"),
            ));
        }
        let start = value.span().start;
        let Node::Array(items) = value.into_inner() else {
            return Err(lines.err(start, "`rule` must be an array of tables: write [[rule]]"));
        };
        let mut first_line_of: HashMap<RuleName, usize> = HashMap::new();
        for item in items {
            if specs.len() >= max {
                return Err(lines.err(item.span().start, format!("more than {max} rules")));
            }
            let (spec, name_line) = parse_rule(&lines, item)?;
            if let Some(first) = first_line_of.get(&spec.name) {
                return Err(RulesFileError {
                    line: name_line,
                    message: format!(
                        "duplicate rule name `{}` (first used on line {first})",
                        spec.name
                    ),
                });
            }
            first_line_of.insert(spec.name, name_line);
            specs.push(spec);
        }
    }
    Ok(specs)
}

fn int_in(lines: &Lines<'_>, key: &str, v: &Spanned<Node>, max: u8) -> Result<u8, RulesFileError> {
    match v.get_ref() {
        Node::Int(n) => match u8::try_from(*n) {
            Ok(b) if b <= max => Ok(b),
            _ => Err(lines.err(v.span().start, format!("`{key}` is {n}, must be 0..={max}"))),
        },
        other => Err(lines.err(
            v.span().start,
            format!(
                "`{key}` must be an integer 0..={max}, found {}",
                other.kind()
            ),
        )),
    }
}

fn string<'a>(
    lines: &Lines<'_>,
    key: &str,
    v: &'a Spanned<Node>,
) -> Result<&'a str, RulesFileError> {
    match v.get_ref() {
        Node::Str(s) => Ok(s),
        other => Err(lines.err(
            v.span().start,
            format!("`{key}` must be a string, found {}", other.kind()),
        )),
    }
}

fn parse_prefix(s: &str) -> Result<Prefix, String> {
    let (addr_text, len_text) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr_text
        .parse()
        .map_err(|_| format!("`{addr_text}` is not an IPv4 or IPv6 address"))?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len_text {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max && !l.starts_with('+') => n,
            _ => return Err(format!("prefix length `{l}` must be 0..={max}")),
        },
    };
    let masked = mask(addr, len);
    if masked != addr {
        return Err(format!(
            "host bits are set in `{s}` (the prefix is {masked}/{len})"
        ));
    }
    if let IpAddr::V6(a) = addr {
        if let (Some(v4), true) = (a.to_ipv4_mapped(), len >= 96) {
            return Err(format!(
                "`{s}` is an IPv4-mapped prefix, which never matches (IPv4 traffic is matched \
                 as IPv4): write `{v4}/{}`",
                len - 96
            ));
        }
    }
    Ok(Prefix { addr, len })
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

fn parse_port_number(s: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{s}` is not a port number"));
    }
    s.parse::<u16>()
        .map_err(|_| format!("port {s} is above 65535"))
}

/// `"first-last"` or `"port"`.
fn parse_port_text(s: &str) -> Result<PortRange, String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let range = PortRange {
        first: parse_port_number(a.trim())?,
        last: parse_port_number(b.trim())?,
    };
    if range.first > range.last {
        return Err(format!(
            "range {}-{} is reversed (first must be <= last)",
            range.first, range.last
        ));
    }
    Ok(range)
}

fn parse_ports(
    lines: &Lines<'_>,
    key: &str,
    v: &Spanned<Node>,
) -> Result<PortRange, RulesFileError> {
    let at = v.span().start;
    match v.get_ref() {
        Node::Int(n) => match u16::try_from(*n) {
            Ok(p) => Ok(PortRange { first: p, last: p }),
            Err(_) => Err(lines.err(at, format!("`{key}` is {n}, must be 0..=65535"))),
        },
        Node::Str(s) => parse_port_text(s).map_err(|m| lines.err(at, format!("`{key}`: {m}"))),
        other => Err(lines.err(
            at,
            format!(
                "`{key}` must be a port or a \"first-last\" string, found {}",
                other.kind()
            ),
        )),
    }
}

fn name_error(e: NameError) -> String {
    match e {
        NameError::Empty => String::from("`name` must not be empty"),
        NameError::TooLong => format!("`name` is longer than {MAX_RULE_NAME_LEN} bytes"),
        NameError::BadCharacter => String::from("`name` contains a control character"),
    }
}

/// The keys of one `[[rule]]` as read so far.
#[derive(Default)]
struct RuleFields {
    name: Option<(RuleName, usize)>,
    precedence: Option<u8>,
    protocol: Option<RuleProtocol>,
    local_prefix: Option<Prefix>,
    remote_prefix: Option<Prefix>,
    local_ports: Option<PortRange>,
    remote_ports: Option<PortRange>,
    action: Option<RuleAction>,
    pcp: Option<Pcp>,
    throttle_bps: Option<u64>,
}

impl RuleFields {
    /// Reads one `key = value` of a rule.
    fn set(
        &mut self,
        lines: &Lines<'_>,
        key: &str,
        v: &Spanned<Node>,
    ) -> Result<(), RulesFileError> {
        let at = v.span().start;
        match key {
            "name" => {
                let n = RuleName::try_new(string(lines, key, v)?)
                    .map_err(|e| lines.err(at, name_error(e)))?;
                self.name = Some((n, lines.line(at)));
            }
            "precedence" => self.precedence = Some(int_in(lines, key, v, 255)?),
            "protocol" => {
                self.protocol = Some(match string(lines, key, v)? {
                    "tcp" => RuleProtocol::Tcp,
                    "udp" => RuleProtocol::Udp,
                    "any" => RuleProtocol::Any,
                    other => {
                        return Err(lines.err(
                            at,
                            format!(
                                "`protocol` is \"{other}\", must be \"tcp\", \"udp\" or \"any\""
                            ),
                        ))
                    }
                });
            }
            "local_address" | "remote_address" => {
                let p = parse_prefix(string(lines, key, v)?)
                    .map_err(|m| lines.err(at, format!("`{key}`: {m}")))?;
                let (mine, other) = if key == "local_address" {
                    (&mut self.local_prefix, self.remote_prefix)
                } else {
                    (&mut self.remote_prefix, self.local_prefix)
                };
                if other.is_some_and(|o| o.addr.is_ipv4() != p.addr.is_ipv4()) {
                    return Err(lines.err(at, MIXED_FAMILIES));
                }
                *mine = Some(p);
            }
            "local_port" => self.local_ports = Some(parse_ports(lines, key, v)?),
            "remote_port" => self.remote_ports = Some(parse_ports(lines, key, v)?),
            "dscp" | "traffic_type" => {
                if self.action.is_some() {
                    return Err(
                        lines.err(at, "a rule sets either `dscp` or `traffic_type`, not both")
                    );
                }
                self.action = Some(parse_action(lines, key, v)?);
            }
            "throttle_bps" => {
                let range = MIN_RATE_BPS..=MAX_RATE_BPS;
                let bad = |what: String| {
                    lines.err(
                        at,
                        format!(
                            "`throttle_bps` {what}, must be {MIN_RATE_BPS}..={MAX_RATE_BPS} \
                             bit/s (one 1500-byte packet per second .. 100 Gbit/s; leave the \
                             key out for no throttle)"
                        ),
                    )
                };
                match v.get_ref() {
                    Node::Int(n) => match u64::try_from(*n) {
                        Ok(bps) if range.contains(&bps) => self.throttle_bps = Some(bps),
                        _ => return Err(bad(format!("is {n}"))),
                    },
                    other => return Err(bad(format!("is {}", other.kind()))),
                }
            }
            "priority_8021p" => {
                let p = int_in(lines, key, v, 7)?;
                self.pcp = Some(
                    Pcp::try_new(p).map_err(|_| lines.err(at, "`priority_8021p` must be 0..=7"))?,
                );
            }
            other => {
                return Err(lines.err(
                    at,
                    format!(
                        "unknown key `{other}` in [[rule]] (known keys: {})",
                        KEYS.join(", ")
                    ),
                ))
            }
        }
        Ok(())
    }
}

fn parse_action(
    lines: &Lines<'_>,
    key: &str,
    v: &Spanned<Node>,
) -> Result<RuleAction, RulesFileError> {
    let at = v.span().start;
    if key == "dscp" {
        let d = int_in(lines, key, v, 63)?;
        return Ok(RuleAction::Dscp(
            Dscp::try_new(d).map_err(|_| lines.err(at, "`dscp` must be 0..=63"))?,
        ));
    }
    let s = string(lines, key, v)?;
    let found = TRAFFIC_TYPES.iter().find(|(n, _)| *n == s);
    found
        .map(|(_, t)| RuleAction::TrafficType(*t))
        .ok_or_else(|| {
            lines.err(
                at,
                format!(
                    "`traffic_type` \"{s}\" is not one of best-effort, background, \
                 excellent-effort, audio-video, voice, control"
                ),
            )
        })
}

/// One `[[rule]]` table → its spec and the line of its name.
fn parse_rule(lines: &Lines<'_>, item: Spanned<Node>) -> Result<(RuleSpec, usize), RulesFileError> {
    let header = item.span().start;
    let Node::Table(entries) = item.into_inner() else {
        return Err(lines.err(header, "each `rule` must be a table"));
    };
    let mut f = RuleFields::default();
    for (key, v) in &entries {
        f.set(lines, key, v)?;
    }
    let Some((name, name_line)) = f.name else {
        return Err(lines.err(header, "[[rule]] has no `name`"));
    };
    let Some(action) = f.action else {
        return Err(lines.err(
            header,
            format!("rule `{name}` needs `dscp` or `traffic_type`"),
        ));
    };
    let spec = RuleSpec {
        name,
        precedence: f.precedence.unwrap_or(127),
        protocol: f.protocol.unwrap_or(RuleProtocol::Any),
        local_prefix: f.local_prefix,
        remote_prefix: f.remote_prefix,
        local_ports: f.local_ports,
        remote_ports: f.remote_ports,
        action,
        pcp: f.pcp,
        throttle_bps: f.throttle_bps,
    };
    spec.validate()
        .map_err(|e| lines.err(header, format!("rule `{name}` is invalid: {e:?}")))?;
    Ok((spec, name_line))
}

/// Writes `specs` as a rules file that [`parse_rules`] reads back to the same specs (given no
/// more than the maximum number of rules and unique names, as the engine guarantees).
#[must_use]
pub fn to_toml(specs: &[RuleSpec]) -> String {
    let mut out = String::new();
    for (i, s) in specs.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        // `write!` to a `String` cannot fail.
        let _ = writeln!(out, "[[rule]]");
        let _ = writeln!(
            out,
            "name = {}",
            toml::Value::String(s.name.as_str().to_owned())
        );
        let _ = writeln!(out, "precedence = {}", s.precedence);
        let protocol = match s.protocol {
            RuleProtocol::Tcp => "tcp",
            RuleProtocol::Udp => "udp",
            RuleProtocol::Any => "any",
        };
        let _ = writeln!(out, "protocol = \"{protocol}\"");
        for (key, p) in [
            ("local_address", s.local_prefix),
            ("remote_address", s.remote_prefix),
        ] {
            if let Some(p) = p {
                let _ = writeln!(out, "{key} = \"{}/{}\"", p.addr, p.len);
            }
        }
        for (key, r) in [
            ("local_port", s.local_ports),
            ("remote_port", s.remote_ports),
        ] {
            match r {
                Some(r) if r.first == r.last => {
                    let _ = writeln!(out, "{key} = {}", r.first);
                }
                Some(r) => {
                    let _ = writeln!(out, "{key} = \"{}-{}\"", r.first, r.last);
                }
                None => {}
            }
        }
        match s.action {
            RuleAction::Dscp(d) => {
                let _ = writeln!(out, "dscp = {}", d.value());
            }
            RuleAction::TrafficType(tt) => {
                let name = TRAFFIC_TYPES
                    .iter()
                    .find(|(_, t)| *t == tt)
                    .map_or("best-effort", |(n, _)| *n);
                let _ = writeln!(out, "traffic_type = \"{name}\"");
            }
        }
        if let Some(p) = s.pcp {
            let _ = writeln!(out, "priority_8021p = {}", p.value());
        }
        if let Some(bps) = s.throttle_bps {
            let _ = writeln!(out, "throttle_bps = {bps}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    // Tests may unwrap, index and panic: a panic is a test failure.
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    fn err(text: &str) -> RulesFileError {
        match parse_rules(text) {
            Ok(specs) => panic!("accepted: {specs:?}"),
            Err(e) => e,
        }
    }

    /// Asserts the error's line and that its message contains `needle`.
    fn check(text: &str, line: usize, needle: &str) {
        let e = err(text);
        assert_eq!(e.line, line, "{e}");
        assert!(
            e.message.contains(needle),
            "`{}` does not contain `{needle}`",
            e.message
        );
        assert_eq!(e.to_string(), format!("line {line}: {}", e.message));
    }

    #[test]
    fn empty_and_comment_only_files_have_no_rules() {
        assert_eq!(parse_rules("").unwrap(), Vec::new());
        assert_eq!(parse_rules("# nothing here\n\n").unwrap(), Vec::new());
    }

    #[test]
    fn full_rule_and_defaults() {
        let text = r#"
# VoIP
[[rule]]
name = "voip"
precedence = 200
protocol = "udp"
local_address = "10.0.0.0/8"
remote_address = "192.0.2.9"
local_port = 5060
remote_port = "16384-32767"
dscp = 46
priority_8021p = 5

[[rule]]
name = "backup"
traffic_type = "background"
remote_address = "2001:db8::/32"
local_port = "0-1023"
"#;
        let specs = parse_rules(text).unwrap();
        assert_eq!(specs.len(), 2);
        let v = &specs[0];
        assert_eq!(v.name.as_str(), "voip");
        assert_eq!(v.precedence, 200);
        assert_eq!(v.protocol, RuleProtocol::Udp);
        assert_eq!(
            v.local_prefix,
            Some(Prefix {
                addr: "10.0.0.0".parse().unwrap(),
                len: 8
            })
        );
        assert_eq!(
            v.remote_prefix,
            Some(Prefix {
                addr: "192.0.2.9".parse().unwrap(),
                len: 32
            })
        );
        assert_eq!(
            v.local_ports,
            Some(PortRange {
                first: 5060,
                last: 5060
            })
        );
        assert_eq!(
            v.remote_ports,
            Some(PortRange {
                first: 16384,
                last: 32767
            })
        );
        assert_eq!(v.action, RuleAction::Dscp(Dscp::EF));
        assert_eq!(v.pcp, Some(Pcp::try_new(5).unwrap()));
        let b = &specs[1];
        assert_eq!(b.precedence, 127);
        assert_eq!(b.protocol, RuleProtocol::Any);
        assert_eq!(b.local_prefix, None);
        assert_eq!(
            b.remote_prefix,
            Some(Prefix {
                addr: "2001:db8::".parse().unwrap(),
                len: 32
            })
        );
        assert_eq!(
            b.local_ports,
            Some(PortRange {
                first: 0,
                last: 1023
            })
        );
        assert_eq!(b.action, RuleAction::TrafficType(TrafficType::Background));
        assert_eq!(b.pcp, None);
    }

    #[test]
    fn every_traffic_type_name() {
        for (n, tt) in TRAFFIC_TYPES {
            let specs =
                parse_rules(&format!("[[rule]]\nname = \"x\"\ntraffic_type = \"{n}\"\n")).unwrap();
            assert_eq!(specs[0].action, RuleAction::TrafficType(tt));
        }
    }

    const HEAD: &str = "[[rule]]\nname = \"r\"\n"; // lines 1-2

    #[test]
    fn errors_name_the_offending_line() {
        // Syntax error (toml's own span).
        check("[[rule]]\nname = \"r\ndscp = 1\n", 2, "string");
        // Unknown keys.
        check(
            "[[rule]]\nname = \"r\"\ndscp = 1\ncolour = \"red\"\n",
            4,
            "unknown key `colour`",
        );
        check("title = \"x\"\n", 1, "unknown top-level key `title`");
        check(
            "[[rule]]\nname = \"r\"\ndscp = 1\n\n[other]\nx = 1\n",
            5,
            "unknown top-level key `other`",
        );
        check("rule = 5\n", 1, "array of tables");
        check("[rule]\nname = \"r\"\n", 1, "array of tables");
        check("rule = [1]\n", 1, "must be a table");
        // Missing pieces: the [[rule]] header line.
        check(
            "[[rule]]\nname = \"a\"\ndscp = 1\n\n[[rule]]\ndscp = 2\n",
            5,
            "no `name`",
        );
        check(
            "\n[[rule]]\nname = \"a\"\nprecedence = 3\n",
            2,
            "needs `dscp` or `traffic_type`",
        );
    }

    #[test]
    fn name_errors() {
        check("[[rule]]\nname = \"\"\ndscp = 1\n", 2, "must not be empty");
        check(
            &format!("[[rule]]\nname = \"{}\"\ndscp = 1\n", "n".repeat(65)),
            2,
            "longer than 64",
        );
        check(
            "[[rule]]\nname = \"a\\tb\"\ndscp = 1\n",
            2,
            "control character",
        );
        check(
            "[[rule]]\nname = 5\ndscp = 1\n",
            2,
            "must be a string, found an integer",
        );
        check(
            "[[rule]]\nname = \"a\"\ndscp = 1\n[[rule]]\nname = \"b\"\ndscp = 1\n[[rule]]\ndscp = 2\nname = \"a\"\n",
            9,
            "duplicate rule name `a` (first used on line 2)",
        );
    }

    #[test]
    fn value_errors() {
        check(
            &format!("{HEAD}dscp = 1\nprecedence = 256\n"),
            4,
            "`precedence` is 256, must be 0..=255",
        );
        check(
            &format!("{HEAD}dscp = 1\nprecedence = -1\n"),
            4,
            "must be 0..=255",
        );
        check(
            &format!("{HEAD}dscp = 1\nprecedence = \"high\"\n"),
            4,
            "found a string",
        );
        check(
            &format!("{HEAD}dscp = 64\n"),
            3,
            "`dscp` is 64, must be 0..=63",
        );
        check(&format!("{HEAD}dscp = 1.5\n"), 3, "found a float");
        check(
            &format!("{HEAD}dscp = 1\npriority_8021p = 8\n"),
            4,
            "must be 0..=7",
        );
        check(
            &format!("{HEAD}dscp = 1\npriority_8021p = true\n"),
            4,
            "found a boolean",
        );
        check(
            &format!("{HEAD}dscp = 1\nprotocol = \"icmp\"\n"),
            4,
            "\"tcp\", \"udp\" or \"any\"",
        );
        check(&format!("{HEAD}traffic_type = \"gold\"\n"), 3, "not one of");
        check(
            &format!("{HEAD}dscp = 1\ntraffic_type = \"voice\"\n"),
            4,
            "not both",
        );
        check(
            &format!("{HEAD}traffic_type = \"voice\"\n\ndscp = 1\n"),
            5,
            "not both",
        );
    }

    #[test]
    fn port_and_prefix_errors() {
        check(
            &format!("{HEAD}dscp = 1\nremote_address = \"::ffff:10.1.2.0/120\"\n"),
            4,
            "IPv4-mapped prefix, which never matches (IPv4 traffic is matched as IPv4): write `10.1.2.0/24`",
        );
        check(
            &format!("{HEAD}dscp = 1\nlocal_address = \"::ffff:192.0.2.7\"\n"),
            4,
            "write `192.0.2.7/32`",
        );
        check(
            &format!("{HEAD}dscp = 1\nlocal_port = 65536\n"),
            4,
            "must be 0..=65535",
        );
        check(
            &format!("{HEAD}dscp = 1\nremote_port = -5\n"),
            4,
            "must be 0..=65535",
        );
        check(
            &format!("{HEAD}dscp = 1\nremote_port = \"9-8\"\n"),
            4,
            "reversed",
        );
        check(
            &format!("{HEAD}dscp = 1\nremote_port = \"1-70000\"\n"),
            4,
            "above 65535",
        );
        check(
            &format!("{HEAD}dscp = 1\nremote_port = \"http\"\n"),
            4,
            "not a port number",
        );
        check(
            &format!("{HEAD}dscp = 1\nremote_port = \"1-\"\n"),
            4,
            "not a port number",
        );
        check(
            &format!("{HEAD}dscp = 1\nremote_port = [1, 2]\n"),
            4,
            "found an array",
        );
        // Prefixes.
        check(
            &format!("{HEAD}dscp = 1\nlocal_address = \"10.0.0.1/24\"\n"),
            4,
            "host bits are set in `10.0.0.1/24` (the prefix is 10.0.0.0/24)",
        );
        check(
            &format!("{HEAD}dscp = 1\nremote_address = \"10.0.0.0/33\"\n"),
            4,
            "must be 0..=32",
        );
        check(
            &format!("{HEAD}dscp = 1\nremote_address = \"2001:db8::/129\"\n"),
            4,
            "must be 0..=128",
        );
        check(
            &format!("{HEAD}dscp = 1\nremote_address = \"10.0.0.0/x\"\n"),
            4,
            "prefix length",
        );
        check(
            &format!("{HEAD}dscp = 1\nremote_address = \"example.com\"\n"),
            4,
            "not an IPv4 or IPv6 address",
        );
        check(
            &format!("{HEAD}local_address = \"10.0.0.0/8\"\ndscp = 1\nremote_address = \"2001:db8::1\"\n"),
            5,
            "same family",
        );
        check(
            &format!("{HEAD}remote_address = \"::1\"\nlocal_address = \"127.0.0.1\"\ndscp = 1\n"),
            4,
            "same family",
        );
        // Dates have no span in toml: still a line and a clear message.
        check(
            &format!("{HEAD}dscp = 1\nwhen = 1979-05-27\n"),
            4,
            "dates/times",
        );
        check(&format!("{HEAD}dscp = 1\nfoo.bar = 1\n"), 4, "dotted keys");
        check("\na.b = 1\n", 2, "dotted keys");
        // Sub-tables of a rule are unknown keys, at their header line.
        check(
            &format!("{HEAD}dscp = 1\n\n[rule.sub]\nk = 1\n"),
            5,
            "unknown key `sub`",
        );
        // toml's own range error, with its line.
        check(
            &format!("{HEAD}dscp = 99999999999999999999\n"),
            3,
            "too large",
        );
    }

    #[test]
    fn too_many_rules_names_the_first_extra_rule() {
        let text = "[[rule]]\nname = \"a\"\ndscp = 1\n[[rule]]\nname = \"b\"\ndscp = 1\n[[rule]]\nname = \"c\"\ndscp = 1\n";
        assert_eq!(parse_rules_with_max(text, 3).unwrap().len(), 3);
        let e = parse_rules_with_max(text, 2).unwrap_err();
        assert_eq!(
            e,
            RulesFileError {
                line: 7,
                message: String::from("more than 2 rules")
            }
        );
    }

    #[test]
    fn to_toml_of_nothing_is_empty() {
        assert_eq!(to_toml(&[]), "");
    }

    fn prefix_strategy(v6: bool) -> BoxedStrategy<Option<Prefix>> {
        if v6 {
            proptest::option::of((any::<u128>(), 0u8..=128).prop_map(|(a, l)| {
                let addr = mask(IpAddr::V6(a.into()), l);
                Prefix { addr, len: l }
            }))
            .boxed()
        } else {
            proptest::option::of((any::<u32>(), 0u8..=32).prop_map(|(a, l)| {
                let addr = mask(IpAddr::V4(a.into()), l);
                Prefix { addr, len: l }
            }))
            .boxed()
        }
    }

    fn ports_strategy() -> impl Strategy<Value = Option<PortRange>> {
        proptest::option::of((any::<u16>(), any::<u16>()).prop_map(|(a, b)| PortRange {
            first: a.min(b),
            last: a.max(b),
        }))
    }

    fn spec_strategy() -> impl Strategy<Value = RuleSpec> {
        let name =
            "[^\\p{Cc}]{1,20}".prop_filter_map("name", |s: String| RuleName::try_new(&s).ok());
        let action = prop_oneof![
            (0u8..64).prop_map(|d| RuleAction::Dscp(Dscp::try_new(d).unwrap())),
            (0usize..6).prop_map(|i| RuleAction::TrafficType(TrafficType::ALL[i])),
        ];
        (
            any::<bool>(),
            name,
            any::<u8>(),
            0usize..3,
            action,
            proptest::option::of(0u8..8),
            proptest::option::of(MIN_RATE_BPS..=MAX_RATE_BPS),
        )
            .prop_flat_map(
                move |(v6, name, precedence, proto, action, pcp, throttle_bps)| {
                    (
                        prefix_strategy(v6),
                        prefix_strategy(v6),
                        ports_strategy(),
                        ports_strategy(),
                    )
                        .prop_map(move |(lp, rp, lports, rports)| RuleSpec {
                            name,
                            precedence,
                            protocol: [RuleProtocol::Tcp, RuleProtocol::Udp, RuleProtocol::Any]
                                [proto],
                            local_prefix: lp,
                            remote_prefix: rp,
                            local_ports: lports,
                            remote_ports: rports,
                            action,
                            pcp: pcp.map(|p| Pcp::try_new(p).unwrap()),
                            throttle_bps,
                        })
                },
            )
    }

    #[test]
    fn throttle_bps() {
        let ok =
            parse_rules("[[rule]]\nname = \"bulk\"\ndscp = 8\nthrottle_bps = 2000000\n").unwrap();
        assert_eq!(ok[0].throttle_bps, Some(2_000_000));
        let edges = "[[rule]]\nname = \"a\"\ndscp = 8\nthrottle_bps = 12000\n\
                     [[rule]]\nname = \"b\"\ndscp = 8\nthrottle_bps = 100000000000\n";
        let specs = parse_rules(edges).unwrap();
        assert_eq!(
            specs.iter().map(|s| s.throttle_bps).collect::<Vec<_>>(),
            [Some(12_000), Some(100_000_000_000)]
        );
        assert!(to_toml(&specs).contains("throttle_bps = 100000000000\n"));
        for (value, found) in [
            ("0", "is 0"),
            ("11999", "is 11999"),
            ("100000000001", "is 100000000001"),
            ("-5", "is -5"),
            ("\"2M\"", "is a string"),
            ("1.5e6", "is a float"),
        ] {
            check(
                &format!("[[rule]]\nname = \"x\"\ndscp = 8\nthrottle_bps = {value}\n"),
                4,
                found,
            );
            check(
                &format!("[[rule]]\nname = \"x\"\ndscp = 8\nthrottle_bps = {value}\n"),
                4,
                "must be 12000..=100000000000 bit/s",
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn to_toml_round_trips(specs in proptest::collection::vec(spec_strategy(), 0..8)) {
            // Names must be unique in a file, as in the engine.
            let mut seen = std::collections::HashSet::new();
            let specs: Vec<RuleSpec> = specs.into_iter().filter(|s| seen.insert(s.name)).collect();
            let text = to_toml(&specs);
            let back = parse_rules(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(back, specs);
        }

        /// Arbitrary text never panics the parser, and every error names a line of the text.
        #[test]
        fn arbitrary_text_never_panics(text in "(\\[\\[rule\\]\\]\n|name = \"[a-z]{0,3}\"\n|dscp = -?[0-9]{1,3}\n|[a-z_]{1,12} = [\"0-9a-z./:-]{0,12}\n|\n){0,12}") {
            if let Err(e) = parse_rules(&text) {
                prop_assert!(e.line >= 1 && e.line <= text.lines().count().max(1) + 1, "{}", e);
            }
        }
    }
}
