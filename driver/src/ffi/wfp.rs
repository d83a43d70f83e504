//! The WFP subset: `fwptypes.h`, `fwpmtypes.h`, `fwpstypes.h`, `fwpsk.h`, `fwpmk.h`.
//!
//! Where each layout and value comes from (checked by `super::layout_tests` on the host):
//!
//! | item | source of truth | checked against |
//! |---|---|---|
//! | `FWP_*`/`FWPM_*` structs (`FWP_BYTE_BLOB`, `FWP_VALUE0`, `FWP_CONDITION_VALUE0`, `FWPM_DISPLAY_DATA0`, `FWPM_ACTION0`, `FWPM_FILTER_CONDITION0`, `FWPM_SESSION0`, `FWPM_SUBLAYER0`, `FWPM_CALLOUT0`, `FWPM_FILTER0`) | fwptypes.h / fwpmtypes.h | mingw-w64's headers, compiled by `x86_64-w64-mingw32-gcc` (`_Static_assert` on size and offsets generated from the Rust values), **and** windows-sys (Microsoft's win32metadata) |
//! | action / match / data-type / flag constants, metadata field bits, layer and condition GUIDs | same headers | windows-sys constants; action and match values also mingw |
//! | `FWPS_*` structs (`FWPS_CALLOUT3`, `FWPS_CLASSIFY_OUT0`, `FWPS_INCOMING_VALUE(S)0`, `FWPS_INCOMING_METADATA_VALUES0` prefix, discard/fragment metadata) | fwpsk.h / fwpstypes.h — in neither mingw nor windows-sys | derived from the documented definitions; offsets asserted here by hand arithmetic |
//! | run-time layer ids (`FWPS_LAYER_*`), field indexes (`FWPS_FIELD_*`), injection states and types | fwpsk.h enums | derived from the documented enum order (ids are positions) |
//!
//! Only the *prefix* of `FWPS_INCOMING_METADATA_VALUES0` that the driver reads is declared:
//! the filter engine owns the real (longer, version-dependent) structure and hands us a
//! pointer to it, so reading a prefix through a prefix type is sound; we never create one.
#![allow(
    non_camel_case_types,
    non_snake_case,
    reason = "C names are kept in ffi (STYLE.md §14)"
)]

use core::ffi::c_void;
use core::mem::{align_of, offset_of, size_of};

use super::ndis::NET_BUFFER_LIST;
#[cfg(windows)]
use super::ndis::PNET_BUFFER_LIST;
use super::Guid;
#[cfg(windows)]
use super::Handle;

// ---------------------------------------------------------------------------------------------
// Constants (fwptypes.h, fwpmtypes.h, fwpstypes.h, fwpsk.h, rpcdce.h)

/// `FWP_ACTION_FLAG_TERMINATING`.
pub(crate) const FWP_ACTION_FLAG_TERMINATING: u32 = 0x0000_1000;
/// `FWP_ACTION_FLAG_NON_TERMINATING`.
pub(crate) const FWP_ACTION_FLAG_NON_TERMINATING: u32 = 0x0000_2000;
/// `FWP_ACTION_FLAG_CALLOUT`.
pub(crate) const FWP_ACTION_FLAG_CALLOUT: u32 = 0x0000_4000;
/// `FWP_ACTION_BLOCK` = 0x1 | terminating.
pub(crate) const FWP_ACTION_BLOCK: u32 = 0x1 | FWP_ACTION_FLAG_TERMINATING;
/// `FWP_ACTION_PERMIT` = 0x2 | terminating.
pub(crate) const FWP_ACTION_PERMIT: u32 = 0x2 | FWP_ACTION_FLAG_TERMINATING;
/// `FWP_ACTION_CALLOUT_TERMINATING` = 0x3 | callout | terminating.
pub(crate) const FWP_ACTION_CALLOUT_TERMINATING: u32 =
    0x3 | FWP_ACTION_FLAG_CALLOUT | FWP_ACTION_FLAG_TERMINATING;
/// `FWP_ACTION_CALLOUT_INSPECTION` = 0x4 | callout | non-terminating.
pub(crate) const FWP_ACTION_CALLOUT_INSPECTION: u32 =
    0x4 | FWP_ACTION_FLAG_CALLOUT | FWP_ACTION_FLAG_NON_TERMINATING;
/// `FWP_ACTION_CONTINUE` = 0x6 | non-terminating.
pub(crate) const FWP_ACTION_CONTINUE: u32 = 0x6 | FWP_ACTION_FLAG_NON_TERMINATING;

/// `FWP_DATA_TYPE`: `FWP_EMPTY`.
pub(crate) const FWP_EMPTY: u32 = 0;
/// `FWP_DATA_TYPE`: `FWP_UINT8`.
pub(crate) const FWP_UINT8: u32 = 1;
/// `FWP_DATA_TYPE`: `FWP_UINT16`.
pub(crate) const FWP_UINT16: u32 = 2;
/// `FWP_DATA_TYPE`: `FWP_UINT32`.
pub(crate) const FWP_UINT32: u32 = 3;
/// `FWP_DATA_TYPE`: `FWP_BYTE_ARRAY16_TYPE` (IPv6 addresses in incoming values).
pub(crate) const FWP_BYTE_ARRAY16_TYPE: u32 = 11;

/// `FWP_MATCH_TYPE`: `FWP_MATCH_FLAGS_NONE_SET`.
pub(crate) const FWP_MATCH_FLAGS_NONE_SET: u32 = 8;

/// Filtering condition flag `FWP_CONDITION_FLAG_IS_LOOPBACK`.
pub(crate) const FWP_CONDITION_FLAG_IS_LOOPBACK: u32 = 0x0000_0001;

/// `FWPM_FILTER_FLAG_PERMIT_IF_CALLOUT_UNREGISTERED`.
pub(crate) const FWPM_FILTER_FLAG_PERMIT_IF_CALLOUT_UNREGISTERED: u32 = 0x0000_0010;
/// `FWPM_SESSION_FLAG_DYNAMIC`.
pub(crate) const FWPM_SESSION_FLAG_DYNAMIC: u32 = 0x0000_0001;
/// `FWP_CALLOUT_FLAG_CONDITIONAL_ON_FLOW`.
pub(crate) const FWP_CALLOUT_FLAG_CONDITIONAL_ON_FLOW: u32 = 0x0000_0001;

/// `FWPM_SERVICE_STATE`: `FWPM_SERVICE_STOPPED`.
pub(crate) const FWPM_SERVICE_STOPPED: i32 = 0;
/// `FWPM_SERVICE_STATE`: `FWPM_SERVICE_START_PENDING`.
pub(crate) const FWPM_SERVICE_START_PENDING: i32 = 1;
/// `FWPM_SERVICE_STATE`: `FWPM_SERVICE_STOP_PENDING`.
pub(crate) const FWPM_SERVICE_STOP_PENDING: i32 = 2;
/// `FWPM_SERVICE_STATE`: `FWPM_SERVICE_RUNNING`.
pub(crate) const FWPM_SERVICE_RUNNING: i32 = 3;

/// `RPC_C_AUTHN_WINNT` (the authentication service `FwpmEngineOpen0` takes).
pub(crate) const RPC_C_AUTHN_WINNT: u32 = 10;

/// `FWPS_RIGHT_ACTION_WRITE`.
pub(crate) const FWPS_RIGHT_ACTION_WRITE: u32 = 0x0000_0001;
/// `FWPS_CLASSIFY_OUT_FLAG_ABSORB`.
pub(crate) const FWPS_CLASSIFY_OUT_FLAG_ABSORB: u32 = 0x0000_0001;

/// `FWPS_METADATA_FIELD_FLOW_HANDLE`.
pub(crate) const FWPS_METADATA_FIELD_FLOW_HANDLE: u32 = 0x0000_0002;
/// `FWPS_METADATA_FIELD_PROCESS_ID`.
pub(crate) const FWPS_METADATA_FIELD_PROCESS_ID: u32 = 0x0000_0020;
/// `FWPS_METADATA_FIELD_COMPARTMENT_ID`.
pub(crate) const FWPS_METADATA_FIELD_COMPARTMENT_ID: u32 = 0x0000_0800;
/// `FWPS_METADATA_FIELD_PATH_MTU`.
pub(crate) const FWPS_METADATA_FIELD_PATH_MTU: u32 = 0x0000_2000;

/// `FWPS_INJECTION_TYPE_NETWORK` (`FwpsInjectionHandleCreate0` flags).
pub(crate) const FWPS_INJECTION_TYPE_NETWORK: u32 = 0x0000_0004;

/// `FWPS_PACKET_INJECTION_STATE`: `FWPS_PACKET_NOT_INJECTED`.
pub(crate) const FWPS_PACKET_NOT_INJECTED: i32 = 0;
/// `FWPS_PACKET_INJECTION_STATE`: `FWPS_PACKET_INJECTED_BY_SELF`.
pub(crate) const FWPS_PACKET_INJECTED_BY_SELF: i32 = 1;
/// `FWPS_PACKET_INJECTION_STATE`: `FWPS_PACKET_INJECTED_BY_OTHER`.
pub(crate) const FWPS_PACKET_INJECTED_BY_OTHER: i32 = 2;
/// `FWPS_PACKET_INJECTION_STATE`: `FWPS_PACKET_PREVIOUSLY_INJECTED_BY_SELF`.
pub(crate) const FWPS_PACKET_PREVIOUSLY_INJECTED_BY_SELF: i32 = 3;

/// `AF_INET`.
pub(crate) const AF_INET: u16 = 2;
/// `AF_INET6`.
pub(crate) const AF_INET6: u16 = 23;
/// `UNSPECIFIED_COMPARTMENT_ID`.
pub(crate) const UNSPECIFIED_COMPARTMENT_ID: u32 = 0;

/// Run-time layer ids (`FWPS_BUILTIN_LAYERS`, fwpsk.h): positions in that enum, whose order
/// is `INBOUND_IPPACKET_V4, _DISCARD, INBOUND_IPPACKET_V6, _DISCARD, OUTBOUND_IPPACKET_V4, ...`
/// — every layer followed by its discard layer, up to `ALE_FLOW_ESTABLISHED_V6_DISCARD` (55).
pub(crate) mod layer_id {
    /// `FWPS_LAYER_OUTBOUND_IPPACKET_V4`.
    pub(crate) const OUTBOUND_IPPACKET_V4: u16 = 4;
    /// `FWPS_LAYER_OUTBOUND_IPPACKET_V6`.
    pub(crate) const OUTBOUND_IPPACKET_V6: u16 = 6;
    /// `FWPS_LAYER_OUTBOUND_TRANSPORT_V4`.
    pub(crate) const OUTBOUND_TRANSPORT_V4: u16 = 16;
    /// `FWPS_LAYER_OUTBOUND_TRANSPORT_V6`.
    pub(crate) const OUTBOUND_TRANSPORT_V6: u16 = 18;
    /// `FWPS_LAYER_ALE_AUTH_CONNECT_V4`.
    pub(crate) const ALE_AUTH_CONNECT_V4: u16 = 48;
    /// `FWPS_LAYER_ALE_AUTH_CONNECT_V6`.
    pub(crate) const ALE_AUTH_CONNECT_V6: u16 = 50;
    /// `FWPS_LAYER_ALE_FLOW_ESTABLISHED_V4`.
    pub(crate) const ALE_FLOW_ESTABLISHED_V4: u16 = 52;
    /// `FWPS_LAYER_ALE_FLOW_ESTABLISHED_V6`.
    pub(crate) const ALE_FLOW_ESTABLISHED_V6: u16 = 54;
}

/// Incoming-value indexes shared by `FWPS_FIELDS_ALE_AUTH_CONNECT_V4/V6`,
/// `FWPS_FIELDS_ALE_FLOW_ESTABLISHED_V4/V6` and `FWPS_FIELDS_ALE_ENDPOINT_CLOSURE_V4/V6`: all
/// six enums start `ALE_APP_ID, ALE_USER_ID, IP_LOCAL_ADDRESS, IP_LOCAL_ADDRESS_TYPE,
/// IP_LOCAL_PORT, IP_PROTOCOL, IP_REMOTE_ADDRESS, IP_REMOTE_PORT` (their reference pages).
pub(crate) mod ale_field {
    /// `..._IP_LOCAL_ADDRESS` (UINT32 host order for V4, `FWP_BYTE_ARRAY16` for V6).
    pub(crate) const IP_LOCAL_ADDRESS: usize = 2;
    /// `..._IP_LOCAL_PORT` (UINT16).
    pub(crate) const IP_LOCAL_PORT: usize = 4;
    /// `..._IP_PROTOCOL` (UINT8).
    pub(crate) const IP_PROTOCOL: usize = 5;
    /// `..._IP_REMOTE_ADDRESS`.
    pub(crate) const IP_REMOTE_ADDRESS: usize = 6;
    /// `..._IP_REMOTE_PORT` (UINT16).
    pub(crate) const IP_REMOTE_PORT: usize = 7;
    /// `FWPS_FIELD_ALE_FLOW_ESTABLISHED_V4/V6_DIRECTION` (UINT32 `FWP_DIRECTION`).
    pub(crate) const FLOW_ESTABLISHED_DIRECTION: usize = 12;
}

/// `FWP_DIRECTION_OUTBOUND`.
pub(crate) const FWP_DIRECTION_OUTBOUND: u32 = 0;

// ---------------------------------------------------------------------------------------------
// GUIDs (fwpmu.h / fwpmk.h DEFINE_GUIDs, written as numbers)

/// `FWPM_LAYER_OUTBOUND_IPPACKET_V4`.
pub(crate) const FWPM_LAYER_OUTBOUND_IPPACKET_V4: Guid =
    Guid::from_u128(0x1e5c9fae_8a84_4135_a331_950b54229ecd);
/// `FWPM_LAYER_OUTBOUND_IPPACKET_V6`.
pub(crate) const FWPM_LAYER_OUTBOUND_IPPACKET_V6: Guid =
    Guid::from_u128(0xa3b3ab6b_3564_488c_9117_f34e82142763);
/// `FWPM_LAYER_OUTBOUND_TRANSPORT_V4`.
pub(crate) const FWPM_LAYER_OUTBOUND_TRANSPORT_V4: Guid =
    Guid::from_u128(0x09e61aea_d214_46e2_9b21_b26b0b2f28c8);
/// `FWPM_LAYER_OUTBOUND_TRANSPORT_V6`.
pub(crate) const FWPM_LAYER_OUTBOUND_TRANSPORT_V6: Guid =
    Guid::from_u128(0xe1735bde_013f_4655_b351_a49e15762df0);
/// `FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V4` (fwpmu.h; the same value in Microsoft's Win32
/// metadata, as the `windows-sys` crate carries it).
pub(crate) const FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V4: Guid =
    Guid::from_u128(0xb476_6427_e2a2_467a_bd7e_dbcd_1bd8_5a09);
/// `FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V6` (as above).
pub(crate) const FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V6: Guid =
    Guid::from_u128(0xbb53_6ccd_4755_4ba9_9ff7_f9ed_f869_9c7b);
/// `FWPM_LAYER_ALE_AUTH_CONNECT_V4`.
pub(crate) const FWPM_LAYER_ALE_AUTH_CONNECT_V4: Guid =
    Guid::from_u128(0xc38d57d1_05a7_4c33_904f_7fbceee60e82);
/// `FWPM_LAYER_ALE_AUTH_CONNECT_V6`.
pub(crate) const FWPM_LAYER_ALE_AUTH_CONNECT_V6: Guid =
    Guid::from_u128(0x4a72393b_319f_44bc_84c3_ba54dcb3b6b4);
/// `FWPM_LAYER_ALE_FLOW_ESTABLISHED_V4`.
pub(crate) const FWPM_LAYER_ALE_FLOW_ESTABLISHED_V4: Guid =
    Guid::from_u128(0xaf80470a_5596_4c13_9992_539e6fe57967);
/// `FWPM_LAYER_ALE_FLOW_ESTABLISHED_V6`.
pub(crate) const FWPM_LAYER_ALE_FLOW_ESTABLISHED_V6: Guid =
    Guid::from_u128(0x7021d2b3_dfa4_406e_afeb_6afaf7e70efd);
/// `FWPM_CONDITION_FLAGS`.
pub(crate) const FWPM_CONDITION_FLAGS: Guid =
    Guid::from_u128(0x632ce23b_5167_435c_86d7_e903684aa80c);

// ---------------------------------------------------------------------------------------------
// Structs

/// `FWP_BYTE_BLOB`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct FWP_BYTE_BLOB {
    pub(crate) size: u32,
    pub(crate) data: *mut u8,
}

/// `FWPM_DISPLAY_DATA0`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct FWPM_DISPLAY_DATA0 {
    pub(crate) name: *mut u16,
    pub(crate) description: *mut u16,
}

/// The anonymous union of `FWP_VALUE0` / `FWP_CONDITION_VALUE0` (members we use; every other
/// member is a pointer or a smaller scalar, so the union is 8 bytes, alignment 8).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) union FWP_VALUE_UNION {
    pub(crate) uint8: u8,
    pub(crate) uint16: u16,
    pub(crate) uint32: u32,
    /// `FWP_BYTE_ARRAY16*` (`byteArray16`).
    pub(crate) byte_array16: *const [u8; 16],
    /// Any pointer member (`uint64`, `byteBlob`, `sd`, ...).
    pub(crate) pointer: *mut c_void,
}

/// `FWP_VALUE0`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct FWP_VALUE0 {
    pub(crate) r#type: u32,
    pub(crate) value: FWP_VALUE_UNION,
}

/// `FWP_CONDITION_VALUE0` (same shape as `FWP_VALUE0`).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct FWP_CONDITION_VALUE0 {
    pub(crate) r#type: u32,
    pub(crate) value: FWP_VALUE_UNION,
}

/// `FWPM_ACTION0` (`type` then the union of `filterType` / `calloutKey`, both GUIDs).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct FWPM_ACTION0 {
    pub(crate) r#type: u32,
    pub(crate) callout_key: Guid,
}

/// `FWPM_FILTER_CONDITION0`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct FWPM_FILTER_CONDITION0 {
    pub(crate) fieldKey: Guid,
    pub(crate) matchType: u32,
    pub(crate) conditionValue: FWP_CONDITION_VALUE0,
}

/// `FWPM_SESSION0`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct FWPM_SESSION0 {
    pub(crate) sessionKey: Guid,
    pub(crate) displayData: FWPM_DISPLAY_DATA0,
    pub(crate) flags: u32,
    pub(crate) txnWaitTimeoutInMSec: u32,
    pub(crate) processId: u32,
    pub(crate) sid: *mut c_void,
    pub(crate) username: *mut u16,
    /// `BOOL`.
    pub(crate) kernelMode: i32,
}

/// `FWPM_SUBLAYER0`. (`flags` is UINT32 per Microsoft's metadata; mingw-w64 declares UINT16,
/// which has the same offset and, for the value 0 we write, the same bytes.)
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct FWPM_SUBLAYER0 {
    pub(crate) subLayerKey: Guid,
    pub(crate) displayData: FWPM_DISPLAY_DATA0,
    pub(crate) flags: u32,
    pub(crate) providerKey: *mut Guid,
    pub(crate) providerData: FWP_BYTE_BLOB,
    pub(crate) weight: u16,
}

/// `FWPM_CALLOUT0`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct FWPM_CALLOUT0 {
    pub(crate) calloutKey: Guid,
    pub(crate) displayData: FWPM_DISPLAY_DATA0,
    pub(crate) flags: u32,
    pub(crate) providerKey: *mut Guid,
    pub(crate) providerData: FWP_BYTE_BLOB,
    pub(crate) applicableLayer: Guid,
    pub(crate) calloutId: u32,
}

/// The anonymous union of `FWPM_FILTER0` (`rawContext` / `providerContextKey`).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) union FWPM_FILTER0_CONTEXT {
    pub(crate) rawContext: u64,
    pub(crate) providerContextKey: Guid,
}

/// `FWPM_FILTER0`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct FWPM_FILTER0 {
    pub(crate) filterKey: Guid,
    pub(crate) displayData: FWPM_DISPLAY_DATA0,
    pub(crate) flags: u32,
    pub(crate) providerKey: *mut Guid,
    pub(crate) providerData: FWP_BYTE_BLOB,
    pub(crate) layerKey: Guid,
    pub(crate) subLayerKey: Guid,
    pub(crate) weight: FWP_VALUE0,
    pub(crate) numFilterConditions: u32,
    pub(crate) filterCondition: *mut FWPM_FILTER_CONDITION0,
    pub(crate) action: FWPM_ACTION0,
    pub(crate) context: FWPM_FILTER0_CONTEXT,
    pub(crate) reserved: *mut Guid,
    pub(crate) filterId: u64,
    pub(crate) effectiveWeight: FWP_VALUE0,
}

/// `FWPS_INCOMING_VALUE0`: one `FWP_VALUE0`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct FWPS_INCOMING_VALUE0 {
    pub(crate) value: FWP_VALUE0,
}

/// `FWPS_INCOMING_VALUES0`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct FWPS_INCOMING_VALUES0 {
    pub(crate) layerId: u16,
    pub(crate) valueCount: u32,
    pub(crate) incomingValue: *const FWPS_INCOMING_VALUE0,
}

/// `FWPS_DISCARD_METADATA0`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct FWPS_DISCARD_METADATA0 {
    pub(crate) discardModule: i32,
    pub(crate) discardReason: u32,
    pub(crate) filterId: u64,
}

/// `FWPS_INBOUND_FRAGMENT_METADATA0`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct FWPS_INBOUND_FRAGMENT_METADATA0 {
    pub(crate) fragmentIdentification: u32,
    pub(crate) fragmentOffset: u16,
    pub(crate) fragmentLength: u32,
}

/// The first members of `FWPS_INCOMING_METADATA_VALUES0`, up to and including `pathMtu` (see
/// the module docs: the engine owns the full structure; we only read this prefix, and only
/// the members whose `FWPS_METADATA_FIELD_*` bit is set in `currentMetadataValues`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct FWPS_INCOMING_METADATA_VALUES0_PREFIX {
    pub(crate) currentMetadataValues: u32,
    pub(crate) flags: u32,
    pub(crate) reserved: u64,
    pub(crate) discardMetadata: FWPS_DISCARD_METADATA0,
    pub(crate) flowHandle: u64,
    pub(crate) ipHeaderSize: u32,
    pub(crate) transportHeaderSize: u32,
    pub(crate) processPath: *mut FWP_BYTE_BLOB,
    pub(crate) token: u64,
    pub(crate) processId: u64,
    pub(crate) sourceInterfaceIndex: u32,
    pub(crate) destinationInterfaceIndex: u32,
    pub(crate) compartmentId: u32,
    pub(crate) fragmentMetadata: FWPS_INBOUND_FRAGMENT_METADATA0,
    pub(crate) pathMtu: u32,
}

/// `FWPS_CLASSIFY_OUT0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FWPS_CLASSIFY_OUT0 {
    pub(crate) actionType: u32,
    pub(crate) outContext: u64,
    pub(crate) filterId: u64,
    pub(crate) rights: u32,
    pub(crate) flags: u32,
    pub(crate) reserved: u32,
}

/// `FWPS_FILTER3` is only passed through to us; we never read it.
pub(crate) type FWPS_FILTER3 = c_void;

/// `FWPS_CALLOUT_CLASSIFY_FN3`.
pub(crate) type FWPS_CALLOUT_CLASSIFY_FN3 = unsafe extern "system" fn(
    in_fixed_values: *const FWPS_INCOMING_VALUES0,
    in_meta_values: *const FWPS_INCOMING_METADATA_VALUES0_PREFIX,
    layer_data: *mut c_void,
    classify_context: *const c_void,
    filter: *const FWPS_FILTER3,
    flow_context: u64,
    classify_out: *mut FWPS_CLASSIFY_OUT0,
);

/// `FWPS_CALLOUT_NOTIFY_FN3` (`notifyType` is the `FWPS_CALLOUT_NOTIFY_TYPE` enum).
pub(crate) type FWPS_CALLOUT_NOTIFY_FN3 = unsafe extern "system" fn(
    notify_type: i32,
    filter_key: *const Guid,
    filter: *mut FWPS_FILTER3,
) -> i32;

/// `FWPS_CALLOUT_FLOW_DELETE_NOTIFY_FN0`.
pub(crate) type FWPS_CALLOUT_FLOW_DELETE_NOTIFY_FN0 =
    unsafe extern "system" fn(layer_id: u16, callout_id: u32, flow_context: u64);

/// `FWPS_INJECT_COMPLETE0`.
pub(crate) type FWPS_INJECT_COMPLETE0 = unsafe extern "system" fn(
    context: *mut c_void,
    net_buffer_list: *mut NET_BUFFER_LIST,
    dispatch_level: u8,
);

/// `FWPM_SERVICE_STATE_CHANGE_CALLBACK0`.
pub(crate) type FWPM_SERVICE_STATE_CHANGE_CALLBACK0 =
    unsafe extern "system" fn(context: *mut c_void, new_state: i32);

/// `FWPS_CALLOUT3`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct FWPS_CALLOUT3 {
    pub(crate) calloutKey: Guid,
    pub(crate) flags: u32,
    pub(crate) classifyFn: Option<FWPS_CALLOUT_CLASSIFY_FN3>,
    pub(crate) notifyFn: Option<FWPS_CALLOUT_NOTIFY_FN3>,
    pub(crate) flowDeleteFn: Option<FWPS_CALLOUT_FLOW_DELETE_NOTIFY_FN0>,
}

// Layout assertions. Sizes and offsets for x86-64 (the only architecture the driver is built
// for); the mingw oracle test re-checks the fwptypes/fwpmtypes ones against a C compiler.
const _: () = {
    assert!(size_of::<FWP_BYTE_BLOB>() == 16);
    assert!(offset_of!(FWP_BYTE_BLOB, data) == 8);
    assert!(size_of::<FWPM_DISPLAY_DATA0>() == 16);
    assert!(size_of::<FWP_VALUE0>() == 16 && align_of::<FWP_VALUE0>() == 8);
    assert!(offset_of!(FWP_VALUE0, value) == 8);
    assert!(size_of::<FWP_CONDITION_VALUE0>() == 16);
    assert!(size_of::<FWPM_ACTION0>() == 20 && align_of::<FWPM_ACTION0>() == 4);
    assert!(offset_of!(FWPM_ACTION0, callout_key) == 4);
    assert!(size_of::<FWPM_FILTER_CONDITION0>() == 40);
    assert!(offset_of!(FWPM_FILTER_CONDITION0, matchType) == 16);
    assert!(offset_of!(FWPM_FILTER_CONDITION0, conditionValue) == 24);
    assert!(size_of::<FWPM_SESSION0>() == 72);
    assert!(offset_of!(FWPM_SESSION0, flags) == 32);
    assert!(offset_of!(FWPM_SESSION0, sid) == 48);
    assert!(offset_of!(FWPM_SESSION0, kernelMode) == 64);
    assert!(size_of::<FWPM_SUBLAYER0>() == 72);
    assert!(offset_of!(FWPM_SUBLAYER0, providerKey) == 40);
    assert!(offset_of!(FWPM_SUBLAYER0, weight) == 64);
    assert!(size_of::<FWPM_CALLOUT0>() == 88);
    assert!(offset_of!(FWPM_CALLOUT0, applicableLayer) == 64);
    assert!(offset_of!(FWPM_CALLOUT0, calloutId) == 80);
    assert!(size_of::<FWPM_FILTER0>() == 200);
    assert!(offset_of!(FWPM_FILTER0, layerKey) == 64);
    assert!(offset_of!(FWPM_FILTER0, subLayerKey) == 80);
    assert!(offset_of!(FWPM_FILTER0, weight) == 96);
    assert!(offset_of!(FWPM_FILTER0, numFilterConditions) == 112);
    assert!(offset_of!(FWPM_FILTER0, filterCondition) == 120);
    assert!(offset_of!(FWPM_FILTER0, action) == 128);
    assert!(offset_of!(FWPM_FILTER0, context) == 152);
    assert!(offset_of!(FWPM_FILTER0, filterId) == 176);
    assert!(offset_of!(FWPM_FILTER0, effectiveWeight) == 184);
    // fwpsk.h / fwpstypes.h (derived from the documented definitions, no compiler oracle).
    assert!(size_of::<FWPS_INCOMING_VALUE0>() == 16);
    assert!(size_of::<FWPS_INCOMING_VALUES0>() == 16);
    assert!(offset_of!(FWPS_INCOMING_VALUES0, valueCount) == 4);
    assert!(offset_of!(FWPS_INCOMING_VALUES0, incomingValue) == 8);
    assert!(size_of::<FWPS_DISCARD_METADATA0>() == 16);
    assert!(size_of::<FWPS_INBOUND_FRAGMENT_METADATA0>() == 12);
    assert!(offset_of!(FWPS_INCOMING_METADATA_VALUES0_PREFIX, discardMetadata) == 16);
    assert!(offset_of!(FWPS_INCOMING_METADATA_VALUES0_PREFIX, flowHandle) == 32);
    assert!(offset_of!(FWPS_INCOMING_METADATA_VALUES0_PREFIX, ipHeaderSize) == 40);
    assert!(offset_of!(FWPS_INCOMING_METADATA_VALUES0_PREFIX, processPath) == 48);
    assert!(offset_of!(FWPS_INCOMING_METADATA_VALUES0_PREFIX, processId) == 64);
    assert!(offset_of!(FWPS_INCOMING_METADATA_VALUES0_PREFIX, compartmentId) == 80);
    assert!(offset_of!(FWPS_INCOMING_METADATA_VALUES0_PREFIX, fragmentMetadata) == 84);
    assert!(offset_of!(FWPS_INCOMING_METADATA_VALUES0_PREFIX, pathMtu) == 96);
    assert!(size_of::<FWPS_CLASSIFY_OUT0>() == 40);
    assert!(offset_of!(FWPS_CLASSIFY_OUT0, outContext) == 8);
    assert!(offset_of!(FWPS_CLASSIFY_OUT0, rights) == 24);
    assert!(offset_of!(FWPS_CLASSIFY_OUT0, flags) == 28);
    assert!(size_of::<FWPS_CALLOUT3>() == 48);
    assert!(offset_of!(FWPS_CALLOUT3, flags) == 16);
    assert!(offset_of!(FWPS_CALLOUT3, classifyFn) == 24);
    assert!(offset_of!(FWPS_CALLOUT3, flowDeleteFn) == 40);
};

// ---------------------------------------------------------------------------------------------
// Routines (fwpkclnt.lib). IRQL per the reference pages: Fwpm*, FwpsCalloutRegister3,
// FwpsCalloutUnregisterById0, FwpsInjectionHandleCreate0/Destroy0 at PASSIVE_LEVEL;
// FwpmBfeStateGet0, the flow-context, clone, injection-state and inject routines at
// <= DISPATCH_LEVEL.

// SAFETY: every signature below was checked line by line against fwpsk.h / fwpmk.h (NTAPI =
// "system"; `HANDLE`, `void*`, `NDIS_HANDLE` are pointers; `UINT16/32/64` fixed width;
// `ADDRESS_FAMILY` is USHORT; `COMPARTMENT_ID` is a 32-bit enum; `FWPS_PACKET_INJECTION_STATE`
// and `FWPM_SERVICE_STATE` are 32-bit enums; `BOOLEAN` is u8). The Fwpm signatures also match
// windows-sys' `Wdk::NetworkManagement::WindowsFilteringPlatform` (from Microsoft's WDK
// metadata). The symbols are exported by fwpkclnt.sys through fwpkclnt.lib, which the build
// links.
#[cfg(windows)]
#[link(name = "fwpkclnt")]
unsafe extern "system" {
    pub(crate) fn FwpsCalloutRegister3(
        device_object: *mut c_void,
        callout: *const FWPS_CALLOUT3,
        callout_id: *mut u32,
    ) -> i32;
    pub(crate) fn FwpsCalloutUnregisterById0(callout_id: u32) -> i32;
    pub(crate) fn FwpsFlowAssociateContext0(
        flow_id: u64,
        layer_id: u16,
        callout_id: u32,
        flow_context: u64,
    ) -> i32;
    pub(crate) fn FwpsFlowRemoveContext0(flow_id: u64, layer_id: u16, callout_id: u32) -> i32;
    pub(crate) fn FwpsInjectionHandleCreate0(
        address_family: u16,
        flags: u32,
        injection_handle: *mut Handle,
    ) -> i32;
    pub(crate) fn FwpsInjectionHandleDestroy0(injection_handle: Handle) -> i32;
    pub(crate) fn FwpsQueryPacketInjectionState0(
        injection_handle: Handle,
        net_buffer_list: *const NET_BUFFER_LIST,
        injection_context: *mut Handle,
    ) -> i32;
    pub(crate) fn FwpsAllocateCloneNetBufferList0(
        original: PNET_BUFFER_LIST,
        net_buffer_list_pool_handle: Handle,
        net_buffer_pool_handle: Handle,
        allocate_clone_flags: u32,
        net_buffer_list: *mut PNET_BUFFER_LIST,
    ) -> i32;
    pub(crate) fn FwpsFreeCloneNetBufferList0(
        net_buffer_list: PNET_BUFFER_LIST,
        free_clone_flags: u32,
    );
    pub(crate) fn FwpsInjectNetworkSendAsync0(
        injection_handle: Handle,
        injection_context: Handle,
        flags: u32,
        compartment_id: u32,
        net_buffer_list: PNET_BUFFER_LIST,
        completion_fn: FWPS_INJECT_COMPLETE0,
        completion_context: *mut c_void,
    ) -> i32;

    pub(crate) fn FwpmBfeStateGet0() -> i32;
    pub(crate) fn FwpmBfeStateSubscribeChanges0(
        device_object: *mut c_void,
        callback: FWPM_SERVICE_STATE_CHANGE_CALLBACK0,
        context: *mut c_void,
        change_handle: *mut Handle,
    ) -> i32;
    pub(crate) fn FwpmBfeStateUnsubscribeChanges0(change_handle: Handle) -> i32;
    pub(crate) fn FwpmEngineOpen0(
        server_name: *const u16,
        authn_service: u32,
        auth_identity: *const c_void,
        session: *const FWPM_SESSION0,
        engine_handle: *mut Handle,
    ) -> i32;
    pub(crate) fn FwpmEngineClose0(engine_handle: Handle) -> i32;
    pub(crate) fn FwpmTransactionBegin0(engine_handle: Handle, flags: u32) -> i32;
    pub(crate) fn FwpmTransactionCommit0(engine_handle: Handle) -> i32;
    pub(crate) fn FwpmTransactionAbort0(engine_handle: Handle) -> i32;
    pub(crate) fn FwpmSubLayerAdd0(
        engine_handle: Handle,
        sub_layer: *const FWPM_SUBLAYER0,
        sd: *mut c_void,
    ) -> i32;
    pub(crate) fn FwpmCalloutAdd0(
        engine_handle: Handle,
        callout: *const FWPM_CALLOUT0,
        sd: *mut c_void,
        id: *mut u32,
    ) -> i32;
    pub(crate) fn FwpmFilterAdd0(
        engine_handle: Handle,
        filter: *const FWPM_FILTER0,
        sd: *mut c_void,
        id: *mut u64,
    ) -> i32;
}
