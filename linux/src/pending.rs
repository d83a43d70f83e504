//! TCP sockets registered before `connect`, waiting for their local port.
//!
//! A TCP socket registered with local port 0 has engine entries that match no packet until
//! [`Engine::socket_bound`](qosmark_engine::Engine::socket_bound) pins them to the port `connect` picks. The daemon keeps such a
//! socket's descriptor here (at most [`PENDING_TCP_LIMIT`]) and pins it in two places:
//!
//! * **on the packet path, exactly**: the first packet a connecting TCP socket sends is its SYN,
//!   and the kernel assigns the local port before the SYN is built. So when a batch of queued
//!   packets holds a TCP SYN (without ACK) and sockets are pending, the packet thread calls
//!   [`PendingTcp::resolve_syn`] *before* it classifies the batch: every pending socket whose
//!   destination is the SYN's is asked for its local address (`getsockname`), and the bound
//!   ones are pinned under the engine's write lock. The SYN itself is then classified against
//!   the pinned entry and leaves marked. With nothing pending the cost is one atomic load per
//!   batch; nothing allocates.
//! * **by the watcher thread** ([`PendingTcp::watch`]), every 50 ms: sockets bound without a SYN
//!   passing through our queue (another namespace's route, `TCP_REPAIR`), and the 60 s expiry.
//!
//! Both remove an entry and pin it while holding the list's lock, so a socket that has left the
//! list is already pinned (no window in which neither the list nor the engine knows its port).
//! Lock order: this list, then the engine. Nothing takes them the other way round. Both are
//! priority-inheritance mutexes ([`crate::lock`]), since the packet thread takes both.
//!
//! Bounds: [`MAX_PENDING`] sockets in all and [`MAX_PENDING_PER_HANDLE`] per connection, so an
//! unprivileged client cannot make the daemon hold thousands of descriptors (each pending socket
//! is one open descriptor in the daemon) or make every SYN cost thousands of system calls.

use crate::lock::{EngineLock, Holder};
use crate::sys;
use crate::sys::{PiGuard, PiMutex};
use qosmark_engine::wire::{self, TcpPacket, Transport};
use qosmark_engine::HandleId;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long an unbound TCP socket's descriptor is kept waiting for its local port.
pub const PENDING_TCP_LIMIT: Duration = Duration::from_secs(60);
/// How often the watcher polls pending sockets.
/// (The SYN path pins connecting sockets exactly; polling every 5 ms cost up to 4,096
/// `getsockname` calls per 5 ms with a full list.)
const PENDING_POLL: Duration = Duration::from_millis(50);
/// Pending sockets in all.
pub const MAX_PENDING: usize = 4096;
/// Pending sockets per client connection.
pub const MAX_PENDING_PER_HANDLE: usize = 256;

/// TCP SYN and ACK flag bits.
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// One TCP socket registered before `connect`.
pub struct Pending {
    /// The connection (engine handle) that registered it.
    pub handle: HandleId,
    /// The application's socket value (the engine's key for it).
    pub socket: u64,
    /// The destination given at registration (IPv4-mapped addresses unmapped), if any.
    pub dest: Option<SocketAddr>,
    /// The socket itself (closed when the entry goes).
    pub fd: OwnedFd,
    /// When to give up.
    pub deadline: Instant,
}

/// Why a socket could not be added to the pending list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// [`MAX_PENDING`] reached.
    Global,
    /// [`MAX_PENDING_PER_HANDLE`] reached for this handle.
    Handle,
}

/// The pending list, shared by the control threads, the watcher and the packet thread.
///
/// The list's lock is a priority-inheritance mutex like the engine's ([`crate::lock`]): the
/// `SCHED_FIFO` packet thread takes it when a SYN arrives while sockets are pending, and must
/// not wait for a control thread or the watcher that the machine's load keeps off the CPU.
pub struct PendingTcp {
    list: PiMutex<Vec<Pending>>,
    /// `list.len()`, readable without the lock (the packet path's "anything pending?").
    count: AtomicUsize,
}

/// `a` with an IPv4-mapped IPv6 address turned into IPv4 (how packets carry it).
#[must_use]
pub fn unmapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// The destination of `packet` (bytes from the IP header on) if it is a TCP segment with SYN
/// set and ACK clear — the first segment a connecting socket sends.
#[must_use]
pub fn syn_destination(packet: &[u8]) -> Option<SocketAddr> {
    let summary = wire::parse_ip(packet).ok()?;
    let Transport::Ports { dst, .. } = summary.transport else {
        return None;
    };
    if summary.protocol != 6 {
        return None;
    }
    let tcp = TcpPacket::new_checked(packet.get(summary.header_len..)?).ok()?;
    (tcp.flags() & (TCP_SYN | TCP_ACK) == TCP_SYN).then_some(SocketAddr::new(summary.dst, dst))
}

impl PendingTcp {
    /// An empty list.
    ///
    /// # Errors
    /// The list's priority-inheritance mutex could not be created ([`PiMutex::new`]).
    pub fn new() -> io::Result<Self> {
        Ok(PendingTcp {
            list: PiMutex::new(Vec::new())?,
            count: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> PiGuard<'_, Vec<Pending>> {
        self.list.lock()
    }

    fn publish(&self, list: &[Pending]) {
        self.count.store(list.len(), Ordering::Release);
    }

    /// Whether any socket is pending (one atomic load; the packet path's fast check).
    #[must_use]
    pub fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Number of pending sockets.
    #[must_use]
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Whether nothing is pending.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        !self.any()
    }

    /// Whether one more socket of `handle` would fit (checked before the engine registers it).
    ///
    /// # Errors
    /// Which bound is reached.
    pub fn room_for(&self, handle: HandleId) -> Result<(), Full> {
        let list = self.lock();
        if list.len() >= MAX_PENDING {
            return Err(Full::Global);
        }
        if list.iter().filter(|p| p.handle == handle).count() >= MAX_PENDING_PER_HANDLE {
            return Err(Full::Handle);
        }
        Ok(())
    }

    /// Adds a socket (replacing an entry of the same handle and socket value).
    pub fn add(&self, pending: Pending) {
        let mut list = self.lock();
        list.retain(|p| !(p.handle == pending.handle && p.socket == pending.socket));
        list.push(pending);
        self.publish(&list);
    }

    /// Forgets (and closes) every socket of `handle` (its connection ended).
    pub fn forget_handle(&self, handle: HandleId) {
        let mut list = self.lock();
        list.retain(|p| p.handle != handle);
        self.publish(&list);
    }

    /// Packet path: a SYN to `dest` is about to be classified. Every pending socket registered
    /// for that destination (or without one) that now has a local port is pinned in the engine
    /// and leaves the list. Returns how many were pinned.
    pub fn resolve_syn(&self, engine: &EngineLock, dest: SocketAddr) -> usize {
        let dest = unmapped(dest);
        self.resolve(engine, Instant::now(), |p| p.dest.is_none_or(|d| d == dest))
    }

    /// Pins every socket selected by `which` that has a local port; drops the ones past their
    /// deadline or whose address cannot be read. Holds the list's lock throughout and takes the
    /// engine's write lock only if something is to be pinned.
    fn resolve(
        &self,
        engine: &EngineLock,
        now: Instant,
        which: impl Fn(&Pending) -> bool,
    ) -> usize {
        let mut list = self.lock();
        let mut pinned = 0usize;
        let mut guard = None;
        list.retain(|p| {
            if !which(p) {
                return true;
            }
            match sys::local_address(p.fd.as_fd()) {
                Ok(Some(local)) if local.port() != 0 => {
                    let engine = guard.get_or_insert_with(|| engine.write_as(Holder::Pin));
                    match engine.socket_bound(p.handle, p.socket, local) {
                        Ok(_) => pinned += 1,
                        Err(e) => crate::log(&format!(
                            "handle {}: TCP socket {} bound to {local} could not be pinned: {e:?}",
                            p.handle.0, p.socket
                        )),
                    }
                    false
                }
                Ok(_) if now < p.deadline => true,
                Ok(_) => {
                    crate::log(&format!(
                        "handle {}: TCP socket {} got no local port in {} s; it marks nothing",
                        p.handle.0,
                        p.socket,
                        PENDING_TCP_LIMIT.as_secs()
                    ));
                    false
                }
                Err(_) => false,
            }
        });
        drop(guard);
        self.publish(&list);
        pinned
    }

    /// The watcher: polls every pending socket every 50 ms (pinning, expiring); with nothing
    /// pending, one atomic load per 50 ms. Runs forever.
    pub fn watch(&self, engine: &EngineLock) {
        loop {
            if self.any() {
                self.resolve(engine, Instant::now(), |_| true);
            }
            std::thread::sleep(PENDING_POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    #![allow(
        unsafe_code,
        reason = "test code: an unconnected socket and connect, through libc"
    )]
    use super::*;

    /// An IPv4 TCP segment built by hand (independent of the engine's parser).
    fn tcp4(flags: u8, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        p
    }

    fn tcp6(flags: u8, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 60];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&20u16.to_be_bytes());
        p[6] = 6;
        p[7] = 64;
        p[23] = 1;
        p[24] = 0xfd;
        p[39] = 2;
        p[40..42].copy_from_slice(&40000u16.to_be_bytes());
        p[42..44].copy_from_slice(&dport.to_be_bytes());
        p[52] = 5 << 4;
        p[53] = flags;
        p
    }

    #[test]
    fn syn_is_recognised_only_without_ack() {
        let dst: SocketAddr = "10.1.2.3:5060".parse().unwrap();
        assert_eq!(syn_destination(&tcp4(0x02, [10, 1, 2, 3], 5060)), Some(dst));
        // ECN-setup SYN (SYN+ECE+CWR) is still a SYN.
        assert_eq!(syn_destination(&tcp4(0xc2, [10, 1, 2, 3], 5060)), Some(dst));
        assert_eq!(syn_destination(&tcp4(0x12, [10, 1, 2, 3], 5060)), None);
        assert_eq!(syn_destination(&tcp4(0x10, [10, 1, 2, 3], 5060)), None);
        assert_eq!(syn_destination(&tcp4(0x18, [10, 1, 2, 3], 5060)), None);
        let d6 = syn_destination(&tcp6(0x02, 443)).unwrap();
        assert_eq!(d6, "[fd00::2]:443".parse().unwrap());
        assert_eq!(syn_destination(&tcp6(0x11, 443)), None);
        // UDP with a byte 13 that looks like SYN is not TCP.
        let mut udp = tcp4(0x02, [10, 1, 2, 3], 5060);
        udp[9] = 17;
        assert_eq!(syn_destination(&udp), None);
        // Cut anywhere: never a panic; a header cut before the flags is not a SYN.
        let full = tcp4(0x02, [10, 1, 2, 3], 5060);
        for cut in 0..full.len() {
            assert_eq!(syn_destination(&full[..cut]), None, "cut at {cut}");
        }
    }

    use qosmark_engine::abi::{
        Caller, Family, Privilege, Protocol, Request, SocketInfo, TrafficType,
    };
    use qosmark_engine::{Engine, FiveTuple, Limits};
    use std::os::fd::{AsRawFd, FromRawFd};

    fn unbound_tcp4() -> OwnedFd {
        // SAFETY: plain socket creation, checked below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor nobody else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn connect4(fd: &OwnedFd, dest: SocketAddr) {
        let SocketAddr::V4(d) = dest else {
            unreachable!("v4")
        };
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: d.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*d.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `sin` is a valid sockaddr_in of the size given.
        let ret = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&raw const sin).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
    }

    /// A real loopback socket registered unbound: nothing matches before `connect`; a SYN to
    /// another destination pins nothing; a SYN to its destination pins it, and the engine then
    /// matches its 5-tuple. Oracle: the kernel's own `getsockname` via std.
    #[test]
    fn a_syn_to_the_destination_pins_the_connected_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dest = listener.local_addr().unwrap();
        let engine = EngineLock::new(Engine::new(Limits::default())).unwrap();
        let handle = engine
            .write()
            .open_handle(Caller {
                pid: 1,
                privilege: Privilege::User,
            })
            .unwrap();
        let fd = unbound_tcp4();
        let add = Request::AddSocketToFlow {
            socket: SocketInfo {
                socket: 9,
                family: Family::V4,
                protocol: Protocol::Tcp,
                local: "0.0.0.0:0".parse().unwrap(),
                peer: None,
            },
            dest: Some(dest),
            traffic_type: TrafficType::Voice,
            flags: 0,
            flow_id: 0,
        };
        engine.write().apply(handle, &add).unwrap();
        let pending = PendingTcp::new().unwrap();
        pending.room_for(handle).unwrap();
        // The same socket (a duplicate descriptor), to connect it and read its address.
        let probe = fd.try_clone().unwrap();
        pending.add(Pending {
            handle,
            socket: 9,
            dest: Some(dest),
            fd,
            deadline: Instant::now() + PENDING_TCP_LIMIT,
        });
        assert!(pending.any());
        // Not connected yet: nothing to pin.
        assert_eq!(pending.resolve_syn(&engine, dest), 0);
        assert_eq!(pending.len(), 1);
        connect4(&probe, dest);
        let local = sys::local_address(probe.as_fd()).unwrap().unwrap();
        let tuple = FiveTuple::new(Protocol::Tcp, local, dest);
        assert!(engine.read().socket_lookup(&tuple).is_none());
        let elsewhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(pending.resolve_syn(&engine, elsewhere), 0);
        assert_eq!(pending.len(), 1, "a SYN elsewhere leaves it pending");
        assert_eq!(pending.resolve_syn(&engine, dest), 1);
        assert!(pending.is_empty());
        let (_, mark) = engine.read().socket_lookup(&tuple).unwrap();
        assert_eq!(mark.dscp.map(qosmark_engine::abi::Dscp::value), Some(56));
        engine.read().check_control_invariants().unwrap();
    }

    #[test]
    fn the_list_is_bounded_per_handle() {
        let pending = PendingTcp::new().unwrap();
        let (a, b) = (HandleId(1), HandleId(2));
        for socket in 0..MAX_PENDING_PER_HANDLE as u64 {
            pending.room_for(a).unwrap();
            pending.add(Pending {
                handle: a,
                socket,
                dest: None,
                fd: unbound_tcp4(),
                deadline: Instant::now() + PENDING_TCP_LIMIT,
            });
        }
        assert_eq!(pending.room_for(a), Err(Full::Handle));
        assert_eq!(pending.room_for(b), Ok(()));
        // Re-adding the same socket value replaces its entry.
        pending.add(Pending {
            handle: a,
            socket: 0,
            dest: None,
            fd: unbound_tcp4(),
            deadline: Instant::now() + PENDING_TCP_LIMIT,
        });
        assert_eq!(pending.len(), MAX_PENDING_PER_HANDLE);
        pending.forget_handle(a);
        assert!(pending.is_empty());
        assert_eq!(pending.room_for(a), Ok(()));
    }

    #[test]
    fn mapped_destinations_compare_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:80".parse().unwrap();
        assert_eq!(unmapped(mapped), "10.1.2.3:80".parse().unwrap());
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(unmapped(v6), v6);
    }
}
