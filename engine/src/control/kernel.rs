//! Flows registered by other drivers through qosmark's kernel interface
//! (`qosmark_abi::kernel`): by 5-tuple, without a socket.
//!
//! A kernel client opens a handle with `Privilege::Kernel` (the driver does this in the
//! interface's `OpenHandle`) and adds flows with [`Engine::add_kernel_flow`]. What differs from
//! `QOSAddSocketToFlow`, and what does not:
//!
//! * **Trust.** Only handles with [`Privilege::Kernel`](qosmark_abi::Privilege::Kernel) may add or change kernel flows (else 5):
//!   a kernel flow names a 5-tuple that nobody confirmed belongs to the caller, which only
//!   code already running in the kernel may do. DSCP values need no allow-list for them
//!   (qos-api.md §8 treats kernel callers like administrators).
//! * **Validation is the IOCTL path's.** With a remote endpoint the flow is checked exactly as
//!   a connected socket with that peer (all 87): the local port must be known (non-zero), the
//!   remote needs an address and a port, an `AF_INET` flow has IPv4 addresses, an `AF_INET6`
//!   flow may carry IPv4-mapped addresses (keyed as IPv4), a concrete local address must be
//!   of the remote's family. DSCP above 63 and 802.1p above 7 are 87. Limits give 1450, memory
//!   8, a 5-tuple already registered (by a socket or a kernel flow) 183. The driver maps these
//!   with the same `EngineError::win32` → `ntstatus_for` as the IOCTL path.
//! * **Local-port flows.** Without a remote endpoint the flow matches every packet from its
//!   local address and port (lookup tier 3, after the 5-tuple tiers — see the `control` module
//!   docs). The local port must be non-zero; an unspecified local address matches any local
//!   address of that family only (`::` does not match IPv4 packets of a dual-stack socket: add
//!   a second flow with `0.0.0.0` for those).
//! * **Marks.** A traffic type takes the table's DSCP; a DSCP is used as given. 802.1p is
//!   requested only when the client asks for it explicitly (kernel flows are non-adaptive, so
//!   the table's 802.1p never applies). [`Engine::change_kernel_flow`] replaces the whole mark.
//! * **Lifetime.** One flow per call, one 5-tuple per flow. [`Engine::remove_kernel_flow`]
//!   removes it; [`Engine::close_handle`] removes every flow of the handle.
//!
//! Every error leaves the state unchanged. The functions allocate only from the global
//! allocator (non-paged pool in the driver) and never block, so the driver may call them at
//! `DISPATCH_LEVEL` under its spin lock.

use super::HandleId;
use crate::{Engine, EngineError};
use qosmark_abi::kernel::{FlowInfo, KernelFlow, KernelMark};
use qosmark_abi::{CounterSnapshot, FlowId, Mark};

/// A kernel flow's mark and counters ([`Engine::query_kernel_flow`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelFlowState {
    /// The resolved mark.
    pub mark: Mark,
    /// Packet counters.
    pub counters: CounterSnapshot,
}

impl KernelFlowState {
    /// The `QOSMARK_FLOW_INFO` answer.
    #[must_use]
    pub fn info(&self) -> FlowInfo {
        FlowInfo::new(self.mark, self.counters)
    }
}

impl Engine {
    /// Registers a kernel flow for `handle` (module docs for every rule).
    ///
    /// # Errors
    /// 6 closed handle; 5 not a kernel handle; 87 bad endpoint, DSCP or 802.1p; 183 key taken;
    /// 1450 limit; 8 no memory.
    pub fn add_kernel_flow(
        &mut self,
        handle: HandleId,
        flow: &KernelFlow,
    ) -> Result<FlowId, EngineError> {
        self.control.add_kernel_flow(handle, flow)
    }

    /// Replaces the mark of a flow of `handle`.
    ///
    /// # Errors
    /// 6 closed handle; 5 not a kernel handle; 1168 flow 0, unknown or another handle's; 87
    /// bad DSCP or 802.1p.
    pub fn change_kernel_flow(
        &mut self,
        handle: HandleId,
        flow_id: FlowId,
        mark: &KernelMark,
    ) -> Result<(), EngineError> {
        self.control.change_kernel_flow(handle, flow_id, mark)
    }

    /// The mark and counters of a flow of `handle`.
    ///
    /// # Errors
    /// 6 closed handle; 1168 flow 0, unknown or another handle's.
    pub fn query_kernel_flow(
        &self,
        handle: HandleId,
        flow_id: FlowId,
    ) -> Result<KernelFlowState, EngineError> {
        self.control
            .flow_state(handle, flow_id)
            .map(|(mark, counters)| KernelFlowState { mark, counters })
    }

    /// Removes a flow of `handle` (`QOSRemoveSocketFromFlow` without a socket).
    ///
    /// # Errors
    /// 6 closed handle; 1168 flow 0, unknown or another handle's.
    pub fn remove_kernel_flow(
        &mut self,
        handle: HandleId,
        flow_id: FlowId,
    ) -> Result<(), EngineError> {
        self.control
            .remove_socket(handle, None, flow_id, &mut self.shapers)
    }
}
