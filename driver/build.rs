//! Build script of `qosmark-driver`.
//!
//! For a Windows target built on a Windows host it hands the build to windows-drivers-rs:
//! `configure_wdk_binary_build` finds the WDK, reads the `metadata.wdk` configuration (WDM),
//! emits the kernel-driver linker arguments (`/DRIVER`, `/KERNEL`, `/ENTRY:DriverEntry`,
//! `/INTEGRITYCHECK`, ...) and the WDK's kernel-mode library directory as a search path. It
//! also fails the build unless the C runtime is linked statically (`+crt-static`, set for the
//! msvc target in `.cargo/config.toml`).
//!
//! wdk-sys links the WDM base libraries (`BufferOverflowFastFailK`, `ntoskrnl`, `hal`,
//! `wmilib`: wdk-build 0.6 `base_libraries`). The libraries of the APIs wdk-sys does not bind
//! are linked here:
//!
//! | library | for |
//! |---|---|
//! | `wdmsec` | `WdmlibIoCreateDeviceSecure` (static library) |
//! | `fwpkclnt` | `Fwps*` / `Fwpm*` (WFP kernel client) |
//! | `ndis` | `Ndis*` (`NET_BUFFER_LIST` handling) |
//! | `netio` | NETIO routines the WFP headers pull in |
//!
//! A build script is compiled for and run on the *host*, so `cfg(windows)` here means "the
//! build machine is Windows" — the same platform Cargo uses to decide whether the
//! `[target.'cfg(windows)'.build-dependencies]` entry (wdk-build) exists at all. The *target*
//! is only known at run time, from `CARGO_CFG_TARGET_OS`. On a non-Windows host there is no
//! wdk-build and nothing to do: the crate is then the plain-Rust library (see `Cargo.toml`
//! for the host/target combinations).

/// Kernel-mode libraries linked in addition to wdk-sys' base set.
#[cfg(windows)]
const EXTRA_KERNEL_LIBRARIES: [&str; 4] = ["wdmsec", "fwpkclnt", "ndis", "netio"];

#[cfg(windows)]
fn main() -> Result<(), wdk_build::ConfigError> {
    if std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "windows") {
        wdk_build::configure_wdk_binary_build()?;
        for library in EXTRA_KERNEL_LIBRARIES {
            println!("cargo::rustc-link-lib={library}");
        }
        Ok(())
    } else {
        // Windows host, non-Windows target: no kernel code is compiled (src/lib.rs).
        Ok(())
    }
}

#[cfg(not(windows))]
fn main() {}
