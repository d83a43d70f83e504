//! # qosmark (crate `qosmark-shim`, library `qosmark`)
//!
//! The user-mode side of qosmark: the QOS2-compatible API in Rust and C, its transports to
//! the back ends, and the pieces `qosmarkctl` uses.
//!
//! * [`qos2`]: the QOS2 API in Rust ([`qos2::QosHandle`]), same semantics and Win32 codes.
//! * [`gqos`]: GQoS (`FLOWSPEC` / `SIO_SET_QOS` semantics) per socket, on a hidden QOS2 handle
//!   ([`gqos::GqosSession`]; C: `QmSetSocketQos`, `QmGetSocketQos`, `QmWaitSocketQosChange`).
//! * [`client`]: [`client::Client`], one request → one response over a [`client::Transport`]
//!   (in-process engine, `qosmarkd` unix socket, `\\.\QosMark` device); `list_flows`, rules
//!   and table helpers for `qosmarkctl`.
//! * [`socket`]: endpoints read from the socket itself, the `DestAddr` rules.
//! * [`error`]: [`error::QosError`], the Win32 code of a failure.
//! * `unix` (Unix) / `windows` (Windows): the platform transports.
//! * The C ABI (`include/qosmark.h`): the eleven `QOS*` functions exported from
//!   `libqosmark.so` / `qosmark.dll` (module `ffi::capi`, documented in the header).
//! * [`rules_file`], [`capture`], [`replay`]: the rules file format and the offline replay.
//!
//! All `unsafe` code is in the private `ffi` module (system calls and the C exports).
#![deny(unsafe_code)]

pub mod capture;
pub use ffi::capi;
pub mod client;
pub mod error;
mod ffi;
pub mod gqos;
pub mod qos2;
pub mod replay;
pub mod rules_file;
pub mod socket;
#[cfg(unix)]
pub mod unix;
#[cfg(windows)]
pub mod windows;

pub use client::{Client, InProcess, Transport};
pub use error::QosError;
pub use qos2::QosHandle;
