//! Builds `usermode-shim/tests/c/qos2_test.c` and `gqos_test.c` with the system C compiler
//! (`cc`) against `include/qosmark.h` and `libqosmark.so`, and runs them: the QOS2 C ABI
//! exactly as a qWAVE program uses it, and the GQoS functions as GQoS code fills a `QOS`, on
//! an in-process engine (test hook; see the C files).
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

/// Compiles `tests/c/<name>.c` against the header and the hooked library, runs it, and
/// checks it reports 0 failures.
fn compile_and_run(name: &str, lib: &Path) {
    let shim = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_dir = std::env::temp_dir().join(format!("qosmark-c-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let exe = out_dir.join(name);
    let status = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg("-I")
        .arg(shim.join("include"))
        .arg(shim.join(format!("tests/c/{name}.c")))
        .arg("-L")
        .arg(lib)
        .arg("-lqosmark")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .status()
        .expect("cc (the system C compiler) is needed for this test");
    assert!(status.success(), "compiling {name}.c failed");
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
    assert!(out.status.success(), "{name} failed:\n{stdout}{stderr}");
    assert!(stdout.contains(", 0 failures"), "{stdout}");
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn c_programs_against_the_shared_library() {
    let lib = library_with_hook();
    // The QOS2 functions, then the GQoS ones (tests/c/gqos_test.c).
    compile_and_run("qos2_test", &lib);
    compile_and_run("gqos_test", &lib);
}
