//! Fuzz findings as regression tests: every input of `fuzz/corpus/<target>/` (the seeds) and
//! `fuzz/regressions/<target>/` (inputs that once made a target fail) runs through the
//! target's own checks in the ordinary `cargo test` run, on stable.
//!
//! There is one copy of each check: the fuzz target files are included here as modules
//! (`#[path]`); each holds a `pub fn check(data: &[u8])` that panics on a violation, and its
//! libFuzzer entry point exists only under `cfg(fuzzing)` (cargo-fuzz's build). So a finding
//! becomes a regression test by copying the crash input into `fuzz/regressions/<target>/`
//! (see `fuzz/regressions/README.md`); the test then fails until the bug is fixed, names the
//! file, and keeps failing if the bug ever comes back.
//!
//! Every input is run, even after one fails; the failures are listed together.

// The fuzz targets are written for the fuzz crate (asserts, indexing on fuzzer bytes, no
// pedantic lint discipline; nightly, so newer std APIs than the workspace MSRV, e.g.
// `is_multiple_of`, 1.87): a panic in them is exactly the failure this test reports, and this
// test crate is built with the current stable toolchain.
/// Includes the fuzz target `$name` (file `fuzz/fuzz_targets/$name.rs`) as a module, and a
/// test that replays its inputs through its `check`.
macro_rules! replayed_target {
    ($name:ident, $file:literal, $test:ident) => {
        #[path = $file]
        #[allow(
            dead_code,
            clippy::pedantic,
            clippy::unwrap_used,
            clippy::expect_used,
            clippy::panic,
            clippy::indexing_slicing,
            clippy::incompatible_msrv,
            reason = "fuzz target code included verbatim (see above)"
        )]
        mod $name;

        #[test]
        fn $test() {
            assert!(replay(stringify!($name), $name::check) > 0);
        }
    };
}

replayed_target!(
    abi_decode,
    "../../fuzz/fuzz_targets/abi_decode.rs",
    abi_decode_inputs_pass
);
replayed_target!(
    capture_replay,
    "../../fuzz/fuzz_targets/capture_replay.rs",
    capture_replay_inputs_pass
);
replayed_target!(
    control_sequence,
    "../../fuzz/fuzz_targets/control_sequence.rs",
    control_sequence_inputs_pass
);
replayed_target!(
    packet_rewrite,
    "../../fuzz/fuzz_targets/packet_rewrite.rs",
    packet_rewrite_inputs_pass
);
replayed_target!(
    rules_file,
    "../../fuzz/fuzz_targets/rules_file.rs",
    rules_file_inputs_pass
);

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir` (none if it does not exist), sorted.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `check` on every corpus and regression input of `target`; returns how many ran.
/// Panics with the list of the inputs that failed.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = fuzz_dir();
    let files: Vec<PathBuf> = ["corpus", "regressions"]
        .iter()
        .flat_map(|kind| inputs(&root.join(kind).join(target)))
        .filter(|p| p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    let mut failed = Vec::new();
    for path in &files {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                failed.push(format!("{}: unreadable: {e}", path.display()));
                continue;
            }
        };
        if let Err(panic) = std::panic::catch_unwind(|| check(&bytes)) {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failed.push(format!("{}: {why}", path.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs fail the target's checks:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
    files.len()
}

/// The mechanism itself: a check that fails on some input makes `replay` fail and name it.
#[test]
fn a_failing_input_is_reported_by_name() {
    fn reject_pcap_magic(data: &[u8]) {
        assert!(!data.starts_with(&[0xd4, 0xc3, 0xb2, 0xa1]), "pcap magic");
    }
    let outcome = std::panic::catch_unwind(|| replay("capture_replay", reject_pcap_magic));
    assert!(
        outcome.is_err(),
        "a check failing on every little-endian pcap seed was not reported"
    );
    let Err(panic) = outcome else { return };
    let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains("capture_replay: "), "{text}");
    assert!(text.contains(".pcap: pcap magic"), "{text}");
}
