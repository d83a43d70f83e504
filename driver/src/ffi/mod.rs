//! Kernel declarations this crate writes itself instead of taking them from `wdk-sys`.
//!
//! wdk-sys 0.5 generates bindings for `ntddk.h`/`wdm.h` only: nothing of WFP (`fwpsk.h`,
//! `fwpmk.h`) or NDIS (`ndis.h`). issue 5 item 2 allows either our own bindgen run or a
//! hand-declared subset with a layout assertion on every struct; this is the hand-declared
//! subset (`docs/packet-path.md` says why and how each layout was checked).
//!
//! * [`wfp`]: WFP types, constants, GUIDs (layers, conditions, ours) and routines.
//! * [`ndis`]: `NET_BUFFER_LIST` / `NET_BUFFER` and the out-of-band slots we touch.
//! * [`timer`]: `ExAllocateTimer` / `ExSetTimer` / `ExDeleteTimer` (the shaping release
//!   timer, Windows 8.1+).
//! * `wdmsec` (Windows kernel builds only): `WdmlibIoCreateDeviceSecure` from `wdmsec.lib`,
//!   for the control device with an SDDL (wdk-sys binds ntifs.h/ntddk.h only).
//! * `KeBugCheckEx`, `KeQueryUnbiasedInterruptTime` and `KeDelayExecutionThread` (below).
//!
//! # Portability of the declarations
//! The structs, constants and GUIDs use fixed-width integers and raw pointers only (never
//! `c_long`, which is 32 bits on Windows and 64 on Linux), so x86-64 Linux and x86-64 Windows
//! give them the same C layout. They are therefore compiled on every target, and their
//! layout assertions (`const _: () = assert!(...)` next to each struct) and the oracle tests
//! (`layout_tests`) run on the Linux host with `cargo test -p qosmark-driver`. The `extern`
//! blocks — the routines themselves — exist only for `cfg(windows)`.
//!
//! Naming: C names are kept here (STYLE.md §14), hence the `non_camel_case_types` /
//! `non_snake_case` allowances in the submodules.
#![allow(
    dead_code,
    reason = "a declared subset of C headers: not every item is used on every target (on the \
              host only the layout tests use them)"
)]

pub(crate) mod ndis;
pub(crate) mod timer;
pub(crate) mod wfp;
// Windows kernel builds only: the declaration uses wdk-sys types.
#[cfg(all(windows, not(test)))]
pub(crate) mod wdmsec;

#[cfg(test)]
mod layout_tests;

/// `GUID` (guiddef.h): 16 bytes, alignment 4.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Guid {
    pub(crate) data1: u32,
    pub(crate) data2: u16,
    pub(crate) data3: u16,
    pub(crate) data4: [u8; 8],
}

const _: () = assert!(core::mem::size_of::<Guid>() == 16);
const _: () = assert!(core::mem::align_of::<Guid>() == 4);

impl Guid {
    /// The GUID written `{aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee}` as the number
    /// `0xaaaaaaaa_bbbb_cccc_dddd_eeeeeeeeeeee` (the same convention as windows-sys'
    /// `GUID::from_u128`, which the oracle tests compare against).
    pub(crate) const fn from_u128(v: u128) -> Self {
        Guid {
            data1: (v >> 96) as u32,
            data2: (v >> 80) as u16,
            data3: (v >> 64) as u16,
            data4: ((v as u64).to_be_bytes()),
        }
    }
}

/// `NTSTATUS`.
pub(crate) type NtStatus = i32;

/// `STATUS_SUCCESS`.
pub(crate) const STATUS_SUCCESS: NtStatus = 0;
/// `STATUS_PENDING` (0x103): `FwpsFlowRemoveContext0` deferred the flow-delete callback.
pub(crate) const STATUS_PENDING: NtStatus = 0x103;
/// `STATUS_DEVICE_BUSY` (0x80000011).
pub(crate) const STATUS_DEVICE_BUSY: NtStatus = 0x8000_0011_u32.cast_signed();
/// `STATUS_FWP_IN_USE` (0xC022000A): `FwpsCalloutUnregisterById0` — the callout is being
/// registered or unregistered in another thread (transient).
pub(crate) const STATUS_FWP_IN_USE: NtStatus = 0xC022_000A_u32.cast_signed();
/// `STATUS_INSUFFICIENT_RESOURCES` (0xC000009A).
pub(crate) const STATUS_INSUFFICIENT_RESOURCES: NtStatus = 0xC000_009A_u32.cast_signed();
/// `STATUS_UNSUCCESSFUL` (0xC0000001).
pub(crate) const STATUS_UNSUCCESSFUL: NtStatus = 0xC000_0001_u32.cast_signed();

/// `NT_SUCCESS(status)`: success and informational codes are non-negative.
pub(crate) const fn nt_success(status: NtStatus) -> bool {
    status >= 0
}

/// `HANDLE`.
pub(crate) type Handle = *mut core::ffi::c_void;

// SAFETY: the signatures match wdm.h: `KeBugCheckEx` is NTAPI (the "system" ABI; `ULONG` is
// u32 and `ULONG_PTR` is usize on Windows) and DECLSPEC_NORETURN, so `-> !` is accurate.
// `KeQueryUnbiasedInterruptTime` returns ULONGLONG, takes nothing, is callable at any IRQL
// and exists since Windows 7 (its reference page). `KeDelayExecutionThread` is
// `NTSTATUS (KPROCESSOR_MODE, BOOLEAN, PLARGE_INTEGER)`. All three are real ntoskrnl exports
// (they are in the x64 import library, e.g. mingw-w64's `libntoskrnl.a`), linked through
// `ntoskrnl.lib`, which wdk-sys already puts on the driver's link line.
//
// Not `KeQueryInterruptTime`: on x64 wdm.h defines it as a *macro* that reads
// `KUSER_SHARED_DATA.InterruptTime`; the function is declared only `#if !defined(_M_AMD64)`
// and is not exported by the x64 kernel, so an `extern` declaration of it does not link.
#[cfg(windows)]
unsafe extern "system" {
    /// Brings the system down with `code` and four parameters shown in the crash dump.
    /// Callable at any IRQL; never returns.
    #[cfg(not(test))]
    pub(crate) fn KeBugCheckEx(
        code: u32,
        parameter1: usize,
        parameter2: usize,
        parameter3: usize,
        parameter4: usize,
    ) -> !;

    /// Interrupt time since boot in 100 ns units, not counting time spent in sleep states
    /// (the count is suspended then). Monotonic. Any IRQL.
    pub(crate) fn KeQueryUnbiasedInterruptTime() -> u64;

    /// Puts the current thread to sleep (`WaitMode` is a `KPROCESSOR_MODE` = `CCHAR`,
    /// `Alertable` a `BOOLEAN`, `Interval` a `PLARGE_INTEGER`: negative = relative, 100 ns).
    /// `IRQL <= APC_LEVEL`.
    pub(crate) fn KeDelayExecutionThread(wait_mode: i8, alertable: u8, interval: *const i64)
        -> i32;
}
