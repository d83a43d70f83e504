//! The control path: the unix-socket server of `docs/linux-transport.md`.
//!
//! ## Threads
//! One thread per connection, bounded by `--max-clients` (default 1024): a connection beyond
//! the bound gets one `Error` record (1450, `ERROR_NO_SYSTEM_RESOURCES`) and is closed.
//! Control traffic is a handful of requests per flow, so blocking reads are simple and cheap;
//! each thread has a 128 KiB stack. A connection thread takes the engine's **exclusive** lock
//! only around `Engine::apply` (and open/close), never while reading or writing the socket.
//!
//! ## One connection = one handle
//! At accept: `SO_PEERCRED` gives pid and uid; uid 0, or `CAP_NET_ADMIN` in the peer's
//! `CapEff` (`/proc/<pid>/status`, read once; only for a peer in the daemon's user namespace
//! whose status shows the same effective uid, see [`has_net_admin`]), is `Privilege::Admin`,
//! anyone else `Privilege::User`. The engine handle opens then and closes when the connection ends
//! (every flow of the connection goes away).
//!
//! ## Framing
//! The reader takes exactly the 16-byte header, then exactly the rest of the record
//! (`abi::codec::record_len`), so descriptors passed with `SCM_RIGHTS` are always attributed to
//! the record they came with. Unframeable header → one `Error` (87, or 1306 for a version
//! mismatch) and close; a framed record that does not decode → `Error` 87, connection stays.
//!
//! ## Held requests (`WatchFlow`, GQoS `FD_QOS`)
//! A `WatchFlow` whose known state is the flow's state now is held by its connection thread
//! until the state changes ([`crate::changes`]; details at `hold_watch`). That thread answers
//! nothing else meanwhile, so clients wait on a second connection of the same process
//! (`docs/linux-transport.md`).
//!
//! ## Socket ownership
//! `AddSocketToFlow` must carry exactly one descriptor: family, protocol, local address and
//! peer are read from it and replace the record's claims (only the `socket` value is kept).
//! Anything else → 87. A TCP socket registered with local port 0 (before `connect`) is kept
//! in the [`PendingTcp`] list until it has a port (→ `Engine::socket_bound`, pinned by the
//! packet thread when its SYN is queued, or by the watcher) or for 60 s; beyond that list's
//! bounds the registration fails with 1450. Every other descriptor is closed when the request
//! is answered.

use crate::lock::{EngineLock, Holder, WriteGuard};
use crate::pending::{Pending, PendingTcp, PENDING_TCP_LIMIT};
use crate::reaper::{Identity, Registry};
use crate::state::{self, State};
use crate::sys;
use qosmark_engine::abi::codec::{self, ErrorReply};
use qosmark_engine::abi::status::Win32Error;
use qosmark_engine::abi::{
    Caller, Family, FlowState, Privilege, Protocol, Request, Response, SocketInfo,
};
use qosmark_engine::{Engine, EngineError, HandleId};
use std::io::{self, Write as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// `CAP_NET_ADMIN`'s bit in the capability sets.
const CAP_NET_ADMIN: u32 = 12;
/// How long the rest of a record may take once its first byte arrived (a client that sends
/// half a record and stalls loses its connection, not only its thread's time).
const RECORD_TIMEOUT_MS: u32 = 10_000;
/// Most bytes a record buffer grows by before they arrive.
const READ_CHUNK: usize = 64 * 1024;
/// Stack of a connection thread.
const CONNECTION_STACK: usize = 128 * 1024;

/// Everything the control threads share.
pub struct Shared {
    /// The engine: shared lock on the packet path, exclusive for requests.
    pub engine: Arc<EngineLock>,
    /// Where administrators' changes are saved (`None`: not persisted).
    pub state_path: Option<PathBuf>,
    /// Connection bound.
    pub max_clients: usize,
    clients: AtomicUsize,
    /// Serialises "apply a persistent change, then write the file", so the file always ends
    /// with the latest state.
    save_lock: Mutex<()>,
    /// TCP sockets registered before `connect` (shared with the packet thread).
    pub pending: Arc<PendingTcp>,
    /// Registered sockets, for retiring the ones closed without removal.
    pub registry: Arc<Registry>,
    /// The packet thread's progress: removals wait until packets sent before them are
    /// classified (`None`: no packet path, e.g. in unit tests).
    pub drain: Option<Arc<crate::nfq::Drain>>,
}

impl Shared {
    /// Shared state for the server.
    #[must_use]
    pub fn new(
        engine: Arc<EngineLock>,
        state_path: Option<PathBuf>,
        max_clients: usize,
        pending: Arc<PendingTcp>,
        registry: Arc<Registry>,
    ) -> Self {
        Shared {
            engine,
            state_path,
            max_clients,
            clients: AtomicUsize::new(0),
            save_lock: Mutex::new(()),
            pending,
            registry,
            drain: None,
        }
    }

    /// Waits (bounded) until every packet queued before now has been classified.
    fn wait_for_queue(&self) {
        if let Some(drain) = &self.drain {
            drain.wait_past(drain.mark());
        }
    }

    fn engine_mut(&self, holder: Holder) -> WriteGuard<'_> {
        self.engine.write_as(holder)
    }
}

/// Whether the process `pid`, whose `SO_PEERCRED` effective uid is `uid`, has `CAP_NET_ADMIN`
/// in its effective set **in the daemon's user namespace**.
///
/// `CapEff` is relative to the process's own user namespace, and any user may create one in
/// which it holds every capability (`unshare -Ur`): such a process is a `User` here. The
/// effective uid in `/proc/<pid>/status` must also be the one `SO_PEERCRED` gave, so a pid
/// reused by another user's process after the peer exited is not trusted either.
#[must_use]
pub fn has_net_admin(pid: u32, uid: u32) -> bool {
    let same_userns = match (
        std::fs::read_link(format!("/proc/{pid}/ns/user")),
        std::fs::read_link("/proc/self/ns/user"),
    ) {
        (Ok(theirs), Ok(ours)) => theirs == ours,
        _ => false,
    };
    if !same_userns {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status_euid(&status) == Some(uid) && cap_eff_has(&status, CAP_NET_ADMIN)
}

/// The effective uid (second field of the `Uid:` line) of a `/proc/<pid>/status` text.
#[must_use]
pub fn status_euid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
}

/// Whether the `CapEff:` line of a `/proc/<pid>/status` text has capability `bit`.
#[must_use]
pub fn cap_eff_has(status: &str, bit: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .and_then(|caps| caps.checked_shr(bit))
        .is_some_and(|v| v & 1 == 1)
}

/// Accepts connections forever, one bounded thread each.
pub fn serve(listener: &UnixListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                crate::log(&format!("accept failed: {e}"));
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if shared.clients.fetch_add(1, Ordering::AcqRel) >= shared.max_clients {
            shared.clients.fetch_sub(1, Ordering::AcqRel);
            let _ = send_error(&mut stream, Win32Error::NO_SYSTEM_RESOURCES);
            continue;
        }
        let conn_shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("qosmarkd-client".to_owned())
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                connection(stream, &conn_shared);
                conn_shared.clients.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            shared.clients.fetch_sub(1, Ordering::AcqRel);
            crate::log(&format!("cannot start a connection thread: {e}"));
        }
    }
}

fn send_error(stream: &mut UnixStream, win32: Win32Error) -> io::Result<()> {
    let mut out = Vec::with_capacity(codec::ERROR_RECORD_LEN as usize);
    codec::encode_error(
        ErrorReply {
            win32,
            required_size: 0,
        },
        &mut out,
    )
    .map_err(|_| io::Error::other("error record"))?;
    stream.write_all(&out)
}

/// One record as read from the stream.
enum ReadOutcome {
    /// A whole record and the descriptors that came with it.
    Record { truncated_fds: bool },
    /// The peer closed (at a record boundary or not).
    Closed,
    /// The header cannot be framed: answer this and close.
    Unframeable(Win32Error),
}

/// Reads exactly `want` more bytes into `buf` (appending), collecting descriptors. Once part
/// of a record has arrived (`*started`), the rest must come within [`RECORD_TIMEOUT`]: the
/// socket gets a receive timeout, which [`read_record`] clears when the record is complete.
fn read_exact_fds(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    want: usize,
    fds: &mut Vec<OwnedFd>,
    truncated: &mut bool,
    started: &mut bool,
) -> io::Result<bool> {
    let target = buf.len() + want;
    let mut filled = buf.len();
    while filled < target {
        // Grow with the data, not with the length the header claims: a client that announces
        // a 640 KiB record and sends 16 bytes costs 64 KiB, not 640.
        if filled == buf.len() {
            buf.resize(target.min(filled + READ_CHUNK), 0);
        }
        let Some(dst) = buf.get_mut(filled..) else {
            break;
        };
        let got = sys::recv_with_fds(fd, dst, fds)?;
        *truncated |= got.truncated_fds;
        if got.len == 0 {
            buf.truncate(filled);
            return Ok(false);
        }
        filled += got.len;
        if !*started {
            *started = true;
            sys::set_recv_timeout(fd, RECORD_TIMEOUT_MS)?;
        }
    }
    Ok(true)
}

fn read_record(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
) -> io::Result<ReadOutcome> {
    buf.clear();
    let mut truncated = false;
    let mut started = false;
    let outcome = read_record_parts(fd, buf, fds, &mut truncated, &mut started);
    if started {
        // Between records a handle may stay idle as long as it likes.
        sys::set_recv_timeout(fd, 0)?;
    }
    outcome
}

fn read_record_parts(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
    truncated: &mut bool,
    started: &mut bool,
) -> io::Result<ReadOutcome> {
    if !read_exact_fds(fd, buf, codec::HEADER_LEN as usize, fds, truncated, started)? {
        return Ok(ReadOutcome::Closed);
    }
    let len = match codec::record_len(buf) {
        Ok(l) => l as usize,
        Err(codec::AbiError::BadVersion) => {
            return Ok(ReadOutcome::Unframeable(Win32Error::REVISION_MISMATCH))
        }
        Err(e) => return Ok(ReadOutcome::Unframeable(e.win32())),
    };
    let rest = len.saturating_sub(codec::HEADER_LEN as usize);
    if rest > 0 && !read_exact_fds(fd, buf, rest, fds, truncated, started)? {
        return Ok(ReadOutcome::Closed);
    }
    Ok(ReadOutcome::Record {
        truncated_fds: *truncated,
    })
}

/// Serves one connection until it closes; its engine handle closes with it.
fn connection(mut stream: UnixStream, shared: &Shared) {
    let (pid, uid, _gid) = match sys::peer_credentials(stream.as_fd()) {
        Ok(c) => c,
        Err(e) => {
            crate::log(&format!("SO_PEERCRED failed, closing the connection: {e}"));
            return;
        }
    };
    let privilege = if uid == 0 || has_net_admin(pid, uid) {
        Privilege::Admin
    } else {
        Privilege::User
    };
    let caller = Caller { pid, privilege };
    let opened = shared.engine_mut(Holder::Open).open_handle(caller);
    let handle = match opened {
        Ok(h) => h,
        Err(e) => {
            let _ = send_error(&mut stream, e.win32());
            return;
        }
    };
    crate::log(&format!(
        "handle {} opened: pid {pid} uid {uid} ({privilege:?})",
        handle.0
    ));
    // A client that stops reading its answers (socket buffer full) loses its connection
    // after 10 s instead of holding its thread and slot forever.
    if let Err(e) =
        stream.set_write_timeout(Some(Duration::from_millis(u64::from(RECORD_TIMEOUT_MS))))
    {
        crate::log(&format!("handle {}: no send timeout: {e}", handle.0));
    }
    let mut buf = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(1024);
    // Whether this handle ever had a socket flow (only then does its close wait for the queue).
    let mut registered = false;
    let mut fds = Vec::new();
    loop {
        fds.clear();
        let outcome = match read_record(stream.as_fd(), &mut buf, &mut fds) {
            Ok(o) => o,
            Err(e) => {
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    crate::log(&format!(
                        "handle {}: a record started but did not complete within {} s: connection closed",
                        handle.0,
                        RECORD_TIMEOUT_MS / 1000
                    ));
                }
                break;
            }
        };
        let truncated_fds = match outcome {
            ReadOutcome::Closed => break,
            ReadOutcome::Unframeable(code) => {
                let _ = send_error(&mut stream, code);
                break;
            }
            ReadOutcome::Record { truncated_fds } => truncated_fds,
        };
        let reply = handle_record(
            shared,
            handle,
            stream.as_fd(),
            &buf,
            &mut fds,
            truncated_fds,
        );
        registered |= matches!(reply, Ok(Response::FlowId(_)));
        if reply.is_ok() {
            // Held WatchFlow requests re-read their flow (`changes`).
            crate::changes::notify();
        }
        if buf.capacity() > READ_CHUNK {
            // One large record (a rule list) does not pin its buffer for the connection's life.
            buf = Vec::with_capacity(1024);
        }
        // Every descriptor not kept for a pending TCP socket closes now, before answering.
        fds.clear();
        encode_reply(&reply, &mut out);
        if stream.write_all(&out).is_err() {
            break;
        }
        if out.capacity() > READ_CHUNK {
            out = Vec::with_capacity(1024);
        }
    }
    drop(fds);
    // Packets the application sent before closing still get their marks.
    if registered {
        shared.wait_for_queue();
    }
    shared.pending.forget_handle(handle);
    shared.registry.forget_handle(handle);
    let closed = shared.engine_mut(Holder::Close).close_handle(handle);
    crate::changes::notify();
    match closed {
        Ok(report) => crate::log(&format!(
            "handle {} closed: {} flows, {} sockets removed",
            handle.0, report.flows_removed, report.sockets_removed
        )),
        Err(e) => crate::log(&format!("handle {} close failed: {e:?}", handle.0)),
    }
}

/// The answer record for `reply` in `out` (an `Error` 8 record if it cannot be encoded).
fn encode_reply(reply: &Result<Response, Win32Error>, out: &mut Vec<u8>) {
    out.clear();
    let encoded = match reply {
        Ok(response) => codec::encode_response(response, out),
        Err(code) => codec::encode_error(
            ErrorReply {
                win32: *code,
                required_size: 0,
            },
            out,
        ),
    };
    if encoded.is_err() {
        out.clear();
        let _ = codec::encode_error(
            ErrorReply {
                win32: Win32Error::NOT_ENOUGH_MEMORY,
                required_size: 0,
            },
            out,
        );
    }
}

/// Whether a successful `req` may have changed what the state file holds. Listed the other
/// way round (what certainly does not) so that request kinds added later are persisted.
fn changes_state(req: &Request) -> bool {
    !matches!(
        req,
        Request::QueryStatus
            | Request::AddSocketToFlow { .. }
            | Request::RemoveSocketFromFlow { .. }
            | Request::SetFlow { .. }
            | Request::QueryFlow { .. }
            | Request::NotifyFlow { .. }
            | Request::EnumerateFlows
            | Request::ListFlows { .. }
            | Request::ListRules
            | Request::GetTrafficTable
            | Request::WatchFlow { .. }
    )
}

/// Nanoseconds on a monotonic clock (since the first call), for the engine's request rate.
fn monotonic_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Decodes and applies one record; the answer or the Win32 error code.
fn handle_record(
    shared: &Shared,
    handle: HandleId,
    stream: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &mut Vec<OwnedFd>,
    truncated_fds: bool,
) -> Result<Response, Win32Error> {
    let request = codec::decode_request(bytes).map_err(codec::AbiError::win32)?;
    // Every caller request is charged once, here, against the handle's request rate
    // (`Engine::charge_request`; 1450 when spent, nothing changes; descriptors that came
    // with it are closed by the caller as for any refusal).
    shared
        .engine_mut(Holder::Charge)
        .charge_request(handle, monotonic_ns())
        .map_err(EngineError::win32)?;
    if let Request::AddSocketToFlow {
        socket,
        dest,
        traffic_type,
        flags,
        flow_id,
    } = request
    {
        if fds.len() != 1 || truncated_fds {
            return Err(Win32Error::INVALID_PARAMETER);
        }
        let fd = fds.pop().ok_or(Win32Error::INVALID_PARAMETER)?;
        let info =
            inspect_socket(fd.as_fd(), socket.socket).ok_or(Win32Error::INVALID_PARAMETER)?;
        let unbound = info.protocol == Protocol::Tcp && info.local.port() == 0;
        if unbound && shared.pending.room_for(handle).is_err() {
            return Err(Win32Error::NO_SYSTEM_RESOURCES);
        }
        let req = Request::AddSocketToFlow {
            socket: info,
            dest,
            traffic_type,
            flags,
            flow_id,
        };
        let answer = match sys::socket_cookie(fd.as_fd()) {
            Ok(cookie) => shared.registry.add_socket(
                &shared.engine,
                handle,
                &req,
                Identity {
                    cookie,
                    family: info.family,
                    protocol: info.protocol,
                    listed: info.protocol == Protocol::Udp || info.peer.is_some(),
                    peer: info.peer,
                },
            ),
            Err(_) => shared.engine_mut(Holder::AddSocket).apply(handle, &req),
        };
        if answer.is_ok() && unbound {
            shared.pending.add(Pending {
                handle,
                socket: info.socket,
                dest: dest.map(crate::pending::unmapped),
                fd,
                deadline: Instant::now() + PENDING_TCP_LIMIT,
            });
        }
        return answer.map_err(EngineError::win32);
    }
    if !fds.is_empty() || truncated_fds {
        // Descriptors belong only to AddSocketToFlow; they close when `fds` is cleared.
        return Err(Win32Error::INVALID_PARAMETER);
    }
    if let Some(answer) = hold_watch(shared, handle, stream, &request) {
        return answer;
    }
    if !changes_state(&request) {
        if matches!(request, Request::RemoveSocketFromFlow { .. }) {
            // Packets sent before the removal keep their mark.
            shared.wait_for_queue();
        }
        let answer = shared.engine_mut(Holder::Request).apply(handle, &request);
        if let (Ok(_), Request::RemoveSocketFromFlow { socket, flow_id }) = (&answer, &request) {
            shared.registry.removed(handle, *socket, *flow_id);
        }
        return answer.map_err(EngineError::win32);
    }
    let _saving = shared
        .save_lock
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let (answer, snapshot) = {
        let mut engine = shared.engine_mut(Holder::Persist);
        let answer = engine.apply(handle, &request);
        let snapshot = if answer.is_ok() {
            snapshot_state(&mut engine)
        } else {
            None
        };
        (answer, snapshot)
    };
    if let (Some(path), Some(state)) = (&shared.state_path, snapshot) {
        match state::save(path, &state) {
            Ok(()) => crate::log(&format!(
                "state saved to {} ({} rules)",
                path.display(),
                state.rules.len()
            )),
            Err(e) => crate::log(&format!(
                "ERROR: cannot save state to {}: {e} (the change is live but will not survive a restart)",
                path.display()
            )),
        }
    }
    answer.map_err(EngineError::win32)
}

/// A `WatchFlow` with a known state: answered as soon as the flow's state (as the caller's
/// process sees it) differs from `known` — at once if it already does — and held until then
/// (`crate::changes`). While held, this connection answers nothing else (requests sent
/// meanwhile are answered afterwards, in order): a client that goes on working waits on a
/// second connection, which the engine allows because `WatchFlow` sees every flow of the
/// caller's process. A client that hangs up abandons the request (the connection ends; its
/// handle closes as always).
/// `None` for any other request.
fn hold_watch(
    shared: &Shared,
    handle: HandleId,
    stream: BorrowedFd<'_>,
    request: &Request,
) -> Option<Result<Response, Win32Error>> {
    let Request::WatchFlow {
        flow_id,
        known: Some(known),
    } = *request
    else {
        return None;
    };
    Some(hold_until_changed(shared, handle, stream, flow_id, known))
}

fn hold_until_changed(
    shared: &Shared,
    handle: HandleId,
    stream: BorrowedFd<'_>,
    flow_id: qosmark_engine::abi::FlowId,
    known: FlowState,
) -> Result<Response, Win32Error> {
    let ask = Request::WatchFlow {
        flow_id,
        known: None,
    };
    loop {
        let seen = crate::changes::current();
        let now = shared
            .engine_mut(Holder::Request)
            .apply(handle, &ask)
            .map_err(EngineError::win32)?;
        if now != Response::FlowState(known) {
            return Ok(now);
        }
        if sys::peer_hung_up(stream).unwrap_or(true) {
            return Err(Win32Error::OPERATION_ABORTED);
        }
        crate::changes::wait_past(seen, crate::changes::HANG_UP_CHECK);
    }
}

/// The persistent part of the engine's state, read through a short-lived administrator
/// handle (rules are only listed through requests).
pub fn snapshot_state(engine: &mut Engine) -> Option<State> {
    let handle = engine
        .open_handle(Caller {
            pid: std::process::id(),
            privilege: Privilege::Admin,
        })
        .ok()?;
    let table = engine.apply(handle, &Request::GetTrafficTable);
    let rules = engine.apply(handle, &Request::ListRules);
    let _ = engine.close_handle(handle);
    match (table, rules) {
        (Ok(Response::TrafficTable(table)), Ok(Response::Rules(rules))) => Some(State {
            table,
            rules: rules.into_iter().map(|r| r.spec).collect(),
        }),
        _ => None,
    }
}

/// Loads `state` into the engine through a short-lived administrator handle.
///
/// # Errors
/// The rule (by name) or table the engine refused, with its error.
pub fn load_state(engine: &mut Engine, state: &State) -> Result<(), String> {
    let handle = engine
        .open_handle(Caller {
            pid: std::process::id(),
            privilege: Privilege::Admin,
        })
        .map_err(|e| format!("cannot open an engine handle: {e:?}"))?;
    let mut result = engine
        .apply(handle, &Request::SetTrafficTable(state.table))
        .map(|_| ())
        .map_err(|e| format!("traffic table refused: {e:?}"));
    for rule in &state.rules {
        if result.is_err() {
            break;
        }
        result = engine
            .apply(handle, &Request::AddRule(rule.clone()))
            .map(|_| ())
            .map_err(|e| format!("rule `{}` refused: {e:?}", rule.name));
    }
    let _ = engine.close_handle(handle);
    result
}

/// What the descriptor itself says about the socket; `None` if it is not an `AF_INET` /
/// `AF_INET6` TCP or UDP socket (or cannot be read).
fn inspect_socket(fd: BorrowedFd<'_>, socket: u64) -> Option<SocketInfo> {
    let domain = sys::get_int_option(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).ok()?;
    let kind = sys::get_int_option(fd, libc::SOL_SOCKET, libc::SO_TYPE).ok()?;
    let proto = sys::get_int_option(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).ok()?;
    let family = match domain {
        libc::AF_INET => Family::V4,
        libc::AF_INET6 => Family::V6,
        _ => return None,
    };
    let protocol = match (kind, proto) {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) => Protocol::Tcp,
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => Protocol::Udp,
        _ => return None,
    };
    let local = sys::local_address(fd).ok()??;
    let peer = sys::peer_address(fd).ok()?;
    Some(SocketInfo {
        socket,
        family,
        protocol,
        local,
        peer,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    #[test]
    fn cap_eff_parsing() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000001000\n";
        assert!(cap_eff_has(status, CAP_NET_ADMIN));
        assert!(!cap_eff_has(status, 0));
        assert!(!cap_eff_has("CapEff:\t0000000000000000\n", CAP_NET_ADMIN));
        assert!(cap_eff_has("CapEff:\t000001ffffffffff\n", CAP_NET_ADMIN));
        assert!(!cap_eff_has("CapEff:\tzz\n", CAP_NET_ADMIN));
        assert!(!cap_eff_has("", CAP_NET_ADMIN));
        assert_eq!(
            status_euid("Name:\tx\nUid:\t1000\t1001\t1002\t1003\n"),
            Some(1001)
        );
        assert_eq!(status_euid("Uid:\t1000\n"), None);
        assert_eq!(status_euid("Gid:\t1 2 3 4\n"), None);
    }

    /// Oracle: this test process itself (same user namespace, its own status file), and a
    /// child in a user namespace of its own, where it holds every capability.
    #[test]
    fn net_admin_counts_only_in_our_user_namespace() {
        let me = std::process::id();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let uid = status_euid(&status).unwrap();
        assert_eq!(has_net_admin(me, uid), cap_eff_has(&status, CAP_NET_ADMIN));
        assert!(!has_net_admin(me, uid.wrapping_add(1)), "uid mismatch");
        // `unshare -Ur sleep`: full CapEff, but in another user namespace.
        let Ok(mut child) = std::process::Command::new("unshare")
            .args(["-Ur", "sleep", "5"])
            .spawn()
        else {
            return; // util-linux missing: nothing to check against
        };
        let pid = child.id();
        let mut inside = String::new();
        for _ in 0..100 {
            inside = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/user")).ok();
            if ns.is_some() && ns != std::fs::read_link("/proc/self/ns/user").ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let child_uid = status_euid(&inside).unwrap();
        let has_it = cap_eff_has(&inside, CAP_NET_ADMIN);
        let judged = has_net_admin(pid, child_uid);
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            has_it,
            "the user-namespace child holds CAP_NET_ADMIN there: {inside}"
        );
        assert!(
            !judged,
            "a capability in another user namespace made an administrator"
        );
    }

    /// A header announcing the longest record, then 100 bytes and a close: the buffer grew
    /// with the bytes that came, not to the announced length; and the receive timeout set
    /// while the record was incomplete is cleared again.
    #[test]
    fn a_large_announced_record_grows_with_its_data() {
        use std::io::Write as _;
        let (a, b) = UnixStream::pair().unwrap();
        let mut rec = Vec::new();
        codec::encode_request(&Request::QueryStatus, &mut rec).unwrap();
        let max = codec::MAX_RECORD_LEN;
        rec.get_mut(12..16)
            .unwrap()
            .copy_from_slice(&max.to_le_bytes());
        assert_eq!(
            codec::record_len(&rec).unwrap(),
            max,
            "length field patched"
        );
        (&a).write_all(rec.get(..16).unwrap()).unwrap();
        (&a).write_all(&[0u8; 100]).unwrap();
        drop(a);
        let (mut buf, mut fds) = (Vec::new(), Vec::new());
        let outcome = read_record(b.as_fd(), &mut buf, &mut fds).unwrap();
        assert!(matches!(outcome, ReadOutcome::Closed));
        assert_eq!(buf.len(), 116);
        assert!(
            buf.capacity() < 2 * READ_CHUNK && (max as usize) > 4 * READ_CHUNK,
            "capacity {}",
            buf.capacity()
        );
        assert_eq!(b.read_timeout().unwrap(), None, "timeout cleared");
        // A whole record longer than several chunks arrives intact.
        let (a, b) = UnixStream::pair().unwrap();
        let len = 200_003u32;
        rec.get_mut(12..16)
            .unwrap()
            .copy_from_slice(&len.to_le_bytes());
        let body: Vec<u8> = (0..len - 16).map(|i| (i % 251) as u8).collect();
        let writer = std::thread::spawn(move || {
            (&a).write_all(rec.get(..16).unwrap()).unwrap();
            (&a).write_all(&body).unwrap();
            body
        });
        let outcome = read_record(b.as_fd(), &mut buf, &mut fds).unwrap();
        let body = writer.join().unwrap();
        assert!(matches!(
            outcome,
            ReadOutcome::Record {
                truncated_fds: false
            }
        ));
        assert_eq!(buf.len(), len as usize);
        assert_eq!(buf.get(16..).unwrap(), &body[..]);
    }

    #[test]
    fn persistent_requests() {
        assert!(!changes_state(&Request::QueryStatus));
        assert!(!changes_state(&Request::ListRules));
        assert!(changes_state(&Request::SetTrafficTable(
            qosmark_engine::traffic::default_table()
        )));
        assert!(changes_state(&Request::RemoveRule(
            qosmark_engine::abi::heapless_name::RuleName::try_new("x")
                .unwrap_or_else(|_| { unreachable!("valid name") })
        )));
    }
}
