//! `qosmarkctl` usage and bad-input behaviour: exit codes and messages that name the file (and
//! the line, for rules), on inputs made by cutting or transforming the committed captures.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code"
)]

mod replay_common;

use replay_common::{capture, dissect, run, scratch};
use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;

fn replay(rules: &Path, input: &Path, output: &Path) -> Output {
    run(&[
        "replay".as_ref(),
        "--rules".as_ref(),
        rules.as_os_str(),
        input.as_os_str(),
        output.as_os_str(),
    ])
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit 2 and a message on stderr containing every `needle`.
fn assert_input_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr {err:?} lacks {n:?}");
    }
}

fn write(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = scratch(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn help_and_version_exit_zero() {
    for args in [&["--help"][..], &["replay", "--help"], &["--version"]] {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let o = run(&args);
        assert_eq!(o.status.code(), Some(0));
        assert!(!o.stdout.is_empty());
    }
    let o = run(&["--version".as_ref()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn bad_usage_exits_two_with_usage() {
    let rules = capture("sample-rules.toml");
    let sample = capture("sample.pcap");
    let cases: Vec<Vec<&OsStr>> = vec![
        vec![],
        vec!["frobnicate".as_ref()],
        vec!["replay".as_ref()],
        vec!["replay".as_ref(), sample.as_os_str(), "out".as_ref()],
        vec!["replay".as_ref(), "--rules".as_ref()],
        vec![
            "replay".as_ref(),
            "--rules".as_ref(),
            rules.as_os_str(),
            sample.as_os_str(),
        ],
        vec![
            "replay".as_ref(),
            "--rules".as_ref(),
            rules.as_os_str(),
            sample.as_os_str(),
            "out".as_ref(),
            "--bogus".as_ref(),
        ],
        vec![
            "replay".as_ref(),
            "--rules".as_ref(),
            rules.as_os_str(),
            "--rules".as_ref(),
            rules.as_os_str(),
            sample.as_os_str(),
            "out".as_ref(),
        ],
    ];
    for args in cases {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "args {args:?}");
        // A replay mistake shows replay's usage; no command or an unknown one, the full list.
        let expected = if args.first() == Some(&OsStr::new("replay")) {
            "usage: qosmarkctl replay --rules"
        } else {
            "usage: qosmarkctl COMMAND"
        };
        assert!(stderr(&o).contains(expected), "args {args:?}");
    }
}

#[test]
fn unreadable_files_are_named() {
    let out = scratch("unreadable.out");
    let missing = scratch("does-not-exist.pcap");
    let o = replay(&capture("sample-rules.toml"), &missing, &out);
    assert_input_error(&o, &[&missing.display().to_string(), "cannot read"]);
    let o = replay(&missing, &capture("sample.pcap"), &out);
    assert_input_error(&o, &[&missing.display().to_string(), "cannot read"]);
}

#[test]
fn a_file_that_is_not_a_capture() {
    let out = scratch("notcap.out");
    let not_capture = capture("sample-rules.toml");
    let o = replay(&capture("sample-rules.toml"), &not_capture, &out);
    assert_input_error(
        &o,
        &[&not_capture.display().to_string(), "not a pcap or pcapng"],
    );
    assert!(!out.exists(), "no output is written on bad input");
}

/// Offsets of the records of a pcap file, computed from tshark's captured lengths.
fn pcap_record_offsets(path: &Path) -> Vec<usize> {
    let mut at = 24;
    dissect(path)
        .iter()
        .map(|f| {
            let here = at;
            at += 16 + f.cap_len as usize;
            here
        })
        .collect()
}

#[test]
fn truncated_pcap_names_the_broken_record() {
    let sample = capture("sample.pcap");
    let bytes = std::fs::read(&sample).unwrap();
    let offsets = pcap_record_offsets(&sample);
    let out = scratch("trunc.out");
    // Cut inside the last record's data, inside a record header, and inside the file header.
    let last = *offsets.last().unwrap();
    let third = offsets[2];
    for (cut, offset) in [(bytes.len() - 3, last), (third + 7, third), (10, 0)] {
        let p = write(&format!("cut-{cut}.pcap"), &bytes[..cut]);
        let o = replay(&capture("sample-rules.toml"), &p, &out);
        assert_input_error(
            &o,
            &[&p.display().to_string(), &format!("byte offset {offset}")],
        );
    }
}

#[test]
fn truncated_pcapng_names_the_broken_block() {
    let src = capture("v6-ether.pcapng");
    let bytes = std::fs::read(&src).unwrap();
    let out = scratch("truncng.out");
    for cut in [bytes.len() - 1, bytes.len() / 2, 30] {
        let p = write(&format!("cut-{cut}.pcapng"), &bytes[..cut]);
        let o = replay(&capture("sample-rules.toml"), &p, &out);
        assert_input_error(&o, &[&p.display().to_string(), "byte offset", "truncated"]);
    }
}

#[test]
fn unsupported_link_type_is_named() {
    // The sample capture relabelled as 802.11 (link type 105).
    let mut bytes = std::fs::read(capture("sample.pcap")).unwrap();
    bytes[20..24].copy_from_slice(&105u32.to_le_bytes());
    let p = write("wifi.pcap", &bytes);
    let o = replay(&capture("sample-rules.toml"), &p, &scratch("wifi.out"));
    assert_input_error(
        &o,
        &[&p.display().to_string(), "105", "LINKTYPE_IEEE802_11"],
    );
}

#[test]
fn bad_rules_name_file_and_line() {
    let text = "# comment\n[[rule]]\nname = \"a\"\nremote_port = 5060\ndscp = = 3\n";
    let p = write("syntax.toml", text.as_bytes());
    let o = replay(&p, &capture("sample.pcap"), &scratch("rules.out"));
    assert_input_error(&o, &[&format!("{}:5:", p.display())]);

    // A DSCP out of range: the message names the file and a line of that rule.
    let text = "[[rule]]\nname = \"ok\"\ndscp = 1\n\n[[rule]]\nname = \"bad\"\ndscp = 64\n";
    let p = write("range.toml", text.as_bytes());
    let o = replay(&p, &capture("sample.pcap"), &scratch("rules.out"));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let prefix = format!("qosmarkctl: {}:", p.display());
    let line: usize = err
        .strip_prefix(&prefix)
        .and_then(|r| r.split(':').next())
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("no FILE:LINE in {err:?}"));
    assert!(
        (5..=7).contains(&line),
        "line {line} is not in the second rule: {err}"
    );
}

#[test]
fn duplicate_rule_names_are_refused() {
    let text = "[[rule]]\nname = \"twice\"\ndscp = 1\n\n[[rule]]\nname = \"twice\"\ndscp = 2\n";
    let p = write("dup.toml", text.as_bytes());
    let o = replay(&p, &capture("sample.pcap"), &scratch("dup.out"));
    assert_input_error(&o, &[&p.display().to_string(), "twice"]);
}

#[test]
fn human_summary_lists_every_rule() {
    let out = scratch("human.out");
    let o = replay(&capture("sample-rules.toml"), &capture("sample.pcap"), &out);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    for rule in ["sip-signalling", "rtp-media", "bulk-tcp-v4", "v6-tcp-voice"] {
        assert!(text.contains(rule), "{text}");
    }
    assert!(text.contains("skipped:"), "{text}");
}

#[test]
fn unsupported_link_type_in_a_pcapng_interface_is_named_with_its_block() {
    // The first interface of a real pcapng relabelled as LINKTYPE_NULL (0). The interface
    // block follows the section header block, whose length is at bytes 4..8.
    let mut bytes = std::fs::read(capture("v6-ether.pcapng")).unwrap();
    let idb = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
    assert_eq!(
        u32::from_le_bytes(bytes[idb..idb + 4].try_into().unwrap()),
        1,
        "an IDB"
    );
    bytes[idb + 8..idb + 10].copy_from_slice(&0u16.to_le_bytes());
    let p = write("null.pcapng", &bytes);
    let o = replay(&capture("sample-rules.toml"), &p, &scratch("null.out"));
    assert_input_error(
        &o,
        &[
            &p.display().to_string(),
            "LINKTYPE_NULL",
            &format!("byte offset {idb}"),
        ],
    );
}
