//! Driver load and unload.
//!
//! The I/O manager calls [`driver_entry`] once, at `PASSIVE_LEVEL` in a system thread, after
//! mapping the image; it calls [`driver_unload`] at `PASSIVE_LEVEL` when the service is
//! stopped (`sc stop QosMark`) and no file object of the device is open any more.
//!
//! # `DriverEntry` order
//!
//! 1. Dispatch table (`device::install_dispatch`) — before the device can be opened; a new
//!    generation for the kernel-mode interface (`kiface::start`).
//! 2. `Parameters` path from `RegistryPath`; [`Globals`](crate::globals::Globals) allocated
//!    in non-paged pool (engine with a per-boot seed, configuration mutex, cancel-safe queue).
//! 3. Stored configuration loaded into the engine (`Rules`, `TrafficTable`); every bad value
//!    or refused rule is logged and skipped, defaults kept (fail open: configuration never
//!    prevents loading).
//! 4. Globals published (`globals::publish`) — before anything that can call back.
//! 5. Control device + symbolic link (`device::ControlDevice`), SDDL-secured.
//! 6. `Wfp::start(device, globals)` (drvpkt's side: injection handles, callout registration,
//!    BFE subscription, filters) — a device object is required for callout registration.
//! 7. `DriverUnload` installed; the owned pieces are kept in [`STATE`] for unload.
//!
//! A failure at any step undoes the earlier ones in reverse order (RAII) and returns the
//! status, so the driver does not load.
//!
//! # `DriverUnload` order
//!
//! 0. Kernel-mode interface closed (`kiface::unload`): new queries and entry calls refused,
//!    then a wait until client drivers have released every reference.
//! 1. `Wfp` dropped: WFP teardown in the documented order (session closed, flow contexts
//!    removed, callouts unregistered, injection handles destroyed — which waits for pending
//!    injections). No classify, notify, flow-delete or injection-completion callback runs
//!    afterwards.
//! 2. Control device dropped: symbolic link and device deleted.
//! 3. Globals retracted (after every dispatch routine holding rundown protection has left),
//!    then freed (engine, queue, mutex) — last.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, Ordering};

use wdk_sys::ntddk::KeQueryPerformanceCounter;
use wdk_sys::{NTSTATUS, PCUNICODE_STRING, PDRIVER_OBJECT};

use qosmark_abi::status::NtStatus;

use crate::config::{self, MAX_RULES_VALUE_LEN, TABLE_RECORD_LEN};
use crate::device::{self, ControlDevice};
use crate::globals;
use crate::registry;
use crate::wfp::Wfp;

/// What unload must tear down, in field order (Rust drops fields in declaration order:
/// WFP first, then the device).
struct DriverState {
    wfp: Wfp,
    device: ControlDevice,
}

/// Set at the end of a successful `DriverEntry`, taken by `DriverUnload`.
static STATE: AtomicPtr<DriverState> = AtomicPtr::new(core::ptr::null_mut());

/// `DriverEntry`: the image's entry point (the WDM link sets `/ENTRY:DriverEntry`).
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
// dev-dependency, hence the `not(test)` gate on this module).
#[unsafe(export_name = "DriverEntry")]
pub unsafe extern "system" fn driver_entry(
    driver: PDRIVER_OBJECT,
    registry_path: PCUNICODE_STRING,
) -> NTSTATUS {
    // SAFETY: forwarded contract of DriverEntry.
    match unsafe { start(driver, registry_path) } {
        Ok(()) => NtStatus::SUCCESS.0,
        Err(status) => {
            wdk::println!("qosmark: DriverEntry failed: {status:#x}");
            status
        }
    }
}

/// The body of `DriverEntry`, with `?` for early returns.
///
/// # Safety
/// As [`driver_entry`].
unsafe fn start(driver: PDRIVER_OBJECT, registry_path: PCUNICODE_STRING) -> Result<(), NTSTATUS> {
    // 1. Dispatch table, and a new generation for the kernel-mode interface (before the device
    // exists, so no client can query a table of the previous load's generation).
    // SAFETY: DriverEntry's driver object, not yet shared.
    unsafe { device::install_dispatch(driver) };
    crate::kiface::start();

    // 2. Parameters path and globals.
    // SAFETY: the I/O manager passes a valid counted string for the service key.
    let service_key = unsafe { counted_units(registry_path) };
    let parameters = registry::parameters_path(service_key)?;
    let owned = globals::create(parameters, seed())?;

    // 3. Stored configuration (fail open).
    load_configuration(owned.get());

    // 4. Publish before anything can call back.
    globals::publish(owned);
    let Some(shared) = globals::get() else {
        return Err(NtStatus::UNSUCCESSFUL.0);
    };

    // 5. Control device.
    // SAFETY: DriverEntry's driver object, dispatch table filled in (step 1).
    let control = match unsafe { ControlDevice::create(driver) } {
        Ok(control) => control,
        Err(status) => {
            drop(globals::retract());
            return Err(status);
        }
    };

    // 6. WFP (drvpkt's module; see crate docs).
    let wfp = match Wfp::start(control.as_ptr(), shared) {
        Ok(wfp) => wfp,
        Err(status) => {
            drop(control);
            drop(globals::retract());
            return Err(status);
        }
    };

    // 7. Keep the pieces for unload; install the unload routine last, so a failed
    // DriverEntry never has it called.
    let layout = core::alloc::Layout::new::<DriverState>();
    #[allow(
        clippy::cast_ptr_alignment,
        reason = "alloc with Layout::new::<DriverState>() returns memory aligned for it"
    )]
    // SAFETY: non-zero-sized layout; null is checked below.
    let state = unsafe { alloc::alloc::alloc(layout) }.cast::<DriverState>();
    if state.is_null() {
        drop(wfp);
        drop(control);
        drop(globals::retract());
        return Err(NtStatus::INSUFFICIENT_RESOURCES.0);
    }
    // SAFETY: fresh allocation of the right layout.
    unsafe {
        state.write(DriverState {
            wfp,
            device: control,
        });
    }
    STATE.store(state, Ordering::Release);
    // SAFETY: DriverEntry's driver object, not yet shared.
    unsafe { (*driver).DriverUnload = Some(driver_unload) };
    wdk::println!("qosmark: loaded");
    Ok(())
}

/// The UTF-16 units of a counted string.
///
/// # Safety
/// `string` is null or points to a valid `UNICODE_STRING` whose buffer outlives the result.
unsafe fn counted_units<'a>(string: PCUNICODE_STRING) -> &'a [u16] {
    if string.is_null() {
        return &[];
    }
    // SAFETY: valid per the contract.
    let string = unsafe { &*string };
    let len = usize::from(string.Length) / 2;
    if len == 0 || string.Buffer.is_null() {
        return &[];
    }
    // SAFETY: a UNICODE_STRING's Buffer holds Length bytes; valid per the contract.
    unsafe { core::slice::from_raw_parts(string.Buffer, len) }
}

/// Seed for the engine's fragment-memory hash: the performance counter at load, which differs
/// per boot and per load. Not cryptographic (the kernel's CNG provider would need `cng.lib`);
/// it only has to be unpredictable enough that remote senders cannot aim at one slot.
fn seed() -> u64 {
    // SAFETY: KeQueryPerformanceCounter may be called at any IRQL; a null frequency pointer
    // is allowed.
    let counter = unsafe { KeQueryPerformanceCounter(core::ptr::null_mut()) };
    // SAFETY: LARGE_INTEGER is a union whose QuadPart covers all 64 bits.
    let value = unsafe { counter.QuadPart };
    u64::from_ne_bytes(value.to_ne_bytes())
}

/// Loads `Rules` and `TrafficTable` into the engine, logging (and otherwise ignoring)
/// everything that is wrong. `PASSIVE_LEVEL`, before the globals are published.
fn load_configuration(globals: &globals::Globals) {
    let key = globals.config.lock();
    let rules = match key.read(config::RULES_VALUE, MAX_RULES_VALUE_LEN) {
        Ok(Some(bytes)) => {
            let (rules, problems) = config::parse_rules(&bytes);
            log_problems(&problems);
            rules
        }
        Ok(None) => Vec::new(),
        Err(status) => {
            wdk::println!("qosmark: Parameters\\Rules ignored: {status:#x}");
            Vec::new()
        }
    };
    let table = match key.read(config::TRAFFIC_TABLE_VALUE, TABLE_RECORD_LEN) {
        Ok(Some(bytes)) => match config::parse_table(&bytes) {
            Ok(table) => Some(table),
            Err(problem) => {
                log_problems(&[problem]);
                None
            }
        },
        Ok(None) => None,
        Err(status) => {
            wdk::println!("qosmark: Parameters\\TrafficTable ignored: {status:#x}");
            None
        }
    };
    drop(key);
    let problems = config::load_into(&mut globals.engine.write(), rules, table);
    log_problems(&problems);
}

fn log_problems(problems: &[config::Problem]) {
    for problem in problems {
        wdk::println!("qosmark: configuration: {problem:?} (ignored, defaults kept)");
    }
}

/// `DriverUnload` (module docs for the order). The ABI is `extern "C"` because that is how
/// wdk-sys' bindings declare `DRIVER_UNLOAD`; on x86-64 and ARM64 it is the same as
/// `"system"`.
unsafe extern "C" fn driver_unload(_driver: PDRIVER_OBJECT) {
    // 0. Kernel-mode interface: refuse new queries and entry calls, wait (PASSIVE_LEVEL) until
    // every reference a client driver holds is released, so no handed-out function pointer
    // outlives the image (docs/kernel-interface.md).
    crate::kiface::unload();
    let state = STATE.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if !state.is_null() {
        // SAFETY: `state` was allocated and initialised in `start` and is taken exactly once
        // here; reading it out moves ownership to this frame.
        let DriverState { wfp, device } = unsafe { state.read() };
        // SAFETY: same allocation, same layout; its contents were moved out above.
        unsafe {
            alloc::alloc::dealloc(state.cast(), core::alloc::Layout::new::<DriverState>());
        }
        // 1. WFP teardown, then 2. the device.
        drop(wfp);
        drop(device);
    }
    // 3. Globals last.
    drop(globals::retract());
    wdk::println!("qosmark: unloaded");
}
