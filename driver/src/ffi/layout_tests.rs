//! Independent oracles for the hand-written declarations.
//!
//! 1. **windows-sys** (generated from Microsoft's win32metadata, i.e. from the SDK headers):
//!    every constant and GUID we declare that it has, and the size and member offsets of the
//!    `FWP*`/`FWPM*` structs it has.
//! 2. **mingw-w64** (`x86_64-w64-mingw32-gcc` with its own `fwptypes.h`/`fwpmtypes.h`): a C
//!    file of `_Static_assert`s is generated from the *Rust* values (sizes, offsets,
//!    constants) and compiled with `-fsyntax-only`; a mismatch is a compile error that names
//!    the member. Nothing is executed, so no Wine is needed. Skipped on Windows hosts (no
//!    mingw there; CI on Linux installs it, see `.ci/run`).
//!
//! fwpsk.h / ndis.h items have no oracle here (neither source has them): their assertions
//! live next to the declarations and are derived from the documented definitions.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::too_many_lines,
    reason = "tests: a panic is a failed test"
)]

use core::mem::{offset_of, size_of};

use super::wfp as ours;
use super::Guid;
use windows_sys::Win32::NetworkManagement::WindowsFilteringPlatform as ws;

fn same_guid(a: Guid, b: windows_sys::core::GUID) -> bool {
    a.data1 == b.data1 && a.data2 == b.data2 && a.data3 == b.data3 && a.data4 == b.data4
}

#[test]
fn guids_match_windows_sys() {
    let pairs = [
        (
            ours::FWPM_LAYER_OUTBOUND_IPPACKET_V4,
            ws::FWPM_LAYER_OUTBOUND_IPPACKET_V4,
        ),
        (
            ours::FWPM_LAYER_OUTBOUND_IPPACKET_V6,
            ws::FWPM_LAYER_OUTBOUND_IPPACKET_V6,
        ),
        (
            ours::FWPM_LAYER_OUTBOUND_TRANSPORT_V4,
            ws::FWPM_LAYER_OUTBOUND_TRANSPORT_V4,
        ),
        (
            ours::FWPM_LAYER_OUTBOUND_TRANSPORT_V6,
            ws::FWPM_LAYER_OUTBOUND_TRANSPORT_V6,
        ),
        (
            ours::FWPM_LAYER_ALE_AUTH_CONNECT_V4,
            ws::FWPM_LAYER_ALE_AUTH_CONNECT_V4,
        ),
        (
            ours::FWPM_LAYER_ALE_AUTH_CONNECT_V6,
            ws::FWPM_LAYER_ALE_AUTH_CONNECT_V6,
        ),
        (
            ours::FWPM_LAYER_ALE_FLOW_ESTABLISHED_V4,
            ws::FWPM_LAYER_ALE_FLOW_ESTABLISHED_V4,
        ),
        (
            ours::FWPM_LAYER_ALE_FLOW_ESTABLISHED_V6,
            ws::FWPM_LAYER_ALE_FLOW_ESTABLISHED_V6,
        ),
        (
            ours::FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V4,
            ws::FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V4,
        ),
        (
            ours::FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V6,
            ws::FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V6,
        ),
        (ours::FWPM_CONDITION_FLAGS, ws::FWPM_CONDITION_FLAGS),
    ];
    for (i, (a, b)) in pairs.iter().enumerate() {
        assert!(same_guid(*a, *b), "GUID pair {i}: {a:?}");
    }
}

#[test]
fn constants_match_windows_sys() {
    assert_eq!(ours::FWP_ACTION_BLOCK, ws::FWP_ACTION_BLOCK);
    assert_eq!(ours::FWP_ACTION_PERMIT, ws::FWP_ACTION_PERMIT);
    assert_eq!(
        ours::FWP_ACTION_CALLOUT_TERMINATING,
        ws::FWP_ACTION_CALLOUT_TERMINATING
    );
    assert_eq!(
        ours::FWP_ACTION_CALLOUT_INSPECTION,
        ws::FWP_ACTION_CALLOUT_INSPECTION
    );
    assert_eq!(ours::FWP_ACTION_CONTINUE, ws::FWP_ACTION_CONTINUE);
    let data_types = [
        (ours::FWP_EMPTY, ws::FWP_EMPTY),
        (ours::FWP_UINT8, ws::FWP_UINT8),
        (ours::FWP_UINT16, ws::FWP_UINT16),
        (ours::FWP_UINT32, ws::FWP_UINT32),
        (ours::FWP_BYTE_ARRAY16_TYPE, ws::FWP_BYTE_ARRAY16_TYPE),
        (ours::FWP_MATCH_FLAGS_NONE_SET, ws::FWP_MATCH_FLAGS_NONE_SET),
        (ours::FWP_DIRECTION_OUTBOUND, ws::FWP_DIRECTION_OUTBOUND),
    ];
    for (a, b) in data_types {
        assert_eq!(i64::from(a), i64::from(b));
    }
    assert_eq!(
        ours::FWP_CONDITION_FLAG_IS_LOOPBACK,
        ws::FWP_CONDITION_FLAG_IS_LOOPBACK
    );
    assert_eq!(
        ours::FWPM_FILTER_FLAG_PERMIT_IF_CALLOUT_UNREGISTERED,
        ws::FWPM_FILTER_FLAG_PERMIT_IF_CALLOUT_UNREGISTERED
    );
    assert_eq!(
        ours::FWPM_SESSION_FLAG_DYNAMIC,
        ws::FWPM_SESSION_FLAG_DYNAMIC
    );
    assert_eq!(
        ours::FWP_CALLOUT_FLAG_CONDITIONAL_ON_FLOW,
        ws::FWP_CALLOUT_FLAG_CONDITIONAL_ON_FLOW
    );
    assert_eq!(ours::FWPM_SERVICE_STOPPED, ws::FWPM_SERVICE_STOPPED);
    assert_eq!(
        ours::FWPM_SERVICE_START_PENDING,
        ws::FWPM_SERVICE_START_PENDING
    );
    assert_eq!(
        ours::FWPM_SERVICE_STOP_PENDING,
        ws::FWPM_SERVICE_STOP_PENDING
    );
    assert_eq!(ours::FWPM_SERVICE_RUNNING, ws::FWPM_SERVICE_RUNNING);
    assert_eq!(
        ours::RPC_C_AUTHN_WINNT,
        windows_sys::Win32::System::Rpc::RPC_C_AUTHN_WINNT
    );
    assert_eq!(ours::FWPS_RIGHT_ACTION_WRITE, ws::FWPS_RIGHT_ACTION_WRITE);
    assert_eq!(
        ours::FWPS_CLASSIFY_OUT_FLAG_ABSORB,
        ws::FWPS_CLASSIFY_OUT_FLAG_ABSORB
    );
    assert_eq!(
        ours::FWPS_METADATA_FIELD_FLOW_HANDLE,
        ws::FWPS_METADATA_FIELD_FLOW_HANDLE
    );
    assert_eq!(
        ours::FWPS_METADATA_FIELD_PROCESS_ID,
        ws::FWPS_METADATA_FIELD_PROCESS_ID
    );
    assert_eq!(
        ours::FWPS_METADATA_FIELD_COMPARTMENT_ID,
        ws::FWPS_METADATA_FIELD_COMPARTMENT_ID
    );
    assert_eq!(
        ours::FWPS_METADATA_FIELD_PATH_MTU,
        ws::FWPS_METADATA_FIELD_PATH_MTU
    );
    assert_eq!(
        ours::AF_INET,
        windows_sys::Win32::Networking::WinSock::AF_INET
    );
    assert_eq!(
        ours::AF_INET6,
        windows_sys::Win32::Networking::WinSock::AF_INET6
    );
    assert_eq!(
        i64::from(ours::UNSPECIFIED_COMPARTMENT_ID),
        i64::from(windows_sys::Win32::System::Kernel::UNSPECIFIED_COMPARTMENT_ID)
    );
    let status = [
        (
            super::STATUS_PENDING,
            windows_sys::Win32::Foundation::STATUS_PENDING,
        ),
        (
            super::STATUS_DEVICE_BUSY,
            windows_sys::Win32::Foundation::STATUS_DEVICE_BUSY,
        ),
        (
            super::STATUS_INSUFFICIENT_RESOURCES,
            windows_sys::Win32::Foundation::STATUS_INSUFFICIENT_RESOURCES,
        ),
        (
            super::STATUS_UNSUCCESSFUL,
            windows_sys::Win32::Foundation::STATUS_UNSUCCESSFUL,
        ),
        (
            super::STATUS_FWP_IN_USE,
            windows_sys::Win32::Foundation::STATUS_FWP_IN_USE,
        ),
    ];
    for (a, b) in status {
        assert_eq!(a, b);
    }
}

/// (size, [(member, offset)]) of one struct, ours and windows-sys'.
macro_rules! compare_layout {
    ($ours:ty, $theirs:ty, [$(($a:ident, $b:ident)),* $(,)?]) => {{
        assert_eq!(size_of::<$ours>(), size_of::<$theirs>(), "size of {}", stringify!($ours));
        $(
            assert_eq!(
                offset_of!($ours, $a),
                offset_of!($theirs, $b),
                "{}.{}",
                stringify!($ours),
                stringify!($a)
            );
        )*
    }};
}

#[test]
fn struct_layouts_match_windows_sys() {
    compare_layout!(
        ours::FWP_BYTE_BLOB,
        ws::FWP_BYTE_BLOB,
        [(size, size), (data, data)]
    );
    compare_layout!(
        ours::FWPM_DISPLAY_DATA0,
        ws::FWPM_DISPLAY_DATA0,
        [(name, name), (description, description)]
    );
    compare_layout!(
        ours::FWP_VALUE0,
        ws::FWP_VALUE0,
        [(r#type, r#type), (value, Anonymous)]
    );
    compare_layout!(
        ours::FWP_CONDITION_VALUE0,
        ws::FWP_CONDITION_VALUE0,
        [(r#type, r#type), (value, Anonymous)]
    );
    compare_layout!(
        ours::FWPM_ACTION0,
        ws::FWPM_ACTION0,
        [(r#type, r#type), (callout_key, Anonymous)]
    );
    compare_layout!(
        ours::FWPM_FILTER_CONDITION0,
        ws::FWPM_FILTER_CONDITION0,
        [
            (fieldKey, fieldKey),
            (matchType, matchType),
            (conditionValue, conditionValue)
        ]
    );
    compare_layout!(
        ours::FWPM_SESSION0,
        ws::FWPM_SESSION0,
        [
            (sessionKey, sessionKey),
            (displayData, displayData),
            (flags, flags),
            (txnWaitTimeoutInMSec, txnWaitTimeoutInMSec),
            (processId, processId),
            (sid, sid),
            (username, username),
            (kernelMode, kernelMode)
        ]
    );
    compare_layout!(
        ours::FWPM_SUBLAYER0,
        ws::FWPM_SUBLAYER0,
        [
            (subLayerKey, subLayerKey),
            (displayData, displayData),
            (flags, flags),
            (providerKey, providerKey),
            (providerData, providerData),
            (weight, weight)
        ]
    );
    compare_layout!(
        ours::FWPM_CALLOUT0,
        ws::FWPM_CALLOUT0,
        [
            (calloutKey, calloutKey),
            (displayData, displayData),
            (flags, flags),
            (providerKey, providerKey),
            (providerData, providerData),
            (applicableLayer, applicableLayer),
            (calloutId, calloutId)
        ]
    );
    compare_layout!(
        ours::FWPM_FILTER0,
        ws::FWPM_FILTER0,
        [
            (filterKey, filterKey),
            (displayData, displayData),
            (flags, flags),
            (providerKey, providerKey),
            (providerData, providerData),
            (layerKey, layerKey),
            (subLayerKey, subLayerKey),
            (weight, weight),
            (numFilterConditions, numFilterConditions),
            (filterCondition, filterCondition),
            (action, action),
            (context, Anonymous),
            (reserved, reserved),
            (filterId, filterId),
            (effectiveWeight, effectiveWeight)
        ]
    );
}

/// The `_Static_assert` lines for one struct: its size and each member's offset.
#[cfg(not(windows))]
fn c_struct(out: &mut String, c_name: &str, size: usize, members: &[(&str, usize)]) {
    use core::fmt::Write;
    writeln!(
        out,
        "_Static_assert(sizeof({c_name}) == {size}, \"sizeof {c_name}\");"
    )
    .unwrap();
    for (member, offset) in members {
        writeln!(
            out,
            "_Static_assert(offsetof({c_name}, {member}) == {offset}, \"{c_name}.{member}\");"
        )
        .unwrap();
    }
}

#[cfg(not(windows))]
#[test]
fn layouts_and_constants_match_mingw_headers() {
    use core::fmt::Write;
    let mut c = String::from(
        "#define _WIN32_WINNT 0x0A00\n#include <windows.h>\n#include <stddef.h>\n\
         #include <fwpmtypes.h>\n",
    );
    c_struct(
        &mut c,
        "FWP_BYTE_BLOB",
        size_of::<ours::FWP_BYTE_BLOB>(),
        &[("data", offset_of!(ours::FWP_BYTE_BLOB, data))],
    );
    c_struct(
        &mut c,
        "FWPM_DISPLAY_DATA0",
        size_of::<ours::FWPM_DISPLAY_DATA0>(),
        &[(
            "description",
            offset_of!(ours::FWPM_DISPLAY_DATA0, description),
        )],
    );
    c_struct(
        &mut c,
        "FWP_VALUE0",
        size_of::<ours::FWP_VALUE0>(),
        &[("uint32", offset_of!(ours::FWP_VALUE0, value))],
    );
    c_struct(
        &mut c,
        "FWP_CONDITION_VALUE0",
        size_of::<ours::FWP_CONDITION_VALUE0>(),
        &[("uint32", offset_of!(ours::FWP_CONDITION_VALUE0, value))],
    );
    c_struct(
        &mut c,
        "FWPM_ACTION0",
        size_of::<ours::FWPM_ACTION0>(),
        &[("calloutKey", offset_of!(ours::FWPM_ACTION0, callout_key))],
    );
    c_struct(
        &mut c,
        "FWPM_FILTER_CONDITION0",
        size_of::<ours::FWPM_FILTER_CONDITION0>(),
        &[
            (
                "matchType",
                offset_of!(ours::FWPM_FILTER_CONDITION0, matchType),
            ),
            (
                "conditionValue",
                offset_of!(ours::FWPM_FILTER_CONDITION0, conditionValue),
            ),
        ],
    );
    c_struct(
        &mut c,
        "FWPM_SESSION0",
        size_of::<ours::FWPM_SESSION0>(),
        &[
            ("displayData", offset_of!(ours::FWPM_SESSION0, displayData)),
            ("flags", offset_of!(ours::FWPM_SESSION0, flags)),
            (
                "txnWaitTimeoutInMSec",
                offset_of!(ours::FWPM_SESSION0, txnWaitTimeoutInMSec),
            ),
            ("processId", offset_of!(ours::FWPM_SESSION0, processId)),
            ("sid", offset_of!(ours::FWPM_SESSION0, sid)),
            ("username", offset_of!(ours::FWPM_SESSION0, username)),
            ("kernelMode", offset_of!(ours::FWPM_SESSION0, kernelMode)),
        ],
    );
    c_struct(
        &mut c,
        "FWPM_SUBLAYER0",
        size_of::<ours::FWPM_SUBLAYER0>(),
        &[
            ("flags", offset_of!(ours::FWPM_SUBLAYER0, flags)),
            ("providerKey", offset_of!(ours::FWPM_SUBLAYER0, providerKey)),
            (
                "providerData",
                offset_of!(ours::FWPM_SUBLAYER0, providerData),
            ),
            ("weight", offset_of!(ours::FWPM_SUBLAYER0, weight)),
        ],
    );
    c_struct(
        &mut c,
        "FWPM_CALLOUT0",
        size_of::<ours::FWPM_CALLOUT0>(),
        &[
            ("flags", offset_of!(ours::FWPM_CALLOUT0, flags)),
            ("providerKey", offset_of!(ours::FWPM_CALLOUT0, providerKey)),
            (
                "providerData",
                offset_of!(ours::FWPM_CALLOUT0, providerData),
            ),
            (
                "applicableLayer",
                offset_of!(ours::FWPM_CALLOUT0, applicableLayer),
            ),
            ("calloutId", offset_of!(ours::FWPM_CALLOUT0, calloutId)),
        ],
    );
    c_struct(
        &mut c,
        "FWPM_FILTER0",
        size_of::<ours::FWPM_FILTER0>(),
        &[
            ("flags", offset_of!(ours::FWPM_FILTER0, flags)),
            ("providerKey", offset_of!(ours::FWPM_FILTER0, providerKey)),
            ("providerData", offset_of!(ours::FWPM_FILTER0, providerData)),
            ("layerKey", offset_of!(ours::FWPM_FILTER0, layerKey)),
            ("subLayerKey", offset_of!(ours::FWPM_FILTER0, subLayerKey)),
            ("weight", offset_of!(ours::FWPM_FILTER0, weight)),
            (
                "numFilterConditions",
                offset_of!(ours::FWPM_FILTER0, numFilterConditions),
            ),
            (
                "filterCondition",
                offset_of!(ours::FWPM_FILTER0, filterCondition),
            ),
            ("action", offset_of!(ours::FWPM_FILTER0, action)),
            ("rawContext", offset_of!(ours::FWPM_FILTER0, context)),
            ("reserved", offset_of!(ours::FWPM_FILTER0, reserved)),
            ("filterId", offset_of!(ours::FWPM_FILTER0, filterId)),
            (
                "effectiveWeight",
                offset_of!(ours::FWPM_FILTER0, effectiveWeight),
            ),
        ],
    );
    for (name, value) in [
        ("FWP_ACTION_BLOCK", i64::from(ours::FWP_ACTION_BLOCK)),
        ("FWP_ACTION_PERMIT", i64::from(ours::FWP_ACTION_PERMIT)),
        (
            "FWP_ACTION_CALLOUT_TERMINATING",
            i64::from(ours::FWP_ACTION_CALLOUT_TERMINATING),
        ),
        (
            "FWP_ACTION_CALLOUT_INSPECTION",
            i64::from(ours::FWP_ACTION_CALLOUT_INSPECTION),
        ),
        ("FWP_ACTION_CONTINUE", i64::from(ours::FWP_ACTION_CONTINUE)),
        (
            "FWP_CONDITION_FLAG_IS_LOOPBACK",
            i64::from(ours::FWP_CONDITION_FLAG_IS_LOOPBACK),
        ),
        ("FWP_UINT8", i64::from(ours::FWP_UINT8)),
        ("FWP_UINT16", i64::from(ours::FWP_UINT16)),
        ("FWP_UINT32", i64::from(ours::FWP_UINT32)),
        (
            "FWP_BYTE_ARRAY16_TYPE",
            i64::from(ours::FWP_BYTE_ARRAY16_TYPE),
        ),
        (
            "FWP_MATCH_FLAGS_NONE_SET",
            i64::from(ours::FWP_MATCH_FLAGS_NONE_SET),
        ),
    ] {
        writeln!(c, "_Static_assert({name} == {value}, \"{name}\");").unwrap();
    }

    let dir = std::env::temp_dir().join(format!("qosmark-ffi-oracle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("layout.c");
    std::fs::write(&src, &c).unwrap();
    let out = std::process::Command::new("x86_64-w64-mingw32-gcc")
        .args(["-fsyntax-only", "-std=c11", "-Wall"])
        .arg(&src)
        .output()
        .unwrap_or_else(|e| {
            panic!("x86_64-w64-mingw32-gcc not runnable ({e}); install gcc-mingw-w64-x86-64")
        });
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "mingw disagrees with the Rust layout:\n{}\n--- generated C ---\n{c}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The oracle really checks: a deliberately wrong size is rejected by the compiler.
#[cfg(not(windows))]
#[test]
fn mingw_oracle_rejects_a_wrong_layout() {
    let mut c = String::from("#include <windows.h>\n#include <fwpmtypes.h>\n");
    c_struct(
        &mut c,
        "FWPM_FILTER0",
        size_of::<ours::FWPM_FILTER0>() + 8,
        &[],
    );
    let dir = std::env::temp_dir().join(format!("qosmark-ffi-neg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("wrong.c");
    std::fs::write(&src, &c).unwrap();
    let out = std::process::Command::new("x86_64-w64-mingw32-gcc")
        .args(["-fsyntax-only", "-std=c11"])
        .arg(&src)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sizeof FWPM_FILTER0"));
}

/// The kernel routines of the first `unsafe extern "system"` block in `source`: every
/// `pub(crate) fn Name(` between its opening line and its closing `}` (column 0).
#[cfg(not(windows))]
fn declared_imports(source: &str) -> Vec<&str> {
    let start = source.find("unsafe extern \"system\" {").unwrap();
    source[start..]
        .lines()
        .take_while(|l| *l != "}")
        .filter_map(|l| l.trim().strip_prefix("pub(crate) fn "))
        .filter_map(|rest| rest.split('(').next())
        .collect()
}

/// The exported (`T`) symbols of a mingw-w64 import library, e.g. `libntoskrnl.a`.
#[cfg(not(windows))]
fn mingw_exports(lib: &str) -> Vec<String> {
    let path = std::process::Command::new("x86_64-w64-mingw32-gcc")
        .arg(format!("-print-file-name={lib}"))
        .output()
        .unwrap_or_else(|e| panic!("x86_64-w64-mingw32-gcc not runnable ({e})"));
    let path = String::from_utf8(path.stdout).unwrap();
    let out = std::process::Command::new("x86_64-w64-mingw32-nm")
        .arg(path.trim())
        .output()
        .unwrap();
    assert!(out.status.success(), "nm {lib}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(" T ").nth(1))
        .map(str::to_owned)
        .collect()
}

/// Every ntoskrnl / ndis routine we declare by hand is a real x64 export (an import
/// library generated from the kernel's export table is the oracle). Guards against
/// declaring a wdm.h *macro* as a function: `KeQueryInterruptTime` is one on x64 and would
/// not link.
#[cfg(not(windows))]
#[test]
fn declared_kernel_routines_are_x64_exports() {
    let ntoskrnl = mingw_exports("libntoskrnl.a");
    let ndis = mingw_exports("libndis.a");
    assert!(
        ntoskrnl.len() > 1000 && ndis.len() > 100,
        "import libraries found"
    );
    let kernel = declared_imports(include_str!("mod.rs"));
    assert!(
        kernel.contains(&"KeBugCheckEx") && kernel.len() >= 3,
        "{kernel:?}"
    );
    for name in kernel {
        assert!(
            ntoskrnl.iter().any(|e| e == name),
            "{name} is not an ntoskrnl export"
        );
    }
    // ffi/timer.rs: Windows 8.1 exports, newer than mingw-w64's import library. Each must be
    // an export mingw knows, or one Microsoft's metadata declares as an `ntoskrnl.exe`
    // import (`windows_sys::Wdk::System::SystemServices`, named below: a missing name is a
    // compile error). A routine added to timer.rs with neither fails here.
    let post_win7 = windows_sys_ntoskrnl_routines();
    let timer = declared_imports(include_str!("timer.rs"));
    assert_eq!(timer, ["ExAllocateTimer", "ExSetTimer", "ExDeleteTimer"]);
    for name in timer {
        assert!(
            ntoskrnl.iter().any(|e| e == name) || post_win7.contains(&name),
            "{name}: neither an export of mingw's libntoskrnl.a nor in Microsoft's metadata"
        );
    }
    let ndis_fns = declared_imports(include_str!("ndis.rs"));
    assert_eq!(ndis_fns, ["NdisGetDataBuffer"]);
    for name in ndis_fns {
        assert!(
            ndis.iter().any(|e| e == name),
            "{name} is not an ndis export"
        );
    }
    // The oracle tells exports from macros: this one is a macro on x64.
    assert!(!ntoskrnl.iter().any(|e| e == "KeQueryInterruptTime"));
    assert!(ntoskrnl.iter().any(|e| e == "KeQueryUnbiasedInterruptTime"));
}

/// Routine names Microsoft's metadata declares as `ntoskrnl.exe` imports: each name is used
/// as a path into `windows_sys::Wdk::System::SystemServices` (every function there is a
/// `link!("ntoskrnl.exe" ...)` declaration), so an undeclared name does not compile. The
/// function items are only named, never called or turned into pointers, so nothing links
/// against them on this host.
#[cfg(not(windows))]
fn windows_sys_ntoskrnl_routines() -> Vec<&'static str> {
    macro_rules! ntoskrnl {
        ($($name:ident),* $(,)?) => {{
            $( let _ = windows_sys::Wdk::System::SystemServices::$name; )*
            vec![$(stringify!($name)),*]
        }};
    }
    ntoskrnl!(ExAllocateTimer, ExSetTimer, ExDeleteTimer)
}

/// `ffi::timer` against Microsoft's metadata (windows-sys): the `EXT_DELETE_PARAMETERS`
/// layout and the attribute bits.
#[test]
fn timer_declarations_match_windows_sys() {
    use super::timer as t;
    use windows_sys::Wdk::System::SystemServices as ss;
    compare_layout!(
        t::EXT_DELETE_PARAMETERS,
        ss::EXT_DELETE_PARAMETERS,
        [
            (Version, Version),
            (Reserved, Reserved),
            (DeleteCallback, DeleteCallback),
            (DeleteContext, DeleteContext)
        ]
    );
    assert_eq!(t::EX_TIMER_HIGH_RESOLUTION, ss::EX_TIMER_HIGH_RESOLUTION);
    assert_eq!(t::EX_TIMER_NO_WAKE, ss::EX_TIMER_NO_WAKE);
    // `ExInitializeDeleteTimerParameters` zeroes the record; so does ours.
    let p = t::EXT_DELETE_PARAMETERS::initialized();
    assert_eq!((p.Version, p.Reserved), (0, 0));
    assert!(p.DeleteCallback.is_none() && p.DeleteContext.is_null());
}

/// `ffi::timer` against mingw-w64's `ddk/wdm.h` (a second, independent transcription of
/// wdm.h): `EXT_DELETE_PARAMETERS` size and offsets, the attribute values.
#[cfg(not(windows))]
#[test]
fn timer_declarations_match_mingw_wdm_h() {
    use super::timer as t;
    use core::fmt::Write;
    let mut c = String::from("#include <ddk/wdm.h>\n#include <stddef.h>\n");
    c_struct(
        &mut c,
        "EXT_DELETE_PARAMETERS",
        size_of::<t::EXT_DELETE_PARAMETERS>(),
        &[
            ("Version", offset_of!(t::EXT_DELETE_PARAMETERS, Version)),
            ("Reserved", offset_of!(t::EXT_DELETE_PARAMETERS, Reserved)),
            (
                "DeleteCallback",
                offset_of!(t::EXT_DELETE_PARAMETERS, DeleteCallback),
            ),
            (
                "DeleteContext",
                offset_of!(t::EXT_DELETE_PARAMETERS, DeleteContext),
            ),
        ],
    );
    for (name, value) in [
        ("EX_TIMER_HIGH_RESOLUTION", t::EX_TIMER_HIGH_RESOLUTION),
        ("EX_TIMER_NO_WAKE", t::EX_TIMER_NO_WAKE),
    ] {
        writeln!(c, "_Static_assert({name} == {value}, \"{name}\");").unwrap();
    }
    let dir = std::env::temp_dir().join(format!("qosmark-ffi-timer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("timer.c");
    std::fs::write(&src, &c).unwrap();
    let out = std::process::Command::new("x86_64-w64-mingw32-gcc")
        .args(["-fsyntax-only", "-std=gnu11"])
        .arg(&src)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "mingw's wdm.h disagrees:\n{}\n--- generated C ---\n{c}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The hand-derived `FWPS_*` and NDIS offsets, recomputed by a C compiler for the Windows x64
/// ABI. Neither mingw-w64 nor windows-sys declares these structures, so the C side is our
/// own transcription of the *member lists* on Microsoft's reference pages
/// (`FWPS_INCOMING_METADATA_VALUES0`, `FWPS_DISCARD_METADATA0`,
/// `FWPS_INBOUND_FRAGMENT_METADATA0`, `FWPS_INCOMING_VALUE(S)0`, `FWPS_CLASSIFY_OUT0`,
/// `FWPS_CALLOUT3`, `NET_BUFFER_DATA`, `NET_BUFFER`, `NET_BUFFER_LIST`); what this checks
/// is the padding and alignment arithmetic (16-byte `SLIST_HEADER` unions,
/// `DECLSPEC_ALIGN(MEMORY_ALLOCATION_ALIGNMENT)` members) that the Rust asserts were derived
/// from by hand, using mingw's real `SLIST_HEADER`, `FWP_VALUE0` and `DECLSPEC_ALIGN`.
#[cfg(not(windows))]
#[test]
fn fwps_and_ndis_offsets_match_a_c_compiler() {
    use super::ndis::{NET_BUFFER, NET_BUFFER_LIST};
    use core::fmt::Write;
    type Meta = ours::FWPS_INCOMING_METADATA_VALUES0_PREFIX;
    let mut c = String::from(
        "#define _WIN32_WINNT 0x0A00\n#include <windows.h>\n#include <stddef.h>\n\
         #include <fwpmtypes.h>\n\
         typedef struct { INT32 discardModule; UINT32 discardReason; UINT64 filterId; } \
           FWPS_DISCARD_METADATA0;\n\
         typedef struct { UINT32 fragmentIdentification; UINT16 fragmentOffset; \
           ULONG fragmentLength; } FWPS_INBOUND_FRAGMENT_METADATA0;\n\
         typedef struct { UINT32 currentMetadataValues; UINT32 flags; UINT64 reserved; \
           FWPS_DISCARD_METADATA0 discardMetadata; UINT64 flowHandle; UINT32 ipHeaderSize; \
           UINT32 transportHeaderSize; FWP_BYTE_BLOB *processPath; UINT64 token; \
           UINT64 processId; UINT32 sourceInterfaceIndex; UINT32 destinationInterfaceIndex; \
           ULONG compartmentId; FWPS_INBOUND_FRAGMENT_METADATA0 fragmentMetadata; \
           ULONG pathMtu; HANDLE completionHandle; } FWPS_INCOMING_METADATA_VALUES0;\n\
         typedef struct { FWP_VALUE0 value; } FWPS_INCOMING_VALUE0;\n\
         typedef struct { UINT16 layerId; UINT32 valueCount; \
           FWPS_INCOMING_VALUE0 *incomingValue; } FWPS_INCOMING_VALUES0;\n\
         typedef struct { UINT32 actionType; UINT64 outContext; UINT64 filterId; \
           UINT32 rights; UINT32 flags; UINT32 reserved; } FWPS_CLASSIFY_OUT0;\n\
         typedef struct { GUID calloutKey; UINT32 flags; void *classifyFn; void *notifyFn; \
           void *flowDeleteFn; } FWPS_CALLOUT3;\n\
         typedef struct _NET_BUFFER NET_BUFFER;\n\
         typedef struct { NET_BUFFER *Next; void *CurrentMdl; ULONG CurrentMdlOffset; \
           union { ULONG DataLength; SIZE_T stDataLength; }; void *MdlChain; \
           ULONG DataOffset; } NET_BUFFER_DATA;\n\
         struct _NET_BUFFER { union { NET_BUFFER_DATA; SLIST_HEADER Link; }; \
           USHORT ChecksumBias; USHORT Reserved; void *NdisPoolHandle; \
           DECLSPEC_ALIGN(MEMORY_ALLOCATION_ALIGNMENT) void *NdisReserved[2]; \
           DECLSPEC_ALIGN(MEMORY_ALLOCATION_ALIGNMENT) void *ProtocolReserved[6]; \
           DECLSPEC_ALIGN(MEMORY_ALLOCATION_ALIGNMENT) void *MiniportReserved[4]; };\n\
         typedef struct _NBL NET_BUFFER_LIST;\n\
         struct _NBL { union { struct { NET_BUFFER_LIST *Next; NET_BUFFER *FirstNetBuffer; }; \
           SLIST_HEADER Link; }; void *Context; NET_BUFFER_LIST *ParentNetBufferList; \
           void *NdisPoolHandle; \
           DECLSPEC_ALIGN(MEMORY_ALLOCATION_ALIGNMENT) void *NdisReserved[2]; \
           DECLSPEC_ALIGN(MEMORY_ALLOCATION_ALIGNMENT) void *ProtocolReserved[4]; \
           DECLSPEC_ALIGN(MEMORY_ALLOCATION_ALIGNMENT) void *MiniportReserved[2]; \
           void *Scratch; void *SourceHandle; ULONG NblFlags; LONG ChildRefCount; \
           ULONG Flags; union { LONG Status; ULONG NdisReserved2; }; \
           void *NetBufferListInfo[5]; };\n",
    );
    let checks: [(&str, &str, usize); 30] = [
        (
            "FWPS_DISCARD_METADATA0",
            "filterId",
            offset_of!(ours::FWPS_DISCARD_METADATA0, filterId),
        ),
        (
            "FWPS_INBOUND_FRAGMENT_METADATA0",
            "fragmentLength",
            offset_of!(ours::FWPS_INBOUND_FRAGMENT_METADATA0, fragmentLength),
        ),
        (
            "FWPS_INCOMING_METADATA_VALUES0",
            "discardMetadata",
            offset_of!(Meta, discardMetadata),
        ),
        (
            "FWPS_INCOMING_METADATA_VALUES0",
            "flowHandle",
            offset_of!(Meta, flowHandle),
        ),
        (
            "FWPS_INCOMING_METADATA_VALUES0",
            "ipHeaderSize",
            offset_of!(Meta, ipHeaderSize),
        ),
        (
            "FWPS_INCOMING_METADATA_VALUES0",
            "processPath",
            offset_of!(Meta, processPath),
        ),
        (
            "FWPS_INCOMING_METADATA_VALUES0",
            "processId",
            offset_of!(Meta, processId),
        ),
        (
            "FWPS_INCOMING_METADATA_VALUES0",
            "compartmentId",
            offset_of!(Meta, compartmentId),
        ),
        (
            "FWPS_INCOMING_METADATA_VALUES0",
            "fragmentMetadata",
            offset_of!(Meta, fragmentMetadata),
        ),
        (
            "FWPS_INCOMING_METADATA_VALUES0",
            "pathMtu",
            offset_of!(Meta, pathMtu),
        ),
        (
            "FWPS_INCOMING_VALUES0",
            "valueCount",
            offset_of!(ours::FWPS_INCOMING_VALUES0, valueCount),
        ),
        (
            "FWPS_INCOMING_VALUES0",
            "incomingValue",
            offset_of!(ours::FWPS_INCOMING_VALUES0, incomingValue),
        ),
        (
            "FWPS_CLASSIFY_OUT0",
            "outContext",
            offset_of!(ours::FWPS_CLASSIFY_OUT0, outContext),
        ),
        (
            "FWPS_CLASSIFY_OUT0",
            "rights",
            offset_of!(ours::FWPS_CLASSIFY_OUT0, rights),
        ),
        (
            "FWPS_CLASSIFY_OUT0",
            "flags",
            offset_of!(ours::FWPS_CLASSIFY_OUT0, flags),
        ),
        (
            "FWPS_CALLOUT3",
            "flags",
            offset_of!(ours::FWPS_CALLOUT3, flags),
        ),
        (
            "FWPS_CALLOUT3",
            "classifyFn",
            offset_of!(ours::FWPS_CALLOUT3, classifyFn),
        ),
        (
            "FWPS_CALLOUT3",
            "flowDeleteFn",
            offset_of!(ours::FWPS_CALLOUT3, flowDeleteFn),
        ),
        (
            "NET_BUFFER",
            "DataLength",
            offset_of!(NET_BUFFER, DataLength),
        ),
        (
            "NET_BUFFER",
            "DataOffset",
            offset_of!(NET_BUFFER, DataOffset),
        ),
        (
            "NET_BUFFER",
            "ChecksumBias",
            offset_of!(NET_BUFFER, ChecksumBias),
        ),
        (
            "NET_BUFFER",
            "NdisReserved",
            offset_of!(NET_BUFFER, NdisReserved),
        ),
        (
            "NET_BUFFER",
            "MiniportReserved",
            offset_of!(NET_BUFFER, MiniportReserved),
        ),
        (
            "NET_BUFFER_LIST",
            "FirstNetBuffer",
            offset_of!(NET_BUFFER_LIST, FirstNetBuffer),
        ),
        (
            "NET_BUFFER_LIST",
            "ParentNetBufferList",
            offset_of!(NET_BUFFER_LIST, ParentNetBufferList),
        ),
        (
            "NET_BUFFER_LIST",
            "NdisReserved",
            offset_of!(NET_BUFFER_LIST, NdisReserved),
        ),
        (
            "NET_BUFFER_LIST",
            "MiniportReserved",
            offset_of!(NET_BUFFER_LIST, MiniportReserved),
        ),
        (
            "NET_BUFFER_LIST",
            "ChildRefCount",
            offset_of!(NET_BUFFER_LIST, ChildRefCount),
        ),
        (
            "NET_BUFFER_LIST",
            "Status",
            offset_of!(NET_BUFFER_LIST, Status),
        ),
        (
            "NET_BUFFER_LIST",
            "NetBufferListInfo",
            offset_of!(NET_BUFFER_LIST, NetBufferListInfo),
        ),
    ];
    for (ty, member, offset) in checks {
        writeln!(
            c,
            "_Static_assert(offsetof({ty}, {member}) == {offset}, \"{ty}.{member}\");"
        )
        .unwrap();
    }
    for (ty, size) in [
        (
            "FWPS_INCOMING_VALUES0",
            size_of::<ours::FWPS_INCOMING_VALUES0>(),
        ),
        ("FWPS_CLASSIFY_OUT0", size_of::<ours::FWPS_CLASSIFY_OUT0>()),
        ("FWPS_CALLOUT3", size_of::<ours::FWPS_CALLOUT3>()),
        (
            "FWPS_INCOMING_VALUE0",
            size_of::<ours::FWPS_INCOMING_VALUE0>(),
        ),
    ] {
        writeln!(
            c,
            "_Static_assert(sizeof({ty}) == {size}, \"sizeof {ty}\");"
        )
        .unwrap();
    }
    for (ty, align) in [
        ("NET_BUFFER", core::mem::align_of::<NET_BUFFER>()),
        ("NET_BUFFER_LIST", core::mem::align_of::<NET_BUFFER_LIST>()),
    ] {
        writeln!(
            c,
            "_Static_assert(_Alignof({ty}) == {align}, \"align {ty}\");"
        )
        .unwrap();
    }
    let dir = std::env::temp_dir().join(format!("qosmark-ffi-fwps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("fwps.c");
    std::fs::write(&src, &c).unwrap();
    let out = std::process::Command::new("x86_64-w64-mingw32-gcc")
        .args(["-fsyntax-only", "-std=c11", "-fms-extensions"])
        .arg(&src)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "the C compiler disagrees with the hand-derived layout:\n{}\n--- generated C ---\n{c}",
        String::from_utf8_lossy(&out.stderr)
    );
}
