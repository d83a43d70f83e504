//! `qosmarkctl`: the qosmark administration tool. Subcommands so far:
//!
//! * `replay --rules RULES.toml IN OUT [--json]`: run a pcap / pcapng capture through the engine
//!   as if every packet were sent by the capture host, write the capture the host would have
//!   sent, and print what happened per rule. See the crate README for the JSON schema.
//!
//! Exit codes: 0 success, 1 the output could not be written, 2 bad usage or bad input
//! (unreadable file, not a capture, corrupt capture, unsupported link type, bad rules).

use qosmark::replay::{self, ReplayError, Summary};
use std::process::ExitCode;

const USAGE: &str = "\
usage: qosmarkctl replay --rules RULES.toml IN.pcap OUT.pcap [--json]
       qosmarkctl --help | --version

replay   classify every packet of IN (pcap or pcapng; Ethernet, raw IP or Linux cooked) as
         outbound from the capture host with the rules of RULES.toml, rewrite DSCP (and the
         PCP of tagged frames) as the driver would, and write OUT with the same framing.
         --json prints the summary as one JSON object.

exit codes: 0 ok, 1 cannot write OUT, 2 bad usage or bad input";

/// A failure: message for stderr and the exit code.
struct Failure {
    message: String,
    code: u8,
    usage: bool,
}

/// Stores the `--rules` value, refusing a second one (which file would win is not obvious).
fn set_once(slot: &mut Option<String>, value: String) -> Result<(), Failure> {
    if slot.is_some() {
        return Err(usage_error("--rules given more than once"));
    }
    *slot = Some(value);
    Ok(())
}

fn usage_error(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        code: 2,
        usage: true,
    }
}

fn input_error(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        code: 2,
        usage: false,
    }
}

struct ReplayArgs {
    rules: String,
    input: String,
    output: String,
    json: bool,
}

fn parse_replay_args(args: &[String]) -> Result<Option<ReplayArgs>, Failure> {
    let mut rules = None;
    let mut json = false;
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--json" => json = true,
            "--rules" => {
                let value = it
                    .next()
                    .ok_or_else(|| usage_error("--rules needs a file name"))?;
                set_once(&mut rules, value.clone())?;
            }
            "--" => positional.extend(it.by_ref().cloned()),
            s if s.starts_with("--rules=") => {
                set_once(&mut rules, s.trim_start_matches("--rules=").to_owned())?;
            }
            s if s.starts_with('-') && s.len() > 1 => {
                return Err(usage_error(format!("unknown option {s}")));
            }
            _ => positional.push(arg.clone()),
        }
    }
    let rules = rules.ok_or_else(|| usage_error("replay needs --rules RULES.toml"))?;
    let [input, output]: [String; 2] = positional
        .try_into()
        .map_err(|_| usage_error("replay needs exactly two files: IN and OUT"))?;
    Ok(Some(ReplayArgs {
        rules,
        input,
        output,
        json,
    }))
}

fn read(path: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| input_error(format!("{path}: cannot read: {e}")))
}

fn run_replay(args: &ReplayArgs) -> Result<(), Failure> {
    let rules_bytes = read(&args.rules)?;
    let rules_text = String::from_utf8(rules_bytes)
        .map_err(|_| input_error(format!("{}: not UTF-8 text", args.rules)))?;
    let input = read(&args.input)?;
    let (out, summary) = replay::replay(&rules_text, &input).map_err(|e| match e {
        // "RULES.toml:12: message", as compilers print positions.
        ReplayError::Rules(_) => input_error(format!("{}:{e}", args.rules)),
        ReplayError::RuleRejected { .. } => input_error(format!("{}: {e}", args.rules)),
        ReplayError::Capture(_) => input_error(format!("{}: {e}", args.input)),
        ReplayError::Engine(_) => Failure {
            message: e.to_string(),
            code: 1,
            usage: false,
        },
    })?;
    std::fs::write(&args.output, &out).map_err(|e| Failure {
        message: format!("{}: cannot write: {e}", args.output),
        code: 1,
        usage: false,
    })?;
    if args.json {
        let doc = serde_json::json!({
            "input": args.input,
            "output": args.output,
            "summary": summary,
        });
        println!("{doc}");
    } else {
        print_summary(args, &summary);
    }
    Ok(())
}

fn print_summary(args: &ReplayArgs, s: &Summary) {
    println!(
        "{} ({}, {} packets) -> {}",
        args.input, s.format, s.packets, args.output
    );
    println!(
        "{:<32} {:>8} {:>8} {:>8}",
        "rule", "packets", "marked", "already"
    );
    for r in &s.rules {
        println!(
            "{:<32} {:>8} {:>8} {:>8}",
            r.name, r.packets, r.marked, r.already_marked
        );
    }
    println!(
        "total: {} classified, {} marked (dscp {}, pcp {}, pcp requested but untagged {}), \
         {} already marked",
        s.classified,
        s.marked,
        s.dscp_rewritten,
        s.pcp_rewritten,
        s.pcp_requested_no_tag,
        s.already_marked
    );
    if s.later_fragments_marked + s.later_fragments_already_marked > 0 {
        println!(
            "later fragments (marked like their first fragment, counted in the totals only): \
             {} marked, {} already marked",
            s.later_fragments_marked, s.later_fragments_already_marked
        );
    }
    println!(
        "not classified: {} non-IP frames, {} cut by snap length",
        s.not_ip_frames, s.cut_by_snaplen
    );
    let skipped: Vec<String> = s
        .skipped
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if skipped.is_empty() {
        println!("skipped: none");
    } else {
        println!("skipped: {}", skipped.join(", "));
    }
    if s.rewrite_failed > 0 {
        println!("rewrite failed: {}", s.rewrite_failed);
    }
}

fn run(args: &[String]) -> Result<(), Failure> {
    match args.first().map(String::as_str) {
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some("-V" | "--version") => {
            println!("qosmarkctl {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some("replay") => match parse_replay_args(args.get(1..).unwrap_or_default())? {
            None => {
                println!("{USAGE}");
                Ok(())
            }
            Some(a) => run_replay(&a),
        },
        Some(other) => Err(usage_error(format!("unknown subcommand {other}"))),
        None => Err(usage_error("missing subcommand")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("qosmarkctl: {}", f.message);
            if f.usage {
                eprintln!("{USAGE}");
            }
            ExitCode::from(f.code)
        }
    }
}
