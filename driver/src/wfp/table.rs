//! The declarative part of the WFP registration: our sublayer, the eight callouts, the
//! layer each one lives at, and the one filter that routes traffic to it. Plain data,
//! identical on every target and unit-tested on the host; `registration` turns it into
//! `FWPS_CALLOUT3` / `FWPM_CALLOUT0` / `FWPM_FILTER0` records.
//!
//! | callout | layer | filter action | filter flags | conditions | callout flags |
//! |---|---|---|---|---|---|
//! | mark v4/v6 | `OUTBOUND_IPPACKET_V4/V6` | `CALLOUT_TERMINATING` | `PERMIT_IF_CALLOUT_UNREGISTERED` | not loopback | 0 |
//! | connect-owner v4/v6 | `ALE_AUTH_CONNECT_V4/V6` | `CALLOUT_INSPECTION` | 0 | not loopback | 0 |
//! | established-owner v4/v6 | `ALE_FLOW_ESTABLISHED_V4/V6` | `CALLOUT_INSPECTION` | 0 | not loopback | 0 |
//! | flow-delete v4/v6 | `OUTBOUND_TRANSPORT_V4/V6` | `CALLOUT_INSPECTION` | 0 | not loopback | `CONDITIONAL_ON_FLOW` |
//! | endpoint-closure v4/v6 | `ALE_ENDPOINT_CLOSURE_V4/V6` | `CALLOUT_INSPECTION` | 0 | none | 0 |
//!
//! "Not loopback" is the condition `FWPM_CONDITION_FLAGS` / `FWP_MATCH_FLAGS_NONE_SET` /
//! `FWP_CONDITION_FLAG_IS_LOOPBACK`. No callout sets `FWP_CALLOUT_FLAG_ALLOW_USO`, `_URO` or
//! `_RSC` (wfp-driver.md §5: segmentation offloads stay off for traffic our filters see).
//! The flow-delete callouts exist to own the flow contexts the established-owner callouts
//! attach, so that their `flowDeleteFn` retires the owner-table entry when the flow ends; with
//! `CONDITIONAL_ON_FLOW` they are classified only for flows that carry one of our contexts.
//! The endpoint-closure callouts see every socket close (no condition: a registered loopback
//! socket leaves its flow too) and tell the engine (`Engine::endpoint_closed`); they need no
//! run-time layer id (nothing they do names their layer), so theirs is `None`.

use crate::ffi::wfp::{
    layer_id, FWPM_FILTER_FLAG_PERMIT_IF_CALLOUT_UNREGISTERED, FWPM_LAYER_ALE_AUTH_CONNECT_V4,
    FWPM_LAYER_ALE_AUTH_CONNECT_V6, FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V4,
    FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V6, FWPM_LAYER_ALE_FLOW_ESTABLISHED_V4,
    FWPM_LAYER_ALE_FLOW_ESTABLISHED_V6, FWPM_LAYER_OUTBOUND_IPPACKET_V4,
    FWPM_LAYER_OUTBOUND_IPPACKET_V6, FWPM_LAYER_OUTBOUND_TRANSPORT_V4,
    FWPM_LAYER_OUTBOUND_TRANSPORT_V6, FWP_ACTION_CALLOUT_INSPECTION,
    FWP_ACTION_CALLOUT_TERMINATING, FWP_CALLOUT_FLAG_CONDITIONAL_ON_FLOW,
};
use crate::ffi::Guid;

/// What a callout does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Clone–modify–inject at the outbound IP-packet layer.
    Mark,
    /// Report (5-tuple, pid) at `ALE_AUTH_CONNECT`.
    ConnectOwner,
    /// Report (5-tuple, pid) at `ALE_FLOW_ESTABLISHED` and attach a flow context.
    EstablishedOwner,
    /// Owns the flow contexts; its `flowDeleteFn` retires the owner entry.
    FlowDelete,
    /// A socket was closed: its entries leave their flows (`Engine::endpoint_closed`).
    EndpointClosure,
}

/// IP version of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// IPv4 layers.
    V4,
    /// IPv6 layers.
    V6,
}

/// One callout and its filter.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CalloutSpec {
    /// Index in [`CALLOUTS`] (also the slot of its run-time id).
    pub(crate) index: usize,
    /// What it does.
    pub(crate) role: Role,
    /// v4 or v6.
    pub(crate) family: Family,
    /// `calloutKey` (ours, fixed).
    pub(crate) key: Guid,
    /// `applicableLayer` / the filter's `layerKey`.
    pub(crate) layer_key: Guid,
    /// Run-time id of that layer (`FWPS_LAYER_*`), where the driver needs it (flow contexts
    /// name the layer); `None` for the endpoint-closure callouts.
    pub(crate) layer_id: Option<u16>,
    /// `FWPS_CALLOUT3.flags`.
    pub(crate) callout_flags: u32,
    /// The filter's `filterKey` (ours, fixed).
    pub(crate) filter_key: Guid,
    /// The filter's `action.type`.
    pub(crate) filter_action: u32,
    /// The filter's `flags`.
    pub(crate) filter_flags: u32,
    /// The filter has the "not loopback" condition.
    pub(crate) exclude_loopback: bool,
    /// Display name (ASCII; widened at registration).
    pub(crate) name: &'static str,
}

/// Our sublayer's key.
pub(crate) const SUBLAYER_KEY: Guid = Guid::from_u128(0x51d0_5a7e_0b8e_4c2a_9a51_7153_6d61_726b);
/// Our sublayer's weight: the lowest, below `FWPM_SUBLAYER_UNIVERSAL` (`IPsec` coexistence,
/// wfp-driver.md §10, as the inspect sample does).
pub(crate) const SUBLAYER_WEIGHT: u16 = 0;
/// Display name of the sublayer and the session.
pub(crate) const PROVIDER_NAME: &str = "qosmark";

const fn spec(
    index: usize,
    role: Role,
    family: Family,
    key: u128,
    filter_key: u128,
    name: &'static str,
) -> CalloutSpec {
    let (layer_key, layer_id) = match (role, family) {
        (Role::Mark, Family::V4) => (
            FWPM_LAYER_OUTBOUND_IPPACKET_V4,
            Some(layer_id::OUTBOUND_IPPACKET_V4),
        ),
        (Role::Mark, Family::V6) => (
            FWPM_LAYER_OUTBOUND_IPPACKET_V6,
            Some(layer_id::OUTBOUND_IPPACKET_V6),
        ),
        (Role::ConnectOwner, Family::V4) => (
            FWPM_LAYER_ALE_AUTH_CONNECT_V4,
            Some(layer_id::ALE_AUTH_CONNECT_V4),
        ),
        (Role::ConnectOwner, Family::V6) => (
            FWPM_LAYER_ALE_AUTH_CONNECT_V6,
            Some(layer_id::ALE_AUTH_CONNECT_V6),
        ),
        (Role::EstablishedOwner, Family::V4) => (
            FWPM_LAYER_ALE_FLOW_ESTABLISHED_V4,
            Some(layer_id::ALE_FLOW_ESTABLISHED_V4),
        ),
        (Role::EstablishedOwner, Family::V6) => (
            FWPM_LAYER_ALE_FLOW_ESTABLISHED_V6,
            Some(layer_id::ALE_FLOW_ESTABLISHED_V6),
        ),
        (Role::FlowDelete, Family::V4) => (
            FWPM_LAYER_OUTBOUND_TRANSPORT_V4,
            Some(layer_id::OUTBOUND_TRANSPORT_V4),
        ),
        (Role::FlowDelete, Family::V6) => (
            FWPM_LAYER_OUTBOUND_TRANSPORT_V6,
            Some(layer_id::OUTBOUND_TRANSPORT_V6),
        ),
        (Role::EndpointClosure, Family::V4) => (FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V4, None),
        (Role::EndpointClosure, Family::V6) => (FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V6, None),
    };
    let (filter_action, filter_flags) = match role {
        Role::Mark => (
            FWP_ACTION_CALLOUT_TERMINATING,
            FWPM_FILTER_FLAG_PERMIT_IF_CALLOUT_UNREGISTERED,
        ),
        Role::ConnectOwner | Role::EstablishedOwner | Role::FlowDelete | Role::EndpointClosure => {
            (FWP_ACTION_CALLOUT_INSPECTION, 0)
        }
    };
    let callout_flags = match role {
        Role::FlowDelete => FWP_CALLOUT_FLAG_CONDITIONAL_ON_FLOW,
        Role::Mark | Role::ConnectOwner | Role::EstablishedOwner | Role::EndpointClosure => 0,
    };
    CalloutSpec {
        index,
        role,
        family,
        key: Guid::from_u128(key),
        layer_key,
        layer_id,
        callout_flags,
        filter_key: Guid::from_u128(filter_key),
        filter_action,
        filter_flags,
        exclude_loopback: !matches!(role, Role::EndpointClosure),
        name,
    }
}

/// Number of callouts.
pub(crate) const CALLOUT_COUNT: usize = 10;

/// Every callout, in registration order. Keys are random GUIDs generated for qosmark.
pub(crate) const CALLOUTS: [CalloutSpec; CALLOUT_COUNT] = [
    spec(
        0,
        Role::Mark,
        Family::V4,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_0000_0001,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_f000_0001,
        "qosmark mark (IPv4 packets)",
    ),
    spec(
        1,
        Role::Mark,
        Family::V6,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_0000_0002,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_f000_0002,
        "qosmark mark (IPv6 packets)",
    ),
    spec(
        2,
        Role::ConnectOwner,
        Family::V4,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_0000_0003,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_f000_0003,
        "qosmark flow owner (IPv4 connect)",
    ),
    spec(
        3,
        Role::ConnectOwner,
        Family::V6,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_0000_0004,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_f000_0004,
        "qosmark flow owner (IPv6 connect)",
    ),
    spec(
        4,
        Role::EstablishedOwner,
        Family::V4,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_0000_0005,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_f000_0005,
        "qosmark flow owner (IPv4 established)",
    ),
    spec(
        5,
        Role::EstablishedOwner,
        Family::V6,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_0000_0006,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_f000_0006,
        "qosmark flow owner (IPv6 established)",
    ),
    spec(
        6,
        Role::FlowDelete,
        Family::V4,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_0000_0007,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_f000_0007,
        "qosmark flow end (IPv4 transport)",
    ),
    spec(
        7,
        Role::FlowDelete,
        Family::V6,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_0000_0008,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_f000_0008,
        "qosmark flow end (IPv6 transport)",
    ),
    spec(
        8,
        Role::EndpointClosure,
        Family::V4,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_0000_0009,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_f000_0009,
        "qosmark socket closed (IPv4)",
    ),
    spec(
        9,
        Role::EndpointClosure,
        Family::V6,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_0000_000a,
        0x3f6b_1a40_2d7e_4f0e_8b1c_51d0_f000_000a,
        "qosmark socket closed (IPv6)",
    ),
];

/// The callout of `role` and `family`.
pub(crate) fn callout(role: Role, family: Family) -> Option<&'static CalloutSpec> {
    CALLOUTS
        .iter()
        .find(|c| c.role == role && c.family == family)
}

/// The longest display name, plus its NUL (size of the UTF-16 buffers `registration` uses).
pub(crate) const MAX_NAME_UNITS: usize = 48;

/// Writes `name` as NUL-terminated UTF-16 into `out`. Only ASCII names fit the table;
/// `None` if `name` is not ASCII or does not fit.
pub(crate) fn widen(name: &str, out: &mut [u16; MAX_NAME_UNITS]) -> Option<()> {
    if !name.is_ascii() || name.len() >= MAX_NAME_UNITS {
        return None;
    }
    out.fill(0);
    for (dst, src) in out.iter_mut().zip(name.bytes()) {
        *dst = u16::from(src);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
    use super::*;
    use crate::ffi::wfp::{FWP_ACTION_CALLOUT_INSPECTION, FWP_ACTION_CALLOUT_TERMINATING};

    #[test]
    fn table_is_consistent() {
        for (i, c) in CALLOUTS.iter().enumerate() {
            assert_eq!(c.index, i);
            let mut buf = [0u16; MAX_NAME_UNITS];
            assert!(widen(c.name, &mut buf).is_some(), "{}", c.name);
            assert_eq!(c.exclude_loopback, c.role != Role::EndpointClosure);
            // Run-time layer ids where flow contexts need them, and only there.
            assert_eq!(c.layer_id.is_none(), c.role == Role::EndpointClosure);
            // No segmentation-offload opt-ins, ever.
            assert_eq!(c.callout_flags & (0x40 | 0x100 | 0x200), 0);
        }
        // Keys are unique, callout and filter keys distinct from each other and the sublayer.
        let mut keys: Vec<Guid> = CALLOUTS
            .iter()
            .flat_map(|c| [c.key, c.filter_key])
            .collect();
        keys.push(SUBLAYER_KEY);
        let n = keys.len();
        keys.sort_by_key(|g| (g.data1, g.data2, g.data3, g.data4));
        keys.dedup();
        assert_eq!(keys.len(), n);
        // One callout per role and family.
        for role in [
            Role::Mark,
            Role::ConnectOwner,
            Role::EstablishedOwner,
            Role::FlowDelete,
            Role::EndpointClosure,
        ] {
            for family in [Family::V4, Family::V6] {
                assert_eq!(
                    CALLOUTS
                        .iter()
                        .filter(|c| c.role == role && c.family == family)
                        .count(),
                    1
                );
            }
        }
    }

    #[test]
    fn mark_filters_terminate_and_permit_when_unregistered() {
        for family in [Family::V4, Family::V6] {
            let c = callout(Role::Mark, family).unwrap();
            assert_eq!(c.filter_action, FWP_ACTION_CALLOUT_TERMINATING);
            assert_eq!(
                c.filter_flags,
                FWPM_FILTER_FLAG_PERMIT_IF_CALLOUT_UNREGISTERED
            );
            assert_eq!(c.callout_flags, 0);
        }
        let c = callout(Role::Mark, Family::V6).unwrap();
        assert_eq!(c.layer_key, FWPM_LAYER_OUTBOUND_IPPACKET_V6);
        assert_eq!(c.layer_id, Some(layer_id::OUTBOUND_IPPACKET_V6));
    }

    #[test]
    fn owner_callouts_only_inspect() {
        for role in [
            Role::ConnectOwner,
            Role::EstablishedOwner,
            Role::FlowDelete,
            Role::EndpointClosure,
        ] {
            for family in [Family::V4, Family::V6] {
                let c = callout(role, family).unwrap();
                assert_eq!(c.filter_action, FWP_ACTION_CALLOUT_INSPECTION);
                assert_eq!(c.filter_flags, 0);
            }
        }
        assert_eq!(
            callout(Role::FlowDelete, Family::V4).unwrap().callout_flags,
            FWP_CALLOUT_FLAG_CONDITIONAL_ON_FLOW
        );
        assert_eq!(
            callout(Role::EstablishedOwner, Family::V4)
                .unwrap()
                .layer_key,
            FWPM_LAYER_ALE_FLOW_ESTABLISHED_V4
        );
        assert_eq!(
            callout(Role::ConnectOwner, Family::V6).unwrap().layer_id,
            Some(layer_id::ALE_AUTH_CONNECT_V6)
        );
        let closure = callout(Role::EndpointClosure, Family::V6).unwrap();
        assert_eq!(closure.layer_key, FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V6);
        assert_eq!(closure.callout_flags, 0);
    }

    #[test]
    fn widen_rejects_what_does_not_fit() {
        let mut buf = [0xffffu16; MAX_NAME_UNITS];
        widen("ab", &mut buf).unwrap();
        assert_eq!(&buf[..3], &[97, 98, 0]);
        assert!(widen("é", &mut buf).is_none());
        assert!(widen(&"x".repeat(MAX_NAME_UNITS), &mut buf).is_none());
    }
}
