//! The classify, notify and flow-delete callbacks (Windows only): one trampoline per role
//! and address family, which gathers inputs, asks `decide` and the engine, and acts.
//!
//! IRQL: the filter engine calls classifyFn, notifyFn and flowDeleteFn at
//! `IRQL <= DISPATCH_LEVEL` (usually DISPATCH). Everything below is non-paged, waits for
//! nothing and allocates nothing but the clone.
//!
//! Locks: the engine's `SpinRwLock` (shared, for classify / report / retire) and the flow
//! registry's `SpinRwLock` (exclusive, for insert / remove) are never held together, and
//! neither is held across a call into WFP (injection may re-enter classify on this CPU;
//! `FwpsFlowRemoveContext0` may call `flow_delete` synchronously). A delayed NBL's clone is
//! handed to `release::Shaping::hold`, which takes the shaping lock with neither of the
//! others held (`docs/packet-path.md` §10).

use core::ffi::c_void;
use core::ptr::{self, NonNull};

use qosmark_abi::{FailOpen, Pcp};
use qosmark_engine::shaper::held_bytes;
use qosmark_engine::{Engine, PacketMeta, Verdict};

use crate::ffi::ndis::{nbl_info, Ieee8021qInfo, NET_BUFFER_LIST};
use crate::ffi::wfp::{
    ale_field, FwpsFlowAssociateContext0, FwpsQueryPacketInjectionState0, FWPS_CLASSIFY_OUT0,
    FWPS_FILTER3, FWPS_INCOMING_METADATA_VALUES0_PREFIX, FWPS_INCOMING_VALUE0,
    FWPS_INCOMING_VALUES0, FWPS_METADATA_FIELD_COMPARTMENT_ID, FWPS_METADATA_FIELD_FLOW_HANDLE,
    FWPS_METADATA_FIELD_PATH_MTU, FWPS_METADATA_FIELD_PROCESS_ID, FWPS_PACKET_INJECTED_BY_SELF,
    FWPS_PACKET_PREVIOUSLY_INJECTED_BY_SELF, FWP_BYTE_ARRAY16_TYPE, FWP_UINT16, FWP_UINT32,
    FWP_UINT8, UNSPECIFIED_COMPARTMENT_ID,
};
use crate::ffi::{nt_success, Guid, KeQueryUnbiasedInterruptTime, NtStatus, STATUS_SUCCESS};

use super::decide::{
    ale_tuple, has_write_right, interrupt_time_to_ns, over_mtu, precheck, rewrite_span,
    write_classify_out, write_inspection_out, AleAddr, NbVerdict, NblPlan, Outcome, HEADER_BYTES,
};
use super::flows::FlowEntry;
use super::packet;
use super::registration::{shared, Shared};
use super::table::{callout, Family, Role};

/// Monotonic time for the engine, in nanoseconds (the owner table's LRU clock; time asleep
/// does not count, which only makes entries look younger after a resume). Any IRQL.
pub(super) fn now_ns() -> u64 {
    // SAFETY: KeQueryUnbiasedInterruptTime takes nothing, only reads the interrupt-time count
    // and is callable at any IRQL (its reference page); exported by ntoskrnl (see ffi).
    interrupt_time_to_ns(unsafe { KeQueryUnbiasedInterruptTime() })
}

/// `FWPS_IS_METADATA_FIELD_PRESENT`.
fn present(meta: &FWPS_INCOMING_METADATA_VALUES0_PREFIX, field: u32) -> bool {
    meta.currentMetadataValues & field == field
}

/// Counts `n` packets left unmarked for `reason`.
fn fail_open(engine: &Engine, reason: FailOpen, n: usize) {
    for _ in 0..n {
        engine.record_fail_open(reason);
    }
}

// ---------------------------------------------------------------------------------------------
// Mark (OUTBOUND_IPPACKET_V4/V6)

/// classifyFn of the mark callouts (`V6` picks the injection handle). `IRQL <= DISPATCH`.
pub(super) unsafe extern "system" fn classify_mark<const V6: bool>(
    _in_fixed_values: *const FWPS_INCOMING_VALUES0,
    in_meta_values: *const FWPS_INCOMING_METADATA_VALUES0_PREFIX,
    layer_data: *mut c_void,
    _classify_context: *const c_void,
    _filter: *const FWPS_FILTER3,
    _flow_context: u64,
    classify_out: *mut FWPS_CLASSIFY_OUT0,
) {
    // SAFETY: WFP passes a valid classifyOut that only this call writes until it returns.
    let Some(out) = (unsafe { classify_out.as_mut() }) else {
        return;
    };
    // SAFETY: WFP passes valid metadata for the duration of the call; we read the prefix.
    let meta = unsafe { in_meta_values.as_ref() };
    let nbl = layer_data.cast::<NET_BUFFER_LIST>();
    let outcome = match (shared(), meta) {
        (Some(shared), Some(meta)) if !nbl.is_null() => {
            // SAFETY: `nbl` is the classified NBL (layerData at the IP-packet layers), live
            // and readable for this call, at <= DISPATCH_LEVEL.
            unsafe { mark_nbl(shared, meta, nbl, out.rights, V6) }
        }
        _ => Outcome::Permit,
    };
    // A PERMIT is written only with the write right; without it nothing is touched.
    let outcome = match outcome {
        Outcome::Permit if !has_write_right(out.rights) => Outcome::Untouched,
        o => o,
    };
    write_classify_out(out, outcome);
}

/// The packet path for one NBL (walkthrough in `docs/packet-path.md`).
///
/// # Safety
/// `nbl` is the live classified NBL, `<= DISPATCH_LEVEL`, called from classify only.
unsafe fn mark_nbl(
    shared: &Shared,
    meta: &FWPS_INCOMING_METADATA_VALUES0_PREFIX,
    nbl: *mut NET_BUFFER_LIST,
    rights: u32,
    v6: bool,
) -> Outcome {
    let handle = if v6 {
        shared.inject_v6
    } else {
        shared.inject_v4
    };
    // 1. Our own clone coming round again: count it, let it pass untouched.
    // SAFETY: `handle` is our live injection handle (destroyed only after the callouts are
    // unregistered); `nbl` is live; no injection context wanted. <= DISPATCH_LEVEL.
    let state = unsafe { FwpsQueryPacketInjectionState0(handle, nbl, ptr::null_mut()) };
    if state == FWPS_PACKET_INJECTED_BY_SELF || state == FWPS_PACKET_PREVIOUSLY_INJECTED_BY_SELF {
        let injected = PacketMeta {
            self_injected: true,
            current_pcp: None,
        };
        let _ = shared
            .globals
            .engine
            .read()
            .classify(&[], &injected, now_ns());
        return Outcome::Permit;
    }

    // 2. Classify every NET_BUFFER under the shared lock.
    // SAFETY: `nbl` is live; slot 4 is declared.
    let tag = Ieee8021qInfo(unsafe { packet::nbl_info_value(nbl, nbl_info::IEEE_8021Q) });
    // SAFETY: `nbl` is the live classified NBL.
    let (plan, over) = unsafe { classify_nbl(shared, meta, nbl, tag) };
    if !plan.needs_clone() && !plan.too_many() {
        return Outcome::Permit;
    }

    // 3. Reasons not to mark at all.
    // SAFETY: `nbl` is live; slot 2 is declared.
    let lso = unsafe { packet::nbl_info_value(nbl, nbl_info::TCP_LARGE_SEND) };
    if let Some(reason) = precheck(&plan, has_write_right(rights), lso, over) {
        let engine = shared.globals.engine.read();
        fail_open(&engine, reason, plan.marks());
        unreserve(&engine, &plan);
        return if reason == FailOpen::NoWriteRight {
            Outcome::Untouched
        } else {
            Outcome::Permit
        };
    }

    // 4. Clone.
    // SAFETY: `nbl` is the live classified NBL.
    let Ok(clone) = (unsafe { packet::clone_nbl(nbl) }) else {
        let engine = shared.globals.engine.read();
        fail_open(&engine, FailOpen::CloneFailed, plan.marks());
        unreserve(&engine, &plan);
        return Outcome::Permit;
    };

    // 5. Rewrite every buffer that needs it, in place (the clone shares the original's
    //    buffers; wfp-driver.md §3 step 7), checksum included, before injecting.
    // SAFETY: `clone` is our clone, not yet injected.
    let (unwritable, refused) = unsafe { rewrite_clone(clone, &plan) };

    // 6. Out-of-band info: checksum / LSO / 802.1Q copied; 802.1p requested if agreed.
    // SAFETY: `nbl` is live and `clone` is ours, not yet injected.
    unsafe { packet::copy_send_info(nbl, clone) };
    if let Some(pcp) = plan.pcp() {
        // SAFETY: `clone` is ours, not yet injected.
        unsafe { packet::set_8021q(clone, tag.with_user_priority(pcp.value()).0) };
    }

    // Rewrite failures are counted now (the engine lock is dropped before any WFP call).
    {
        let engine = shared.globals.engine.read();
        fail_open(&engine, FailOpen::HeaderUnreadable, unwritable);
        fail_open(&engine, FailOpen::RewriteFailed, refused);
    }

    // 7. Inject in the packet's compartment — or, for a delayed NBL, hold the clone until
    //    its departure time (the release timer injects it the same way, with the same
    //    compartment, `release::send`); the original is absorbed either way.
    let compartment = if present(meta, FWPS_METADATA_FIELD_COMPARTMENT_ID) {
        meta.compartmentId
    } else {
        UNSPECIFIED_COMPARTMENT_ID
    };
    let mut clone = clone;
    if let (Some(hold), Some(owned)) = (plan.hold(), NonNull::new(clone)) {
        // SAFETY: our rewritten clone with its out-of-band info, not injected; no lock held.
        let held = unsafe { shared.shaping.hold(owned, compartment, v6, hold) };
        match held {
            // The queue owns the clone; the engine's room is returned when it is sent.
            Ok(()) => return Outcome::Absorb,
            Err(back) => clone = back.as_ptr(),
        }
    }
    // Not held (a mixed NBL; no timer; unload begun; the queue full; a delay beyond the
    // one-second cap): every delayed buffer leaves now with its mark — a shaping fail-open,
    // counted; its room is returned.
    let unheld = plan.delayed().count();
    if unheld > 0 {
        let engine = shared.globals.engine.read();
        unreserve(&engine, &plan);
        fail_open(&engine, FailOpen::ShaperQueueFull, unheld);
    }
    // SAFETY: `handle` matches the NBL's family; `clone` starts at the IP header (the
    // IP-packet layer's data offset); after success we do not touch it.
    let injected = unsafe { packet::inject(handle, compartment, clone) };
    if injected.is_ok() {
        return Outcome::Absorb;
    }
    // The completion routine will not run: the clone is still ours.
    // SAFETY: `clone` came from clone_nbl and was not injected.
    unsafe { packet::free_clone(clone) };
    fail_open(
        &shared.globals.engine.read(),
        FailOpen::InjectFailed,
        plan.marks().saturating_sub(unwritable + refused),
    );
    Outcome::Permit
}

/// Returns the engine's queue room of every delayed buffer of `plan` (the packet is not
/// held: it leaves now or was already permitted).
fn unreserve(engine: &Engine, plan: &NblPlan) {
    for (shaper, bytes) in plan.delayed() {
        engine.shaper_released(shaper, bytes);
    }
}

/// Step 2: the engine's verdict for every `NET_BUFFER` of `nbl`, under the shared engine
/// lock, and whether any buffer exceeds the path MTU.
///
/// # Safety
/// `nbl` is the live classified NBL, `<= DISPATCH_LEVEL`.
unsafe fn classify_nbl(
    shared: &Shared,
    meta: &FWPS_INCOMING_METADATA_VALUES0_PREFIX,
    nbl: *mut NET_BUFFER_LIST,
    tag: Ieee8021qInfo,
) -> (NblPlan, bool) {
    let packet_meta = PacketMeta {
        self_injected: false,
        current_pcp: Pcp::try_new(tag.user_priority()).ok(),
    };
    let path_mtu = if present(meta, FWPS_METADATA_FIELD_PATH_MTU) {
        meta.pathMtu
    } else {
        0
    };
    let now = now_ns();
    let mut plan = NblPlan::default();
    let mut over = false;
    let mut storage = [0u8; HEADER_BYTES];
    let engine = shared.globals.engine.read();
    // SAFETY: `nbl` is live.
    let mut nb = unsafe { packet::first_nb(nbl) };
    while !nb.is_null() {
        // SAFETY: `nb` belongs to the live NBL.
        over |= over_mtu(unsafe { packet::nb_length(nb) }, path_mtu);
        // SAFETY: `nb` belongs to the live NBL; the slice is used only in this iteration.
        let (verdict, room) = match unsafe { packet::read_headers(nb, &mut storage) } {
            Some(bytes) => {
                let verdict = engine.classify(bytes, &packet_meta, now);
                // A delayed buffer took queue room: `shaper::held_bytes` of the bytes
                // classify saw (its IP length, read from the header), returned on release.
                let room = match verdict {
                    Verdict::Delay { .. } => held_bytes(bytes),
                    _ => 0,
                };
                (NbVerdict::Classified(verdict), room)
            }
            None => (NbVerdict::Unreadable, 0),
        };
        if !plan.push_sized(verdict, room) {
            break;
        }
        // SAFETY: `nb` belongs to the live NBL.
        nb = unsafe { packet::next_nb(nb) };
    }
    fail_open(&engine, FailOpen::HeaderUnreadable, plan.unreadable());
    (plan, over)
}

/// Step 5: writes each planned mark into the clone's buffers. Returns how many planned
/// buffers could not be written (headers not contiguous) and how many the engine's rewrite
/// refused; those go out unmarked.
///
/// # Safety
/// `clone` is our clone, not yet injected; `<= DISPATCH_LEVEL`; nothing else writes its
/// (shared) buffers during this classify call.
unsafe fn rewrite_clone(clone: *mut NET_BUFFER_LIST, plan: &NblPlan) -> (usize, usize) {
    let mut unwritable = 0usize;
    let mut refused = 0usize;
    let mut storage = [0u8; HEADER_BYTES];
    // SAFETY: `clone` is ours and live.
    let mut nb = unsafe { packet::first_nb(clone) };
    let mut i = 0usize;
    while !nb.is_null() {
        // A delayed buffer may carry an empty mark (a shaped best-effort flow): nothing to
        // write then.
        if let Some(mark) = plan.mark(i).filter(|m| m.dscp.is_some()) {
            // SAFETY: `nb` is a buffer of our clone; the slice ends with this statement.
            let span = unsafe { packet::read_headers(nb, &mut storage) }.and_then(rewrite_span);
            // SAFETY: `nb` is a buffer of our clone, not yet injected; we are the only
            // writer of these bytes during this classify call.
            match span.and_then(|s| unsafe { packet::header_mut(nb, s) }) {
                Some(bytes) => {
                    if Engine::rewrite(bytes, mark).is_err() {
                        refused += 1;
                    }
                }
                None => unwritable += 1,
            }
        }
        i += 1;
        // SAFETY: `nb` is a buffer of our live clone.
        nb = unsafe { packet::next_nb(nb) };
    }
    (unwritable, refused)
}

// ---------------------------------------------------------------------------------------------
// Flow owners (ALE_AUTH_CONNECT, ALE_FLOW_ESTABLISHED)

/// The incoming value at `index`, if present.
///
/// # Safety
/// `values` is the classify's `inFixedValues`, valid for the call.
unsafe fn incoming(values: &FWPS_INCOMING_VALUES0, index: usize) -> Option<FWPS_INCOMING_VALUE0> {
    if values.incomingValue.is_null() || index >= values.valueCount as usize {
        return None;
    }
    // SAFETY: `incomingValue` points to `valueCount` values valid for the call and
    // `index < valueCount` (checked above), so the offset stays inside that array.
    let p = unsafe { values.incomingValue.add(index) };
    // SAFETY: `p` points to an initialised value of that array; the value is `Copy`.
    Some(unsafe { *p })
}

/// The `PROCESS_ID` metadata, when present and 32-bit.
fn process_id(meta: &FWPS_INCOMING_METADATA_VALUES0_PREFIX) -> Option<u32> {
    if !present(meta, FWPS_METADATA_FIELD_PROCESS_ID) {
        return None;
    }
    u32::try_from(meta.processId).ok()
}

/// The five endpoint values of an ALE classify — protocol, local address, local port,
/// remote address, remote port (`ale_field`) — each `None` when absent or of another type.
///
/// # Safety
/// As [`incoming`].
unsafe fn ale_fields(
    values: &FWPS_INCOMING_VALUES0,
) -> (
    Option<u16>,
    Option<AleAddr>,
    Option<u16>,
    Option<AleAddr>,
    Option<u16>,
) {
    // SAFETY: per the contract; the readers bounds-check the index against `valueCount` and
    // check each value's type tag before reading the union (the same holds for the next four
    // reads).
    let proto = unsafe { ale_small(values, ale_field::IP_PROTOCOL) };
    // SAFETY: as above.
    let local = unsafe { ale_addr(values, ale_field::IP_LOCAL_ADDRESS) };
    // SAFETY: as above.
    let lport = unsafe { ale_small(values, ale_field::IP_LOCAL_PORT) };
    // SAFETY: as above.
    let remote = unsafe { ale_addr(values, ale_field::IP_REMOTE_ADDRESS) };
    // SAFETY: as above.
    let rport = unsafe { ale_small(values, ale_field::IP_REMOTE_PORT) };
    (proto, local, lport, remote, rport)
}

/// Reads an ALE address value of either family.
///
/// # Safety
/// As [`incoming`].
unsafe fn ale_addr(values: &FWPS_INCOMING_VALUES0, index: usize) -> Option<AleAddr> {
    // SAFETY: per the contract.
    let v = unsafe { incoming(values, index) }?.value;
    match v.r#type {
        // SAFETY: the type tag says the union holds `uint32`.
        FWP_UINT32 => Some(AleAddr::V4(unsafe { v.value.uint32 })),
        FWP_BYTE_ARRAY16_TYPE => {
            // SAFETY: the type tag says the union holds `byteArray16`, a pointer valid for the
            // call (checked for null below).
            let p = unsafe { v.value.byte_array16 };
            // SAFETY: non-null `byteArray16` points to 16 readable bytes for the call.
            unsafe { p.as_ref() }.map(|b| AleAddr::V6(*b))
        }
        _ => None,
    }
}

/// Reads a `UINT16` (`port`) or `UINT8` (`protocol`) value.
///
/// # Safety
/// As [`incoming`].
unsafe fn ale_small(values: &FWPS_INCOMING_VALUES0, index: usize) -> Option<u16> {
    // SAFETY: per the contract.
    let v = unsafe { incoming(values, index) }?.value;
    match v.r#type {
        // SAFETY: the type tag says which member is valid.
        FWP_UINT16 => Some(unsafe { v.value.uint16 }),
        // SAFETY: as above.
        FWP_UINT8 => Some(u16::from(unsafe { v.value.uint8 })),
        _ => None,
    }
}

/// classifyFn of the owner callouts: report (5-tuple, pid); at `FLOW_ESTABLISHED` also
/// attach a flow context so the flow's end retires the entry. `IRQL <= DISPATCH`.
pub(super) unsafe extern "system" fn classify_owner<const ESTABLISHED: bool, const V6: bool>(
    in_fixed_values: *const FWPS_INCOMING_VALUES0,
    in_meta_values: *const FWPS_INCOMING_METADATA_VALUES0_PREFIX,
    _layer_data: *mut c_void,
    _classify_context: *const c_void,
    _filter: *const FWPS_FILTER3,
    _flow_context: u64,
    classify_out: *mut FWPS_CLASSIFY_OUT0,
) {
    // SAFETY: WFP passes valid (or null) incoming values for the duration of the call.
    let values = unsafe { in_fixed_values.as_ref() };
    // SAFETY: likewise the metadata, of which we read the declared prefix.
    let meta = unsafe { in_meta_values.as_ref() };
    if let (Some(shared), Some(values), Some(meta)) = (shared(), values, meta) {
        // SAFETY: `values` is valid for the call.
        unsafe { report_owner(shared, values, meta, ESTABLISHED, V6) };
    }
    // SAFETY: WFP passes a valid classifyOut that only this call writes.
    if let Some(out) = unsafe { classify_out.as_mut() } {
        write_inspection_out(out);
    }
}

/// # Safety
/// `values` is the classify's `inFixedValues`, valid for the call; `<= DISPATCH_LEVEL`.
unsafe fn report_owner(
    shared: &Shared,
    values: &FWPS_INCOMING_VALUES0,
    meta: &FWPS_INCOMING_METADATA_VALUES0_PREFIX,
    established: bool,
    v6: bool,
) {
    let Some(pid) = process_id(meta) else {
        return;
    };
    // SAFETY: `values` is this classify's `inFixedValues`, valid for the call.
    let parts = unsafe { ale_fields(values) };
    let (Some(proto), Some(local), Some(lport), Some(remote), Some(rport)) = parts else {
        return;
    };
    let Some(tuple) = ale_tuple(proto as u8, local, lport, remote, rport) else {
        return;
    };
    shared
        .globals
        .engine
        .read()
        .report_flow(&tuple, pid, now_ns());

    if !established || !present(meta, FWPS_METADATA_FIELD_FLOW_HANDLE) {
        return;
    }
    let family = if v6 { Family::V6 } else { Family::V4 };
    let Some(spec) = callout(Role::FlowDelete, family) else {
        return;
    };
    let callout_id = shared.callout_id(spec.index);
    if callout_id == 0 {
        return;
    }
    // The flow-delete callouts' layer (a run-time id every flow-delete spec carries).
    let Some(layer) = spec.layer_id else {
        return;
    };
    let entry = FlowEntry {
        flow_id: meta.flowHandle,
        layer_id: layer,
        callout_id,
        tuple,
        pid,
    };
    let Some(context) = shared.flows.write().insert(entry) else {
        return;
    };
    // SAFETY: flow handle from this classify's metadata; our registered flow-delete callout
    // (which has a flowDeleteFn) at the layer it lives at; non-zero context. The registry lock
    // is not held (the call may fail, and flow_delete takes it). <= DISPATCH_LEVEL.
    let status = unsafe { FwpsFlowAssociateContext0(meta.flowHandle, layer, callout_id, context) };
    if !nt_success(status) {
        // Not attached (e.g. STATUS_OBJECT_NAME_EXISTS): forget our slot; the owner entry
        // stays until evicted or replaced.
        let _ = shared.flows.write().remove(context);
    }
}

/// classifyFn of the endpoint-closure callouts (`ALE_ENDPOINT_CLOSURE_V4/V6`): a socket of the
/// process in the `PROCESS_ID` metadata was closed; its entries leave their flows
/// (`Engine::endpoint_closed`: protocol, local address and port, and the remote when the
/// socket was connected). If any did, held packets of a shaper that went with them are
/// released and held `WatchFlow`s are judged again. Never blocks or changes the classify
/// (inspection: `FWP_ACTION_CONTINUE`). `IRQL <= DISPATCH`; the engine's exclusive lock is
/// taken with no other lock of ours held, and no classify of ours holds it across a call into
/// WFP (module docs), so it cannot wait on this CPU.
pub(super) unsafe extern "system" fn classify_closure(
    in_fixed_values: *const FWPS_INCOMING_VALUES0,
    in_meta_values: *const FWPS_INCOMING_METADATA_VALUES0_PREFIX,
    _layer_data: *mut c_void,
    _classify_context: *const c_void,
    _filter: *const FWPS_FILTER3,
    _flow_context: u64,
    classify_out: *mut FWPS_CLASSIFY_OUT0,
) {
    // SAFETY: WFP passes valid (or null) incoming values for the duration of the call.
    let values = unsafe { in_fixed_values.as_ref() };
    // SAFETY: likewise the metadata, of which we read the declared prefix.
    let meta = unsafe { in_meta_values.as_ref() };
    if let (Some(shared), Some(values), Some(meta)) = (shared(), values, meta) {
        // SAFETY: `values` is valid for the call.
        unsafe { endpoint_closed(shared, values, meta) };
    }
    // SAFETY: WFP passes a valid classifyOut that only this call writes.
    if let Some(out) = unsafe { classify_out.as_mut() } {
        write_inspection_out(out);
    }
}

/// # Safety
/// `values` is the classify's `inFixedValues`, valid for the call; `<= DISPATCH_LEVEL`.
unsafe fn endpoint_closed(
    shared: &Shared,
    values: &FWPS_INCOMING_VALUES0,
    meta: &FWPS_INCOMING_METADATA_VALUES0_PREFIX,
) {
    let Some(pid) = process_id(meta) else {
        return;
    };
    // SAFETY: `values` is this classify's `inFixedValues`, valid for the call; the
    // endpoint-closure fields have the indexes of `ale_field` (its docs). An unconnected
    // socket has no remote (absent, or zero).
    let (proto, local, lport, remote, rport) = unsafe { ale_fields(values) };
    let (Some(proto), Some(local), Some(lport)) = (proto, local, lport) else {
        return;
    };
    let zero = if matches!(local, AleAddr::V6(_)) {
        AleAddr::V6([0; 16])
    } else {
        AleAddr::V4(0)
    };
    let (remote, rport) = match (remote, rport) {
        (Some(r), Some(p)) => (r, p),
        _ => (zero, 0),
    };
    let Some(tuple) = ale_tuple(proto as u8, local, lport, remote, rport) else {
        return;
    };
    let remote = (tuple.remote.port() != 0).then_some(tuple.remote);
    let removed =
        shared
            .globals
            .engine
            .write()
            .endpoint_closed(tuple.protocol, tuple.local, remote, pid);
    if removed > 0 {
        crate::wfp::release_dead_shapers();
        crate::device::recheck_held(shared.globals);
    }
}

/// classifyFn of the flow-delete callouts: nothing to inspect. `IRQL <= DISPATCH`.
pub(super) unsafe extern "system" fn classify_continue(
    _in_fixed_values: *const FWPS_INCOMING_VALUES0,
    _in_meta_values: *const FWPS_INCOMING_METADATA_VALUES0_PREFIX,
    _layer_data: *mut c_void,
    _classify_context: *const c_void,
    _filter: *const FWPS_FILTER3,
    _flow_context: u64,
    classify_out: *mut FWPS_CLASSIFY_OUT0,
) {
    // SAFETY: WFP passes a valid classifyOut that only this call writes.
    if let Some(out) = unsafe { classify_out.as_mut() } {
        write_inspection_out(out);
    }
}

/// flowDeleteFn of the flow-delete callouts: the flow ended (or unload removed the
/// context). Retires the owner entry; when the flow was a TCP connection that WFP ended, the
/// socket registered for it leaves its flow (`flows` module docs, `Engine::connection_closed`):
/// then the held packets of a shaper that went with it are released and held `WatchFlow`s
/// (GQoS `FD_QOS`) are judged again, so a wait completes when its TCP socket is closed.
/// `IRQL <= DISPATCH`. Locks one at a time, none across a call out: the registry (spin),
/// then the engine (spin; shared, then exclusive), then `release_dead_shapers` and
/// `recheck_held` take what they take themselves (both `<= DISPATCH_LEVEL`). WFP may call
/// this synchronously from `FwpsFlowRemoveContext0` (only at unload, with no lock of ours
/// held) or from its own flow teardown; no classify of ours holds an engine lock while it
/// calls into WFP (module docs), so the exclusive lock cannot wait on this CPU.
pub(super) unsafe extern "system" fn flow_delete(
    _layer_id: u16,
    _callout_id: u32,
    flow_context: u64,
) {
    let Some(shared) = shared() else {
        return;
    };
    let taken = shared.flows.write().take(flow_context);
    let Some((e, connection_ended)) = taken else {
        return;
    };
    let _ = shared.globals.engine.read().retire_flow(&e.tuple, e.pid);
    if !connection_ended {
        return;
    }
    let left = shared
        .globals
        .engine
        .write()
        .connection_closed(&e.tuple, e.pid);
    if left.is_some() {
        crate::wfp::release_dead_shapers();
        crate::device::recheck_held(shared.globals);
    }
}

/// notifyFn of every callout: filter add/delete needs no action. `IRQL <= DISPATCH`.
pub(super) unsafe extern "system" fn notify(
    _notify_type: i32,
    _filter_key: *const Guid,
    _filter: *mut FWPS_FILTER3,
) -> NtStatus {
    STATUS_SUCCESS
}
