//! Kernel routines this crate declares itself instead of using `wdk_sys::ntddk`.
//!
//! Submodules hold declarations of libraries wdk-sys does not bind (one `mod` line each;
//! the WFP/NDIS ones belong to the packet-path side):
//!
//! | module | library | for |
//! |---|---|---|
//! | `wdmsec` | `wdmsec.lib` | `WdmlibIoCreateDeviceSecure` (control device with an SDDL) |
//!
//! wdk-sys generates its declarations from the installed WDK headers at build time; for
//! `KeBugCheckEx` we need the fact that it never returns in the type (`-> !`), which lets
//! the panic handler end in the call itself rather than in a loop after it. The symbol comes
//! from `ntoskrnl.lib`, which wdk-sys already puts on the driver's link line.

// SAFETY: the signature matches `KeBugCheckEx` in wdm.h (NTAPI, i.e. the "system" ABI;
// `ULONG` is u32 and `ULONG_PTR` is usize on Windows) and the routine is declared
// DECLSPEC_NORETURN there, so `-> !` is accurate.
unsafe extern "system" {
    /// Brings the system down with `code` and four parameters shown in the crash dump.
    /// Callable at any IRQL; never returns.
    pub(crate) fn KeBugCheckEx(
        code: u32,
        parameter1: usize,
        parameter2: usize,
        parameter3: usize,
        parameter4: usize,
    ) -> !;
}

// Windows kernel builds only: the declaration uses wdk-sys types.
#[cfg(all(windows, not(test)))]
pub(crate) mod wdmsec;
