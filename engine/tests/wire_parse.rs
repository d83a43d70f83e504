//! `parse_ip`, `parse_ethernet` and the strict transport views against packets built by
//! etherparse: exact summaries, every truncation, and no panic on arbitrary or mutated bytes.
// Tests index and unwrap buffers they built themselves.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::missing_panics_doc
)]

mod common;

use common::{link_prefix, packet, tags, Built};
use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
use proptest::prelude::*;
use qosmark_engine::wire::{
    parse_ethernet, parse_ip, EtherType, IpSummary, IpVersion, TcpPacket, Transport, UdpPacket,
    WireError,
};

/// What `parse_ip` must return for the first `n` bytes of `b`, per the documented rules.
fn expected_prefix(b: &Built, n: usize) -> Result<IpSummary, WireError> {
    let e = b.expect;
    if n == 0 {
        return Err(WireError::Empty);
    }
    let fixed = match e.version {
        IpVersion::V4 => e.header_len,
        IpVersion::V6 => 40,
    };
    if n < fixed {
        return Err(WireError::Truncated);
    }
    for (i, &(at, len, number)) in b.exts.iter().enumerate() {
        if n < at + len {
            // Fragment fields are known once the fragment header has been walked.
            let frag_walked = b.exts[..i].iter().any(|&(_, _, number)| number == 44);
            return Ok(IpSummary {
                protocol: number,
                header_len: at,
                fragment: if frag_walked { e.fragment } else { None },
                transport: Transport::Truncated,
                ..e
            });
        }
    }
    let transport = match e.transport {
        Transport::Ports { .. } if n < e.header_len + 4 => Transport::Truncated,
        t => t,
    };
    Ok(IpSummary { transport, ..e })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn summary_matches_builder_parameters(b in packet()) {
        prop_assert_eq!(parse_ip(&b.bytes), Ok(b.expect));
        prop_assert!(b.expect.is_complete(b.bytes.len()));
        prop_assert!(!b.expect.is_complete(b.ip_len() - 1));
    }

    #[test]
    fn summary_agrees_with_etherparse(b in packet()) {
        let ours = parse_ip(&b.bytes).unwrap();
        let theirs = PacketHeaders::from_ip_slice(&b.bytes[..b.ip_len()]).unwrap();
        match theirs.net.unwrap() {
            NetHeaders::Ipv4(h, _) => {
                prop_assert_eq!(ours.version, IpVersion::V4);
                prop_assert_eq!(ours.src, core::net::IpAddr::from(h.source));
                prop_assert_eq!(ours.dst, core::net::IpAddr::from(h.destination));
                prop_assert_eq!(ours.dscp.value(), h.dscp.value());
                prop_assert_eq!(ours.ecn, h.ecn.value());
                prop_assert_eq!(ours.protocol, h.protocol.0);
                prop_assert_eq!(ours.header_len, h.header_len());
                prop_assert_eq!(ours.total_len, usize::from(h.total_len));
            }
            NetHeaders::Ipv6(h, _) => {
                prop_assert_eq!(ours.version, IpVersion::V6);
                prop_assert_eq!(ours.src, core::net::IpAddr::from(h.source));
                prop_assert_eq!(ours.dst, core::net::IpAddr::from(h.destination));
                prop_assert_eq!(ours.dscp.value(), h.dscp().value());
                prop_assert_eq!(ours.ecn, h.ecn().value());
                prop_assert_eq!(ours.total_len, 40 + usize::from(h.payload_length));
            }
            NetHeaders::Arp(_) => prop_assert!(false, "not an IP packet"),
        }
        // etherparse decodes the transport header of unfragmented packets and first fragments.
        match (theirs.transport, ours.transport) {
            (Some(TransportHeader::Tcp(t)), Transport::Ports { src, dst }) => {
                prop_assert_eq!((src, dst), (t.source_port, t.destination_port));
            }
            (Some(TransportHeader::Udp(u)), Transport::Ports { src, dst }) => {
                prop_assert_eq!((src, dst), (u.source_port, u.destination_port));
            }
            (Some(TransportHeader::Tcp(_) | TransportHeader::Udp(_)), other) => {
                prop_assert!(false, "etherparse found ports, we found {:?}", other);
            }
            _ => {}
        }
    }

    #[test]
    fn every_truncation_gives_the_documented_result(b in packet()) {
        for n in 0..=b.bytes.len() {
            prop_assert_eq!(parse_ip(&b.bytes[..n]), expected_prefix(&b, n), "prefix {}", n);
        }
    }

    #[test]
    fn every_truncation_of_tcp_and_udp_headers(b in packet()) {
        let hl = b.expect.header_len;
        if b.expect.transport == Transport::NotFirstFragment {
            return Ok(());
        }
        let transport = &b.bytes[hl..b.ip_len()];
        let len = transport.len();
        match b.expect.protocol {
            6 => {
                for n in 0..=len {
                    let expected = match n {
                        0 => Err(WireError::Empty),
                        n if n < 20 => Err(WireError::Truncated),
                        _ => Ok(()),
                    };
                    prop_assert_eq!(TcpPacket::new_checked(&transport[..n]).map(|_| ()), expected);
                }
                let t = TcpPacket::new_checked(transport).unwrap();
                prop_assert_eq!(
                    b.expect.transport,
                    Transport::Ports { src: t.src_port(), dst: t.dst_port() }
                );
            }
            17 => {
                for n in 0..=len {
                    let expected = match n {
                        0 => Err(WireError::Empty),
                        n if n < 8 => Err(WireError::Truncated),
                        _ => Ok(()),
                    };
                    prop_assert_eq!(UdpPacket::new_checked(&transport[..n]).map(|_| ()), expected);
                }
                let u = UdpPacket::new_checked(transport).unwrap();
                prop_assert_eq!(usize::from(u.len()), len);
            }
            _ => {}
        }
    }

    #[test]
    fn ethernet_frames_with_tags(b in packet(), tags in tags()) {
        let v6 = b.expect.version == IpVersion::V6;
        let mut frame = link_prefix(&tags, v6);
        let ip_offset = frame.len();
        frame.extend_from_slice(&b.bytes);
        let s = parse_ethernet(&frame).unwrap();
        prop_assert_eq!(s.ip_offset(), Some(ip_offset));
        prop_assert_eq!(s.ethertype, if v6 { EtherType::Ipv6 } else { EtherType::Ipv4 });
        prop_assert_eq!(s.tag_count(), tags.len());
        for (i, &(tpid, pcp, dei, vid)) in tags.iter().enumerate() {
            let tag = s.tags[i].unwrap();
            prop_assert_eq!(tag.offset, 12 + 4 * i);
            prop_assert_eq!(u16::from(tag.tpid), tpid);
            prop_assert_eq!(tag.pcp.value(), pcp);
            prop_assert_eq!(tag.dei, dei);
            prop_assert_eq!(tag.vid.value(), vid);
        }
        prop_assert_eq!(parse_ip(&frame[ip_offset..]), Ok(b.expect));
        for n in 0..ip_offset {
            let expected = if n == 0 { WireError::Empty } else { WireError::Truncated };
            prop_assert_eq!(parse_ethernet(&frame[..n]), Err(expected), "prefix {}", n);
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(
        first in prop_oneof![any::<u8>(), 0x40u8..0x50, 0x60u8..0x70],
        rest in proptest::collection::vec(any::<u8>(), 0..160),
    ) {
        let mut bytes = vec![first];
        bytes.extend_from_slice(&rest);
        let _ = parse_ip(&bytes);
        let _ = parse_ethernet(&bytes);
        let _ = parse_ethernet(&rest);
        let _ = TcpPacket::new_checked(&rest[..]);
    }

    #[test]
    fn never_panics_on_mutated_packets(
        b in packet(),
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = b.bytes.clone();
        for (at, value) in mutations {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let cut = cut.index(bytes.len() + 1);
        if let Ok(s) = parse_ip(&bytes[..cut]) {
            // Every header the summary claims to have walked is inside the buffer.
            prop_assert!(s.header_len <= cut);
            if let Transport::Ports { .. } = s.transport {
                prop_assert!(s.header_len + 4 <= cut);
            }
        }
    }
}
