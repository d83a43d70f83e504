//! `qosmark.sys`: the qosmark WFP callout driver (Windows kernel, WDM, non-PnP).
//!
//! # Status: skeleton
//!
//! This crate is the driver's shell and nothing more yet. The image loads, `DriverEntry`
//! installs an unload routine and returns `STATUS_SUCCESS`, and the driver unloads cleanly.
//! It creates no device, registers no callouts, opens no filter engine session and touches
//! no packet. The control device and its SDDL, IRP dispatch, WFP registration, the classify
//! trampolines and the NBL clone–modify–inject path arrive with the driver issue; every
//! decision they act on will be taken by `qosmark-engine`, not here.
//!
//! # Platforms
//!
//! The kernel code exists only for `cfg(windows)` and is built with windows-drivers-rs and
//! the WDK (`cargo make` in the repository root, see `README.md`). On every other target the
//! crate is an empty `cdylib`, so `cargo build --workspace` and `cargo test --workspace` work
//! on Linux without the WDK; `Cargo.toml` keeps the wdk crates out of that build graph.
//!
//! # Modules and IRQL
//!
//! | module | what | IRQL |
//! |---|---|---|
//! | `entry` | `DriverEntry`, `DriverUnload` | `PASSIVE_LEVEL`, system thread |
//! | `panic` | the panic handler: a panic is a bugcheck with code `'QMRK'` | any |
//! | `ffi` | kernel routines declared here rather than taken from `wdk-sys` | per routine |
//!
//! The global allocator is windows-drivers-rs' `WdkAllocator`: non-paged pool, tag `'rust'`,
//! usable at `IRQL <= DISPATCH_LEVEL`. It returns null on exhaustion (collections report that
//! through `try_reserve`), and it ignores `Layout::align()`, so types aligned above
//! `MEMORY_ALLOCATION_ALIGNMENT` (16 bytes on 64-bit Windows) must not be heap-allocated.

// Kernel builds are `no_std`. Unit-test builds on Windows link `std` and the test harness, so
// the panic handler, the allocator and the `DriverEntry` export are left out of them (the
// `test-stubs` feature of wdk-sys stands in for the kernel symbols).
#![cfg_attr(all(windows, not(test)), no_std)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod config;
pub mod request;
pub mod security;

#[cfg(windows)]
mod entry;
#[cfg(all(windows, not(test)))]
mod ffi;
#[cfg(all(windows, not(test)))]
mod panic;

/// Heap for `alloc` in the kernel: `ExAllocatePool2(POOL_FLAG_NON_PAGED)`, tag `'rust'`.
#[cfg(all(windows, not(test)))]
#[global_allocator]
static GLOBAL_ALLOCATOR: wdk_alloc::WdkAllocator = wdk_alloc::WdkAllocator;
