//! `qosmarkctl replay` on every committed capture, checked frame by frame against the
//! independent oracle in `replay_common` (tshark + etherparse + a plain-Rust rule model).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

mod replay_common;

use replay_common::{capture, check_replay, sample_rules, vlan_rules, Checked};

fn sample(name: &str, link: u32) -> Checked {
    check_replay(
        &capture(name),
        &capture("sample-rules.toml"),
        &[link],
        &sample_rules,
    )
}

/// At least one packet of the capture matched `rule` and was rewritten.
fn assert_marked(c: &Checked, rule: &str) {
    let n = c.counts.get(rule).map_or(0, |c| c.marked);
    assert!(n > 0, "no packet of rule {rule} was rewritten");
}

#[test]
fn udp4_ethernet_pcap() {
    let c = sample("udp4-ether.pcap", 1);
    assert_marked(&c, "sip-signalling");
    assert_marked(&c, "rtp-media");
    // The capture holds ECN-marked packets, already-EF RTP, IPv4 options and fragments.
    assert!(
        c.input.iter().any(|f| f.ecn.is_some_and(|e| e != 0)),
        "no ECN packets"
    );
    assert!(
        c.counts["rtp-media"].already_marked > 0,
        "no already-marked packets"
    );
    assert!(
        c.input.iter().any(replay_common::Frame::is_later_fragment),
        "no IPv4 fragments"
    );
    assert!(c
        .input
        .iter()
        .any(|f| f.ip_len > 1400 && f.is_first_fragment()));
    assert!(
        c.json["summary"]["not_ip_frames"].as_u64().unwrap() > 0,
        "no ARP frame"
    );
}

#[test]
fn ipv6_ethernet_pcapng() {
    let c = sample("v6-ether.pcapng", 1);
    assert_eq!(c.json["summary"]["format"], "pcapng");
    assert_marked(&c, "sip-signalling");
    assert_marked(&c, "rtp-media");
    assert_marked(&c, "v6-tcp-voice");
    assert!(
        c.input.iter().any(replay_common::Frame::is_later_fragment),
        "no IPv6 fragments"
    );
    // Hop-by-hop and destination options headers before UDP: walked and rewritten.
    for next in [0u8, 60] {
        let ext: Vec<usize> = (0..c.input.len())
            .filter(|&i| c.input[i].ipv6_next == Some(next) && c.input[i].transport.is_some())
            .collect();
        assert!(!ext.is_empty(), "no packet with next header {next}");
        assert!(
            ext.iter().all(|&i| c.output[i].dscp == Some(24)),
            "next header {next}"
        );
    }
}

#[test]
fn tcp4_nanosecond_pcap() {
    let c = sample("tcp4-ether-nano.pcap", 1);
    assert_marked(&c, "bulk-tcp-v4");
    // Nanosecond timestamps survive: tshark prints 9 fractional digits for them.
    assert!(c
        .output
        .iter()
        .all(|f| f.time.split('.').nth(1).is_some_and(|d| d.len() == 9)));
}

#[test]
fn linux_cooked_v1() {
    let c = sample("cooked-sll.pcap", 113);
    assert_marked(&c, "sip-signalling");
    assert_marked(&c, "rtp-media");
}

#[test]
fn linux_cooked_v2() {
    let c = sample("cooked-sll2.pcap", 276);
    assert_marked(&c, "rtp-media");
    assert_marked(&c, "v6-tcp-voice");
}

#[test]
fn raw_ip_from_a_tun_device() {
    let c = sample("tun-raw.pcap", 101);
    assert_marked(&c, "sip-signalling");
    assert_marked(&c, "rtp-media");
}

#[test]
fn mixed_sample_for_the_readme() {
    let c = sample("sample.pcap", 1);
    assert_marked(&c, "bulk-tcp-v4");
    assert_eq!(c.counts["port-9999-best-effort"].marked, 0);
}

#[test]
fn tagged_frames_get_the_innermost_pcp() {
    for name in ["vlan-ether.pcap", "vlan-ether.pcapng"] {
        let c = check_replay(
            &capture(name),
            &capture("vlan-rules.toml"),
            &[1],
            &vlan_rules,
        );
        assert_marked(&c, "sip-cs3-pcp3");
        assert_marked(&c, "rtp-ef-pcp6");
        let s = &c.json["summary"];
        assert!(s["pcp_rewritten"].as_u64().unwrap() > 0);
        assert_eq!(s["pcp_requested_no_tag"], 0, "every frame is tagged");
        // QinQ frames are present: their outer tag must be untouched (checked per frame).
        assert!(
            c.input.iter().any(|f| f.vlan_pcp.len() == 2),
            "no double-tagged frame"
        );
    }
}

#[test]
fn pcp_rules_on_untagged_frames_add_no_tag() {
    // Every rewrite the vlan rules ask for on an untagged capture requests a PCP that cannot be
    // written: the frames stay untagged (check_replay compares VLAN priorities frame by frame)
    // and every such request is counted.
    let c = check_replay(
        &capture("sample.pcap"),
        &capture("vlan-rules.toml"),
        &[1],
        &vlan_rules,
    );
    let s = &c.json["summary"];
    let with_pcp =
        c.counts.get("sip-cs3-pcp3").map_or(0, |c| c.marked) + c.counts["rtp-ef-pcp6"].marked;
    assert!(with_pcp > 0);
    assert_eq!(s["pcp_requested_no_tag"], with_pcp);
    assert_eq!(s["pcp_rewritten"], 0);
}

#[test]
fn pcapng_with_an_ethernet_and_a_raw_ip_interface() {
    // Interface 0: Ethernet (udp4-ether.pcap), interface 1: raw IP (tun-raw.pcap), merged by
    // mergecap in time order.
    let c = check_replay(
        &capture("two-interfaces.pcapng"),
        &capture("sample-rules.toml"),
        &[1, 101],
        &sample_rules,
    );
    assert!(c.input.iter().any(|f| f.interface == 0) && c.input.iter().any(|f| f.interface == 1));
    assert_marked(&c, "sip-signalling");
    assert_marked(&c, "rtp-media");
}
