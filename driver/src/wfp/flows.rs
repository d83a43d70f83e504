//! The registry of flow contexts we attached (`FwpsFlowAssociateContext0`), so that
//! `flowDeleteFn` can retire the right owner-table entry and unload can remove every context
//! before unregistering the callouts (a callout with contexts left cannot be unregistered:
//! `STATUS_DEVICE_BUSY`).
//!
//! Fixed capacity, allocated once at start (`PASSIVE_LEVEL`); inserting and removing never
//! allocate, so both are fine at `DISPATCH_LEVEL` under the registry's spin lock. The flow
//! context value handed to WFP is `generation << 32 | (slot + 1)`: never 0 (WFP refuses 0),
//! and a stale value (slot reused since) is recognised and ignored. A full registry means
//! the flow simply gets no context (its owner entry then leaves the table by eviction or by
//! a newer flow of the same tuple; the engine's table is bounded either way).
//!
//! Unload first [`FlowRegistry::close`]s the registry: from then on `insert` refuses, so no
//! classify can attach a new context while unload removes the existing ones (ddproxy sets its
//! `gDriverUnloading` under the flow-list lock and checks it there before
//! `FwpsFlowAssociateContext`, for the same reason). A classify that inserted just before the
//! close still associates; unload's removal loop catches it on its next pass.
//!
//! A context also tells when a registered socket's connection ended ([`FlowRegistry::take`]):
//! a TCP ALE flow lives exactly as long as its connected socket (Microsoft's "ALE Stateful
//! Filtering" page, learn.microsoft.com/windows/win32/fwp/ale-stateful-filtering), so WFP
//! ending one means the socket was closed or the connection torn down, and the engine drops
//! the socket from its QOS2 / GQoS flow (`Engine::connection_closed`), as `qosmarkd` does on
//! Linux. UDP ALE flows end after an idle timeout that callouts may change ("ALE Flow
//! Customization", `FWP_CLASSIFY_OPTION_UNICAST_LIFETIME`), not when the socket closes, so
//! their end says nothing about the socket and is not passed on. Nor is a context that unload
//! removed: the connection lives on.

use qosmark_abi::Protocol;

use alloc::vec::Vec;

use qosmark_engine::FiveTuple;

/// A flow that carries one of our contexts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FlowEntry {
    /// `FWPS_METADATA_FIELD_FLOW_HANDLE` of the flow.
    pub(crate) flow_id: u64,
    /// Layer the context was associated at.
    pub(crate) layer_id: u16,
    /// Callout the context belongs to.
    pub(crate) callout_id: u32,
    /// The flow's 5-tuple (as reported to the engine).
    pub(crate) tuple: FiveTuple,
    /// Its owner.
    pub(crate) pid: u32,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    generation: u32,
    entry: Option<FlowEntry>,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct FlowRegistry {
    slots: Vec<Slot>,
    /// Indexes of free slots (a stack).
    free: Vec<u32>,
    /// Unload has begun: no more inserts.
    closed: bool,
}

impl FlowRegistry {
    /// A registry of `capacity` slots (at most `u32::MAX - 1`); `None` if the memory cannot be
    /// had. Call at `PASSIVE_LEVEL`.
    pub(crate) fn with_capacity(capacity: usize) -> Option<Self> {
        let capacity = capacity.min(u32::MAX as usize - 1);
        let mut slots = Vec::new();
        slots.try_reserve_exact(capacity).ok()?;
        slots.resize(
            capacity,
            Slot {
                generation: 0,
                entry: None,
            },
        );
        let mut free = Vec::new();
        free.try_reserve_exact(capacity).ok()?;
        // Pop order: slot 0 first.
        free.extend((0..capacity as u32).rev());
        Some(FlowRegistry {
            slots,
            free,
            closed: false,
        })
    }

    /// Stores `entry`; the context value to associate, or `None` when full or closed.
    pub(crate) fn insert(&mut self, entry: FlowEntry) -> Option<u64> {
        if self.closed {
            return None;
        }
        let index = self.free.pop()?;
        let slot = self.slots.get_mut(index as usize)?;
        slot.generation = slot.generation.wrapping_add(1);
        slot.entry = Some(entry);
        Some((u64::from(slot.generation) << 32) | (u64::from(index) + 1))
    }

    /// Removes and returns the entry of `context`, if it is live.
    pub(crate) fn remove(&mut self, context: u64) -> Option<FlowEntry> {
        let index = (context & 0xffff_ffff).checked_sub(1)? as u32;
        let generation = (context >> 32) as u32;
        let slot = self.slots.get_mut(index as usize)?;
        if slot.generation != generation {
            return None;
        }
        let entry = slot.entry.take()?;
        // Capacity for every index was reserved at construction: this push cannot allocate.
        self.free.push(index);
        Some(entry)
    }

    /// Removes the entry of `context` (as [`FlowRegistry::remove`]) for `flowDeleteFn`, and
    /// says whether its end is the end of a registered socket's connection (module docs): a
    /// TCP flow, ended by WFP rather than removed by our unload (the registry is closed then).
    pub(crate) fn take(&mut self, context: u64) -> Option<(FlowEntry, bool)> {
        let entry = self.remove(context)?;
        let connection_ended = !self.closed && entry.tuple.protocol == Protocol::Tcp;
        Some((entry, connection_ended))
    }

    /// Refuses every later `insert` (unload). Removing still works.
    pub(crate) fn close(&mut self) {
        self.closed = true;
    }

    /// Live entries.
    pub(crate) fn live(&self) -> impl Iterator<Item = &FlowEntry> {
        self.slots.iter().filter_map(|s| s.entry.as_ref())
    }

    /// Number of live entries.
    pub(crate) fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn entry(flow_id: u64) -> FlowEntry {
        FlowEntry {
            flow_id,
            layer_id: 16,
            callout_id: 7,
            tuple: FiveTuple::new(
                Protocol::Tcp,
                "10.0.0.1:40000".parse().unwrap(),
                "192.0.2.1:443".parse().unwrap(),
            ),
            pid: 42,
        }
    }

    #[test]
    fn insert_remove_and_stale_contexts() {
        let mut r = FlowRegistry::with_capacity(2).unwrap();
        let a = r.insert(entry(1)).unwrap();
        let b = r.insert(entry(2)).unwrap();
        assert_ne!(a, 0);
        assert_ne!(a, b);
        assert!(r.insert(entry(3)).is_none(), "full");
        assert_eq!(r.len(), 2);
        assert_eq!(r.remove(a), Some(entry(1)));
        assert_eq!(r.remove(a), None, "twice");
        // The slot is reused with a new generation: the old context is stale.
        let c = r.insert(entry(3)).unwrap();
        assert_ne!(c, a);
        assert_eq!(r.remove(a), None);
        assert_eq!(r.live().count(), 2);
        assert_eq!(r.remove(c), Some(entry(3)));
        assert_eq!(r.remove(b), Some(entry(2)));
        assert_eq!(r.len(), 0);
        // Garbage contexts.
        for bad in [0u64, 3, u64::MAX, 1 << 32] {
            assert_eq!(r.remove(bad), None, "{bad:#x}");
        }
    }

    /// The memory figure `registration::FLOW_CONTEXTS` documents (x86-64).
    #[test]
    fn slot_size_is_as_documented() {
        assert_eq!(core::mem::size_of::<Slot>(), 96);
    }

    #[test]
    fn only_a_tcp_flow_ended_by_wfp_ends_a_connection() {
        let mut r = FlowRegistry::with_capacity(4).unwrap();
        let tcp = r.insert(entry(1)).unwrap();
        let mut u = entry(2);
        u.tuple.protocol = Protocol::Udp;
        let udp = r.insert(u).unwrap();
        let late = r.insert(entry(3)).unwrap();
        assert_eq!(r.take(tcp), Some((entry(1), true)));
        assert_eq!(r.take(tcp), None, "twice");
        assert_eq!(
            r.take(udp),
            Some((u, false)),
            "UDP flows end on idle timeouts"
        );
        r.close();
        assert_eq!(r.take(late), Some((entry(3), false)), "removed by unload");
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn a_closed_registry_refuses_inserts_but_still_removes() {
        let mut r = FlowRegistry::with_capacity(4).unwrap();
        let a = r.insert(entry(1)).unwrap();
        r.close();
        assert!(r.insert(entry(2)).is_none(), "closed");
        assert_eq!(r.len(), 1);
        assert_eq!(r.live().count(), 1);
        assert_eq!(r.remove(a), Some(entry(1)));
        assert_eq!(r.len(), 0);
        assert!(r.insert(entry(3)).is_none(), "still closed with free slots");
    }

    #[test]
    fn remove_never_grows_the_free_list() {
        let mut r = FlowRegistry::with_capacity(8).unwrap();
        let cap = r.free.capacity();
        for round in 0..100u64 {
            let ctx: Vec<u64> = (0..8)
                .map(|i| r.insert(entry(round * 8 + i)).unwrap())
                .collect();
            for c in ctx {
                assert!(r.remove(c).is_some());
            }
        }
        assert_eq!(r.free.capacity(), cap);
        assert!(FlowRegistry::with_capacity(0)
            .unwrap()
            .insert(entry(1))
            .is_none());
    }
}
