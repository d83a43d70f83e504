//! The traffic-type table: which DSCP and 802.1p priority each `QOS_TRAFFIC_TYPE` maps to, and
//! which DSCP values ordinary users may set with `QOSSetOutgoingDSCPValue`.
//!
//! * [`default_table`] is qWAVE's documented table (qos-api.md §3): `BestEffort` adds nothing;
//!   `Background` DSCP 8 (CS1) / 802.1p 2; `ExcellentEffort` 40 (CS5) / 5; `AudioVideo` 40 / 5;
//!   `Voice` 56 (CS7) / 7; `Control` 56 / 7. `ExcellentEffort` = `AudioVideo` looks like a copy
//!   error in Microsoft's docs; qosmark follows the docs and lets administrators replace the
//!   table (`SetTrafficTable`).
//! * 802.1p: qWAVE requests it only for adaptive flows (added without `QOS_NON_ADAPTIVE_FLOW`),
//!   and only after its path probing found that tags survive. qosmark does no probing, so the
//!   administrator setting [`TrafficTable::tag_adaptive_flows`] decides; it defaults to `true`
//!   (adaptive flows are tagged, as documented). Non-adaptive flows are never tagged.
//! * `user_dscp_allow` (bit `n` = DSCP `n`) defaults to 0: only administrators and kernel
//!   callers may set an arbitrary DSCP, exactly as qWAVE (§8).
use qosmark_abi::{Dscp, Mark, Pcp, TrafficTable, TrafficType, TrafficTypeMark};

/// A table entry from raw values that are in range by construction.
fn entry(dscp: u8, pcp: u8) -> TrafficTypeMark {
    TrafficTypeMark {
        dscp: Dscp::try_new(dscp).ok(),
        pcp: Pcp::try_new(pcp).ok(),
    }
}

/// qWAVE's documented table (qos-api.md §3), no user DSCP allowed, adaptive flows tagged.
#[must_use]
pub fn default_table() -> TrafficTable {
    TrafficTable {
        marks: [
            // BestEffort: "not added" for both.
            TrafficTypeMark {
                dscp: None,
                pcp: None,
            },
            // Background: CS1 / 2.
            entry(8, 2),
            // ExcellentEffort: CS5 / 5 (as documented, same as AudioVideo).
            entry(40, 5),
            // AudioVideo: CS5 / 5.
            entry(40, 5),
            // Voice: CS7 / 7.
            entry(56, 7),
            // Control: CS7 / 7.
            entry(56, 7),
        ],
        user_dscp_allow: 0,
        tag_adaptive_flows: true,
        non_conformant_dscp: Dscp::CS0,
        // Psched's `UserPriorityMapping\ServiceTypeNonConforming` default (qos-api.md §11.4,
        // [PSCHED-REG]): the Pacer that carries QOS2 and GQoS flows on Windows tags packets
        // above a flow's rate with 802.1p 1 (and DSCP 0, `DiffservByteMappingNonConforming`).
        non_conformant_pcp: Pcp::ONE,
    }
}

/// The mark of a packet above the rate of a flow (or rule) whose conformant mark is
/// `conformant` under `QOSUseNonConformantMarkings`: always the table's non-conformant DSCP
/// (the point is to demote the excess), and its non-conformant 802.1p only when the conformant
/// mark requests 802.1p (a flow that is not tagged is not tagged when it exceeds its rate
/// either).
#[must_use]
pub fn non_conformant_mark(table: &TrafficTable, conformant: Mark) -> Mark {
    Mark {
        dscp: Some(table.non_conformant_dscp),
        pcp: conformant.pcp.map(|_| table.non_conformant_pcp),
    }
}

/// The mark of traffic type `tt` for a flow; `adaptive` = the flow was added without
/// `QOS_NON_ADAPTIVE_FLOW`. 802.1p is requested only for adaptive flows and only when the table
/// says adaptive flows are tagged (§3).
#[must_use]
pub fn mark_for(table: &TrafficTable, tt: TrafficType, adaptive: bool) -> Mark {
    let m = table
        .marks
        .get(tt.index())
        .copied()
        .unwrap_or(TrafficTypeMark {
            dscp: None,
            pcp: None,
        });
    Mark {
        dscp: m.dscp,
        pcp: if adaptive && table.tag_adaptive_flows {
            m.pcp
        } else {
            None
        },
    }
}

/// Whether an ordinary user may set `dscp` with `QOSSetOutgoingDSCPValue` under `table`.
#[must_use]
pub fn user_may_set(table: &TrafficTable, dscp: Dscp) -> bool {
    table
        .user_dscp_allow
        .checked_shr(u32::from(dscp.value()))
        .is_some_and(|bits| bits & 1 == 1)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        reason = "test code: a failed unwrap or index is a failed test"
    )]
    use super::*;

    /// The §3 table written out as plain numbers (independent of `entry`).
    const DOC: [(Option<u8>, Option<u8>); 6] = [
        (None, None),
        (Some(8), Some(2)),
        (Some(40), Some(5)),
        (Some(40), Some(5)),
        (Some(56), Some(7)),
        (Some(56), Some(7)),
    ];

    #[test]
    fn default_table_is_the_documented_one() {
        let t = default_table();
        for tt in TrafficType::ALL {
            let (d, p) = DOC[tt.index()];
            let m = t.marks[tt.index()];
            assert_eq!(m.dscp.map(Dscp::value), d, "{tt:?}");
            assert_eq!(m.pcp.map(Pcp::value), p, "{tt:?}");
        }
        assert_eq!(t.user_dscp_allow, 0);
        assert!(t.tag_adaptive_flows);
        // Psched's non-conforming defaults (qos-api.md §11.4): DSCP 0, 802.1p 1.
        assert_eq!(t.non_conformant_dscp.value(), 0);
        assert_eq!(t.non_conformant_pcp.value(), 1);
    }

    #[test]
    fn pcp_only_for_adaptive_flows_when_enabled() {
        let mut t = default_table();
        for tt in TrafficType::ALL {
            let (d, p) = DOC[tt.index()];
            let adaptive = mark_for(&t, tt, true);
            let fixed = mark_for(&t, tt, false);
            assert_eq!(adaptive.dscp.map(Dscp::value), d);
            assert_eq!(adaptive.pcp.map(Pcp::value), p);
            assert_eq!(fixed.dscp.map(Dscp::value), d);
            assert_eq!(fixed.pcp, None);
        }
        t.tag_adaptive_flows = false;
        for tt in TrafficType::ALL {
            assert_eq!(mark_for(&t, tt, true).pcp, None);
        }
    }

    #[test]
    fn user_allow_list_bits() {
        let mut t = default_table();
        for v in 0..=63u8 {
            assert!(!user_may_set(&t, Dscp::try_new(v).unwrap()));
        }
        t.user_dscp_allow = (1 << 46) | (1 << 63) | 1;
        for v in 0..=63u8 {
            let expect = v == 46 || v == 63 || v == 0;
            assert_eq!(user_may_set(&t, Dscp::try_new(v).unwrap()), expect, "{v}");
        }
    }
}
