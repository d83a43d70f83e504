//! Builds `usermode-shim/tests/c/qos2_test.c` with the system C compiler (`cc`) against
//! `include/qosmark.h` and `libqosmark.so`, and runs it: the QOS2 C ABI exactly as a qWAVE
//! program uses it, on an in-process engine (test hook; see the C file).
//!
//! The library with the test hook (`--features test-hooks`) is built by this test with the
//! same cargo into its own target directory (`target/capi-test-hooks`), so the ordinary
//! `libqosmark.so` never carries the hook and the two builds never overwrite each other
//! (cdylib file names carry no hash).
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is a test failure"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `libqosmark.so` with the test hook and returns its directory.
fn library_with_hook() -> PathBuf {
    // This binary is target/<profile>/deps/c_program-<hash>.
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let target_dir = target.join("capi-test-hooks");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "qosmark-capi", "--features", "test-hooks"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(
        status.success(),
        "building libqosmark.so with test-hooks failed"
    );
    let dir = target_dir.join("debug");
    assert!(dir.join("libqosmark.so").exists(), "{}", dir.display());
    dir
}

#[test]
fn c_program_against_the_shared_library() {
    let shim = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let lib = library_with_hook();
    let out_dir = std::env::temp_dir().join(format!("qosmark-c-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let exe = out_dir.join("qos2_test");
    let status = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg("-I")
        .arg(shim.join("include"))
        .arg(shim.join("tests/c/qos2_test.c"))
        .arg("-L")
        .arg(&lib)
        .arg("-lqosmark")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .status()
        .expect("cc (the system C compiler) is needed for this test");
    assert!(status.success(), "compiling qos2_test.c failed");
    let out = Command::new(&exe)
        .env_remove("QOS2_TEST_DAEMON")
        // cargo points LD_LIBRARY_PATH at target/<profile>/deps, whose libqosmark.so has no
        // hook; it would win over the program's RUNPATH.
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    assert!(out.status.success(), "qos2_test failed:\n{stdout}{stderr}");
    assert!(stdout.contains(", 0 failures"), "{stdout}");
    let _ = std::fs::remove_dir_all(&out_dir);
}
