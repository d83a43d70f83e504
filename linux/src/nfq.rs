//! The data path: one netfilter queue, spoken to over a `NETLINK_NETFILTER` socket.
//!
//! ## Protocol (`nfnetlink_queue`, facts from the kernel's uapi headers)
//! Every message is a netlink header (16 bytes, host byte order: length, type, flags, sequence,
//! port id), an `nfgenmsg` (family, version 0, queue number big-endian) and attributes
//! (`nlattr`: u16 length, u16 type, value, padded to 4 bytes). Attribute values are big-endian.
//! * Configuration (`NFQNL_MSG_CONFIG`): `CMD` bind/unbind, `PARAMS` (copy range, copy mode
//!   `COPY_PACKET`), `QUEUE_MAXLEN`, `MASK`+`FLAGS` (`F_FAIL_OPEN`: when the queue is full or
//!   the message cannot be delivered to us, the kernel accepts the packet instead of dropping
//!   it). Each is sent with `NLM_F_ACK` and its acknowledgement checked.
//! * Packets (`NFQNL_MSG_PACKET`): `PACKET_HDR` (packet id, hook), `PAYLOAD` (the IP packet),
//!   `CAP_LEN` (original length, present when the copy was truncated).
//! * Verdicts: `NFQNL_MSG_VERDICT` (one packet, may carry a replacement `PAYLOAD`) and
//!   `NFQNL_MSG_VERDICT_BATCH` (one verdict for every queued packet with an id ≤ the given one).
//!
//! ## The loop (one thread)
//! 1. `recvmmsg(MSG_WAITFORONE)` into [`BATCH`] preallocated buffers: blocks for the first
//!    packet, then takes everything already queued.
//! 2. Under the engine lock ([`crate::lock`], once per batch), each packet is classified; a `Mark` verdict is
//!    applied in place in the receive buffer with [`Engine::rewrite`] (ECN kept, IPv4
//!    checksum recomputed).
//! 3. Verdicts are written in packet-id order into one preallocated send buffer and sent with
//!    as few `send` calls as possible: consecutive plain accepts collapse into one
//!    `VERDICT_BATCH`, a rewritten packet gets its own `VERDICT` with the new bytes, emitted
//!    after the batch that covers the packets before it — so the kernel releases packets in
//!    the order they were queued.
//!
//! Nothing on this path allocates: buffers, headers and the item list are sized at start.
//! While the thread waits for a CPU, packets wait in the kernel queue, and when the queue is
//! full the kernel lets the overflow go unmarked (`NFQA_CFG_F_FAIL_OPEN`). So the thread runs
//! in the real-time class (`SCHED_FIFO`, priority [`PACKET_THREAD_RT_PRIORITY`]), which
//! preempts every normal thread: a 30-minute soak on a loaded 2-core machine with the thread
//! at nice -10 saw a 0.3 s stall and 2,734 unmarked packets (linux/README.md). It sleeps in
//! `recvmmsg` whenever nothing is queued, so it cannot hog a CPU; should it ever, the kernel's
//! real-time throttling still leaves 5 % of every second to other threads. Without the
//! privilege for it the thread falls back to nice -10 and says so in the log.
//!
//! ## Sizes and GSO
//! `NFQA_CFG_F_GSO` is **not** set, on purpose: the kernel then segments a GSO packet (a TCP
//! or `UDP_SEGMENT` super-packet of up to 64 KiB, or larger with BIG TCP) in software before
//! queueing it, so every packet we see is one wire-sized packet whose headers are complete and
//! whose rewrite needs no knowledge of GSO metadata or partial checksums (the DSCP is not
//! covered by the TCP/UDP checksum; the IPv4 header checksum is recomputed). The price is the
//! segmentation work for bulk flows, which the marking workloads (voice, video, control) do
//! not have. A datagram larger than the MTU is queued whole (fragmentation comes after
//! `OUTPUT`), up to 65,535 bytes: the kernel caps the copy at 65,531 bytes
//! (`NFQNL_MAX_COPY_RANGE`), so the only packets that arrive cut (`CAP_LEN`) are IP packets
//! of 65,532-65,535 bytes, accepted unmarked and counted `Oversize` if they were to be
//! marked. Each receive buffer holds the largest copy plus 1 KiB of headers and attributes.
//!
//! ## Shaping: held packets and deferred verdicts
//! A rate-limited flow or throttled rule can get `Verdict::Delay { mark, until_ns, shaper }`:
//! the packet is rewritten with `mark` now and **held**: it stays in the kernel's queue
//! without a verdict, its rewritten bytes are copied into a preallocated chunk store
//! ([`crate::held::Payloads`]) and an entry (packet id, chunks) goes into the engine's
//! [`HeldQueue`] (order: departure time, then arrival). The verdict — `NFQNL_MSG_VERDICT`
//! with the stored bytes, or a plain accept when the rewrite changed nothing — is sent when
//! the packet leaves:
//! * **on time**: with packets held, the loop waits in `ppoll` (nanosecond timeout) for the
//!   socket *or* the next departure, whichever is first (at most `DRAIN_TICK_MS`), and after
//!   every wake sends everything due, in (departure, arrival) order, so each flow keeps its
//!   order; each sent packet returns its room with `Engine::shaper_released`;
//! * **early**, at once, when its shaper is gone (`Engine::shaper_live` false: flow removed,
//!   handle closed, rule removed), checked after every wake for the shapers that
//!   hold packets ("removing the flow releases the queue");
//! * **at shutdown** (SIGTERM/SIGINT): after the iptables rules are removed the main thread
//!   asks the packet thread to send every held packet (then it holds nothing more) and waits
//!   for it, before the queue is unbound. Under SIGKILL no one answers them: when the socket
//!   closes the kernel drops every packet still queued, held ones included (`--queue-bypass`
//!   only covers packets that find no queue).
//!
//! Time is `CLOCK_MONOTONIC` in ns ([`sys::monotonic_ns`]), for `classify` and for releases.
//!
//! **Batch verdicts and held ids.** `NFQNL_MSG_VERDICT_BATCH` accepts *every* queued packet
//! with an id up to its own, held ones included, and held packets always have lower ids than
//! newer ones. So while anything is held, no batch verdict is sent: within a batch, plain
//! accepts collapse into a batch only up to the first held packet, and after it (and in
//! every batch while earlier packets are held) each packet gets its own verdict
//! (`write_verdicts`); a send failure falls back to single plain accepts as well.
//!
//! **Bounds.** The engine reserves room in `classify` (per shaper, and in all: the daemon's
//! `--shape-held-packets` / `--shape-held-bytes`); without room it answers `Mark` (fail
//! open, `ShaperQueueFull`). The back end's own stores are sized from the same totals (the
//! chunk store with one chunk of slack per packet), so they cannot run out first; should they
//! anyway, the packet leaves at once with its mark and counts as `ShaperQueueFull` too. Held
//! packets occupy the kernel queue (`--queue-maxlen`), so at most half of it may be held.
//! The kernel finds the packet of a single verdict by walking its queue from the oldest
//! entry, where the held ones sit: each verdict costs O(held packets) kernel time, one more
//! reason to keep the bound well below the queue length.
//!
//! ## Fail open
//! Every failure accepts the packet unchanged and, when the engine wanted a mark, counts it
//! with [`Engine::record_fail_open`]: a packet message without a payload
//! (`HeaderUnreadable`), a truncated copy (`Oversize`), a rewrite error (`RewriteFailed`), a
//! verdict the kernel refused or that could not be sent (`VerdictFailed`; the packet is then
//! accepted with a plain verdict). The iptables rules use `--queue-bypass`, so with no daemon
//! bound packets pass unmarked, and `F_FAIL_OPEN` covers a full queue.

use crate::held::{Payloads, ShapeShared, Stored};
use crate::lock::EngineLock;
use crate::pending::{self, PendingTcp};
use crate::sys;
use qosmark_engine::abi::FailOpen;
use qosmark_engine::shaper::{Held, HeldQueue, ShaperId};
use qosmark_engine::{Engine, PacketMeta, Verdict};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

pub(crate) const NLMSG_HDR_LEN: usize = 16;
const NFGEN_LEN: usize = 4;
const NLA_HDR_LEN: usize = 4;
pub(crate) const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const MSG_PACKET: u16 = NFNL_SUBSYS_QUEUE << 8;
const MSG_VERDICT: u16 = (NFNL_SUBSYS_QUEUE << 8) | 1;
const MSG_CONFIG: u16 = (NFNL_SUBSYS_QUEUE << 8) | 2;
const MSG_VERDICT_BATCH: u16 = (NFNL_SUBSYS_QUEUE << 8) | 3;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_PAYLOAD: u16 = 10;
const NFQA_CAP_LEN: u16 = 13;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const CFG_CMD_BIND: u8 = 1;
const COPY_PACKET: u8 = 2;
const CFG_F_FAIL_OPEN: u32 = 1;
const NF_ACCEPT: u32 = 1;
/// Attribute type bits that are flags (nested, network byte order), not the type.
const NLA_TYPE_MASK: u16 = 0x3fff;
const SOL_NETLINK: i32 = 270;
const NETLINK_NO_ENOBUFS: i32 = 5;

/// Longest the packet thread blocks without reporting that it is caught up.
const DRAIN_TICK_MS: u32 = 10;

/// "Every packet queued before time T has been classified", published by the packet thread
/// for the control threads.
///
/// The kernel hands each queued packet to our netlink socket at once, in order. When a
/// `recvmmsg` returns fewer datagrams than it had room for (or times out, every
/// `DRAIN_TICK_MS` when idle), the socket was empty at that moment, so once that batch is
/// processed every packet queued before the return has its verdict: the loop then stores the
/// return time. A control thread about to remove marking (handle close, `RemoveSocketFromFlow`)
/// first waits, at most [`Drain::MAX_WAIT`], until that time passes the moment the request
/// arrived, so packets the application sent before removing are still marked (as on Windows,
/// where classification happens at send time), not left to a race with the queue.
#[derive(Debug)]
pub struct Drain {
    start: Instant,
    through_ns: std::sync::atomic::AtomicU64,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            start: Instant::now(),
            through_ns: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Drain {
    /// Longest a control thread waits.
    pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

    /// A fresh drain clock.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A point in time to wait for (now).
    #[must_use]
    pub fn mark(&self) -> u64 {
        self.now_ns()
    }

    fn caught_up(&self, at_ns: u64) {
        self.through_ns
            .fetch_max(at_ns, std::sync::atomic::Ordering::AcqRel);
    }

    /// Waits until every packet queued before `mark` has been classified, or
    /// [`Drain::MAX_WAIT`]; returns whether it was reached.
    pub fn wait_past(&self, mark: u64) -> bool {
        let deadline = Instant::now() + Self::MAX_WAIT;
        loop {
            if self.through_ns.load(std::sync::atomic::Ordering::Acquire) >= mark {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
    }
}

/// `SCHED_FIFO` priority of the packet thread: low in the real-time range (1..=99), above every
/// normal thread, below the kernel's own real-time threads and anything an administrator
/// ranks higher.
pub const PACKET_THREAD_RT_PRIORITY: i32 = 10;
/// Nice value of the packet thread when the real-time class is refused.
const PACKET_THREAD_NICE: i32 = -10;
/// Datagrams taken per `recvmmsg`.
pub const BATCH: usize = 64;
/// Packet messages read from one datagram (the kernel sends one per datagram).
const PACKETS_PER_DATAGRAM: usize = 8;
/// Copy range asked for: the largest IP packet (the kernel caps it at 65,531, module docs).
const COPY_RANGE: u32 = 65_535;
/// One receive buffer: the largest packet plus room for the netlink headers and attributes.
const RECV_BUF_LEN: usize = COPY_RANGE as usize + 1024;
/// The send buffer is flushed when it holds more than this.
const SEND_FLUSH_AT: usize = 256 * 1024;
/// Send buffer capacity: the flush threshold plus one verdict of the largest packet.
const SEND_BUF_LEN: usize = SEND_FLUSH_AT + RECV_BUF_LEN + 64;

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// Appends bytes to a netlink message under construction (preallocated `Vec`).
struct MsgWriter<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> MsgWriter<'a> {
    fn begin(out: &'a mut Vec<u8>, msg_type: u16, flags: u16, seq: u32, queue: u16) -> Self {
        // Messages start 4-aligned inside a datagram.
        while out.len() % 4 != 0 {
            out.push(0);
        }
        let start = out.len();
        out.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in `finish`
        out.extend_from_slice(&msg_type.to_ne_bytes());
        out.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes()); // port id 0 = the kernel
        out.push(libc::AF_UNSPEC as u8);
        out.push(0); // NFNETLINK_V0
        out.extend_from_slice(&queue.to_be_bytes());
        MsgWriter { out, start }
    }

    fn attr(&mut self, attr_type: u16, value: &[u8]) {
        let len = u16::try_from(NLA_HDR_LEN + value.len()).unwrap_or(u16::MAX);
        self.out.extend_from_slice(&len.to_ne_bytes());
        self.out.extend_from_slice(&attr_type.to_ne_bytes());
        self.out.extend_from_slice(value);
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    /// An attribute whose value is `len` bytes given in pieces (a held packet's chunks).
    fn attr_pieces<'p>(
        &mut self,
        attr_type: u16,
        len: usize,
        pieces: impl Iterator<Item = &'p [u8]>,
    ) {
        let hdr_len = u16::try_from(NLA_HDR_LEN + len).unwrap_or(u16::MAX);
        self.out.extend_from_slice(&hdr_len.to_ne_bytes());
        self.out.extend_from_slice(&attr_type.to_ne_bytes());
        for piece in pieces {
            self.out.extend_from_slice(piece);
        }
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    fn finish(self) {
        let len = u32::try_from(self.out.len() - self.start).unwrap_or(u32::MAX);
        if let Some(slot) = self.out.get_mut(self.start..self.start + 4) {
            slot.copy_from_slice(&len.to_ne_bytes());
        }
    }
}

fn verdict_hdr(verdict: u32, id: u32) -> [u8; 8] {
    let mut v = [0u8; 8];
    v[..4].copy_from_slice(&verdict.to_be_bytes());
    v[4..].copy_from_slice(&id.to_be_bytes());
    v
}

/// Appends a verdict for packet `id`, with a replacement payload when given.
fn push_verdict(out: &mut Vec<u8>, queue: u16, id: u32, payload: Option<&[u8]>) {
    let mut w = MsgWriter::begin(out, MSG_VERDICT, 0, id, queue);
    w.attr(NFQA_VERDICT_HDR, &verdict_hdr(NF_ACCEPT, id));
    if let Some(p) = payload {
        w.attr(NFQA_PAYLOAD, p);
    }
    w.finish();
}

/// Appends a verdict for packet `id` carrying a replacement payload of `len` bytes given in
/// pieces (a held packet's chunks).
fn push_verdict_pieces<'p>(
    out: &mut Vec<u8>,
    queue: u16,
    id: u32,
    len: usize,
    pieces: impl Iterator<Item = &'p [u8]>,
) {
    let mut w = MsgWriter::begin(out, MSG_VERDICT, 0, id, queue);
    w.attr(NFQA_VERDICT_HDR, &verdict_hdr(NF_ACCEPT, id));
    w.attr_pieces(NFQA_PAYLOAD, len, pieces);
    w.finish();
}

/// Appends an accept for every queued packet with an id up to `id`.
fn push_batch_accept(out: &mut Vec<u8>, queue: u16, id: u32) {
    let mut w = MsgWriter::begin(out, MSG_VERDICT_BATCH, 0, id, queue);
    w.attr(NFQA_VERDICT_HDR, &verdict_hdr(NF_ACCEPT, id));
    w.finish();
}

/// One netlink message inside a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NlMsg {
    pub(crate) msg_type: u16,
    pub(crate) seq: u32,
    /// Offset of the payload (after the netlink header) in the datagram.
    pub(crate) body: usize,
    /// End of the message (exclusive) in the datagram.
    pub(crate) end: usize,
}

/// Iterates the netlink messages of a datagram; stops at the first malformed header.
pub(crate) fn messages(datagram: &[u8]) -> impl Iterator<Item = NlMsg> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let hdr = datagram.get(at..at.checked_add(NLMSG_HDR_LEN)?)?;
        let len = u32::from_ne_bytes(hdr.get(0..4)?.try_into().ok()?) as usize;
        let msg_type = u16::from_ne_bytes(hdr.get(4..6)?.try_into().ok()?);
        let seq = u32::from_ne_bytes(hdr.get(8..12)?.try_into().ok()?);
        let end = at.checked_add(len)?;
        if len < NLMSG_HDR_LEN || end > datagram.len() {
            return None;
        }
        let msg = NlMsg {
            msg_type,
            seq,
            body: at + NLMSG_HDR_LEN,
            end,
        };
        at = align4(end);
        Some(msg)
    })
}

/// Iterates (type, value range) of the attributes in `bytes[from..to]`.
fn attributes(
    bytes: &[u8],
    from: usize,
    to: usize,
) -> impl Iterator<Item = (u16, usize, usize)> + '_ {
    let mut at = from;
    std::iter::from_fn(move || {
        let hdr = bytes.get(at..at.checked_add(NLA_HDR_LEN)?)?;
        let len = usize::from(u16::from_ne_bytes(hdr.get(0..2)?.try_into().ok()?));
        let attr_type = u16::from_ne_bytes(hdr.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        let end = at.checked_add(len)?;
        if len < NLA_HDR_LEN || end > to {
            return None;
        }
        let item = (attr_type, at + NLA_HDR_LEN, end);
        at = align4(end);
        Some(item)
    })
}

/// What a packet message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PacketMsg {
    id: u32,
    /// Payload range in the datagram, if present.
    payload: Option<(usize, usize)>,
    /// The copy is shorter than the packet (`CAP_LEN` present and larger than the payload).
    truncated: bool,
}

fn parse_packet(datagram: &[u8], msg: NlMsg) -> Option<PacketMsg> {
    let attrs_from = msg.body.checked_add(NFGEN_LEN)?;
    let mut id = None;
    let mut payload = None;
    let mut cap_len = None;
    for (t, from, to) in attributes(datagram, attrs_from, msg.end) {
        let value = datagram.get(from..to)?;
        match t {
            NFQA_PACKET_HDR => {
                id = Some(u32::from_be_bytes(value.get(0..4)?.try_into().ok()?));
            }
            NFQA_PAYLOAD => payload = Some((from, to)),
            NFQA_CAP_LEN => {
                cap_len = Some(u32::from_be_bytes(value.get(0..4)?.try_into().ok()?) as usize);
            }
            _ => {}
        }
    }
    let plen = payload.map_or(0, |(a, b)| b - a);
    Some(PacketMsg {
        id: id?,
        payload,
        truncated: cap_len.is_some_and(|c| c > plen),
    })
}

/// An `NLMSG_ERROR` message: the error (0 = acknowledgement) and the type and sequence number
/// of the request it answers.
fn parse_error(datagram: &[u8], msg: NlMsg) -> Option<(i32, u16, u32)> {
    let body = datagram.get(msg.body..msg.end)?;
    let error = i32::from_ne_bytes(body.get(0..4)?.try_into().ok()?);
    let orig_type = u16::from_ne_bytes(body.get(8..10)?.try_into().ok()?);
    let orig_seq = u32::from_ne_bytes(body.get(12..16)?.try_into().ok()?);
    Some((error, orig_type, orig_seq))
}

/// Why the queue could not be opened; each is one line for the operator.
#[derive(Debug)]
pub enum OpenError {
    /// Another program is bound to this queue number.
    Busy(u16),
    /// Not permitted (needs `CAP_NET_ADMIN`).
    Permission,
    /// Any other failure, with what was being done.
    Other(&'static str, io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Busy(q) => write!(
                f,
                "netfilter queue {q} is busy: another program is bound to it (choose another with --queue-num; or this process lacks CAP_NET_ADMIN)"
            ),
            OpenError::Permission => f.write_str(
                "not permitted to bind a netfilter queue (needs root / CAP_NET_ADMIN)",
            ),
            OpenError::Other(what, e) => write!(f, "netfilter queue: {what}: {e}"),
        }
    }
}

/// A bound netfilter queue.
pub struct Queue {
    fd: OwnedFd,
    num: u16,
}

impl Queue {
    /// Binds queue `num` in copy-packet mode with fail-open, queue length `maxlen`.
    ///
    /// # Errors
    /// [`OpenError`].
    pub fn open(num: u16, maxlen: u32) -> Result<Queue, OpenError> {
        let fd = sys::netlink_netfilter_socket().map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => OpenError::Permission,
            _ => OpenError::Other("creating the netlink socket", e),
        })?;
        // Large buffers: bursts wait in the socket, not in the queue. The receive buffer must
        // hold a full queue (65,536 small packets at roughly 1 KiB of socket memory each), or
        // delivery fails and the kernel fails open before the queue is full. The memory is
        // used only while packets wait. The *FORCE variants need CAP_NET_ADMIN, which we
        // have; fall back to the capped ones.
        for (force, plain, size) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, 128 << 20),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, 4 << 20),
        ] {
            if sys::set_int_option(fd.as_fd(), libc::SOL_SOCKET, force, size).is_err() {
                let _ = sys::set_int_option(fd.as_fd(), libc::SOL_SOCKET, plain, size);
            }
        }
        // Overflow is handled by the kernel's fail-open; no ENOBUFS errors on our reads.
        let _ = sys::set_int_option(fd.as_fd(), SOL_NETLINK, NETLINK_NO_ENOBUFS, 1);
        sys::set_recv_timeout(fd.as_fd(), 2000)
            .map_err(|e| OpenError::Other("setting a receive timeout", e))?;
        let queue = Queue { fd, num };
        let mut buf = Vec::with_capacity(256);

        let mut w = MsgWriter::begin(&mut buf, MSG_CONFIG, NLM_F_ACK, 1, num);
        w.attr(NFQA_CFG_CMD, &[CFG_CMD_BIND, 0, 0, 0]);
        w.finish();
        // The kernel answers EPERM when another socket owns the queue (we checked root first).
        queue.request(&buf, 1).map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY | libc::EPERM) => OpenError::Busy(num),
            Some(libc::EACCES) => OpenError::Permission,
            _ => OpenError::Other("binding the queue", e),
        })?;

        buf.clear();
        let mut params = [0u8; 5];
        params[..4].copy_from_slice(&COPY_RANGE.to_be_bytes());
        params[4] = COPY_PACKET;
        let mut w = MsgWriter::begin(&mut buf, MSG_CONFIG, NLM_F_ACK, 2, num);
        w.attr(NFQA_CFG_PARAMS, &params);
        w.attr(NFQA_CFG_QUEUE_MAXLEN, &maxlen.to_be_bytes());
        w.finish();
        queue
            .request(&buf, 2)
            .map_err(|e| OpenError::Other("setting copy-packet mode and queue length", e))?;

        buf.clear();
        let mut w = MsgWriter::begin(&mut buf, MSG_CONFIG, NLM_F_ACK, 3, num);
        w.attr(NFQA_CFG_MASK, &CFG_F_FAIL_OPEN.to_be_bytes());
        w.attr(NFQA_CFG_FLAGS, &CFG_F_FAIL_OPEN.to_be_bytes());
        w.finish();
        queue
            .request(&buf, 3)
            .map_err(|e| OpenError::Other("setting fail-open", e))?;
        // The packet loop wakes at least every DRAIN_TICK_MS to report that it is caught up
        // (see [`Drain`]).
        sys::set_recv_timeout(fd_of(&queue), DRAIN_TICK_MS)
            .map_err(|e| OpenError::Other("setting the receive timeout", e))?;
        Ok(queue)
    }

    /// The queue number.
    #[must_use]
    pub fn num(&self) -> u16 {
        self.num
    }

    /// Sends one configuration message and waits for its acknowledgement. A packet that
    /// arrives meanwhile (rules of a previous run) is accepted at once.
    fn request(&self, msg: &[u8], seq: u32) -> io::Result<()> {
        sys::send_datagram(self.fd.as_fd(), msg)?;
        let mut buf = vec![0u8; RECV_BUF_LEN];
        let mut out = Vec::with_capacity(128);
        loop {
            let (len, _) = sys::recv_datagram(self.fd.as_fd(), &mut buf)?;
            let datagram = buf.get(..len).unwrap_or_default();
            for msg in messages(datagram) {
                match msg.msg_type {
                    NLMSG_ERROR => {
                        if let Some((err, _, s)) = parse_error(datagram, msg) {
                            if s == seq {
                                return if err == 0 {
                                    Ok(())
                                } else {
                                    Err(io::Error::from_raw_os_error(err.saturating_neg()))
                                };
                            }
                        }
                    }
                    MSG_PACKET => {
                        if let Some(p) = parse_packet(datagram, msg) {
                            out.clear();
                            push_verdict(&mut out, self.num, p.id, None);
                            sys::send_datagram(self.fd.as_fd(), &out)?;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

fn fd_of(q: &Queue) -> std::os::fd::BorrowedFd<'_> {
    q.fd.as_fd()
}

/// What to answer for one received packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// Accept unchanged.
    Accept,
    /// Accept with the rewritten payload at this range of the slot's buffer.
    Replace { from: usize, to: usize },
    /// Held for shaping: the verdict comes when it is released (its bytes are kept aside).
    Hold,
}

#[derive(Clone, Copy, Debug)]
struct Item {
    slot: usize,
    id: u32,
    answer: Answer,
}

/// Counts kept by the packet loop (logged at exit).
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopStats {
    /// Packets received.
    pub packets: u64,
    /// Packets sent back rewritten.
    pub rewritten: u64,
    /// `send` calls for verdicts.
    pub sends: u64,
    /// Verdicts the kernel refused (then accepted plainly).
    pub refused: u64,
}

/// A held packet: its queue id and, when the rewrite changed it, its new bytes.
#[derive(Clone, Copy, Debug)]
struct HeldPacket {
    id: u32,
    payload: Option<Stored>,
}

/// What the wait before a receive found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Polled {
    /// Packets to read (or no wait was needed: nothing held, recvmmsg blocks itself).
    Readable,
    /// The wait for the next departure passed with nothing to read.
    TimedOut,
    /// A held packet is due now: no wait, no receive.
    Due,
}

/// Why a held packet leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Release {
    /// Its departure time came.
    Due,
    /// Its shaper went away (flow, handle or rule removed).
    ShaperGone,
    /// The daemon is stopping.
    Exit,
}

/// How many packets and bytes may be held at once (the engine's `packets_total` /
/// `bytes_total`, which it reserves in `classify`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldLimits {
    /// Packets.
    pub packets: usize,
    /// Bytes (IP packet lengths).
    pub bytes: usize,
}

/// The packet thread's held packets (module docs, *Shaping*).
struct Holding {
    queue: HeldQueue<HeldPacket>,
    payloads: Payloads,
    /// Held packets per shaper, for the liveness sweep (capacity = the packet bound, so it
    /// never grows).
    shapers: HashMap<ShaperId, u32>,
    /// False once shutdown began: delayed packets then leave at once.
    enabled: bool,
    shared: Arc<ShapeShared>,
    /// (id, rewritten) of the releases in the verdict buffer, for the send-failure fallback.
    in_flight: Vec<(u32, bool)>,
}

/// Most releases in one verdict buffer (each verdict is at least 32 bytes).
const RELEASES_PER_SEND: usize = SEND_FLUSH_AT / 32 + 1;

impl Holding {
    fn new(limits: HoldLimits, shared: Arc<ShapeShared>) -> io::Result<Self> {
        let queue = HeldQueue::with_capacity(limits.packets)
            .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // Each packet wastes less than one chunk: the bytes plus one chunk per packet always
        // fit what the engine reserved.
        let pool = limits
            .bytes
            .saturating_add(limits.packets.saturating_mul(crate::held::CHUNK));
        Ok(Holding {
            queue,
            payloads: Payloads::new(pool),
            shapers: HashMap::with_capacity(limits.packets),
            enabled: true,
            shared,
            in_flight: Vec::with_capacity(RELEASES_PER_SEND),
        })
    }

    /// Keeps a delayed packet (its rewritten bytes when given); false when it cannot (no
    /// room, or shutting down): the caller sends it now.
    fn hold(
        &mut self,
        id: u32,
        until_ns: u64,
        shaper: ShaperId,
        bytes: u64,
        rewritten: Option<&[u8]>,
    ) -> bool {
        if !self.enabled
            || (self.shapers.len() >= self.shapers.capacity()
                && !self.shapers.contains_key(&shaper))
        {
            return false;
        }
        let payload = match rewritten {
            Some(b) => match self.payloads.store(b) {
                Some(stored) => Some(stored),
                None => return false,
            },
            None => None,
        };
        match self
            .queue
            .push(until_ns, shaper, bytes, HeldPacket { id, payload })
        {
            Ok(()) => {
                *self.shapers.entry(shaper).or_insert(0) += 1;
                ShapeShared::add(&self.shared.held, 1);
                ShapeShared::add(&self.shared.held_now, 1);
                true
            }
            Err(p) => {
                if let Some(stored) = p.payload {
                    self.payloads.release(stored);
                }
                false
            }
        }
    }

    /// Appends the verdict that sends `h` and forgets it.
    fn write_release(&mut self, queue: u16, out: &mut Vec<u8>, h: &Held<HeldPacket>, why: Release) {
        let id = h.item.id;
        match h.item.payload {
            Some(stored) => {
                push_verdict_pieces(out, queue, id, stored.len(), self.payloads.pieces(stored));
                self.payloads.release(stored);
            }
            None => push_accept(out, queue, id),
        }
        self.in_flight.push((id, h.item.payload.is_some()));
        if let Some(n) = self.shapers.get_mut(&h.shaper) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.shapers.remove(&h.shaper);
            }
        }
        ShapeShared::sub(&self.shared.held_now, 1);
        let counter = match why {
            Release::Due => &self.shared.released,
            Release::ShaperGone => &self.shared.released_early,
            Release::Exit => &self.shared.released_at_exit,
        };
        ShapeShared::add(counter, 1);
    }
}

/// The packet loop's preallocated state.
pub struct PacketLoop {
    queue: Queue,
    engine: Arc<EngineLock>,
    pending: Arc<PendingTcp>,
    drain: Arc<Drain>,
    buffers: Vec<Vec<u8>>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    multi: sys::MultiRecv,
    items: Vec<Item>,
    /// Packet ids whose replacement verdict the kernel refused: re-accepted plainly.
    refused: Vec<u32>,
    out: Vec<u8>,
    stats: LoopStats,
    holding: Holding,
}

impl PacketLoop {
    /// Allocates every buffer the loop will use, the held-packet store included.
    ///
    /// # Errors
    /// The held-packet queue could not be allocated.
    pub fn new(
        queue: Queue,
        engine: Arc<EngineLock>,
        pending: Arc<PendingTcp>,
        drain: Arc<Drain>,
        hold: HoldLimits,
        shape: Arc<ShapeShared>,
    ) -> io::Result<Self> {
        Ok(PacketLoop {
            queue,
            engine,
            pending,
            drain,
            buffers: (0..BATCH).map(|_| vec![0u8; RECV_BUF_LEN]).collect(),
            lens: vec![0; BATCH],
            truncated: vec![false; BATCH],
            multi: sys::MultiRecv::new(BATCH),
            items: Vec::with_capacity(BATCH * PACKETS_PER_DATAGRAM),
            refused: Vec::with_capacity(BATCH * PACKETS_PER_DATAGRAM),
            out: Vec::with_capacity(SEND_BUF_LEN),
            stats: LoopStats::default(),
            holding: Holding::new(hold, shape)?,
        })
    }

    /// Runs until the socket fails (it does not, short of the process ending).
    ///
    /// # Errors
    /// A receive error other than `EINTR`/`ENOBUFS`.
    pub fn run(&mut self) -> io::Result<()> {
        // Packets wait in the kernel while this thread is not running; under CPU contention it
        // must win against everything else (module docs). A failure costs latency, and marks
        // only under overload.
        if let Err(rt) = sys::set_thread_realtime(PACKET_THREAD_RT_PRIORITY) {
            match sys::set_thread_nice(PACKET_THREAD_NICE) {
                Ok(()) => crate::log(&format!(
                    "packet thread: no real-time priority ({rt}); running at nice {PACKET_THREAD_NICE}"
                )),
                Err(e) => crate::log(&format!(
                    "packet thread keeps its priority: no real-time class ({rt}), no nice ({e})"
                )),
            }
        }
        loop {
            if self.holding.enabled && self.holding.shared.stop_requested() {
                self.release_all();
            }
            let before = self.drain.mark();
            // With packets held, wake for the next departure (ppoll: nanosecond timeout);
            // otherwise block in recvmmsg (SO_RCVTIMEO, DRAIN_TICK_MS) as always.
            let polled = match self.holding.queue.next_due() {
                None => Polled::Readable,
                Some(due) => {
                    let tick = u64::from(DRAIN_TICK_MS) * 1_000_000;
                    let wait = due.saturating_sub(sys::monotonic_ns()).min(tick);
                    if wait == 0 {
                        Polled::Due
                    } else if sys::wait_readable(self.queue.fd.as_fd(), wait)? {
                        Polled::Readable
                    } else {
                        Polled::TimedOut
                    }
                }
            };
            let n = if polled == Polled::Readable {
                match self.multi.recv(
                    self.queue.fd.as_fd(),
                    &mut self.buffers,
                    &mut self.lens,
                    &mut self.truncated,
                ) {
                    Ok(n) => n,
                    // Idle for DRAIN_TICK_MS: nothing is queued.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                    Err(e) => return Err(e),
                }
            } else {
                0
            };
            let returned = self.drain.mark();
            if n > 0 {
                self.process(n);
            }
            if !self.holding.queue.is_empty() {
                self.release(false);
            }
            match polled {
                Polled::Readable if n < BATCH => self.drain.caught_up(returned),
                // Nothing was readable for the whole wait: every packet queued before it
                // began has been answered.
                Polled::TimedOut => self.drain.caught_up(before),
                _ => {}
            }
        }
    }

    /// Sends the held packets that are due, and at once those whose shaper went away.
    /// `all`: every held packet (shutdown).
    fn release(&mut self, all: bool) {
        let engine = Arc::clone(&self.engine);
        // The engine lock (`crate::lock`): a holder runs at our priority while we wait.
        let engine = engine.read();
        let num = self.queue.num;
        let Self {
            holding,
            out,
            queue,
            stats,
            ..
        } = self;
        out.clear();
        holding.in_flight.clear();
        let mut send = |holding: &mut Holding, out: &mut Vec<u8>| {
            if out.is_empty() {
                return;
            }
            stats.sends += 1;
            if sys::send_datagram(queue.fd.as_fd(), out).is_err() {
                // Nothing reached the kernel: plain accepts (unmarked), each rewritten one
                // counted as a verdict failure.
                out.clear();
                for &(id, rewritten) in &holding.in_flight {
                    push_accept(out, num, id);
                    if rewritten {
                        engine.record_fail_open(FailOpen::VerdictFailed);
                    }
                }
                let _ = sys::send_datagram(queue.fd.as_fd(), out);
            }
            out.clear();
            holding.in_flight.clear();
        };
        // Shapers that went away: everything they hold leaves now, in order.
        let dead = holding.shapers.keys().any(|id| !engine.shaper_live(*id));
        if all || dead {
            let why = if all {
                Release::Exit
            } else {
                Release::ShaperGone
            };
            // Take the queue out for the drain (the closure needs the rest of `holding`); an
            // empty queue of capacity 0 allocates nothing and cannot fail.
            if let Ok(empty) = HeldQueue::with_capacity(0) {
                let mut taken = std::mem::replace(&mut holding.queue, empty);
                let _ = taken.drain_where(
                    |id| all || !engine.shaper_live(id),
                    |h| {
                        if out.len() > SEND_FLUSH_AT || holding.in_flight.len() >= RELEASES_PER_SEND
                        {
                            send(holding, out);
                        }
                        holding.write_release(num, out, &h, why);
                        engine.shaper_released(h.shaper, h.bytes);
                    },
                );
                holding.queue = taken;
            }
        }
        let now = sys::monotonic_ns();
        while let Some(h) = holding.queue.pop_due(now) {
            if out.len() > SEND_FLUSH_AT || holding.in_flight.len() >= RELEASES_PER_SEND {
                send(holding, out);
            }
            holding.write_release(num, out, &h, Release::Due);
            engine.shaper_released(h.shaper, h.bytes);
        }
        send(holding, out);
    }

    /// Shutdown: sends every held packet now, holds nothing more, and tells the main thread.
    fn release_all(&mut self) {
        self.holding.enabled = false;
        self.release(true);
        self.holding.shared.set_released_all();
    }

    /// Classifies, rewrites and answers the `n` datagrams in the buffers.
    fn process(&mut self, n: usize) {
        self.items.clear();
        self.refused.clear();
        if self.pending.any() {
            self.pin_connecting(n);
        }
        let now_ns = sys::monotonic_ns();
        // Held packets of earlier batches forbid batch verdicts (`write_verdicts`).
        let held_before = !self.holding.queue.is_empty();
        {
            // The engine lock (`crate::lock`): a holder runs at our priority while we wait.
            let engine = self.engine.read();
            for slot in 0..n {
                let len = self.lens.get(slot).copied().unwrap_or(0);
                let cut = self.truncated.get(slot).copied().unwrap_or(true);
                let Some(buf) = self.buffers.get_mut(slot) else {
                    continue;
                };
                let Some(datagram) = buf.get_mut(..len) else {
                    continue;
                };
                if cut {
                    // Cannot happen with our copy range; the packet id may be unreadable, so the
                    // next batch verdict accepts it.
                    continue;
                }
                handle_datagram(
                    &engine,
                    datagram,
                    slot,
                    now_ns,
                    &mut Collected {
                        items: &mut self.items,
                        refused: &mut self.refused,
                        stats: &mut self.stats,
                        holding: &mut self.holding,
                    },
                );
            }
        }
        self.answer(held_before);
    }

    /// Some TCP sockets were registered before `connect`: for every SYN in the batch, pin the
    /// pending sockets it may come from *before* the batch is classified, so the SYN itself is
    /// marked (see [`crate::pending`]). Runs only while something is pending.
    fn pin_connecting(&self, n: usize) {
        for slot in 0..n {
            if self.truncated.get(slot).copied().unwrap_or(true) {
                continue;
            }
            let len = self.lens.get(slot).copied().unwrap_or(0);
            let Some(datagram) = self.buffers.get(slot).and_then(|b| b.get(..len)) else {
                continue;
            };
            for msg in messages(datagram).filter(|m| m.msg_type == MSG_PACKET) {
                let dest = parse_packet(datagram, msg)
                    .and_then(|p| p.payload)
                    .and_then(|(from, to)| datagram.get(from..to))
                    .and_then(pending::syn_destination);
                if let Some(dest) = dest {
                    self.pending.resolve_syn(&self.engine, dest);
                    if !self.pending.any() {
                        return;
                    }
                }
            }
        }
    }

    /// Writes and sends the verdicts of `items` in order (module docs).
    fn answer(&mut self, held_before: bool) {
        let Self {
            items,
            refused,
            buffers,
            out,
            queue,
            engine,
            stats,
            ..
        } = self;
        let mut send = |out: &mut Vec<u8>, chunk: Chunk| {
            flush(queue, engine, stats, out, chunk, items, refused);
        };
        write_verdicts(
            queue.num,
            items,
            refused,
            held_before,
            buffers,
            out,
            &mut send,
        );
    }

    /// The loop's own counts.
    #[must_use]
    pub fn stats(&self) -> LoopStats {
        self.stats
    }
}

/// What one filled verdict buffer covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chunk {
    /// Rewritten packets in it.
    replaced: usize,
    /// The highest packet id it answers.
    last_id: u32,
    /// The items it answers: `items[from..to]` (those not held).
    items: (usize, usize),
    /// It ends with the re-accepts of the refused verdicts.
    refused: bool,
    /// No packet is held: a batch accept up to `last_id` releases nothing that must wait.
    batch_safe: bool,
}

/// Appends a plain accept for packet `id` (sequence number 0: should the kernel refuse it,
/// the refusal is not retried).
fn push_accept(out: &mut Vec<u8>, queue: u16, id: u32) {
    let mut w = MsgWriter::begin(out, MSG_VERDICT, 0, 0, queue);
    w.attr(NFQA_VERDICT_HDR, &verdict_hdr(NF_ACCEPT, id));
    w.finish();
}

/// Writes the verdicts for `items` (in packet-id order) into `out`, handing each filled buffer
/// to `send`: runs of plain accepts become one batch verdict, each rewritten packet its own
/// verdict with its bytes, after the batch covering the packets before it; held packets get
/// no verdict now; then a plain accept for each id in `refused`. `out` is flushed past
/// [`SEND_FLUSH_AT`] bytes and at the end.
///
/// A batch verdict accepts *every* queued packet up to its id, held ones included, and held
/// packets always precede the ones of this call (ids grow). So batches are written only
/// while nothing is held: not when `held_before` (packets of earlier calls are held), and not
/// past the first held item of this call; after that every packet gets its own verdict.
fn write_verdicts(
    queue: u16,
    items: &[Item],
    refused: &[u32],
    held_before: bool,
    buffers: &[Vec<u8>],
    out: &mut Vec<u8>,
    send: &mut dyn FnMut(&mut Vec<u8>, Chunk),
) {
    out.clear();
    let mut pending_accept: Option<u32> = None;
    let mut batch_ok = !held_before;
    let mut chunk = Chunk {
        replaced: 0,
        last_id: 0,
        items: (0, 0),
        refused: false,
        batch_safe: batch_ok,
    };
    for (i, item) in items.iter().enumerate() {
        match item.answer {
            Answer::Accept if batch_ok => pending_accept = Some(item.id),
            Answer::Accept => {
                push_accept(out, queue, item.id);
                chunk.last_id = item.id;
            }
            Answer::Replace { from, to } => {
                if let Some(id) = pending_accept.take() {
                    push_batch_accept(out, queue, id);
                }
                let payload = buffers
                    .get(item.slot)
                    .and_then(|b| b.get(from..to))
                    .unwrap_or_default();
                push_verdict(out, queue, item.id, Some(payload));
                chunk.replaced += 1;
                chunk.last_id = item.id;
            }
            Answer::Hold => {
                // Everything before it may still go in one batch: its id is below this one.
                if let Some(id) = pending_accept.take() {
                    push_batch_accept(out, queue, id);
                    chunk.last_id = id;
                }
                batch_ok = false;
            }
        }
        if out.len() > SEND_FLUSH_AT {
            chunk.items.1 = i + 1;
            chunk.batch_safe = chunk.batch_safe && batch_ok;
            send(out, chunk);
            out.clear();
            chunk.replaced = 0;
            chunk.items = (i + 1, i + 1);
            chunk.batch_safe = batch_ok;
        }
    }
    if let Some(id) = pending_accept {
        push_batch_accept(out, queue, id);
        chunk.last_id = id;
    }
    for id in refused {
        // Sequence number 0: should this plain accept be refused too, it is not retried.
        push_accept(out, queue, *id);
    }
    chunk.items.1 = items.len();
    chunk.refused = !refused.is_empty();
    chunk.batch_safe = chunk.batch_safe && batch_ok;
    if !out.is_empty() {
        send(out, chunk);
        out.clear();
    }
}

/// Sends one verdict buffer. If the send itself fails, nothing in it reached the kernel: its
/// packets are accepted plainly instead (one batch verdict up to its last id when nothing is
/// held, else one verdict each, held packets left alone), and each rewritten packet in it
/// counts as `VerdictFailed`.
fn flush(
    queue: &Queue,
    engine: &EngineLock,
    stats: &mut LoopStats,
    out: &mut Vec<u8>,
    chunk: Chunk,
    items: &[Item],
    refused: &[u32],
) {
    stats.sends += 1;
    if sys::send_datagram(queue.fd.as_fd(), out).is_ok() {
        stats.rewritten += chunk.replaced as u64;
        return;
    }
    out.clear();
    fallback_accepts(queue.num, chunk, items, refused, out);
    let _ = sys::send_datagram(queue.fd.as_fd(), out);
    let engine = engine.read();
    for _ in 0..chunk.replaced {
        engine.record_fail_open(FailOpen::VerdictFailed);
    }
}

/// The plain accepts that replace a chunk whose send failed (see [`flush`]).
fn fallback_accepts(queue: u16, chunk: Chunk, items: &[Item], refused: &[u32], out: &mut Vec<u8>) {
    if chunk.batch_safe {
        push_batch_accept(out, queue, chunk.last_id);
        return;
    }
    let (from, to) = chunk.items;
    for item in items.get(from..to).unwrap_or_default() {
        if item.answer != Answer::Hold {
            push_accept(out, queue, item.id);
        }
    }
    if chunk.refused {
        for id in refused {
            push_accept(out, queue, *id);
        }
    }
}

/// Where [`handle_datagram`] puts what it found.
struct Collected<'a> {
    items: &'a mut Vec<Item>,
    refused: &'a mut Vec<u32>,
    stats: &'a mut LoopStats,
    holding: &'a mut Holding,
}

/// Classifies every packet message of one datagram, rewriting in place where the engine says
/// so, and records what to answer. Error messages for refused verdicts go to `refused`.
fn handle_datagram(
    engine: &Engine,
    datagram: &mut [u8],
    slot: usize,
    now_ns: u64,
    out: &mut Collected<'_>,
) {
    let Collected {
        items,
        refused,
        stats,
        holding,
    } = out;
    // Collect first (the iterator borrows the datagram), then rewrite.
    let mut found: [Option<NlMsg>; PACKETS_PER_DATAGRAM] = [None; PACKETS_PER_DATAGRAM];
    let mut count = 0usize;
    for msg in messages(datagram) {
        match msg.msg_type {
            MSG_PACKET => {
                if let Some(slot) = found.get_mut(count) {
                    *slot = Some(msg);
                    count += 1;
                }
            }
            NLMSG_ERROR => {
                if let Some((err, orig_type, seq)) = parse_error(datagram, msg) {
                    // ENOENT: the packet is no longer queued (nothing to do). Sequence 0 is a
                    // re-accept of ours, not retried.
                    if err != 0
                        && err != -libc::ENOENT
                        && orig_type == MSG_VERDICT
                        && seq != 0
                        && refused.len() < refused.capacity()
                    {
                        // The kernel refused a replacement verdict: the packet is still queued.
                        refused.push(seq);
                        stats.refused += 1;
                        engine.record_fail_open(FailOpen::VerdictFailed);
                    }
                }
            }
            _ => {}
        }
    }
    for msg in found.iter().take(count).flatten() {
        let Some(pkt) = parse_packet(datagram, *msg) else {
            continue;
        };
        stats.packets += 1;
        let answer = decide(engine, datagram, pkt, now_ns, holding);
        if items.len() < items.capacity() {
            items.push(Item {
                slot,
                id: pkt.id,
                answer,
            });
        }
    }
}

/// The verdict for one packet; rewrites it in place when it is to be replaced, and keeps it
/// in `holding` when the engine delays it.
fn decide(
    engine: &Engine,
    datagram: &mut [u8],
    pkt: PacketMsg,
    now_ns: u64,
    holding: &mut Holding,
) -> Answer {
    let Some((from, to)) = pkt.payload else {
        // Nothing to classify; the engine never saw it, so nothing is counted as wanted.
        engine.record_fail_open(FailOpen::HeaderUnreadable);
        return Answer::Accept;
    };
    let Some(payload) = datagram.get_mut(from..to) else {
        return Answer::Accept;
    };
    let (mark, delay) = match engine.classify(payload, &PacketMeta::default(), now_ns) {
        Verdict::Mark(mark) => (mark, None),
        Verdict::Delay {
            mark,
            until_ns,
            shaper,
        } => (mark, Some((until_ns, shaper))),
        _ => return Answer::Accept,
    };
    // The room classify reserved (the IP length) goes back at once for a packet not held.
    let bytes = qosmark_engine::shaper::held_bytes(payload);
    let unreserve = |engine: &Engine| {
        if let Some((_, shaper)) = delay {
            engine.shaper_released(shaper, bytes);
        }
    };
    if pkt.truncated {
        engine.record_fail_open(FailOpen::Oversize);
        unreserve(engine);
        return Answer::Accept;
    }
    let changed = match Engine::rewrite(payload, mark) {
        Ok(qosmark_engine::wire::Rewrite::Unchanged) => false,
        Ok(_) => true,
        Err(_) => {
            engine.record_fail_open(FailOpen::RewriteFailed);
            unreserve(engine);
            return Answer::Accept;
        }
    };
    if let Some((until_ns, shaper)) = delay {
        let rewritten = if changed { Some(&*payload) } else { None };
        if holding.hold(pkt.id, until_ns, shaper, bytes, rewritten) {
            return Answer::Hold;
        }
        // No room in the back end's store (or shutting down): sent now with its mark.
        if holding.enabled {
            engine.record_fail_open(FailOpen::ShaperQueueFull);
            ShapeShared::add(&holding.shared.fail_open, 1);
        }
        unreserve(engine);
    }
    if changed {
        Answer::Replace { from, to }
    } else {
        Answer::Accept
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    use super::*;

    /// A packet message as the kernel would send it: header, `nfgenmsg`, `PACKET_HDR`, `PAYLOAD`.
    fn packet_msg(id: u32, payload: &[u8], cap_len: Option<u32>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = MsgWriter::begin(&mut out, MSG_PACKET, 0, 0, 7);
        let mut hdr = [0u8; 7];
        hdr[..4].copy_from_slice(&id.to_be_bytes());
        hdr[4..6].copy_from_slice(&0x0800u16.to_be_bytes());
        hdr[6] = 3;
        w.attr(NFQA_PACKET_HDR, &hdr);
        w.attr(NFQA_PAYLOAD | 0x4000, payload);
        if let Some(c) = cap_len {
            w.attr(NFQA_CAP_LEN, &c.to_be_bytes());
        }
        w.finish();
        out
    }

    #[test]
    fn drain_waits_for_the_packet_thread_to_pass_the_mark() {
        let drain = Arc::new(Drain::new());
        let mark = drain.mark();
        // Caught up only to before the mark: not enough (bounded wait, then false).
        drain.caught_up(mark.saturating_sub(1));
        let began = Instant::now();
        assert!(!drain.wait_past(mark));
        assert!(began.elapsed() >= Drain::MAX_WAIT);
        // Another thread passes the mark a little later: the wait ends then.
        let d = Arc::clone(&drain);
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            d.caught_up(d.mark());
        });
        let began = Instant::now();
        assert!(drain.wait_past(mark));
        assert!(began.elapsed() < Drain::MAX_WAIT);
        t.join().unwrap();
        // Progress never goes backwards.
        drain.caught_up(0);
        assert!(drain.wait_past(mark));
    }

    #[test]
    fn verdict_layout_matches_the_uapi() {
        let mut out = Vec::new();
        push_verdict(&mut out, 0x0102, 0xa0b0_c0d0, Some(&[1, 2, 3]));
        // nlmsghdr (16) + nfgenmsg (4) + verdict hdr attr (12) + payload attr (4 + 3 + 1 pad).
        assert_eq!(out.len(), 40);
        assert_eq!(u32::from_ne_bytes(out[0..4].try_into().unwrap()), 40);
        assert_eq!(u16::from_ne_bytes(out[4..6].try_into().unwrap()), 0x0301);
        assert_eq!(
            u16::from_ne_bytes(out[6..8].try_into().unwrap()),
            NLM_F_REQUEST
        );
        assert_eq!(&out[16..20], &[0, 0, 0x01, 0x02]);
        assert_eq!(&out[20..24], &[12, 0, 2, 0]);
        assert_eq!(&out[24..32], &[0, 0, 0, 1, 0xa0, 0xb0, 0xc0, 0xd0]);
        assert_eq!(&out[32..36], &[7, 0, 10, 0]);
        assert_eq!(&out[36..40], &[1, 2, 3, 0]);
    }

    #[test]
    fn batch_and_single_verdicts_concatenate_aligned() {
        let mut out = Vec::new();
        push_batch_accept(&mut out, 1, 5);
        push_verdict(&mut out, 1, 6, Some(&[9]));
        push_batch_accept(&mut out, 1, 9);
        let msgs: Vec<_> = messages(&out).collect();
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0].msg_type, MSG_VERDICT_BATCH);
        assert_eq!(msgs[1].msg_type, MSG_VERDICT);
        assert_eq!(msgs[1].seq, 6);
        assert_eq!(msgs[2].seq, 9);
        assert!(msgs.iter().all(|m| (m.body - NLMSG_HDR_LEN) % 4 == 0));
    }

    /// (type, verdict id, payload length) of every message in `out`.
    fn verdicts(out: &[u8]) -> Vec<(u16, u32, usize)> {
        messages(out)
            .map(|m| {
                let mut id = 0;
                let mut plen = 0;
                for (t, a, b) in attributes(out, m.body + NFGEN_LEN, m.end) {
                    match t {
                        NFQA_VERDICT_HDR => {
                            id = u32::from_be_bytes(out[a + 4..a + 8].try_into().unwrap());
                        }
                        NFQA_PAYLOAD => plen = b - a,
                        _ => {}
                    }
                }
                (m.msg_type, id, plen)
            })
            .collect()
    }

    #[test]
    fn verdicts_keep_packet_order_and_batch_plain_accepts() {
        let buffers = vec![vec![0x45u8; 100]; 2];
        let item = |id, replace: bool| Item {
            slot: (id % 2) as usize,
            id,
            answer: if replace {
                Answer::Replace { from: 10, to: 30 }
            } else {
                Answer::Accept
            },
        };
        let items = [
            item(1, false),
            item(2, false),
            item(3, true),
            item(4, false),
            item(5, true),
            item(6, true),
            item(7, false),
        ];
        let mut out = Vec::new();
        let mut sent = Vec::new();
        let mut seqs = Vec::new();
        write_verdicts(3, &items, &[99], false, &buffers, &mut out, &mut |o, c| {
            sent.push((verdicts(o), c));
            seqs.extend(messages(o).map(|m| m.seq));
        });
        // Sequence = packet id, except the re-accept of a refused verdict: 0 (never retried).
        assert_eq!(seqs, vec![2, 3, 4, 5, 6, 7, 0]);
        assert_eq!(sent.len(), 1, "one send for the whole batch");
        let (msgs, chunk) = &sent[0];
        assert_eq!(
            msgs,
            &vec![
                (MSG_VERDICT_BATCH, 2, 0),
                (MSG_VERDICT, 3, 20),
                (MSG_VERDICT_BATCH, 4, 0),
                (MSG_VERDICT, 5, 20),
                (MSG_VERDICT, 6, 20),
                (MSG_VERDICT_BATCH, 7, 0),
                (MSG_VERDICT, 99, 0),
            ]
        );
        assert_eq!(
            *chunk,
            Chunk {
                replaced: 3,
                last_id: 7,
                items: (0, 7),
                refused: true,
                batch_safe: true,
            }
        );
        assert!(out.is_empty(), "out is cleared after sending");
    }

    #[test]
    fn large_rewrites_flush_in_chunks_that_cover_their_ids() {
        let buffers = vec![vec![0x45u8; 60_000]; 1];
        let items: Vec<Item> = (1..=9)
            .map(|id| Item {
                slot: 0,
                id,
                answer: Answer::Replace {
                    from: 0,
                    to: 60_000,
                },
            })
            .collect();
        let mut out = Vec::with_capacity(SEND_BUF_LEN);
        let mut chunks = Vec::new();
        let mut ids = Vec::new();
        write_verdicts(0, &items, &[], false, &buffers, &mut out, &mut |o, c| {
            assert!(o.len() <= SEND_BUF_LEN);
            ids.extend(verdicts(o).into_iter().map(|(_, id, _)| id));
            chunks.push(c);
        });
        assert_eq!(ids, (1..=9).collect::<Vec<_>>());
        assert_eq!(
            chunks,
            vec![
                Chunk {
                    replaced: 5,
                    last_id: 5,
                    items: (0, 5),
                    refused: false,
                    batch_safe: true,
                },
                Chunk {
                    replaced: 4,
                    last_id: 9,
                    items: (5, 9),
                    refused: false,
                    batch_safe: true,
                }
            ]
        );
        assert!(
            out.capacity() <= SEND_BUF_LEN,
            "no growth past the preallocation"
        );
    }

    fn item(id: u32, answer: Answer) -> Item {
        Item {
            slot: 0,
            id,
            answer,
        }
    }

    /// Every verdict written for `items`: (type, id, payload length), in order, and the chunks.
    fn written(
        items: &[Item],
        refused: &[u32],
        held_before: bool,
    ) -> (Vec<(u16, u32, usize)>, Vec<Chunk>) {
        let buffers = vec![vec![0x45u8; 100]; 1];
        let mut out = Vec::new();
        let mut msgs = Vec::new();
        let mut chunks = Vec::new();
        write_verdicts(
            1,
            items,
            refused,
            held_before,
            &buffers,
            &mut out,
            &mut |o, c| {
                msgs.extend(verdicts(o));
                chunks.push(c);
            },
        );
        (msgs, chunks)
    }

    /// The kernel's rule for `VERDICT_BATCH` id: every queued packet with an id ≤ id
    /// (`nfqnl_recv_verdict_batch`). Given the queued ids and the messages, which ids each
    /// message releases; asserts no message touches a held id.
    fn kernel_releases(queued: &[u32], msgs: &[(u16, u32, usize)], held: &[u32]) -> Vec<u32> {
        let mut queue: Vec<u32> = queued.to_vec();
        let mut released = Vec::new();
        for &(t, id, _) in msgs {
            let taken: Vec<u32> = if t == MSG_VERDICT_BATCH {
                queue.iter().copied().filter(|q| *q <= id).collect()
            } else {
                queue.iter().copied().filter(|q| *q == id).collect()
            };
            for q in &taken {
                assert!(
                    !held.contains(q),
                    "message {t:#x} for {id} releases held packet {q}"
                );
            }
            queue.retain(|q| !taken.contains(q));
            released.extend(taken);
        }
        released
    }

    #[test]
    fn nothing_held_batches_as_before() {
        let items = [
            item(1, Answer::Accept),
            item(2, Answer::Accept),
            item(3, Answer::Replace { from: 0, to: 20 }),
            item(4, Answer::Accept),
        ];
        let (msgs, chunks) = written(&items, &[], false);
        assert_eq!(
            msgs,
            vec![
                (MSG_VERDICT_BATCH, 2, 0),
                (MSG_VERDICT, 3, 20),
                (MSG_VERDICT_BATCH, 4, 0)
            ]
        );
        assert!(chunks[0].batch_safe);
    }

    #[test]
    fn a_held_packet_in_the_batch_stops_batching_at_its_id() {
        let items = [
            item(10, Answer::Accept),
            item(11, Answer::Accept),
            item(12, Answer::Hold),
            item(13, Answer::Accept),
            item(14, Answer::Replace { from: 0, to: 20 }),
            item(15, Answer::Accept),
            item(16, Answer::Hold),
            item(17, Answer::Accept),
        ];
        let (msgs, chunks) = written(&items, &[], false);
        assert_eq!(
            msgs,
            vec![
                (MSG_VERDICT_BATCH, 11, 0),
                (MSG_VERDICT, 13, 0),
                (MSG_VERDICT, 14, 20),
                (MSG_VERDICT, 15, 0),
                (MSG_VERDICT, 17, 0),
            ]
        );
        let queued: Vec<u32> = (10..=17).collect();
        let released = kernel_releases(&queued, &msgs, &[12, 16]);
        assert_eq!(released, vec![10, 11, 13, 14, 15, 17]);
        assert_eq!(chunks.len(), 1);
        assert!(!chunks[0].batch_safe);
    }

    #[test]
    fn packets_held_earlier_forbid_every_batch() {
        // Ids 3 and 5 are held from earlier batches; this batch is 20..=23.
        let items = [
            item(20, Answer::Accept),
            item(21, Answer::Accept),
            item(22, Answer::Replace { from: 0, to: 20 }),
            item(23, Answer::Accept),
        ];
        let (msgs, chunks) = written(&items, &[7], true);
        assert!(msgs.iter().all(|m| m.0 == MSG_VERDICT), "{msgs:?}");
        let queued = [3, 5, 7, 20, 21, 22, 23];
        let released = kernel_releases(&queued, &msgs, &[3, 5]);
        assert_eq!(released, vec![20, 21, 22, 23, 7]);
        // The send-failure fallback of that chunk: plain accepts, never a batch.
        let mut out = Vec::new();
        fallback_accepts(1, chunks[0], &items, &[7], &mut out);
        let fallback = verdicts(&out);
        assert_eq!(
            kernel_releases(&queued, &fallback, &[3, 5]),
            vec![20, 21, 22, 23, 7]
        );
        assert!(
            fallback.iter().all(|m| m.2 == 0),
            "plain accepts carry no payload"
        );
    }

    #[test]
    fn fallback_without_held_packets_is_one_batch() {
        let items = [
            item(1, Answer::Replace { from: 0, to: 20 }),
            item(2, Answer::Accept),
        ];
        let (_, chunks) = written(&items, &[], false);
        let mut out = Vec::new();
        fallback_accepts(1, chunks[0], &items, &[], &mut out);
        assert_eq!(verdicts(&out), vec![(MSG_VERDICT_BATCH, 2, 0)]);
        // With a held item in it, the fallback skips the held id.
        let items = [
            item(1, Answer::Hold),
            item(2, Answer::Accept),
            item(3, Answer::Replace { from: 0, to: 20 }),
        ];
        let (_, chunks) = written(&items, &[], false);
        let mut out = Vec::new();
        fallback_accepts(1, chunks[0], &items, &[], &mut out);
        assert_eq!(
            verdicts(&out),
            vec![(MSG_VERDICT, 2, 0), (MSG_VERDICT, 3, 0)]
        );
    }

    #[test]
    fn piecewise_payload_matches_a_contiguous_one() {
        let data: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        let mut a = Vec::new();
        push_verdict(&mut a, 2, 9, Some(&data));
        let mut b = Vec::new();
        push_verdict_pieces(&mut b, 2, 9, data.len(), data.chunks(256));
        assert_eq!(a, b);
    }

    /// Holding: held packets come back in (departure, arrival) order with exactly the bytes
    /// stored; per-shaper counts, the chunk store and the counters follow; no room → false
    /// and nothing changes.
    #[test]
    fn held_packets_release_in_order_with_their_bytes() {
        let shared = Arc::new(ShapeShared::new());
        let limits = HoldLimits {
            packets: 4,
            bytes: 2 * crate::held::CHUNK,
        };
        let mut h = Holding::new(limits, Arc::clone(&shared)).unwrap();
        let a = ShaperId::from_u64((1 << 32) | 1).unwrap();
        let b = ShaperId::from_u64((1 << 32) | 2).unwrap();
        let p1: Vec<u8> = (0..300u16).map(|i| i as u8).collect();
        let p3 = vec![0x45u8; 40];
        assert!(h.hold(100, 2_000, a, 300, Some(&p1)));
        assert!(h.hold(101, 1_000, b, 60, None));
        assert!(h.hold(102, 2_000, a, 40, Some(&p3)));
        assert_eq!(h.shapers.get(&a), Some(&2));
        // The store: 300 bytes = 2 chunks, 40 = 1; two more packets' slack: 2 + 4 chunks.
        assert_eq!(h.payloads.used_chunks(), 3);
        let big = vec![1u8; 4 * crate::held::CHUNK];
        assert!(!h.hold(103, 3_000, b, 1024, Some(&big)), "store full");
        assert_eq!(h.queue.len(), 3, "a refused packet leaves no trace");
        assert!(h.hold(104, 500, b, 20, None));
        assert!(!h.hold(105, 500, b, 20, None), "queue full (4 packets)");
        assert_eq!(
            shared.held_now.load(std::sync::atomic::Ordering::Relaxed),
            4
        );

        let mut out = Vec::new();
        let mut order = Vec::new();
        while let Some(held) = h.queue.pop_due(2_000) {
            order.push(held.item.id);
            h.write_release(5, &mut out, &held, Release::Due);
        }
        assert_eq!(order, vec![104, 101, 100, 102], "departure, then arrival");
        let msgs = verdicts(&out);
        assert_eq!(
            msgs,
            vec![
                (MSG_VERDICT, 104, 0),
                (MSG_VERDICT, 101, 0),
                (MSG_VERDICT, 100, 300),
                (MSG_VERDICT, 102, 40)
            ]
        );
        // The payload of 100 is byte for byte what was stored.
        let m = messages(&out).nth(2).unwrap();
        let (_, from, to) = attributes(&out, m.body + NFGEN_LEN, m.end)
            .find(|(t, _, _)| *t == NFQA_PAYLOAD)
            .unwrap();
        assert_eq!(&out[from..to], &p1[..]);
        assert!(h.shapers.is_empty());
        assert_eq!(h.payloads.used_chunks(), 0);
        assert_eq!(
            shared.held_now.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        assert_eq!(
            shared.released.load(std::sync::atomic::Ordering::Relaxed),
            4
        );
        assert_eq!(h.in_flight.len(), 4);
        // Shutting down: nothing is held any more.
        h.enabled = false;
        assert!(!h.hold(106, 1, a, 20, None));
    }

    #[test]
    fn packet_message_parses() {
        let msg = packet_msg(42, &[0x45, 0, 0, 20], None);
        let m = messages(&msg).next().unwrap();
        let p = parse_packet(&msg, m).unwrap();
        assert_eq!(p.id, 42);
        let (a, b) = p.payload.unwrap();
        assert_eq!(&msg[a..b], &[0x45, 0, 0, 20]);
        assert!(!p.truncated);
        let msg = packet_msg(1, &[0x45, 0, 0, 20], Some(1500));
        let m = messages(&msg).next().unwrap();
        assert!(parse_packet(&msg, m).unwrap().truncated);
    }

    #[test]
    fn malformed_messages_stop_iteration_without_panic() {
        let msg = packet_msg(42, &[0x45; 30], None);
        for cut in 0..msg.len() {
            let part = &msg[..cut];
            for m in messages(part) {
                let _ = parse_packet(part, m);
                let _ = parse_error(part, m);
            }
        }
        // A length field below the header size ends the walk.
        let mut bad = msg.clone();
        bad[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(messages(&bad).count(), 0);
        // An attribute longer than its message is ignored.
        let mut bad = msg.clone();
        bad[20..22].copy_from_slice(&500u16.to_ne_bytes());
        let m = messages(&bad).next().unwrap();
        assert_eq!(parse_packet(&bad, m), None);
    }

    #[test]
    fn error_messages_name_the_refused_request() {
        let mut out = Vec::new();
        let w = MsgWriter::begin(&mut out, NLMSG_ERROR, 0, 77, 0);
        // Replace nfgenmsg with the error body: errno, then the original header.
        w.out.truncate(w.start + NLMSG_HDR_LEN);
        w.out.extend_from_slice(&(-22i32).to_ne_bytes());
        let mut orig = Vec::new();
        push_verdict(&mut orig, 0, 77, None);
        w.out.extend_from_slice(&orig[..16]);
        w.finish();
        let m = messages(&out).next().unwrap();
        assert_eq!(parse_error(&out, m), Some((-22, MSG_VERDICT, 77)));
    }
}
