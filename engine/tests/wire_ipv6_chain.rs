//! IPv6 extension-header chains: fragment, routing, AH (built with etherparse), and static
//! vectors in 0xa5-filled buffers for ESP, No Next Header, an over-long chain and malformed
//! chains. A chain that hides the transport never stops the DSCP rewrite.
// Tests index and unwrap buffers they built themselves.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::missing_panics_doc
)]

use etherparse::{
    IpAuthHeader, IpFragOffset, IpHeaders, IpNumber, Ipv6Extensions, Ipv6FragmentHeader,
    Ipv6Header, Ipv6RawExtHeader, Ipv6RoutingExtensions, PacketBuilder,
};
use qosmark_engine::abi::Dscp;
use qosmark_engine::wire::{
    parse_ip, set_dscp, ChainEnd, FragmentInfo, Ipv6Packet, Rewrite, Transport, WireError,
    MAX_EXTENSION_HEADERS,
};

const SRC: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn raw(len: usize) -> Ipv6RawExtHeader {
    Ipv6RawExtHeader::new_raw(IpNumber(255), &vec![0u8; len]).unwrap()
}

fn udp_with(exts: Ipv6Extensions) -> Vec<u8> {
    let header = Ipv6Header {
        traffic_class: 0x02, // DSCP 0, ECN 2
        hop_limit: 64,
        source: SRC,
        destination: DST,
        ..Ipv6Header::default()
    };
    let mut out = Vec::new();
    PacketBuilder::ip(IpHeaders::Ipv6(header, exts))
        .udp(4000, 5000)
        .write(&mut out, &[1, 2, 3, 4])
        .unwrap();
    out
}

/// A 0xa5-filled buffer with an IPv6 fixed header (payload length `payload`, first next header
/// `next`) followed by generic 8-byte extension headers whose next-header values are `chain`.
fn static_chain(next: u8, chain: &[u8], extra: usize) -> Vec<u8> {
    let payload = 8 * chain.len() + extra;
    let mut buf = vec![0xa5u8; 40 + payload];
    buf[..8].copy_from_slice(&[0x60, 0x00, 0x00, 0x00, 0, 0, next, 64]);
    buf[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
    buf[8..24].copy_from_slice(&SRC);
    buf[24..40].copy_from_slice(&DST);
    for (i, &n) in chain.iter().enumerate() {
        buf[40 + 8 * i] = n;
        buf[41 + 8 * i] = 0;
    }
    buf
}

/// The rewrite still works and changes only the Traffic Class bits.
fn assert_rewritable(packet: &[u8]) {
    let mut copy = packet.to_vec();
    assert_eq!(set_dscp(&mut copy, Dscp::EF), Ok(Rewrite::Changed));
    assert_eq!(&copy[2..], &packet[2..]);
    assert_eq!(Ipv6Packet::new_checked(&copy[..]).unwrap().dscp(), Dscp::EF);
}

#[test]
fn routing_and_destination_options_are_walked() {
    let packet = udp_with(Ipv6Extensions {
        hop_by_hop_options: Some(raw(6)),
        destination_options: Some(raw(14)),
        routing: Some(Ipv6RoutingExtensions {
            routing: raw(22),
            final_destination_options: Some(raw(6)),
        }),
        ..Ipv6Extensions::default()
    });
    let s = parse_ip(&packet).unwrap();
    assert_eq!(s.protocol, 17);
    assert_eq!(s.header_len, 40 + 8 + 16 + 24 + 8);
    assert_eq!(
        s.transport,
        Transport::Ports {
            src: 4000,
            dst: 5000
        }
    );
    assert_eq!(s.fragment, None);
    assert_eq!(s.ecn, 2);
    let chain = Ipv6Packet::new_checked(&packet[..])
        .unwrap()
        .extension_chain()
        .unwrap();
    assert_eq!(chain.count, 4);
    assert_eq!(chain.end, ChainEnd::Upper);
    assert_rewritable(&packet);
}

#[test]
fn first_and_later_fragments() {
    let frag = |offset: u16, more: bool| {
        udp_with(Ipv6Extensions {
            routing: Some(Ipv6RoutingExtensions {
                routing: raw(6),
                final_destination_options: None,
            }),
            fragment: Some(Ipv6FragmentHeader::new(
                IpNumber(255),
                IpFragOffset::try_new(offset).unwrap(),
                more,
                0x0102_0304,
            )),
            ..Ipv6Extensions::default()
        })
    };
    let first = frag(0, true);
    let s = parse_ip(&first).unwrap();
    assert_eq!(
        s.fragment,
        Some(FragmentInfo {
            id: 0x0102_0304,
            offset: 0,
            more: true
        })
    );
    assert_eq!(
        s.transport,
        Transport::Ports {
            src: 4000,
            dst: 5000
        }
    );
    assert_eq!(s.header_len, 56);

    let later = frag(185, false);
    let s = parse_ip(&later).unwrap();
    assert_eq!(
        s.fragment,
        Some(FragmentInfo {
            id: 0x0102_0304,
            offset: 185,
            more: false
        })
    );
    assert_eq!(s.transport, Transport::NotFirstFragment);
    assert_eq!(s.protocol, 17);
    assert_eq!(s.header_len, 56);
    assert_rewritable(&later);

    // Atomic fragment (offset 0, M clear): still reported as a fragment, ports readable.
    let atomic = frag(0, false);
    let s = parse_ip(&atomic).unwrap();
    assert_eq!(
        s.fragment,
        Some(FragmentInfo {
            id: 0x0102_0304,
            offset: 0,
            more: false
        })
    );
    assert_eq!(
        s.transport,
        Transport::Ports {
            src: 4000,
            dst: 5000
        }
    );
}

#[test]
fn authentication_header_stops_the_walk() {
    let packet = udp_with(Ipv6Extensions {
        destination_options: Some(raw(6)),
        auth: Some(IpAuthHeader::new(IpNumber(255), 7, 1, &[0; 12]).unwrap()),
        ..Ipv6Extensions::default()
    });
    let s = parse_ip(&packet).unwrap();
    assert_eq!(s.protocol, 51);
    assert_eq!(s.header_len, 48);
    assert_eq!(s.transport, Transport::Unreachable);
    assert_rewritable(&packet);
}

#[test]
fn esp_and_no_next_header_stop_the_walk() {
    for stop in [50u8, 59] {
        let packet = static_chain(0, &[43, stop], 16);
        let s = parse_ip(&packet).unwrap();
        assert_eq!(s.protocol, stop);
        assert_eq!(s.header_len, 56);
        assert_eq!(s.transport, Transport::Unreachable);
        assert_rewritable(&packet);
        // ESP right after the fixed header.
        let packet = static_chain(stop, &[], 16);
        let s = parse_ip(&packet).unwrap();
        assert_eq!(
            (s.protocol, s.header_len, s.transport),
            (stop, 40, Transport::Unreachable)
        );
    }
}

#[test]
fn chain_longer_than_the_limit_is_unreachable() {
    // Eight destination-options headers then UDP: walked.
    let mut chain = vec![60u8; MAX_EXTENSION_HEADERS - 1];
    chain.push(17);
    let packet = static_chain(60, &chain, 8);
    let s = parse_ip(&packet).unwrap();
    assert_eq!(s.header_len, 40 + 8 * MAX_EXTENSION_HEADERS);
    assert!(matches!(s.transport, Transport::Ports { .. }));

    // Nine: the ninth is not walked.
    let mut chain = vec![60u8; MAX_EXTENSION_HEADERS];
    chain.push(17);
    let packet = static_chain(60, &chain, 8);
    let s = parse_ip(&packet).unwrap();
    assert_eq!(s.transport, Transport::Unreachable);
    assert_eq!(s.protocol, 60);
    assert_eq!(s.header_len, 40 + 8 * MAX_EXTENSION_HEADERS);
    assert_rewritable(&packet);

    // A self-referencing chain of 100 headers costs the same bounded walk.
    let packet = static_chain(60, &[60u8; 100], 0);
    assert_eq!(parse_ip(&packet).unwrap().transport, Transport::Unreachable);
}

#[test]
fn malformed_chains() {
    // Hop-by-hop after another header.
    let packet = static_chain(60, &[0, 17], 8);
    assert_eq!(parse_ip(&packet), Err(WireError::Malformed));
    // Two fragment headers (the first with offset 0, so the walk goes on).
    let mut packet = static_chain(44, &[44, 17], 8);
    packet[42..44].copy_from_slice(&[0, 1]);
    assert_eq!(parse_ip(&packet), Err(WireError::Malformed));
    // Still rewritable: set_dscp only needs the fixed header.
    assert_rewritable(&packet);
}

#[test]
fn cut_chain_is_transport_truncated() {
    let packet = static_chain(0, &[43, 17], 8);
    for n in 40..packet.len() {
        let s = parse_ip(&packet[..n]).unwrap();
        let (protocol, header_len) = match n {
            40..=47 => (0, 40),
            48..=55 => (43, 48),
            _ => (17, 56),
        };
        assert_eq!(
            (s.protocol, s.header_len),
            (protocol, header_len),
            "prefix {n}"
        );
        let expected = if n >= 60 {
            s.transport
        } else {
            Transport::Truncated
        };
        assert_eq!(s.transport, expected, "prefix {n}");
    }
}

#[test]
fn unwalked_extension_numbers_are_unreachable() {
    for number in [135u8, 139, 140, 253, 254] {
        let packet = static_chain(number, &[], 16);
        let s = parse_ip(&packet).unwrap();
        assert_eq!((s.protocol, s.transport), (number, Transport::Unreachable));
    }
    // Upper-layer protocols other than TCP and UDP are `Other`, not `Unreachable`.
    for number in [1u8, 4, 41, 47, 58, 132] {
        let packet = static_chain(number, &[], 16);
        assert_eq!(
            parse_ip(&packet).unwrap().transport,
            Transport::Other,
            "{number}"
        );
    }
}
