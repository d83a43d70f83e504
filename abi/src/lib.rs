//! # qosmark-abi — the IOCTL wire contract
//!
//! Shared by the Windows driver, the user-mode shim, the Linux back end and kernel clients.
//! `#![no_std]` (with `alloc` for variable-length answers), no `unsafe`.
//!
//! * [`types`]: decoded requests and responses, bounded values.
//! * [`codec`]: the little-endian record format, `encode`/`decode`, golden vectors.
//! * [`status`]: Win32 error codes, NTSTATUS values and the mapping between them.
//! * [`ioctl`]: `CTL_CODE` values of the device interface.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod codec;
pub mod ioctl;
pub mod status;
pub mod types;

pub use types::*;

/// Version of the wire protocol described by this crate. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u16 = 1;
