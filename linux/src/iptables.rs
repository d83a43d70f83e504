//! The daemon's own `NFQUEUE` rules in the `mangle` table's `OUTPUT` chain, for IPv4
//! (`iptables`) and IPv6 (`ip6tables`): one rule per protocol, TCP and UDP (the only packets
//! the engine can mark; ICMP and neighbour discovery never wait for the daemon).
//!
//! Each rule carries the comment `qosmarkd:queue=N`, which is how exactly our rules are found
//! again: at start (rules a crashed run left behind are deleted before new ones go in) and at
//! exit. Rules are inserted at the top of the chain so that every outbound packet reaches the
//! queue before other mangle rules can accept it; `--queue-bypass` lets traffic flow unmarked
//! whenever no program is bound to the queue. Deletion is by rule number, found by listing
//! the chain (`-S`), highest number first, so other rules are never touched. Every call uses
//! `-w` (wait for the xtables lock).

use std::fmt;
use std::io;
use std::process::Command;

/// The two tools, with the family they serve.
pub const TOOLS: [(&str, &str); 2] = [("iptables", "IPv4"), ("ip6tables", "IPv6")];

/// The comment that marks the rules of queue `num`.
#[must_use]
pub fn tag(num: u16) -> String {
    format!("qosmarkd:queue={num}")
}

/// The transport protocols whose packets are queued: the engine marks only TCP and UDP, so
/// everything else (ICMP, neighbour discovery, ...) never waits for the daemon.
pub const PROTOCOLS: [&str; 2] = ["tcp", "udp"];

/// The arguments that insert our rule for `protocol` and queue `num`.
#[must_use]
pub fn insert_args(protocol: &str, num: u16) -> Vec<String> {
    [
        "-w",
        "-t",
        "mangle",
        "-I",
        "OUTPUT",
        "1",
        "-p",
        protocol,
        "-m",
        "comment",
        "--comment",
        &tag(num),
        "-j",
        "NFQUEUE",
        "--queue-num",
        &num.to_string(),
        "--queue-bypass",
    ]
    .iter()
    .map(ToString::to_string)
    .collect()
}

/// Why a rule operation failed.
#[derive(Debug)]
pub enum RuleError {
    /// The tool is not installed.
    Missing(&'static str),
    /// The tool ran and failed.
    Failed {
        /// Which tool.
        tool: &'static str,
        /// The command line.
        command: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// The tool could not be started.
    Spawn(&'static str, io::Error),
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleError::Missing(tool) => write!(
                f,
                "{tool} not found: install the iptables package (qosmarkd installs NFQUEUE rules with it)"
            ),
            RuleError::Failed {
                tool,
                command,
                stderr,
            } => write!(f, "{tool} failed: `{command}`: {stderr}"),
            RuleError::Spawn(tool, e) => write!(f, "cannot run {tool}: {e}"),
        }
    }
}

fn run(tool: &'static str, args: &[String]) -> Result<String, RuleError> {
    let output = Command::new(tool).args(args).output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            RuleError::Missing(tool)
        } else {
            RuleError::Spawn(tool, e)
        }
    })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(RuleError::Failed {
            tool,
            command: format!("{tool} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// 1-based numbers of the rules in a `-S OUTPUT` listing that carry `tag`, highest first.
#[must_use]
pub fn tagged_rule_numbers(listing: &str, tag: &str) -> Vec<usize> {
    let mut numbers: Vec<usize> = listing
        .lines()
        .filter(|l| l.starts_with("-A OUTPUT "))
        .enumerate()
        .filter(|(_, line)| {
            let mut words = line.split_whitespace();
            while let Some(w) = words.next() {
                if w == "--comment" {
                    if let Some(value) = words.next() {
                        if value.trim_matches('"') == tag {
                            return true;
                        }
                    }
                }
            }
            false
        })
        .map(|(i, _)| i + 1)
        .collect();
    numbers.sort_unstable_by(|a, b| b.cmp(a));
    numbers
}

/// Deletes every rule of queue `num` from `tool`'s mangle OUTPUT chain; returns how many.
///
/// # Errors
/// [`RuleError`].
pub fn remove(tool: &'static str, num: u16) -> Result<usize, RuleError> {
    let listing = run(
        tool,
        &["-w", "-t", "mangle", "-S", "OUTPUT"].map(str::to_owned),
    )?;
    let numbers = tagged_rule_numbers(&listing, &tag(num));
    for n in &numbers {
        run(
            tool,
            &["-w", "-t", "mangle", "-D", "OUTPUT", &n.to_string()].map(str::to_owned),
        )?;
    }
    Ok(numbers.len())
}

/// Inserts the rules of queue `num` (one per protocol of [`PROTOCOLS`]); returns the command
/// lines, for the log.
///
/// # Errors
/// [`RuleError`]; rules inserted before the failure stay (the caller removes them by tag).
pub fn install(tool: &'static str, num: u16) -> Result<Vec<String>, RuleError> {
    let mut done = Vec::new();
    for protocol in PROTOCOLS {
        let args = insert_args(protocol, num);
        run(tool, &args)?;
        done.push(format!("{tool} {}", args.join(" ")));
    }
    Ok(done)
}

/// Checks that `tool` runs (`--version`).
///
/// # Errors
/// [`RuleError::Missing`] and the like.
pub fn check(tool: &'static str) -> Result<(), RuleError> {
    run(tool, &["--version".to_owned()]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exactly_our_rules_highest_first() {
        let listing = "-P OUTPUT ACCEPT\n\
            -A OUTPUT -m comment --comment \"qosmarkd:queue=3\" -j NFQUEUE --queue-num 3 --queue-bypass\n\
            -A OUTPUT -p udp -j DSCP --set-dscp 0x2e\n\
            -A OUTPUT -m comment --comment \"qosmarkd:queue=30\" -j NFQUEUE --queue-num 30\n\
            -A OUTPUT -m comment --comment qosmarkd:queue=3 -j NFQUEUE --queue-num 3\n\
            -A OUTPUT -m comment --comment \"other qosmarkd:queue=3\" -j ACCEPT\n";
        assert_eq!(tagged_rule_numbers(listing, &tag(3)), vec![4, 1]);
        assert_eq!(tagged_rule_numbers(listing, &tag(30)), vec![3]);
        assert!(tagged_rule_numbers(listing, &tag(7)).is_empty());
        assert!(tagged_rule_numbers("-P OUTPUT ACCEPT\n", &tag(3)).is_empty());
    }

    #[test]
    fn insert_rule_names_queue_and_bypass() {
        let args = insert_args("udp", 9).join(" ");
        assert_eq!(
            args,
            "-w -t mangle -I OUTPUT 1 -p udp -m comment --comment qosmarkd:queue=9 -j NFQUEUE --queue-num 9 --queue-bypass"
        );
    }
}
