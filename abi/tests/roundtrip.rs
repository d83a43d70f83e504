//! Property tests: every valid value round-trips through its record; arbitrary bytes never make a
//! decoder panic, and whatever they decode to re-encodes to the same bytes.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    clippy::doc_markdown,
    reason = "test code: a failure is a test failure; tables of cases are long"
)]

mod common;

use proptest::prelude::*;
use qosmark_abi::codec::{self, Reply};
use qosmark_abi::ioctl::RequestKind;
use qosmark_abi::status::NtStatus;

/// Builds a record with a valid header around `payload`.
fn record(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = b"QMRK".to_vec();
    b.extend_from_slice(&qosmark_abi::PROTOCOL_VERSION.to_le_bytes());
    b.extend_from_slice(&kind.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&u32::try_from(16 + payload.len()).unwrap().to_le_bytes());
    b.extend_from_slice(payload);
    b
}

const KINDS: [u16; 26] = [
    0x0001, 0x0002, 0x0003, 0x0004, 0x0005, 0x0006, 0x0007, 0x0008, 0x0009, 0x000A, 0x000B, 0x000C,
    0x000D, 0x000E, 0x000F, 0x8001, 0x8002, 0x8003, 0x8004, 0x8005, 0x8006, 0x8007, 0x8008, 0x8009,
    0x800A, 0x80FF,
];

/// Decodes `bytes` every way; each success must re-encode to exactly `bytes`.
fn decode_everything(bytes: &[u8]) {
    if let Ok(r) = codec::decode_request(bytes) {
        let mut out = Vec::new();
        codec::encode_request(&r, &mut out).unwrap();
        assert_eq!(out, bytes);
    }
    if let Ok((r, flags)) = codec::decode_request_with_flags(bytes) {
        let mut out = Vec::new();
        codec::encode_request_with_flags(&r, flags, &mut out).unwrap();
        assert_eq!(out, bytes);
    }
    for kind in RequestKind::ALL {
        if let Ok(r) = codec::decode_response(kind, bytes) {
            let mut out = Vec::new();
            codec::encode_reply(&r, &mut out).unwrap();
            assert_eq!(out, bytes);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn requests_round_trip(request in common::request()) {
        let mut out = Vec::new();
        codec::encode_request(&request, &mut out).unwrap();
        prop_assert_eq!(out.len(), codec::request_size(&request) as usize);
        let kind = RequestKind::of(&request);
        prop_assert_eq!(codec::decode_request_for(kind, &out), Ok(request));
    }

    #[test]
    fn responses_round_trip(response in common::response()) {
        let mut out = Vec::new();
        codec::encode_response(&response, &mut out).unwrap();
        prop_assert_eq!(out.len(), codec::required_size(&response) as usize);
        let kind = common::kind_for(&response);
        prop_assert_eq!(codec::decode_response(kind, &out), Ok(Reply::Response(response)));
    }

    #[test]
    fn errors_round_trip(error in common::error_reply(), kind in 0usize..RequestKind::ALL.len()) {
        let mut out = Vec::new();
        codec::encode_error(error, &mut out).unwrap();
        prop_assert_eq!(out.len(), codec::ERROR_RECORD_LEN as usize);
        let kind = RequestKind::ALL[kind];
        prop_assert_eq!(codec::decode_response(kind, &out), Ok(Reply::Error(error)));
    }

    #[test]
    fn size_protocol(response in common::response(), capacity in 0u32..400) {
        let mut out = Vec::new();
        let status = codec::encode_response_for_buffer(&response, capacity, &mut out).unwrap();
        let need = codec::required_size(&response);
        let kind = common::kind_for(&response);
        if need <= capacity {
            prop_assert_eq!(status, NtStatus::SUCCESS);
            prop_assert_eq!(codec::decode_response(kind, &out), Ok(Reply::Response(response)));
        } else if capacity >= codec::ERROR_RECORD_LEN {
            prop_assert_eq!(status, NtStatus::BUFFER_OVERFLOW);
            prop_assert!(out.len() as u32 <= capacity);
            let expected = codec::ErrorReply {
                win32: qosmark_abi::status::Win32Error::INSUFFICIENT_BUFFER,
                required_size: need,
            };
            prop_assert_eq!(codec::decode_response(kind, &out), Ok(Reply::Error(expected)));
        } else {
            prop_assert_eq!(status, NtStatus::BUFFER_TOO_SMALL);
            prop_assert!(out.is_empty());
        }
    }

    #[test]
    fn flagged_requests(request in common::request(), flags in prop_oneof![Just(0u32), Just(1), any::<u32>()]) {
        let kind = RequestKind::of(&request);
        let allowed = flags == 0
            || (flags == 1 && matches!(kind, RequestKind::SetFlow | RequestKind::QueryFlow | RequestKind::NotifyFlow | RequestKind::WatchFlow));
        prop_assert_eq!(codec::flags_allowed(kind, flags), allowed);
        let mut out = Vec::new();
        let r = codec::encode_request_with_flags(&request, flags, &mut out);
        if allowed {
            prop_assert_eq!(r, Ok(()));
            prop_assert_eq!(&out[8..12], &flags.to_le_bytes());
            prop_assert_eq!(codec::decode_request_with_flags(&out), Ok((request.clone(), flags)));
            let plain = codec::decode_request(&out);
            if flags == 0 {
                prop_assert_eq!(plain, Ok(request));
            } else {
                prop_assert_eq!(plain, Err(codec::AbiError::ReservedNotZero));
            }
        } else {
            prop_assert_eq!(r, Err(codec::AbiError::ReservedNotZero));
            prop_assert!(out.is_empty());
            // The same bytes with the flag patched in are refused by the decoder too.
            codec::encode_request(&request, &mut out).unwrap();
            out[8..12].copy_from_slice(&flags.to_le_bytes());
            prop_assert_eq!(codec::decode_request_with_flags(&out), Err(codec::AbiError::ReservedNotZero));
        }
    }

    #[test]
    fn qos2_answers_are_the_bare_structures(response in common::response()) {
        let mut out = vec![0xAA];
        let r = codec::encode_qos2_answer(&response, &mut out);
        // Written out independently: QOS_PACKET_PRIORITY = 4 x ULONG, the rate a UINT64.
        let expected: Option<Vec<u8>> = match &response {
            // A WatchFlow completion is a bare notification, like FD_QOS.
            qosmark_abi::Response::Done | qosmark_abi::Response::FlowState(_) => Some(vec![]),
            qosmark_abi::Response::PacketPriority(p) => Some(
                [p.conformant_dscp, p.non_conformant_dscp, p.conformant_l2, p.non_conformant_l2]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            qosmark_abi::Response::OutgoingRate(v) => Some(v.to_le_bytes().to_vec()),
            _ => None,
        };
        if let Some(e) = expected {
            prop_assert_eq!(r, Ok(()));
            prop_assert_eq!(&out[1..], &e[..]);
            prop_assert_eq!(codec::qos2_answer_len(&response), Some(e.len() as u32));
        } else {
            prop_assert_eq!(r, Err(codec::AbiError::BadKind));
            prop_assert_eq!(out, vec![0xAA]);
            prop_assert_eq!(codec::qos2_answer_len(&response), None);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        decode_everything(&bytes);
    }

    #[test]
    fn arbitrary_payloads_behind_a_valid_header(
        kind in 0usize..KINDS.len(),
        payload in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        decode_everything(&record(KINDS[kind], &payload));
    }

    #[test]
    fn mostly_zero_payloads_behind_a_valid_header(
        kind in 0usize..KINDS.len(),
        len in 0usize..200,
        pokes in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..20), 0..4),
    ) {
        // Zero payloads with a few small bytes reach far deeper than random ones (flags 0/1,
        // families 4/6, counts that match).
        let mut payload = vec![0u8; len];
        if len > 0 {
            for (i, v) in pokes {
                payload[i.index(len)] = v;
            }
        }
        decode_everything(&record(KINDS[kind], &payload));
    }

    #[test]
    fn mutated_valid_records(
        request in common::request(),
        pos in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let mut out = Vec::new();
        codec::encode_request(&request, &mut out).unwrap();
        let i = pos.index(out.len());
        out[i] = value;
        decode_everything(&out);
    }
}
