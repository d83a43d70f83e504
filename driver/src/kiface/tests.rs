//! Host model of the kernel interface: the table's real entries, called through their C ABI
//! function pointers, over an engine in a `std` mutex instead of the driver's spin lock.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block,
    clippy::borrow_as_ptr,
    clippy::too_many_lines,
    reason = "test code: a panic is a failed test; every unsafe block calls a table entry \
              with valid pointers to locals, which is the entries' whole contract; one \
              test walks every refusal in a row"
)]

use core::ffi::c_void;
use std::sync::Mutex;
use std::time::Duration;

use qosmark_abi::kernel::{
    FlowInfo, FlowMark, FlowSpec, KernelInterface, QueryInterfaceInput, AF_INET, AF_INET6,
    FLOW_ANY_REMOTE, IPPROTO_TCP, IPPROTO_UDP, MARK_DSCP, MARK_TRAFFIC_TYPE, PCP_NONE,
    STATUS_QOSMARK_UNLOADING,
};
use qosmark_abi::status::{ntstatus_for, NtStatus};
use qosmark_engine::{Engine, EngineError, Limits, PacketMeta, Verdict};

use super::lifetime::{Lifetime, RefError};
use super::table::{answer_query, table, Backend};

/// A backend with its own statics, so tests run in parallel without sharing state.
macro_rules! backend {
    ($name:ident) => {
        struct $name;
        impl $name {
            fn engine() -> &'static Mutex<Option<Engine>> {
                static ENGINE: Mutex<Option<Engine>> = Mutex::new(None);
                &ENGINE
            }
            fn start(generation: u64, limits: Limits) {
                *Self::engine().lock().unwrap() = Some(Engine::new(limits));
                Self::lifetime().start(generation);
            }
        }
        impl Backend for $name {
            fn lifetime() -> &'static Lifetime {
                static LIFETIME: Lifetime = Lifetime::new();
                &LIFETIME
            }
            fn write<R>(f: impl FnOnce(&mut Engine) -> R) -> Option<R> {
                Self::engine().lock().unwrap().as_mut().map(f)
            }
            fn read<R>(f: impl FnOnce(&Engine) -> R) -> Option<R> {
                Self::engine().lock().unwrap().as_ref().map(f)
            }
        }
    };
}

/// Obtains the table as a client does: query bytes in, table out.
fn query<B: Backend>() -> KernelInterface {
    answer_query::<B>(&QueryInterfaceInput::current().to_bytes(), 96).unwrap()
}

fn udp_spec(local: [u8; 4], lport: u16, remote: [u8; 4], rport: u16) -> FlowSpec {
    let mut s = FlowSpec {
        family: AF_INET,
        protocol: IPPROTO_UDP,
        local_port: lport.to_be(),
        remote_port: rport.to_be(),
        mark: FlowMark {
            kind: MARK_DSCP,
            value: 46,
            pcp: PCP_NONE,
        },
        ..FlowSpec::default()
    };
    s.local_address[..4].copy_from_slice(&local);
    s.remote_address[..4].copy_from_slice(&remote);
    s
}

/// Safe wrappers over the table's entries, as a client crate would write them.
struct Client(KernelInterface);

impl Client {
    fn open(&self) -> Result<u64, i32> {
        let mut h = 0u64;
        let s = unsafe { self.0.open_handle.unwrap()(self.0.context, 0, &mut h) };
        if s == 0 {
            Ok(h)
        } else {
            Err(s)
        }
    }
    fn close(&self, h: u64) -> i32 {
        unsafe { self.0.close_handle.unwrap()(self.0.context, h) }
    }
    fn add(&self, h: u64, spec: &FlowSpec) -> Result<u32, i32> {
        let mut id = 0u32;
        let s = unsafe { self.0.add_flow.unwrap()(self.0.context, h, spec, &mut id) };
        if s == 0 {
            Ok(id)
        } else {
            Err(s)
        }
    }
    fn change(&self, h: u64, id: u32, mark: &FlowMark) -> i32 {
        unsafe { self.0.change_flow.unwrap()(self.0.context, h, id, mark) }
    }
    fn query(&self, h: u64, id: u32) -> Result<FlowInfo, i32> {
        let mut info = FlowInfo::default();
        let s = unsafe { self.0.query_flow.unwrap()(self.0.context, h, id, &mut info) };
        if s == 0 {
            Ok(info)
        } else {
            Err(s)
        }
    }
    fn remove(&self, h: u64, id: u32) -> i32 {
        unsafe { self.0.remove_flow.unwrap()(self.0.context, h, id) }
    }
    fn reference(&self) {
        unsafe { self.0.interface_reference.unwrap()(self.0.context) }
    }
    fn dereference(&self) {
        unsafe { self.0.interface_dereference.unwrap()(self.0.context) }
    }
}

/// The status the IOCTL path completes with for this engine error.
fn ioctl_status(e: EngineError) -> i32 {
    ntstatus_for(e.win32()).0
}

/// IPv4 + UDP, 10 payload bytes, correct header checksum (RFC 791 one's-complement sum).
fn udp4_packet(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let total: u16 = 20 + 8 + 10;
    let mut p = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    let mut sum: u32 = p
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&18u16.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&[0xa5; 10]);
    p
}

#[test]
fn table_as_handed_out() {
    backend!(B);
    B::start(0x1234_5678_9abc_def0, Limits::default());
    let t = table::<B>();
    assert_eq!((t.size, t.version, t.max_irql, t.reserved), (96, 1, 2, 0));
    assert_eq!(t.generation, 0x1234_5678_9abc_def0);
    assert!(core::ptr::eq(
        t.context.cast_const().cast::<Lifetime>(),
        B::lifetime()
    ));
    assert!(t.interface_reference.is_some() && t.interface_dereference.is_some());
    assert!(t.open_handle.is_some() && t.close_handle.is_some() && t.add_flow.is_some());
    assert!(t.change_flow.is_some() && t.query_flow.is_some() && t.remove_flow.is_some());
    // Building the table takes no reference; answering a query takes exactly one.
    assert_eq!(B::lifetime().references(), 0);
    let _ = query::<B>();
    assert_eq!(B::lifetime().references(), 1);
}

#[test]
fn query_refusals_take_no_reference() {
    backend!(B);
    B::start(7, Limits::default());
    let good = QueryInterfaceInput::current().to_bytes();
    let mut bad_version = good;
    bad_version[2] = 9;
    let cases: [(&[u8], usize, NtStatus); 4] = [
        (&good[..23], 96, NtStatus::INVALID_PARAMETER),
        (&good, 95, NtStatus::BUFFER_TOO_SMALL),
        (&bad_version, 96, NtStatus::NOT_SUPPORTED),
        (&[], 0, NtStatus::INVALID_PARAMETER),
    ];
    for (input, out_len, status) in cases {
        assert_eq!(answer_query::<B>(input, out_len).err(), Some(status));
    }
    assert_eq!(B::lifetime().references(), 0);
    B::lifetime().begin_unload();
    assert_eq!(
        answer_query::<B>(&good, 96).err(),
        Some(STATUS_QOSMARK_UNLOADING)
    );
    assert_eq!(B::lifetime().references(), 0);
}

#[test]
fn register_change_query_remove_through_the_c_abi() {
    backend!(B);
    B::start(42, Limits::default());
    let c = Client(query::<B>());
    let h = c.open().unwrap();
    assert_ne!(h, 0);
    let id = c
        .add(h, &udp_spec([10, 0, 0, 1], 5004, [192, 0, 2, 7], 5060))
        .unwrap();
    // The engine marks the flow's packets and the counters show it.
    let p = udp4_packet([10, 0, 0, 1], 5004, [192, 0, 2, 7], 5060);
    let verdict = B::read(|e| e.classify(&p, &PacketMeta::default(), 0)).unwrap();
    assert!(
        matches!(verdict, Verdict::Mark(m) if m.dscp.map(qosmark_abi::Dscp::value) == Some(46))
    );
    let info = c.query(h, id).unwrap();
    assert_eq!(
        (info.dscp, info.pcp, info.packets, info.bytes, info.marked),
        (46, PCP_NONE, 1, p.len() as u64, 1)
    );
    // Change to Voice with 802.1p 6.
    let voice = FlowMark {
        kind: MARK_TRAFFIC_TYPE,
        value: 4,
        pcp: 6,
    };
    assert_eq!(c.change(h, id, &voice), 0);
    let info = c.query(h, id).unwrap();
    assert_eq!((info.dscp, info.pcp), (56, 6));
    // A local-port flow on an IPv6 wildcard.
    let any = FlowSpec {
        family: AF_INET6,
        protocol: IPPROTO_TCP,
        flags: FLOW_ANY_REMOTE,
        local_port: 443u16.to_be(),
        ..udp_spec([0; 4], 0, [0; 4], 0)
    };
    let id2 = c.add(h, &any).unwrap();
    assert_ne!(id2, id);
    assert_eq!(c.remove(h, id), 0);
    assert_eq!(c.query(h, id).err(), Some(NtStatus::NOT_FOUND.0));
    // Closing the handle removes the rest.
    assert_eq!(c.close(h), 0);
    assert_eq!(B::read(|e| e.flow_details().unwrap().len()), Some(0));
    c.dereference();
    assert_eq!(B::lifetime().references(), 0);
}

#[test]
fn every_entry_validates_like_the_ioctl_path() {
    backend!(B);
    B::start(
        99,
        Limits {
            max_flows_per_handle: 2,
            ..Limits::default()
        },
    );
    let c = Client(query::<B>());
    let h = c.open().unwrap();
    let spec = udp_spec([10, 0, 0, 1], 1, [192, 0, 2, 1], 2);
    let id = c.add(h, &spec).unwrap();

    // Engine errors: exactly the IOCTL path's statuses.
    assert_eq!(
        c.add(h, &spec),
        Err(ioctl_status(EngineError::AlreadyExists))
    );
    assert_eq!(
        ioctl_status(EngineError::AlreadyExists),
        NtStatus::OBJECT_NAME_COLLISION.0
    );
    let mut no_port = spec;
    no_port.local_port = 0;
    assert_eq!(
        c.add(h, &no_port),
        Err(ioctl_status(EngineError::InvalidParameter))
    );
    let mut dscp64 = spec;
    dscp64.local_port = 9u16.to_be();
    dscp64.mark.value = 64;
    assert_eq!(c.add(h, &dscp64), Err(NtStatus::INVALID_PARAMETER.0));
    let mut second = spec;
    second.local_port = 10u16.to_be();
    c.add(h, &second).unwrap();
    let mut third = spec;
    third.local_port = 11u16.to_be();
    assert_eq!(
        c.add(h, &third),
        Err(ioctl_status(EngineError::LimitReached))
    );
    assert_eq!(
        ioctl_status(EngineError::LimitReached),
        NtStatus::INSUFFICIENT_RESOURCES.0
    );
    assert_eq!(
        c.query(h, 12345).err(),
        Some(ioctl_status(EngineError::NotFound))
    );
    assert_eq!(c.remove(h, 0), ioctl_status(EngineError::NotFound));
    // ChangeFlow: unknown flow before malformed mark (1168 before 87), as QOSSetFlow.
    let bad_mark = FlowMark {
        kind: 7,
        value: 0,
        pcp: PCP_NONE,
    };
    assert_eq!(c.change(h, 12345, &bad_mark), NtStatus::NOT_FOUND.0);
    assert_eq!(c.change(h, id, &bad_mark), NtStatus::INVALID_PARAMETER.0);
    let bad_pcp = FlowMark {
        kind: MARK_DSCP,
        value: 1,
        pcp: 8,
    };
    assert_eq!(
        c.change(h, id, &bad_pcp),
        ioctl_status(EngineError::InvalidParameter)
    );

    // Malformed structures: STATUS_INVALID_PARAMETER, like a malformed IOCTL record.
    for edit in [
        (|s: &mut FlowSpec| s.family = 99) as fn(&mut FlowSpec),
        |s| s.protocol = 1,
        |s| s.flags = 0x80,
        |s| s.reserved = 1,
        |s| s.local_address[8] = 1,
        |s| s.mark.kind = 2,
    ] {
        let mut s = spec;
        edit(&mut s);
        assert_eq!(c.add(h, &s), Err(NtStatus::INVALID_PARAMETER.0), "{s:?}");
    }

    // Handles: 0, another tag, a closed one.
    for bad in [
        0u64,
        (h & 0xffff_ffff) | (0xdead_beef << 32),
        h ^ 0x8000_0000_0000_0000,
    ] {
        assert_eq!(c.query(bad, id).err(), Some(NtStatus::INVALID_HANDLE.0));
        assert_eq!(c.add(bad, &spec), Err(NtStatus::INVALID_HANDLE.0));
        assert_eq!(c.remove(bad, id), NtStatus::INVALID_HANDLE.0);
        assert_eq!(c.change(bad, id, &bad_pcp), NtStatus::INVALID_HANDLE.0);
        assert_eq!(c.close(bad), NtStatus::INVALID_HANDLE.0);
    }
    let h2 = c.open().unwrap();
    assert_eq!(c.close(h2), 0);
    assert_eq!(c.close(h2), ioctl_status(EngineError::InvalidHandle));
    assert_eq!(c.query(h2, id).err(), Some(NtStatus::INVALID_HANDLE.0));
    // Another open handle does not see this handle's flow.
    let h3 = c.open().unwrap();
    assert_eq!(c.query(h3, id).err(), Some(NtStatus::NOT_FOUND.0));

    // Pointers and context.
    let t = &c.0;
    let mut out = 0u64;
    let mut id_out = 0u32;
    let mut info = FlowInfo::default();
    let bogus = core::ptr::dangling_mut::<c_void>();
    unsafe {
        assert_eq!(
            t.open_handle.unwrap()(t.context, 0, core::ptr::null_mut()),
            NtStatus::INVALID_PARAMETER.0
        );
        assert_eq!(
            t.open_handle.unwrap()(t.context, 1, &mut out),
            NtStatus::INVALID_PARAMETER.0
        );
        assert_eq!(
            t.open_handle.unwrap()(bogus, 0, &mut out),
            NtStatus::INVALID_PARAMETER.0
        );
        assert_eq!(
            t.add_flow.unwrap()(t.context, h, core::ptr::null(), &mut id_out),
            NtStatus::INVALID_PARAMETER.0
        );
        assert_eq!(
            t.add_flow.unwrap()(t.context, h, &spec, core::ptr::null_mut()),
            NtStatus::INVALID_PARAMETER.0
        );
        assert_eq!(
            t.change_flow.unwrap()(t.context, h, id, core::ptr::null()),
            NtStatus::INVALID_PARAMETER.0
        );
        assert_eq!(
            t.query_flow.unwrap()(t.context, h, id, core::ptr::null_mut()),
            NtStatus::INVALID_PARAMETER.0
        );
        assert_eq!(
            t.query_flow.unwrap()(bogus, h, id, &mut info),
            NtStatus::INVALID_PARAMETER.0
        );
        assert_eq!(
            t.remove_flow.unwrap()(bogus, h, id),
            NtStatus::INVALID_PARAMETER.0
        );
        assert_eq!(
            t.close_handle.unwrap()(bogus, h),
            NtStatus::INVALID_PARAMETER.0
        );
        // A foreign context does not touch the count.
        t.interface_reference.unwrap()(bogus);
        t.interface_dereference.unwrap()(bogus);
    }
    assert_eq!(out, 0);
    assert_eq!(B::lifetime().references(), 1);
    // Refusals changed nothing: the one flow is still there with its mark.
    assert_eq!(c.query(h, id).unwrap().dscp, 46);
    assert_eq!(B::read(Engine::check_control_invariants), Some(Ok(())));
}

#[test]
fn reference_counting() {
    backend!(B);
    B::start(1, Limits::default());
    let c = Client(query::<B>());
    c.reference();
    c.reference();
    assert_eq!(B::lifetime().references(), 3);
    c.dereference();
    c.dereference();
    c.dereference();
    assert_eq!(B::lifetime().references(), 0);
    // A dereference too many is ignored, not wrapped.
    c.dereference();
    assert_eq!(B::lifetime().references(), 0);
    assert!(!B::lifetime().is_unloading());
    assert!(B::lifetime().begin_unload());
    assert!(B::lifetime().is_drained());
}

#[test]
fn unload_waits_for_references_and_refuses_new_work() {
    backend!(B);
    B::start(5, Limits::default());
    let c = Client(query::<B>());
    let h = c.open().unwrap();
    let id = c
        .add(h, &udp_spec([10, 0, 0, 1], 1, [192, 0, 2, 1], 2))
        .unwrap();
    let drained = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // The "DriverUnload" thread: begin, then wait as the glue does (poll + sleep).
        let unloader = s.spawn(|| {
            let idle = B::lifetime().begin_unload();
            while !B::lifetime().is_drained() {
                std::thread::sleep(Duration::from_millis(1));
            }
            drained.store(true, std::sync::atomic::Ordering::SeqCst);
            idle
        });
        while !B::lifetime().is_unloading() {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(20));
        // Still referenced: the unload has not finished.
        assert!(!drained.load(std::sync::atomic::Ordering::SeqCst));
        // New work is refused with the documented status; CloseHandle succeeds.
        assert_eq!(c.open(), Err(STATUS_QOSMARK_UNLOADING.0));
        assert_eq!(c.query(h, id).err(), Some(STATUS_QOSMARK_UNLOADING.0));
        assert_eq!(
            c.add(h, &udp_spec([10, 0, 0, 1], 3, [192, 0, 2, 1], 2)),
            Err(STATUS_QOSMARK_UNLOADING.0)
        );
        assert_eq!(
            c.change(h, id, &FlowMark::default()),
            STATUS_QOSMARK_UNLOADING.0
        );
        assert_eq!(c.remove(h, id), STATUS_QOSMARK_UNLOADING.0);
        assert_eq!(c.close(h), 0);
        assert_eq!(
            answer_query::<B>(&QueryInterfaceInput::current().to_bytes(), 96).err(),
            Some(STATUS_QOSMARK_UNLOADING)
        );
        // A holder may still duplicate its reference (InterfaceReference cannot fail).
        c.reference();
        assert_eq!(B::lifetime().references(), 2);
        c.dereference();
        std::thread::sleep(Duration::from_millis(10));
        assert!(!drained.load(std::sync::atomic::Ordering::SeqCst));
        // The last reference goes: the unload completes.
        c.dereference();
        assert!(!unloader.join().unwrap(), "the unload had to wait");
    });
    assert!(drained.load(std::sync::atomic::Ordering::SeqCst));
}

#[test]
fn unload_waits_for_a_call_in_progress() {
    let l = Lifetime::new();
    l.start(3);
    let call = l.enter().unwrap();
    assert_eq!(l.references(), 1);
    assert!(!l.begin_unload());
    assert!(!l.is_drained());
    assert!(l.enter().is_err());
    drop(call);
    assert!(l.is_drained());
}

#[test]
fn reload_changes_the_generation_and_stale_handles_are_refused() {
    backend!(B);
    B::start(0x0000_0001_0000_0002, Limits::default());
    let old = Client(query::<B>());
    let h = old.open().unwrap();
    let old_generation = old.0.generation;
    old.dereference();
    // qosmark unloads and loads again: new engine, new generation.
    assert!(B::lifetime().begin_unload());
    B::start(0x0000_0001_0000_0003, Limits::default());
    let new = Client(query::<B>());
    assert_ne!(new.0.generation, old_generation);
    // The new load has a handle with the same engine id, but the old value names nothing.
    let h_new = new.open().unwrap();
    assert_eq!(h_new & 0xffff_ffff, h & 0xffff_ffff);
    assert_ne!(h_new, h);
    assert_eq!(new.close(h), NtStatus::INVALID_HANDLE.0);
    assert_eq!(new.close(h_new), 0);
}

#[test]
fn counter_limits() {
    let l = Lifetime::new();
    l.start(1);
    assert_eq!(l.release(), Err(RefError::Underflow));
    for _ in 0..3 {
        l.try_reference().unwrap();
    }
    l.begin_unload();
    assert_eq!(l.try_reference(), Err(RefError::Unloading));
    assert_eq!(l.add_reference(), Ok(()));
    assert_eq!(l.references(), 4);
    // Tags are never 0, even for generations whose halves cancel.
    l.start(0x0000_0005_0000_0005);
    assert_eq!(l.handle_tag(), 1);
    assert_eq!(l.generation(), 0x0000_0005_0000_0005);
}
