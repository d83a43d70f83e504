//! Fuzz target `capture_replay`: arbitrary bytes as a pcap / pcapng capture through
//! `qosmarkctl replay`'s core with a fixed rules file. Must never panic; on success the output
//! has the input's length and differs from it only inside packet data (a DSCP / PCP rewrite
//! never changes framing), at most 4 bytes per packet.
//!
//! Seed corpus: `corpus/capture_replay/` = the captures of `tests/captures/`.
// Built by cargo-fuzz (`--cfg fuzzing`) as a libFuzzer binary; included as a module by
// `tests/tests/fuzz_regressions.rs`, which runs `check` on every committed input.
#![cfg_attr(fuzzing, no_main)]

use qosmark::replay;

const RULES: &str = r#"
[[rule]]
name = "udp"
protocol = "udp"
dscp = 46
priority_8021p = 5

[[rule]]
name = "tcp-voice"
protocol = "tcp"
traffic_type = "voice"
"#;

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| check(data));

/// The target's checks on one input (panics on a violation). The fuzzer calls it, and so does
/// `cargo test` for every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`.
pub fn check(data: &[u8]) {
    if let Ok((out, summary)) = replay::replay(RULES, data) {
        assert_eq!(out.len(), data.len(), "replay changed the capture's length");
        let changed = out.iter().zip(data).filter(|(a, b)| a != b).count();
        let packets = usize::try_from(summary.packets).unwrap_or(usize::MAX);
        assert!(
            changed <= packets.saturating_mul(4),
            "{changed} bytes changed in {packets} packets"
        );
    }
}
