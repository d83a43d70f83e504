//! The fuzz seed corpora `fuzz/corpus/rules_file` and `fuzz/corpus/capture_replay` are copies of
//! the committed rules files and captures in `tests/captures/`: this test keeps them in step
//! (a new or changed capture must be copied there too).
#![allow(clippy::unwrap_used, reason = "test: a panic is a failed test")]

use std::collections::BTreeMap;
use std::path::Path;

fn files(dir: &Path, extensions: &[&str]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if extensions.contains(&ext) {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            out.insert(name, std::fs::read(&path).unwrap());
        }
    }
    out
}

fn check(corpus: &str, extensions: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let originals = files(&root.join("tests/captures"), extensions);
    let seeds = files(&root.join("fuzz/corpus").join(corpus), extensions);
    assert!(!originals.is_empty());
    assert_eq!(
        originals.keys().collect::<Vec<_>>(),
        seeds.keys().collect::<Vec<_>>(),
        "fuzz/corpus/{corpus} must hold exactly the files of tests/captures: cp tests/captures/*.{{{}}} fuzz/corpus/{corpus}/",
        extensions.join(",")
    );
    for (name, bytes) in &originals {
        assert!(
            seeds.get(name) == Some(bytes),
            "fuzz/corpus/{corpus}/{name} differs from tests/captures/{name}"
        );
    }
}

#[test]
fn rules_file_seeds_are_the_committed_rules_files() {
    check("rules_file", &["toml"]);
}

#[test]
fn capture_replay_seeds_are_the_committed_captures() {
    check("capture_replay", &["pcap", "pcapng"]);
}
