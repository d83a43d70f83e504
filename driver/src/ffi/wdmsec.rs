//! `wdmsec.lib`: `WdmlibIoCreateDeviceSecure` (`wdmsec.h`), which wdk-sys does not bind
//! (its bindings cover `ntifs.h`, `ntddk.h` and `ntstrsafe.h` only).
//!
//! `wdmsec.h` spells the routine `IoCreateDeviceSecure` through a `#define`; the symbol in the
//! static library is `WdmlibIoCreateDeviceSecure`. `build.rs` links `wdmsec` for Windows
//! targets. Callable at `PASSIVE_LEVEL` only.

use wdk_sys::{BOOLEAN, PUNICODE_STRING, ULONG};
use wdk_sys::{DEVICE_TYPE, GUID, NTSTATUS, PCUNICODE_STRING, PDEVICE_OBJECT, PDRIVER_OBJECT};

// SAFETY: the declaration matches the prototype on Microsoft's reference page for
// WdmlibIoCreateDeviceSecure (wdmsec.h): (PDRIVER_OBJECT, ULONG DeviceExtensionSize,
// PUNICODE_STRING DeviceName, DEVICE_TYPE, ULONG DeviceCharacteristics, BOOLEAN Exclusive,
// PCUNICODE_STRING DefaultSDDLString, LPCGUID DeviceClassGuid, PDEVICE_OBJECT *DeviceObject)
// -> NTSTATUS. The header declares it without NTAPI, i.e. __cdecl; on x86-64 and ARM64 there
// is a single calling convention, so "system" and "C" are the same ABI there (the only
// targets this driver is built for).
unsafe extern "system" {
    /// Creates a named device object whose security descriptor comes from an SDDL string
    /// (unless the registry overrides it for `DeviceClassGuid`).
    pub(crate) fn WdmlibIoCreateDeviceSecure(
        driver_object: PDRIVER_OBJECT,
        device_extension_size: ULONG,
        device_name: PUNICODE_STRING,
        device_type: DEVICE_TYPE,
        device_characteristics: ULONG,
        exclusive: BOOLEAN,
        default_sddl_string: PCUNICODE_STRING,
        device_class_guid: *const GUID,
        device_object: *mut PDEVICE_OBJECT,
    ) -> NTSTATUS;
}
