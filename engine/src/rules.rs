//! PLACEHOLDER (skeleton): admin rules. Replaced by the real implementation.
use crate::counters::Counters;
use crate::{EngineError, FiveTuple};
use alloc::vec::Vec;
use qosmark_abi::{heapless_name::RuleName, Pcp, RuleAction, RuleEntry, RuleSpec};

/// A rule match on the packet path.
#[derive(Debug)]
pub struct RuleHit<'a> {
    /// What the rule does.
    pub action: RuleAction,
    /// 802.1p, if the rule sets one.
    pub pcp: Option<Pcp>,
    /// The rule's counters.
    pub counters: &'a Counters,
}

/// The rule set.
#[derive(Debug)]
pub(crate) struct RuleSet {
    _max: usize,
}

impl RuleSet {
    pub(crate) fn new(max: usize) -> Self {
        RuleSet { _max: max }
    }
    pub(crate) fn insert(&mut self, _spec: RuleSpec) -> Result<(), EngineError> {
        Err(EngineError::NotSupported)
    }
    pub(crate) fn remove(&mut self, _name: &RuleName) -> Result<(), EngineError> {
        Err(EngineError::NotFound)
    }
    pub(crate) fn list(&self) -> Result<Vec<RuleEntry>, EngineError> {
        Ok(Vec::new())
    }
    pub(crate) fn len(&self) -> usize {
        0
    }
    pub(crate) fn lookup(&self, _tuple: &FiveTuple) -> Option<RuleHit<'_>> {
        None
    }
}
