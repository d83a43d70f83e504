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
//! ## Fail open
//! Every failure accepts the packet unchanged and, when the engine wanted a mark, counts it
//! with [`Engine::record_fail_open`]: a packet message without a payload
//! (`HeaderUnreadable`), a truncated copy (`Oversize`), a rewrite error (`RewriteFailed`), a
//! verdict the kernel refused or that could not be sent (`VerdictFailed`; the packet is then
//! accepted with a plain verdict). The iptables rules use `--queue-bypass`, so with no daemon
//! bound packets pass unmarked, and `F_FAIL_OPEN` covers a full queue.

use crate::lock::EngineLock;
use crate::pending::{self, PendingTcp};
use crate::sys;
use qosmark_engine::abi::FailOpen;
use qosmark_engine::{Engine, PacketMeta, Verdict};
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

/// The packet loop's preallocated state.
pub struct PacketLoop {
    queue: Queue,
    engine: Arc<EngineLock>,
    pending: Arc<PendingTcp>,
    drain: Arc<Drain>,
    start: Instant,
    buffers: Vec<Vec<u8>>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    multi: sys::MultiRecv,
    items: Vec<Item>,
    /// Packet ids whose replacement verdict the kernel refused: re-accepted plainly.
    refused: Vec<u32>,
    out: Vec<u8>,
    stats: LoopStats,
}

impl PacketLoop {
    /// Allocates every buffer the loop will use.
    #[must_use]
    pub fn new(
        queue: Queue,
        engine: Arc<EngineLock>,
        pending: Arc<PendingTcp>,
        drain: Arc<Drain>,
    ) -> Self {
        PacketLoop {
            queue,
            engine,
            pending,
            drain,
            start: Instant::now(),
            buffers: (0..BATCH).map(|_| vec![0u8; RECV_BUF_LEN]).collect(),
            lens: vec![0; BATCH],
            truncated: vec![false; BATCH],
            multi: sys::MultiRecv::new(BATCH),
            items: Vec::with_capacity(BATCH * PACKETS_PER_DATAGRAM),
            refused: Vec::with_capacity(BATCH * PACKETS_PER_DATAGRAM),
            out: Vec::with_capacity(SEND_BUF_LEN),
            stats: LoopStats::default(),
        }
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
            let n = match self.multi.recv(
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
            };
            let returned = self.drain.mark();
            if n > 0 {
                self.process(n);
            }
            if n < BATCH {
                self.drain.caught_up(returned);
            }
        }
    }

    /// Classifies, rewrites and answers the `n` datagrams in the buffers.
    fn process(&mut self, n: usize) {
        self.items.clear();
        self.refused.clear();
        if self.pending.any() {
            self.pin_connecting(n);
        }
        let now_ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
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
                    &mut self.items,
                    &mut self.refused,
                    &mut self.stats,
                );
            }
        }
        self.answer();
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
    fn answer(&mut self) {
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
        let mut send = |out: &mut Vec<u8>, chunk: Chunk| flush(queue, engine, stats, out, chunk);
        write_verdicts(queue.num, items, refused, buffers, out, &mut send);
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
}

/// Writes the verdicts for `items` (in packet-id order) into `out`, handing each filled buffer
/// to `send`: runs of plain accepts become one batch verdict, each rewritten packet its own
/// verdict with its bytes, after the batch covering the packets before it; then a plain
/// accept for each id in `refused`. `out` is flushed past [`SEND_FLUSH_AT`] bytes and at the
/// end.
fn write_verdicts(
    queue: u16,
    items: &[Item],
    refused: &[u32],
    buffers: &[Vec<u8>],
    out: &mut Vec<u8>,
    send: &mut dyn FnMut(&mut Vec<u8>, Chunk),
) {
    out.clear();
    let mut pending_accept: Option<u32> = None;
    let mut chunk = Chunk {
        replaced: 0,
        last_id: 0,
    };
    for item in items {
        match item.answer {
            Answer::Accept => pending_accept = Some(item.id),
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
                if out.len() > SEND_FLUSH_AT {
                    send(out, chunk);
                    out.clear();
                    chunk.replaced = 0;
                }
            }
        }
    }
    if let Some(id) = pending_accept {
        push_batch_accept(out, queue, id);
        chunk.last_id = id;
    }
    for id in refused {
        // Sequence number 0: should this plain accept be refused too, it is not retried.
        let mut w = MsgWriter::begin(out, MSG_VERDICT, 0, 0, queue);
        w.attr(NFQA_VERDICT_HDR, &verdict_hdr(NF_ACCEPT, *id));
        w.finish();
    }
    if !out.is_empty() {
        send(out, chunk);
        out.clear();
    }
}

/// Sends one verdict buffer. If the send itself fails, nothing in it reached the kernel: its
/// packets are accepted with one batch verdict up to its last id instead, and each rewritten
/// packet in it counts as `VerdictFailed`.
fn flush(
    queue: &Queue,
    engine: &EngineLock,
    stats: &mut LoopStats,
    out: &mut Vec<u8>,
    chunk: Chunk,
) {
    stats.sends += 1;
    if sys::send_datagram(queue.fd.as_fd(), out).is_ok() {
        stats.rewritten += chunk.replaced as u64;
        return;
    }
    out.clear();
    push_batch_accept(out, queue.num, chunk.last_id);
    let _ = sys::send_datagram(queue.fd.as_fd(), out);
    let engine = engine.read();
    for _ in 0..chunk.replaced {
        engine.record_fail_open(FailOpen::VerdictFailed);
    }
}

/// Classifies every packet message of one datagram, rewriting in place where the engine says
/// so, and records what to answer. Error messages for refused verdicts go to `refused`.
fn handle_datagram(
    engine: &Engine,
    datagram: &mut [u8],
    slot: usize,
    now_ns: u64,
    items: &mut Vec<Item>,
    refused: &mut Vec<u32>,
    stats: &mut LoopStats,
) {
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
        let answer = decide(engine, datagram, pkt, now_ns);
        if items.len() < items.capacity() {
            items.push(Item {
                slot,
                id: pkt.id,
                answer,
            });
        }
    }
}

/// The verdict for one packet; rewrites it in place when it is to be replaced.
fn decide(engine: &Engine, datagram: &mut [u8], pkt: PacketMsg, now_ns: u64) -> Answer {
    let Some((from, to)) = pkt.payload else {
        // Nothing to classify; the engine never saw it, so nothing is counted as wanted.
        engine.record_fail_open(FailOpen::HeaderUnreadable);
        return Answer::Accept;
    };
    let Some(payload) = datagram.get_mut(from..to) else {
        return Answer::Accept;
    };
    let verdict = engine.classify(payload, &PacketMeta::default(), now_ns);
    let Verdict::Mark(mark) = verdict else {
        return Answer::Accept;
    };
    if pkt.truncated {
        engine.record_fail_open(FailOpen::Oversize);
        return Answer::Accept;
    }
    match Engine::rewrite(payload, mark) {
        Ok(qosmark_engine::wire::Rewrite::Unchanged) => Answer::Accept,
        Ok(_) => Answer::Replace { from, to },
        Err(_) => {
            engine.record_fail_open(FailOpen::RewriteFailed);
            Answer::Accept
        }
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
        write_verdicts(3, &items, &[99], &buffers, &mut out, &mut |o, c| {
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
                last_id: 7
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
        write_verdicts(0, &items, &[], &buffers, &mut out, &mut |o, c| {
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
                    last_id: 5
                },
                Chunk {
                    replaced: 4,
                    last_id: 9
                }
            ]
        );
        assert!(
            out.capacity() <= SEND_BUF_LEN,
            "no growth past the preallocation"
        );
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
