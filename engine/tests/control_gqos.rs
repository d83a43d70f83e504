//! The GQoS additions to the control plane: `SetFlow(Service)` (the service type's default
//! DSCP / 802.1p, overrides and their privilege rules) and `WatchFlow` (a flow's state, visible
//! to the caller's process). The expected marks are qos-api.md §11.4's table, written out here
//! independently of `ServiceType::default_mark`.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod control_common;

use control_common::*;
use qosmark_engine::abi::{
    Caller, Dscp, Family, FlowState, Mark, Pcp, Request, Response, ServiceMark, ServiceType,
    SetFlow, TrafficType,
};
use qosmark_engine::traffic::default_table;
use qosmark_engine::{Engine, EngineError, HandleId, Limits};

fn engine() -> Engine {
    Engine::new(Limits::default())
}

fn mark(dscp: u8, pcp: u8) -> Mark {
    Mark {
        dscp: Some(Dscp::try_new(dscp).unwrap()),
        pcp: Some(Pcp::try_new(pcp).unwrap()),
    }
}

fn service(service: ServiceType, dscp: Option<u8>, pcp: Option<u8>) -> SetFlow {
    SetFlow::Service(ServiceMark {
        service,
        dscp: dscp.map(|d| Dscp::try_new(d).unwrap()),
        pcp: pcp.map(|p| Pcp::try_new(p).unwrap()),
    })
}

fn watch(e: &mut Engine, h: HandleId, flow_id: u32) -> FlowState {
    match e.apply(
        h,
        &Request::WatchFlow {
            flow_id,
            known: None,
        },
    ) {
        Ok(Response::FlowState(s)) => s,
        other => panic!("{other:?}"),
    }
}

/// A non-adaptive UDP flow (GQoS flows are: one socket, several destinations) of `caller`.
fn flow(e: &mut Engine, caller: Caller, socket: u64) -> (HandleId, u32) {
    let h = e.open_handle(caller).unwrap();
    let port = 6000 + u16::try_from(socket).unwrap();
    let id = add_ok(
        e,
        h,
        &add(
            udp(socket, Family::V4, &format!("10.0.0.1:{port}")),
            Some("192.0.2.9:5004"),
            TrafficType::BestEffort,
            NON_ADAPTIVE,
            0,
        ),
    );
    (h, id)
}

#[test]
fn every_service_type_gets_its_documented_default_for_every_caller() {
    // qos-api.md §11.4: BestEffort/Qualitative 0/0, ControlledLoad 24/4, Guaranteed 40/5,
    // NetworkControl 48/7. (BestEffort ends the flow in the shim; it never reaches here.)
    let cases = [
        (ServiceType::Qualitative, mark(0, 0)),
        (ServiceType::ControlledLoad, mark(24, 4)),
        (ServiceType::Guaranteed, mark(40, 5)),
        (ServiceType::NetworkControl, mark(48, 7)),
    ];
    for caller in [USER, ADMIN, KERNEL] {
        let mut e = engine();
        let (h, id) = flow(&mut e, caller, 1);
        for (st, expected) in cases {
            e.apply(
                h,
                &Request::SetFlow {
                    flow_id: id,
                    op: service(st, None, None),
                },
            )
            .unwrap();
            let t = tuple(
                qosmark_engine::abi::Protocol::Udp,
                "10.0.0.1:6001",
                "192.0.2.9:5004",
            );
            assert_eq!(e.socket_lookup(&t), Some((id, expected)), "{st:?}");
            assert_eq!(
                watch(&mut e, h, id),
                FlowState {
                    alive: true,
                    mark: expected
                }
            );
        }
        e.check_control_invariants().unwrap();
    }
}

#[test]
fn the_default_holds_against_the_table_and_a_later_traffic_type() {
    let mut e = engine();
    let admin = e.open_handle(ADMIN).unwrap();
    let (h, id) = flow(&mut e, USER, 1);
    let set = |op| Request::SetFlow { flow_id: id, op };
    e.apply(h, &set(service(ServiceType::ControlledLoad, None, None)))
        .unwrap();
    // A table that tags nothing and marks Voice EF changes nothing of the service mark.
    let mut table = default_table();
    table.tag_adaptive_flows = false;
    table.marks[TrafficType::Voice.index()].dscp = Some(Dscp::EF);
    e.apply(admin, &Request::SetTrafficTable(table)).unwrap();
    e.apply(h, &set(SetFlow::TrafficType(TrafficType::Voice)))
        .unwrap();
    assert_eq!(watch(&mut e, h, id).mark, mark(24, 4));
    // QOSSetOutgoingDSCPValue afterwards replaces the DSCP only (user: allow-list).
    table.user_dscp_allow = 1 << 46;
    e.apply(admin, &Request::SetTrafficTable(table)).unwrap();
    e.apply(h, &set(SetFlow::OutgoingDscp(46))).unwrap();
    assert_eq!(watch(&mut e, h, id).mark, mark(46, 4));
}

#[test]
fn overrides_follow_the_privilege_rules_and_refusals_change_nothing() {
    let mut e = engine();
    let (h, id) = flow(&mut e, USER, 1);
    let set = |op| Request::SetFlow { flow_id: id, op };
    e.apply(h, &set(service(ServiceType::Guaranteed, None, None)))
        .unwrap();
    // An override equal to the default is no override: allowed.
    e.apply(h, &set(service(ServiceType::Guaranteed, Some(40), Some(5))))
        .unwrap();
    // QOS_DS_CLASS EF: not on the allow-list → 5; QOS_TRAFFIC_CLASS 6 → 5 (admin only).
    assert_refused(
        &mut e,
        h,
        &set(service(ServiceType::Guaranteed, Some(46), None)),
        EngineError::AccessDenied,
    );
    assert_refused(
        &mut e,
        h,
        &set(service(ServiceType::Guaranteed, None, Some(6))),
        EngineError::AccessDenied,
    );
    // Allow-listed DSCP: a user may.
    let admin = e.open_handle(ADMIN).unwrap();
    let mut table = default_table();
    table.user_dscp_allow = 1 << 46;
    e.apply(admin, &Request::SetTrafficTable(table)).unwrap();
    e.apply(h, &set(service(ServiceType::Guaranteed, Some(46), None)))
        .unwrap();
    assert_eq!(watch(&mut e, h, id).mark, mark(46, 5));
    // The 802.1p override still needs an administrator.
    assert_refused(
        &mut e,
        h,
        &set(service(ServiceType::Guaranteed, Some(46), Some(6))),
        EngineError::AccessDenied,
    );
    // An administrator's flow takes both.
    let (ha, ida) = flow(&mut e, ADMIN, 2);
    e.apply(
        ha,
        &Request::SetFlow {
            flow_id: ida,
            op: service(ServiceType::Qualitative, Some(34), Some(3)),
        },
    )
    .unwrap();
    assert_eq!(watch(&mut e, ha, ida).mark, mark(34, 3));
    // Unknown flow, another handle's flow, flow 0: 1168, nothing changes.
    for other in [0, ida, 999] {
        assert_refused(
            &mut e,
            h,
            &Request::SetFlow {
                flow_id: other,
                op: service(ServiceType::Guaranteed, None, None),
            },
            EngineError::NotFound,
        );
    }
}

#[test]
fn watch_sees_the_callers_process_only_and_ended_flows_read_not_alive() {
    let mut e = engine();
    let (h, id) = flow(&mut e, USER, 1);
    e.apply(
        h,
        &Request::SetFlow {
            flow_id: id,
            op: service(ServiceType::NetworkControl, None, None),
        },
    )
    .unwrap();
    let alive = FlowState {
        alive: true,
        mark: mark(48, 7),
    };
    // Another handle of the same process sees it (the shim waits on a second handle).
    let same_pid = e.open_handle(USER).unwrap();
    assert_eq!(watch(&mut e, same_pid, id), alive);
    // Another user's process does not; an administrator does.
    let other = e.open_handle(USER2).unwrap();
    assert_eq!(watch(&mut e, other, id), FlowState::default());
    let admin = e.open_handle(ADMIN).unwrap();
    assert_eq!(watch(&mut e, admin, id), alive);
    // WatchFlow changes nothing, whatever `known` says.
    let before = e.control_snapshot().unwrap();
    let r = e.apply(
        same_pid,
        &Request::WatchFlow {
            flow_id: id,
            known: Some(alive),
        },
    );
    assert_eq!(r, Ok(Response::FlowState(alive)));
    assert_eq!(e.control_snapshot().unwrap(), before);
    // The owner's handle closes: the flow is gone for everyone.
    e.close_handle(h).unwrap();
    assert_eq!(watch(&mut e, same_pid, id), FlowState::default());
    assert_eq!(watch(&mut e, admin, id), FlowState::default());
    // A closed handle gets 6.
    assert_eq!(
        e.apply(
            h,
            &Request::WatchFlow {
                flow_id: id,
                known: None
            }
        ),
        Err(EngineError::InvalidHandle)
    );
}
