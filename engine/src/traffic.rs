//! PLACEHOLDER (skeleton): traffic-type table. Replaced by the real implementation.
use qosmark_abi::{Mark, TrafficTable, TrafficType, TrafficTypeMark};

/// qWAVE's documented table.
#[must_use]
pub fn default_table() -> TrafficTable {
    TrafficTable {
        marks: [TrafficTypeMark { dscp: None, pcp: None }; 6],
        user_dscp_allow: 0,
        tag_adaptive_flows: true,
    }
}

/// The mark of `tt` for a flow (`adaptive` = added without `QOS_NON_ADAPTIVE_FLOW`).
#[must_use]
pub fn mark_for(table: &TrafficTable, tt: TrafficType, adaptive: bool) -> Mark {
    let m = table.marks.get(tt.index()).copied().unwrap_or(TrafficTypeMark { dscp: None, pcp: None });
    Mark { dscp: m.dscp, pcp: if adaptive && table.tag_adaptive_flows { m.pcp } else { None } }
}
