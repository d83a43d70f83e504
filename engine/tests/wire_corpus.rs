//! The seed corpus of the `packet_rewrite` fuzz target (`fuzz/corpus/packet_rewrite/`).
//!
//! The seeds are generated here, with etherparse, so they are real packets. By default this
//! test checks that the committed files are exactly what it generates; run it with
//! `QOSMARK_WRITE_CORPUS=1` to (re)write them:
//!
//! ```text
//! QOSMARK_WRITE_CORPUS=1 cargo test -p qosmark-engine --test wire_corpus
//! ```
// Tests index and unwrap buffers they built themselves.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::missing_panics_doc
)]

mod common;

use std::path::PathBuf;

use common::{build_v4, build_v6, link_prefix, L4, V4, V6};
use qosmark_engine::wire::{parse_ethernet, parse_ip};

fn v4(dscp: u8, options: usize, mf: bool, offset: u16) -> V4 {
    V4 {
        src: [192, 0, 2, 10],
        dst: [198, 51, 100, 20],
        dscp,
        ecn: 1,
        ttl: 64,
        options: vec![1; options],
        id: 0x4242,
        df: !mf && offset == 0,
        mf,
        offset,
    }
}

fn v6(dscp: u8) -> V6 {
    V6 {
        src: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10],
        dst: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 20],
        dscp,
        ecn: 2,
        flow: 0x1_2345,
        hbh: None,
        dest: None,
        routing: None,
        frag: None,
    }
}

/// The seeds, by file name.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let payload = b"qosmark";
    let mut bad_checksum = build_v4(&v4(46, 0, false, 0), L4::Udp(5004, 5004), payload, &[]).bytes;
    bad_checksum[10] ^= 0xff;
    let mut esp = build_v6(&v6(0), L4::Udp(1, 1), &[], &[]).bytes;
    esp[6] = 50;
    let mut long_chain = vec![0xa5u8; 40 + 8 * 10 + 8];
    long_chain[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 88, 60, 64]);
    for i in 0..10 {
        long_chain[40 + 8 * i] = if i == 9 { 17 } else { 60 };
        long_chain[41 + 8 * i] = 0;
    }
    let udp4 = build_v4(&v4(0, 0, false, 0), L4::Udp(5060, 5060), payload, &[]).bytes;
    let tcp6 = build_v6(&v6(34), L4::Tcp(49152, 443), payload, &[]).bytes;
    let mut frame1 = link_prefix(&[(0x8100, 5, false, 100)], false);
    frame1.extend_from_slice(&udp4);
    let mut frame2 = link_prefix(&[(0x88a8, 0, true, 4000), (0x8100, 3, false, 7)], true);
    frame2.extend_from_slice(&tcp6);
    vec![
        ("v4-udp.bin", udp4.clone()),
        (
            "v4-tcp-options.bin",
            build_v4(&v4(10, 12, false, 0), L4::Tcp(40000, 80), payload, &[]).bytes,
        ),
        (
            "v4-icmp.bin",
            build_v4(&v4(0, 0, false, 0), L4::Icmp, payload, &[]).bytes,
        ),
        (
            "v4-first-fragment.bin",
            build_v4(&v4(46, 0, true, 0), L4::Udp(9, 9), payload, &[]).bytes,
        ),
        (
            "v4-later-fragment.bin",
            build_v4(&v4(46, 4, false, 100), L4::Udp(9, 9), payload, &[]).bytes,
        ),
        (
            "v4-padded.bin",
            build_v4(&v4(8, 0, false, 0), L4::Tcp(1, 2), &[], &[0; 6]).bytes,
        ),
        ("v4-bad-checksum.bin", bad_checksum),
        ("v6-tcp.bin", tcp6.clone()),
        (
            "v6-ext-chain.bin",
            build_v6(
                &V6 {
                    hbh: Some(0),
                    dest: Some(1),
                    routing: Some((0, Some(0))),
                    ..v6(46)
                },
                L4::Udp(3478, 3478),
                payload,
                &[],
            )
            .bytes,
        ),
        (
            "v6-later-fragment.bin",
            build_v6(
                &V6 {
                    frag: Some((10, true, 0xdead)),
                    ..v6(0)
                },
                L4::Udp(53, 53),
                payload,
                &[],
            )
            .bytes,
        ),
        ("v6-esp.bin", esp),
        ("v6-long-chain.bin", long_chain),
        ("eth-vlan-v4.bin", frame1),
        ("eth-qinq-v6.bin", frame2),
    ]
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/packet_rewrite")
}

#[test]
fn seeds_are_valid_packets() {
    for (name, bytes) in seeds() {
        if name.starts_with("eth-") {
            let s = parse_ethernet(&bytes).unwrap();
            parse_ip(&bytes[s.ip_offset().unwrap()..]).unwrap();
        } else {
            parse_ip(&bytes).unwrap();
        }
    }
}

#[test]
fn committed_seed_corpus_is_current() {
    let dir = corpus_dir();
    let write = std::env::var_os("QOSMARK_WRITE_CORPUS").is_some();
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, bytes) in seeds() {
        let path = dir.join(name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        } else {
            // A missing file reads as empty and fails the comparison below.
            let committed = std::fs::read(&path).unwrap_or_default();
            assert_eq!(
                committed, bytes,
                "{name} is missing or stale (run with QOSMARK_WRITE_CORPUS=1)"
            );
        }
    }
}
