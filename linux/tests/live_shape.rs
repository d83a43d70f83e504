//! Live shaping tests through the C ABI: `tests/c/live_shape.c` (compiled against `qosmark.h`
//! and `libqosmark.so`) sets `QOSSetOutgoingRate` on a UDP flow and sends at ten times the
//! rate; a receiver in the other namespace judges every datagram: its sequence number, its
//! TOS (`IP_RECVTOS`), its arrival time (`CLOCK_MONOTONIC`, the clock the sender stamps into
//! each datagram — both namespaces share it).
//!
//! * `QOSShapeOnly` (10 s) and `QOSShapeAndMark` (4 s): the rate received over the send window is the
//!   configured rate ± 5 %; nothing is lost while the queue has room; removing the flow
//!   releases what is still held at once; every datagram carries the flow's DSCP and arrives
//!   in sequence order.
//! * `QOSUseNonConformantMarkings` (5 s): nothing is delayed; the share marked with the flow's
//!   DSCP is the rate's share (tolerance derived at [`nonconformant_marks_the_excess`]), the
//!   rest carries the non-conformant DSCP.
//! * In every run the C program checks `QOSQueryOutgoingRate` and that invalid rates fail
//!   with 87 and change nothing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "test code: a panic is a failure; each test is one scenario checked step by step"
)]

mod common;
mod traffic;

use common::{in_ns, live, Daemon, DaemonOptions, Net};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// UDP payload per datagram; 528 bytes at the IP level (IPv4 + UDP headers).
const SIZE: usize = 500;
/// Bits per datagram at the IP level, what the rate counts.
const BITS: f64 = ((SIZE + 28) * 8) as f64;
/// The flow's rate: 47.3 datagrams/s; the sender offers ten times that.
const RATE: u64 = 200_000;
const FACTOR: f64 = 10.0;
/// DSCP of `QOSTrafficTypeVoice`.
const VOICE: u8 = 56;
/// Per-flow queue limits given to the daemon: room for everything the tests send (10 s at
/// 473 datagrams/s = 4,734 datagrams, 2.5 MB).
const DAEMON_ARGS: &[&str] = &[
    "--shape-queue-packets",
    "8192",
    "--shape-queue-bytes",
    "8388608",
];

/// `CLOCK_MONOTONIC` in ns (what the C program stamps).
fn mono_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live local.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut t) };
    assert_eq!(ret, 0);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// `tests/c/live_shape.c` built against `libqosmark.so` into `net.dir`.
fn build_client(net: &Net) -> PathBuf {
    common::build_c_client(net, "live_shape", "-D_DEFAULT_SOURCE")
}

/// One received datagram.
#[derive(Clone, Copy, Debug)]
struct Rx {
    seq: u32,
    sent_ns: u64,
    recv_ns: u64,
    tos: Option<u8>,
    len: usize,
}

/// A UDP receiver in the receiver namespace recording every datagram.
struct Receiver {
    got: Arc<Mutex<Vec<Rx>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(net: &Net, addr: SocketAddr) -> Receiver {
        let sock = in_ns(&net.receiver, move || UdpSocket::bind(addr).unwrap());
        traffic::report_tos(&sock, false);
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (Arc::clone(&got), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::SeqCst) {
                let Some((n, tos)) = traffic::recv_with_tos(&sock, &mut buf) else {
                    continue;
                };
                let recv_ns = mono_ns();
                if n < 12 {
                    continue;
                }
                g.lock().unwrap().push(Rx {
                    seq: u32::from_ne_bytes(buf[..4].try_into().unwrap()),
                    sent_ns: u64::from_ne_bytes(buf[4..12].try_into().unwrap()),
                    recv_ns,
                    tos,
                    len: n,
                });
            }
        });
        Receiver {
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn snapshot(&self) -> Vec<Rx> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` datagrams arrived (false after `timeout`).
    fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.got.lock().unwrap().len() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.got.lock().unwrap().len() >= n
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The C program, running; its stdout lines arrive on a channel. Killed on drop.
struct CClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl CClient {
    fn start(
        net: &Net,
        exe: &Path,
        daemon: &Daemon,
        port: u16,
        behaviour: u32,
        seconds: f64,
    ) -> CClient {
        Self::start_with(
            net,
            exe,
            daemon,
            port,
            behaviour,
            seconds,
            (RATE, SIZE, FACTOR),
        )
    }

    /// [`CClient::start`] with another (rate, payload size, factor).
    fn start_with(
        net: &Net,
        exe: &Path,
        daemon: &Daemon,
        port: u16,
        behaviour: u32,
        seconds: f64,
        (rate, size, factor): (u64, usize, f64),
    ) -> CClient {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &net.sender])
            .arg(exe)
            .args([
                net.r4.to_string(),
                port.to_string(),
                behaviour.to_string(),
                rate.to_string(),
                seconds.to_string(),
                size.to_string(),
                factor.to_string(),
            ])
            .env("QOSMARK_SOCKET", &daemon.socket)
            .env_remove("LD_LIBRARY_PATH")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        CClient {
            stdin: child.stdin.take(),
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Reads lines until one starts with `prefix`; returns its words after the prefix.
    fn expect(&mut self, prefix: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "live_shape: no `{prefix}` line within {timeout:?}; output so far:\n{}",
                    self.log.join("\n")
                )
            });
            self.log.push(line.clone());
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.split_whitespace().map(str::to_owned).collect();
            }
        }
    }

    fn command(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes the handle and waits for the exit; asserts that every check passed.
    fn finish(mut self) {
        self.command("close");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!("live_shape did not finish:\n{}", self.log.join("\n"));
            };
            self.log.push(line.clone());
            if line.ends_with(" failures") {
                assert_eq!(line, "0 failures", "{}", self.log.join("\n"));
                break;
            }
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "live_shape exit {status}");
    }
}

impl Drop for CClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the C program reported after sending: count, first and last send time (ns).
struct Sent {
    count: usize,
    first_ns: u64,
    last_ns: u64,
}

fn sent(words: &[String]) -> Sent {
    Sent {
        count: words[0].parse().unwrap(),
        first_ns: words[1].parse().unwrap(),
        last_ns: words[2].parse().unwrap(),
    }
}

/// Checks the C program's own lines: no `FAIL`.
fn no_failures(client: &CClient) {
    let fails: Vec<_> = client
        .log
        .iter()
        .filter(|l| l.starts_with("FAIL"))
        .collect();
    assert!(
        fails.is_empty(),
        "C checks failed: {fails:?}\n{:?}",
        client.log
    );
}

/// Shaping (`QOSShapeOnly` / `QOSShapeAndMark`) for `seconds`: rate, no loss, order, DSCP,
/// and release of the held rest when the flow is removed.
fn shaped_run(behaviour: u32, seconds: f64) {
    let net = Net::new();
    let exe = build_client(&net);
    let daemon = Daemon::start_with(&net, &DaemonOptions::default(), DAEMON_ARGS);
    let port = 8300;
    let rx = Receiver::start(&net, net.receiver_addr(false, port));
    let mut client = CClient::start(&net, &exe, &daemon, port, behaviour, seconds);
    let sent = sent(&client.expect("SENT ", Duration::from_secs_f64(seconds + 20.0)));
    no_failures(&client);
    let offered = FACTOR * RATE as f64 / BITS;
    assert!(
        (sent.count as f64 - offered * seconds).abs() < 2.0,
        "sent {} datagrams",
        sent.count
    );
    // The rate over the send window, measured from the first arrival.
    let first = rx
        .snapshot()
        .first()
        .map(|r| r.recv_ns)
        .expect("nothing received");
    let window_ns = (seconds * 1e9) as u64;
    while mono_ns() < first + window_ns + 50_000_000 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = rx.snapshot();
    let in_window: Vec<&Rx> = seen
        .iter()
        .filter(|r| r.recv_ns < first + window_ns)
        .collect();
    let bits: f64 = in_window.iter().map(|r| ((r.len + 28) * 8) as f64).sum();
    let rate = bits / seconds;
    let err = (rate - RATE as f64) / RATE as f64;
    eprintln!(
        "behaviour {behaviour}: {} sent in {:.3} s, {} received in the first {seconds} s: {rate:.0} bit/s ({:+.2} % of {RATE})",
        sent.count,
        (sent.last_ns - sent.first_ns) as f64 / 1e9,
        in_window.len(),
        err * 100.0
    );
    assert!(err.abs() <= 0.05, "rate {rate:.0} bit/s, want {RATE} ± 5 %");
    // Still held now: most of what was sent.
    let held = sent.count - seen.len();
    assert!(
        held as f64 > 0.8 * sent.count as f64,
        "only {held} of {} held",
        sent.count
    );

    // Removing the flow releases everything still held, at once.
    client.command("remove");
    let removed_ns: u64 = client.expect("REMOVED ", Duration::from_secs(5))[0]
        .parse()
        .unwrap();
    assert!(
        rx.wait_for(sent.count, Duration::from_secs(5)),
        "after the removal only {} of {} arrived",
        rx.snapshot().len(),
        sent.count
    );
    std::thread::sleep(Duration::from_millis(100)); // duplicates would show now
    let all = rx.snapshot();
    let last = all.iter().map(|r| r.recv_ns).max().unwrap();
    let release_ms = (last.saturating_sub(removed_ns)) as f64 / 1e6;
    eprintln!(
        "behaviour {behaviour}: {held} held at the removal, the last one arrived {release_ms:.1} ms after QOSRemoveSocketFromFlow"
    );
    assert!(
        release_ms < 1000.0,
        "released {release_ms} ms after the removal"
    );
    // Every sequence number exactly once, in order, each with the flow's DSCP.
    let seqs: Vec<u32> = all.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (0..sent.count as u32).collect::<Vec<_>>(),
        "every datagram once, in order"
    );
    let wrong: Vec<_> = all
        .iter()
        .filter(|r| r.tos != Some(VOICE << 2))
        .take(5)
        .collect();
    assert!(
        wrong.is_empty(),
        "datagrams without DSCP {VOICE}: {wrong:?}"
    );
    client.finish();
    let log = daemon.stop();
    let c = shaping_counters(&log);
    eprintln!("behaviour {behaviour}: daemon {c:?}");
    assert_eq!(c.fail_open, 0, "{log}");
    assert_eq!(c.held_now, 0, "{log}");
    assert_eq!(c.held, c.on_time + c.early + c.at_exit, "{log}");
    assert!(
        c.held + 60 >= sent.count as u64 && c.held <= sent.count as u64,
        "{log}"
    );
    assert!(
        c.early as usize + 20 >= held && c.early as usize <= held,
        "{log}"
    );
}

/// The daemon's exit line `shaping: …` (`held::ShapeShared::summary`).
#[derive(Debug)]
struct Counters {
    held: u64,
    on_time: u64,
    early: u64,
    at_exit: u64,
    held_now: u64,
    fail_open: u64,
}

/// The daemon's "final counters: P packets, M marked, A already marked, N not matched,
/// F failed open" line, as numbers.
fn final_counters(log: &str) -> Vec<u64> {
    log.lines()
        .find_map(|l| l.strip_prefix("qosmarkd: final counters: "))
        .unwrap_or_else(|| panic!("no final counters:\n{log}"))
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect()
}

/// Every datagram `0..count` was received exactly once.
fn each_once(all: &[Rx], count: usize) {
    let mut seqs: Vec<u32> = all.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..count as u32).collect::<Vec<_>>(), "each once");
}

fn shaping_counters(log: &str) -> Counters {
    let line = log
        .lines()
        .find(|l| l.contains("shaping: "))
        .unwrap_or_else(|| panic!("no shaping counters in the log:\n{log}"));
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(n.len(), 6, "{line}");
    Counters {
        held: n[0],
        on_time: n[1],
        early: n[2],
        at_exit: n[3],
        held_now: n[4],
        fail_open: n[5],
    }
}

/// `QOSShapeOnly` at 10× its rate for 10 s (the acceptance test).
#[test]
fn shape_only_holds_to_the_rate_and_removal_releases() {
    if !live() {
        return;
    }
    shaped_run(0, 10.0);
}

/// `QOSShapeAndMark` behaves as `QOSShapeOnly` (shorter run).
#[test]
fn shape_and_mark_behaves_as_shape_only() {
    if !live() {
        return;
    }
    shaped_run(1, 4.0);
}

/// A full per-flow queue (`--shape-queue-packets 50`): what does not fit is sent at once with
/// the flow's DSCP (fail open, counted), never dropped; the queue stays at its bound.
#[test]
fn full_queue_fails_open_marked_never_dropped() {
    if !live() {
        return;
    }
    let net = Net::new();
    let exe = build_client(&net);
    let daemon = Daemon::start_with(
        &net,
        &DaemonOptions::default(),
        &["--shape-queue-packets", "50"],
    );
    let port = 8303;
    let rx = Receiver::start(&net, net.receiver_addr(false, port));
    let mut client = CClient::start(&net, &exe, &daemon, port, 0, 2.0);
    let sent = sent(&client.expect("SENT ", Duration::from_secs(20)));
    no_failures(&client);
    // At most the queue's 50 packets are still to come.
    assert!(
        rx.wait_for(sent.count - 50, Duration::from_secs(2)),
        "only {} of {} arrived with a 50-packet queue",
        rx.snapshot().len(),
        sent.count
    );
    client.command("remove");
    client.expect("REMOVED ", Duration::from_secs(5));
    assert!(rx.wait_for(sent.count, Duration::from_secs(3)));
    std::thread::sleep(Duration::from_millis(100));
    let all = rx.snapshot();
    each_once(&all, sent.count);
    assert!(all.iter().all(|r| r.tos == Some(VOICE << 2)));
    client.finish();
    let log = daemon.stop();
    let finals = final_counters(&log);
    let (marked, failed) = (finals[1], finals[4]);
    let c = shaping_counters(&log);
    eprintln!(
        "queue of 50: {} sent, {marked} marked at once of which {failed} failed open (queue full), daemon {c:?}",
        sent.count
    );
    assert_eq!(c.fail_open, 0, "the engine's bound comes first: {log}");
    // Every datagram was either held or sent at once with its mark (conformant, or for want
    // of room).
    assert_eq!(c.held + marked, sent.count as u64, "{log}");
    assert!(failed as f64 > 0.5 * sent.count as f64, "{log}");
}

/// `--shape-max-delay-ms 300`: at ten times the rate for 2 s, no datagram waits much longer
/// than 300 ms; one that would is sent at once with the flow's DSCP and counted as a shaping
/// fail-open; and those refused do not count against the rate, so the held share still leaves
/// at the rate (were they charged, the bucket would run seconds ahead and after the first
/// 300 ms nothing would be held at all).
#[test]
fn max_delay_sends_at_once_without_charging_the_rate() {
    if !live() {
        return;
    }
    let seconds = 2.0;
    let cap = Duration::from_millis(300);
    let net = Net::new();
    let exe = build_client(&net);
    let daemon = Daemon::start_with(
        &net,
        &DaemonOptions::default(),
        &["--shape-max-delay-ms", "300"],
    );
    let port = 8304;
    let rx = Receiver::start(&net, net.receiver_addr(false, port));
    let mut client = CClient::start(&net, &exe, &daemon, port, 0, seconds);
    let sent = sent(&client.expect("SENT ", Duration::from_secs(20)));
    no_failures(&client);
    // Nothing waits past the cap: all of it arrives within it (and some slack) of the end.
    assert!(
        rx.wait_for(sent.count, cap + Duration::from_secs(1)),
        "only {} of {} arrived",
        rx.snapshot().len(),
        sent.count
    );
    let all = rx.snapshot();
    each_once(&all, sent.count);
    assert!(all.iter().all(|r| r.tos == Some(VOICE << 2)), "all marked");
    let delays: Vec<u64> = all.iter().map(|r| r.recv_ns - r.sent_ns).collect();
    let longest = delays.iter().copied().max().unwrap_or(0);
    // The cap plus scheduling slack on a shared machine.
    assert!(
        longest < (cap + Duration::from_millis(200)).as_nanos() as u64,
        "a datagram waited {} ms",
        longest / 1_000_000
    );
    // Held (> 20 ms late) datagrams leave at the rate: ~47 per second over the send window
    // and the cap after it.
    let held = delays.iter().filter(|d| **d > 20_000_000).count() as f64;
    let per_second = RATE as f64 / BITS;
    let window = (sent.last_ns - sent.first_ns) as f64 / 1e9;
    assert!(
        held >= 0.8 * per_second * window && held <= 1.3 * per_second * (window + 0.3),
        "{held} held in {window:.2} s at {per_second:.1}/s"
    );
    client.command("remove");
    client.expect("REMOVED ", Duration::from_secs(5));
    client.finish();
    let log = daemon.stop();
    let finals = final_counters(&log);
    let failed = finals[4];
    eprintln!(
        "max delay 300 ms: {} sent, {held} held, {failed} sent at once past the cap, longest wait {} ms",
        sent.count,
        longest / 1_000_000
    );
    // At ten times the rate most datagrams would wait longer than the cap.
    assert!(failed as f64 > 0.5 * sent.count as f64, "{log}");
}

/// An administrator rule with `throttle_bps` (rules file) shapes an application that never
/// called the QOS2 API: a plain UDP socket sending at 10× the rule's rate to a port of the
/// rule's range is received at the rate ± 5 %, in order, every datagram with the rule's DSCP;
/// removing the rule (`qosmarkctl rules remove`, here through `qosmark::Client`) releases the
/// held rest at once.
#[test]
fn rule_throttle_shapes_an_unregistered_application() {
    if !live() {
        return;
    }
    let seconds = 4.0;
    let net = Net::new();
    let rules = format!(
        "[[rule]]\nname = \"bulk\"\nprotocol = \"udp\"\nremote_port = \"8400-8410\"\ndscp = 10\nthrottle_bps = {RATE}\n"
    );
    let daemon = Daemon::start_with(
        &net,
        &DaemonOptions {
            rules: Some(rules),
            keep_state: false,
        },
        DAEMON_ARGS,
    );
    let dst = net.receiver_addr(false, 8405);
    let rx = Receiver::start(&net, dst);
    let src = net.sender_addr(false, 0);
    let sock = in_ns(&net.sender, move || {
        let s = UdpSocket::bind(src).unwrap();
        s.connect(dst).unwrap();
        s
    });
    // Held packets stay charged to the socket: room for all of them.
    let big: libc::c_int = 64 << 20;
    // SAFETY: an int option from a live local on our own socket.
    let ret = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&raw const big).cast(),
            4,
        )
    };
    assert_eq!(ret, 0);
    let interval = Duration::from_secs_f64(BITS / (FACTOR * RATE as f64));
    let count = (seconds / interval.as_secs_f64()) as u32;
    let start = Instant::now();
    let mut msg = [0xa7u8; SIZE];
    for seq in 0..count {
        if let Some(d) = (start + interval * seq).checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        msg[..4].copy_from_slice(&seq.to_ne_bytes());
        msg[4..12].copy_from_slice(&mono_ns().to_ne_bytes());
        sock.send(&msg).unwrap();
    }
    let first = rx
        .snapshot()
        .first()
        .map(|r| r.recv_ns)
        .expect("nothing received");
    let window_ns = (seconds * 1e9) as u64;
    while mono_ns() < first + window_ns + 50_000_000 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = rx.snapshot();
    let bits: f64 = seen
        .iter()
        .filter(|r| r.recv_ns < first + window_ns)
        .map(|r| ((r.len + 28) * 8) as f64)
        .sum();
    let rate = bits / seconds;
    let err = (rate - RATE as f64) / RATE as f64;
    let held = count as usize - seen.len();
    eprintln!(
        "rule throttle: {count} sent, {rate:.0} bit/s over {seconds} s ({:+.2} %), {held} held",
        err * 100.0
    );
    assert!(err.abs() <= 0.05, "rate {rate:.0} bit/s, want {RATE} ± 5 %");
    assert!(held as f64 > 0.8 * f64::from(count), "only {held} held");
    let admin = qosmark::Client::connect_unix(&daemon.socket).unwrap();
    let removed_ns = mono_ns();
    admin
        .remove_rule(qosmark_engine::abi::heapless_name::RuleName::try_new("bulk").unwrap())
        .unwrap();
    assert!(
        rx.wait_for(count as usize, Duration::from_secs(5)),
        "after removing the rule only {} of {count} arrived",
        rx.snapshot().len()
    );
    std::thread::sleep(Duration::from_millis(100));
    let all = rx.snapshot();
    let last = all.iter().map(|r| r.recv_ns).max().unwrap();
    eprintln!(
        "rule throttle: the last held datagram arrived {:.1} ms after the rule's removal",
        last.saturating_sub(removed_ns) as f64 / 1e6
    );
    assert!(last.saturating_sub(removed_ns) < 1_000_000_000);
    let seqs: Vec<u32> = all.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (0..count).collect::<Vec<_>>(),
        "every datagram once, in order"
    );
    assert!(
        all.iter().all(|r| r.tos == Some(10 << 2)),
        "every datagram with the rule's DSCP 10"
    );
    drop(admin);
    let log = daemon.stop();
    let c = shaping_counters(&log);
    assert_eq!(c.fail_open, 0, "{log}");
    assert!(c.early as usize + 20 >= held, "{log}");
}

/// The conformant datagrams of a token bucket of rate [`RATE`] and depth one 1,500-byte
/// packet over the send times in `rx` (GCRA: conformant when `t ≥ TAT − τ`, then
/// `TAT = max(TAT, t) + T(L)`; a non-conformant packet leaves `TAT` alone).
fn reference_conformant(rx: &[Rx]) -> usize {
    let mut sends: Vec<(u64, usize)> = rx.iter().map(|r| (r.sent_ns, r.len + 28)).collect();
    sends.sort_unstable();
    let t_of = |bytes: usize| (bytes as f64 * 8.0 * 1e9 / RATE as f64).ceil();
    let tau = t_of(1500);
    let mut tat = 0.0f64;
    let mut conformant = 0;
    for (t, bytes) in sends {
        let t = t as f64;
        if t >= tat - tau {
            conformant += 1;
            tat = tat.max(t) + t_of(bytes);
        }
    }
    conformant
}

/// SIGTERM while packets are held: the daemon sends every one of them (marked, in order)
/// before it unbinds the queue, and says so in its exit counters.
#[test]
fn sigterm_releases_held_packets() {
    if !live() {
        return;
    }
    let net = Net::new();
    let exe = build_client(&net);
    let daemon = Daemon::start_with(&net, &DaemonOptions::default(), DAEMON_ARGS);
    let port = 8302;
    let rx = Receiver::start(&net, net.receiver_addr(false, port));
    let mut client = CClient::start(&net, &exe, &daemon, port, 0, 2.0);
    let sent = sent(&client.expect("SENT ", Duration::from_secs(20)));
    no_failures(&client);
    let before = rx.snapshot().len();
    let log = daemon.stop();
    assert!(
        rx.wait_for(sent.count, Duration::from_secs(3)),
        "after SIGTERM only {} of {} arrived",
        rx.snapshot().len(),
        sent.count
    );
    std::thread::sleep(Duration::from_millis(100));
    let all = rx.snapshot();
    let seqs: Vec<u32> = all.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (0..sent.count as u32).collect::<Vec<_>>());
    assert!(all.iter().all(|r| r.tos == Some(VOICE << 2)));
    let c = shaping_counters(&log);
    eprintln!(
        "SIGTERM: {} held when stopped, daemon {c:?}",
        sent.count - before
    );
    // Between the receiver's count and the signal being handled (iptables runs first) a
    // few more leave on time: at most one second's worth at the rate.
    let per_second = (RATE as f64 / BITS) as usize + 1;
    assert!(
        c.at_exit as usize + per_second >= sent.count - before && c.at_exit > 0,
        "{log}"
    );
    assert_eq!(c.held, c.on_time + c.early + c.at_exit, "{log}");
    drop(client);
}

/// `QOSUseNonConformantMarkings`: nothing waits; the conformant share carries DSCP 56, the
/// excess the non-conformant DSCP the flow reports (0 by default).
///
/// Oracle: a token bucket computed here from the send times the sender stamped into each
/// datagram (rate R, depth one 1,500-byte packet — the engine's documented depth —, a
/// non-conformant packet takes nothing), independent of the daemon's code. It differs from
/// the daemon's by the queueing jitter between send and classification (tens of ms on a
/// loaded machine, ≈ 1-3 datagrams at 47/s), so the conformant count must be the oracle's
/// ± (5 % + 3 datagrams); it is also printed next to the plain `R·T` expectation (the sender
/// may stall on a loaded machine, and a stalled sender's unused rate is lost, not saved).
#[test]
fn nonconformant_marks_the_excess() {
    if !live() {
        return;
    }
    let seconds = 5.0;
    let net = Net::new();
    let exe = build_client(&net);
    let daemon = Daemon::start_with(&net, &DaemonOptions::default(), DAEMON_ARGS);
    let port = 8301;
    let rx = Receiver::start(&net, net.receiver_addr(false, port));
    let mut client = CClient::start(&net, &exe, &daemon, port, 2, seconds);
    let nonconformant: u8 = client.expect("NONCONFORMANT ", Duration::from_secs(10))[0]
        .parse()
        .unwrap();
    assert_eq!(nonconformant, 0, "the default non-conformant DSCP");
    let sent = sent(&client.expect("SENT ", Duration::from_secs_f64(seconds + 20.0)));
    no_failures(&client);
    assert!(
        rx.wait_for(sent.count, Duration::from_secs(2)),
        "only {} of {} arrived",
        rx.snapshot().len(),
        sent.count
    );
    std::thread::sleep(Duration::from_millis(100));
    let all = rx.snapshot();
    let seqs: Vec<u32> = all.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (0..sent.count as u32).collect::<Vec<_>>());
    let mut delays: Vec<u64> = all.iter().map(|r| r.recv_ns - r.sent_ns).collect();
    delays.sort_unstable();
    let p99 = delays[delays.len() * 99 / 100] as f64 / 1e6;
    let max = *delays.last().unwrap() as f64 / 1e6;
    let conformant = all.iter().filter(|r| r.tos == Some(VOICE << 2)).count();
    let excess = all
        .iter()
        .filter(|r| r.tos == Some(nonconformant << 2))
        .count();
    let duration = (sent.last_ns - sent.first_ns) as f64 / 1e9;
    let plain = RATE as f64 * duration / BITS;
    let expected = reference_conformant(&all) as f64;
    eprintln!(
        "non-conformant: {} sent in {duration:.3} s, {conformant} conformant (oracle {expected}, R·T {plain:.1}), {excess} non-conformant, delay p99 {p99:.2} ms, max {max:.2} ms",
        sent.count
    );
    assert_eq!(
        conformant + excess,
        sent.count,
        "every datagram has one of the two marks"
    );
    assert!(
        (conformant as f64 - expected).abs() <= 0.05 * expected + 3.0,
        "conformant {conformant}, expected {expected:.1}"
    );
    // Nothing delayed by the shaper. Shaped at 10× its rate, the datagrams of the last tenth
    // would wait ≈ 0.9 × 5 s = 4.5 s and the delay would grow steadily; here it must stay
    // flat: the median delay of the last tenth within 300 ms of the first tenth's, and no
    // datagram over 1.5 s (generous: on this shared 2-core machine a loaded moment stalls
    // the receiver thread for a few hundred ms).
    let by_seq: Vec<u64> = all.iter().map(|r| r.recv_ns - r.sent_ns).collect();
    let tenth = by_seq.len() / 10;
    let median = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v[v.len() / 2] as f64 / 1e6
    };
    let (head, tail) = (
        median(&by_seq[..tenth]),
        median(&by_seq[by_seq.len() - tenth..]),
    );
    eprintln!("non-conformant: median delay first tenth {head:.2} ms, last tenth {tail:.2} ms");
    assert!(
        tail - head < 300.0,
        "the delay grows: {head} ms → {tail} ms"
    );
    assert!(max < 1500.0, "a datagram took {max} ms");
    client.command("remove");
    client.expect("REMOVED ", Duration::from_secs(5));
    client.finish();
    daemon.stop();
}

/// Not run by default (`--ignored`): what held packets cost the rest of the traffic. The
/// kernel finds a single verdict's packet by walking its queue from the oldest entry, where
/// held packets sit, and while anything is held every packet gets a single verdict. Measures
/// the daemon's CPU (utime + stime) and the loss of 20,000 unregistered datagrams/s for 3 s,
/// first with nothing held, then with ≈ 16,000 packets of one flow held.
#[test]
#[ignore = "measurement, run explicitly"]
fn held_packets_cost() {
    if !live() {
        return;
    }
    let net = Net::new();
    let exe = build_client(&net);
    let daemon = Daemon::start_with(
        &net,
        &DaemonOptions::default(),
        &["--shape-queue-packets", "16384"],
    );
    let pid = daemon.pid();
    let other = net.receiver_addr(false, 8310);
    let sink = in_ns(&net.receiver, move || UdpSocket::bind(other).unwrap());
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let got = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (g, st) = (Arc::clone(&got), Arc::clone(&stop));
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !st.load(Ordering::SeqCst) {
            if sink.recv(&mut buf).is_ok() {
                g.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let src = net.sender_addr(false, 0);
    let sock = in_ns(&net.sender, move || {
        let s = UdpSocket::bind(src).unwrap();
        s.connect(other).unwrap();
        s
    });
    let phase = |label: &str| {
        let before = got.load(Ordering::Relaxed);
        let (u0, s0) = traffic::cpu_ticks(pid);
        let start = Instant::now();
        let mut sent = 0u64;
        for tick in 0..3000u32 {
            let due = start + Duration::from_millis(u64::from(tick));
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            for _ in 0..20 {
                sock.send(&[0u8; 9]).unwrap();
                sent += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        let (u1, s1) = traffic::cpu_ticks(pid);
        let cpu = ((u1 - u0) + (s1 - s0)) as f64 / traffic::clock_hz() / 3.0 * 100.0;
        let lost = sent - (got.load(Ordering::Relaxed) - before);
        eprintln!(
            "{label}: {sent} datagrams in {:.2} s, {lost} lost, daemon CPU {cpu:.1} % of one core",
            start.elapsed().as_secs_f64()
        );
    };
    phase("nothing held");
    // One flow: 12 kbit/s (the minimum), 100-byte payloads offered at 1,000× → ≈ 11,700/s
    // for 1.4 s, nearly all held.
    let port = 8311;
    let _rx = Receiver::start(&net, net.receiver_addr(false, port));
    let mut client = CClient::start_with(&net, &exe, &daemon, port, 0, 1.4, (12_000, 100, 1000.0));
    let sent = sent(&client.expect("SENT ", Duration::from_secs(20)));
    eprintln!("{} datagrams of the shaped flow sent", sent.count);
    phase("≈ 16,000 held");
    client.command("remove");
    client.expect("REMOVED ", Duration::from_secs(5));
    client.finish();
    stop.store(true, Ordering::SeqCst);
    let log = daemon.stop();
    eprintln!("{}", shaping_counters_line(&log));
}

fn shaping_counters_line(log: &str) -> &str {
    log.lines().find(|l| l.contains("shaping: ")).unwrap_or("")
}
