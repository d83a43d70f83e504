//! GQoS ([`GqosSession`]) through the in-process transport, with real sockets on
//! `127.0.0.1` (no traffic is sent): every service-type mapping, the overrides and their
//! privileges, `QOS_DESTADDR`, `NOCHANGE`, per-direction ending, the report `get` gives, the
//! wait's "would hold" / "changed" answers, and every invalid flowspec / object with its
//! `WSA_QOS_*` code and an unchanged engine (`control_snapshot` before and after).
//!
//! The expected marks and codes are written out as numbers (qos-api.md §11), not taken from
//! the code under test.
#![cfg(unix)]
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    clippy::many_single_char_names,
    clippy::single_match_else,
    reason = "test code: a failure is a test failure; short names for engine, session, sockets; \
              the shaping test reads best as a match on both back-end kinds"
)]

use qosmark::client::Client;
use qosmark::gqos::{Flowspec, GqosSession, ProviderObject, Qos, QosReport};
use qosmark_abi::{Caller, FlowState, Privilege, Protocol};
use qosmark_engine::{Engine, FiveTuple, Limits};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

const USER: Caller = Caller {
    pid: 1000,
    privilege: Privilege::User,
};
const ADMIN: Caller = Caller {
    pid: 3000,
    privilege: Privilege::Admin,
};
const NOT_SPECIFIED: u32 = 0xFFFF_FFFF;

fn engine() -> Arc<Mutex<Engine>> {
    Arc::new(Mutex::new(Engine::new(Limits::default())))
}

fn session(e: &Arc<Mutex<Engine>>, caller: Caller) -> GqosSession {
    let waits = Arc::clone(e);
    GqosSession::with_client(
        Client::in_process(Arc::clone(e), caller).unwrap(),
        Box::new(move || Client::in_process(Arc::clone(&waits), caller)),
    )
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn qos(service: u32, objects: Vec<ProviderObject>) -> Qos {
    Qos {
        sending: Flowspec::unspecified(service),
        receiving: Flowspec::unspecified(6),
        objects,
    }
}

/// The (DSCP, 802.1p) the engine applies to `local` → `remote` UDP packets, if any.
fn marks(e: &Arc<Mutex<Engine>>, local: SocketAddr, remote: &str) -> Option<(u8, u8)> {
    let t = FiveTuple::new(Protocol::Udp, local, sa(remote));
    e.lock().unwrap().socket_lookup(&t).map(|(_, m)| {
        (
            m.dscp.map_or(255, qosmark_abi::Dscp::value),
            m.pcp.map_or(255, qosmark_abi::Pcp::value),
        )
    })
}

#[test]
fn service_types_map_to_their_documented_marks() {
    // qos-api.md §11.4.
    let cases = [
        (0xD, (0, 0)),
        (2, (24, 4)),
        (3, (40, 5)),
        (0xA, (48, 7)),
        // SERVICE_NO_QOS_SIGNALING or-ed in changes nothing.
        (0x4000_0003, (40, 5)),
    ];
    let e = engine();
    let g = session(&e, USER);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = s.local_addr().unwrap();
    for (st, want) in cases {
        g.set(
            &s,
            &qos(st, vec![ProviderObject::DestAddr(sa("192.0.2.1:5004"))]),
        )
        .unwrap();
        assert_eq!(marks(&e, local, "192.0.2.1:5004"), Some(want), "{st:#x}");
        let r = g.get(s.as_raw_fd()).unwrap();
        assert_eq!(r.sending.service_type, st);
        assert_eq!(r.status_code, 11009, "REQUEST_CONFIRMED while marking");
        assert_eq!((r.dscp, r.pcp), (u32::from(want.0), u32::from(want.1)));
        assert_eq!(r.receiving, Flowspec::unspecified(6), "receiving: NOCHANGE");
    }
    // Still one flow: each set re-marks the socket's flow.
    assert_eq!(e.lock().unwrap().flow_details().unwrap().len(), 1);
}

#[test]
fn destaddr_adds_destinations_and_a_connected_socket_needs_none() {
    let e = engine();
    let g = session(&e, USER);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = s.local_addr().unwrap();
    // Unconnected without QOS_DESTADDR: the engine's 87, nothing registered.
    let before = e.lock().unwrap().control_snapshot().unwrap();
    assert_eq!(g.set(&s, &qos(2, vec![])).unwrap_err().raw(), 87);
    assert_eq!(e.lock().unwrap().control_snapshot().unwrap(), before);
    for dest in ["192.0.2.1:5004", "192.0.2.2:5006", "198.51.100.3:7000"] {
        g.set(&s, &qos(2, vec![ProviderObject::DestAddr(sa(dest))]))
            .unwrap();
    }
    for dest in ["192.0.2.1:5004", "192.0.2.2:5006", "198.51.100.3:7000"] {
        assert_eq!(marks(&e, local, dest), Some((24, 4)), "{dest}");
    }
    assert_eq!(marks(&e, local, "192.0.2.9:5004"), None);
    // Changing the service re-marks every destination.
    g.set(&s, &qos(0xA, vec![])).unwrap();
    assert_eq!(marks(&e, local, "192.0.2.2:5006"), Some((48, 7)));
    // A connected socket: its peer.
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.connect("127.0.0.2:9000").unwrap();
    g.set(&c, &qos(3, vec![])).unwrap();
    assert_eq!(
        marks(&e, c.local_addr().unwrap(), "127.0.0.2:9000"),
        Some((40, 5))
    );
}

#[test]
fn nochange_keeps_and_notraffic_or_besteffort_end_sending_only() {
    let e = engine();
    let g = session(&e, USER);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = s.local_addr().unwrap();
    let dest = vec![ProviderObject::DestAddr(sa("192.0.2.1:5004"))];
    for ender in [0u32, 1] {
        g.set(&s, &qos(3, dest.clone())).unwrap();
        // NOCHANGE on sending (whatever the receiving side says) keeps the mark.
        let mut keep = qos(6, vec![]);
        keep.receiving.service_type = 2;
        g.set(&s, &keep).unwrap();
        assert_eq!(marks(&e, local, "192.0.2.1:5004"), Some((40, 5)));
        // NOTRAFFIC / BESTEFFORT end marking: no flow left, get says so.
        g.set(&s, &qos(ender, vec![])).unwrap();
        assert_eq!(marks(&e, local, "192.0.2.1:5004"), None);
        assert!(e.lock().unwrap().flow_details().unwrap().is_empty());
        let r = g.get(s.as_raw_fd()).unwrap();
        assert_eq!(r.sending.service_type, ender);
        assert_eq!(r.status_code, 11008, "NO_RECEIVERS once ended");
        assert_eq!((r.dscp, r.pcp), (0, 0));
        // Ending again is harmless.
        g.set(&s, &qos(ender, vec![])).unwrap();
    }
    // A socket never set reads as NOTRAFFIC, everything else unspecified.
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    let r = g.get(other.as_raw_fd()).unwrap();
    assert_eq!(
        r,
        QosReport {
            sending: Flowspec::unspecified(0),
            receiving: Flowspec::unspecified(6),
            status_code: 11008,
            dscp: 0,
            pcp: 0,
        }
    );
}

#[test]
fn overrides_and_their_privileges() {
    let e = engine();
    let dest = ProviderObject::DestAddr(sa("192.0.2.1:5004"));
    // A user: an override equal to the default is fine; EF or another 802.1p → 5, nothing
    // changes (not even a flow is left behind).
    let g = session(&e, USER);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = s.local_addr().unwrap();
    g.set(
        &s,
        &qos(
            2,
            vec![
                dest,
                ProviderObject::DsClass(24),
                ProviderObject::TrafficClass(4),
            ],
        ),
    )
    .unwrap();
    assert_eq!(marks(&e, local, "192.0.2.1:5004"), Some((24, 4)));
    let before = e.lock().unwrap().control_snapshot().unwrap();
    for objects in [
        vec![ProviderObject::DsClass(46)],
        vec![ProviderObject::TrafficClass(6)],
    ] {
        assert_eq!(g.set(&s, &qos(2, objects)).unwrap_err().raw(), 5);
        assert_eq!(e.lock().unwrap().control_snapshot().unwrap(), before);
    }
    let fresh = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(
        g.set(&fresh, &qos(2, vec![dest, ProviderObject::DsClass(46)]))
            .unwrap_err()
            .raw(),
        5
    );
    assert_eq!(
        e.lock().unwrap().control_snapshot().unwrap(),
        before,
        "the new flow was removed again"
    );
    // An administrator: both overrides.
    let a = session(&e, ADMIN);
    let t = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.set(
        &t,
        &qos(
            3,
            vec![
                dest,
                ProviderObject::DsClass(46),
                ProviderObject::TrafficClass(6),
            ],
        ),
    )
    .unwrap();
    assert_eq!(
        marks(&e, t.local_addr().unwrap(), "192.0.2.1:5004"),
        Some((46, 6))
    );
}

#[test]
fn invalid_flowspecs_and_objects_change_nothing() {
    use ProviderObject::{DestAddr, DsClass, SdMode, ShapingRate, TrafficClass};
    let e = engine();
    let g = session(&e, USER);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dest = DestAddr(sa("192.0.2.1:5004"));
    g.set(&s, &qos(2, vec![dest])).unwrap();
    let before = e.lock().unwrap().control_snapshot().unwrap();
    let shaped = |rate: u32, objects: Vec<ProviderObject>| {
        let mut q = qos(3, objects);
        q.sending.token_rate = rate;
        q
    };
    let mut peak = qos(3, vec![]);
    peak.sending.token_rate = 8000;
    peak.sending.peak_bandwidth = 7999;
    let mut bad_receiving = qos(3, vec![]);
    bad_receiving.receiving.service_type = 9;
    let cases: Vec<(Qos, u32)> = vec![
        (qos(4, vec![]), 11016),
        (qos(9, vec![]), 11016),
        (qos(0x77, vec![]), 11016),
        (bad_receiving, 11016),
        (shaped(0, vec![SdMode(1)]), 11017),
        (shaped(NOT_SPECIFIED, vec![SdMode(1)]), 11017),
        (peak, 11017),
        (shaped(1000, vec![SdMode(2)]), 11029),
        (shaped(1000, vec![SdMode(7)]), 11029),
        (shaped(1000, vec![SdMode(1), ShapingRate(0)]), 11030),
        (qos(3, vec![DsClass(64)]), 11013),
        (qos(3, vec![TrafficClass(8)]), 11013),
        (qos(3, vec![dest, dest]), 11013),
        (qos(6, vec![DsClass(64)]), 11013),
    ];
    for (q, code) in cases {
        assert_eq!(g.set(&s, &q).unwrap_err().raw(), code, "{q:?}");
        assert_eq!(
            e.lock().unwrap().control_snapshot().unwrap(),
            before,
            "{q:?} changed the engine"
        );
    }
    assert_eq!(g.get(s.as_raw_fd()).unwrap().sending.service_type, 2);
}

#[test]
fn shaping_sets_the_rate_and_a_refused_rate_changes_nothing() {
    use ProviderObject::{DestAddr, SdMode};
    let e = engine();
    let g = session(&e, USER);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = s.local_addr().unwrap();
    let dest = DestAddr(sa("192.0.2.1:5004"));
    let mut q = qos(3, vec![dest, SdMode(1)]);
    q.sending.token_rate = 125_000;
    // The engine shapes (issue 7): the set must succeed; a regression to 50 (shown as 11014)
    // fails here.
    g.set(&s, &q).unwrap();
    // The engine shapes: the flow is marked and carries the rate (bit/s at IP level).
    assert_eq!(marks(&e, local, "192.0.2.1:5004"), Some((40, 5)));
    let flow = e.lock().unwrap().flow_details().unwrap()[0].id;
    let h = e.lock().unwrap().handle_details().unwrap()[0].id;
    let rate = e.lock().unwrap().apply(
        h,
        &qosmark_abi::Request::QueryFlow {
            flow_id: flow,
            op: qosmark_abi::QueryFlow::OutgoingRate,
        },
    );
    assert_eq!(rate, Ok(qosmark_abi::Response::OutgoingRate(1_000_000)));
    // A rate the shaper refuses (100 bytes/s = 800 bit/s): WSA_QOS_EFLOWSPEC, and
    // nothing changes.
    let before = e.lock().unwrap().control_snapshot().unwrap();
    let mut slow = q.clone();
    slow.sending.token_rate = 100;
    assert_eq!(g.set(&s, &slow).unwrap_err().raw(), 11017);
    assert_eq!(e.lock().unwrap().control_snapshot().unwrap(), before);
}

#[test]
fn waits_answer_changes_and_would_hold_otherwise() {
    let e = engine();
    let g = session(&e, USER);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Nothing to wait for: 1168.
    assert_eq!(g.wait_change(s.as_raw_fd()).unwrap_err().raw(), 1168);
    g.set(
        &s,
        &qos(2, vec![ProviderObject::DestAddr(sa("192.0.2.1:5004"))]),
    )
    .unwrap();
    // Unchanged: a back end would hold it; the in-process transport answers 997.
    assert_eq!(g.wait_change(s.as_raw_fd()).unwrap_err().raw(), 997);
    // The state the wait compares against is the engine's now, as another handle of the same
    // process sees it...
    let flow = e.lock().unwrap().flow_details().unwrap()[0].id;
    let other = Client::in_process(Arc::clone(&e), USER).unwrap();
    let watched = other
        .request(&qosmark_abi::Request::WatchFlow {
            flow_id: flow,
            known: None,
        })
        .unwrap();
    assert_eq!(
        watched,
        qosmark_abi::Response::FlowState(FlowState {
            alive: true,
            mark: qosmark_abi::Mark {
                dscp: Some(qosmark_abi::Dscp::try_new(24).unwrap()),
                pcp: Some(qosmark_abi::Pcp::try_new(4).unwrap()),
            },
        })
    );
    // ...and another user's process sees nothing.
    let stranger = Client::in_process(
        Arc::clone(&e),
        Caller {
            pid: 2000,
            privilege: Privilege::User,
        },
    )
    .unwrap();
    assert_eq!(
        stranger
            .request(&qosmark_abi::Request::WatchFlow {
                flow_id: flow,
                known: None,
            })
            .unwrap(),
        qosmark_abi::Response::FlowState(FlowState::default())
    );
    // The flow ends behind the session's back (as the back end's reaper does): get reports
    // NOTRAFFIC and there is nothing to wait for any more.
    let h = e.lock().unwrap().handle_details().unwrap()[0].id;
    e.lock()
        .unwrap()
        .apply(
            h,
            &qosmark_abi::Request::RemoveSocketFromFlow {
                socket: None,
                flow_id: flow,
            },
        )
        .unwrap();
    let r = g.get(s.as_raw_fd()).unwrap();
    assert_eq!((r.sending.service_type, r.status_code), (0, 11008));
    assert_eq!(g.wait_change(s.as_raw_fd()).unwrap_err().raw(), 1168);
    // Set again: a new flow marks again.
    g.set(
        &s,
        &qos(0xA, vec![ProviderObject::DestAddr(sa("192.0.2.1:5004"))]),
    )
    .unwrap();
    assert_eq!(g.get(s.as_raw_fd()).unwrap().dscp, 48);
}

/// The rate `e`'s first handle reads for `flow` (bit/s), `None` for 232 (no rate).
fn rate_of(e: &Arc<Mutex<Engine>>, flow: u32) -> Option<u64> {
    let mut e = e.lock().unwrap();
    let h = e.handle_details().unwrap()[0].id;
    match e.apply(
        h,
        &qosmark_abi::Request::QueryFlow {
            flow_id: flow,
            op: qosmark_abi::QueryFlow::OutgoingRate,
        },
    ) {
        Ok(qosmark_abi::Response::OutgoingRate(r)) => Some(r),
        Err(err) if err.win32().0 == 232 => None,
        other => panic!("{other:?}"),
    }
}

/// A `set` on a socket that already marks fails in each of its steps — the service override
/// (5), the rate (11017), the registration of a new destination (87), with and without a
/// rate asked — and each time the engine is as before: no new destination, the old mark, the
/// old rate (cleared again when the old state had none; set again when the failed `set` had
/// cleared it, then with a new shaper of the same rate, so the snapshot is compared with
/// shaper ids left out). A refused clear is `a_refused_clear_changes_nothing`.
#[test]
fn a_failed_set_on_a_marking_socket_changes_nothing() {
    use ProviderObject::{DestAddr, DsClass, SdMode};
    let e = engine();
    let g = session(&e, USER);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = s.local_addr().unwrap();
    let one = DestAddr(sa("192.0.2.1:5004"));
    let two = DestAddr(sa("192.0.2.2:5004"));
    let v6 = DestAddr(sa("[2001:db8::1]:5004"));
    let shaped = |service: u32, token_rate: u32, objects: Vec<ProviderObject>| {
        let mut q = qos(service, objects);
        q.sending.token_rate = token_rate;
        q
    };
    for with_rate in [true, false] {
        let first = if with_rate {
            shaped(2, 125_000, vec![one, SdMode(1)])
        } else {
            qos(2, vec![one])
        };
        g.set(&s, &first).unwrap();
        let flow = e.lock().unwrap().flow_details().unwrap()[0].id;
        let rate = rate_of(&e, flow);
        assert_eq!(rate, with_rate.then_some(1_000_000));
        // The control state with each flow's shaper reduced to "has one".
        let state = |e: &Arc<Mutex<Engine>>| {
            let mut snap = e.lock().unwrap().control_snapshot().unwrap();
            let shaped: Vec<bool> = snap.flows.iter().map(|f| f.shaper.is_some()).collect();
            for f in &mut snap.flows {
                f.shaper = None;
            }
            (snap, shaped)
        };
        let before = state(&e);
        let failing: [(Qos, u32); 4] = [
            // Step 1: EF is the user's to set only when the administrator allows it.
            (qos(2, vec![two, DsClass(46)]), 5),
            // Step 2: a new service type is set, then a rate the shaper refuses (800 bit/s).
            (shaped(3, 100, vec![two, SdMode(1)]), 11017),
            // Step 3: a new service type and rate are set, then an IPv6 destination for an
            // IPv4 socket is refused.
            (shaped(3, 250_000, vec![v6, SdMode(0)]), 87),
            // Step 3 without shaping asked: the rate (if any) was cleared before it and is set
            // again.
            (qos(0xA, vec![v6]), 87),
        ];
        for (q, code) in failing {
            assert_eq!(g.set(&s, &q).unwrap_err().raw(), code, "{q:?}");
            assert_eq!(state(&e), before, "{q:?} changed the engine");
            assert_eq!(rate_of(&e, flow), rate, "{q:?} changed the rate");
            assert_eq!(marks(&e, local, "192.0.2.1:5004"), Some((24, 4)), "{q:?}");
            assert_eq!(marks(&e, local, "192.0.2.2:5004"), None, "{q:?}");
            let r = g.get(s.as_raw_fd()).unwrap();
            assert_eq!(r.sending, first.sending, "{q:?}");
            assert_eq!((r.dscp, r.pcp), (24, 4), "{q:?}");
        }
        g.set(&s, &qos(0, vec![])).unwrap();
    }
}

/// Each `set` replaces the shaping: without `QOS_SD_MODE` the rate goes (232 again), with
/// it a new one comes; `TC_NONCONF_BORROW` reports GQoS's non-conforming 0 / 1.
#[test]
fn a_set_without_sd_mode_ends_shaping_and_borrow_reports_0_and_1() {
    use ProviderObject::{DestAddr, SdMode, ShapingRate};
    let e = engine();
    let g = session(&e, USER);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dest = DestAddr(sa("192.0.2.1:5004"));
    let mut borrow = qos(3, vec![dest, SdMode(0)]);
    borrow.sending.token_rate = 125_000;
    g.set(&s, &borrow).unwrap();
    let flow = e.lock().unwrap().flow_details().unwrap()[0].id;
    assert_eq!(rate_of(&e, flow), Some(1_000_000));
    let priority = {
        let mut e = e.lock().unwrap();
        let h = e.handle_details().unwrap()[0].id;
        e.apply(
            h,
            &qosmark_abi::Request::QueryFlow {
                flow_id: flow,
                op: qosmark_abi::QueryFlow::PacketPriority,
            },
        )
    };
    assert_eq!(
        priority,
        Ok(qosmark_abi::Response::PacketPriority(
            qosmark_abi::PacketPriority {
                conformant_dscp: 40,
                non_conformant_dscp: 0,
                conformant_l2: 5,
                non_conformant_l2: 1,
            }
        ))
    );
    g.set(&s, &qos(3, vec![])).unwrap();
    assert_eq!(rate_of(&e, flow), None, "no QOS_SD_MODE: not shaped");
    assert!(e.lock().unwrap().flow_details().unwrap()[0]
        .shaper
        .is_none());
    // QOS_SHAPING_RATE names the rate; TokenRate may be unspecified but not 0.
    let mut by_object = qos(3, vec![SdMode(1), ShapingRate(250_000)]);
    g.set(&s, &by_object).unwrap();
    assert_eq!(rate_of(&e, flow), Some(2_000_000));
    let before = e.lock().unwrap().control_snapshot().unwrap();
    by_object.sending.token_rate = 0;
    assert_eq!(g.set(&s, &by_object).unwrap_err().raw(), 11017);
    assert_eq!(e.lock().unwrap().control_snapshot().unwrap(), before);
    // NOCHANGE with an object: the object would change the sending side.
    assert_eq!(
        g.set(&s, &qos(6, vec![dest])).unwrap_err().raw(),
        11013,
        "NOCHANGE + QOS_DESTADDR"
    );
    assert_eq!(e.lock().unwrap().control_snapshot().unwrap(), before);
    assert_eq!(rate_of(&e, flow), Some(2_000_000));
}

/// A socket value that was closed reads as never set, also when the system hands it to a new
/// socket (Linux `SO_COOKIE`); the records of closed sockets are swept as the map grows.
#[test]
fn closed_and_reused_socket_values_start_over_and_are_swept() {
    let e = engine();
    let g = session(&e, USER);
    let dest = vec![ProviderObject::DestAddr(sa("192.0.2.1:5004"))];
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let fd = s.as_raw_fd();
    g.set(&s, &qos(2, dest.clone())).unwrap();
    g.set(&s, &qos(1, vec![])).unwrap();
    assert_eq!(
        g.get(fd).unwrap().sending.service_type,
        1,
        "ended by BESTEFFORT"
    );
    // Another socket takes over the value: dup2 closes the first one and puts the second
    // in its place, so the value now names a different socket.
    let t = UdpSocket::bind("127.0.0.1:0").unwrap();
    // SAFETY: both are open descriptors this test owns; `fd` stays owned by `s`, which now
    // holds the duplicate of `t` and closes it when dropped.
    assert_eq!(unsafe { libc::dup2(t.as_raw_fd(), fd) }, fd);
    assert_eq!(
        g.get(fd).unwrap().sending,
        Flowspec::unspecified(0),
        "a new socket under the old value reads as never set"
    );
    // The same for a value that is simply closed.
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    let ufd = u.as_raw_fd();
    g.set(&u, &qos(2, dest.clone())).unwrap();
    g.set(&u, &qos(0, vec![])).unwrap();
    drop(u);
    assert_eq!(g.get(ufd).unwrap().sending, Flowspec::unspecified(0));
    // Many sockets set, ended and closed, each under its own descriptor number (a fresh
    // socket would reuse the last one's number and overwrite its record): the map does not
    // keep them.
    for i in 0..300 {
        let v = UdpSocket::bind("127.0.0.1:0").unwrap();
        // SAFETY: F_DUPFD on our open descriptor; the duplicate is closed below.
        let high = unsafe { libc::fcntl(v.as_raw_fd(), libc::F_DUPFD, 2000 + i) };
        assert_eq!(high, 2000 + i);
        g.set_raw(high, &qos(2, dest.clone())).unwrap();
        g.set_raw(high, &qos(0, vec![])).unwrap();
        // SAFETY: the duplicate made above, closed once.
        assert_eq!(unsafe { libc::close(high) }, 0);
    }
    assert!(g.remembered() <= 130, "{} records kept", g.remembered());
    assert!(e.lock().unwrap().flow_details().unwrap().is_empty());
}

/// A transport that passes the next `allow` requests (negative: all) and then fails every one
/// with 1450 — the back end's answer when the handle's request budget is spent — and, while
/// `fail_clear` is set, fails every `ClearOutgoingRate` the same way.
struct Faulty {
    inner: qosmark::InProcess,
    allow: Arc<std::sync::atomic::AtomicI64>,
    fail_clear: Arc<std::sync::atomic::AtomicBool>,
}

impl qosmark::Transport for Faulty {
    fn call(
        &mut self,
        request: &qosmark_abi::Request,
        socket: Option<qosmark::socket::RawSock>,
    ) -> Result<qosmark_abi::Response, qosmark::QosError> {
        use std::sync::atomic::Ordering::SeqCst;
        let busy = qosmark::QosError::new(qosmark_abi::status::Win32Error(1450));
        if self.fail_clear.load(SeqCst)
            && matches!(
                request,
                qosmark_abi::Request::SetFlow {
                    op: qosmark_abi::SetFlow::ClearOutgoingRate,
                    ..
                }
            )
        {
            return Err(busy);
        }
        match self.allow.load(SeqCst) {
            0 => return Err(busy),
            n if n > 0 => self.allow.store(n - 1, SeqCst),
            _ => {}
        }
        self.inner.call(request, socket)
    }
}

type Faults = (
    Arc<std::sync::atomic::AtomicI64>,
    Arc<std::sync::atomic::AtomicBool>,
);

fn faulty_session(e: &Arc<Mutex<Engine>>) -> (GqosSession, Faults) {
    let allow = Arc::new(std::sync::atomic::AtomicI64::new(-1));
    let fail_clear = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t = Faulty {
        inner: qosmark::InProcess::open(Arc::clone(e), USER).unwrap(),
        allow: Arc::clone(&allow),
        fail_clear: Arc::clone(&fail_clear),
    };
    let waits = Arc::clone(e);
    let g = GqosSession::with_client(
        Client::from_transport(Box::new(t)),
        Box::new(move || Client::in_process(Arc::clone(&waits), USER)),
    );
    (g, (allow, fail_clear))
}

/// When the back end refuses a step *and* the request that should restore the one before it
/// (its request budget spent: 1450), the session records what the flow really has, so the
/// next `set` of the old service is sent and takes effect (it used to be skipped as
/// "unchanged", leaving the new mark for good).
#[test]
fn a_failed_restore_is_recorded_and_the_next_set_repairs_it() {
    use std::sync::atomic::Ordering::SeqCst;
    let e = engine();
    let (g, (allow, _)) = faulty_session(&e);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = s.local_addr().unwrap();
    let one = ProviderObject::DestAddr(sa("192.0.2.1:5004"));
    let two = ProviderObject::DestAddr(sa("192.0.2.2:5004"));
    g.set(&s, &qos(2, vec![one])).unwrap();
    // The state check and the new service pass; the registration and the restore fail.
    allow.store(2, SeqCst);
    assert_eq!(g.set(&s, &qos(3, vec![two])).unwrap_err().raw(), 1450);
    allow.store(-1, SeqCst);
    // The back end kept Guaranteed (40 / 5), and the report says so.
    assert_eq!(marks(&e, local, "192.0.2.1:5004"), Some((40, 5)));
    assert_eq!(marks(&e, local, "192.0.2.2:5004"), None);
    let r = g.get(s.as_raw_fd()).unwrap();
    assert_eq!((r.dscp, r.pcp), (40, 5));
    // Controlled load again: sent, and in force.
    g.set(&s, &qos(2, vec![])).unwrap();
    assert_eq!(marks(&e, local, "192.0.2.1:5004"), Some((24, 4)));
    assert_eq!(g.get(s.as_raw_fd()).unwrap().dscp, 24);
}

/// Clearing the rate comes before the registration, so a refused clear leaves nothing behind:
/// no new destination, the old mark, the old rate.
#[test]
fn a_refused_clear_changes_nothing() {
    use std::sync::atomic::Ordering::SeqCst;
    let e = engine();
    let (g, (_, fail_clear)) = faulty_session(&e);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = s.local_addr().unwrap();
    let one = ProviderObject::DestAddr(sa("192.0.2.1:5004"));
    let two = ProviderObject::DestAddr(sa("192.0.2.2:5004"));
    let mut shaped = qos(2, vec![one, ProviderObject::SdMode(1)]);
    shaped.sending.token_rate = 125_000;
    g.set(&s, &shaped).unwrap();
    let flow = e.lock().unwrap().flow_details().unwrap()[0].id;
    let before = e.lock().unwrap().control_snapshot().unwrap();
    fail_clear.store(true, SeqCst);
    assert_eq!(g.set(&s, &qos(3, vec![two])).unwrap_err().raw(), 1450);
    fail_clear.store(false, SeqCst);
    assert_eq!(e.lock().unwrap().control_snapshot().unwrap(), before);
    assert_eq!(marks(&e, local, "192.0.2.2:5004"), None);
    assert_eq!(marks(&e, local, "192.0.2.1:5004"), Some((24, 4)));
    assert_eq!(rate_of(&e, flow), Some(1_000_000));
    // The same set, now allowed: the destination joins, the rate goes.
    g.set(&s, &qos(3, vec![two])).unwrap();
    assert_eq!(marks(&e, local, "192.0.2.2:5004"), Some((40, 5)));
    assert_eq!(rate_of(&e, flow), None);
}
