//! Packets whose IPv4 header checksum is wrong on the way in (a capture taken before checksum
//! offload fills it, or plain corruption): a packet qosmark rewrites leaves with a correct
//! checksum (the marker recomputes it in full), and a packet it does not rewrite — unmatched or
//! already carrying its mark — leaves byte-identical, wrong checksum included. Checked with
//! etherparse, not with qosmark's own code.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test code: failures are test failures"
)]

mod replay_common;

use etherparse::Ipv4HeaderSlice;
use replay_common::{capture, replay_json, scratch};

/// Byte ranges of every record's packet data in a little-endian microsecond pcap.
fn pcap_records(b: &[u8]) -> Vec<std::ops::Range<usize>> {
    assert_eq!(&b[..4], &0xa1b2_c3d4u32.to_le_bytes(), "little-endian pcap");
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= b.len() {
        let incl = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
        out.push(at + 16..at + 16 + incl);
        at += 16 + incl;
    }
    out
}

/// The IPv4 header of an untagged Ethernet frame, if it carries one.
fn ipv4(frame: &[u8]) -> Option<Ipv4HeaderSlice<'_>> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    Ipv4HeaderSlice::from_slice(&frame[14..]).ok()
}

fn checksum_ok(h: &Ipv4HeaderSlice<'_>) -> bool {
    h.to_header().calc_header_checksum() == h.header_checksum()
}

#[test]
fn wrong_ipv4_checksums_are_fixed_only_where_qosmark_rewrites() {
    let original = std::fs::read(capture("udp4-ether.pcap")).unwrap();
    let records = pcap_records(&original);
    // Break the header checksum of every IPv4 packet.
    let mut broken = original.clone();
    let mut ipv4_frames = 0;
    for r in &records {
        if ipv4(&original[r.clone()]).is_some() {
            broken[r.start + 14 + 10] ^= 0x5a;
            ipv4_frames += 1;
        }
    }
    assert!(ipv4_frames > 20, "the capture has IPv4 traffic");
    let input = scratch("bad-checksums.pcap");
    let output = scratch("bad-checksums.out.pcap");
    std::fs::write(&input, &broken).unwrap();
    let json = replay_json(&capture("sample-rules.toml"), &input, &output);
    let out = std::fs::read(&output).unwrap();
    assert_eq!(out.len(), broken.len());

    let (mut rewritten, mut untouched) = (0u64, 0u64);
    for r in &records {
        let (before, after) = (&broken[r.clone()], &out[r.clone()]);
        let Some(h_in) = ipv4(before) else {
            assert_eq!(before, after, "non-IPv4 frames are copied");
            continue;
        };
        assert!(!checksum_ok(&h_in));
        let h_out = ipv4(after).unwrap();
        if before == after {
            untouched += 1;
            assert!(!checksum_ok(&h_out), "an untouched packet keeps its bytes");
        } else {
            rewritten += 1;
            assert!(
                checksum_ok(&h_out),
                "a rewritten packet leaves with a valid checksum"
            );
            assert_ne!(h_in.to_header().dscp, h_out.to_header().dscp);
            assert_eq!(h_in.to_header().ecn, h_out.to_header().ecn);
            // Only the TOS byte and the checksum changed.
            let diff: Vec<usize> = (0..before.len())
                .filter(|&i| before[i] != after[i])
                .collect();
            assert!(diff.iter().all(|i| [14 + 1, 14 + 10, 14 + 11].contains(i)));
        }
    }
    let s = &json["summary"];
    assert_eq!(s["dscp_rewritten"], rewritten);
    assert!(rewritten > 0 && untouched > 0);
    // The packets that already carried their mark are among the untouched ones.
    assert!(s["already_marked"].as_u64().unwrap() > 0);
    // The same capture with correct checksums gets exactly the same verdicts.
    let clean_out = scratch("good-checksums.out.pcap");
    let clean = replay_json(
        &capture("sample-rules.toml"),
        &capture("udp4-ether.pcap"),
        &clean_out,
    );
    assert_eq!(clean["summary"]["marked"], s["marked"]);
    assert_eq!(clean["summary"]["already_marked"], s["already_marked"]);
}
