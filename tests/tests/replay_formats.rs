//! Container variants made from the committed captures by transformation (byte order, obsolete
//! and simple packet blocks, snap-length cuts), and robustness of the reader and replay on
//! every prefix and on random corruptions of real captures.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::similar_names,
    clippy::expect_used,
    reason = "test code: failures are test failures; paired names (out_le / out_be) are deliberate"
)]

mod replay_common;

use qosmark::replay::replay;
use replay_common::{capture, dissect, raw_frames, replay_json, scratch};
use std::path::Path;
use std::process::Command;

fn rules() -> String {
    std::fs::read_to_string(capture("sample-rules.toml")).unwrap()
}

fn rd16(b: &[u8], at: usize, be: bool) -> u16 {
    let a = [b[at], b[at + 1]];
    if be {
        u16::from_be_bytes(a)
    } else {
        u16::from_le_bytes(a)
    }
}

fn rd32(b: &[u8], at: usize, be: bool) -> u32 {
    let a = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    if be {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    }
}

fn swap(b: &mut [u8], at: usize, n: usize) {
    b[at..at + n].reverse();
}

/// Converts a little-endian pcap to big-endian (or back, with `from_be`).
fn pcap_swap(src: &[u8], from_be: bool) -> Vec<u8> {
    let mut b = src.to_vec();
    for (at, n) in [(0, 4), (4, 2), (6, 2), (8, 4), (12, 4), (16, 4), (20, 4)] {
        swap(&mut b, at, n);
    }
    let mut at = 24;
    while at < src.len() {
        let incl = rd32(src, at + 8, from_be) as usize;
        for f in 0..4 {
            swap(&mut b, at + 4 * f, 4);
        }
        at += 16 + incl;
    }
    b
}

/// Converts a pcapng file between byte orders: block headers and trailers, the SHB fields, the
/// IDB fields and option headers (and `if_tsoffset`), and the fixed EPB fields. Bodies of other
/// blocks are left as they are (replay skips them; converting back restores them).
fn pcapng_swap(src: &[u8], from_be: bool) -> Vec<u8> {
    let mut b = src.to_vec();
    let mut at = 0;
    while at < src.len() {
        let ty = rd32(src, at, from_be);
        let len = rd32(src, at + 4, from_be) as usize;
        swap(&mut b, at, 4);
        swap(&mut b, at + 4, 4);
        swap(&mut b, at + len - 4, 4);
        let body_end = at + len - 4;
        let options = match ty {
            0x0a0d_0d0a => {
                for (o, n) in [(8, 4), (12, 2), (14, 2), (16, 8)] {
                    swap(&mut b, at + o, n);
                }
                Some(at + 24)
            }
            1 => {
                for (o, n) in [(8, 2), (10, 2), (12, 4)] {
                    swap(&mut b, at + o, n);
                }
                Some(at + 16)
            }
            6 => {
                for o in [8, 12, 16, 20, 24] {
                    swap(&mut b, at + o, 4);
                }
                None
            }
            _ => None,
        };
        if let Some(mut o) = options {
            while o + 4 <= body_end {
                let code = rd16(src, o, from_be);
                let olen = rd16(src, o + 2, from_be) as usize;
                swap(&mut b, o, 2);
                swap(&mut b, o + 2, 2);
                if code == 0 {
                    break;
                }
                if ty == 1 && code == 14 && olen == 8 {
                    swap(&mut b, o + 4, 8);
                }
                o += 4 + olen.div_ceil(4) * 4;
            }
        }
        at += len;
    }
    b
}

#[test]
fn big_endian_pcap_replays_like_little_endian() {
    let le = std::fs::read(capture("sample.pcap")).unwrap();
    let be = pcap_swap(&le, false);
    assert_eq!(pcap_swap(&be, true), le, "converter round trip");
    let (out_le, sum_le) = replay(&rules(), &le).unwrap();
    let (out_be, sum_be) = replay(&rules(), &be).unwrap();
    assert_eq!(sum_le, sum_be);
    assert_eq!(pcap_swap(&out_be, true), out_le);
    assert!(sum_le.marked > 0);
}

#[test]
fn big_endian_pcapng_replays_like_little_endian() {
    let le = std::fs::read(capture("v6-ether.pcapng")).unwrap();
    let be = pcapng_swap(&le, false);
    assert_eq!(pcapng_swap(&be, true), le, "converter round trip");
    let (out_le, sum_le) = replay(&rules(), &le).unwrap();
    let (out_be, sum_be) = replay(&rules(), &be).unwrap();
    assert_eq!(sum_le, sum_be);
    assert_eq!(pcapng_swap(&out_be, true), out_le);
    assert!(sum_le.marked > 0);
}

/// Rewrites every EPB of a little-endian pcapng with `f(block) -> new block`.
fn map_epbs(src: &[u8], f: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < src.len() {
        let len = rd32(src, at + 4, false) as usize;
        let block = &src[at..at + len];
        if rd32(src, at, false) == 6 {
            out.extend(f(block));
        } else {
            out.extend_from_slice(block);
        }
        at += len;
    }
    out
}

#[test]
fn obsolete_packet_blocks_replay_like_enhanced_ones() {
    // For interface 0 in a little-endian section, an EPB's interface id (u32 0) reads as a PB's
    // interface id (u16 0) and drop count (u16 0): only the block type changes.
    let epb = std::fs::read(capture("v6-ether.pcapng")).unwrap();
    let to_pb = |b: &[u8]| {
        assert_eq!(rd32(b, 8, false), 0, "interface 0 only");
        let mut v = b.to_vec();
        v[0..4].copy_from_slice(&2u32.to_le_bytes());
        v
    };
    let pb = map_epbs(&epb, to_pb);
    let (out_epb, sum_epb) = replay(&rules(), &epb).unwrap();
    let (out_pb, sum_pb) = replay(&rules(), &pb).unwrap();
    assert_eq!(sum_epb, sum_pb);
    assert_eq!(map_epbs(&out_epb, to_pb), out_pb);
}

#[test]
fn simple_packet_blocks_replay_like_enhanced_ones() {
    let epb_path = capture("v6-ether.pcapng");
    let epb = std::fs::read(&epb_path).unwrap();
    let to_spb = |b: &[u8]| {
        let caplen = rd32(b, 20, false) as usize;
        let orig = rd32(b, 24, false);
        assert_eq!(caplen, orig as usize, "whole packets only");
        let padded = caplen.div_ceil(4) * 4;
        let total = (16 + padded) as u32;
        let mut v = Vec::new();
        v.extend(3u32.to_le_bytes());
        v.extend(total.to_le_bytes());
        v.extend(orig.to_le_bytes());
        v.extend(&b[28..28 + caplen]);
        v.resize(12 + padded, 0);
        v.extend(total.to_le_bytes());
        v
    };
    let spb = map_epbs(&epb, to_spb);
    let spb_path = scratch("simple.pcapng");
    std::fs::write(&spb_path, &spb).unwrap();
    let (_, sum_epb) = replay(&rules(), &epb).unwrap();
    let (_, sum_spb) = replay(&rules(), &spb).unwrap();
    assert_eq!(sum_epb, sum_spb);
    // Packet bytes as tshark reads them: the same rewrite in both containers.
    let out_epb = scratch("enhanced.out.pcapng");
    let out_spb = scratch("simple.out.pcapng");
    replay_json(&capture("sample-rules.toml"), &epb_path, &out_epb);
    replay_json(&capture("sample-rules.toml"), &spb_path, &out_spb);
    assert_eq!(raw_frames(&out_epb), raw_frames(&out_spb));
}

#[test]
fn records_cut_by_the_snap_length_are_left_alone() {
    let cut = scratch("snap80.pcap");
    let st = Command::new("editcap")
        .args(["-s", "80"])
        .arg(capture("udp4-ether.pcap"))
        .arg(&cut)
        .status()
        .expect("editcap (from tshark / wireshark-common) is needed: install tshark");
    assert!(st.success());
    let out = scratch("snap80.out.pcap");
    let json = replay_json(&capture("sample-rules.toml"), &cut, &out);
    let frames = dissect(&cut);
    let (rin, rout) = (raw_frames(&cut), raw_frames(&out));
    let mut n_cut = 0;
    for (i, f) in frames.iter().enumerate() {
        if f.cap_len < f.len {
            n_cut += 1;
            assert_eq!(rin[i], rout[i], "frame {}: cut record changed", i + 1);
        }
    }
    assert!(n_cut > 0);
    let s = &json["summary"];
    assert_eq!(s["cut_by_snaplen"], n_cut);
    let not_ip = s["not_ip_frames"].as_u64().unwrap();
    assert_eq!(
        s["classified"].as_u64().unwrap(),
        frames.len() as u64 - n_cut - not_ip
    );
}

fn every_prefix(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let rules = rules();
    let mut ok = 0;
    for cut in 0..bytes.len() {
        if let Ok((out, _)) = replay(&rules, &bytes[..cut]) {
            assert_eq!(out.len(), cut);
            ok += 1;
        }
    }
    // Only cuts on record / block boundaries are valid files.
    assert!(ok < dissect(path).len() + 2, "{ok} prefixes accepted");
    assert!(replay(&rules, &bytes).is_ok());
}

#[test]
fn every_prefix_of_a_pcap_is_handled() {
    every_prefix(&capture("sample.pcap"));
}

#[test]
fn every_prefix_of_a_pcapng_is_handled() {
    every_prefix(&capture("vlan-ether.pcapng"));
}

#[test]
fn random_corruptions_never_panic() {
    let rules = rules();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for name in [
        "sample.pcap",
        "vlan-ether.pcapng",
        "v6-ether.pcapng",
        "cooked-sll2.pcap",
    ] {
        let orig = std::fs::read(capture(name)).unwrap();
        for _ in 0..300 {
            let mut b = orig.clone();
            for _ in 0..=(next() % 8) {
                let at = (next() as usize) % b.len();
                b[at] = next() as u8;
            }
            if let Ok((out, s)) = replay(&rules, &b) {
                assert_eq!(out.len(), b.len());
                assert_eq!(s.rewrite_failed, 0);
            }
        }
    }
}

#[test]
fn ipv4_and_ipv6_link_types_read_like_raw_ip() {
    // LINKTYPE_IPV4 (228) and LINKTYPE_IPV6 (229) frames are bare IP packets, as LINKTYPE_RAW
    // (101) ones: the raw-IP capture relabelled must replay the same.
    let raw = std::fs::read(capture("tun-raw.pcap")).unwrap();
    let (out_raw, sum_raw) = replay(&rules(), &raw).unwrap();
    assert!(sum_raw.marked > 0);
    for link in [228u32, 229] {
        let mut relabelled = raw.clone();
        relabelled[20..24].copy_from_slice(&link.to_le_bytes());
        let (mut out, sum) = replay(&rules(), &relabelled).unwrap();
        assert_eq!(sum, sum_raw, "link type {link}");
        out[20..24].copy_from_slice(&101u32.to_le_bytes());
        assert_eq!(out, out_raw, "link type {link}");
    }
}
