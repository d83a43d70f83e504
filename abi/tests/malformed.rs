//! Malformed records: every truncation and every single-byte corruption of every golden vector,
//! and one targeted test per documented error.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    clippy::doc_markdown,
    reason = "test code: a failure is a test failure; tables of cases are long"
)]

mod common;

use common::{golden_cases, golden_dir, Golden};
use qosmark_abi::codec::{self, AbiError, ErrorReply, Reply};
use qosmark_abi::ioctl::RequestKind;
use qosmark_abi::status::{NtStatus, Win32Error};
use qosmark_abi::{CounterSnapshot, Request, Response, RuleEntry};

fn golden(name: &str) -> Vec<u8> {
    std::fs::read(golden_dir().join(format!("{name}.bin"))).unwrap()
}

fn decode_as(case: &Golden, bytes: &[u8]) -> Result<(), AbiError> {
    match case {
        Golden::Request(_) => codec::decode_request(bytes).map(drop),
        Golden::Reply(kind, _) => codec::decode_response(*kind, bytes).map(drop),
    }
}

fn req(bytes: &[u8]) -> Result<Request, AbiError> {
    codec::decode_request(bytes)
}

fn resp(kind: RequestKind, bytes: &[u8]) -> Result<Reply, AbiError> {
    codec::decode_response(kind, bytes)
}

/// Writes `value` at payload offset `off` (header excluded).
fn patch(bytes: &mut [u8], off: usize, value: &[u8]) {
    bytes[16 + off..16 + off + value.len()].copy_from_slice(value);
}

/// Appends `extra` to the payload and fixes the header length.
fn grow(bytes: &mut Vec<u8>, extra: &[u8]) {
    bytes.extend_from_slice(extra);
    let len = u32::try_from(bytes.len()).unwrap();
    bytes[12..16].copy_from_slice(&len.to_le_bytes());
}

/// Removes `n` payload bytes from the end and fixes the header length.
fn shrink(bytes: &mut Vec<u8>, n: usize) {
    bytes.truncate(bytes.len() - n);
    let len = u32::try_from(bytes.len()).unwrap();
    bytes[12..16].copy_from_slice(&len.to_le_bytes());
}

#[test]
fn every_truncation_fails_with_truncated_or_bad_length() {
    for (name, case) in golden_cases() {
        let bytes = golden(name);
        for len in 0..bytes.len() {
            let err = decode_as(&case, &bytes[..len]).unwrap_err();
            let expected = if len < 16 {
                AbiError::Truncated
            } else {
                AbiError::BadLength
            };
            assert_eq!(err, expected, "{name} cut to {len}");
        }
    }
}

#[test]
fn every_truncation_with_fixed_length_fails_with_truncated() {
    // Same cuts, but the header length is made to agree: now the payload itself is short.
    for (name, case) in golden_cases() {
        let bytes = golden(name);
        for cut in 1..=bytes.len() - 16 {
            let mut b = bytes.clone();
            shrink(&mut b, cut);
            let err = decode_as(&case, &b).unwrap_err();
            // List answers cut inside the entries: the count promises more than the payload has.
            assert_eq!(
                err,
                AbiError::Truncated,
                "{name} payload shortened by {cut}"
            );
        }
    }
}

#[test]
fn every_single_byte_corruption_fails_cleanly_or_round_trips() {
    let mut accepted = 0usize;
    let mut refused = 0usize;
    for (name, case) in golden_cases() {
        let bytes = golden(name);
        for pos in 0..bytes.len() {
            for x in 1..=255u8 {
                let mut b = bytes.clone();
                b[pos] ^= x;
                // `decode_reencodes` asserts that an accepted record re-encodes to itself.
                match case.decode_reencodes(&b) {
                    Ok(()) => accepted += 1,
                    Err(_) => refused += 1,
                }
            }
        }
    }
    // Both outcomes occur (values are free in most u32/u64 fields, checked elsewhere).
    assert!(
        accepted > 0 && refused > 0,
        "accepted {accepted}, refused {refused}"
    );
}

#[test]
fn header_errors() {
    let good = golden("req_query_flow");
    assert!(req(&good).is_ok());

    let mut b = good.clone();
    b[0] = b'X';
    assert_eq!(req(&b), Err(AbiError::BadMagic));

    let mut b = good.clone();
    b[4..6].copy_from_slice(&2u16.to_le_bytes());
    assert_eq!(req(&b), Err(AbiError::BadVersion));
    b[4..6].copy_from_slice(&0u16.to_le_bytes());
    assert_eq!(req(&b), Err(AbiError::BadVersion));

    // Header length one more / one less than the buffer.
    let mut b = good.clone();
    b[12..16].copy_from_slice(&25u32.to_le_bytes());
    assert_eq!(req(&b), Err(AbiError::BadLength));
    b[12..16].copy_from_slice(&23u32.to_le_bytes());
    assert_eq!(req(&b), Err(AbiError::BadLength));
    // Extra bytes after the record (header still says 24).
    let mut b = good.clone();
    b.push(0);
    assert_eq!(req(&b), Err(AbiError::BadLength));

    // Non-zero flags, each byte.
    for i in 8..12 {
        let mut b = good.clone();
        b[i] = 1;
        assert_eq!(req(&b), Err(AbiError::ReservedNotZero), "flags byte {i}");
    }

    // Unknown kinds.
    for kind in [0x0000u16, 0x0010, 0x7FFF, 0x8000, 0x800B, 0x80FE, 0xFFFF] {
        let mut b = good.clone();
        b[6..8].copy_from_slice(&kind.to_le_bytes());
        assert_eq!(req(&b), Err(AbiError::BadKind), "kind {kind:#x}");
        assert_eq!(
            resp(RequestKind::QueryFlow, &b),
            Err(AbiError::BadKind),
            "kind {kind:#x}"
        );
    }

    // Too short for a header.
    assert_eq!(req(&[]), Err(AbiError::Truncated));
    assert_eq!(req(&good[..15]), Err(AbiError::Truncated));
}

#[test]
fn trailing_bytes() {
    for name in [
        "req_query_status",
        "req_query_flow",
        "req_add_rule",
        "req_set_traffic_table",
    ] {
        let mut b = golden(name);
        grow(&mut b, &[0]);
        assert_eq!(req(&b), Err(AbiError::TrailingBytes), "{name}");
    }
    let mut b = golden("resp_flow_ids");
    grow(&mut b, &[1, 0, 0, 0]);
    assert_eq!(
        resp(RequestKind::EnumerateFlows, &b),
        Err(AbiError::TrailingBytes)
    );
    let mut b = golden("resp_error");
    grow(&mut b, &[0]);
    assert_eq!(
        resp(RequestKind::RemoveSocketFromFlow, &b),
        Err(AbiError::TrailingBytes)
    );
}

#[test]
fn direction_and_pairing_of_kinds() {
    // An answer is not a request, a request is not an answer.
    assert_eq!(req(&golden("resp_done")), Err(AbiError::BadKind));
    assert_eq!(req(&golden("resp_error")), Err(AbiError::BadKind));
    assert_eq!(
        resp(RequestKind::QueryStatus, &golden("req_query_status")),
        Err(AbiError::BadKind)
    );
    // Answers only to their own requests.
    let status = golden("resp_status");
    for kind in RequestKind::ALL {
        let r = resp(kind, &status);
        if kind == RequestKind::QueryStatus {
            assert!(r.is_ok());
        } else {
            assert_eq!(r, Err(AbiError::BadKind), "{kind:?}");
        }
    }
    let done = golden("resp_done");
    for kind in RequestKind::ALL {
        let expect_ok = matches!(
            kind,
            RequestKind::RemoveSocketFromFlow
                | RequestKind::SetFlow
                | RequestKind::NotifyFlow
                | RequestKind::AddRule
                | RequestKind::RemoveRule
                | RequestKind::SetTrafficTable
                | RequestKind::ReplaceRules
        );
        assert_eq!(resp(kind, &done).is_ok(), expect_ok, "{kind:?}");
    }
    // The error record answers everything.
    let err = golden("resp_error");
    for kind in RequestKind::ALL {
        assert!(resp(kind, &err).is_ok(), "{kind:?}");
    }
    // A request record that arrived with another IOCTL.
    let q = golden("req_query_flow");
    assert!(codec::decode_request_for(RequestKind::QueryFlow, &q).is_ok());
    assert_eq!(
        codec::decode_request_for(RequestKind::SetFlow, &q),
        Err(AbiError::BadKind)
    );
}

#[test]
fn out_of_range_values_in_requests() {
    let add = golden("req_add_socket_to_flow_v4_connected");
    let cases: &[(usize, &[u8], AbiError)] = &[
        (8, &[5], AbiError::BadValue),           // socket family
        (9, &[1], AbiError::BadValue),           // protocol (ICMP)
        (10, &[2], AbiError::BadValue),          // peer presence flag
        (11, &[2], AbiError::BadValue),          // dest presence flag
        (12, &[6, 0, 0, 0], AbiError::BadValue), // traffic type 6
        (24, &[5], AbiError::BadValue),          // local address family
        (24, &[0], AbiError::BadValue),          // local address family 0
        (25, &[1], AbiError::ReservedNotZero),   // address reserved byte
        (28, &[1], AbiError::ReservedNotZero),   // v4 flowinfo
        (32, &[1], AbiError::ReservedNotZero),   // v4 scope id
        (40, &[1], AbiError::ReservedNotZero),   // v4 address padding
        (80, &[4], AbiError::ReservedNotZero),   // absent dest slot not zero
        (107, &[1], AbiError::ReservedNotZero),  // absent dest slot, last byte
    ];
    for (off, value, err) in cases {
        let mut b = add.clone();
        patch(&mut b, *off, value);
        assert_eq!(req(&b), Err(*err), "AddSocketToFlow offset {off}");
    }

    let set_rate = golden("req_set_flow_outgoing_rate");
    let mut b = set_rate.clone();
    patch(&mut b, 4, &[5, 0, 0, 0]); // operation 5
    assert_eq!(req(&b), Err(AbiError::BadValue));
    patch(&mut b, 4, &[4, 0, 0, 0]); // operation 4 (clear the rate) with a rate's bytes
    assert_eq!(req(&b), Err(AbiError::ReservedNotZero));
    // Operation 3 (GQoS service): service type, DSCP and 802.1p bounds, presence flags,
    // absent slots and the reserved tail.
    let service = golden("req_set_flow_service");
    for (off, value, err) in [
        (8usize, &[1u8, 0, 0, 0][..], AbiError::BadValue), // SERVICETYPE_BESTEFFORT
        (8, &[6, 0, 0, 0], AbiError::BadValue),            // SERVICETYPE_NOCHANGE
        (8, &[9, 0, 0, 0], AbiError::BadValue),            // SERVICETYPE_NONCONFORMING
        (12, &[2], AbiError::BadValue),                    // DSCP presence flag
        (13, &[64], AbiError::BadValue),                   // DSCP 64
        (14, &[1, 8], AbiError::BadValue),                 // 802.1p 8
        (15, &[1], AbiError::ReservedNotZero),             // absent 802.1p slot
        (23, &[1], AbiError::ReservedNotZero),             // reserved tail
    ] {
        let mut b = service.clone();
        patch(&mut b, off, value);
        assert_eq!(req(&b), Err(err), "Service offset {off}");
    }
    // Operation 4 (clear the rate): everything after the operation is reserved.
    let clear = golden("req_set_flow_clear_rate");
    for off in [8usize, 15, 23] {
        let mut b = clear.clone();
        patch(&mut b, off, &[1]);
        assert_eq!(
            req(&b),
            Err(AbiError::ReservedNotZero),
            "ClearOutgoingRate offset {off}"
        );
    }
    let mut b = clear.clone();
    patch(&mut b, 4, &[5]);
    assert_eq!(req(&b), Err(AbiError::BadValue), "operation 5");
    let watch = golden("req_watch_flow");
    for (off, value, err) in [
        (4usize, &[2u8][..], AbiError::BadValue), // known presence flag
        (5, &[0], AbiError::BadValue),            // not alive but with a mark
        (7, &[64], AbiError::BadValue),           // DSCP 64
        (9, &[9], AbiError::BadValue),            // 802.1p 9
        (4, &[0], AbiError::ReservedNotZero),     // absent known, slot not zero
        (15, &[1], AbiError::ReservedNotZero),    // reserved tail
    ] {
        let mut b = watch.clone();
        patch(&mut b, off, value);
        assert_eq!(req(&b), Err(err), "WatchFlow offset {off}");
    }
    let mut b = set_rate.clone();
    patch(&mut b, 16, &[3, 0, 0, 0]); // shaping 3
    assert_eq!(req(&b), Err(AbiError::BadValue));
    let mut b = golden("req_set_flow_traffic_type");
    patch(&mut b, 8, &[6, 0, 0, 0]);
    assert_eq!(req(&b), Err(AbiError::BadValue));
    let mut b = golden("req_set_flow_traffic_type");
    patch(&mut b, 23, &[1]);
    assert_eq!(req(&b), Err(AbiError::ReservedNotZero));
    // SetOutgoingDSCPValue keeps the caller's DWORD: 64 decodes (the engine answers 87).
    let mut b = golden("req_set_flow_dscp");
    patch(&mut b, 8, &[64, 0, 0, 0]);
    assert!(matches!(
        req(&b),
        Ok(Request::SetFlow {
            op: qosmark_abi::SetFlow::OutgoingDscp(64),
            ..
        })
    ));

    let mut b = golden("req_query_flow");
    patch(&mut b, 4, &[3, 0, 0, 0]);
    assert_eq!(req(&b), Err(AbiError::BadValue));

    let notify = golden("req_notify_flow");
    let mut b = notify.clone();
    patch(&mut b, 4, &[3, 0, 0, 0]);
    assert_eq!(req(&b), Err(AbiError::BadValue));
    let mut b = notify.clone();
    patch(&mut b, 8, &[2]);
    assert_eq!(req(&b), Err(AbiError::BadValue));
    let mut b = notify.clone();
    patch(&mut b, 9, &[1]);
    assert_eq!(req(&b), Err(AbiError::ReservedNotZero));
    let mut b = notify.clone();
    patch(&mut b, 8, &[0]); // absent, but the threshold slot holds 1 000 000
    assert_eq!(req(&b), Err(AbiError::ReservedNotZero));

    let mut b = golden("req_remove_socket_from_flow");
    patch(&mut b, 8, &[0]); // absent, but the socket slot holds 0x1A4
    assert_eq!(req(&b), Err(AbiError::ReservedNotZero));
    let mut b = golden("req_remove_flow");
    patch(&mut b, 9, &[1]);
    assert_eq!(req(&b), Err(AbiError::ReservedNotZero));
}

#[test]
fn out_of_range_values_in_rules() {
    let rule = golden("req_add_rule");
    let cases: &[(usize, &[u8], AbiError)] = &[
        (0, &[0], AbiError::BadValue),            // name length 0
        (0, &[65], AbiError::BadValue),           // name length 65
        (0, &[4], AbiError::ReservedNotZero),     // length 4: "-rtp" left in the padding
        (1, &[1], AbiError::ReservedNotZero),     // name reserved
        (4, &[0x07], AbiError::BadValue),         // control character in the name
        (4, &[0xFF], AbiError::BadValue),         // not UTF-8
        (12, b"x", AbiError::ReservedNotZero),    // byte after the name
        (69, &[1], AbiError::BadValue),           // protocol ICMP
        (70, &[2], AbiError::BadValue),           // action kind
        (71, &[64], AbiError::BadValue),          // DSCP 64
        (72, &[2], AbiError::BadValue),           // pcp presence flag
        (73, &[8], AbiError::BadValue),           // PCP 8
        (74, &[2], AbiError::BadValue),           // prefix presence flag
        (78, &[1], AbiError::ReservedNotZero),    // reserved
        (80, &[5], AbiError::BadValue),           // prefix family
        (81, &[33], AbiError::BadValue),          // IPv4 prefix length 33
        (81, &[8], AbiError::BadValue),           // 10.1.0.0/8: host bits set
        (82, &[1], AbiError::ReservedNotZero),    // prefix reserved
        (88, &[1], AbiError::ReservedNotZero),    // v4 prefix padding
        (100, &[6], AbiError::BadValue),          // remote v6 with local v4: mixed families
        (120, &[0x01, 0x80], AbiError::BadValue), // local ports first 32769 > last 32767
        (124, &[1], AbiError::ReservedNotZero),   // absent remote ports not zero
        // Throttle (u64 at 128): 0 = none is fine (the golden rule), else 12 000..=10^11.
        (128, &[1], AbiError::BadValue),          // 1 bit/s
        (128, &[0xDF, 0x2E], AbiError::BadValue), // 11 999 bit/s
        (128, &[1, 0xE8, 0x76, 0x48, 0x17], AbiError::BadValue), // 10^11 + 1
        (135, &[0x80], AbiError::BadValue),       // 2^63
    ];
    for (off, value, err) in cases {
        let mut b = rule.clone();
        patch(&mut b, *off, value);
        assert_eq!(req(&b), Err(*err), "AddRule offset {off} <- {value:?}");
    }
    // Traffic-type action 6.
    let mut b = rule.clone();
    patch(&mut b, 70, &[1, 6]);
    assert_eq!(req(&b), Err(AbiError::BadValue));
    // PCP absent but its byte set.
    let mut b = rule.clone();
    patch(&mut b, 72, &[0, 6]);
    assert_eq!(req(&b), Err(AbiError::ReservedNotZero));

    let mut b = golden("req_remove_rule");
    patch(&mut b, 0, &[0]);
    assert_eq!(req(&b), Err(AbiError::BadValue));

    // The same spec checks apply inside a Rules answer.
    let rules = golden("resp_rules");
    let mut b = rules.clone();
    patch(&mut b, 8 + 71, &[64]);
    assert_eq!(resp(RequestKind::ListRules, &b), Err(AbiError::BadValue));
    let mut b = rules.clone();
    patch(&mut b, 8 + 168 + 69, &[1]); // second entry's protocol
    assert_eq!(resp(RequestKind::ListRules, &b), Err(AbiError::BadValue));
    let mut b = rules.clone();
    patch(&mut b, 8 + 168 + 128, &[1, 0, 0, 0, 0, 0, 0, 0]); // second entry's throttle 1 bit/s
    assert_eq!(resp(RequestKind::ListRules, &b), Err(AbiError::BadValue));
    // The edges of the throttle decode.
    for bps in [12_000u64, 100_000_000_000] {
        let mut b = rule.clone();
        patch(&mut b, 128, &bps.to_le_bytes());
        match req(&b) {
            Ok(qosmark_abi::Request::AddRule(s)) => assert_eq!(s.throttle_bps, Some(bps)),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn out_of_range_values_in_tables_and_answers() {
    let table = golden("req_set_traffic_table");
    let cases: &[(usize, &[u8], AbiError)] = &[
        (4, &[2], AbiError::BadValue),         // dscp presence flag
        (5, &[64], AbiError::BadValue),        // DSCP 64
        (7, &[8], AbiError::BadValue),         // PCP 8
        (1, &[8], AbiError::ReservedNotZero),  // BestEffort: DSCP absent but byte set
        (3, &[1], AbiError::ReservedNotZero),  // BestEffort: PCP absent but byte set
        (32, &[2], AbiError::BadValue),        // tag_adaptive_flows 2
        (33, &[64], AbiError::BadValue),       // non-conformant DSCP 64
        (34, &[8], AbiError::BadValue),        // non-conformant 802.1p 8
        (35, &[1], AbiError::ReservedNotZero), // reserved
        (39, &[1], AbiError::ReservedNotZero), // reserved, last byte
    ];
    for (off, value, err) in cases {
        let mut b = table.clone();
        patch(&mut b, *off, value);
        assert_eq!(req(&b), Err(*err), "SetTrafficTable offset {off}");
    }
    // A table written before the non-conformant bytes existed (zeros there) decodes as
    // written, DSCP 0 and 802.1p 0 (the codec has no defaults: the table on the wire is
    // whole); in range, they decode as written.
    let mut b = table.clone();
    patch(&mut b, 33, &[0, 0]);
    match req(&b) {
        Ok(qosmark_abi::Request::SetTrafficTable(t)) => assert_eq!(
            (t.non_conformant_dscp.value(), t.non_conformant_pcp.value()),
            (0, 0)
        ),
        other => panic!("{other:?}"),
    }
    patch(&mut b, 33, &[63, 7]);
    match req(&b) {
        Ok(qosmark_abi::Request::SetTrafficTable(t)) => assert_eq!(
            (t.non_conformant_dscp.value(), t.non_conformant_pcp.value()),
            (63, 7)
        ),
        other => panic!("{other:?}"),
    }

    let mut b = golden("resp_flow_id");
    patch(&mut b, 0, &[0, 0, 0, 0]);
    assert_eq!(
        resp(RequestKind::AddSocketToFlow, &b),
        Err(AbiError::BadValue)
    );

    let mut b = golden("resp_flow_ids");
    patch(&mut b, 8, &[0, 0, 0, 0]);
    assert_eq!(
        resp(RequestKind::EnumerateFlows, &b),
        Err(AbiError::BadValue)
    );
    let mut b = golden("resp_flow_ids");
    patch(&mut b, 4, &[1]);
    assert_eq!(
        resp(RequestKind::EnumerateFlows, &b),
        Err(AbiError::ReservedNotZero)
    );
    // Count promising more / fewer ids than present.
    let mut b = golden("resp_flow_ids");
    patch(&mut b, 0, &[4]);
    assert_eq!(
        resp(RequestKind::EnumerateFlows, &b),
        Err(AbiError::Truncated)
    );
    patch(&mut b, 0, &[2]);
    assert_eq!(
        resp(RequestKind::EnumerateFlows, &b),
        Err(AbiError::TrailingBytes)
    );
    // Count above the cap.
    patch(&mut b, 0, &65_537u32.to_le_bytes());
    assert_eq!(
        resp(RequestKind::EnumerateFlows, &b),
        Err(AbiError::TooLarge)
    );
    let mut b = golden("resp_rules");
    patch(&mut b, 0, &4_097u32.to_le_bytes());
    assert_eq!(resp(RequestKind::ListRules, &b), Err(AbiError::TooLarge));

    let mut b = golden("resp_status");
    patch(&mut b, 2, &[1]);
    assert_eq!(
        resp(RequestKind::QueryStatus, &b),
        Err(AbiError::ReservedNotZero)
    );
    // Offset 20 was reserved; it now carries the shaper count.
    let mut b = golden("resp_status");
    patch(&mut b, 20, &9u32.to_le_bytes());
    match resp(RequestKind::QueryStatus, &b) {
        Ok(Reply::Response(qosmark_abi::Response::Status(s))) => assert_eq!(s.shapers, 9),
        other => panic!("{other:?}"),
    }

    // Error records: code 0; a required size with a code other than 122.
    let mut b = golden("resp_error");
    patch(&mut b, 0, &[0, 0, 0, 0]);
    assert_eq!(resp(RequestKind::SetFlow, &b), Err(AbiError::BadValue));
    let mut b = golden("resp_error");
    patch(&mut b, 4, &[1]);
    assert_eq!(resp(RequestKind::SetFlow, &b), Err(AbiError::BadValue));
}

#[test]
fn record_longer_than_the_maximum_is_too_large() {
    let len = codec::MAX_RECORD_LEN + 4;
    let mut b = golden("resp_flow_ids");
    b.resize(len as usize, 0);
    b[12..16].copy_from_slice(&len.to_le_bytes());
    assert_eq!(
        resp(RequestKind::EnumerateFlows, &b),
        Err(AbiError::TooLarge)
    );
    assert_eq!(req(&b), Err(AbiError::TooLarge));
}

#[test]
fn largest_lists_round_trip() {
    let ids: Vec<u32> = (1..=codec::MAX_FLOW_IDS).collect();
    let r = Response::FlowIds(ids);
    let mut out = Vec::new();
    codec::encode_response(&r, &mut out).unwrap();
    assert_eq!(out.len(), 16 + 8 + 4 * 65_536);
    assert_eq!(
        resp(RequestKind::EnumerateFlows, &out),
        Ok(Reply::Response(r))
    );

    let entry = RuleEntry {
        spec: common::sample_rule(),
        counters: CounterSnapshot::default(),
    };
    let r = Response::Rules(vec![entry; codec::MAX_RULES as usize]);
    out.clear();
    codec::encode_response(&r, &mut out).unwrap();
    assert_eq!(out.len(), codec::MAX_RECORD_LEN as usize);
    assert_eq!(resp(RequestKind::ListRules, &out), Ok(Reply::Response(r)));
}

#[test]
fn encoders_refuse_what_would_not_decode() {
    let mut out = vec![0xA5];
    let too_many: Vec<u32> = (1..=codec::MAX_FLOW_IDS + 1).collect();
    assert_eq!(
        codec::encode_response(&Response::FlowIds(too_many), &mut out),
        Err(AbiError::TooLarge)
    );
    assert_eq!(
        codec::encode_response(&Response::FlowIds(vec![1, 0]), &mut out),
        Err(AbiError::BadValue)
    );
    assert_eq!(
        codec::encode_response(&Response::FlowId(0), &mut out),
        Err(AbiError::BadValue)
    );
    let mut bad = common::sample_rule();
    bad.local_ports = Some(qosmark_abi::PortRange { first: 10, last: 9 });
    assert_eq!(
        codec::encode_request(&Request::AddRule(bad.clone()), &mut out),
        Err(AbiError::BadValue)
    );
    let entry = RuleEntry {
        spec: bad,
        counters: CounterSnapshot::default(),
    };
    assert_eq!(
        codec::encode_response(&Response::Rules(vec![entry]), &mut out),
        Err(AbiError::BadValue)
    );
    let e = ErrorReply {
        win32: Win32Error::SUCCESS,
        required_size: 0,
    };
    assert_eq!(codec::encode_error(e, &mut out), Err(AbiError::BadValue));
    let e = ErrorReply {
        win32: Win32Error::INVALID_PARAMETER,
        required_size: 4,
    };
    assert_eq!(codec::encode_error(e, &mut out), Err(AbiError::BadValue));
    // Nothing was appended by the failed calls.
    assert_eq!(out, [0xA5]);
}

#[test]
fn encoders_append() {
    let mut out = vec![0xA5; 3];
    codec::encode_request(&Request::QueryStatus, &mut out).unwrap();
    assert_eq!(out.len(), 3 + 16);
    assert_eq!(&out[..3], &[0xA5; 3]);
    assert_eq!(req(&out[3..]), Ok(Request::QueryStatus));
}

#[test]
fn every_error_is_invalid_parameter_except_memory() {
    use AbiError::*;
    for e in [
        Truncated,
        BadMagic,
        BadVersion,
        BadLength,
        BadKind,
        ReservedNotZero,
        BadValue,
        TrailingBytes,
        TooLarge,
    ] {
        assert_eq!(e.win32(), Win32Error(87), "{e:?}");
    }
    assert_eq!(OutOfMemory.win32(), Win32Error(8));
}

#[test]
fn size_protocol_for_short_buffers() {
    let r = Response::FlowIds(vec![3, 7, 0xFFFF_FFFF]);
    assert_eq!(codec::required_size(&r), 36);

    // Fits exactly.
    let mut out = Vec::new();
    let st = codec::encode_response_for_buffer(&r, 36, &mut out).unwrap();
    assert_eq!(st, NtStatus::SUCCESS);
    assert_eq!(out, golden("resp_flow_ids"));

    // Too small, but room for the error record: the golden insufficient-buffer record, with
    // STATUS_BUFFER_OVERFLOW (a warning: the I/O manager copies the 24 bytes).
    for cap in [24, 35] {
        out.clear();
        let st = codec::encode_response_for_buffer(&r, cap, &mut out).unwrap();
        assert_eq!(st.bits(), 0x8000_0005);
        assert!(st.is_warning());
        assert_eq!(out, golden("resp_error_insufficient_buffer"));
        assert_eq!(
            resp(RequestKind::EnumerateFlows, &out),
            Ok(Reply::Error(ErrorReply {
                win32: Win32Error(122),
                required_size: 36
            }))
        );
    }

    // Not even room for the error record: STATUS_BUFFER_TOO_SMALL, nothing to copy.
    for cap in [0, 16, 23] {
        out.clear();
        let st = codec::encode_response_for_buffer(&r, cap, &mut out).unwrap();
        assert_eq!(st.bits(), 0xC000_0023);
        assert!(out.is_empty());
    }
    // Invalid responses are refused, not size-reported.
    assert_eq!(
        codec::encode_response_for_buffer(&Response::FlowId(0), 4, &mut out),
        Err(AbiError::BadValue)
    );
}

#[test]
fn record_len_frames_streams() {
    for (name, _) in golden_cases() {
        let b = golden(name);
        // Header alone, header plus a partial payload, the record followed by the next one.
        assert_eq!(
            codec::record_len(&b[..16]),
            Ok(u32::try_from(b.len()).unwrap()),
            "{name}"
        );
        let mut two = b.clone();
        two.extend_from_slice(&b);
        assert_eq!(
            codec::record_len(&two),
            Ok(u32::try_from(b.len()).unwrap()),
            "{name}"
        );
    }
    let b = golden("resp_error_insufficient_buffer");
    assert_eq!(codec::record_len(&b[..15]), Err(AbiError::Truncated));
    let mut x = b.clone();
    x[1] = 0;
    assert_eq!(codec::record_len(&x), Err(AbiError::BadMagic));
    let mut x = b.clone();
    x[4] = 9;
    assert_eq!(codec::record_len(&x), Err(AbiError::BadVersion));
    let mut x = b.clone();
    x[12..16].copy_from_slice(&15u32.to_le_bytes());
    assert_eq!(codec::record_len(&x), Err(AbiError::BadLength));
    x[12..16].copy_from_slice(&(codec::MAX_RECORD_LEN + 1).to_le_bytes());
    assert_eq!(codec::record_len(&x), Err(AbiError::TooLarge));
    x[12..16].copy_from_slice(&codec::MAX_RECORD_LEN.to_le_bytes());
    assert_eq!(codec::record_len(&x), Ok(codec::MAX_RECORD_LEN));
}

/// Payload offsets in `resp_flows` (list header 8): first FLOW at 8, its first FLOW SOCKET at
/// 8 + 56 = 64, its third at 64 + 2 * 72 = 208; the second FLOW starts at 64 + 3 * 72 = 280.
#[test]
fn flows_answer_values() {
    let good = golden("resp_flows");
    let flows = |b: &[u8]| resp(RequestKind::ListFlows, b);
    assert!(flows(&good).is_ok());
    let cases: [(usize, &[u8], AbiError); 14] = [
        (0, &600u32.to_le_bytes(), AbiError::TooLarge), // count > 512
        (4, &5u32.to_le_bytes(), AbiError::BadValue),   // next_after not the last id
        (8, &0u32.to_le_bytes(), AbiError::BadValue),   // flow id 0
        (8, &7u32.to_le_bytes(), AbiError::BadValue),   // ids not strictly ascending
        (16, &[6], AbiError::BadValue),                 // traffic type 6
        (17, &[2], AbiError::BadValue),                 // adaptive flag 2
        (19, &[9], AbiError::ReservedNotZero),          // custom DSCP absent but non-zero
        (21, &[64], AbiError::BadValue),                // mark DSCP 64
        (23, &[3], AbiError::ReservedNotZero),          // mark PCP absent but non-zero
        (28, &17u32.to_le_bytes(), AbiError::TooLarge), // listed > 16
        (24, &2u32.to_le_bytes(), AbiError::BadValue),  // listed (3) > total (2)
        (72, &[7], AbiError::BadValue),                 // socket protocol 7
        (73, &[3], AbiError::BadValue),                 // binding kind 3
        (76, &[1], AbiError::ReservedNotZero),          // FLOW SOCKET reserved bytes
    ];
    for (off, value, expected) in cases {
        let mut b = good.clone();
        patch(&mut b, off, value);
        assert_eq!(flows(&b), Err(expected), "offset {off}");
    }
    // Binding "not bound" (the third socket of flow 3, at 80 + 2 * 72 = 224) with a port.
    let mut b = good.clone();
    assert_eq!(b[16 + 208 + 9], 0);
    patch(&mut b, 208 + 10, &[1, 0]);
    assert_eq!(flows(&b), Err(AbiError::ReservedNotZero));
    // Binding "any address" with a local ADDRESS present.
    let mut b = good.clone();
    assert_eq!(b[16 + 64 + 9], 1);
    patch(&mut b, 64 + 16, &[4]);
    assert_eq!(flows(&b), Err(AbiError::ReservedNotZero));
    // A count that the bytes cannot hold is refused before any allocation.
    let mut b = good.clone();
    patch(&mut b, 0, &512u32.to_le_bytes());
    assert_eq!(flows(&b), Err(AbiError::Truncated));
    // Answers never carry flags.
    let mut b = good.clone();
    b[8] = 1;
    assert_eq!(flows(&b), Err(AbiError::ReservedNotZero));
}

#[test]
fn largest_flow_page_fits_a_record() {
    use qosmark_abi::{
        CounterSnapshot, FlowPage, FlowRecord, FlowSocket, Mark, Protocol, SocketBinding,
        TrafficType,
    };
    let addr: std::net::SocketAddr = "[2001:db8::1]:443".parse().unwrap();
    let socket = FlowSocket {
        socket: u64::MAX,
        protocol: Protocol::Tcp,
        binding: SocketBinding::Address(addr),
        remote: addr,
    };
    let flows = (1..=codec::MAX_FLOWS_PER_PAGE)
        .map(|id| FlowRecord {
            id,
            pid: 1,
            traffic_type: TrafficType::Control,
            adaptive: true,
            custom_dscp: None,
            mark: Mark::default(),
            counters: CounterSnapshot::default(),
            sockets_total: u32::MAX,
            sockets: vec![socket; codec::MAX_LISTED_SOCKETS as usize],
        })
        .collect::<Vec<_>>();
    let page = Response::Flows(FlowPage {
        next_after: codec::MAX_FLOWS_PER_PAGE,
        flows,
    });
    let mut out = Vec::new();
    codec::encode_response(&page, &mut out).unwrap();
    assert_eq!(out.len(), 618_520);
    assert!(out.len() <= codec::MAX_RECORD_LEN as usize);
    assert_eq!(
        resp(RequestKind::ListFlows, &out),
        Ok(Reply::Response(page.clone()))
    );
    // One flow or one socket more is refused by the encoder.
    let Response::Flows(mut p) = page else {
        unreachable!()
    };
    p.flows[0].sockets.push(socket);
    assert_eq!(
        codec::encode_response(&Response::Flows(p.clone()), &mut Vec::new()),
        Err(AbiError::TooLarge)
    );
    p.flows[0].sockets.pop();
    p.flows[0].sockets_total = 3;
    assert_eq!(
        codec::encode_response(&Response::Flows(p), &mut Vec::new()),
        Err(AbiError::BadValue)
    );
}

#[test]
fn replace_rules_limits() {
    let rule = common::sample_rule();
    let too_many = Request::ReplaceRules(vec![rule; codec::MAX_RULES as usize + 1]);
    assert_eq!(
        codec::encode_request(&too_many, &mut Vec::new()),
        Err(AbiError::TooLarge)
    );
    let mut good = golden("req_replace_rules");
    assert!(req(&good).is_ok());
    patch(&mut good, 0, &3u32.to_le_bytes()); // count 3, two rules present
    assert_eq!(req(&good), Err(AbiError::Truncated));
}
