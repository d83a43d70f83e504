//! `qosmark.sys`: the qosmark WFP callout driver (Windows kernel, WDM, non-PnP).
//!
//! The driver moves bytes; every decision is `qosmark-engine`'s. `driver/README.md` has the
//! walkthrough (IRQL of every callback, lock order, load/unload order, fail-open rules, what
//! was verified where); `driver/docs/packet-path.md` covers the WFP side.
//!
//! # Platforms
//!
//! The kernel code exists only for `cfg(windows)` and is built with windows-drivers-rs and
//! the WDK (`cargo make` in the repository root, see `README.md`). The plain-Rust modules
//! (`config`, `request`, `security`) build everywhere and are unit-tested on the host against
//! the real engine; on other targets the crate is otherwise empty, so `cargo build
//! --workspace` and `cargo test --workspace` work on Linux without the WDK.
//!
//! # Modules and IRQL
//!
//! | module | what | IRQL |
//! |---|---|---|
//! | `request` (plain) | IOCTL: code match, decode, engine call, short-buffer protocol, NTSTATUS | any |
//! | `config` (plain) | `Parameters` value format, fail-open loading, snapshot for write-back | any |
//! | `security` (plain) | admin test over token group SIDs | any |
//! | `entry` | `DriverEntry`, `DriverUnload` | `PASSIVE_LEVEL`, system thread |
//! | `device` | control device (SDDL), `IRP_MJ_CREATE/CLEANUP/CLOSE/DEVICE_CONTROL`, `IRP_MJ_INTERNAL_DEVICE_CONTROL` (kernel-interface query) | `PASSIVE_LEVEL`, requester's thread; the internal one `<= DISPATCH_LEVEL` |
//! | `globals` | the shared state and its publication | any |
//! | `lock` | `SpinRwLock<T>` (`EX_SPIN_LOCK`), `PassiveMutex<T>` (`KMUTEX`) | `<= DISPATCH_LEVEL` / `PASSIVE_LEVEL` |
//! | `pending` | cancel-safe IRP queue (`IoCsq*`) | `<= DISPATCH_LEVEL` |
//! | `registry` | `Zw*` reads and writes of the `Parameters` key | `PASSIVE_LEVEL` |
//! | `irp` | `IoGetCurrentIrpStackLocation`, `IoMarkIrpPending`, `IoCompleteRequest` | `<= DISPATCH_LEVEL` |
//! | `panic` | the panic handler: a panic is a bugcheck with code `'QMRK'` | any |
//! | `ffi` | kernel routines declared here rather than taken from `wdk-sys` (`wdmsec`, ...) | per routine |
//! | `wfp` | callouts, filters, packet path, shaping (held clones, release timer) | see `docs/packet-path.md` |
//! | `kiface` | the kernel-mode interface for other drivers (function table, lifetime) | query and entries `<= DISPATCH_LEVEL`; `unload` `PASSIVE_LEVEL` |
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

// Kernel modules: Windows only, and not in unit-test builds (those link `std` and the
// wdk-sys test stubs, and test only the plain-Rust modules).
#[cfg(all(windows, not(test)))]
mod device;
#[cfg(all(windows, not(test)))]
mod entry;
// Declarations (layouts compiled and tested everywhere; routines Windows-only).
mod ffi;
// The kernel interface for other drivers. Its portable core is compiled (and unit-tested) on
// every host; only its glue needs Windows.
#[cfg(all(windows, not(test)))]
mod globals;
#[cfg(all(windows, not(test)))]
mod irp;
mod kiface;
#[cfg(all(windows, not(test)))]
mod lock;
#[cfg(all(windows, not(test)))]
mod panic;
#[cfg(all(windows, not(test)))]
mod pending;
#[cfg(all(windows, not(test)))]
mod registry;
// The packet path: plain-Rust decisions everywhere, `Wfp` and the callbacks Windows-only.
mod wfp;

/// Heap for `alloc` in the kernel: `ExAllocatePool2(POOL_FLAG_NON_PAGED)`, tag `'rust'`.
#[cfg(all(windows, not(test)))]
#[global_allocator]
static GLOBAL_ALLOCATOR: wdk_alloc::WdkAllocator = wdk_alloc::WdkAllocator;
