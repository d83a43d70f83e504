//! Command-line parsing: `argv` → [`Command`], with no side effects.
//!
//! Everything a command needs from its flags is validated here, before any file is read or
//! any request is sent: a bad flag is a [`UsageError`] (exit 2) and nothing reaches the back
//! end. `rules add` flags are turned into a one-rule rules file and checked by the very parser
//! `rules load` uses ([`qosmark::rules_file::parse_rules`]), so both accept exactly the
//! same values; its errors are reported against the flag that caused them.

use qosmark::rules_file;
use qosmark_abi::heapless_name::RuleName;
use qosmark_abi::{Dscp, Pcp, RuleSpec, TrafficType};
use std::fmt::Write as _;

/// A usage error: what is wrong with the command line. Exit code 2, usage printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

fn usage(message: impl Into<String>) -> UsageError {
    UsageError(message.into())
}

/// `replay` arguments (see the crate README).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayArgs {
    /// Rules file.
    pub rules: String,
    /// Input capture.
    pub input: String,
    /// Output capture.
    pub output: String,
}

/// One change to a traffic-type table entry: `None` = leave it, `Some(None)` = "not added".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(
    clippy::option_option,
    reason = "three states on purpose: leave as is / set to \"not added\" / set to a value"
)]
pub struct EntryChange {
    /// New DSCP.
    pub dscp: Option<Option<Dscp>>,
    /// New 802.1p priority.
    pub pcp: Option<Option<Pcp>>,
}

/// What `table` should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableCommand {
    /// Print the table.
    Show,
    /// Change the entry of one traffic type.
    Set(TrafficType, EntryChange),
    /// Add DSCP values to the user allow-list.
    Allow(Vec<Dscp>),
    /// Remove DSCP values from the user allow-list (`None` = all of them).
    Disallow(Option<Vec<Dscp>>),
    /// Whether adaptive flows request 802.1p.
    TagAdaptive(bool),
    /// The marks of packets above a `QOSUseNonConformantMarkings` rate
    /// (`table set non-conformant --dscp D --pcp P`; either may be left out).
    NonConformant {
        /// New non-conformant DSCP.
        dscp: Option<Dscp>,
        /// New non-conformant 802.1p.
        pcp: Option<Pcp>,
    },
    /// Back to qWAVE's documented table, nothing allowed to users, adaptive flows tagged.
    Reset,
}

/// What `rules` should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RulesCommand {
    /// List the rules with their counters.
    List,
    /// Print the rules as a rules file (`rules load` reads it back).
    Export,
    /// Add one rule.
    Add(RuleSpec),
    /// Remove a rule by name.
    Remove(RuleName),
    /// Replace every rule with those of a file (the path; read and parsed before connecting).
    Load(String),
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Print the usage.
    Help,
    /// Print the version.
    Version,
    /// Offline replay of a capture.
    Replay(ReplayArgs),
    /// Back end status and global counters.
    Status,
    /// Flows with their sockets, marks and counters.
    Flows,
    /// Admin rules.
    Rules(RulesCommand),
    /// Traffic-type table and user DSCP allow-list.
    Table(TableCommand),
}

/// A command and the output format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// The command.
    pub command: Command,
    /// `--json` was given.
    pub json: bool,
}

/// Parses the arguments after the program name.
///
/// # Errors
/// [`UsageError`] for anything that is not a valid command line.
pub fn parse(args: &[String]) -> Result<Invocation, UsageError> {
    // `--json` is accepted anywhere before `--`.
    let mut json = false;
    let mut rest: Vec<&str> = Vec::with_capacity(args.len());
    let mut after_dashdash = false;
    for a in args {
        if !after_dashdash && a == "--json" {
            json = true;
            continue;
        }
        if a == "--" {
            after_dashdash = true;
        }
        rest.push(a.as_str());
    }
    let (first, tail) = match rest.split_first() {
        Some((f, t)) => (*f, t),
        None => return Err(usage("missing command")),
    };
    let wants_help = tail.iter().any(|a| matches!(*a, "-h" | "--help"));
    let command = match first {
        "-h" | "--help" | "help" => Command::Help,
        "-V" | "--version" => Command::Version,
        _ if wants_help => Command::Help,
        "replay" => Command::Replay(parse_replay(tail)?),
        "status" => {
            no_more(tail, "status")?;
            Command::Status
        }
        "flows" => {
            no_more(tail, "flows")?;
            Command::Flows
        }
        "rules" => Command::Rules(parse_rules(tail)?),
        "table" => Command::Table(parse_table(tail)?),
        other if other.starts_with('-') => return Err(usage(format!("unknown option {other}"))),
        other => return Err(usage(format!("unknown command {other}"))),
    };
    Ok(Invocation { command, json })
}

fn no_more(tail: &[&str], what: &str) -> Result<(), UsageError> {
    match tail.first() {
        None => Ok(()),
        Some(a) if a.starts_with('-') => Err(usage(format!("{what}: unknown option {a}"))),
        Some(a) => Err(usage(format!("{what}: unexpected argument {a}"))),
    }
}

fn parse_replay(tail: &[&str]) -> Result<ReplayArgs, UsageError> {
    let mut rules: Option<String> = None;
    let mut positional = Vec::new();
    let mut it = tail.iter();
    while let Some(&arg) = it.next() {
        let value = if arg == "--rules" {
            Some(
                it.next()
                    .ok_or_else(|| usage("--rules needs a file name"))?
                    .to_string(),
            )
        } else {
            arg.strip_prefix("--rules=").map(str::to_owned)
        };
        if let Some(v) = value {
            if rules.is_some() {
                return Err(usage("--rules given more than once"));
            }
            rules = Some(v);
        } else if arg == "--" {
            positional.extend(it.by_ref().map(|s| (*s).to_owned()));
        } else if arg.starts_with('-') && arg.len() > 1 {
            return Err(usage(format!("unknown option {arg}")));
        } else {
            positional.push(arg.to_owned());
        }
    }
    let rules = rules.ok_or_else(|| usage("replay needs --rules RULES.toml"))?;
    let [input, output]: [String; 2] = positional
        .try_into()
        .map_err(|_| usage("replay needs exactly two files: IN and OUT"))?;
    Ok(ReplayArgs {
        rules,
        input,
        output,
    })
}

fn parse_rules(tail: &[&str]) -> Result<RulesCommand, UsageError> {
    let (sub, rest) = tail
        .split_first()
        .ok_or_else(|| usage("rules needs a subcommand: list, export, add, remove or load"))?;
    match *sub {
        "list" => no_more(rest, "rules list").map(|()| RulesCommand::List),
        "export" => no_more(rest, "rules export").map(|()| RulesCommand::Export),
        "add" => parse_rule_flags(rest).map(RulesCommand::Add),
        // `--` lets a name or file start with `-`.
        "remove" => match rest {
            [name] | ["--", name] if !name.starts_with('-') || rest.len() == 2 => {
                RuleName::try_new(name)
                    .map(RulesCommand::Remove)
                    .map_err(|e| usage(format!("rules remove: bad rule name {name:?}: {e:?}")))
            }
            _ => Err(usage("rules remove needs exactly one rule name")),
        },
        "load" => match rest {
            [path] if !path.starts_with('-') || *path == "-" => {
                Ok(RulesCommand::Load((*path).to_owned()))
            }
            ["--", path] => Ok(RulesCommand::Load((*path).to_owned())),
            _ => Err(usage(
                "rules load needs exactly one file (RULES.toml, or - for stdin)",
            )),
        },
        other => Err(usage(format!("unknown rules subcommand {other}"))),
    }
}

/// `rules add` flag → rules-file key, and whether the key's value is an integer in the file.
const RULE_FLAGS: [(&str, &str, bool); 11] = [
    ("--name", "name", false),
    ("--precedence", "precedence", true),
    ("--protocol", "protocol", false),
    ("--local-address", "local_address", false),
    ("--remote-address", "remote_address", false),
    ("--local-port", "local_port", false),
    ("--remote-port", "remote_port", false),
    ("--dscp", "dscp", true),
    ("--traffic-type", "traffic_type", false),
    ("--priority-8021p", "priority_8021p", true),
    ("--throttle-bps", "throttle_bps", true),
];

/// `rules add --flag value ...` → one [`RuleSpec`], through the rules-file parser.
fn parse_rule_flags(args: &[&str]) -> Result<RuleSpec, UsageError> {
    // Line 1 is `[[rule]]`; flag i (in the order given) is written on line i + 2.
    let mut doc = String::from("[[rule]]\n");
    let mut lines: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(&arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (arg, None),
        };
        let Some(&(flag, key, integer)) = RULE_FLAGS.iter().find(|(f, _, _)| *f == flag) else {
            return Err(usage(if arg.starts_with('-') {
                format!("rules add: unknown option {arg}")
            } else {
                format!("rules add: unexpected argument {arg}")
            }));
        };
        if lines.contains(&flag) {
            return Err(usage(format!("rules add: {flag} given more than once")));
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .copied()
                .ok_or_else(|| usage(format!("rules add: {flag} needs a value")))?,
        };
        let value = if key == "dscp" {
            // DSCP names (ef, cs5, af41) are accepted here too; the file takes numbers.
            parse_dscp(value).map_or_else(|_| value.to_owned(), |d| d.value().to_string())
        } else {
            value.to_owned()
        };
        let rendered = if integer && value.parse::<i64>().is_ok() {
            value
        } else {
            toml::Value::String(value).to_string()
        };
        // Writing to a String cannot fail.
        let _ = writeln!(doc, "{key} = {rendered}");
        lines.push(flag);
    }
    if !lines.contains(&"--name") {
        return Err(usage("rules add needs --name NAME"));
    }
    let mut specs = rules_file::parse_rules(&doc).map_err(|e| {
        let what = e
            .line
            .checked_sub(2)
            .and_then(|i| lines.get(i))
            .map_or_else(|| "rules add".to_owned(), |f| format!("rules add: {f}"));
        // The parser names the file key; the flag is what the user typed.
        let message = RULE_FLAGS.iter().fold(e.message, |m, (f, k, _)| {
            m.replace(&format!("`{k}`"), &format!("`{f}`"))
        });
        usage(format!("{what}: {message}"))
    })?;
    match (specs.pop(), specs.is_empty()) {
        (Some(spec), true) => Ok(spec),
        _ => Err(usage("rules add: expected exactly one rule")),
    }
}

/// Traffic-type names as the rules file writes them, and the `QOS_TRAFFIC_TYPE` value.
pub const TRAFFIC_TYPE_NAMES: [(&str, TrafficType); 6] = [
    ("best-effort", TrafficType::BestEffort),
    ("background", TrafficType::Background),
    ("excellent-effort", TrafficType::ExcellentEffort),
    ("audio-video", TrafficType::AudioVideo),
    ("voice", TrafficType::Voice),
    ("control", TrafficType::Control),
];

/// The rules-file name of a traffic type.
#[must_use]
pub fn traffic_type_name(tt: TrafficType) -> &'static str {
    TRAFFIC_TYPE_NAMES
        .iter()
        .find(|(_, t)| *t == tt)
        .map_or("?", |(n, _)| n)
}

fn parse_traffic_type(s: &str) -> Result<TrafficType, UsageError> {
    let lower = s.to_ascii_lowercase();
    TRAFFIC_TYPE_NAMES
        .iter()
        .find(|(n, _)| *n == lower)
        .map(|(_, t)| *t)
        .or_else(|| {
            s.parse::<u32>()
                .ok()
                .and_then(|v| TrafficType::try_from_u32(v).ok())
        })
        .ok_or_else(|| {
            usage(format!(
                "unknown traffic type {s:?} (best-effort, background, excellent-effort, \
                 audio-video, voice, control, or 0..=5)"
            ))
        })
}

/// A DSCP as a number 0..=63 or a standard name: `ef` (46), `cs0`..`cs7` (8n), `af11`..`af43`
/// (8x + 2y, RFC 2597), `va` (44, RFC 5865), `le` (1, RFC 8622); case-insensitive.
///
/// # Errors
/// [`UsageError`] naming the value.
pub fn parse_dscp(s: &str) -> Result<Dscp, UsageError> {
    let bad = || {
        usage(format!(
            "bad DSCP {s:?} (0..=63, or ef, va, le, cs0..cs7, af11..af43)"
        ))
    };
    let lower = s.to_ascii_lowercase();
    let value: u8 = if let Some(n) = digits(&lower) {
        n
    } else if lower == "ef" {
        46
    } else if lower == "va" {
        44
    } else if lower == "le" {
        1
    } else if let Some(n) = lower.strip_prefix("cs") {
        match digits(n) {
            Some(n @ 0..=7) => n * 8,
            _ => return Err(bad()),
        }
    } else if let Some(xy) = lower.strip_prefix("af") {
        match xy.as_bytes() {
            [x @ b'1'..=b'4', y @ b'1'..=b'3'] => (x - b'0') * 8 + (y - b'0') * 2,
            _ => return Err(bad()),
        }
    } else {
        return Err(bad());
    };
    Dscp::try_new(value).map_err(|_| bad())
}

/// A small decimal number written with digits only (`u8::from_str` also takes a `+` sign).
fn digits(s: &str) -> Option<u8> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_dscp_or_none(s: &str) -> Result<Option<Dscp>, UsageError> {
    if s.eq_ignore_ascii_case("none") {
        Ok(None)
    } else {
        parse_dscp(s).map(Some)
    }
}

fn parse_pcp_or_none(s: &str) -> Result<Option<Pcp>, UsageError> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    digits(s)
        .and_then(|v| Pcp::try_new(v).ok())
        .map(Some)
        .ok_or_else(|| usage(format!("bad 802.1p priority {s:?} (0..=7 or none)")))
}

fn parse_table(tail: &[&str]) -> Result<TableCommand, UsageError> {
    let Some((sub, rest)) = tail.split_first() else {
        return Ok(TableCommand::Show);
    };
    match *sub {
        "show" => no_more(rest, "table show").map(|()| TableCommand::Show),
        "reset" => no_more(rest, "table reset").map(|()| TableCommand::Reset),
        "set" => parse_table_set(rest),
        "allow" => {
            if rest.is_empty() {
                return Err(usage("table allow needs one or more DSCP values"));
            }
            parse_dscp_list(rest).map(TableCommand::Allow)
        }
        "disallow" => match rest {
            [] => Err(usage("table disallow needs DSCP values or --all")),
            ["--all"] => Ok(TableCommand::Disallow(None)),
            _ => parse_dscp_list(rest).map(|v| TableCommand::Disallow(Some(v))),
        },
        "tag-adaptive" => match rest {
            ["on"] => Ok(TableCommand::TagAdaptive(true)),
            ["off"] => Ok(TableCommand::TagAdaptive(false)),
            _ => Err(usage("table tag-adaptive needs on or off")),
        },
        other => Err(usage(format!("unknown table subcommand {other}"))),
    }
}

fn parse_dscp_list(values: &[&str]) -> Result<Vec<Dscp>, UsageError> {
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        if v.starts_with('-') {
            return Err(usage(format!("unknown option {v}")));
        }
        // "46,34" is accepted as well as "46 34".
        for part in v.split(',').filter(|p| !p.is_empty()) {
            out.push(parse_dscp(part)?);
        }
    }
    Ok(out)
}

fn parse_table_set(rest: &[&str]) -> Result<TableCommand, UsageError> {
    let (ty, flags) = rest
        .split_first()
        .ok_or_else(|| usage("table set needs a traffic type, then --dscp and/or --pcp"))?;
    if ty.starts_with('-') {
        return Err(usage(
            "table set needs a traffic type first (e.g. table set voice --dscp ef)",
        ));
    }
    if *ty == "non-conformant" {
        return match parse_table_set_flags(flags, "table set non-conformant")? {
            EntryChange {
                dscp: Some(None), ..
            }
            | EntryChange {
                pcp: Some(None), ..
            } => Err(usage(
                "table set non-conformant: packets above the rate always get a DSCP and \
                 an 802.1p value (none is not possible; 0 is best effort)",
            )),
            EntryChange { dscp, pcp } => Ok(TableCommand::NonConformant {
                dscp: dscp.flatten(),
                pcp: pcp.flatten(),
            }),
        };
    }
    let tt = parse_traffic_type(ty)?;
    let change = parse_table_set_flags(flags, "table set")?;
    Ok(TableCommand::Set(tt, change))
}

/// The `--dscp` / `--pcp` flags of `table set` (`what` names the command in errors).
fn parse_table_set_flags(flags: &[&str], what: &str) -> Result<EntryChange, UsageError> {
    let mut change = EntryChange::default();
    let mut it = flags.iter();
    while let Some(&arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v)),
            None => (arg, None),
        };
        let mut value = || {
            inline
                .or_else(|| it.next().copied())
                .ok_or_else(|| usage(format!("{what}: {flag} needs a value")))
        };
        match flag {
            "--dscp" => {
                if change.dscp.is_some() {
                    return Err(usage(format!("{what}: --dscp given more than once")));
                }
                change.dscp = Some(parse_dscp_or_none(value()?)?);
            }
            "--pcp" | "--priority-8021p" => {
                if change.pcp.is_some() {
                    return Err(usage(format!("{what}: --pcp given more than once")));
                }
                change.pcp = Some(parse_pcp_or_none(value()?)?);
            }
            _ if arg.starts_with('-') => {
                return Err(usage(format!("{what}: unknown option {arg}")))
            }
            _ => return Err(usage(format!("{what}: unexpected argument {arg}"))),
        }
    }
    if change.dscp.is_none() && change.pcp.is_none() {
        return Err(usage(format!(
            "{what} needs --dscp VALUE|none and/or --pcp VALUE|none"
        )));
    }
    Ok(change)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]
    use super::*;
    use qosmark_abi::{PortRange, Prefix, RuleAction, RuleProtocol};

    fn p(args: &str) -> Result<Invocation, UsageError> {
        let v: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
        parse(&v)
    }

    fn cmd(args: &str) -> Command {
        p(args).unwrap().command
    }

    fn err(args: &str) -> String {
        p(args).unwrap_err().0
    }

    #[test]
    fn simple_commands_and_json_anywhere() {
        assert_eq!(cmd("status"), Command::Status);
        assert!(p("status --json").unwrap().json);
        assert!(p("--json flows").unwrap().json);
        assert!(!p("flows").unwrap().json);
        assert_eq!(cmd("table"), Command::Table(TableCommand::Show));
        assert_eq!(cmd("rules list"), Command::Rules(RulesCommand::List));
        assert_eq!(cmd("status --help"), Command::Help);
        assert_eq!(cmd("--version"), Command::Version);
    }

    #[test]
    fn bad_command_lines_are_usage_errors() {
        assert_eq!(err(""), "missing command");
        assert_eq!(err("frobnicate"), "unknown command frobnicate");
        assert_eq!(err("status --verbose"), "status: unknown option --verbose");
        assert_eq!(err("flows all"), "flows: unexpected argument all");
        assert!(err("rules").contains("needs a subcommand"));
        assert!(err("rules remove").contains("exactly one rule name"));
        assert!(err("rules remove a b").contains("exactly one rule name"));
        assert!(err("rules remove -a").contains("exactly one rule name"));
        assert_eq!(
            cmd("rules remove -- -a"),
            Command::Rules(RulesCommand::Remove(RuleName::try_new("-a").unwrap()))
        );
        assert_eq!(
            cmd("rules load -- -f.toml"),
            Command::Rules(RulesCommand::Load("-f.toml".into()))
        );
        assert_eq!(
            cmd("rules load -"),
            Command::Rules(RulesCommand::Load("-".into()))
        );
        assert!(err("rules load").contains("exactly one file"));
        assert!(err("rules load a b").contains("exactly one file"));
        assert!(err("table set").contains("traffic type"));
        assert!(err("table set voice").contains("--dscp"));
        assert!(err("table set bogus --dscp 46").contains("unknown traffic type"));
        assert!(err("table set voice --dscp 64").contains("bad DSCP"));
        assert!(err("table set voice --pcp 8").contains("802.1p"));
        assert!(err("table set voice --dscp 1 --dscp 2").contains("more than once"));
        assert!(err("table allow").contains("one or more"));
        assert!(err("table allow 46 x").contains("bad DSCP \"x\""));
        assert!(err("table tag-adaptive maybe").contains("on or off"));
        assert!(err("table wipe").contains("unknown table subcommand"));
    }

    #[test]
    fn replay_args() {
        assert_eq!(
            cmd("replay --rules r.toml in out"),
            Command::Replay(ReplayArgs {
                rules: "r.toml".into(),
                input: "in".into(),
                output: "out".into()
            })
        );
        let i = p("replay --json --rules=r in out").unwrap();
        assert!(i.json);
        assert_eq!(err("replay in out"), "replay needs --rules RULES.toml");
        assert_eq!(
            err("replay --rules a --rules b in out"),
            "--rules given more than once"
        );
        assert_eq!(
            err("replay --rules a in"),
            "replay needs exactly two files: IN and OUT"
        );
        assert_eq!(err("replay --rules a -x in out"), "unknown option -x");
    }

    #[test]
    fn dscp_names() {
        let d = |s| parse_dscp(s).map(Dscp::value);
        assert_eq!(d("46"), Ok(46));
        assert_eq!(d("EF"), Ok(46));
        assert_eq!(d("cs0"), Ok(0));
        assert_eq!(d("cs7"), Ok(56));
        assert_eq!(d("af11"), Ok(10));
        assert_eq!(d("AF41"), Ok(34));
        assert_eq!(d("af43"), Ok(38));
        assert_eq!(d("va"), Ok(44));
        assert_eq!(d("le"), Ok(1));
        assert_eq!(d("63"), Ok(63));
        for bad in [
            "64", "cs8", "af44", "af51", "af1", "-1", "", "cs", "cs+1", "+46", "ef1",
        ] {
            assert!(parse_dscp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn table_commands() {
        assert_eq!(
            cmd("table set voice --dscp ef --pcp none"),
            Command::Table(TableCommand::Set(
                TrafficType::Voice,
                EntryChange {
                    dscp: Some(Some(Dscp::EF)),
                    pcp: Some(None)
                }
            ))
        );
        assert_eq!(
            cmd("table set 1 --dscp=none"),
            Command::Table(TableCommand::Set(
                TrafficType::Background,
                EntryChange {
                    dscp: Some(None),
                    pcp: None
                }
            ))
        );
        assert_eq!(
            cmd("table allow ef 34,cs3"),
            Command::Table(TableCommand::Allow(vec![
                Dscp::EF,
                Dscp::try_new(34).unwrap(),
                Dscp::try_new(24).unwrap()
            ]))
        );
        assert_eq!(
            cmd("table disallow --all"),
            Command::Table(TableCommand::Disallow(None))
        );
        assert_eq!(
            cmd("table tag-adaptive off"),
            Command::Table(TableCommand::TagAdaptive(false))
        );
        assert_eq!(cmd("table reset"), Command::Table(TableCommand::Reset));
        assert_eq!(
            cmd("table set non-conformant --dscp 8 --pcp 1"),
            Command::Table(TableCommand::NonConformant {
                dscp: Some(Dscp::try_new(8).unwrap()),
                pcp: Some(Pcp::try_new(1).unwrap()),
            })
        );
        assert_eq!(
            cmd("table set non-conformant --dscp=cs1"),
            Command::Table(TableCommand::NonConformant {
                dscp: Some(Dscp::try_new(8).unwrap()),
                pcp: None,
            })
        );
        assert!(err("table set non-conformant").contains("needs --dscp"));
        assert!(err("table set non-conformant --dscp none").contains("none is not possible"));
        assert!(err("table set non-conformant --pcp 8").contains("802.1p"));
        assert!(err("table set non-conformant --colour 1").contains("unknown option --colour"));
    }

    #[test]
    fn rules_add_builds_the_same_spec_as_the_file() {
        let Command::Rules(RulesCommand::Add(spec)) = cmd(
            "rules add --name voip --precedence 200 --protocol udp --remote-address \
             192.0.2.0/24 --remote-port 16384-32767 --local-port=5060 --dscp ef \
             --priority-8021p 5 --throttle-bps 2000000",
        ) else {
            panic!("not rules add")
        };
        let file = rules_file::parse_rules(
            "[[rule]]\nname = \"voip\"\nprecedence = 200\nprotocol = \"udp\"\n\
             remote_address = \"192.0.2.0/24\"\nremote_port = \"16384-32767\"\n\
             local_port = 5060\ndscp = 46\npriority_8021p = 5\nthrottle_bps = 2000000\n",
        )
        .unwrap();
        assert_eq!(file, vec![spec.clone()]);
        assert_eq!(spec.throttle_bps, Some(2_000_000));
        // The range error names the flag the user typed.
        let e = err("rules add --name x --dscp 8 --throttle-bps 0");
        assert!(e.contains("--throttle-bps") && e.contains("12000"), "{e}");
        assert_eq!(spec.action, RuleAction::Dscp(Dscp::EF));
        assert_eq!(spec.protocol, RuleProtocol::Udp);
        assert_eq!(
            spec.remote_ports,
            Some(PortRange {
                first: 16384,
                last: 32767
            })
        );
        assert_eq!(
            spec.remote_prefix,
            Some(Prefix {
                addr: "192.0.2.0".parse().unwrap(),
                len: 24
            })
        );
        let Command::Rules(RulesCommand::Add(tt)) =
            cmd("rules add --name bulk --traffic-type background")
        else {
            panic!("not rules add")
        };
        assert_eq!(tt.action, RuleAction::TrafficType(TrafficType::Background));
        assert_eq!(tt.precedence, 127);
    }

    #[test]
    fn rules_add_errors_name_the_flag() {
        assert_eq!(err("rules add --dscp 46"), "rules add needs --name NAME");
        assert_eq!(
            err("rules add --name a --name b --dscp 1"),
            "rules add: --name given more than once"
        );
        assert_eq!(
            err("rules add --name a --dscp"),
            "rules add: --dscp needs a value"
        );
        assert_eq!(
            err("rules add --name a --colour red"),
            "rules add: unknown option --colour"
        );
        assert_eq!(
            err("rules add --name a stray"),
            "rules add: unexpected argument stray"
        );
        let e = err("rules add --name a --dscp 46 --remote-port 9-1");
        assert!(e.starts_with("rules add: --remote-port: "), "{e}");
        let e = err("rules add --name a --dscp 64");
        assert!(e.starts_with("rules add: --dscp: "), "{e}");
        let e = err("rules add --name a --dscp 1 --remote-address 10.0.0.1/8");
        assert!(e.starts_with("rules add: --remote-address: "), "{e}");
        assert!(e.contains("10.0.0.0/8"), "names the intended prefix: {e}");
        let e = err("rules add --name a --precedence high --dscp 1");
        assert!(e.starts_with("rules add: --precedence: "), "{e}");
        // Neither or both of --dscp / --traffic-type: reported against the rule.
        let e = err("rules add --name a");
        assert!(e.starts_with("rules add"), "{e}");
        let e = err("rules add --name a --dscp 1 --traffic-type voice");
        assert!(e.starts_with("rules add"), "{e}");
        // A value that would be TOML syntax stays a plain string.
        let Command::Rules(RulesCommand::Add(spec)) = cmd("rules add --name a\"]]x=1 --dscp 1")
        else {
            panic!("not rules add")
        };
        assert_eq!(spec.name.as_str(), "a\"]]x=1");
    }
}
