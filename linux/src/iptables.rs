//! The daemon's own `NFQUEUE` rules in the `mangle` table's `OUTPUT` chain, for IPv4
//! (`iptables`) and IPv6 (`ip6tables`): one rule per protocol, TCP and UDP (the only packets
//! the engine can mark; ICMP and neighbour discovery never wait for the daemon).
//!
//! Each rule carries the comment `qosmarkd:queue=N`, which is how exactly our rules are found
//! again: at start (rules a crashed run left behind are deleted before new ones go in) and at
//! exit. Rules are inserted at the top of the chain so that every outbound packet reaches the
//! queue before other mangle rules can accept it; `--queue-bypass` lets traffic flow unmarked
//! whenever no program is bound to the queue. Deletion is by rule *specification*: each tagged
//! line of a `-S OUTPUT` listing is given back to `-D OUTPUT` word for word, so the kernel
//! deletes a rule equal to it — never, as deletion by number would after another program
//! (a firewall manager, a container runtime) inserted a rule between our listing and our
//! delete, someone else's rule. Every call uses `-w` (wait for the xtables lock).

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

/// Splits one line of `iptables -S` output into its words: words are separated by spaces; a
/// word in double quotes may hold spaces, with `\"` and `\\` inside standing for `"` and `\`.
#[must_use]
pub fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(first) = chars.next() else {
            return words;
        };
        let mut word = String::new();
        if first == '"' {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => {
                        if let Some(escaped) = chars.next() {
                            word.push(escaped);
                        }
                    }
                    _ => word.push(c),
                }
            }
        } else {
            word.push(first);
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.push(c);
            }
        }
        words.push(word);
    }
}

/// The specifications (the words after `-A OUTPUT`) of the rules in a `-S OUTPUT` listing
/// whose comment is exactly `tag`, in listing order.
#[must_use]
pub fn tagged_rule_specs(listing: &str, tag: &str) -> Vec<Vec<String>> {
    listing
        .lines()
        .map(split_words)
        .filter(|w| w.len() > 2 && w.first().is_some_and(|a| a == "-A"))
        .filter(|w| w.get(1).is_some_and(|c| c == "OUTPUT"))
        .filter(|w| {
            w.windows(2).any(|p| {
                p.first().is_some_and(|a| a == "--comment") && p.get(1).is_some_and(|v| v == tag)
            })
        })
        .map(|w| w.into_iter().skip(2).collect())
        .collect()
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
    let specs = tagged_rule_specs(&listing, &tag(num));
    for spec in &specs {
        let mut args: Vec<String> = ["-w", "-t", "mangle", "-D", "OUTPUT"]
            .iter()
            .map(ToString::to_string)
            .collect();
        args.extend(spec.iter().cloned());
        run(tool, &args)?;
    }
    Ok(specs.len())
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
    #![allow(clippy::indexing_slicing, reason = "test code")]
    use super::*;

    #[test]
    fn finds_exactly_our_rules_by_specification() {
        let listing = "-P OUTPUT ACCEPT\n\
            -A OUTPUT -m comment --comment \"qosmarkd:queue=3\" -j NFQUEUE --queue-num 3 --queue-bypass\n\
            -A OUTPUT -p udp -j DSCP --set-dscp 0x2e\n\
            -A OUTPUT -m comment --comment \"qosmarkd:queue=30\" -j NFQUEUE --queue-num 30\n\
            -A OUTPUT -p tcp -m comment --comment qosmarkd:queue=3 -j NFQUEUE --queue-num 3\n\
            -A OUTPUT -m comment --comment \"other qosmarkd:queue=3\" -j ACCEPT\n\
            -A INPUT -m comment --comment qosmarkd:queue=3 -j ACCEPT\n";
        let words = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            tagged_rule_specs(listing, &tag(3)),
            vec![
                words(
                    "-m comment --comment qosmarkd:queue=3 -j NFQUEUE --queue-num 3 --queue-bypass"
                ),
                words("-p tcp -m comment --comment qosmarkd:queue=3 -j NFQUEUE --queue-num 3"),
            ]
        );
        assert_eq!(tagged_rule_specs(listing, &tag(30)).len(), 1);
        assert!(tagged_rule_specs(listing, &tag(7)).is_empty());
        assert!(tagged_rule_specs("-P OUTPUT ACCEPT\n", &tag(3)).is_empty());
        // Our own inserted rule, listed back, gives back exactly what we inserted.
        let ours = format!("-A OUTPUT {}\n", insert_args("udp", 3)[6..].join(" "));
        assert_eq!(
            tagged_rule_specs(&ours, &tag(3)),
            vec![insert_args("udp", 3)[6..].to_vec()]
        );
    }

    #[test]
    fn words_keep_quoted_spaces_and_escapes() {
        assert_eq!(
            split_words(r#"-A OUTPUT -m comment --comment "a b \"c\" \\d"  -j ACCEPT"#),
            vec![
                "-A",
                "OUTPUT",
                "-m",
                "comment",
                "--comment",
                r#"a b "c" \d"#,
                "-j",
                "ACCEPT"
            ]
        );
        assert!(split_words("   ").is_empty());
        assert_eq!(split_words("\"unterminated"), vec!["unterminated"]);
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
