//! Build script of `qosmark-driver`.
//!
//! For a Windows target built on a Windows host it hands the build to windows-drivers-rs:
//! `configure_wdk_binary_build` finds the WDK, reads the `metadata.wdk` configuration (WDM)
//! and emits the kernel-driver linker arguments (`/DRIVER`, `/KERNEL`, `/ENTRY:DriverEntry`,
//! `/INTEGRITYCHECK`, ...). It also fails the build unless the C runtime is linked statically
//! (`+crt-static`, set for the msvc target in `.cargo/config.toml`).
//!
//! A build script is compiled for and run on the *host*, so `cfg(windows)` here means "the
//! build machine is Windows" — the same platform Cargo uses to decide whether the
//! `[target.'cfg(windows)'.build-dependencies]` entry (wdk-build) exists at all. The *target*
//! is only known at run time, from `CARGO_CFG_TARGET_OS`. On a non-Windows host there is no
//! wdk-build and nothing to do: the crate is then an empty library (see `Cargo.toml` for the
//! host/target combinations).

#[cfg(windows)]
fn main() -> Result<(), wdk_build::ConfigError> {
    if std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "windows") {
        wdk_build::configure_wdk_binary_build()
    } else {
        // Windows host, non-Windows target: no kernel code is compiled (src/lib.rs).
        Ok(())
    }
}

#[cfg(not(windows))]
fn main() {}
