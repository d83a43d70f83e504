//! PLACEHOLDER (skeleton): handles, flows, sockets and `Engine::apply`. Replaced by the real
//! implementation.
use crate::counters::Counters;
use crate::{Engine, EngineError, FiveTuple, Limits};
use qosmark_abi::{Caller, Mark, Request, Response, TrafficTable};

/// Identifies an open handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HandleId(pub u32);

/// A socket-flow match on the packet path.
#[derive(Debug)]
pub struct SocketHit<'a> {
    /// Mark to apply.
    pub mark: Mark,
    /// The flow's counters.
    pub counters: &'a Counters,
}

/// Control-plane state.
#[derive(Debug)]
pub(crate) struct ControlState {
    table: TrafficTable,
}

impl ControlState {
    pub(crate) fn new(_limits: &Limits) -> Self {
        ControlState { table: crate::traffic::default_table() }
    }
    pub(crate) fn lookup(&self, _tuple: &FiveTuple) -> Option<SocketHit<'_>> {
        None
    }
    pub(crate) fn traffic_table(&self) -> &TrafficTable {
        &self.table
    }
}

impl Engine {
    /// Opens a handle for `caller`.
    ///
    /// # Errors
    /// Placeholder.
    pub fn open_handle(&mut self, _caller: Caller) -> Result<HandleId, EngineError> {
        Err(EngineError::NotSupported)
    }
    /// Closes a handle.
    ///
    /// # Errors
    /// Placeholder.
    pub fn close_handle(&mut self, _handle: HandleId) -> Result<(), EngineError> {
        Err(EngineError::NotSupported)
    }
    /// Applies a request.
    ///
    /// # Errors
    /// Placeholder.
    pub fn apply(&mut self, _handle: HandleId, _req: &Request) -> Result<Response, EngineError> {
        Err(EngineError::NotSupported)
    }
}
