//! Packet generators for the `wire_*` integration tests.
//!
//! Packets are built with etherparse's `PacketBuilder`, an independent implementation, from
//! parameters chosen by proptest. The expected [`IpSummary`] is derived from those parameters
//! (not from our parser), so comparing `parse_ip` with it is a real oracle test.
// Test helpers: indexing and unwrapping on buffers the helpers built themselves is fine, and
// not every test binary uses every helper.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::missing_panics_doc,
    dead_code
)]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    EtherType, Ethernet2Header, IpDscp, IpEcn, IpFragOffset, IpHeaders, IpNumber, Ipv4Extensions,
    Ipv4Header, Ipv4Options, Ipv6Extensions, Ipv6FlowLabel, Ipv6FragmentHeader, Ipv6Header,
    Ipv6RawExtHeader, Ipv6RoutingExtensions, PacketBuilder, SingleVlanHeader, VlanId, VlanPcp,
};
use proptest::prelude::*;
use qosmark_engine::abi::Dscp;
use qosmark_engine::wire::{FragmentInfo, IpSummary, IpVersion, Transport};

/// The transport the generator puts after the IP header(s).
#[derive(Clone, Copy, Debug)]
pub enum L4 {
    /// TCP with these ports.
    Tcp(u16, u16),
    /// UDP with these ports.
    Udp(u16, u16),
    /// ICMP echo request (`ICMPv4` or `ICMPv6`).
    Icmp,
}

/// Parameters of an IPv4 packet.
#[derive(Clone, Debug)]
pub struct V4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub dscp: u8,
    pub ecn: u8,
    pub ttl: u8,
    /// Raw option bytes, a multiple of 4, at most 40.
    pub options: Vec<u8>,
    pub id: u16,
    pub df: bool,
    pub mf: bool,
    pub offset: u16,
}

/// Parameters of an IPv6 packet; extension sizes are in 8-byte units beyond the first 8.
#[derive(Clone, Debug)]
pub struct V6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub dscp: u8,
    pub ecn: u8,
    pub flow: u32,
    pub hbh: Option<u8>,
    pub dest: Option<u8>,
    pub routing: Option<(u8, Option<u8>)>,
    /// (offset in 8-byte units, more, id)
    pub frag: Option<(u16, bool, u32)>,
}

/// A generated packet and what `parse_ip` must report for it.
#[derive(Clone, Debug)]
pub struct Built {
    /// The packet, IP header first, possibly followed by `padding` bytes.
    pub bytes: Vec<u8>,
    /// Bytes of padding at the end (not part of the IP packet).
    pub padding: usize,
    /// The expected summary of the complete packet.
    pub expect: IpSummary,
    /// The IPv6 extension headers `parse_ip` walks, as (offset, length, number), in order.
    pub exts: Vec<(usize, usize, u8)>,
}

impl Built {
    /// Length of the IP packet without padding.
    pub fn ip_len(&self) -> usize {
        self.bytes.len() - self.padding
    }
}

fn l4_strategy() -> impl Strategy<Value = L4> {
    prop_oneof![
        (any::<u16>(), any::<u16>()).prop_map(|(s, d)| L4::Tcp(s, d)),
        (any::<u16>(), any::<u16>()).prop_map(|(s, d)| L4::Udp(s, d)),
        Just(L4::Icmp),
    ]
}

fn v4_strategy() -> impl Strategy<Value = V4> {
    (
        (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            0u8..64,
            0u8..4,
            any::<u8>(),
        ),
        (0usize..=10).prop_flat_map(|words| proptest::collection::vec(any::<u8>(), words * 4)),
        (
            any::<u16>(),
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just(0u16), 0u16..0x2000],
        ),
    )
        .prop_map(
            |((src, dst, dscp, ecn, ttl), options, (id, df, mf, offset))| V4 {
                src,
                dst,
                dscp,
                ecn,
                ttl,
                options,
                id,
                df,
                mf,
                offset,
            },
        )
}

fn v6_strategy() -> impl Strategy<Value = V6> {
    (
        (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            0u8..64,
            0u8..4,
            0u32..0x10_0000,
        ),
        proptest::option::of(0u8..3),
        proptest::option::of(0u8..3),
        proptest::option::of((0u8..3, proptest::option::of(0u8..2))),
        proptest::option::of((
            prop_oneof![Just(0u16), 0u16..0x2000],
            any::<bool>(),
            any::<u32>(),
        )),
    )
        .prop_map(
            |((src, dst, dscp, ecn, flow), hbh, dest, routing, frag)| V6 {
                src,
                dst,
                dscp,
                ecn,
                flow,
                hbh,
                dest,
                routing,
                frag,
            },
        )
}

/// Any IPv4 or IPv6 packet with TCP, UDP or ICMP, 0..24 payload bytes and 0..8 padding bytes.
pub fn packet() -> impl Strategy<Value = Built> {
    (
        prop_oneof![v4_strategy().prop_map(Ok), v6_strategy().prop_map(Err)],
        l4_strategy(),
        proptest::collection::vec(any::<u8>(), 0..24),
        proptest::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(ip, l4, payload, pad)| match ip {
            Ok(v4) => build_v4(&v4, l4, &payload, &pad),
            Err(v6) => build_v6(&v6, l4, &payload, &pad),
        })
}

fn finish(
    builder: etherparse::PacketBuilderStep<IpHeaders>,
    l4: L4,
    v6: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    match l4 {
        L4::Tcp(s, d) => builder.tcp(s, d, 1, 1024).write(&mut out, payload).unwrap(),
        L4::Udp(s, d) => builder.udp(s, d).write(&mut out, payload).unwrap(),
        L4::Icmp if v6 => builder
            .icmpv6_echo_request(1, 2)
            .write(&mut out, payload)
            .unwrap(),
        L4::Icmp => builder
            .icmpv4_echo_request(1, 2)
            .write(&mut out, payload)
            .unwrap(),
    }
    out
}

fn l4_protocol(l4: L4, v6: bool) -> u8 {
    match l4 {
        L4::Tcp(..) => 6,
        L4::Udp(..) => 17,
        L4::Icmp if v6 => 58,
        L4::Icmp => 1,
    }
}

fn l4_transport(l4: L4) -> Transport {
    match l4 {
        L4::Tcp(src, dst) | L4::Udp(src, dst) => Transport::Ports { src, dst },
        L4::Icmp => Transport::Other,
    }
}

/// Builds an IPv4 packet with etherparse.
pub fn build_v4(p: &V4, l4: L4, payload: &[u8], pad: &[u8]) -> Built {
    let header = Ipv4Header {
        dscp: IpDscp::try_new(p.dscp).unwrap(),
        ecn: IpEcn::try_new(p.ecn).unwrap(),
        identification: p.id,
        dont_fragment: p.df,
        more_fragments: p.mf,
        fragment_offset: IpFragOffset::try_new(p.offset).unwrap(),
        time_to_live: p.ttl,
        source: p.src,
        destination: p.dst,
        options: Ipv4Options::try_from(&p.options[..]).unwrap(),
        ..Ipv4Header::default()
    };
    let builder = PacketBuilder::ip(IpHeaders::Ipv4(header, Ipv4Extensions::default()));
    let mut bytes = finish(builder, l4, false, payload);
    let total_len = bytes.len();
    bytes.extend_from_slice(pad);
    let header_len = 20 + p.options.len();
    let expect = IpSummary {
        version: IpVersion::V4,
        src: IpAddr::V4(Ipv4Addr::from(p.src)),
        dst: IpAddr::V4(Ipv4Addr::from(p.dst)),
        dscp: Dscp::try_new(p.dscp).unwrap(),
        ecn: p.ecn,
        protocol: l4_protocol(l4, false),
        header_len,
        total_len,
        fragment: (p.mf || p.offset != 0).then_some(FragmentInfo {
            id: u32::from(p.id),
            offset: p.offset,
            more: p.mf,
        }),
        transport: if p.offset != 0 {
            Transport::NotFirstFragment
        } else {
            l4_transport(l4)
        },
    };
    Built {
        bytes,
        padding: pad.len(),
        expect,
        exts: Vec::new(),
    }
}

fn raw_ext(units: u8) -> Ipv6RawExtHeader {
    let len = 6 + 8 * usize::from(units);
    // PadN-free zero bytes: Pad1 options, never interpreted by either parser.
    Ipv6RawExtHeader::new_raw(IpNumber(255), &vec![0u8; len]).unwrap()
}

/// Builds an IPv6 packet with etherparse.
pub fn build_v6(p: &V6, l4: L4, payload: &[u8], pad: &[u8]) -> Built {
    let header = Ipv6Header {
        traffic_class: (p.dscp << 2) | p.ecn,
        flow_label: Ipv6FlowLabel::try_new(p.flow).unwrap(),
        hop_limit: 64,
        source: p.src,
        destination: p.dst,
        ..Ipv6Header::default()
    };
    let exts = Ipv6Extensions {
        hop_by_hop_options: p.hbh.map(raw_ext),
        destination_options: p.dest.map(raw_ext),
        routing: p.routing.map(|(r, fin)| Ipv6RoutingExtensions {
            routing: raw_ext(r),
            final_destination_options: fin.map(raw_ext),
        }),
        fragment: p.frag.map(|(offset, more, id)| {
            Ipv6FragmentHeader::new(
                IpNumber(255),
                IpFragOffset::try_new(offset).unwrap(),
                more,
                id,
            )
        }),
        auth: None,
    };
    let builder = PacketBuilder::ip(IpHeaders::Ipv6(header, exts));
    let mut bytes = finish(builder, l4, true, payload);
    let total_len = bytes.len();
    bytes.extend_from_slice(pad);

    // etherparse writes extension headers in RFC 8200 order: hop-by-hop, destination options,
    // routing, fragment, then the final destination options.
    let later_fragment = p.frag.is_some_and(|f| f.0 != 0);
    let mut layout = Vec::new();
    let mut at = 40;
    let mut push = |units: Option<u8>, number: u8, fixed: Option<usize>| {
        if let Some(u) = units {
            let len = fixed.unwrap_or(8 + 8 * usize::from(u));
            layout.push((at, len, number));
            at += len;
        }
    };
    push(p.hbh, 0, None);
    push(p.dest, 60, None);
    push(p.routing.map(|r| r.0), 43, None);
    push(p.frag.map(|_| 0), 44, Some(8));
    let final_dest = p.routing.and_then(|r| r.1);
    // A later fragment ends the walk right after its fragment header.
    if !later_fragment {
        push(final_dest, 60, None);
    }
    let after_exts = at;
    let protocol = if later_fragment && final_dest.is_some() {
        60
    } else {
        l4_protocol(l4, true)
    };

    let fragment = p
        .frag
        .map(|(offset, more, id)| FragmentInfo { id, offset, more });
    let expect = IpSummary {
        version: IpVersion::V6,
        src: IpAddr::V6(Ipv6Addr::from(p.src)),
        dst: IpAddr::V6(Ipv6Addr::from(p.dst)),
        dscp: Dscp::try_new(p.dscp).unwrap(),
        ecn: p.ecn,
        protocol,
        header_len: after_exts,
        total_len,
        fragment,
        transport: if later_fragment {
            Transport::NotFirstFragment
        } else {
            l4_transport(l4)
        },
    };
    Built {
        bytes,
        padding: pad.len(),
        expect,
        exts: layout,
    }
}

/// An Ethernet II header with `tags` VLAN tags (outer first: (TPID, PCP, DEI, VID)), built
/// with etherparse, for an IP packet of `version`.
pub fn link_prefix(tags: &[(u16, u8, bool, u16)], v6: bool) -> Vec<u8> {
    let ip_type = if v6 { EtherType::IPV6 } else { EtherType::IPV4 };
    let first = tags.first().map_or(ip_type, |t| EtherType(t.0));
    let mut out = Ethernet2Header {
        source: [2, 0, 0, 0, 0, 1],
        destination: [2, 0, 0, 0, 0, 2],
        ether_type: first,
    }
    .to_bytes()
    .to_vec();
    for (i, &(_, pcp, dei, vid)) in tags.iter().enumerate() {
        let next = tags.get(i + 1).map_or(ip_type, |t| EtherType(t.0));
        let tag = SingleVlanHeader {
            pcp: VlanPcp::try_new(pcp).unwrap(),
            drop_eligible_indicator: dei,
            vlan_id: VlanId::try_new(vid).unwrap(),
            ether_type: next,
        };
        out.extend_from_slice(&tag.to_bytes());
    }
    out
}

/// Up to two VLAN tags with any accepted TPID.
pub fn tags() -> impl Strategy<Value = Vec<(u16, u8, bool, u16)>> {
    proptest::collection::vec(
        (
            prop_oneof![Just(0x8100u16), Just(0x88a8), Just(0x9100)],
            0u8..8,
            any::<bool>(),
            0u16..4096,
        ),
        0..=2,
    )
}

/// The ones' complement checksum over `header`, written here independently of the engine.
pub fn header_sum_ok(header: &[u8]) -> bool {
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
