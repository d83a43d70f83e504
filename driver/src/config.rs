//! The persisted configuration: admin rules, the traffic-type table and the user DSCP
//! allow-list, as stored under the service's `Parameters` registry key. Plain Rust, tested on
//! the host; the registry I/O itself is the Windows-only `registry` module.
//!
//! # Format
//!
//! Key: `HKLM\SYSTEM\CurrentControlSet\Services\<service>\Parameters` (the `RegistryPath`
//! `DriverEntry` receives, plus `\Parameters`).
//!
//! | value | type | content |
//! |---|---|---|
//! | `Rules` | `REG_BINARY` | zero or more complete **AddRule request records** of the IOCTL wire format (`abi/src/codec.rs`: 16-byte header "QMRK", version, kind 0x0008, length 152, then the 136-byte RULE SPEC whose last 8 bytes are the rule's throttle), back to back; an empty or absent value means no rules. Records written before throttles existed (length 144, a 128-byte spec) are still read, as rules without a throttle |
//! | `TrafficTable` | `REG_BINARY` | exactly one **SetTrafficTable request record** (56 bytes: header + TRAFFIC TABLE, which includes the user DSCP allow-list bitmap and the adaptive-flow tagging switch); absent means qWAVE's default table |
//!
//! Why binary records rather than text (e.g. a `REG_MULTI_SZ` of rule lines):
//! * one parser for both the IOCTL path and the registry, and it is the one that is
//!   fuzzed (`fuzz/abi_decode`) and property-tested — the kernel gains no second parser of
//!   untrusted text, and every field is range-checked exactly as an IOCTL would be;
//! * every record carries the protocol version, so a driver update can tell old values from
//!   new ones;
//! * deployment: Group Policy Preferences *Registry* items and the GPP Registry Wizard take
//!   `REG_BINARY` values as they are (configure one reference machine with `qosmarkctl`, then
//!   import its `Parameters` key into a GPO, or `reg export` it); Intune deploys the same
//!   `.reg` content with a PowerShell script or a Win32 app (`reg import`). Values are
//!   replaced whole, so a fleet never ends up with half a rule set.
//!
//! # Loading (fail open)
//!
//! [`parse_rules`] keeps every record that decodes and reports every one that does not; a
//! record whose length cannot be read ends the scan (no resynchronisation is possible) and
//! that is reported too. [`parse_table`] gives the table or a reason. The driver then adds
//! each rule through the engine with a kernel-privileged handle ([`load_into`]): a rule the
//! engine refuses (duplicate name, limit) is skipped and reported. Whatever is wrong, the
//! driver starts with what is valid and the defaults for the rest: a bad configuration never
//! stops marking of registered flows, and never stops the driver from loading.
//!
//! # Writing
//!
//! After an IOCTL changed the rules or the table (and the engine committed it), the driver
//! takes a [`snapshot`] under the engine lock and writes both values at `PASSIVE_LEVEL`
//! (`registry` module), serialised by the configuration mutex so the registry always ends
//! up with the latest committed state.

#![allow(
    clippy::doc_markdown,
    reason = "record names (AddRule, SetTrafficTable) are wire-protocol names, not code items"
)]

use alloc::vec::Vec;

use qosmark_abi::codec::{decode_request_for, encode_request, record_len, AbiError, MAX_RULES};
use qosmark_abi::ioctl::RequestKind;
use qosmark_abi::{Caller, Privilege, Request, Response, RuleSpec, TrafficTable};
use qosmark_engine::{Engine, EngineError, HandleId};

/// Name of the rules value (UTF-8; the registry module converts it).
pub const RULES_VALUE: &str = "Rules";
/// Name of the traffic-table value.
pub const TRAFFIC_TABLE_VALUE: &str = "TrafficTable";
/// Length of one AddRule record in the `Rules` value.
pub const RULE_RECORD_LEN: usize = 152;
/// Length of an AddRule record written before rule throttles existed (a 128-byte RULE SPEC,
/// without the throttle): read as a rule without a throttle.
pub const LEGACY_RULE_RECORD_LEN: usize = 144;
/// Length of the SetTrafficTable record in the `TrafficTable` value.
pub const TABLE_RECORD_LEN: usize = 56;
/// Largest `Rules` value the driver reads: [`MAX_RULES`] records. A larger value is refused
/// whole (reported, defaults kept) before it is read, so a registry value cannot make the
/// driver allocate without bound.
pub const MAX_RULES_VALUE_LEN: usize = MAX_RULES as usize * RULE_RECORD_LEN;

/// Why (part of) a stored value was ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Record `index` (0-based) of `Rules` does not decode as an AddRule record.
    BadRuleRecord {
        /// Position in the value.
        index: usize,
        /// Why.
        error: AbiError,
    },
    /// `Rules` ends in bytes that are not a whole record (`offset` is where they start); the
    /// rest of the value is ignored.
    RulesTail {
        /// Byte offset of the unreadable part.
        offset: usize,
    },
    /// `Rules` is longer than [`MAX_RULES_VALUE_LEN`]; it was not read.
    RulesTooLarge,
    /// `TrafficTable` does not hold one SetTrafficTable record.
    BadTable(AbiError),
    /// The engine refused stored rule `index` (duplicate name, limit, ...).
    RuleRefused {
        /// Position in the value.
        index: usize,
        /// Why.
        error: EngineError,
    },
    /// The engine refused the stored table.
    TableRefused(EngineError),
    /// An allocation failed while loading.
    OutOfMemory,
}

/// Decodes the `Rules` value: the rules that decode, and a [`Problem`] for everything else.
#[must_use]
pub fn parse_rules(bytes: &[u8]) -> (Vec<RuleSpec>, Vec<Problem>) {
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    let mut rest = bytes;
    let mut offset = 0usize;
    let mut index = 0usize;
    while !rest.is_empty() {
        // A record's own header says how long it is; without a readable length there is no
        // way to find the next record.
        let Ok(len) = record_len(rest) else {
            push(&mut problems, Problem::RulesTail { offset });
            break;
        };
        let len = len as usize;
        let (Some(this), Some(next)) = (rest.get(..len), rest.get(len..)) else {
            push(&mut problems, Problem::RulesTail { offset });
            break;
        };
        if len == 0 {
            push(&mut problems, Problem::RulesTail { offset });
            break;
        }
        let decoded = if len == LEGACY_RULE_RECORD_LEN {
            decode_legacy_rule(this)
        } else {
            decode_request_for(RequestKind::AddRule, this)
        };
        match decoded {
            Ok(Request::AddRule(spec)) => {
                if rules.try_reserve(1).is_err() {
                    push(&mut problems, Problem::OutOfMemory);
                    break;
                }
                rules.push(spec);
            }
            Ok(_) => push(
                &mut problems,
                Problem::BadRuleRecord {
                    index,
                    error: AbiError::BadKind,
                },
            ),
            Err(error) => push(&mut problems, Problem::BadRuleRecord { index, error }),
        }
        rest = next;
        offset += len;
        index += 1;
    }
    (rules, problems)
}

/// Decodes an AddRule record of [`LEGACY_RULE_RECORD_LEN`] bytes: the same record with an
/// 8-byte zero throttle ("none") appended and its length field (header offset 12) updated.
fn decode_legacy_rule(record: &[u8]) -> Result<Request, AbiError> {
    let mut upgraded = [0u8; RULE_RECORD_LEN];
    if record.len() != LEGACY_RULE_RECORD_LEN {
        return Err(AbiError::BadLength);
    }
    for (dst, src) in upgraded.iter_mut().zip(record) {
        *dst = *src;
    }
    // RULE_RECORD_LEN (152) fits the u32 length field.
    let len = (RULE_RECORD_LEN as u32).to_le_bytes();
    for (dst, src) in upgraded.iter_mut().skip(12).zip(len) {
        *dst = src;
    }
    decode_request_for(RequestKind::AddRule, &upgraded)
}

/// Decodes the `TrafficTable` value.
///
/// # Errors
/// [`Problem::BadTable`] with the decoding error.
pub fn parse_table(bytes: &[u8]) -> Result<TrafficTable, Problem> {
    match decode_request_for(RequestKind::SetTrafficTable, bytes) {
        Ok(Request::SetTrafficTable(table)) => Ok(table),
        Ok(_) => Err(Problem::BadTable(AbiError::BadKind)),
        Err(error) => Err(Problem::BadTable(error)),
    }
}

/// Encodes rules as the `Rules` value.
///
/// # Errors
/// As [`encode_request`] (an invalid rule, or [`AbiError::OutOfMemory`]).
pub fn encode_rules(rules: &[RuleSpec]) -> Result<Vec<u8>, AbiError> {
    let mut out = Vec::new();
    out.try_reserve(rules.len().saturating_mul(RULE_RECORD_LEN))
        .map_err(|_| AbiError::OutOfMemory)?;
    for spec in rules {
        encode_request(&Request::AddRule(spec.clone()), &mut out)?;
    }
    Ok(out)
}

/// Encodes the table as the `TrafficTable` value.
///
/// # Errors
/// As [`encode_request`].
pub fn encode_table(table: &TrafficTable) -> Result<Vec<u8>, AbiError> {
    let mut out = Vec::new();
    encode_request(&Request::SetTrafficTable(*table), &mut out)?;
    Ok(out)
}

/// The caller the driver itself uses to load and snapshot the configuration.
pub const KERNEL_CALLER: Caller = Caller {
    pid: 4, // the System process
    privilege: Privilege::Kernel,
};

/// Adds the stored configuration to `engine` (at start, before any user handle exists), with
/// a kernel handle that is closed again. Returns what was refused; everything else is in.
#[must_use]
pub fn load_into(
    engine: &mut Engine,
    rules: Vec<RuleSpec>,
    table: Option<TrafficTable>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Ok(handle) = engine.open_handle(KERNEL_CALLER) else {
        push(&mut problems, Problem::OutOfMemory);
        return problems;
    };
    if let Some(table) = table {
        if let Err(error) = engine.apply(handle, &Request::SetTrafficTable(table)) {
            push(&mut problems, Problem::TableRefused(error));
        }
    }
    for (index, spec) in rules.into_iter().enumerate() {
        if let Err(error) = engine.apply(handle, &Request::AddRule(spec)) {
            push(&mut problems, Problem::RuleRefused { index, error });
        }
    }
    // Closing a kernel handle cannot fail for an open handle, and it owns no flows; rules
    // and the table do not belong to handles, so they stay.
    let _ = engine.close_handle(handle);
    problems
}

/// The two values to write, encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The `Rules` value.
    pub rules: Vec<u8>,
    /// The `TrafficTable` value.
    pub table: Vec<u8>,
}

/// The engine's current rules and table as registry values (taken under the engine lock,
/// written after it is released).
///
/// # Errors
/// An engine refusal (the kernel handle is never refused for privilege) or
/// [`EngineError::NoMemory`].
pub fn snapshot(engine: &mut Engine) -> Result<Snapshot, EngineError> {
    let handle = engine.open_handle(KERNEL_CALLER)?;
    let result = snapshot_with(engine, handle);
    let _ = engine.close_handle(handle);
    result
}

fn snapshot_with(engine: &mut Engine, handle: HandleId) -> Result<Snapshot, EngineError> {
    let Response::Rules(entries) = engine.apply(handle, &Request::ListRules)? else {
        return Err(EngineError::InvalidParameter);
    };
    let Response::TrafficTable(table) = engine.apply(handle, &Request::GetTrafficTable)? else {
        return Err(EngineError::InvalidParameter);
    };
    let mut specs = Vec::new();
    specs.try_reserve(entries.len())?;
    specs.extend(entries.into_iter().map(|entry| entry.spec));
    let rules = encode_rules(&specs).map_err(abi_to_engine)?;
    let table = encode_table(&table).map_err(abi_to_engine)?;
    Ok(Snapshot { rules, table })
}

fn abi_to_engine(error: AbiError) -> EngineError {
    match error {
        AbiError::OutOfMemory => EngineError::NoMemory,
        _ => EngineError::InvalidParameter,
    }
}

/// Offset of `Data` in `KEY_VALUE_PARTIAL_INFORMATION` (wdm.h: `ULONG TitleIndex; ULONG Type;
/// ULONG DataLength; UCHAR Data[1];`).
pub const PARTIAL_INFORMATION_HEADER_LEN: usize = 12;

/// The data of a `KEY_VALUE_PARTIAL_INFORMATION` that `ZwQueryValueKey` wrote into `bytes`,
/// if the value has type `expected_type` and `DataLength` fits in what was written. Plain
/// Rust so the registry module never indexes kernel-filled memory unchecked.
#[must_use]
pub fn partial_information_data(bytes: &[u8], expected_type: u32) -> Option<&[u8]> {
    let field = |at: usize| -> Option<u32> {
        let raw: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_ne_bytes(raw))
    };
    let value_type = field(4)?;
    let data_len = usize::try_from(field(8)?).ok()?;
    if value_type != expected_type {
        return None;
    }
    bytes.get(PARTIAL_INFORMATION_HEADER_LEN..PARTIAL_INFORMATION_HEADER_LEN.checked_add(data_len)?)
}

/// Records a problem; if even that allocation fails the problem is dropped (loading goes on:
/// the report is diagnostics, not state).
fn push(problems: &mut Vec<Problem>, problem: Problem) {
    if problems.try_reserve(1).is_ok() {
        problems.push(problem);
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        reason = "test code: a panic is a test failure"
    )]

    use super::*;
    use alloc::vec;
    use qosmark_abi::types::heapless_name::RuleName;
    use qosmark_abi::{Dscp, Pcp, PortRange, Prefix, RuleAction, RuleProtocol, TrafficTypeMark};
    use qosmark_engine::Limits;

    fn rule(name: &str, dscp: u8) -> RuleSpec {
        RuleSpec {
            name: RuleName::try_new(name).unwrap(),
            precedence: 3,
            protocol: RuleProtocol::Tcp,
            local_prefix: None,
            remote_prefix: Some(Prefix {
                addr: "10.0.0.0".parse().unwrap(),
                len: 8,
            }),
            local_ports: None,
            remote_ports: Some(PortRange {
                first: 443,
                last: 443,
            }),
            action: RuleAction::Dscp(Dscp::try_new(dscp).unwrap()),
            pcp: Some(Pcp::try_new(4).unwrap()),
            throttle_bps: None,
        }
    }

    fn table() -> TrafficTable {
        let mut t = qosmark_engine::traffic::default_table();
        t.marks[1] = TrafficTypeMark {
            dscp: Some(Dscp::try_new(10).unwrap()),
            pcp: None,
        };
        t.user_dscp_allow = (1 << 46) | (1 << 34);
        t.tag_adaptive_flows = false;
        t
    }

    #[test]
    fn record_lengths_are_the_documented_ones() {
        // 16-byte header + 136-byte RULE SPEC; 16 + 40-byte TRAFFIC TABLE (codec.rs diagrams).
        assert_eq!(encode_rules(&[rule("a", 1)]).unwrap().len(), 16 + 136);
        assert_eq!(encode_table(&table()).unwrap().len(), 16 + 40);
        assert_eq!(RULE_RECORD_LEN, 152);
        assert_eq!(LEGACY_RULE_RECORD_LEN, 16 + 128);
        assert_eq!(TABLE_RECORD_LEN, 56);
        assert_eq!(MAX_RULES_VALUE_LEN, 4096 * 152);
    }

    #[test]
    fn value_bytes_start_with_the_record_header() {
        let bytes = encode_rules(&[rule("a", 1)]).unwrap();
        // "QMRK", version 1 (u16 LE), kind 0x0008 (u16 LE), flags 0, length 152 (u32 LE).
        assert_eq!(&bytes[..4], b"QMRK");
        assert_eq!(&bytes[4..6], &qosmark_abi::PROTOCOL_VERSION.to_le_bytes());
        assert_eq!(&bytes[6..8], &[0x08, 0x00]);
        assert_eq!(&bytes[8..12], &[0, 0, 0, 0]);
        assert_eq!(&bytes[12..16], &[152, 0, 0, 0]);
    }

    /// A `Rules` value written before throttles existed: 144-byte records (the 128-byte spec),
    /// read as rules without a throttle, mixed with current records and throttled rules.
    #[test]
    fn legacy_records_without_a_throttle_still_load() {
        let legacy = |spec: &RuleSpec| {
            let mut r = encode_rules(core::slice::from_ref(spec)).unwrap();
            assert_eq!(&r[RULE_RECORD_LEN - 8..], &[0; 8]);
            r.truncate(LEGACY_RULE_RECORD_LEN);
            r[12..16].copy_from_slice(&144u32.to_le_bytes());
            r
        };
        let mut throttled = rule("t", 9);
        throttled.throttle_bps = Some(3_000_000);
        let mut bytes = legacy(&rule("old-a", 1));
        bytes.extend_from_slice(&encode_rules(&[throttled.clone()]).unwrap());
        bytes.extend_from_slice(&legacy(&rule("old-b", 2)));
        let (back, problems) = parse_rules(&bytes);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(back, vec![rule("old-a", 1), throttled, rule("old-b", 2)]);
        // A damaged legacy record is reported like any other.
        let mut bad = legacy(&rule("old-c", 3));
        bad[16 + 71] = 64;
        let (back, problems) = parse_rules(&bad);
        assert!(back.is_empty());
        assert_eq!(
            problems,
            vec![Problem::BadRuleRecord {
                index: 0,
                error: AbiError::BadValue
            }]
        );
    }

    #[test]
    fn rules_round_trip() {
        let rules = vec![rule("web", 18), rule("voip", 46), rule("bulk", 8)];
        let bytes = encode_rules(&rules).unwrap();
        assert_eq!(bytes.len(), 3 * RULE_RECORD_LEN);
        let (back, problems) = parse_rules(&bytes);
        assert_eq!(back, rules);
        assert!(problems.is_empty());
        assert_eq!(parse_rules(&[]), (vec![], vec![]));
    }

    #[test]
    fn a_bad_record_in_the_middle_is_skipped_and_reported() {
        let rules = vec![rule("a", 1), rule("b", 2), rule("c", 3)];
        let mut bytes = encode_rules(&rules).unwrap();
        // DSCP of the second rule (payload offset 71) out of range.
        bytes[RULE_RECORD_LEN + 16 + 71] = 64;
        let (back, problems) = parse_rules(&bytes);
        assert_eq!(back, vec![rule("a", 1), rule("c", 3)]);
        assert_eq!(
            problems,
            vec![Problem::BadRuleRecord {
                index: 1,
                error: AbiError::BadValue
            }]
        );
    }

    #[test]
    fn a_record_of_another_kind_is_reported() {
        let mut bytes = encode_rules(&[rule("a", 1)]).unwrap();
        bytes.extend_from_slice(&encode_table(&table()).unwrap());
        bytes.extend_from_slice(&encode_rules(&[rule("b", 2)]).unwrap());
        let (back, problems) = parse_rules(&bytes);
        assert_eq!(back, vec![rule("a", 1), rule("b", 2)]);
        assert_eq!(
            problems,
            vec![Problem::BadRuleRecord {
                index: 1,
                error: AbiError::BadKind
            }]
        );
    }

    #[test]
    fn every_truncation_keeps_the_whole_records_before_it() {
        let rules = vec![rule("a", 1), rule("b", 2)];
        let bytes = encode_rules(&rules).unwrap();
        for len in 0..bytes.len() {
            let (back, problems) = parse_rules(&bytes[..len]);
            let whole = len / RULE_RECORD_LEN;
            assert_eq!(back, rules[..whole].to_vec(), "len {len}");
            if len % RULE_RECORD_LEN == 0 {
                assert!(problems.is_empty(), "len {len}");
            } else {
                assert_eq!(
                    problems,
                    vec![Problem::RulesTail {
                        offset: whole * RULE_RECORD_LEN
                    }],
                    "len {len}"
                );
            }
        }
    }

    #[test]
    fn garbage_never_panics_and_yields_no_rules() {
        for seed in 0u32..200 {
            let bytes: Vec<u8> = (0..(seed as usize * 7 % 400))
                .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u32 * 17) % 251) as u8)
                .collect();
            let (rules, _) = parse_rules(&bytes);
            assert!(rules.is_empty());
            assert!(parse_table(&bytes).is_err());
        }
    }

    #[test]
    fn table_round_trip_and_errors() {
        let t = table();
        let bytes = encode_table(&t).unwrap();
        assert_eq!(parse_table(&bytes), Ok(t));
        assert_eq!(
            parse_table(&bytes[..55]),
            Err(Problem::BadTable(AbiError::BadLength))
        );
        let rules = encode_rules(&[rule("a", 1)]).unwrap();
        assert_eq!(
            parse_table(&rules),
            Err(Problem::BadTable(AbiError::BadKind))
        );
        assert!(parse_table(&[]).is_err());
    }

    #[test]
    fn load_then_snapshot_reproduces_the_values() {
        let mut engine = Engine::with_seed(Limits::default(), 1);
        let rules = vec![rule("web", 18), rule("voip", 46)];
        let problems = load_into(&mut engine, rules.clone(), Some(table()));
        assert!(problems.is_empty(), "{problems:?}");
        // The loading handle is gone again.
        assert!(engine.handle_details().unwrap().is_empty());
        let snap = snapshot(&mut engine).unwrap();
        assert!(engine.handle_details().unwrap().is_empty());
        assert_eq!(parse_table(&snap.table), Ok(table()));
        let (mut back, problems) = parse_rules(&snap.rules);
        assert!(problems.is_empty());
        let mut expected = rules;
        back.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        expected.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        assert_eq!(back, expected);
    }

    #[test]
    fn partial_information_is_bounds_checked() {
        const REG_BINARY: u32 = 3;
        const REG_SZ: u32 = 1;
        let mut buf = Vec::new();
        buf.extend_from_slice(&0u32.to_ne_bytes()); // TitleIndex
        buf.extend_from_slice(&REG_BINARY.to_ne_bytes()); // Type
        buf.extend_from_slice(&3u32.to_ne_bytes()); // DataLength
        buf.extend_from_slice(&[0xAA, 0xBB, 0xCC, 0xDD]); // Data (+1 padding byte)
        assert_eq!(
            partial_information_data(&buf, REG_BINARY),
            Some(&[0xAA, 0xBB, 0xCC][..])
        );
        assert_eq!(partial_information_data(&buf, REG_SZ), None);
        // DataLength beyond what was written.
        buf[8..12].copy_from_slice(&5u32.to_ne_bytes());
        assert_eq!(partial_information_data(&buf, REG_BINARY), None);
        buf[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(partial_information_data(&buf, REG_BINARY), None);
        // Empty value.
        buf[8..12].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(partial_information_data(&buf, REG_BINARY), Some(&[][..]));
        // Every truncation of the header.
        for len in 0..12 {
            assert_eq!(partial_information_data(&buf[..len], REG_BINARY), None);
        }
    }

    #[test]
    fn load_fails_open_on_refused_rules() {
        let mut engine = Engine::with_seed(Limits::default(), 1);
        let rules = vec![rule("dup", 18), rule("dup", 46), rule("ok", 10)];
        let problems = load_into(&mut engine, rules, None);
        assert_eq!(
            problems,
            vec![Problem::RuleRefused {
                index: 1,
                error: EngineError::AlreadyExists
            }]
        );
        let snap = snapshot(&mut engine).unwrap();
        let (back, _) = parse_rules(&snap.rules);
        assert_eq!(back.len(), 2);
        // No table given: the default one is kept.
        assert_eq!(
            parse_table(&snap.table),
            Ok(qosmark_engine::traffic::default_table())
        );
    }
}
