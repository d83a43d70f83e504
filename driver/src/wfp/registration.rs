//! [`Wfp`]: everything the driver registers with WFP, created by [`Wfp::start`] and torn
//! down by `Drop` in the documented order (Windows only). `docs/packet-path.md` has the
//! orders and IRQLs; this module is their implementation.
//!
//! Objects and their owners:
//! * [`Shared`] (one heap block, published through [`SHARED`] for the callbacks, which get
//!   no context pointer): the injection handles, the run-time callout ids, the flow-context
//!   registry and the dynamic session handle.
//! * [`Session`] / [`Transaction`]: RAII for `FwpmEngineOpen0`/`Close0` and
//!   `FwpmTransactionBegin0`/`Abort0` (abort unless `commit` was called).
//! * [`Wfp`]: the BFE subscription and the ownership of `Shared`.

use alloc::vec::Vec;
use core::ffi::c_void;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};

use wdk_sys::{NTSTATUS, PDEVICE_OBJECT};

use crate::ffi::wfp::{
    FwpmBfeStateGet0, FwpmBfeStateSubscribeChanges0, FwpmBfeStateUnsubscribeChanges0,
    FwpmCalloutAdd0, FwpmEngineClose0, FwpmEngineOpen0, FwpmFilterAdd0, FwpmSubLayerAdd0,
    FwpmTransactionAbort0, FwpmTransactionBegin0, FwpmTransactionCommit0, FwpsCalloutRegister3,
    FwpsCalloutUnregisterById0, FwpsFlowRemoveContext0, FwpsInjectionHandleCreate0,
    FwpsInjectionHandleDestroy0, AF_INET, AF_INET6, FWPM_ACTION0, FWPM_CALLOUT0,
    FWPM_CONDITION_FLAGS, FWPM_DISPLAY_DATA0, FWPM_FILTER0, FWPM_FILTER0_CONTEXT,
    FWPM_FILTER_CONDITION0, FWPM_SERVICE_RUNNING, FWPM_SERVICE_STOP_PENDING, FWPM_SESSION0,
    FWPM_SESSION_FLAG_DYNAMIC, FWPM_SUBLAYER0, FWPS_CALLOUT3, FWPS_CALLOUT_CLASSIFY_FN3,
    FWPS_INJECTION_TYPE_NETWORK, FWP_BYTE_BLOB, FWP_CONDITION_FLAG_IS_LOOPBACK,
    FWP_CONDITION_VALUE0, FWP_EMPTY, FWP_MATCH_FLAGS_NONE_SET, FWP_UINT32, FWP_VALUE0,
    FWP_VALUE_UNION, RPC_C_AUTHN_WINNT,
};
use crate::ffi::{
    nt_success, Handle, KeDelayExecutionThread, NtStatus, STATUS_DEVICE_BUSY, STATUS_FWP_IN_USE,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_UNSUCCESSFUL,
};
use crate::globals::Globals;
use crate::lock::SpinRwLock;

use super::callouts;
use super::flows::FlowRegistry;
use super::gate::Gate;
use super::release::{drain_release_gate, Shaping, RELEASE_GATE};
use super::table::{
    widen, CalloutSpec, Family, Role, CALLOUTS, CALLOUT_COUNT, MAX_NAME_UNITS, PROVIDER_NAME,
    SUBLAYER_KEY, SUBLAYER_WEIGHT,
};

/// Flow contexts we can hold at once. Each registry slot is 96 bytes on x64 plus 4 in the
/// free list (`flows` tests pin the slot size): about 6.3 MiB of non-paged pool, allocated
/// once at start. A full registry only costs the flows beyond it their flow-delete context.
const FLOW_CONTEXTS: usize = 65_536;

/// Held NBLs (delayed packets) the driver can hold at once, over all shapers. The engine
/// bounds each shaper's queue in packets and bytes; this bounds the sum, preallocated at
/// start (`docs/packet-path.md`, Shaping: memory). A full queue sends a delayed packet at
/// once with its mark, counted.
const HELD_NBLS: usize = 8_192;

/// State the callbacks reach through [`SHARED`].
pub(crate) struct Shared {
    pub(crate) globals: &'static Globals,
    /// Network injection handle for IPv4 (`FwpsInjectionHandleCreate0(AF_INET, NETWORK)`).
    pub(crate) inject_v4: Handle,
    /// The same for IPv6.
    pub(crate) inject_v6: Handle,
    /// Run-time ids of the registered callouts, by [`CalloutSpec::index`]; 0 = not registered.
    callout_ids: [AtomicU32; CALLOUT_COUNT],
    /// Flow contexts we attached.
    pub(crate) flows: SpinRwLock<FlowRegistry>,
    /// The dynamic session while BFE runs (null otherwise).
    session: AtomicPtr<c_void>,
    /// An `add_objects` is running (`start` and the BFE callback can race right after
    /// subscribing: the first one adds, the other returns).
    adding: AtomicBool,
    /// Held clones of delayed packets and their release timer.
    pub(crate) shaping: Shaping,
}

// SAFETY: the raw handles in `Shared` are kernel handles usable from any thread; every
// mutable part is an atomic or behind a `SpinRwLock`.
unsafe impl Sync for Shared {}
// SAFETY: as above; `Shared` is created at PASSIVE_LEVEL and freed at PASSIVE_LEVEL on
// possibly another thread (DriverEntry vs. unload).
unsafe impl Send for Shared {}

impl Shared {
    /// The run-time id of callout `index` (0 if unregistered).
    pub(crate) fn callout_id(&self, index: usize) -> u32 {
        self.callout_ids
            .get(index)
            .map_or(0, |id| id.load(Ordering::Acquire))
    }
}

/// Admits the BFE state callback to `Shared` (see [`Gate`]). A `static`, so it outlives the
/// `Shared` it guards: unload closes it before unsubscribing and waits for it to drain.
static BFE_GATE: Gate = Gate::new();

/// The published [`Shared`]: set by `start` once it is complete, cleared by `Drop` only after
/// no callback can run any more (callouts unregistered, injections completed).
static SHARED: AtomicPtr<Shared> = AtomicPtr::new(ptr::null_mut());

/// The published state, for callbacks.
pub(crate) fn shared() -> Option<&'static Shared> {
    let p = SHARED.load(Ordering::Acquire);
    // SAFETY: a non-null value was stored (Release) after `Shared` was fully initialised and
    // stays valid until `Wfp::drop` clears it — which happens only after the shaping release
    // timer was deleted (ExDeleteTimer with Wait: no timer callback runs afterwards),
    // `release_dead_shapers`' gate was drained, every callout is unregistered (so no
    // classify, notify or flowDeleteFn can start) and both injection handles are destroyed
    // (which returns after every completion ran). That no classify is
    // still *running* once FwpsCalloutUnregisterById0 has succeeded is assumed, as every
    // Microsoft sample assumes it; the reference page does not say (packet-path.md VM item
    // 12). The BFE callback does not use this function. Any IRQL.
    unsafe { p.as_ref() }
}

/// Everything registered with WFP. Created at `PASSIVE_LEVEL` from `DriverEntry`, dropped at
/// `PASSIVE_LEVEL` from unload (drvdev's `entry.rs`).
pub(crate) struct Wfp {
    shared: NonNull<Shared>,
    /// `FwpmBfeStateSubscribeChanges0` handle (null if not subscribed).
    bfe_subscription: Handle,
}

impl Wfp {
    /// Registers the callouts, creates the injection handles, subscribes to BFE state and —
    /// if BFE runs — adds sublayer, callouts and filters in one transaction on a dynamic
    /// session. `PASSIVE_LEVEL`, after the device exists. On error everything done so far is
    /// undone (by `Drop`).
    ///
    /// # Errors
    /// The failing call's NTSTATUS (`STATUS_INSUFFICIENT_RESOURCES` for memory).
    pub(crate) fn start(
        device: PDEVICE_OBJECT,
        globals: &'static Globals,
    ) -> Result<Wfp, NTSTATUS> {
        let flows =
            FlowRegistry::with_capacity(FLOW_CONTEXTS).ok_or(STATUS_INSUFFICIENT_RESOURCES)?;
        let shaping = Shaping::with_capacity(HELD_NBLS).ok_or(STATUS_INSUFFICIENT_RESOURCES)?;
        let shared = Shared {
            globals,
            inject_v4: ptr::null_mut(),
            inject_v6: ptr::null_mut(),
            callout_ids: [const { AtomicU32::new(0) }; CALLOUT_COUNT],
            flows: SpinRwLock::new(flows),
            session: AtomicPtr::new(ptr::null_mut()),
            adding: AtomicBool::new(false),
            shaping,
        };
        // A fallible heap block: a one-element Vec turned into a box without reallocation.
        let mut v = Vec::new();
        v.try_reserve_exact(1)
            .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        v.push(shared);
        let boxed = v.into_boxed_slice();
        let raw = alloc::boxed::Box::into_raw(boxed).cast::<Shared>();
        let shared = NonNull::new(raw).ok_or(STATUS_INSUFFICIENT_RESOURCES)?;
        let mut wfp = Wfp {
            shared,
            bfe_subscription: ptr::null_mut(),
        };

        // 1. Injection handles (v4, v6), before anything can classify.
        {
            // SAFETY: `shared` is ours and not yet published: no other reference exists.
            let s = unsafe { wfp.shared.as_mut() };
            s.inject_v4 = create_injection_handle(AF_INET)?;
            s.inject_v6 = create_injection_handle(AF_INET6)?;
        }
        // 2. Publish, then start the shaping release timer (its callback reaches `Shared`
        //    through `shared()`; without a timer nothing is ever held) and admit
        //    `release_dead_shapers`, then register the callouts (they may be classified as
        //    soon as filters exist, which is only after step 4).
        SHARED.store(wfp.shared.as_ptr(), Ordering::Release);
        wfp.shared().shaping.start_timer();
        RELEASE_GATE.open();
        for spec in &CALLOUTS {
            let id = register_callout(device.cast::<c_void>(), spec)?;
            if let Some(slot) = wfp.shared().callout_ids.get(spec.index) {
                slot.store(id, Ordering::Release);
            }
        }
        // 3. Subscribe to BFE state, then read it (in this order, so no transition is missed).
        BFE_GATE.open();
        let mut subscription: Handle = ptr::null_mut();
        // SAFETY: PASSIVE_LEVEL; `device` is our device object; the callback is our code and
        // reaches its context (the published `Shared`) only through `BFE_GATE`, which `Drop`
        // closes and drains before it frees `Shared`.
        let status = unsafe {
            FwpmBfeStateSubscribeChanges0(
                device.cast::<c_void>(),
                bfe_state_changed,
                wfp.shared.as_ptr().cast::<c_void>(),
                &raw mut subscription,
            )
        };
        if !nt_success(status) {
            return Err(status);
        }
        wfp.bfe_subscription = subscription;
        // SAFETY: callable at <= DISPATCH_LEVEL; no arguments.
        if unsafe { FwpmBfeStateGet0() } == FWPM_SERVICE_RUNNING {
            // 4. Sublayer + callouts + filters in one transaction.
            add_objects(wfp.shared())?;
        }
        Ok(wfp)
    }

    fn shared(&self) -> &Shared {
        // SAFETY: `self.shared` is valid from construction until `Drop` frees it.
        unsafe { self.shared.as_ref() }
    }
}

impl Drop for Wfp {
    /// Unload order (wfp-driver.md §11), `PASSIVE_LEVEL`.
    fn drop(&mut self) {
        // 0. Shaping: keep `release_dead_shapers` out (close its gate, wait for one inside),
        //    then close the held set (classify sends delayed packets at once from now on),
        //    delete the release timer (waiting for a running callback) and inject every held
        //    clone — while the injection handles still exist (step 5 destroys them).
        RELEASE_GATE.close();
        drain_release_gate();
        self.shared().shaping.shutdown(self.shared());
        // 1. No more BFE callbacks: close the gate (a callback arriving now leaves at once),
        //    unsubscribe, then wait for a callback still inside (its add_objects may be about
        //    to store a session). The reference page does not say that unsubscribing waits
        //    for a running callback, so the gate does.
        BFE_GATE.close();
        if !self.bfe_subscription.is_null() {
            // SAFETY: our subscription handle, PASSIVE_LEVEL, not called from the callback.
            let _ = unsafe { FwpmBfeStateUnsubscribeChanges0(self.bfe_subscription) };
            self.bfe_subscription = ptr::null_mut();
        }
        while !BFE_GATE.is_drained() {
            sleep_10ms();
        }
        let shared = self.shared();
        // 2. Close the dynamic session: WFP deletes our filters, callouts and sublayer.
        close_session(shared);
        // 3 + 4. Stop new flow contexts (ddproxy's unloading flag, checked under the registry
        //    lock by `insert`), remove every context, then unregister; a callout that still
        //    has contexts answers STATUS_DEVICE_BUSY: remove again (a flowDeleteFn may be
        //    pending asynchronously), wait 10 ms, retry. Unload must not return before all
        //    are gone.
        shared.flows.write().close();
        loop {
            remove_flow_contexts(shared);
            let mut busy = false;
            for slot in &shared.callout_ids {
                let id = slot.load(Ordering::Acquire);
                if id == 0 {
                    continue;
                }
                // SAFETY: our registered callout id; PASSIVE_LEVEL.
                let status = unsafe { FwpsCalloutUnregisterById0(id) };
                // DEVICE_BUSY: flow contexts left; FWP_IN_USE: a (un)registration in progress
                // in another thread. Both are retried; any other status (success,
                // CALLOUT_NOT_FOUND, an error) ends the retries for this callout.
                if status == STATUS_DEVICE_BUSY || status == STATUS_FWP_IN_USE {
                    busy = true;
                } else {
                    slot.store(0, Ordering::Release);
                }
            }
            if !busy {
                break;
            }
            sleep_10ms();
        }
        // 5. Destroy the injection handles: returns after every pending injection completed,
        //    i.e. after our completion routines freed every clone.
        for handle in [shared.inject_v4, shared.inject_v6] {
            if !handle.is_null() {
                // SAFETY: our handle, PASSIVE_LEVEL, destroyed once.
                let _ = unsafe { FwpsInjectionHandleDestroy0(handle) };
            }
        }
        // 6. No callback can run now: unpublish and free.
        SHARED.store(ptr::null_mut(), Ordering::Release);
        let raw = ptr::slice_from_raw_parts_mut(self.shared.as_ptr(), 1);
        // SAFETY: `raw` is the one-element boxed slice made in `start` (same pointer, same
        // length), no reference to it remains (unpublished above; `shared` is not used after
        // this point), and it is freed exactly once.
        drop(unsafe { alloc::boxed::Box::from_raw(raw) });
    }
}

/// Sleeps 10 ms. `PASSIVE_LEVEL` (unload's system thread).
fn sleep_10ms() {
    // Relative time (negative), in 100 ns units.
    let interval: i64 = -100_000;
    // SAFETY: called only from `Wfp::drop` at PASSIVE_LEVEL, where the thread may wait;
    // KernelMode (0), not alertable (0); `interval` is a live local for the whole call.
    let _ = unsafe { KeDelayExecutionThread(0, 0, &raw const interval) };
}

/// `FwpsInjectionHandleCreate0(family, FWPS_INJECTION_TYPE_NETWORK)`. `PASSIVE_LEVEL`.
fn create_injection_handle(family: u16) -> Result<Handle, NtStatus> {
    let mut handle: Handle = ptr::null_mut();
    // SAFETY: PASSIVE_LEVEL; `handle` is a valid out pointer.
    let status =
        unsafe { FwpsInjectionHandleCreate0(family, FWPS_INJECTION_TYPE_NETWORK, &raw mut handle) };
    if nt_success(status) && !handle.is_null() {
        Ok(handle)
    } else if nt_success(status) {
        Err(STATUS_UNSUCCESSFUL)
    } else {
        Err(status)
    }
}

/// The classify trampoline of a table entry.
fn classify_fn(spec: &CalloutSpec) -> FWPS_CALLOUT_CLASSIFY_FN3 {
    match (spec.role, spec.family) {
        (Role::Mark, Family::V4) => callouts::classify_mark::<false>,
        (Role::Mark, Family::V6) => callouts::classify_mark::<true>,
        (Role::ConnectOwner, Family::V4) => callouts::classify_owner::<false, false>,
        (Role::ConnectOwner, Family::V6) => callouts::classify_owner::<false, true>,
        (Role::EstablishedOwner, Family::V4) => callouts::classify_owner::<true, false>,
        (Role::EstablishedOwner, Family::V6) => callouts::classify_owner::<true, true>,
        (Role::FlowDelete, _) => callouts::classify_continue,
        // One function for both families: the incoming values carry the address family.
        (Role::EndpointClosure, _) => callouts::classify_closure,
    }
}

/// `FwpsCalloutRegister3` for one table entry. `PASSIVE_LEVEL`. Works while BFE is stopped.
fn register_callout(device: *mut c_void, spec: &CalloutSpec) -> Result<u32, NtStatus> {
    let callout = FWPS_CALLOUT3 {
        calloutKey: spec.key,
        flags: spec.callout_flags,
        classifyFn: Some(classify_fn(spec)),
        notifyFn: Some(callouts::notify),
        flowDeleteFn: match spec.role {
            Role::FlowDelete => Some(callouts::flow_delete),
            Role::Mark | Role::ConnectOwner | Role::EstablishedOwner | Role::EndpointClosure => {
                None
            }
        },
    };
    let mut id = 0u32;
    // SAFETY: PASSIVE_LEVEL; `device` is our device object; `callout` and `id` live across
    // the call (WFP copies the record).
    let status = unsafe { FwpsCalloutRegister3(device, &raw const callout, &raw mut id) };
    if nt_success(status) {
        Ok(id)
    } else {
        Err(status)
    }
}

/// `FWPM_SERVICE_STATE_CHANGE_CALLBACK0`: BFE started → add our objects on a new dynamic
/// session; BFE stopping → close the session (its objects are gone anyway).
///
/// IRQL: the reference page does not state it; the `WFPSampler` sample annotates its callback
/// `_IRQL_requires_(PASSIVE_LEVEL)` and opens the engine from it, as we do (`Fwpm*` need
/// `PASSIVE_LEVEL`). VM item.
unsafe extern "system" fn bfe_state_changed(context: *mut c_void, new_state: i32) {
    let Some(_inside) = BFE_GATE.enter() else {
        return; // unload has begun: `context` may be freed soon, do not touch it
    };
    // SAFETY: `context` is the `Shared` that `start` subscribed with. We are inside
    // `BFE_GATE`, and `Wfp::drop` closes the gate and waits for it to drain before it closes
    // the session or frees `Shared`, so `Shared` is alive until `_inside` drops.
    let Some(shared) = (unsafe { context.cast::<Shared>().as_ref() }) else {
        return;
    };
    if new_state == FWPM_SERVICE_RUNNING {
        let _ = add_objects(shared);
    } else if new_state == FWPM_SERVICE_STOP_PENDING {
        close_session(shared);
    }
}

/// Closes the dynamic session, if one is open. `PASSIVE_LEVEL`.
fn close_session(shared: &Shared) {
    let h = shared.session.swap(ptr::null_mut(), Ordering::AcqRel);
    if !h.is_null() {
        drop(Session(h));
    }
}

/// RAII for an engine session handle.
struct Session(Handle);

impl Session {
    /// `FwpmEngineOpen0` with a dynamic session. `PASSIVE_LEVEL`.
    fn open_dynamic(name: &mut [u16; MAX_NAME_UNITS]) -> Result<Session, NtStatus> {
        let session = FWPM_SESSION0 {
            sessionKey: crate::ffi::Guid::from_u128(0),
            displayData: FWPM_DISPLAY_DATA0 {
                name: name.as_mut_ptr(),
                description: ptr::null_mut(),
            },
            flags: FWPM_SESSION_FLAG_DYNAMIC,
            txnWaitTimeoutInMSec: 0,
            processId: 0,
            sid: ptr::null_mut(),
            username: ptr::null_mut(),
            kernelMode: 0,
        };
        let mut h: Handle = ptr::null_mut();
        // SAFETY: PASSIVE_LEVEL; local server (NULL), RPC_C_AUTHN_WINNT, no identity; the
        // session record and the out pointer live across the call.
        let status = unsafe {
            FwpmEngineOpen0(
                ptr::null(),
                RPC_C_AUTHN_WINNT,
                ptr::null(),
                &raw const session,
                &raw mut h,
            )
        };
        if nt_success(status) && !h.is_null() {
            Ok(Session(h))
        } else if nt_success(status) {
            Err(STATUS_UNSUCCESSFUL)
        } else {
            Err(status)
        }
    }

    /// Gives up ownership (the handle is stored in `Shared::session`).
    fn into_raw(self) -> Handle {
        let h = self.0;
        core::mem::forget(self);
        h
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: our open engine handle, closed once, PASSIVE_LEVEL. Closing a dynamic
        // session deletes every object added through it.
        let _ = unsafe { FwpmEngineClose0(self.0) };
    }
}

/// RAII for a transaction: aborted on drop unless committed.
struct Transaction<'s> {
    session: &'s Session,
    open: bool,
}

impl<'s> Transaction<'s> {
    fn begin(session: &'s Session) -> Result<Self, NtStatus> {
        // SAFETY: open session handle, flags 0, PASSIVE_LEVEL.
        let status = unsafe { FwpmTransactionBegin0(session.0, 0) };
        if nt_success(status) {
            Ok(Transaction {
                session,
                open: true,
            })
        } else {
            Err(status)
        }
    }

    fn commit(mut self) -> Result<(), NtStatus> {
        // SAFETY: open session with our transaction in progress, PASSIVE_LEVEL.
        let status = unsafe { FwpmTransactionCommit0(self.session.0) };
        self.open = !nt_success(status);
        if self.open {
            Err(status)
        } else {
            Ok(())
        }
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.open {
            // SAFETY: our transaction is still in progress on this session, PASSIVE_LEVEL.
            let _ = unsafe { FwpmTransactionAbort0(self.session.0) };
        }
    }
}

fn check(status: NtStatus) -> Result<(), NtStatus> {
    if nt_success(status) {
        Ok(())
    } else {
        Err(status)
    }
}

fn empty_blob() -> FWP_BYTE_BLOB {
    FWP_BYTE_BLOB {
        size: 0,
        data: ptr::null_mut(),
    }
}

fn empty_value() -> FWP_VALUE0 {
    FWP_VALUE0 {
        r#type: FWP_EMPTY,
        value: FWP_VALUE_UNION {
            pointer: ptr::null_mut(),
        },
    }
}

/// Opens a dynamic session and adds sublayer, callouts and filters in one transaction; the
/// session is kept in `shared.session`. Does nothing if a session is already open.
/// `PASSIVE_LEVEL` (from `start` or the BFE callback).
fn add_objects(shared: &Shared) -> Result<(), NtStatus> {
    if shared
        .adding
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Ok(());
    }
    let result = if shared.session.load(Ordering::Acquire).is_null() {
        open_and_add().map(|session| shared.session.store(session.into_raw(), Ordering::Release))
    } else {
        Ok(())
    };
    shared.adding.store(false, Ordering::Release);
    result
}

/// A new dynamic session holding our sublayer, callouts and filters (one transaction).
fn open_and_add() -> Result<Session, NtStatus> {
    let mut name = [0u16; MAX_NAME_UNITS];
    widen(PROVIDER_NAME, &mut name).ok_or(STATUS_UNSUCCESSFUL)?;
    let session = Session::open_dynamic(&mut name)?;
    let txn = Transaction::begin(&session)?;
    let sublayer = FWPM_SUBLAYER0 {
        subLayerKey: SUBLAYER_KEY,
        displayData: FWPM_DISPLAY_DATA0 {
            name: name.as_mut_ptr(),
            description: ptr::null_mut(),
        },
        flags: 0,
        providerKey: ptr::null_mut(),
        providerData: empty_blob(),
        weight: SUBLAYER_WEIGHT,
    };
    // SAFETY: open session in a transaction; the record lives across the call; no security
    // descriptor. `PASSIVE_LEVEL`.
    check(unsafe { FwpmSubLayerAdd0(session.0, &raw const sublayer, ptr::null_mut()) })?;
    for spec in &CALLOUTS {
        add_callout_and_filter(&session, spec)?;
    }
    txn.commit()?;
    Ok(session)
}

/// `FwpmCalloutAdd0` + `FwpmFilterAdd0` for one table entry, inside the open transaction.
fn add_callout_and_filter(session: &Session, spec: &CalloutSpec) -> Result<(), NtStatus> {
    let mut name = [0u16; MAX_NAME_UNITS];
    widen(spec.name, &mut name).ok_or(STATUS_UNSUCCESSFUL)?;
    let display = FWPM_DISPLAY_DATA0 {
        name: name.as_mut_ptr(),
        description: ptr::null_mut(),
    };
    let callout = FWPM_CALLOUT0 {
        calloutKey: spec.key,
        displayData: display,
        flags: 0,
        providerKey: ptr::null_mut(),
        providerData: empty_blob(),
        applicableLayer: spec.layer_key,
        calloutId: 0,
    };
    // SAFETY: open session in a transaction; records live across the call. PASSIVE_LEVEL.
    check(unsafe {
        FwpmCalloutAdd0(
            session.0,
            &raw const callout,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    })?;
    let mut not_loopback = FWPM_FILTER_CONDITION0 {
        fieldKey: FWPM_CONDITION_FLAGS,
        matchType: FWP_MATCH_FLAGS_NONE_SET,
        conditionValue: FWP_CONDITION_VALUE0 {
            r#type: FWP_UINT32,
            value: FWP_VALUE_UNION {
                uint32: FWP_CONDITION_FLAG_IS_LOOPBACK,
            },
        },
    };
    let filter = FWPM_FILTER0 {
        filterKey: spec.filter_key,
        displayData: display,
        flags: spec.filter_flags,
        providerKey: ptr::null_mut(),
        providerData: empty_blob(),
        layerKey: spec.layer_key,
        subLayerKey: SUBLAYER_KEY,
        weight: empty_value(),
        numFilterConditions: u32::from(spec.exclude_loopback),
        filterCondition: if spec.exclude_loopback {
            &raw mut not_loopback
        } else {
            ptr::null_mut()
        },
        action: FWPM_ACTION0 {
            r#type: spec.filter_action,
            callout_key: spec.key,
        },
        context: FWPM_FILTER0_CONTEXT { rawContext: 0 },
        reserved: ptr::null_mut(),
        filterId: 0,
        effectiveWeight: empty_value(),
    };
    // SAFETY: open session in a transaction; `filter`, its condition and name live across
    // the call (WFP copies them). PASSIVE_LEVEL.
    check(unsafe {
        FwpmFilterAdd0(
            session.0,
            &raw const filter,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    })
}

/// `FwpsFlowRemoveContext0` for every context we attached, with the registry lock dropped
/// (`flowDeleteFn` may run synchronously and takes it). `PASSIVE_LEVEL` (unload).
fn remove_flow_contexts(shared: &Shared) {
    const CHUNK: usize = 64;
    loop {
        let mut batch = [(0u64, 0u16, 0u32); CHUNK];
        let (n, before) = {
            let flows = shared.flows.read();
            let mut n = 0;
            for (slot, e) in batch.iter_mut().zip(flows.live()) {
                *slot = (e.flow_id, e.layer_id, e.callout_id);
                n += 1;
            }
            (n, flows.len())
        };
        for &(flow, layer, callout) in batch.iter().take(n) {
            // SAFETY: a flow id / layer / callout triple we associated; callable at
            // <= DISPATCH_LEVEL (we are at PASSIVE). The context goes synchronously
            // (flow_delete runs now) or, while a classify is in progress, later
            // (STATUS_PENDING); the caller's unregister loop retries until none is left.
            let _ = unsafe { FwpsFlowRemoveContext0(flow, layer, callout) };
        }
        let after = shared.flows.read().len();
        // Next batch only while synchronous removals make progress.
        if after == 0 || after >= before {
            break;
        }
    }
}
