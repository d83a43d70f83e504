//! `qosmarkctl replay`: run a capture through the engine offline (see the crate README for
//! the JSON schema). Exit codes: 0 ok, 1 OUT could not be written (or an unexpected engine
//! failure), 2 bad input.

use crate::args::ReplayArgs;
use crate::commands::{Failure, EXIT_REFUSED};
use qosmark::replay::{self, ReplayError, Summary};

fn read(path: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::input(format!("{path}: cannot read: {e}")))
}

fn failed(message: String) -> Failure {
    Failure {
        exit: EXIT_REFUSED,
        win32: None,
        message,
        usage: false,
    }
}

/// Runs the replay and prints its summary.
///
/// # Errors
/// [`Failure`] with the exit codes above.
pub fn run(args: &ReplayArgs, json: bool) -> Result<(), Failure> {
    let rules_bytes = read(&args.rules)?;
    let rules_text = String::from_utf8(rules_bytes)
        .map_err(|_| Failure::input(format!("{}: not UTF-8 text", args.rules)))?;
    let input = read(&args.input)?;
    let (out, summary) = replay::replay(&rules_text, &input).map_err(|e| match e {
        // "RULES.toml:12: message", as compilers print positions.
        ReplayError::Rules(_) => Failure::input(format!("{}:{e}", args.rules)),
        ReplayError::RuleRejected { .. } => Failure::input(format!("{}: {e}", args.rules)),
        ReplayError::Capture(_) => Failure::input(format!("{}: {e}", args.input)),
        ReplayError::Engine(_) => failed(e.to_string()),
    })?;
    std::fs::write(&args.output, &out)
        .map_err(|e| failed(format!("{}: cannot write: {e}", args.output)))?;
    if json {
        let doc = serde_json::json!({
            "input": args.input,
            "output": args.output,
            "summary": summary,
        });
        println!("{doc}");
    } else {
        print!("{}", summary_text(args, &summary));
    }
    Ok(())
}

fn summary_text(args: &ReplayArgs, s: &Summary) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        o,
        "{} ({}, {} packets) -> {}",
        args.input, s.format, s.packets, args.output
    );
    let _ = writeln!(
        o,
        "{:<32} {:>8} {:>8} {:>8}",
        "rule", "packets", "marked", "already"
    );
    for r in &s.rules {
        let _ = writeln!(
            o,
            "{:<32} {:>8} {:>8} {:>8}",
            r.name, r.packets, r.marked, r.already_marked
        );
    }
    let _ = writeln!(
        o,
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
        let _ = writeln!(
            o,
            "later fragments (marked like their first fragment, counted in the totals only): \
             {} marked, {} already marked",
            s.later_fragments_marked, s.later_fragments_already_marked
        );
    }
    let _ = writeln!(
        o,
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
        let _ = writeln!(o, "skipped: none");
    } else {
        let _ = writeln!(o, "skipped: {}", skipped.join(", "));
    }
    if s.rewrite_failed > 0 {
        let _ = writeln!(o, "rewrite failed: {}", s.rewrite_failed);
    }
    o
}
