//! `libqosmark.so` / `qosmark.dll`: the QOS2 C ABI of `include/qosmark.h`. The functions live
//! in `qosmark-shim` (`qosmark::capi`); this crate only makes the shared library that exports
//! them.
pub use qosmark::capi::*;
