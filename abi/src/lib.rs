//! # qosmark-abi — the IOCTL wire contract
//!
//! Shared by the Windows driver, the user-mode shim, the Linux back end and kernel clients.
//! `#![no_std]` (with `alloc` for variable-length answers), no `unsafe`.
//!
//! * [`types`]: decoded requests and responses, bounded values.
//! * [`codec`]: the little-endian record format, `encode`/`decode`, golden vectors.
//! * [`status`]: Win32 error codes, NTSTATUS values and the mapping between them.
//! * [`ioctl`]: `CTL_CODE` values of the device interface.
//!
//! # How the three back ends use it
//!
//! * **Shim (client)**: [`codec::encode_request`] into the input buffer; `DeviceIoControl` with
//!   [`ioctl::RequestKind::code`] and an output buffer of at least [`codec::MIN_OUTPUT_LEN`]
//!   bytes (Linux: send the record on the socket, frame the answer with [`codec::record_len`]);
//!   [`codec::decode_response`] the answer. Failures without a record arrive as Win32 codes from
//!   `GetLastError`; on `ERROR_MORE_DATA` the output holds an Error record with the required size.
//! * **Driver**: [`ioctl::request_kind`] on the full code (unknown → `STATUS_INVALID_DEVICE_REQUEST`),
//!   [`codec::decode_request_for`] on the input (error → [`status::ntstatus_for`] of
//!   [`codec::AbiError::win32`]), engine, then [`codec::encode_response_for_buffer`] (success) or
//!   [`status::ntstatus_for`] of the engine's Win32 code (failure, no data). To serve
//!   overlapped QOS2 calls, decode with [`codec::decode_request_with_flags`] instead: when the
//!   flags carry [`codec::FLAG_QOS2_ANSWER`], a success is written with
//!   [`codec::encode_qos2_answer`] (the bare QOS2 structure), not as a record.
//! * **Linux daemon**: as the driver, but failures are sent as [`codec::encode_error`] records.
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
