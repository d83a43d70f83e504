//! Registered sockets the application closed without `QOSRemoveSocketFromFlow`.
//!
//! The daemon does not keep a registered socket's descriptor (that would keep the socket and
//! its port alive). Without more, a socket closed without being removed would leave its flow
//! entry behind: the entry would go on matching its 5-tuple — a later socket reusing it, maybe
//! another process's, would be marked — and the 5-tuple could not be registered again (183).
//! A `VoIP` gateway reusing RTP ports hits exactly that.
//!
//! So each registration is recorded with the socket's **cookie** (`SO_COOKIE`: a 64-bit id the
//! kernel gives each socket and never reuses), and:
//! * **sweep** ([`Registry::run`], every [`SWEEP_EVERY`]): one `NETLINK_SOCK_DIAG` dump per
//!   (family, protocol) in use lists the cookies of the namespace's sockets. A record whose
//!   cookie was seen alive in an earlier sweep and is missing from [`MISSES_TO_RETIRE`]
//!   consecutive sweeps is retired: the daemon removes the socket from its flow for the handle
//!   (`RemoveSocketFromFlow`; a flow left without sockets goes, as on Windows). A bound UDP
//!   socket and a connected TCP socket count as seen from their registration (the dump always
//!   lists them); another TCP socket (bound but not yet connected: not in every kernel's dump)
//!   must first appear in a sweep. A record registered after the dump began is left for the
//!   next sweep, and nothing is retired for a (family, protocol) whose dump failed. A closed
//!   TCP socket stays in the dump (same cookie) while it lingers in `FIN_WAIT` / `TIME_WAIT`,
//!   but its sending side has ended (next point), so it is retired all the same.
//! * **sending side ended** (GQoS: `shutdown(SD_SEND)` and disconnecting end QoS, qos-api.md
//!   §11.4): the dump also says, per socket, its `INET_DIAG_SHUTDOWN` flags (the kernel puts
//!   this attribute on every full socket it lists) and its connected remote (`inet_diag_sockid`
//!   destination address and port). A socket whose send side is shut down (`SEND_SHUTDOWN`,
//!   bit 1: `shutdown(SHUT_WR)` / `SHUT_RDWR`), a TCP socket in a state after its FIN
//!   (`FIN_WAIT1`, `FIN_WAIT2`, `TIME_WAIT` — whose entry carries no attributes —, `CLOSE`,
//!   `LAST_ACK`, `CLOSING`) counts as missing, and so does a socket registered **connected** whose remote is no longer the peer
//!   it was registered with (UDP `connect(AF_UNSPEC)` or a connect elsewhere; a TCP disconnect
//!   leaves the established table, so the socket is simply not listed). The same
//!   [`MISSES_TO_RETIRE`] rule then retires it: within about two sweeps the flow entry goes,
//!   and held `WatchFlow` requests are woken ([`crate::changes`]).
//! * **descriptor reuse**: a registration of the same socket value (descriptor number) on the
//!   same handle with another cookie means the application closed the old socket and the
//!   number now names a new one. If the old entries stand in the way (the same 5-tuple, or
//!   the flow the new socket joins), they are removed and the new one added under one engine
//!   write lock; otherwise they are retired by the next sweep, so packets the old socket sent
//!   just before closing, still waiting in the queue, keep their mark.
//!
//! Lock order: this registry, then the engine.

use crate::lock::{EngineLock, Holder};
use crate::nfq::{messages, NLMSG_ERROR, NLMSG_HDR_LEN};
use crate::sys;
use qosmark_engine::abi::{Family, FlowId, Protocol, Request, Response};
use qosmark_engine::{EngineError, FiveTuple, HandleId};
use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How often the sockets are checked.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Consecutive sweeps a socket must be missing from before it is retired (a dump is not an
/// atomic snapshot: a socket being rehashed by `connect` can be missed once).
pub const MISSES_TO_RETIRE: u8 = 2;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_DONE: u16 = 3;
/// `inet_diag_msg`: family, state, timer, retrans (4), then `inet_diag_sockid`: ports (4),
/// addresses (32), interface (4), cookie (two host-order u32, low word first).
const DIAG_COOKIE_AT: usize = 4 + 4 + 32 + 4;
/// `inet_diag_sockid.idiag_dport` (network order).
const DIAG_DPORT_AT: usize = 4 + 2;
/// `inet_diag_sockid.idiag_dst` (16 bytes; an IPv4 address in the first 4).
const DIAG_DST_AT: usize = 4 + 4 + 16;
/// Length of `inet_diag_msg`; its attributes (`rtattr`) follow.
const DIAG_MSG_LEN: usize = 72;
/// `INET_DIAG_SHUTDOWN`: a `u8` of `sk_shutdown` flags.
const INET_DIAG_SHUTDOWN: u16 = 8;
/// `SEND_SHUTDOWN` in `sk_shutdown`.
const SEND_SHUTDOWN: u8 = 2;

/// What one sweep saw of a listed socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// `idiag_state` (TCP's state numbers; UDP reports 1 connected, 7 unconnected).
    pub state: u8,
    /// Its send side is shut down (`SEND_SHUTDOWN`).
    pub send_shutdown: bool,
    /// Its connected remote (`None`: not connected, port 0).
    pub remote: Option<std::net::SocketAddr>,
}

/// One registered socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    handle: HandleId,
    socket: u64,
    flow: FlowId,
    cookie: u64,
    family: Family,
    protocol: Protocol,
    added: Instant,
    seen: bool,
    misses: u8,
    /// The peer the socket was connected to at registration (`None`: unconnected).
    peer: Option<std::net::SocketAddr>,
}

/// What the daemon read from a socket's descriptor at registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `SO_COOKIE`.
    pub cookie: u64,
    /// Address family the socket was created with.
    pub family: Family,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The kernel's dump certainly lists the socket now (a bound UDP socket, a connected TCP
    /// socket): it is retired once missing even if it closes before the next sweep.
    /// Otherwise it must be seen in a sweep first.
    pub listed: bool,
    /// The connected peer at registration: a listed remote other than this one means the
    /// socket was disconnected (or connected elsewhere), which ends its flow entries.
    pub peer: Option<std::net::SocketAddr>,
}

/// The registered sockets of every handle.
#[derive(Default)]
pub struct Registry {
    list: Mutex<Vec<Record>>,
}

impl Registry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Record>> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `req` (an `AddSocketToFlow` for the socket `id`) for `handle` and records the
    /// registration. A socket registered earlier under
    /// the same value with another cookie leaves its flows first (module docs).
    ///
    /// # Errors
    /// The engine's answer.
    pub fn add_socket(
        &self,
        engine: &EngineLock,
        handle: HandleId,
        req: &Request,
        id: Identity,
    ) -> Result<Response, EngineError> {
        let cookie = id.cookie;
        let Request::AddSocketToFlow { socket, .. } = req else {
            return engine.write_as(Holder::AddSocket).apply(handle, req);
        };
        let info = *socket;
        let socket = info.socket;
        let (joins, dest) = match req {
            Request::AddSocketToFlow { flow_id, dest, .. } => (*flow_id, *dest),
            _ => (0, None),
        };
        let mut list = self.lock();
        let mut engine = engine.write_as(Holder::AddSocket);
        let is_stale = |r: &Record| r.handle == handle && r.socket == socket && r.cookie != cookie;
        // The number now names another socket, so the old one was closed. Its entries stay
        // until the next sweep (packets it sent just before closing may still wait in the
        // queue and keep their mark), unless they stand in the new registration's way: the
        // same 5-tuple (183) or the same flow (removal is per socket number and flow).
        let mut answer = if list.iter().any(|r| is_stale(r) && r.flow == joins) {
            Err(EngineError::AlreadyExists)
        } else {
            engine.apply(handle, req)
        };
        if matches!(answer, Err(EngineError::AlreadyExists)) && list.iter().any(is_stale) {
            // The flow holding the new 5-tuple, if a flow does: only a stale record of that
            // flow (or of the flow joined) is in the way. Unknown holder (an unbound TCP
            // entry): every stale record of this number.
            let holder = info.peer.or(dest).and_then(|remote| {
                engine
                    .socket_lookup(&FiveTuple::new(info.protocol, info.local, remote))
                    .map(|(flow, _)| flow)
            });
            let in_way =
                |r: &Record| is_stale(r) && holder.is_none_or(|h| h == r.flow || r.flow == joins);
            list.retain(|r| {
                if !in_way(r) {
                    return true;
                }
                let gone = engine.apply(
                    handle,
                    &Request::RemoveSocketFromFlow {
                        socket: Some(socket),
                        flow_id: r.flow,
                    },
                );
                if gone.is_ok() {
                    crate::log(&format!(
                        "handle {}: socket {socket} now names another socket: the closed one left flow {}",
                        handle.0, r.flow
                    ));
                }
                false
            });
            // Same write lock: no packet is classified between the removal and the new entry.
            answer = engine.apply(handle, req);
        }
        {
            for r in list.iter_mut().filter(|r| is_stale(r)) {
                // Retired by the next sweep unless the socket is still alive (a duplicate).
                r.seen = true;
                r.misses = MISSES_TO_RETIRE.saturating_sub(1);
            }
        }
        if let Ok(Response::FlowId(flow)) = answer {
            let known = list.iter().any(|r| {
                r.handle == handle && r.socket == socket && r.flow == flow && r.cookie == cookie
            });
            if !known && list.try_reserve(1).is_ok() {
                list.push(Record {
                    handle,
                    socket,
                    flow,
                    cookie,
                    family: id.family,
                    protocol: id.protocol,
                    added: Instant::now(),
                    seen: id.listed,
                    misses: 0,
                    peer: id.peer,
                });
            }
        }
        answer
    }

    /// The application removed `socket` (or, for `None`, the whole flow) from `flow`.
    pub fn removed(&self, handle: HandleId, socket: Option<u64>, flow: FlowId) {
        self.lock().retain(|r| {
            !(r.handle == handle && r.flow == flow && socket.is_none_or(|s| s == r.socket))
        });
    }

    /// The connection of `handle` closed (the engine drops its flows).
    pub fn forget_handle(&self, handle: HandleId) {
        self.lock().retain(|r| r.handle != handle);
    }

    /// Number of records.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no socket is recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// One sweep (module docs); returns how many sockets were retired.
    pub fn sweep(&self, engine: &EngineLock) -> usize {
        let started = Instant::now();
        let mut kinds: Vec<(Family, Protocol)> = Vec::new();
        for r in self.lock().iter() {
            if !kinds.contains(&(r.family, r.protocol)) {
                kinds.push((r.family, r.protocol));
            }
        }
        let mut alive = HashMap::new();
        let mut dumped = Vec::new();
        for (family, protocol) in kinds {
            match socket_cookies(family, protocol, &mut alive) {
                Ok(()) => dumped.push((family, protocol)),
                Err(e) => crate::log(&format!(
                    "sock_diag dump of {family:?} {protocol:?} sockets failed ({e}): closed sockets of that kind are not retired"
                )),
            }
        }
        let retired = self.retire(engine, started, &dumped, &alive);
        if retired > 0 {
            crate::changes::notify();
        }
        retired
    }

    /// Updates the records from one set of dumps and retires the dead ones.
    fn retire(
        &self,
        engine: &EngineLock,
        started: Instant,
        dumped: &[(Family, Protocol)],
        alive: &HashMap<u64, Seen>,
    ) -> usize {
        let mut list = self.lock();
        let mut guard = None;
        let mut retired = 0;
        list.retain_mut(|r| {
            if r.added >= started || !dumped.contains(&(r.family, r.protocol)) {
                return true;
            }
            if let Some(seen) = alive.get(&r.cookie) {
                r.seen = true;
                if still_sending(r.protocol, r.peer, *seen) {
                    r.misses = 0;
                    return true;
                }
            }
            if !r.seen {
                return true;
            }
            r.misses = r.misses.saturating_add(1);
            if r.misses < MISSES_TO_RETIRE {
                return true;
            }
            let engine = guard.get_or_insert_with(|| engine.write_as(Holder::Reaper));
            let result = engine.apply(
                r.handle,
                &Request::RemoveSocketFromFlow {
                    socket: Some(r.socket),
                    flow_id: r.flow,
                },
            );
            if result.is_ok() {
                retired += 1;
                crate::log(&format!(
                    "handle {}: socket {} was closed without QOSRemoveSocketFromFlow: removed from flow {}",
                    r.handle.0, r.socket, r.flow
                ));
            }
            false
        });
        retired
    }

    /// Sweeps every [`SWEEP_EVERY`] while sockets are recorded. Runs forever.
    pub fn run(&self, engine: &EngineLock) {
        loop {
            std::thread::sleep(SWEEP_EVERY);
            if !self.is_empty() {
                self.sweep(engine);
            }
        }
    }
}

/// Whether a listed socket still sends as registered: its send side is open and, when it was
/// registered connected, it is still connected to that peer (v4-mapped compared as IPv4).
fn still_sending(protocol: Protocol, peer: Option<std::net::SocketAddr>, seen: Seen) -> bool {
    // TCP_FIN_WAIT1 4, TCP_FIN_WAIT2 5, TCP_TIME_WAIT 6, TCP_CLOSE 7, TCP_LAST_ACK 9,
    // TCP_CLOSING 11: this side has sent its FIN (or is gone).
    let fin_sent = protocol == Protocol::Tcp && matches!(seen.state, 4..=7 | 9 | 11);
    if seen.send_shutdown || fin_sent {
        return false;
    }
    let canonical = |a: std::net::SocketAddr| (a.ip().to_canonical(), a.port());
    match peer {
        None => true,
        Some(p) => seen.remote.map(canonical) == Some(canonical(p)),
    }
}

/// What an `inet_diag_msg` body says: its cookie and [`Seen`]. `None` when it is too short.
fn diag_record(family: u8, body: &[u8]) -> Option<(u64, Seen)> {
    let c = body.get(DIAG_COOKIE_AT..DIAG_COOKIE_AT + 8)?;
    let lo = u32::from_ne_bytes(c.get(0..4)?.try_into().ok()?);
    let hi = u32::from_ne_bytes(c.get(4..8)?.try_into().ok()?);
    let cookie = u64::from(lo) | (u64::from(hi) << 32);
    let port = u16::from_be_bytes(
        body.get(DIAG_DPORT_AT..DIAG_DPORT_AT + 2)?
            .try_into()
            .ok()?,
    );
    let dst: [u8; 16] = body.get(DIAG_DST_AT..DIAG_DST_AT + 16)?.try_into().ok()?;
    let ip = if i32::from(family) == libc::AF_INET {
        let v4: [u8; 4] = dst.get(..4)?.try_into().ok()?;
        std::net::IpAddr::from(v4)
    } else {
        std::net::IpAddr::from(dst)
    };
    let remote = (port != 0).then_some(std::net::SocketAddr::new(ip, port));
    // rtattr list: u16 length (header included), u16 type, payload, aligned to 4.
    let mut send_shutdown = false;
    let mut at = DIAG_MSG_LEN;
    while let Some(&[l0, l1, k0, k1]) = body.get(at..at + 4) {
        let len = usize::from(u16::from_ne_bytes([l0, l1]));
        let kind = u16::from_ne_bytes([k0, k1]);
        if len < 4 {
            break;
        }
        if kind == INET_DIAG_SHUTDOWN {
            send_shutdown = body.get(at + 4).is_some_and(|f| f & SEND_SHUTDOWN != 0);
        }
        at = at.saturating_add(len.next_multiple_of(4));
    }
    Some((
        cookie,
        Seen {
            state: *body.get(1)?,
            send_shutdown,
            remote,
        },
    ))
}

/// The `SOCK_DIAG_BY_FAMILY` dump request for every socket of a family and protocol.
fn dump_request(family: Family, protocol: Protocol) -> [u8; NLMSG_HDR_LEN + 56] {
    let mut msg = [0u8; NLMSG_HDR_LEN + 56];
    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    let flags = u16::try_from(libc::NLM_F_REQUEST | libc::NLM_F_DUMP).unwrap_or(0);
    let family = u8::try_from(match family {
        Family::V4 => libc::AF_INET,
        Family::V6 => libc::AF_INET6,
    })
    .unwrap_or(0);
    let protocol = u8::try_from(match protocol {
        Protocol::Tcp => libc::IPPROTO_TCP,
        Protocol::Udp => libc::IPPROTO_UDP,
    })
    .unwrap_or(0);
    let mut at = 0;
    for part in [
        &len.to_ne_bytes()[..],
        &SOCK_DIAG_BY_FAMILY.to_ne_bytes(),
        &flags.to_ne_bytes(),
        &1u32.to_ne_bytes(),
        &0u32.to_ne_bytes(),
        // inet_diag_req_v2: family, protocol, extensions, pad, states (all), socket id zero.
        &[family, protocol, 0, 0],
        &u32::MAX.to_ne_bytes(),
    ] {
        if let Some(dst) = msg.get_mut(at..at + part.len()) {
            dst.copy_from_slice(part);
        }
        at += part.len();
    }
    msg
}

/// What one datagram of a dump answer says.
#[derive(Debug, PartialEq, Eq)]
enum DumpPart {
    /// More datagrams follow.
    More,
    /// The dump is complete.
    Done,
}

/// Adds the cookies of the `inet_diag_msg` records in `datagram` to `alive`, with what each
/// record says ([`Seen`]).
fn parse_dump(datagram: &[u8], alive: &mut HashMap<u64, Seen>) -> io::Result<DumpPart> {
    for msg in messages(datagram) {
        match msg.msg_type {
            SOCK_DIAG_BY_FAMILY => {
                let record = datagram.get(msg.body..msg.end).and_then(|b| {
                    let family = *b.first()?;
                    diag_record(family, b)
                });
                match record {
                    Some((cookie, seen)) => {
                        alive.insert(cookie, seen);
                    }
                    None => return Err(io::Error::other("short sock_diag record")),
                }
            }
            NLMSG_DONE => return Ok(DumpPart::Done),
            NLMSG_ERROR => {
                let errno = datagram
                    .get(msg.body..msg.body + 4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(libc::EIO, |b: [u8; 4]| {
                        i32::from_ne_bytes(b).saturating_neg()
                    });
                return Err(io::Error::from_raw_os_error(errno));
            }
            _ => {}
        }
    }
    Ok(DumpPart::More)
}

/// Adds the cookie of every `family`/`protocol` socket of this network namespace to `alive`.
fn socket_cookies(
    family: Family,
    protocol: Protocol,
    alive: &mut HashMap<u64, Seen>,
) -> io::Result<()> {
    let fd = sys::netlink_socket(libc::NETLINK_SOCK_DIAG)?;
    sys::set_recv_timeout(fd.as_fd(), 2000)?;
    sys::send_datagram(fd.as_fd(), &dump_request(family, protocol))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (len, truncated) = sys::recv_datagram(fd.as_fd(), &mut buf)?;
        if truncated {
            return Err(io::Error::other("truncated sock_diag answer"));
        }
        if parse_dump(buf.get(..len).unwrap_or_default(), alive)? == DumpPart::Done {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    use super::*;
    use qosmark_engine::Engine;

    /// Oracle: the kernel's own `SO_COOKIE` of sockets this test holds, against the dump.
    #[test]
    fn the_dump_lists_live_sockets_and_drops_closed_ones() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp6 = std::net::UdpSocket::bind("[::1]:0").ok();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let cookie = |fd: std::os::fd::BorrowedFd<'_>| sys::socket_cookie(fd).unwrap();
        let (cu, ct) = (cookie(udp.as_fd()), cookie(tcp.as_fd()));
        let mut alive = HashMap::new();
        socket_cookies(Family::V4, Protocol::Udp, &mut alive).unwrap();
        assert!(alive.contains_key(&cu), "UDP socket missing from the dump");
        assert!(!alive.contains_key(&ct), "a TCP socket in the UDP dump");
        socket_cookies(Family::V4, Protocol::Tcp, &mut alive).unwrap();
        assert!(alive.contains_key(&ct), "TCP socket missing from the dump");
        if let Some(u6) = &udp6 {
            let c6 = cookie(u6.as_fd());
            socket_cookies(Family::V6, Protocol::Udp, &mut alive).unwrap();
            assert!(alive.contains_key(&c6), "UDP6 socket missing from the dump");
        }
        drop(udp);
        let mut after = HashMap::new();
        socket_cookies(Family::V4, Protocol::Udp, &mut after).unwrap();
        assert!(
            !after.contains_key(&cu),
            "a closed UDP socket is still listed"
        );
    }

    /// Every cookie listed as alive, sending, unconnected.
    fn seen_all(cookies: &[u64]) -> HashMap<u64, Seen> {
        cookies.iter().map(|c| (*c, Seen::default())).collect()
    }

    /// Oracle: the sockets' own view (`peer_addr`, the shutdown this test did) against what
    /// the dump says of each: connected remote, and the send side shut down.
    #[test]
    fn the_dump_says_who_is_connected_and_who_shut_down_sending() {
        use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_accepted, _) = listener.accept().unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.connect("127.0.0.1:9").unwrap();
        let lone = UdpSocket::bind("127.0.0.1:0").unwrap();
        let cookie = |fd: std::os::fd::BorrowedFd<'_>| sys::socket_cookie(fd).unwrap();
        let (ct, cu, cl) = (
            cookie(tcp.as_fd()),
            cookie(udp.as_fd()),
            cookie(lone.as_fd()),
        );
        let dump = |protocol| {
            let mut m = HashMap::new();
            socket_cookies(Family::V4, protocol, &mut m).unwrap();
            m
        };
        let t = dump(Protocol::Tcp)[&ct];
        assert_eq!(t.remote, Some(tcp.peer_addr().unwrap()));
        assert!(!t.send_shutdown);
        assert_eq!(t.state, 1, "TCP_ESTABLISHED");
        let u = dump(Protocol::Udp);
        assert_eq!(u[&cu].remote, Some(udp.peer_addr().unwrap()));
        assert_eq!(
            u[&cl],
            Seen {
                state: 7,
                ..Seen::default()
            },
            "unconnected (TCP_CLOSE), sending"
        );
        tcp.shutdown(Shutdown::Write).unwrap();
        let t = dump(Protocol::Tcp)[&ct];
        assert!(t.send_shutdown, "SHUT_WR shows as SEND_SHUTDOWN");
        assert!(matches!(t.state, 4 | 5), "FIN_WAIT1/2, not {}", t.state);
        assert!(!still_sending(
            Protocol::Tcp,
            Some(tcp.peer_addr().unwrap()),
            t
        ));
        assert!(still_sending(Protocol::Udp, None, u[&cl]));
        assert!(still_sending(
            Protocol::Udp,
            Some(udp.peer_addr().unwrap()),
            u[&cu]
        ));
        // Registered connected to one peer, now listed with another (or none): ended.
        assert!(!still_sending(
            Protocol::Udp,
            Some("127.0.0.1:10".parse().unwrap()),
            u[&cu]
        ));
        assert!(!still_sending(
            Protocol::Udp,
            Some("127.0.0.1:9".parse().unwrap()),
            u[&cl]
        ));
        // v4-mapped registration of an IPv4 peer is the same peer.
        assert!(still_sending(
            Protocol::Udp,
            Some("[::ffff:127.0.0.1]:9".parse().unwrap()),
            u[&cu]
        ));
        // A TCP socket after its FIN, as a TIME_WAIT entry lists it (no attributes): ended;
        // established: sending. A UDP socket's "state" 7 (unconnected) means nothing.
        let timewait = Seen {
            state: 6,
            send_shutdown: false,
            remote: Some(tcp.peer_addr().unwrap()),
        };
        assert!(!still_sending(Protocol::Tcp, timewait.remote, timewait));
        let established = Seen {
            state: 1,
            ..timewait
        };
        assert!(still_sending(
            Protocol::Tcp,
            established.remote,
            established
        ));
        assert!(still_sending(
            Protocol::Udp,
            None,
            Seen {
                state: 7,
                ..Seen::default()
            }
        ));
    }

    fn udp_add(socket: u64, local: &str) -> Request {
        Request::AddSocketToFlow {
            socket: qosmark_engine::abi::SocketInfo {
                socket,
                family: Family::V4,
                protocol: Protocol::Udp,
                local: local.parse().unwrap(),
                peer: Some("10.0.0.2:5004".parse().unwrap()),
            },
            dest: None,
            traffic_type: qosmark_engine::abi::TrafficType::Voice,
            flags: 0,
            flow_id: 0,
        }
    }

    fn flows(engine: &EngineLock) -> usize {
        engine.read().flow_details().unwrap().len()
    }

    /// The retirement rules, with the dump's answer given: two misses in a row; not when the
    /// dump failed; not before an unlisted socket was seen; not for a registration newer than
    /// the dump; a reused socket number replaces the old socket at once.
    #[test]
    fn retirement_rules() {
        let engine = EngineLock::new(Engine::new(qosmark_engine::Limits::default())).unwrap();
        let handle = engine
            .write()
            .open_handle(qosmark_engine::abi::Caller {
                pid: 1,
                privilege: qosmark_engine::abi::Privilege::User,
            })
            .unwrap();
        let reg = Registry::new();
        let id = |cookie, listed| Identity {
            cookie,
            family: Family::V4,
            protocol: Protocol::Udp,
            listed,
            peer: None,
        };
        reg.add_socket(&engine, handle, &udp_add(5, "10.0.0.1:4000"), id(50, true))
            .unwrap();
        reg.add_socket(&engine, handle, &udp_add(6, "10.0.0.1:4001"), id(60, false))
            .unwrap();
        assert_eq!(flows(&engine), 2);
        let udp = [(Family::V4, Protocol::Udp)];
        let none = HashMap::new();
        let now = Instant::now();
        // The dump failed: nothing retired, however often.
        for _ in 0..3 {
            assert_eq!(reg.retire(&engine, now, &[], &none), 0);
        }
        // Newer than the dump: untouched.
        let before = now.checked_sub(Duration::from_secs(1)).unwrap();
        assert_eq!(reg.retire(&engine, before, &udp, &none), 0);
        assert_eq!(reg.retire(&engine, before, &udp, &none), 0);
        // One miss is not enough; the second retires the listed socket only.
        assert_eq!(reg.retire(&engine, Instant::now(), &udp, &none), 0);
        assert_eq!(reg.retire(&engine, Instant::now(), &udp, &none), 1);
        assert_eq!(flows(&engine), 1);
        // The unlisted one, once seen alive, then missing twice.
        let alive = seen_all(&[60]);
        assert_eq!(reg.retire(&engine, Instant::now(), &udp, &alive), 0);
        assert_eq!(reg.retire(&engine, Instant::now(), &udp, &none), 0);
        assert_eq!(reg.retire(&engine, Instant::now(), &udp, &none), 1);
        assert_eq!(flows(&engine), 0);
        assert!(reg.is_empty());
        // Socket number 7 registered, then registered again as another socket (cookie): the
        // same 5-tuple is accepted (the old entry left first), not 183.
        reg.add_socket(&engine, handle, &udp_add(7, "10.0.0.1:4002"), id(70, true))
            .unwrap();
        reg.add_socket(&engine, handle, &udp_add(7, "10.0.0.1:4002"), id(71, true))
            .unwrap();
        assert_eq!(flows(&engine), 1);
        assert_eq!(reg.len(), 1);
        // The same socket again (same cookie) for a new flow: the engine refuses it (183), and
        // the registry neither retires nor duplicates it.
        reg.add_socket(&engine, handle, &udp_add(7, "10.0.0.1:4002"), id(71, true))
            .unwrap_err();
        assert_eq!(reg.len(), 1);
        // Socket number 8 closed and reused for another 5-tuple: both entries stay (packets
        // of the old one may still be queued) until the next sweep, which retires the old one
        // without waiting for a second miss.
        reg.add_socket(&engine, handle, &udp_add(8, "10.0.0.1:4003"), id(80, true))
            .unwrap();
        reg.add_socket(&engine, handle, &udp_add(8, "10.0.0.1:4004"), id(81, true))
            .unwrap();
        assert_eq!(flows(&engine), 3);
        let alive = seen_all(&[71, 81]);
        assert_eq!(reg.retire(&engine, Instant::now(), &udp, &alive), 1);
        assert_eq!(flows(&engine), 2);
        let tuple = |local: &str| {
            qosmark_engine::FiveTuple::new(
                Protocol::Udp,
                local.parse().unwrap(),
                "10.0.0.2:5004".parse().unwrap(),
            )
        };
        let e = engine.read();
        assert!(e.socket_lookup(&tuple("10.0.0.1:4003")).is_none());
        assert!(e.socket_lookup(&tuple("10.0.0.1:4004")).is_some());
        e.check_control_invariants().unwrap();
    }

    /// A listed socket whose send side is shut down, or whose remote is no longer the peer it
    /// was registered with, is retired like a missing one (two sweeps).
    #[test]
    fn shut_down_or_disconnected_sockets_are_retired() {
        let engine = EngineLock::new(Engine::new(qosmark_engine::Limits::default())).unwrap();
        let handle = engine
            .write()
            .open_handle(qosmark_engine::abi::Caller {
                pid: 1,
                privilege: qosmark_engine::abi::Privilege::User,
            })
            .unwrap();
        let reg = Registry::new();
        let peer: std::net::SocketAddr = "10.0.0.2:5004".parse().unwrap();
        let id = |cookie| Identity {
            cookie,
            family: Family::V4,
            protocol: Protocol::Udp,
            listed: true,
            peer: Some(peer),
        };
        reg.add_socket(&engine, handle, &udp_add(1, "10.0.0.1:4000"), id(10))
            .unwrap();
        reg.add_socket(&engine, handle, &udp_add(2, "10.0.0.1:4001"), id(20))
            .unwrap();
        reg.add_socket(&engine, handle, &udp_add(3, "10.0.0.1:4002"), id(30))
            .unwrap();
        let udp = [(Family::V4, Protocol::Udp)];
        let alive: HashMap<u64, Seen> = [
            (
                10,
                Seen {
                    state: 1,
                    send_shutdown: true,
                    remote: Some(peer),
                },
            ),
            (
                20,
                Seen {
                    state: 7,
                    send_shutdown: false,
                    remote: None,
                },
            ),
            (
                30,
                Seen {
                    state: 1,
                    send_shutdown: false,
                    remote: Some(peer),
                },
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(reg.retire(&engine, Instant::now(), &udp, &alive), 0);
        assert_eq!(reg.retire(&engine, Instant::now(), &udp, &alive), 2);
        assert_eq!(
            flows(&engine),
            1,
            "the still-connected socket keeps its flow"
        );
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn the_request_is_a_dump_of_every_state() {
        let m = dump_request(Family::V6, Protocol::Udp);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes(m[6..8].try_into().unwrap()), 0x301);
        assert_eq!(&m[16..20], &[10, 17, 0, 0]);
        assert_eq!(&m[20..24], &[0xff; 4]);
        assert!(m[24..].iter().all(|b| *b == 0));
    }

    #[test]
    fn malformed_dumps_are_errors_not_panics() {
        let mut alive = HashMap::new();
        // A record too short to hold the cookie.
        let mut d = Vec::new();
        d.extend_from_slice(&(16u32 + 8).to_ne_bytes());
        d.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        d.extend_from_slice(&[0; 10]);
        d.extend_from_slice(&[0; 8]);
        assert!(parse_dump(&d, &mut alive).is_err());
        for cut in 0..d.len() {
            let _ = parse_dump(&d[..cut], &mut alive);
        }
        // An error message carries its errno.
        let mut e = Vec::new();
        e.extend_from_slice(&20u32.to_ne_bytes());
        e.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        e.extend_from_slice(&[0; 10]);
        e.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(
            parse_dump(&e, &mut alive).unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
        assert!(alive.is_empty());
    }
}
