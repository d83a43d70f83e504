//! Every packet-path decision that needs no Windows API, as pure functions over plain
//! values, unit-tested on the host. The classify trampolines (`callouts`, Windows only) only
//! gather inputs (NBL fields, metadata, header bytes) and carry out what these return.
//!
//! * [`NblPlan`]: the engine's verdict for each `NET_BUFFER` of one `NET_BUFFER_LIST`, and
//!   what follows for the NBL: clone or not, which 802.1p priority to request, how many
//!   packets a failure leaves unmarked (each is one `record_fail_open`).
//! * [`Outcome`] and [`write_classify_out`]: what goes into `FWPS_CLASSIFY_OUT0` — soft
//!   PERMIT on every path but one, BLOCK + ABSORB with the write right cleared after a
//!   successful injection, nothing at all without the write right.
//! * [`oversize`], [`header_read_len`], [`rewrite_span`]: length rules.
//! * [`ale_tuple`]: the 5-tuple of an ALE classify from its incoming values.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use qosmark_abi::{FailOpen, Mark, Pcp, Protocol};
use qosmark_engine::shaper::ShaperId;
use qosmark_engine::{FiveTuple, Verdict};

use crate::ffi::wfp::{
    FWPS_CLASSIFY_OUT0, FWPS_CLASSIFY_OUT_FLAG_ABSORB, FWPS_RIGHT_ACTION_WRITE, FWP_ACTION_BLOCK,
    FWP_ACTION_CONTINUE, FWP_ACTION_PERMIT,
};

/// Most `NET_BUFFER`s of one NBL the driver handles; an NBL with more is permitted unmarked
/// (each of its packets counted as [`FailOpen::Oversize`]). The plan lives on the stack of
/// the classify call, so nothing is allocated per packet.
pub(crate) const MAX_NBS: usize = 64;

/// Bytes of each packet copied for classification: the IPv4 header with options (60) or the
/// IPv6 header with a chain of extension headers, plus the 4 port bytes. A longer chain is
/// cut, which the engine reports as a skip, never an error.
pub(crate) const HEADER_BYTES: usize = 256;

/// What happened to one `NET_BUFFER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NbVerdict {
    /// Classified by the engine.
    Classified(Verdict),
    /// `NdisGetDataBuffer` could not provide the headers: not classified, not marked.
    Unreadable,
}

/// The per-NBL plan: one entry per `NET_BUFFER`, in chain order.
#[derive(Clone, Debug)]
pub(crate) struct NblPlan {
    verdicts: [Option<NbVerdict>; MAX_NBS],
    /// The queue room of each delayed buffer (`qosmark_engine::shaper::held_bytes` of the
    /// bytes classify saw: its IP length), returned with `Engine::shaper_released`; 0 for
    /// the others.
    room: [u64; MAX_NBS],
    len: usize,
    too_many: bool,
}

impl Default for NblPlan {
    fn default() -> Self {
        NblPlan {
            verdicts: [None; MAX_NBS],
            room: [0; MAX_NBS],
            len: 0,
            too_many: false,
        }
    }
}

/// The shaping decision for a whole NBL (see [`NblPlan::hold`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HoldPlan {
    /// The one shaper every buffer was delayed for.
    pub(crate) shaper: ShaperId,
    /// When the NBL may leave: the latest of its buffers' departure times.
    pub(crate) until_ns: u64,
    /// The queue room its buffers took, in bytes (the sum over its buffers).
    pub(crate) bytes: u64,
    /// Its buffers (packets): each took one packet of queue room.
    pub(crate) packets: u8,
}

impl NblPlan {
    /// [`NblPlan::push_sized`] with no bytes (tests of the marking path).
    #[cfg(test)]
    pub(crate) fn push(&mut self, v: NbVerdict) -> bool {
        self.push_sized(v, 0)
    }

    /// Records the next `NET_BUFFER`'s verdict and its queue room (0 unless delayed). Returns `false` (and remembers it) when the NBL has more than [`MAX_NBS`]
    /// buffers; the caller stops classifying then.
    pub(crate) fn push_sized(&mut self, v: NbVerdict, length: u64) -> bool {
        if let (Some(slot), Some(len)) =
            (self.verdicts.get_mut(self.len), self.room.get_mut(self.len))
        {
            *slot = Some(v);
            *len = length;
            self.len += 1;
            true
        } else {
            self.too_many = true;
            false
        }
    }

    /// The NBL may be held as a whole: every buffer was delayed, all for the same shaper.
    /// (802.1p, like the NBL, is then uniform too.) A mixed NBL — some buffers delayed, some
    /// marked, skipped or delayed for another shaper — is not held: a held NBL would delay
    /// its other packets, and splitting an NBL needs allocations classify must not make. Its
    /// delayed buffers are sent at once with their marks (counted, room returned).
    pub(crate) fn hold(&self) -> Option<HoldPlan> {
        if self.too_many || self.len == 0 {
            return None;
        }
        let mut plan: Option<HoldPlan> = None;
        for (v, bytes) in self.verdicts.iter().zip(self.room).take(self.len) {
            let Some(NbVerdict::Classified(Verdict::Delay {
                until_ns, shaper, ..
            })) = *v
            else {
                return None;
            };
            plan = match plan {
                None => Some(HoldPlan {
                    shaper,
                    until_ns,
                    bytes,
                    packets: 1,
                }),
                Some(p) if p.shaper == shaper => Some(HoldPlan {
                    shaper,
                    until_ns: p.until_ns.max(until_ns),
                    bytes: p.bytes.saturating_add(bytes),
                    // At most MAX_NBS (64) buffers are recorded.
                    packets: p.packets.saturating_add(1),
                }),
                Some(_) => return None,
            };
        }
        plan
    }

    /// The delayed buffers, as (shaper, queue room in bytes): each holds queue room in the engine
    /// that must be returned (`Engine::shaper_released`) once the packet leaves — or at once
    /// when it is not held after all.
    pub(crate) fn delayed(&self) -> impl Iterator<Item = (ShaperId, u64)> + '_ {
        self.verdicts
            .iter()
            .zip(self.room.iter())
            .take(self.len)
            .filter_map(|(v, len)| match v {
                Some(NbVerdict::Classified(Verdict::Delay { shaper, .. })) => Some((*shaper, *len)),
                _ => None,
            })
    }

    /// The NBL had more buffers than the plan holds.
    pub(crate) fn too_many(&self) -> bool {
        self.too_many
    }

    /// The mark for buffer `i`, if the engine asked for one (a delayed buffer carries its
    /// mark too: it is rewritten at classify time, held or not).
    pub(crate) fn mark(&self, i: usize) -> Option<Mark> {
        match self.verdicts.get(i).copied().flatten() {
            Some(NbVerdict::Classified(Verdict::Mark(m) | Verdict::Delay { mark: m, .. })) => {
                Some(m)
            }
            _ => None,
        }
    }

    /// Buffers the engine asked to mark or delay: each is one packet a failure leaves
    /// unmarked.
    pub(crate) fn marks(&self) -> usize {
        (0..self.len).filter(|&i| self.mark(i).is_some()).count()
    }

    /// Buffers whose headers could not be read.
    pub(crate) fn unreadable(&self) -> usize {
        self.verdicts
            .iter()
            .take(self.len)
            .filter(|v| matches!(v, Some(NbVerdict::Unreadable)))
            .count()
    }

    /// A clone is needed: some buffer must be rewritten, and the NBL was fully classified.
    pub(crate) fn needs_clone(&self) -> bool {
        !self.too_many && self.marks() > 0
    }

    /// The 802.1p priority to request for the whole NBL (802.1p is per NBL, out of band).
    /// `Some` only if every buffer was classified, none was skipped, and every `Mark` asks
    /// for the same priority; a mixed NBL gets its DSCP marks but no priority, so no packet
    /// ever receives another flow's 802.1p.
    pub(crate) fn pcp(&self) -> Option<Pcp> {
        let mut want: Option<Pcp> = None;
        for v in self.verdicts.iter().take(self.len) {
            match v {
                Some(NbVerdict::Classified(Verdict::Mark(m) | Verdict::Delay { mark: m, .. })) => {
                    match (m.pcp, want) {
                        (Some(p), None) => want = Some(p),
                        (Some(p), Some(w)) if p == w => {}
                        _ => return None,
                    }
                }
                Some(NbVerdict::Classified(Verdict::AlreadyMarked)) => {}
                _ => return None,
            }
        }
        want
    }

    /// Buffers recorded.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// What the mark callout tells the filter engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Let the original through (soft PERMIT: the write right stays for lower-priority
    /// callouts). Under a `CALLOUT_TERMINATING` filter every non-absorb path must say PERMIT
    /// explicitly: anything else, CONTINUE included, counts as BLOCK.
    Permit,
    /// The clone was injected: block and absorb the original, clear the write right.
    Absorb,
    /// No write right: another callout decided; touch nothing.
    Untouched,
}

/// Writes `outcome` into `out` (the caller holds the only reference to `classifyOut`).
pub(crate) fn write_classify_out(out: &mut FWPS_CLASSIFY_OUT0, outcome: Outcome) {
    match outcome {
        Outcome::Permit => out.actionType = FWP_ACTION_PERMIT,
        Outcome::Absorb => {
            out.actionType = FWP_ACTION_BLOCK;
            out.flags |= FWPS_CLASSIFY_OUT_FLAG_ABSORB;
            out.rights &= !FWPS_RIGHT_ACTION_WRITE;
        }
        Outcome::Untouched => {}
    }
}

/// Inspection callouts: CONTINUE when allowed to write, otherwise nothing.
pub(crate) fn write_inspection_out(out: &mut FWPS_CLASSIFY_OUT0) {
    if has_write_right(out.rights) {
        out.actionType = FWP_ACTION_CONTINUE;
    }
}

/// `rights` carries `FWPS_RIGHT_ACTION_WRITE`.
pub(crate) fn has_write_right(rights: u32) -> bool {
    rights & FWPS_RIGHT_ACTION_WRITE != 0
}

/// The packet path's answer when the NBL needs marking but something stops it before a
/// clone is injected, in the order the checks run.
pub(crate) fn precheck(
    plan: &NblPlan,
    write_right: bool,
    lso_info: usize,
    lengths_over_mtu: bool,
) -> Option<FailOpen> {
    if plan.too_many() {
        Some(FailOpen::Oversize)
    } else if !write_right {
        Some(FailOpen::NoWriteRight)
    } else if oversize(lso_info, lengths_over_mtu) {
        Some(FailOpen::Oversize)
    } else {
        None
    }
}

/// Large-send NBLs (non-zero `TcpLargeSendNetBufferListInfo`) and packets longer than the
/// path MTU are left alone: whether a re-injected super-packet survives is unproven
/// (wfp-driver.md §5), and injection above the MTU fails.
pub(crate) fn oversize(lso_info: usize, lengths_over_mtu: bool) -> bool {
    lso_info != 0 || lengths_over_mtu
}

/// `length` exceeds `path_mtu` (0 = unknown, never exceeded).
pub(crate) fn over_mtu(length: u32, path_mtu: u32) -> bool {
    path_mtu != 0 && length > path_mtu
}

/// Bytes to copy for classification out of a buffer of `data_length` bytes.
pub(crate) fn header_read_len(data_length: u32) -> u32 {
    data_length.min(HEADER_BYTES as u32)
}

/// How many leading bytes the DSCP rewrite writes into (and must therefore be contiguous
/// and writable): the whole IPv4 header (the checksum covers it), or the first 40 bytes of
/// IPv6 (the rewrite validates the fixed header; Traffic Class is in bytes 0–1). `None` for
/// anything else.
pub(crate) fn rewrite_span(header: &[u8]) -> Option<usize> {
    let first = *header.first()?;
    match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            (ihl >= 20).then_some(ihl)
        }
        6 => Some(40),
        _ => None,
    }
}

/// The address of an ALE incoming value: IPv4 values are a host-order `UINT32`, IPv6 values
/// 16 network-order bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AleAddr {
    /// `FWP_UINT32`, host byte order.
    V4(u32),
    /// `FWP_BYTE_ARRAY16_TYPE`.
    V6([u8; 16]),
}

impl From<AleAddr> for IpAddr {
    fn from(a: AleAddr) -> Self {
        match a {
            AleAddr::V4(v) => IpAddr::V4(Ipv4Addr::from(v)),
            AleAddr::V6(b) => IpAddr::V6(Ipv6Addr::from(b)),
        }
    }
}

/// The 5-tuple of an ALE classify (local = this host's side), or `None` for protocols other
/// than TCP and UDP. The ports are host-order `UINT16` values.
pub(crate) fn ale_tuple(
    protocol: u8,
    local: AleAddr,
    local_port: u16,
    remote: AleAddr,
    remote_port: u16,
) -> Option<FiveTuple> {
    let protocol = match protocol {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        _ => return None,
    };
    Some(FiveTuple::new(
        protocol,
        SocketAddr::new(local.into(), local_port),
        SocketAddr::new(remote.into(), remote_port),
    ))
}

/// Interrupt time (100 ns units) to the engine's nanoseconds.
pub(crate) fn interrupt_time_to_ns(t: u64) -> u64 {
    t.saturating_mul(100)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        reason = "tests index and unwrap values they built; a panic is a failed test"
    )]
    use super::*;
    use qosmark_abi::{Dscp, SkipReason};

    fn mark(dscp: u8, pcp: Option<u8>) -> Verdict {
        Verdict::Mark(Mark {
            dscp: Some(Dscp::try_new(dscp).unwrap()),
            pcp: pcp.map(|p| Pcp::try_new(p).unwrap()),
        })
    }

    fn plan(vs: &[NbVerdict]) -> NblPlan {
        let mut p = NblPlan::default();
        for v in vs {
            assert!(p.push(*v));
        }
        p
    }

    use NbVerdict::{Classified as C, Unreadable as U};

    #[test]
    fn nothing_to_mark_needs_no_clone() {
        let p = plan(&[
            C(Verdict::Skip(SkipReason::NoMatch)),
            C(Verdict::AlreadyMarked),
            U,
        ]);
        assert!(!p.needs_clone());
        assert_eq!((p.marks(), p.unreadable(), p.len()), (0, 1, 3));
        assert_eq!(p.pcp(), None);
        assert!(!plan(&[]).needs_clone());
    }

    #[test]
    fn marks_are_per_buffer() {
        let p = plan(&[
            C(mark(46, None)),
            C(Verdict::Skip(SkipReason::NoMatch)),
            C(mark(10, None)),
        ]);
        assert!(p.needs_clone());
        assert_eq!(p.marks(), 2);
        assert_eq!(p.mark(0).unwrap().dscp, Dscp::try_new(46).ok());
        assert_eq!(p.mark(1), None);
        assert_eq!(p.mark(2).unwrap().dscp, Dscp::try_new(10).ok());
        assert_eq!(p.mark(3), None);
        assert_eq!(p.mark(usize::MAX), None);
    }

    #[test]
    fn pcp_only_when_every_buffer_agrees() {
        assert_eq!(
            plan(&[C(mark(46, Some(5))), C(mark(46, Some(5)))]).pcp(),
            Pcp::try_new(5).ok()
        );
        // Already marked buffers (DSCP and 802.1p in place) do not spoil it.
        assert_eq!(
            plan(&[C(mark(46, Some(5))), C(Verdict::AlreadyMarked)]).pcp(),
            Pcp::try_new(5).ok()
        );
        // Different priorities, a skipped buffer, an unreadable one, or a mark without 802.1p.
        assert_eq!(
            plan(&[C(mark(46, Some(5))), C(mark(46, Some(4)))]).pcp(),
            None
        );
        assert_eq!(
            plan(&[C(mark(46, Some(5))), C(Verdict::Skip(SkipReason::NoMatch))]).pcp(),
            None
        );
        assert_eq!(plan(&[C(mark(46, Some(5))), U]).pcp(), None);
        assert_eq!(plan(&[C(mark(46, Some(5))), C(mark(46, None))]).pcp(), None);
        assert_eq!(plan(&[C(mark(46, None)), C(mark(46, Some(5)))]).pcp(), None);
    }

    fn delay(dscp: u8, until_ns: u64, shaper: u32) -> Verdict {
        let Verdict::Mark(mark) = mark(dscp, Some(3)) else {
            unreachable!()
        };
        Verdict::Delay {
            mark,
            until_ns,
            shaper: ShaperId::from_u64((7u64 << 32) | u64::from(shaper)).unwrap(),
        }
    }

    #[test]
    fn delayed_nbls_are_held_whole_or_not_at_all() {
        let id = |n: u32| ShaperId::from_u64((7u64 << 32) | u64::from(n)).unwrap();
        let sized = |vs: &[(Verdict, u64)]| {
            let mut p = NblPlan::default();
            for (v, len) in vs {
                assert!(p.push_sized(C(*v), *len));
            }
            p
        };
        // Every buffer delayed for one shaper: held until the last departure, room summed.
        let p = sized(&[(delay(46, 500, 1), 256), (delay(46, 900, 1), 60)]);
        assert_eq!(
            p.hold(),
            Some(HoldPlan {
                shaper: id(1),
                until_ns: 900,
                bytes: 316,
                packets: 2,
            })
        );
        // A delayed buffer is rewritten like a marked one (DSCP and 802.1p).
        assert!(p.needs_clone());
        assert_eq!(p.marks(), 2);
        assert_eq!(p.mark(1).unwrap().dscp, Dscp::try_new(46).ok());
        assert_eq!(p.pcp(), Pcp::try_new(3).ok());
        assert_eq!(p.delayed().collect::<Vec<_>>(), [(id(1), 256), (id(1), 60)]);
        // Mixed NBLs are not held; their delayed buffers are listed for the room to return.
        for mixed in [
            sized(&[(delay(46, 500, 1), 40), (delay(46, 500, 2), 50)]),
            sized(&[(delay(46, 500, 1), 40), (mark(46, Some(3)), 50)]),
            sized(&[(delay(46, 500, 1), 40), (Verdict::AlreadyMarked, 50)]),
            sized(&[
                (Verdict::Skip(SkipReason::NoMatch), 50),
                (delay(46, 500, 1), 40),
            ]),
        ] {
            assert_eq!(mixed.hold(), None, "{mixed:?}");
            assert_eq!(mixed.delayed().filter(|d| d.1 == 40).count(), 1);
        }
        let mut unreadable = sized(&[(delay(46, 500, 1), 40)]);
        assert!(unreadable.push_sized(U, 0));
        assert_eq!(unreadable.hold(), None);
        // Nothing delayed: nothing to hold or return.
        let marked = sized(&[(mark(46, None), 40)]);
        assert_eq!((marked.hold(), marked.delayed().count()), (None, 0));
        assert_eq!(NblPlan::default().hold(), None);
        // Too many buffers: not held (the NBL is permitted unmarked, room returned).
        let mut many = NblPlan::default();
        for _ in 0..=MAX_NBS {
            many.push_sized(C(delay(46, 1, 1)), 1);
        }
        assert!(many.too_many());
        assert_eq!(many.hold(), None);
        assert_eq!(many.delayed().count(), MAX_NBS);
    }

    #[test]
    fn too_many_buffers_fail_open() {
        let mut p = NblPlan::default();
        for _ in 0..MAX_NBS {
            assert!(p.push(C(mark(46, None))));
        }
        assert!(p.needs_clone());
        assert!(!p.push(C(mark(46, None))));
        assert!(p.too_many());
        assert!(!p.needs_clone());
        assert_eq!(precheck(&p, true, 0, false), Some(FailOpen::Oversize));
    }

    #[test]
    fn precheck_order() {
        let p = plan(&[C(mark(46, None))]);
        assert_eq!(precheck(&p, true, 0, false), None);
        assert_eq!(precheck(&p, false, 1, true), Some(FailOpen::NoWriteRight));
        assert_eq!(precheck(&p, true, 0x5b4, false), Some(FailOpen::Oversize));
        assert_eq!(precheck(&p, true, 0, true), Some(FailOpen::Oversize));
    }

    #[test]
    fn classify_out_per_outcome() {
        let start = FWPS_CLASSIFY_OUT0 {
            actionType: 0,
            outContext: 7,
            filterId: 9,
            rights: FWPS_RIGHT_ACTION_WRITE | 0x10,
            flags: 0x20,
            reserved: 0,
        };
        let mut out = start;
        write_classify_out(&mut out, Outcome::Permit);
        assert_eq!(
            out,
            FWPS_CLASSIFY_OUT0 {
                actionType: FWP_ACTION_PERMIT,
                ..start
            }
        );
        let mut out = start;
        write_classify_out(&mut out, Outcome::Absorb);
        assert_eq!(
            out,
            FWPS_CLASSIFY_OUT0 {
                actionType: FWP_ACTION_BLOCK,
                rights: 0x10,
                flags: 0x20 | FWPS_CLASSIFY_OUT_FLAG_ABSORB,
                ..start
            }
        );
        let mut out = start;
        write_classify_out(&mut out, Outcome::Untouched);
        assert_eq!(out, start);
        let mut out = start;
        write_inspection_out(&mut out);
        assert_eq!(out.actionType, FWP_ACTION_CONTINUE);
        let mut out = FWPS_CLASSIFY_OUT0 { rights: 0, ..start };
        write_inspection_out(&mut out);
        assert_eq!(out.actionType, 0);
    }

    #[test]
    fn lengths() {
        assert!(!over_mtu(1500, 1500));
        assert!(over_mtu(1501, 1500));
        assert!(!over_mtu(65_000, 0));
        assert_eq!(header_read_len(40), 40);
        assert_eq!(header_read_len(9000), HEADER_BYTES as u32);
        assert_eq!(rewrite_span(&[0x45]), Some(20));
        assert_eq!(rewrite_span(&[0x4f]), Some(60));
        assert_eq!(rewrite_span(&[0x44]), None);
        assert_eq!(rewrite_span(&[0x60, 0]), Some(40));
        assert_eq!(rewrite_span(&[0x50]), None);
        assert_eq!(rewrite_span(&[]), None);
    }

    #[test]
    fn ale_tuples() {
        let t = ale_tuple(
            17,
            AleAddr::V4(0x0a00_0001),
            5000,
            AleAddr::V4(0xc000_0209),
            53,
        )
        .unwrap();
        assert_eq!(t.local, "10.0.0.1:5000".parse().unwrap());
        assert_eq!(t.remote, "192.0.2.9:53".parse().unwrap());
        assert_eq!(t.protocol, Protocol::Udp);
        // A v4-mapped IPv6 ALE tuple (dual-stack socket) is keyed as IPv4.
        let mapped = Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped().octets();
        let peer = Ipv4Addr::new(192, 0, 2, 9).to_ipv6_mapped().octets();
        let m = ale_tuple(6, AleAddr::V6(mapped), 1, AleAddr::V6(peer), 2).unwrap();
        assert_eq!(m.local, "10.0.0.1:1".parse().unwrap());
        assert!(ale_tuple(1, AleAddr::V4(1), 0, AleAddr::V4(2), 0).is_none());
        assert_eq!(interrupt_time_to_ns(3), 300);
        assert_eq!(interrupt_time_to_ns(u64::MAX), u64::MAX);
    }

    /// The packet path's host half, end to end: one NBL of three IPv4 packets (two of a
    /// registered flow, one of another host) is classified buffer by buffer into a plan,
    /// then the planned buffers are rewritten with the engine's rewrite exactly as
    /// `callouts::rewrite_clone` does, and an independent parser (etherparse) checks the
    /// result: DSCP set, ECN kept, header checksum valid, the other packet byte-identical,
    /// and no 802.1p for the mixed NBL.
    #[test]
    fn simulated_nbl_marks_only_its_flow() {
        use qosmark_abi::{
            Caller, Family, Privilege, Request, SocketInfo, TrafficType, QOS_NON_ADAPTIVE_FLOW,
        };
        use qosmark_engine::{Engine, Limits, PacketMeta};

        fn udp(src: [u8; 4], dst: [u8; 4], ecn: u8) -> Vec<u8> {
            let mut ip =
                etherparse::Ipv4Header::new(8 + 4, 64, etherparse::IpNumber::UDP, src, dst)
                    .unwrap();
            ip.ecn = etherparse::IpEcn::try_new(ecn).unwrap();
            let b = etherparse::PacketBuilder::ip(etherparse::IpHeaders::Ipv4(
                ip,
                etherparse::Ipv4Extensions::default(),
            ))
            .udp(5000, 53);
            let mut out = Vec::new();
            b.write(&mut out, &[1, 2, 3, 4]).unwrap();
            out
        }

        let mut engine = Engine::new(Limits {
            check_owner: true,
            ..Limits::default()
        });
        let pid = 77;
        let h = engine
            .open_handle(Caller {
                pid,
                privilege: Privilege::User,
            })
            .unwrap();
        let local: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let peer: SocketAddr = "192.0.2.9:53".parse().unwrap();
        engine
            .apply(
                h,
                &Request::AddSocketToFlow {
                    socket: SocketInfo {
                        socket: 1,
                        family: Family::V4,
                        protocol: Protocol::Udp,
                        local,
                        peer: Some(peer),
                    },
                    dest: None,
                    traffic_type: TrafficType::Voice,
                    flags: QOS_NON_ADAPTIVE_FLOW,
                    flow_id: 0,
                },
            )
            .unwrap();
        // The ALE callout saw the flow connect.
        let t = ale_tuple(
            17,
            AleAddr::V4(0x0a00_0001),
            5000,
            AleAddr::V4(0xc000_0209),
            53,
        )
        .unwrap();
        engine.report_flow(&t, pid, 0);

        let mut nbl = [
            udp([10, 0, 0, 1], [192, 0, 2, 9], 1),
            udp([10, 0, 0, 2], [192, 0, 2, 9], 0),
            udp([10, 0, 0, 1], [192, 0, 2, 9], 2),
        ];
        let untouched = nbl[1].clone();
        let mut plan = NblPlan::default();
        for nb in &nbl {
            let bytes = &nb[..header_read_len(nb.len() as u32) as usize];
            assert!(plan.push(NbVerdict::Classified(engine.classify(
                bytes,
                &PacketMeta::default(),
                0
            ))));
        }
        assert!(plan.needs_clone());
        assert_eq!(plan.marks(), 2);
        assert_eq!(plan.pcp(), None, "mixed NBL: no 802.1p");
        assert_eq!(precheck(&plan, true, 0, false), None);
        for (i, nb) in nbl.iter_mut().enumerate() {
            if let Some(mark) = plan.mark(i) {
                let span = rewrite_span(nb).unwrap();
                assert_eq!(
                    Engine::rewrite(&mut nb[..span], mark),
                    Ok(qosmark_engine::wire::Rewrite::Changed)
                );
            }
        }
        for (i, nb) in nbl.iter().enumerate() {
            let h = etherparse::Ipv4HeaderSlice::from_slice(nb).unwrap();
            assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
            if i == 1 {
                assert_eq!(nb, &untouched);
            } else {
                assert_eq!(h.dcp().value(), 56, "voice = CS7");
                assert_eq!(h.ecn().value(), if i == 0 { 1 } else { 2 });
            }
        }
    }
}
