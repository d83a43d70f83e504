//! A panic in the driver is a bugcheck (STYLE.md §10).
//!
//! Unwinding is off (`panic = "abort"`), and a kernel thread cannot simply stop: spinning
//! would hang a CPU, at `DISPATCH_LEVEL` or above indefinitely. So the handler calls
//! `KeBugCheckEx` with a code of our own, which the documentation asks of drivers that
//! bugcheck on purpose (the code must differ from those Windows and other drivers use; it
//! also differs from wdk-panic's `'RPNC'`, whose handler this crate does not link):
//!
//! | bugcheck field | value |
//! |---|---|
//! | code | `0x514D524B`, ASCII `QMRK` |
//! | parameter 1 | address of the panicking source file's name (UTF-8, not NUL-terminated) |
//! | parameter 2 | length of that name in bytes |
//! | parameter 3 | line |
//! | parameter 4 | column |
//!
//! All four parameters are 0 if the panic has no location. In a kernel or complete memory
//! dump, `da <p1> L<p2>` prints the file name (it lives in the driver image's read-only
//! data). The message is not printed: formatting and `DbgPrint` are not safe at every IRQL a
//! panic can happen at, and a fault while reporting would recurse into this handler. With a
//! kernel debugger attached, the bugcheck itself stops in the debugger.

use core::panic::PanicInfo;

use crate::ffi::KeBugCheckEx;

/// Bugcheck code for a qosmark panic: the bytes `Q M R K` read as a big-endian `u32`, so a
/// crash dump shows `0x514D524B`.
pub(crate) const QOSMARK_PANIC_BUGCHECK: u32 = u32::from_be_bytes(*b"QMRK");

#[panic_handler]
#[cold]
fn panic(info: &PanicInfo<'_>) -> ! {
    let (file, file_len, line, column) = info.location().map_or((0, 0, 0, 0), |location| {
        (
            location.file().as_ptr().addr(),
            location.file().len(),
            usize::try_from(location.line()).unwrap_or(usize::MAX),
            usize::try_from(location.column()).unwrap_or(usize::MAX),
        )
    });

    // SAFETY: KeBugCheckEx may be called at any IRQL and takes plain integers; it reads no
    // memory through them (parameter 1 is an address only for the person reading the dump,
    // and it points into this image's read-only data, which stays mapped). It does not
    // return, so no invariant of the interrupted code needs to hold afterwards.
    unsafe { KeBugCheckEx(QOSMARK_PANIC_BUGCHECK, file, file_len, line, column) }
}
