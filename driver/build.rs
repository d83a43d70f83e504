//! Build script of `qosmark-driver`.
//!
//! On Windows it hands the build to windows-drivers-rs: `configure_wdk_binary_build` finds
//! the WDK, reads the `metadata.wdk` configuration (WDM) and emits the kernel-driver linker
//! arguments (`/DRIVER`, `/KERNEL`, `/ENTRY:DriverEntry`, `/INTEGRITYCHECK`, ...). It also
//! fails the build unless the C runtime is linked statically (`+crt-static`, set for the
//! msvc target in `.cargo/config.toml`).
//!
//! `cfg` inside a build script describes the *host* (the script runs on the build machine),
//! while `[target.'cfg(windows)'.build-dependencies]` in `Cargo.toml` is chosen by the
//! *target*. The two agree for the builds that matter: Linux host and target (no wdk-build,
//! empty `main`) and Windows host and target (the real driver build). A Linux host building
//! for Windows gets wdk-build in its graph, which stops with its own `compile_error!`
//! before this script is compiled; a Windows host building for a non-Windows target is not
//! supported (this script would name a crate that is not in the graph).

#[cfg(windows)]
fn main() -> Result<(), wdk_build::ConfigError> {
    wdk_build::configure_wdk_binary_build()
}

#[cfg(not(windows))]
fn main() {}
