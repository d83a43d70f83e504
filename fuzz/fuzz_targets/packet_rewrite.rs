//! Fuzz target: parse arbitrary bytes as an IP packet and as an Ethernet frame, rewrite the
//! DSCP and PCP, and check the rewrite contract of `qosmark_engine::wire`:
//!
//! * nothing panics (parse, `set_dscp`, `set_pcp`);
//! * `set_dscp` changes only the DSCP bits (the ECN bits are kept) and, on IPv4, the header
//!   checksum bytes; after `Changed` the IPv4 header checksum is valid (checked by a full
//!   recomputation written here); `Unchanged` and errors leave every byte as it was;
//! * `set_pcp` changes only the PCP bits of the chosen tag;
//! * the engine's own path — `Engine::classify` (with a catch-all admin rule) then
//!   `Engine::rewrite` of the mark it returns — never panics, obeys the same `set_dscp`
//!   post-conditions (only the DSCP bits and the IPv4 checksum change, ECN kept, checksum
//!   valid), and the rewritten packet then classifies as `AlreadyMarked`.
//!
//! The DSCP and PCP to write are derived from the input (the wrapping sum of its bytes), so
//! the corpus files stay plain packets.
// Built by cargo-fuzz (`--cfg fuzzing`) as a libFuzzer binary; included as a module by
// `tests/tests/fuzz_regressions.rs`, which runs `check` on every committed input.
#![cfg_attr(fuzzing, no_main)]

use qosmark_engine::abi::{
    heapless_name::RuleName, Caller, Dscp, Pcp, Privilege, Request, RuleAction, RuleProtocol,
    RuleSpec,
};
use qosmark_engine::wire::{parse_ethernet, parse_ip, set_dscp, set_pcp, Rewrite};
use qosmark_engine::{Engine, Limits, PacketMeta, Verdict};

/// The Internet checksum of `header` (checksum field included) is valid.
fn checksum_ok(header: &[u8]) -> bool {
    let mut sum: u32 = 0;
    for pair in header.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        let lo = pair.get(1).map_or(0, |&b| u32::from(b));
        sum += hi | lo;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

fn check_dscp_rewrite(data: &[u8], dscp: Dscp) {
    let mut packet = data.to_vec();
    let result = set_dscp(&mut packet, dscp);
    check_rewritten(data, &packet, result, dscp);
}

/// The post-conditions of a DSCP rewrite of `data` into `packet` that returned `result`.
fn check_rewritten(
    data: &[u8],
    packet: &[u8],
    result: Result<Rewrite, qosmark_engine::wire::WireError>,
    dscp: Dscp,
) {
    let mut packet = packet.to_vec();
    match result {
        Err(_) | Ok(Rewrite::Unchanged) => {
            assert_eq!(packet, data, "bytes changed without Changed")
        }
        Ok(Rewrite::Changed) => {
            let v6 = data[0] >> 4 == 6;
            let allowed: &[usize] = if v6 { &[0, 1] } else { &[1, 10, 11] };
            for (i, (a, b)) in data.iter().zip(&packet).enumerate() {
                assert!(allowed.contains(&i) || a == b, "byte {i} changed");
            }
            if v6 {
                assert_eq!(data[0] & 0xf0, packet[0] & 0xf0, "version changed");
                assert_eq!(
                    data[1] & 0x3f,
                    packet[1] & 0x3f,
                    "ECN or flow label changed"
                );
                assert_eq!(((packet[0] & 0x0f) << 2) | (packet[1] >> 6), dscp.value());
            } else {
                assert_eq!(data[1] & 0x03, packet[1] & 0x03, "ECN changed");
                assert_eq!(packet[1] >> 2, dscp.value());
                let header_len = usize::from(packet[0] & 0x0f) * 4;
                assert!(
                    checksum_ok(&packet[..header_len]),
                    "bad checksum after rewrite"
                );
            }
            // Rewriting again with the same value is a no-op.
            let again = packet.clone();
            assert_eq!(set_dscp(&mut packet, dscp), Ok(Rewrite::Unchanged));
            assert_eq!(packet, again);
        }
    }
    // The summary, if any, agrees with what was written.
    if let (Ok(Rewrite::Changed), Ok(summary)) = (result, parse_ip(&packet)) {
        assert_eq!(summary.dscp, dscp);
        assert!(summary.header_len <= packet.len());
    }
}

fn check_pcp_rewrite(data: &[u8], pcp: Pcp) {
    let Ok(summary) = parse_ethernet(data) else {
        return;
    };
    for tag in summary.tags.iter().flatten() {
        let mut frame = data.to_vec();
        let result = set_pcp(&mut frame, tag.offset, pcp);
        match result {
            Ok(Rewrite::Changed) => {
                for (i, (a, b)) in data.iter().zip(&frame).enumerate() {
                    if i == tag.offset + 2 {
                        assert_eq!(a & 0x1f, b & 0x1f, "DEI or VID changed");
                        assert_eq!(b >> 5, pcp.value());
                    } else {
                        assert_eq!(a, b, "byte {i} changed");
                    }
                }
            }
            Ok(Rewrite::Unchanged) => assert_eq!(frame, data),
            Err(e) => panic!("set_pcp failed on a tag parse_ethernet reported: {e:?}"),
        }
    }
}

/// classify → rewrite, as a back end runs them, with a rule that marks every TCP/UDP packet.
fn check_engine_path(data: &[u8], dscp: Dscp) {
    let mut engine = Engine::new(Limits::default());
    let admin = engine
        .open_handle(Caller {
            pid: 1,
            privilege: Privilege::Admin,
        })
        .expect("a handle");
    let rule = RuleSpec {
        name: RuleName::try_new("all").expect("valid name"),
        precedence: 1,
        protocol: RuleProtocol::Any,
        local_prefix: None,
        remote_prefix: None,
        local_ports: None,
        remote_ports: None,
        action: RuleAction::Dscp(dscp),
        pcp: None,
        throttle_bps: None,
    };
    engine
        .apply(admin, &Request::AddRule(rule))
        .expect("rule accepted");
    let meta = PacketMeta::default();
    if let Verdict::Mark(mark) = engine.classify(data, &meta, 0) {
        assert_eq!(mark.dscp, Some(dscp), "the rule's mark");
        let mut packet = data.to_vec();
        let result = Engine::rewrite(&mut packet, mark);
        assert!(result.is_ok(), "a classified packet must be rewritable");
        check_rewritten(data, &packet, result, dscp);
        assert_eq!(
            engine.classify(&packet, &meta, 0),
            Verdict::AlreadyMarked,
            "a rewritten packet is already marked"
        );
    }
}

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| check(data));

/// The target's checks on one input (panics on a violation). The fuzzer calls it, and so does
/// `cargo test` for every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`.
pub fn check(data: &[u8]) {
    let sum = data.iter().fold(0u8, |acc, &b| acc.wrapping_add(b));
    let dscp = Dscp::try_new(sum % 64).expect("value below 64");
    let pcp = Pcp::try_new(sum % 8).expect("value below 8");

    if let Ok(summary) = parse_ip(data) {
        assert!(summary.header_len <= data.len());
    }
    check_dscp_rewrite(data, dscp);
    check_pcp_rewrite(data, pcp);
    check_engine_path(data, dscp);
}
