//! Offline replay: run a capture through exactly the classify + rewrite the driver runs, and
//! write the capture the host would have sent.
//!
//! Two layers:
//! * [`process_capture`]: framing only. Parses a pcap / pcapng file, copies it, and hands each
//!   packet's bytes (inside the copy) to a callback that may rewrite them in place. Lengths
//!   cannot change, so the output has the input's framing, timestamps and non-packet blocks
//!   byte for byte.
//! * [`replay`]: wires that to the engine. Rules are loaded through the control plane (an admin
//!   handle and `Request::AddRule`), every packet is treated as outbound from the capture host
//!   (local = source address and port) and classified with its capture timestamp as the clock;
//!   a `Mark` verdict rewrites the DSCP (ECN kept, IPv4 header checksum fixed) and, for Ethernet
//!   frames that carry an 802.1Q / 802.1ad tag, the PCP of the innermost tag — the tag the host
//!   itself would have added. Untagged frames are never given a tag (that would change the
//!   framing); such packets are counted as `pcp_requested_no_tag`.
//!
//! Packets that are left byte-identical: records cut by the snap length (captured < on the
//! wire: the engine never sees a packet the host did not send whole), frames whose link header
//! does not announce IPv4 / IPv6 (`not_ip_frames`), and every packet the engine skips.

use crate::capture::{self, Capture, CaptureError, Record};
use qosmark_abi::{Caller, Privilege, Request, Response, SkipReason};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

use crate::rules_file::{self, RulesFileError};
use qosmark_engine::wire::{self, Rewrite};
use qosmark_engine::{Engine, EngineError, Limits, PacketMeta, Verdict};

/// One packet handed to the [`process_capture`] callback.
#[derive(Debug)]
pub struct PacketView<'a> {
    /// Position in the capture (0-based).
    pub index: usize,
    /// Link type, timestamp, lengths and file position.
    pub record: &'a Record,
    /// The captured bytes, inside the output copy: writes here end up in the output.
    pub frame: &'a mut [u8],
}

/// Parses `input`, copies it, and calls `on_packet` for every packet with its bytes inside the
/// copy. Returns the parsed capture and the (possibly rewritten) copy.
///
/// # Errors
/// [`CaptureError`] when `input` is not a readable capture, or the copy cannot be allocated.
pub fn process_capture(
    input: &[u8],
    mut on_packet: impl FnMut(&mut PacketView<'_>),
) -> Result<(Capture, Vec<u8>), CaptureError> {
    let capture = capture::parse(input)?;
    let mut out = Vec::new();
    out.try_reserve_exact(input.len())
        .map_err(|_| CaptureError::OutOfMemory)?;
    out.extend_from_slice(input);
    for (index, record) in capture.records.iter().enumerate() {
        // The parser only produces ranges inside `input`, and `out` is a copy of it.
        let frame = out
            .get_mut(record.data.clone())
            .ok_or(CaptureError::Corrupt {
                offset: record.offset,
                what: "packet data outside the file",
            })?;
        on_packet(&mut PacketView {
            index,
            record,
            frame,
        });
    }
    Ok((capture, out))
}

/// Per-rule numbers, from the engine's rule counters (`Request::ListRules`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RuleSummary {
    /// Rule name.
    pub name: String,
    /// Packets the rule matched.
    pub packets: u64,
    /// Their bytes (IP length).
    pub bytes: u64,
    /// Packets the rule had rewritten.
    pub marked: u64,
    /// Packets that already carried the rule's mark.
    pub already_marked: u64,
}

/// What a replay did. Serialized as the `--json` output (schema in the crate README).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// `pcap` or `pcapng`.
    pub format: &'static str,
    /// Packet records in the capture.
    pub packets: u64,
    /// Packets handed to the engine's classifier.
    pub classified: u64,
    /// `Mark` verdicts.
    pub marked: u64,
    /// `AlreadyMarked` verdicts.
    pub already_marked: u64,
    /// `Delay` verdicts (a throttled rule's shaper would hold the packet). The replay models
    /// no queue and no clock between packets other than the capture's: such a packet is
    /// rewritten with the Delay's mark as if sent (and counted under `marked` when that mark
    /// is not empty), and its queue room is given back at once.
    pub delayed: u64,
    /// `Mark` verdicts on later fragments (offset ≠ 0): they carry no ports and follow their
    /// first fragment's mark, so they count here and in the totals, not under a rule.
    pub later_fragments_marked: u64,
    /// `AlreadyMarked` verdicts on later fragments.
    pub later_fragments_already_marked: u64,
    /// `Mark` verdicts that changed the DSCP.
    pub dscp_rewritten: u64,
    /// `Mark` verdicts that changed the innermost tag's PCP.
    pub pcp_rewritten: u64,
    /// `Mark` verdicts with a PCP on frames without a VLAN tag (left untagged).
    pub pcp_requested_no_tag: u64,
    /// Frames whose link header announces neither IPv4 nor IPv6 (ARP, ...): not classified.
    pub not_ip_frames: u64,
    /// Records with fewer bytes captured than sent: not classified, left as they are.
    pub cut_by_snaplen: u64,
    /// `Mark` verdicts the rewrite refused (left unchanged; should stay 0).
    pub rewrite_failed: u64,
    /// Engine skip counters by reason name (`SkipReason::name`), all reasons present.
    pub skipped: BTreeMap<&'static str, u64>,
    /// Per-rule counters, in rules-file order.
    pub rules: Vec<RuleSummary>,
}

/// Why a replay could not run.
#[derive(Debug)]
pub enum ReplayError {
    /// The rules file is invalid.
    Rules(RulesFileError),
    /// The engine refused a rule (duplicate name, limit, ...).
    RuleRejected {
        /// The rule's name.
        name: String,
        /// The engine's error.
        error: EngineError,
    },
    /// The capture cannot be read.
    Capture(CaptureError),
    /// A control request failed unexpectedly.
    Engine(EngineError),
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Rules(e) => write!(f, "{}: {}", e.line, e.message),
            ReplayError::RuleRejected { name, error } => {
                write!(f, "rule \"{name}\" rejected by the engine: {error:?}")
            }
            ReplayError::Capture(e) => write!(f, "{e}"),
            ReplayError::Engine(e) => write!(f, "engine request failed: {e:?}"),
        }
    }
}

impl std::error::Error for ReplayError {}

/// Loads `rules_text` into a fresh engine, replays `input` through it and returns the rewritten
/// capture with a summary.
///
/// # Errors
/// [`ReplayError`]: bad rules, a rule the engine refuses, or an unreadable capture.
pub fn replay(rules_text: &str, input: &[u8]) -> Result<(Vec<u8>, Summary), ReplayError> {
    let specs = rules_file::parse_rules(rules_text).map_err(ReplayError::Rules)?;
    let mut engine = Engine::new(Limits::default());
    let handle = engine
        .open_handle(Caller {
            pid: 0,
            privilege: Privilege::Admin,
        })
        .map_err(ReplayError::Engine)?;
    for spec in specs {
        let name = spec.name.as_str().to_owned();
        engine
            .apply(handle, &Request::AddRule(spec))
            .map_err(|error| ReplayError::RuleRejected { name, error })?;
    }

    let mut summary = Summary::default();
    let mut clock = 0u64;
    let (capture, out) = process_capture(input, |view| {
        // Simple packet blocks carry no timestamp: they inherit the previous packet's.
        clock = view.record.ts_ns.unwrap_or(clock);
        mark_packet(&engine, view, clock, &mut summary);
    })
    .map_err(ReplayError::Capture)?;
    summary.format = capture.format.name();
    summary.packets = capture.records.len() as u64;

    match engine
        .apply(handle, &Request::QueryStatus)
        .map_err(ReplayError::Engine)?
    {
        Response::Status(status) => {
            for reason in SkipReason::ALL {
                let n = status.skipped.get(reason as usize).copied().unwrap_or(0);
                summary.skipped.insert(reason.name(), n);
            }
        }
        _ => return Err(ReplayError::Engine(EngineError::NotSupported)),
    }
    match engine
        .apply(handle, &Request::ListRules)
        .map_err(ReplayError::Engine)?
    {
        Response::Rules(entries) => {
            summary.rules = entries
                .into_iter()
                .map(|e| RuleSummary {
                    name: e.spec.name.as_str().to_owned(),
                    packets: e.counters.packets,
                    bytes: e.counters.bytes,
                    marked: e.counters.marked,
                    already_marked: e.counters.already_marked,
                })
                .collect();
        }
        _ => return Err(ReplayError::Engine(EngineError::NotSupported)),
    }
    Ok((out, summary))
}

/// Classifies one packet and applies the verdict to its bytes.
fn mark_packet(engine: &Engine, view: &mut PacketView<'_>, now_ns: u64, summary: &mut Summary) {
    if view.record.is_cut() {
        summary.cut_by_snaplen += 1;
        return;
    }
    let Some(located) = capture::locate(view.record.link, view.frame) else {
        summary.not_ip_frames += 1;
        return;
    };
    let Some((_, ip)) = view.frame.split_at_mut_checked(located.ip_offset) else {
        summary.not_ip_frames += 1;
        return;
    };
    let meta = PacketMeta {
        self_injected: false,
        current_pcp: located.innermost_tag.map(|t| t.pcp),
    };
    summary.classified += 1;
    let later_fragment =
        wire::parse_ip(ip).is_ok_and(|p| p.fragment.is_some_and(|f| f.offset != 0));
    let verdict = match engine.classify(ip, &meta, now_ns) {
        Verdict::Delay { mark, shaper, .. } => {
            summary.delayed += 1;
            engine.shaper_released(shaper, qosmark_engine::shaper::held_bytes(ip));
            if mark.is_empty() {
                Verdict::Skip(qosmark_engine::abi::SkipReason::NoMarkConfigured)
            } else {
                Verdict::Mark(mark)
            }
        }
        v => v,
    };
    match verdict {
        Verdict::Skip(_) | Verdict::Delay { .. } => {}
        Verdict::AlreadyMarked => {
            summary.already_marked += 1;
            if later_fragment {
                summary.later_fragments_already_marked += 1;
            }
        }
        Verdict::Mark(mark) => {
            summary.marked += 1;
            if later_fragment {
                summary.later_fragments_marked += 1;
            }
            if let Some(dscp) = mark.dscp {
                match wire::set_dscp(ip, dscp) {
                    Ok(Rewrite::Changed) => summary.dscp_rewritten += 1,
                    Ok(Rewrite::Unchanged) => {}
                    Err(_) => summary.rewrite_failed += 1,
                }
            }
            if let Some(pcp) = mark.pcp {
                match located.innermost_tag {
                    Some(tag) => match wire::set_pcp(view.frame, tag.offset, pcp) {
                        Ok(Rewrite::Changed) => summary.pcp_rewritten += 1,
                        Ok(Rewrite::Unchanged) => {}
                        Err(_) => summary.rewrite_failed += 1,
                    },
                    None => summary.pcp_requested_no_tag += 1,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

    use super::*;

    /// Real captures from `tests/captures` (see `tests/scripts/make-captures.sh`).
    const CAPTURES: [(&str, &[u8]); 5] = [
        (
            "sample.pcap",
            include_bytes!("../../tests/captures/sample.pcap"),
        ),
        (
            "v6-ether.pcapng",
            include_bytes!("../../tests/captures/v6-ether.pcapng"),
        ),
        (
            "cooked-sll2.pcap",
            include_bytes!("../../tests/captures/cooked-sll2.pcap"),
        ),
        (
            "tun-raw.pcap",
            include_bytes!("../../tests/captures/tun-raw.pcap"),
        ),
        (
            "vlan-ether.pcapng",
            include_bytes!("../../tests/captures/vlan-ether.pcapng"),
        ),
    ];

    #[test]
    fn untouched_packets_give_a_byte_identical_copy() {
        for (name, input) in CAPTURES {
            let mut seen = Vec::new();
            let (capture, out) = process_capture(input, |v| seen.push(v.index)).unwrap();
            assert_eq!(out, input, "{name}");
            assert!(!capture.records.is_empty(), "{name}");
            assert_eq!(
                seen,
                (0..capture.records.len()).collect::<Vec<_>>(),
                "{name}"
            );
        }
    }

    #[test]
    fn writes_land_only_inside_packet_data_and_keep_the_framing() {
        for (name, input) in CAPTURES {
            let (capture, out) = process_capture(input, |v| v.frame.fill(0xa5)).unwrap();
            assert_eq!(out.len(), input.len(), "{name}");
            let mut inside = vec![false; input.len()];
            for r in &capture.records {
                for b in &mut inside[r.data.clone()] {
                    *b = true;
                }
                assert!(out[r.data.clone()].iter().all(|&b| b == 0xa5), "{name}");
            }
            for (i, (a, b)) in input.iter().zip(&out).enumerate() {
                if !inside[i] {
                    assert_eq!(a, b, "{name}: byte {i} outside packet data changed");
                }
            }
            // The rewritten file has the same records: same framing, timestamps, lengths.
            assert_eq!(capture::parse(&out).unwrap(), capture, "{name}");
        }
    }

    #[test]
    fn a_broken_capture_is_an_error_not_a_copy() {
        let (_, input) = CAPTURES[0];
        let cut = &input[..input.len() - 1];
        assert!(matches!(
            process_capture(cut, |_| {}),
            Err(CaptureError::Corrupt { .. })
        ));
    }
}
