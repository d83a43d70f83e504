//! Fuzz target `rules_file`: arbitrary text to the administrator rules-file parser. Parsing must
//! never panic; an error must name a line inside the text; whatever parses must be accepted by
//! the engine's own validation and survive `to_toml` and a second parse unchanged.
//!
//! Seed corpus: `corpus/rules_file/` = the rules files of `tests/captures/`.
// Built by cargo-fuzz (`--cfg fuzzing`) as a libFuzzer binary; included as a module by
// `tests/tests/fuzz_regressions.rs`, which runs `check` on every committed input.
#![cfg_attr(fuzzing, no_main)]

use qosmark::rules_file;

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| check(data));

/// The target's checks on one input (panics on a violation). The fuzzer calls it, and so does
/// `cargo test` for every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match rules_file::parse_rules(text) {
        Ok(specs) => {
            for spec in &specs {
                assert_eq!(spec.validate(), Ok(()), "parser accepted an invalid rule");
            }
            let written = rules_file::to_toml(&specs);
            let again = rules_file::parse_rules(&written).expect("to_toml output must parse");
            assert_eq!(again, specs, "to_toml round trip changed the rules");
        }
        Err(e) => {
            let lines = text.lines().count().max(1);
            assert!(
                e.line >= 1 && e.line <= lines + 1,
                "error line {} outside 1..={}",
                e.line,
                lines + 1
            );
        }
    }
}
