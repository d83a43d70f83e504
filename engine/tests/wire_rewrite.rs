//! `set_dscp` and `set_pcp` against etherparse and a checksum written independently here:
//! only the DSCP bits (and on IPv4 the checksum) change, the checksum is valid afterwards, and
//! etherparse reads back the new DSCP with the old ECN.
// Tests index and unwrap buffers they built themselves.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::missing_panics_doc
)]

mod common;

use common::{header_sum_ok, link_prefix, packet, tags};
use etherparse::{Ipv4Header, Ipv6Header, SingleVlanHeader};
use proptest::prelude::*;
use qosmark_engine::abi::{Dscp, Pcp};
use qosmark_engine::wire::{
    parse_ethernet, parse_ip, set_dscp, set_pcp, IpSummary, IpVersion, Rewrite, WireError,
};

/// Checks that `after` differs from `before` only in the DSCP bits and, for IPv4, the checksum
/// field, and that the ECN bits are kept.
fn only_dscp_changed(before: &[u8], after: &[u8], v6: bool) -> Result<(), TestCaseError> {
    prop_assert_eq!(before.len(), after.len());
    let allowed: &[usize] = if v6 { &[0, 1] } else { &[1, 10, 11] };
    for (i, (a, b)) in before.iter().zip(after).enumerate() {
        if !allowed.contains(&i) {
            prop_assert_eq!(a, b, "byte {} changed", i);
        }
    }
    if v6 {
        prop_assert_eq!(before[0] & 0xf0, after[0] & 0xf0, "version changed");
        prop_assert_eq!(
            before[1] & 0x3f,
            after[1] & 0x3f,
            "ECN or flow label changed"
        );
    } else {
        prop_assert_eq!(before[1] & 0x03, after[1] & 0x03, "ECN changed");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn set_dscp_changes_only_dscp_and_keeps_the_checksum_valid(
        b in packet(),
        target in 0u8..64,
        corrupt_checksum in any::<bool>(),
    ) {
        let v6 = b.expect.version == IpVersion::V6;
        let mut bytes = b.bytes.clone();
        if corrupt_checksum && !v6 {
            bytes[10] ^= 0x5a;
        }
        let before = bytes.clone();
        let dscp = Dscp::try_new(target).unwrap();
        let result = set_dscp(&mut bytes, dscp).unwrap();
        if b.expect.dscp == dscp {
            prop_assert_eq!(result, Rewrite::Unchanged);
            prop_assert_eq!(&bytes, &before, "an unchanged packet stays byte-identical");
        } else {
            prop_assert_eq!(result, Rewrite::Changed);
        }
        only_dscp_changed(&before, &bytes, v6)?;
        prop_assert_eq!(parse_ip(&bytes), Ok(IpSummary { dscp, ..b.expect }));

        if v6 {
            let (h, _) = Ipv6Header::from_slice(&bytes).unwrap();
            prop_assert_eq!(h.dscp().value(), target);
            prop_assert_eq!(h.ecn().value(), b.expect.ecn);
        } else {
            let (h, _) = Ipv4Header::from_slice(&bytes).unwrap();
            prop_assert_eq!(h.dscp.value(), target);
            prop_assert_eq!(h.ecn.value(), b.expect.ecn);
            let checksum_ok = header_sum_ok(&bytes[..b.expect.header_len]);
            prop_assert_eq!(checksum_ok, h.header_checksum == h.calc_header_checksum());
            if result == Rewrite::Changed || !corrupt_checksum {
                prop_assert!(checksum_ok, "checksum invalid after the rewrite");
            } else {
                prop_assert!(!checksum_ok, "an unchanged packet keeps its bad checksum");
            }
        }
    }

    #[test]
    fn set_dscp_on_headers_only_buffers(b in packet(), target in 0u8..64) {
        // The back ends may hand over just the headers; the fixed header is all set_dscp needs.
        let v6 = b.expect.version == IpVersion::V6;
        let fixed = if v6 { 40 } else { b.expect.header_len };
        let mut bytes = b.bytes[..fixed].to_vec();
        let before = bytes.clone();
        let dscp = Dscp::try_new(target).unwrap();
        prop_assert_eq!(set_dscp(&mut bytes, dscp).unwrap() == Rewrite::Changed, b.expect.dscp != dscp);
        only_dscp_changed(&before, &bytes, v6)?;
        if !v6 {
            prop_assert!(header_sum_ok(&bytes));
        }
        let mut short = b.bytes[..fixed - 1].to_vec();
        prop_assert_eq!(set_dscp(&mut short, dscp), Err(WireError::Truncated));
        prop_assert_eq!(&short[..], &b.bytes[..fixed - 1]);
    }

    #[test]
    fn set_dscp_on_mutated_packets_keeps_its_contract(
        b in packet(),
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        target in 0u8..64,
    ) {
        let mut bytes = b.bytes.clone();
        for (at, value) in mutations {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let before = bytes.clone();
        match set_dscp(&mut bytes, Dscp::try_new(target).unwrap()) {
            Err(_) | Ok(Rewrite::Unchanged) => prop_assert_eq!(&bytes, &before),
            Ok(Rewrite::Changed) => {
                let v6 = before[0] >> 4 == 6;
                only_dscp_changed(&before, &bytes, v6)?;
                if v6 {
                    prop_assert_eq!(((bytes[0] & 0x0f) << 2) | (bytes[1] >> 6), target);
                } else {
                    let hl = usize::from(bytes[0] & 0x0f) * 4;
                    prop_assert!(header_sum_ok(&bytes[..hl]));
                    prop_assert_eq!(bytes[1] >> 2, target);
                }
            }
        }
    }

    #[test]
    fn set_pcp_changes_only_the_pcp_bits(
        b in packet(),
        tags in tags(),
        pcp in 0u8..8,
        which in any::<prop::sample::Index>(),
    ) {
        let v6 = b.expect.version == IpVersion::V6;
        let mut frame = link_prefix(&tags, v6);
        frame.extend_from_slice(&b.bytes);
        let before = frame.clone();
        let pcp = Pcp::try_new(pcp).unwrap();
        if tags.is_empty() {
            prop_assert_eq!(set_pcp(&mut frame, 12, pcp), Err(WireError::Malformed));
            prop_assert_eq!(&frame, &before);
            return Ok(());
        }
        let i = which.index(tags.len());
        let offset = 12 + 4 * i;
        let result = set_pcp(&mut frame, offset, pcp).unwrap();
        prop_assert_eq!(result == Rewrite::Unchanged, tags[i].1 == pcp.value());
        for (j, (a, b)) in before.iter().zip(&frame).enumerate() {
            if j != offset + 2 {
                prop_assert_eq!(a, b, "byte {} changed", j);
            }
        }
        // etherparse reads the tag back: new PCP, same DEI, VID and EtherType.
        let (tag, _) = SingleVlanHeader::from_slice(&frame[offset + 2..]).unwrap();
        prop_assert_eq!(tag.pcp.value(), pcp.value());
        prop_assert_eq!(tag.drop_eligible_indicator, tags[i].2);
        prop_assert_eq!(tag.vlan_id.value(), tags[i].3);
        let s = parse_ethernet(&frame).unwrap();
        prop_assert_eq!(s.tags[i].unwrap().pcp, pcp);
    }
}
