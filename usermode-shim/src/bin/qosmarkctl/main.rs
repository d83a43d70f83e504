//! `qosmarkctl`: the qosmark administration tool.
//!
//! * `status`: is the back end reachable, its protocol version, handles / flows / sockets /
//!   rules, and the global packet counters (marked, skipped per reason, fail-open per reason);
//! * `flows`: every flow with its sockets (5-tuples), mark and counters (administrators see
//!   all flows, users their own process's);
//! * `rules list | export | add ... | remove NAME | load FILE`: the administrator rules;
//! * `table [show] | set TYPE ... | set non-conformant ... | allow DSCP... | disallow
//!   DSCP...|--all | tag-adaptive on|off | reset`: the traffic-type table, the non-conformant
//!   marks (shaping) and the DSCP values users may set;
//! * `replay --rules RULES.toml IN OUT`: offline replay of a capture (no back end needed).
//!
//! `--json` on every command; exit codes in [`commands`]; formats and schema in the crate
//! README. Modules: [`args`] (parsing, no side effects), [`backend`] (driver / daemon
//! connection), [`commands`] (requests), [`render`] (text and JSON), [`replay_cmd`].

mod args;
mod backend;
mod commands;
mod render;
mod replay_cmd;

use args::{Command, Invocation, RulesCommand};
use commands::Failure;
use std::process::ExitCode;

const USAGE: &str = "\
usage: qosmarkctl COMMAND [--json]

  status                          back end reachable? version, handles/flows/sockets/rules,
                                  packet counters (skipped and fail-open per reason)
  flows                           flows with sockets, marks and counters (admin: all flows)
  rules list                      admin rules with counters (admin)
  rules export                    the rules as a rules file (admin)
  rules add --name NAME [--precedence 0-255] [--protocol tcp|udp|any]
            [--local-address PREFIX] [--remote-address PREFIX]
            [--local-port P|A-B] [--remote-port P|A-B]
            (--dscp 0-63|ef|csN|afXY | --traffic-type TYPE) [--priority-8021p 0-7]
            [--throttle-bps 12000-100000000000]
                                  add one rule; flags mirror the rules-file keys (admin);
                                  a throttle delays what the rule matches above that rate
  rules remove NAME               remove a rule (admin)
  rules load FILE                 replace every rule with those of FILE (TOML; - = stdin) (admin)
  table [show]                    traffic-type -> DSCP / 802.1p, DSCP values users may set
  table set TYPE [--dscp D|none] [--pcp 0-7|none]     change one traffic type (admin)
  table set non-conformant [--dscp D] [--pcp 0-7]
                                  marks of packets above a QOSUseNonConformantMarkings
                                  rate (default DSCP 0 / 802.1p 1) (admin)
  table allow DSCP...             let users set these DSCP values (admin)
  table disallow DSCP...|--all    take them back (admin)
  table tag-adaptive on|off       request 802.1p for adaptive flows (admin)
  table reset                     qWAVE's documented table, nothing allowed to users (admin)
  replay --rules RULES.toml IN OUT
                                  mark a pcap/pcapng capture offline as the driver would
  --help, --version

TYPE: best-effort, background, excellent-effort, audio-video, voice, control (or 0-5).
Back end: Linux qosmarkd at $QOSMARK_SOCKET or /run/qosmark/qosmark.sock; Windows \\\\.\\QosMark.
exit codes: 0 ok, 1 request refused, 2 bad usage or bad input (nothing sent),
            3 back end unreachable, 4 access denied (needs administrator / root)";

/// The usage lines of one command (`rules`, `table`, `replay`, ...), each as
/// `usage: qosmarkctl ...`; `None` for an unknown command.
fn command_usage(command: &str) -> Option<String> {
    let mut out = String::new();
    let mut inside = false;
    for line in USAGE.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if indent == 2 {
            inside = trimmed.split_whitespace().next() == Some(command);
            if inside {
                out.push_str("\nusage: qosmarkctl ");
                // The command and its flags, without the right-hand description.
                out.push_str(trimmed.split("   ").next().unwrap_or(trimmed).trim_end());
            }
        } else if inside && indent > 2 && indent < 30 {
            // A continuation of the flags (descriptions are indented further).
            out.push(' ');
            out.push_str(trimmed);
        } else if indent != 34 {
            inside = false;
        }
    }
    (!out.is_empty()).then(|| format!("{}\n(qosmarkctl --help for all commands)", out.trim_start()))
}

/// Reads and parses a rules file for `rules load`, before connecting.
fn read_rules_file(path: &str) -> Result<Vec<qosmark_abi::RuleSpec>, Failure> {
    let text = if path == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| Failure::input(format!("stdin: cannot read: {e}")))?;
        s
    } else {
        let bytes =
            std::fs::read(path).map_err(|e| Failure::input(format!("{path}: cannot read: {e}")))?;
        String::from_utf8(bytes).map_err(|_| Failure::input(format!("{path}: not UTF-8 text")))?
    };
    // "RULES.toml:12: message", as compilers print positions.
    qosmark::rules_file::parse_rules(&text)
        .map_err(|e| Failure::input(format!("{path}:{}: {}", e.line, e.message)))
}

/// Runs a parsed command; `Ok(None)` when it printed everything itself.
fn run(inv: &Invocation) -> Result<Option<render::Output>, Failure> {
    match &inv.command {
        Command::Help => {
            println!("{USAGE}");
            Ok(None)
        }
        Command::Version => {
            println!("qosmarkctl {}", env!("CARGO_PKG_VERSION"));
            Ok(None)
        }
        Command::Replay(a) => replay_cmd::run(a, inv.json).map(|()| None),
        Command::Status => commands::status(&mut *backend::open()?).map(Some),
        Command::Flows => commands::flows(&mut *backend::open()?).map(Some),
        Command::Rules(r) => {
            // The file is read and checked before anything is sent.
            let loaded = match r {
                RulesCommand::Load(path) => Some(read_rules_file(path)?),
                _ => None,
            };
            commands::rules(&mut *backend::open()?, r, loaded).map(Some)
        }
        Command::Table(t) => commands::table(&mut *backend::open()?, t).map(Some),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let inv = match args::parse(&argv) {
        Ok(inv) => inv,
        Err(e) => {
            // Even a bad command line answers in JSON when JSON was asked for.
            let json = argv.iter().any(|a| a == "--json");
            let usage = argv
                .iter()
                .find(|a| *a != "--json")
                .and_then(|c| command_usage(c));
            return fail(&Failure::usage(e.0), json, false, usage.as_deref());
        }
    };
    match run(&inv) {
        Ok(None) => ExitCode::from(commands::EXIT_OK),
        Ok(Some(out)) => {
            if inv.json {
                println!("{}", render::json(&out));
            } else {
                print!("{}", render::text(&out));
            }
            ExitCode::from(commands::EXIT_OK)
        }
        Err(f) => fail(&f, inv.json, inv.command == Command::Status, None),
    }
}

/// Prints a failure (stderr; and stdout as JSON with `--json`) and returns its exit code.
fn fail(f: &Failure, json: bool, is_status: bool, usage: Option<&str>) -> ExitCode {
    eprintln!("qosmarkctl: {}", f.message);
    if f.usage {
        eprintln!("{}", usage.unwrap_or(USAGE));
    }
    if json {
        let mut doc = render::error_json(f.exit, f.win32, &f.message);
        if is_status && f.exit == commands::EXIT_UNREACHABLE {
            if let Some(o) = doc.as_object_mut() {
                o.insert("reachable".into(), false.into());
            }
        }
        println!("{doc}");
    }
    ExitCode::from(f.exit)
}

#[cfg(test)]
mod tests {
    use super::command_usage;

    #[test]
    fn per_command_usage() {
        assert_eq!(
            command_usage("replay").as_deref(),
            Some(
                "usage: qosmarkctl replay --rules RULES.toml IN OUT\n\
                 (qosmarkctl --help for all commands)"
            )
        );
        let rules = command_usage("rules").unwrap_or_default();
        assert!(
            rules.starts_with("usage: qosmarkctl rules list\n"),
            "{rules}"
        );
        assert!(
            rules.contains(
                "usage: qosmarkctl rules add --name NAME [--precedence 0-255] [--protocol \
                 tcp|udp|any] [--local-address PREFIX]"
            ),
            "{rules}"
        );
        assert!(
            rules.contains("usage: qosmarkctl rules load FILE\n"),
            "{rules}"
        );
        assert!(!rules.contains("table"), "{rules}");
        let table = command_usage("table").unwrap_or_default();
        assert!(
            table.contains("usage: qosmarkctl table set TYPE [--dscp D|none]"),
            "{table}"
        );
        assert_eq!(
            command_usage("status")
                .as_deref()
                .map(|s| s.lines().count()),
            Some(2)
        );
        assert_eq!(command_usage("bogus"), None);
    }
}
