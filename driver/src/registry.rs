//! The service's `Parameters` key: reading and writing the configuration values
//! (`config` module for their format). Every routine here runs at `PASSIVE_LEVEL` with special
//! kernel APCs enabled, as the `Zw*` registry routines require; handles are kernel handles
//! (`OBJ_KERNEL_HANDLE`), so no user process can use them.

use alloc::vec::Vec;

use wdk_sys::ntddk::{ZwClose, ZwCreateKey, ZwOpenKey, ZwQueryValueKey, ZwSetValueKey};
use wdk_sys::{
    HANDLE, KEY_QUERY_VALUE, KEY_SET_VALUE, NTSTATUS, OBJECT_ATTRIBUTES, OBJ_CASE_INSENSITIVE,
    OBJ_KERNEL_HANDLE, REG_BINARY, REG_OPTION_NON_VOLATILE, UNICODE_STRING,
};

use qosmark_abi::status::NtStatus;

use crate::config::{self, PARTIAL_INFORMATION_HEADER_LEN};

/// `STATUS_OBJECT_NAME_NOT_FOUND` (ntstatus.h): no such key or value.
const STATUS_OBJECT_NAME_NOT_FOUND: i32 = i32::from_ne_bytes(0xC000_0034_u32.to_ne_bytes());

/// The path of `...\Services\<service>\Parameters`, UTF-16, and the operations on it.
pub(crate) struct ParametersKey {
    path: Vec<u16>,
}

/// A counted UTF-16 string borrowed from `units` (no terminating NUL needed).
///
/// # Errors
/// `STATUS_INVALID_PARAMETER` if the string is longer than a `UNICODE_STRING` can describe.
fn unicode(units: &[u16]) -> Result<UNICODE_STRING, NTSTATUS> {
    let bytes = units
        .len()
        .checked_mul(2)
        .and_then(|n| u16::try_from(n).ok())
        .ok_or(NtStatus::INVALID_PARAMETER.0)?;
    Ok(UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        // The routines only read through this pointer (the string is an input).
        Buffer: units.as_ptr().cast_mut(),
    })
}

/// An open registry key; closed on drop.
struct Key(HANDLE);

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: `self.0` is a kernel handle this driver opened (ZwOpenKey/ZwCreateKey
        // succeeded) and closes exactly once, at PASSIVE_LEVEL.
        let _status = unsafe { ZwClose(self.0) };
    }
}

impl ParametersKey {
    /// The key at `path` (already ending in `\Parameters`).
    pub(crate) fn new(path: Vec<u16>) -> Self {
        Self { path }
    }

    fn open(&self, create: bool) -> Result<Option<Key>, NTSTATUS> {
        let mut name = unicode(&self.path)?;
        // InitializeObjectAttributes, written out (it is a macro in wdm.h).
        let mut attributes = OBJECT_ATTRIBUTES {
            Length: core::mem::size_of::<OBJECT_ATTRIBUTES>() as u32,
            RootDirectory: core::ptr::null_mut(),
            ObjectName: &raw mut name,
            Attributes: OBJ_KERNEL_HANDLE | OBJ_CASE_INSENSITIVE,
            SecurityDescriptor: core::ptr::null_mut(),
            SecurityQualityOfService: core::ptr::null_mut(),
        };
        let mut handle: HANDLE = core::ptr::null_mut();
        let status = if create {
            // SAFETY: PASSIVE_LEVEL (module contract); `attributes` and the name it points to
            // live on this frame for the call; a kernel handle is requested; no class, no
            // disposition wanted; the key is non-volatile like the service key it sits under.
            unsafe {
                ZwCreateKey(
                    &raw mut handle,
                    KEY_SET_VALUE,
                    &raw mut attributes,
                    0,
                    core::ptr::null_mut(),
                    REG_OPTION_NON_VOLATILE,
                    core::ptr::null_mut(),
                )
            }
        } else {
            // SAFETY: as above, opening for KEY_QUERY_VALUE only.
            unsafe { ZwOpenKey(&raw mut handle, KEY_QUERY_VALUE, &raw mut attributes) }
        };
        if status == STATUS_OBJECT_NAME_NOT_FOUND && !create {
            return Ok(None);
        }
        NtStatus(status).to_result().map_err(|e| e.0)?;
        Ok(Some(Key(handle)))
    }

    /// Reads `REG_BINARY` value `name`: `Ok(None)` when the key or value does not exist.
    /// A value longer than `max_len` bytes, or of another type, is an error (the caller logs
    /// it and keeps the defaults) and is never read whole.
    ///
    /// # Errors
    /// `STATUS_INVALID_PARAMETER` (wrong type), `STATUS_BUFFER_OVERFLOW` (too large),
    /// `STATUS_INSUFFICIENT_RESOURCES`, or the registry routine's status.
    pub(crate) fn read(&self, name: &str, max_len: usize) -> Result<Option<Vec<u8>>, NTSTATUS> {
        let Some(key) = self.open(false)? else {
            return Ok(None);
        };
        let name_units = utf16(name)?;
        let mut value_name = unicode(&name_units)?;
        let mut needed: u32 = 0;
        // SAFETY: PASSIVE_LEVEL; `key` is an open kernel handle; a zero-length query with a
        // null buffer only reports the size needed (STATUS_BUFFER_TOO_SMALL / OVERFLOW).
        let status = unsafe {
            ZwQueryValueKey(
                key.0,
                &raw mut value_name,
                wdk_sys::_KEY_VALUE_INFORMATION_CLASS::KeyValuePartialInformation,
                core::ptr::null_mut(),
                0,
                &raw mut needed,
            )
        };
        if status == STATUS_OBJECT_NAME_NOT_FOUND {
            return Ok(None);
        }
        if status != NtStatus::BUFFER_TOO_SMALL.0 && status != NtStatus::BUFFER_OVERFLOW.0 {
            NtStatus(status).to_result().map_err(|e| e.0)?;
        }
        let needed = needed as usize;
        if needed > PARTIAL_INFORMATION_HEADER_LEN.saturating_add(max_len) {
            return Err(NtStatus::BUFFER_OVERFLOW.0);
        }
        let mut buffer: Vec<u8> = Vec::new();
        buffer
            .try_reserve_exact(needed)
            .map_err(|_| NtStatus::INSUFFICIENT_RESOURCES.0)?;
        buffer.resize(needed, 0);
        let mut written: u32 = 0;
        // SAFETY: as above; `buffer` has `needed` writable bytes and lives across the call.
        // Pool blocks from the allocator are at least 8-byte aligned, as the ULONG fields of
        // KEY_VALUE_PARTIAL_INFORMATION want.
        let status = unsafe {
            ZwQueryValueKey(
                key.0,
                &raw mut value_name,
                wdk_sys::_KEY_VALUE_INFORMATION_CLASS::KeyValuePartialInformation,
                buffer.as_mut_ptr().cast(),
                needed as u32,
                &raw mut written,
            )
        };
        // A value that grew between the two calls ends here with BUFFER_OVERFLOW: reported,
        // defaults kept.
        NtStatus(status).to_result().map_err(|e| e.0)?;
        let filled = buffer.get(..written as usize).unwrap_or(&[]);
        match config::partial_information_data(filled, REG_BINARY) {
            Some(data) => {
                let mut out = Vec::new();
                out.try_reserve_exact(data.len())
                    .map_err(|_| NtStatus::INSUFFICIENT_RESOURCES.0)?;
                out.extend_from_slice(data);
                Ok(Some(out))
            }
            None => Err(NtStatus::INVALID_PARAMETER.0),
        }
    }

    /// Writes `REG_BINARY` value `name` (creating the key if needed).
    ///
    /// # Errors
    /// The registry routine's status; `STATUS_INVALID_PARAMETER` for data over 4 GiB.
    pub(crate) fn write(&self, name: &str, data: &[u8]) -> Result<(), NTSTATUS> {
        let Some(key) = self.open(true)? else {
            return Err(STATUS_OBJECT_NAME_NOT_FOUND);
        };
        let name_units = utf16(name)?;
        let mut value_name = unicode(&name_units)?;
        let size = u32::try_from(data.len()).map_err(|_| NtStatus::INVALID_PARAMETER.0)?;
        // SAFETY: PASSIVE_LEVEL; `key` is open for KEY_SET_VALUE; `data` is readable for
        // `size` bytes and only read (the routine copies it).
        let status = unsafe {
            ZwSetValueKey(
                key.0,
                &raw mut value_name,
                0,
                REG_BINARY,
                data.as_ptr().cast_mut().cast(),
                size,
            )
        };
        NtStatus(status).to_result().map_err(|e| e.0)
    }
}

/// `text` as UTF-16 code units, allocated fallibly.
fn utf16(text: &str) -> Result<Vec<u16>, NTSTATUS> {
    let mut out = Vec::new();
    out.try_reserve_exact(text.len())
        .map_err(|_| NtStatus::INSUFFICIENT_RESOURCES.0)?;
    out.extend(text.encode_utf16());
    Ok(out)
}

/// `<registry_path>\Parameters` as UTF-16, from the `RegistryPath` `DriverEntry` received.
///
/// # Errors
/// `STATUS_INSUFFICIENT_RESOURCES`.
pub(crate) fn parameters_path(registry_path: &[u16]) -> Result<Vec<u16>, NTSTATUS> {
    let suffix = utf16("\\Parameters")?;
    let mut out = Vec::new();
    out.try_reserve_exact(registry_path.len() + suffix.len())
        .map_err(|_| NtStatus::INSUFFICIENT_RESOURCES.0)?;
    out.extend_from_slice(registry_path);
    out.extend_from_slice(&suffix);
    Ok(out)
}
