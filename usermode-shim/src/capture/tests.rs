//! Unit tests of the capture reader on captures built by cutting and transforming bytes in
//! code (the real captures are exercised by the integration tests in `tests/`).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

use super::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_pcap_magic_never_panic(
        magic in prop::sample::select(vec![0xa1b2_c3d4u32, 0xa1b2_3c4d, 0xd4c3_b2a1, 0x4d3c_b2a1]),
        rest in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = magic.to_le_bytes().to_vec();
        bytes.extend(rest);
        if let Ok(c) = parse(&bytes) {
            for r in c.records {
                prop_assert!(r.data.end <= bytes.len());
            }
        }
    }

    #[test]
    fn arbitrary_bytes_after_shb_never_panic(
        big in any::<bool>(),
        rest in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = SHB_LE.to_vec();
        if big {
            bytes[8..12].copy_from_slice(&0x1a2b_3c4du32.to_be_bytes());
        }
        bytes.extend(rest);
        if let Ok(c) = parse(&bytes) {
            for r in c.records {
                prop_assert!(r.data.end <= bytes.len());
            }
        }
    }
}

/// A minimal little-endian section header block (28 bytes, no options).
const SHB_LE: [u8; 28] = {
    let mut b = [0u8; 28];
    let t = 0x0a0d_0d0au32.to_le_bytes();
    let l = 28u32.to_le_bytes();
    let m = 0x1a2b_3c4du32.to_le_bytes();
    let mut i = 0;
    while i < 4 {
        b[i] = t[i];
        b[4 + i] = l[i];
        b[8 + i] = m[i];
        b[24 + i] = l[i];
        i += 1;
    }
    b[12] = 1; // major 1, minor 0
               // section length -1 (unknown)
    let mut j = 16;
    while j < 24 {
        b[j] = 0xff;
        j += 1;
    }
    b
};

#[test]
fn empty_and_short_inputs_are_not_captures() {
    assert_eq!(parse(&[]), Err(CaptureError::NotACapture));
    assert_eq!(parse(&[0xd4, 0xc3]), Err(CaptureError::NotACapture));
    assert_eq!(parse(b"GIF89a...."), Err(CaptureError::NotACapture));
}

#[test]
fn pcap_header_truncation_is_reported_at_offset_zero() {
    let mut b = 0xa1b2_c3d4u32.to_le_bytes().to_vec();
    b.extend([2, 0, 4, 0]);
    assert!(matches!(
        parse(&b),
        Err(CaptureError::Corrupt { offset: 0, .. })
    ));
}

#[test]
fn empty_pcapng_section_has_no_records() {
    let c = parse(&SHB_LE).unwrap();
    assert_eq!(c.format, Format::Pcapng);
    assert!(c.records.is_empty());
}

#[test]
fn timestamp_conversion() {
    assert_eq!(to_ns(1_500_000, 1_000_000, 0), 1_500_000_000);
    assert_eq!(to_ns(3, 2, 0), 1_500_000_000);
    assert_eq!(to_ns(1, 1, -5), 0);
    assert_eq!(to_ns(u64::MAX, 1, 0), u64::MAX);
    assert_eq!(to_ns(7, 0, 0), 0);
}

#[test]
fn link_types_round_trip_and_unknown_ones_are_named() {
    for n in [1u32, 101, 113, 228, 229, 276] {
        assert_eq!(LinkType::from_number(n).unwrap().number(), n);
    }
    assert_eq!(LinkType::from_number(105), None);
    let e = CaptureError::UnsupportedLinkType {
        offset: 20,
        link_type: 105,
    };
    assert!(e.to_string().contains("LINKTYPE_IEEE802_11"));
}

#[test]
fn locate_walks_vlan_tags_to_the_innermost() {
    let mut f = vec![0u8; 12];
    f.extend([0x88, 0xa8, 0x20, 0x01]); // outer 802.1ad, PCP 1
    f.extend([0x81, 0x00, 0xa0, 0x64]); // inner 802.1Q, PCP 5, VLAN 100
    f.extend([0x08, 0x00]);
    f.extend([0x45; 20]);
    let l = locate(LinkType::Ethernet, &f).unwrap();
    assert_eq!(l.ip_offset, 22);
    let tag = l.innermost_tag.unwrap();
    assert_eq!(tag.offset, 16);
    assert_eq!(tag.pcp.value(), 5);
    // ARP is not IP; a cut tag is not IP either.
    let mut arp = vec![0u8; 12];
    arp.extend([0x08, 0x06, 0, 1]);
    assert_eq!(locate(LinkType::Ethernet, &arp), None);
    assert_eq!(locate(LinkType::Ethernet, &f[..14]), None);
}
