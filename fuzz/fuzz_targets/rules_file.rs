//! Fuzz target `rules_file`: arbitrary text to the administrator rules-file parser. Parsing must
//! never panic; an error must name a line inside the text; whatever parses must be accepted by
//! the engine's own validation and survive `to_toml` and a second parse unchanged.
//!
//! Seed corpus: `corpus/rules_file/` = the rules files of `tests/captures/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qosmark::rules_file;

fuzz_target!(|data: &[u8]| {
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
            assert!(e.line >= 1 && e.line <= lines + 1, "error line {} outside 1..={}", e.line, lines + 1);
        }
    }
});
