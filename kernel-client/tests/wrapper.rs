//! The wrapper against a fake qosmark: arguments reach the entries unchanged, statuses come
//! back as errors, and every reference and handle is released exactly once.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use core::ffi::c_void;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use qosmark_abi::{Family, Protocol, TrafficType};
use qosmark_kernel_client::abi::{
    self, FlowInfo, FlowMark, FlowSpec, KernelFlow, KernelInterface, KernelMark, MarkClass,
};
use qosmark_kernel_client::{query_input, Interface, NtStatus, TableError};

// One test at a time touches the fake's statics.
static SERIAL: Mutex<()> = Mutex::new(());
static REFS: AtomicI64 = AtomicI64::new(0);
static CLOSED: AtomicU64 = AtomicU64::new(0);
static LAST_SPEC: Mutex<Option<FlowSpec>> = Mutex::new(None);
static LAST_MARK: Mutex<Option<(u32, FlowMark)>> = Mutex::new(None);
static REMOVED: AtomicU32 = AtomicU32::new(0);
const CONTEXT: usize = 0x5151;
const HANDLE: u64 = 0xabcd_0000_0001;

fn ctx_ok(c: *mut c_void) -> bool {
    c as usize == CONTEXT
}
unsafe extern "system" fn reference(c: *mut c_void) {
    assert!(ctx_ok(c));
    REFS.fetch_add(1, Ordering::SeqCst);
}
unsafe extern "system" fn dereference(c: *mut c_void) {
    assert!(ctx_ok(c));
    REFS.fetch_sub(1, Ordering::SeqCst);
}
unsafe extern "system" fn open(c: *mut c_void, flags: u32, h: *mut u64) -> i32 {
    assert!(ctx_ok(c) && flags == 0);
    // SAFETY: the wrapper passes a valid local.
    unsafe { h.write(HANDLE) };
    0
}
unsafe extern "system" fn close(c: *mut c_void, h: u64) -> i32 {
    assert!(ctx_ok(c));
    CLOSED.store(h, Ordering::SeqCst);
    0
}
unsafe extern "system" fn add(c: *mut c_void, h: u64, s: *const FlowSpec, id: *mut u32) -> i32 {
    assert!(ctx_ok(c) && h == HANDLE);
    // SAFETY: the wrapper passes valid locals.
    let spec = unsafe { s.read() };
    if spec.local_port == 0 {
        return NtStatus::INVALID_PARAMETER.0;
    }
    *LAST_SPEC.lock().unwrap() = Some(spec);
    // SAFETY: as above.
    unsafe { id.write(77) };
    0
}
unsafe extern "system" fn change(c: *mut c_void, h: u64, id: u32, m: *const FlowMark) -> i32 {
    assert!(ctx_ok(c) && h == HANDLE);
    // SAFETY: the wrapper passes a valid local.
    *LAST_MARK.lock().unwrap() = Some((id, unsafe { m.read() }));
    0
}
unsafe extern "system" fn query(c: *mut c_void, h: u64, id: u32, i: *mut FlowInfo) -> i32 {
    assert!(ctx_ok(c) && h == HANDLE);
    if id != 77 {
        return NtStatus::NOT_FOUND.0;
    }
    let info = FlowInfo {
        dscp: 46,
        pcp: abi::PCP_NONE,
        packets: 3,
        bytes: 300,
        marked: 2,
        already_marked: 1,
    };
    // SAFETY: the wrapper passes a valid local.
    unsafe { i.write(info) };
    0
}
unsafe extern "system" fn remove(c: *mut c_void, h: u64, id: u32) -> i32 {
    assert!(ctx_ok(c) && h == HANDLE);
    REMOVED.store(id, Ordering::SeqCst);
    abi::STATUS_QOSMARK_UNLOADING.0
}

fn fake_table() -> KernelInterface {
    KernelInterface {
        size: abi::KERNEL_INTERFACE_SIZE,
        version: abi::KERNEL_INTERFACE_VERSION,
        context: CONTEXT as *mut c_void,
        interface_reference: Some(reference),
        interface_dereference: Some(dereference),
        generation: 9,
        open_handle: Some(open),
        close_handle: Some(close),
        add_flow: Some(add),
        change_flow: Some(change),
        query_flow: Some(query),
        remove_flow: Some(remove),
        max_irql: abi::KERNEL_INTERFACE_MAX_IRQL,
        reserved: 0,
    }
}

#[test]
fn calls_pass_through_and_everything_is_released_once() {
    let _serial = SERIAL.lock().unwrap();
    REFS.store(1, Ordering::SeqCst); // the query's reference
    assert_eq!(
        query_input(),
        abi::QueryInterfaceInput::current().to_bytes()
    );
    // SAFETY: a table with the query's reference, as the contract requires.
    let qos = unsafe { Interface::from_table(fake_table()) }.unwrap();
    assert_eq!(qos.generation(), 9);
    {
        let h = qos.open().unwrap();
        assert_eq!(h.raw(), HANDLE);
        let flow = KernelFlow {
            family: Family::V4,
            protocol: Protocol::Udp,
            local: "10.0.0.1:5004".parse().unwrap(),
            remote: Some("192.0.2.7:5060".parse().unwrap()),
            mark: KernelMark {
                class: MarkClass::TrafficType(TrafficType::Voice),
                pcp: Some(6),
            },
        };
        assert_eq!(h.add_flow(&flow).unwrap(), 77);
        let spec = LAST_SPEC.lock().unwrap().unwrap();
        assert_eq!(spec.decode().unwrap(), flow);
        assert_eq!(spec.local_port.to_ne_bytes(), [0x13, 0x8c]);
        let mut no_port = flow;
        no_port.local = "10.0.0.1:0".parse().unwrap();
        assert_eq!(h.add_flow(&no_port), Err(NtStatus::INVALID_PARAMETER));
        let ef = KernelMark {
            class: MarkClass::Dscp(46),
            pcp: None,
        };
        h.change_flow(77, &ef).unwrap();
        assert_eq!(
            *LAST_MARK.lock().unwrap(),
            Some((
                77,
                FlowMark {
                    kind: abi::MARK_DSCP,
                    value: 46,
                    pcp: abi::PCP_NONE
                }
            ))
        );
        assert_eq!(h.query_flow(77).unwrap().packets, 3);
        assert_eq!(h.query_flow(1), Err(NtStatus::NOT_FOUND));
        assert_eq!(h.remove_flow(77), Err(abi::STATUS_QOSMARK_UNLOADING));
        assert_eq!(REMOVED.load(Ordering::SeqCst), 77);
        CLOSED.store(0, Ordering::SeqCst);
    }
    // The handle closed itself.
    assert_eq!(CLOSED.load(Ordering::SeqCst), HANDLE);
    let second = qos.reference();
    assert_eq!(REFS.load(Ordering::SeqCst), 2);
    drop(second);
    drop(qos);
    assert_eq!(REFS.load(Ordering::SeqCst), 0);
}

#[test]
fn unusable_tables_are_refused_and_released() {
    let _serial = SERIAL.lock().unwrap();
    for (edit, err) in [
        (
            (|t: &mut KernelInterface| t.version = 2) as fn(&mut KernelInterface),
            TableError::Incompatible,
        ),
        (|t| t.size = 88, TableError::Incompatible),
        (|t| t.query_flow = None, TableError::MissingEntry),
    ] {
        REFS.store(1, Ordering::SeqCst);
        let mut t = fake_table();
        edit(&mut t);
        // SAFETY: as above; the refusal must release the reference.
        let r = unsafe { Interface::from_table(t) };
        assert_eq!(r.err(), Some(err));
        assert_eq!(REFS.load(Ordering::SeqCst), 0);
    }
}
