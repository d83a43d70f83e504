//! Driver load and unload.
//!
//! The I/O manager calls [`driver_entry`] once, at `PASSIVE_LEVEL` in a system thread, after
//! mapping the image; it calls [`driver_unload`] at `PASSIVE_LEVEL` when the service is
//! stopped (`sc stop QosMark`). A WDM driver that sets no unload routine can never be
//! unloaded, so the skeleton sets one even though it has nothing to tear down yet.
//!
//! What `DriverEntry` will do once the driver issue lands, in this order:
//! create the control device with an SDDL, create the injection handles, register the
//! callouts, subscribe to BFE state and add the filters in one transaction. Each step gets
//! an RAII owner whose `Drop` runs in reverse order from `driver_unload`.

use wdk_sys::{NTSTATUS, PCUNICODE_STRING, PDRIVER_OBJECT, STATUS_SUCCESS};

/// `DriverEntry`: the image's entry point (the WDM link sets `/ENTRY:DriverEntry`).
///
/// Installs [`driver_unload`] and returns `STATUS_SUCCESS`. Nothing else happens yet: no
/// device, no WFP registration, no state (see the crate documentation).
///
/// # Safety
///
/// Only the I/O manager may call this, once per load, at `PASSIVE_LEVEL`, with `driver`
/// pointing to this driver's initialised, writable `DRIVER_OBJECT` that no other thread
/// touches until `DriverEntry` returns, and `registry_path` pointing to the service key name.
//
// SAFETY (export): `DriverEntry` is the symbol the linker is told to use as the entry point;
// no other item in this crate, and none in its dependencies outside `cfg(test)`, exports that
// name (wdk-sys exports a stub `DriverEntry` only with its `test-stubs` feature, which is a
// dev-dependency, hence the `not(test)` gate).
#[cfg_attr(not(test), unsafe(export_name = "DriverEntry"))]
#[cfg_attr(
    test,
    allow(dead_code, reason = "only the kernel calls it, through the export")
)]
pub unsafe extern "system" fn driver_entry(
    driver: PDRIVER_OBJECT,
    _registry_path: PCUNICODE_STRING,
) -> NTSTATUS {
    // SAFETY: per this function's contract, `driver` is the valid, writable DRIVER_OBJECT of
    // this driver, and nothing else reads or writes it while DriverEntry runs (PASSIVE_LEVEL,
    // before the driver is published), so a unique reborrow for this one store is sound.
    let driver = unsafe { &mut *driver };
    driver.DriverUnload = Some(driver_unload);

    wdk::println!("qosmark: loaded (skeleton: no device, no WFP callouts)");
    STATUS_SUCCESS
}

/// `DriverUnload`: called at `PASSIVE_LEVEL` when the service stops.
///
/// The skeleton owns nothing (no device object, no symbolic link, no WFP objects), so there
/// is nothing to release. The ABI is `extern "C"` because that is how wdk-sys' bindings
/// declare `DRIVER_UNLOAD`; on x86-64 and ARM64 Windows it is the same as `"system"`.
extern "C" fn driver_unload(_driver: PDRIVER_OBJECT) {
    wdk::println!("qosmark: unloaded");
}
