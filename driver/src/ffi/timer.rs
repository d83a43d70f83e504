//! The executive timer subset (`wdm.h`, Windows 8.1 and later): `ExAllocateTimer`,
//! `ExSetTimer`, `ExDeleteTimer`, the `EXT_DELETE_PARAMETERS` record and the attribute bits.
//! The shaping release timer (`wfp::release`) is their only user.
//!
//! Declared here rather than taken from wdk-sys so the `wfp` module keeps its rule of using
//! only `NTSTATUS` and `PDEVICE_OBJECT` from wdk-sys (the stand-in used for the host
//! type-check stays small, `docs/packet-path.md` §8), and so the names go through the
//! import check of `layout_tests`.
//!
//! Sources, per item (reference pages of the WDK documentation, wdm.h):
//!
//! | item | fact | source |
//! |---|---|---|
//! | `ExAllocateTimer(Callback, CallbackContext, Attributes) -> PEX_TIMER` | `<= DISPATCH_LEVEL`; NULL on failure; Windows 8.1+ | its reference page |
//! | `EX_TIMER_HIGH_RESOLUTION` = 4 | "more precise by using a higher-resolution clock"; exclusive with `EX_TIMER_NO_WAKE` (8) — setting both bugchecks | same page; value: windows-sys metadata and mingw-w64 `ddk/wdm.h` (both checked by `layout_tests`) |
//! | `ExSetTimer(Timer, DueTime, Period, Parameters) -> BOOLEAN` | `<= DISPATCH_LEVEL`; negative `DueTime` = relative, 100 ns units; **a high-resolution timer must be given a relative time or the routine bugchecks**; `Parameters` optional; a call implicitly cancels a pending set (returns TRUE then) | its reference page |
//! | `EXT_CALLBACK(Timer, Context)` | called at `DISPATCH_LEVEL`; may call `ExSetTimer` | `ExTimerCallback` reference page |
//! | `ExDeleteTimer(Timer, Cancel, Wait, Parameters) -> BOOLEAN` | `Wait` TRUE requires `Cancel` TRUE (else bugcheck) and `IRQL <= APC_LEVEL`; it disables the object first (a later `ExSetTimer` returns FALSE and does nothing), cancels a pending expiry, and **waits for a running callback to finish** | its reference page; *Deleting a System-Allocated Timer Object* |
//! | `EXT_DELETE_PARAMETERS` {`Version`, `Reserved`, `DeleteCallback`, `DeleteContext`}: 24 bytes on x64 | `ExInitializeDeleteTimerParameters` (a wdm.h inline, not an export) zeroes it: version 0, no delete callback | struct reference page; layout checked against windows-sys and mingw-w64 (`layout_tests`); the all-zero initialisation as in an independent re-declaration of the WDK inline (`RtlZeroMemory`, then `NT_ASSERT(Version == 0)`) |
//! | high-resolution timers | expire "as late as about a millisecond after" a relative due time, **never early**; the system clock runs faster only while such a timer is set | *High-Resolution Timers* |
//!
//! Exports: mingw-w64's `libntoskrnl.a` predates Windows 8.1 and lacks the three routines, so
//! `layout_tests` checks their names against Microsoft's metadata instead (windows-sys
//! declares each as an `ntoskrnl.exe` import).
#![allow(
    non_camel_case_types,
    non_snake_case,
    reason = "C names are kept in ffi (STYLE.md §14)"
)]

use core::ffi::c_void;
use core::mem::{align_of, offset_of, size_of};

/// `PEX_TIMER`: an opaque, system-allocated timer object.
pub(crate) type PEX_TIMER = *mut c_void;

/// `EX_TIMER_HIGH_RESOLUTION`.
pub(crate) const EX_TIMER_HIGH_RESOLUTION: u32 = 4;
/// `EX_TIMER_NO_WAKE` (declared for the oracle check only: never combined with the above).
pub(crate) const EX_TIMER_NO_WAKE: u32 = 8;

/// `EXT_CALLBACK`: `VOID (PEX_TIMER Timer, PVOID Context)`, `DISPATCH_LEVEL`.
pub(crate) type EXT_CALLBACK = unsafe extern "system" fn(timer: PEX_TIMER, context: *mut c_void);

/// `EXT_DELETE_CALLBACK`: `VOID (PVOID Context)`.
pub(crate) type EXT_DELETE_CALLBACK = unsafe extern "system" fn(context: *mut c_void);

/// `EXT_DELETE_PARAMETERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct EXT_DELETE_PARAMETERS {
    pub(crate) Version: u32,
    pub(crate) Reserved: u32,
    pub(crate) DeleteCallback: Option<EXT_DELETE_CALLBACK>,
    pub(crate) DeleteContext: *mut c_void,
}

const _: () = assert!(size_of::<EXT_DELETE_PARAMETERS>() == 24);
const _: () = assert!(align_of::<EXT_DELETE_PARAMETERS>() == 8);
const _: () = assert!(offset_of!(EXT_DELETE_PARAMETERS, Reserved) == 4);
const _: () = assert!(offset_of!(EXT_DELETE_PARAMETERS, DeleteCallback) == 8);
const _: () = assert!(offset_of!(EXT_DELETE_PARAMETERS, DeleteContext) == 16);

impl EXT_DELETE_PARAMETERS {
    /// What `ExInitializeDeleteTimerParameters` produces: all zero (version 0, no delete
    /// callback, no context).
    pub(crate) const fn initialized() -> Self {
        EXT_DELETE_PARAMETERS {
            Version: 0,
            Reserved: 0,
            DeleteCallback: None,
            DeleteContext: core::ptr::null_mut(),
        }
    }
}

// SAFETY: the signatures follow the wdm.h prototypes on the routines' reference pages:
// `PEX_TIMER ExAllocateTimer(PEXT_CALLBACK, PVOID, ULONG)`,
// `BOOLEAN ExSetTimer(PEX_TIMER, LONGLONG DueTime, LONGLONG Period, PEXT_SET_PARAMETERS)`,
// `BOOLEAN ExDeleteTimer(PEX_TIMER, BOOLEAN Cancel, BOOLEAN Wait, PEXT_DELETE_PARAMETERS)`;
// NTAPI is the "system" ABI, `BOOLEAN` is `u8`, `ULONG` `u32`, `LONGLONG` `i64`. The
// optional `EXT_SET_PARAMETERS` pointer is declared as `*const c_void` because we always
// pass NULL. All three are ntoskrnl exports since Windows 8.1 (checked against Microsoft's
// metadata by `layout_tests`), linked through `ntoskrnl.lib`.
#[cfg(windows)]
unsafe extern "system" {
    /// Allocates and initialises a timer object; NULL on failure. `<= DISPATCH_LEVEL`.
    pub(crate) fn ExAllocateTimer(
        callback: Option<EXT_CALLBACK>,
        callback_context: *mut c_void,
        attributes: u32,
    ) -> PEX_TIMER;

    /// Starts (or restarts) the timer. `<= DISPATCH_LEVEL`.
    pub(crate) fn ExSetTimer(
        timer: PEX_TIMER,
        due_time: i64,
        period: i64,
        parameters: *const c_void,
    ) -> u8;

    /// Disables, cancels and frees the timer. `Wait` = TRUE: `<= APC_LEVEL`.
    pub(crate) fn ExDeleteTimer(
        timer: PEX_TIMER,
        cancel: u8,
        wait: u8,
        parameters: *mut EXT_DELETE_PARAMETERS,
    ) -> u8;
}
