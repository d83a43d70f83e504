//! The kernel-mode interface: a versioned function table other drivers obtain with an
//! `IRP_MJ_INTERNAL_DEVICE_CONTROL` query on `\Device\QosMark` and use to register flows by
//! 5-tuple (the contract is `qosmark_abi::kernel`; the C header `include/qosmark_kernel.h`).
//!
//! | module | what | platform |
//! |---|---|---|
//! | [`lifetime`] | reference count, unloading flag, generation | portable, host-tested |
//! | [`entries`] | what each entry does to the engine; status mapping; handle values | portable, host-tested |
//! | [`table`] | the `extern "system"` entries, `InterfaceReference`/`Dereference`, the query answer — generic over a [`table::Backend`] | portable, host-tested through the C ABI |
//! | `glue` | the driver's backend (globals + spin lock), `query_interface` / `information` for the dispatch, `start` / `unload` | Windows |
//!
//! Hooks the rest of the driver needs (Windows):
//! * `DriverEntry`: `crate::kiface::start()` before the control device is created;
//! * `DriverUnload`: `crate::kiface::unload()` first, before WFP, the device and the globals
//!   are torn down (it waits for every client reference);
//! * `IRP_MJ_INTERNAL_DEVICE_CONTROL` dispatch: `let status = crate::kiface::query_interface(irp,
//!   stack);` then complete the IRP with `status` and `crate::kiface::information(status)`.
//!
//! Lifetime in one paragraph: the query hands out one reference; `InterfaceReference` adds
//! one, `InterfaceDereference` drops one; every entry call holds one while it runs. The
//! driver's unload first refuses new references (entries then answer
//! `STATUS_QOSMARK_UNLOADING`, `CloseHandle` success), then waits until the count is 0 before
//! it frees the engine — so a function pointer is never called into an unloaded image by a
//! client that keeps its reference until it is done. Each load has a new generation; handles
//! carry it, so a client can tell a reloaded qosmark from the one it knew.
#![cfg_attr(
    not(windows),
    allow(
        dead_code,
        reason = "on other targets only the host tests use the portable core"
    )
)]

pub(crate) mod entries;
pub(crate) mod lifetime;
pub(crate) mod table;

// Like the driver's other kernel modules: Windows, and not in unit-test builds (those link
// `std` and the wdk-sys test stubs; `crate::globals` does not exist there).
#[cfg(all(windows, not(test)))]
mod glue;
#[cfg(all(windows, not(test)))]
pub(crate) use glue::{information, query_interface, start, unload};

#[cfg(test)]
mod tests;
