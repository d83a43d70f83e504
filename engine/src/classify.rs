//! PLACEHOLDER (skeleton): per-packet classification. Replaced by the real implementation.
use qosmark_abi::{Mark, Pcp, SkipReason, StatusInfo};

/// What the back end knows about a packet besides its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketMeta {
    /// The back end injected this packet itself.
    pub self_injected: bool,
    /// 802.1p the packet already requests / carries, if known.
    pub current_pcp: Option<Pcp>,
}

/// The engine's decision for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Leave the packet alone, for this reason.
    Skip(SkipReason),
    /// A flow or rule matched and the packet already carries the mark.
    AlreadyMarked,
    /// Rewrite the packet with this mark.
    Mark(Mark),
}

/// Global counters.
#[derive(Debug, Default)]
pub(crate) struct GlobalCounters;

impl GlobalCounters {
    pub(crate) fn fill_status(&self, _status: &mut StatusInfo) {}
}
