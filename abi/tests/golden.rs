//! Golden wire vectors: `abi/golden/<name>.bin` holds one record per request and answer kind.
//!
//! The normal run checks both directions byte for byte: decode(file) == the expected value
//! written out in `common::golden_cases`, and encode(expected) == file. `QOSMARK_BLESS=1 cargo
//! test -p qosmark-abi --test golden` rewrites the files from the expected values (run once, then
//! review the diff). A few small records are also spelled out byte by byte below, as an
//! independent check of the layout the module docs draw.
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
use qosmark_abi::codec::{self, ErrorReply, Reply};
use qosmark_abi::ioctl::RequestKind;
use qosmark_abi::status::Win32Error;
use qosmark_abi::{QueryFlow, Request, Response};

/// The fuzz seed corpus, which holds a copy of every golden vector.
fn fuzz_corpus_dir() -> std::path::PathBuf {
    golden_dir().join("../../fuzz/corpus/abi_decode")
}

fn bless() -> bool {
    std::env::var_os("QOSMARK_BLESS").is_some_and(|v| v == "1")
}

#[test]
fn golden_vectors_match_both_ways() {
    let dir = golden_dir();
    if bless() {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    for (name, case) in golden_cases() {
        assert!(seen.insert(name), "duplicate golden name {name}");
        let path = dir.join(format!("{name}.bin"));
        let encoded = case.encode();
        let seed_path = fuzz_corpus_dir().join(format!("{name}.bin"));
        if bless() {
            std::fs::write(&path, &encoded).unwrap();
            std::fs::write(&seed_path, &encoded).unwrap();
        }
        let file = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with QOSMARK_BLESS=1 once)", path.display()));
        assert_eq!(encoded, file, "{name}: encode(expected) != golden file");
        assert_eq!(
            std::fs::read(&seed_path).ok(),
            Some(file.clone()),
            "{name}: fuzz seed differs"
        );
        match &case {
            Golden::Request(expected) => {
                assert_eq!(&codec::decode_request(&file).unwrap(), expected, "{name}");
                let kind = RequestKind::of(expected);
                assert_eq!(&codec::decode_request_for(kind, &file).unwrap(), expected);
                assert_eq!(file.len(), codec::request_size(expected) as usize, "{name}");
            }
            Golden::Reply(kind, expected) => {
                assert_eq!(
                    &codec::decode_response(*kind, &file).unwrap(),
                    expected,
                    "{name}"
                );
                if let Reply::Response(r) = expected {
                    assert_eq!(file.len(), codec::required_size(r) as usize, "{name}");
                }
            }
        }
    }
    // Every request kind and every answer kind has a vector.
    let cases = golden_cases();
    for kind in RequestKind::ALL {
        assert!(
            cases
                .iter()
                .any(|(_, c)| matches!(c, Golden::Request(r) if RequestKind::of(r) == kind)),
            "no request vector for {kind:?}"
        );
    }
    for kind in [
        0x8001u16, 0x8002, 0x8003, 0x8004, 0x8005, 0x8006, 0x8007, 0x8008, 0x8009, 0x80FF,
    ] {
        assert!(
            cases.iter().any(|(_, c)| {
                matches!(c, Golden::Reply(..)) && c.encode()[6..8] == kind.to_le_bytes()
            }),
            "no answer vector for kind {kind:#06x}"
        );
    }
    // No stray files.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file_name = entry.unwrap().file_name();
        let stem = file_name.to_str().unwrap().trim_end_matches(".bin");
        assert!(
            seen.contains(stem),
            "golden/{stem}.bin has no expected value"
        );
    }
}

/// Header bytes for `kind` and total `len`: magic "QMRK", version 1, flags 0.
fn header(kind: u16, len: u32) -> Vec<u8> {
    let mut h = b"QMRK".to_vec();
    h.extend_from_slice(&[1, 0]);
    h.extend_from_slice(&kind.to_le_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h.extend_from_slice(&len.to_le_bytes());
    h
}

#[test]
fn small_records_spelled_out() {
    // QueryStatus: header only.
    let mut out = Vec::new();
    codec::encode_request(&Request::QueryStatus, &mut out).unwrap();
    assert_eq!(
        out,
        [0x51, 0x4D, 0x52, 0x4B, 0x01, 0x00, 0x01, 0x00, 0, 0, 0, 0, 0x10, 0, 0, 0]
    );

    // QueryFlow { flow 3, PacketPriority (1) }.
    let mut expected = header(0x0005, 24);
    expected.extend_from_slice(&[3, 0, 0, 0, 1, 0, 0, 0]);
    out.clear();
    codec::encode_request(
        &Request::QueryFlow {
            flow_id: 3,
            op: QueryFlow::PacketPriority,
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(out, expected);

    // FlowId(7).
    let mut expected = header(0x8003, 20);
    expected.extend_from_slice(&[7, 0, 0, 0]);
    out.clear();
    codec::encode_response(&Response::FlowId(7), &mut out).unwrap();
    assert_eq!(out, expected);

    // FlowIds [3, 7]: count, reserved, ids.
    let mut expected = header(0x8006, 32);
    expected.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 7, 0, 0, 0]);
    out.clear();
    codec::encode_response(&Response::FlowIds(vec![3, 7]), &mut out).unwrap();
    assert_eq!(out, expected);

    // Error { 122, required 36 }.
    let mut expected = header(0x80FF, 24);
    expected.extend_from_slice(&[122, 0, 0, 0, 36, 0, 0, 0]);
    out.clear();
    codec::encode_error(
        ErrorReply {
            win32: Win32Error::INSUFFICIENT_BUFFER,
            required_size: 36,
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(out, expected);
}

fn encoded_case(name: &str) -> Vec<u8> {
    golden_cases()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap()
        .1
        .encode()
}

#[test]
fn address_and_rule_layout_spelled_out() {
    // From the expected values (the file equality is `golden_vectors_match_both_ways`'s job; this
    // way the test does not race a blessing run).
    let file = encoded_case("req_add_socket_to_flow_v4_connected");
    assert_eq!(file.len(), 16 + 108);
    let p = &file[16..];
    assert_eq!(&p[0..8], &0x1234_5678_9ABC_DEF0u64.to_le_bytes()); // socket
    assert_eq!(&p[8..12], &[4, 6, 1, 0]); // family 4, TCP, peer present, no dest
    assert_eq!(&p[12..24], &[3, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0]); // AudioVideo, flags 0, flow 7
                                                                   // local 10.1.2.3:49152
    let mut local = vec![4, 0, 0x00, 0xC0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 1, 2, 3];
    local.extend_from_slice(&[0; 12]);
    assert_eq!(&p[24..52], &local[..]);
    // peer 192.0.2.80:443
    let mut peer = vec![4, 0, 0xBB, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 192, 0, 2, 80];
    peer.extend_from_slice(&[0; 12]);
    assert_eq!(&p[52..80], &peer[..]);
    assert_eq!(&p[80..108], &[0; 28]); // dest absent

    let rule = encoded_case("req_add_rule");
    let p = &rule[16..];
    assert_eq!(p.len(), 136);
    assert_eq!(p[0], 8); // name length of "voip-rtp"
    assert_eq!(&p[4..12], b"voip-rtp");
    assert!(p[12..68].iter().all(|b| *b == 0));
    // precedence 200, UDP, DSCP action 46, pcp present 6, local+remote prefix, local ports.
    assert_eq!(&p[68..80], &[200, 17, 0, 46, 1, 6, 1, 1, 1, 0, 0, 0]);
    assert_eq!(&p[80..84], &[4, 16, 0, 0]);
    assert_eq!(&p[84..88], &[10, 1, 0, 0]);
    assert_eq!(&p[100..104], &[4, 24, 0, 0]);
    assert_eq!(&p[104..108], &[192, 0, 2, 0]);
    assert_eq!(&p[120..128], &[0x00, 0x40, 0xFF, 0x7F, 0, 0, 0, 0]); // 16384..=32767, none
    assert_eq!(&p[128..136], &[0; 8]); // no throttle
                                       // The second rule of ReplaceRules throttles at 2 500 000 bit/s = 0x2625A0, LE u64.
    let replace = encoded_case("req_replace_rules");
    let second = &replace[16 + 8 + 136..];
    assert_eq!(second.len(), 136);
    assert_eq!(&second[128..136], &[0xA0, 0x25, 0x26, 0, 0, 0, 0, 0]);
}
