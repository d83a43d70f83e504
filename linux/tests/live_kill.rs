//! `qosmarkd` killed with SIGKILL mid-traffic: the traffic keeps flowing (the `NFQUEUE`
//! rules carry `--queue-bypass`, so with no program bound to the queue the kernel accepts the
//! packets), unmarked from the moment the daemon is dead; a restart removes the stale rules the
//! dead daemon left, installs its own, and once the application registers its sockets again
//! (flows die with their connections) the packets are marked again.
//!
//! 200 flows (half IPv4, half IPv6) × 50 datagrams/s from one sender thread, judged per
//! datagram on the receiving side as in the soak (see `traffic/mod.rs`): every datagram carries
//! the TOS it must arrive with, or "unchecked" while the expectation is changing (between
//! "about to kill" and "dead", and between "restarting" and "registered again"). Loss is
//! counted over the whole run, across the kill: nothing sent before the SIGKILL or after the
//! death of the daemon's last thread may be lost. What the kernel holds in the queue while the
//! daemon dies is dropped by the kernel (`nfnetlink_queue` reinjects a destroyed queue's packets
//! with `NF_DROP`; `--queue-bypass` only covers packets that find no queue), so datagrams sent
//! in that window (typically one 200-datagram tick, often none) are reported, not failed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::similar_names,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::too_many_lines,
    reason = "test code: a panic is a failure"
)]

mod common;
mod traffic;

use common::{in_ns, live, Client, Daemon, DaemonOptions, Net};
use qosmark_engine::abi::TrafficType;
use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use traffic::{datagram, Tally, UNCHECKED};

const FLOWS: usize = 200;
const RATE: u64 = 50;

/// What the datagrams sent now must carry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// DSCP 56 (Voice) with the application's ECN bits.
    Marked,
    /// Exactly the application's TOS.
    Unmarked,
    /// Not judged.
    Changing,
}

struct Sender {
    phase: Phase,
    sent: u64,
}

fn ecn(flow: usize) -> u8 {
    (flow % 4) as u8
}

/// The daemon's rules in the sender namespace, per tool.
fn our_rules(ns: &str) -> Vec<(String, usize)> {
    ["iptables", "ip6tables"]
        .iter()
        .map(|tool| {
            let out = Command::new("ip")
                .args(["netns", "exec", ns, tool, "-t", "mangle", "-S", "OUTPUT"])
                .output()
                .unwrap();
            let listing = String::from_utf8_lossy(&out.stdout).into_owned();
            let n = listing.lines().filter(|l| l.contains("qosmarkd")).count();
            ((*tool).to_owned(), n)
        })
        .collect()
}

/// Waits until every thread of `pid` has exited, without reaping it (the harness's `Child`
/// does that later). The leader alone turning into a zombie is not enough: the other threads
/// (and with the last of them the netlink socket) may still be going.
fn wait_dead(pid: u32) {
    // SAFETY: siginfo_t is plain data.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is writable; WNOWAIT leaves the child to be reaped by its `Child`.
    let ret = unsafe {
        libc::waitid(
            libc::P_PID,
            pid,
            &raw mut info,
            libc::WEXITED | libc::WNOWAIT,
        )
    };
    assert_eq!(ret, 0, "waitid: {}", std::io::Error::last_os_error());
}

#[test]
fn sigkill_mid_traffic_fails_open_and_restart_cleans_up() {
    if !live() {
        return;
    }
    let net = Net::new();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let pid = daemon.pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "qosmarkd", "the harness's child is the daemon");
    let tally = Arc::new(Tally::recording(FLOWS));
    let stop = Arc::new(AtomicBool::new(false));
    let dest = [
        net.receiver_addr(false, 9000),
        net.receiver_addr(true, 9000),
    ];
    let receivers: Vec<_> = dest
        .iter()
        .copied()
        .map(|addr| {
            let sock = in_ns(&net.receiver, move || UdpSocket::bind(addr).unwrap());
            let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
            std::thread::spawn(move || traffic::receive(&sock, addr.is_ipv6(), &tally, &stop))
        })
        .collect();
    let binds = [net.sender_addr(false, 0), net.sender_addr(true, 0)];
    let socks: Arc<Vec<UdpSocket>> = Arc::new(in_ns(&net.sender, move || {
        (0..FLOWS)
            .map(|i| {
                let s = UdpSocket::bind(binds[i % 2]).unwrap();
                s.connect(dest[i % 2]).unwrap();
                s
            })
            .collect()
    }));
    for (i, s) in socks.iter().enumerate() {
        traffic::set_app_tos(s, i % 2 == 1, ecn(i));
    }
    traffic::warm_neighbours(&net.sender, &[net.r4.to_string(), net.r6.to_string()]);
    let register = |client: &mut Client| {
        for s in socks.iter() {
            client
                .add_socket(s, None, TrafficType::Voice, 0, 0)
                .unwrap();
        }
    };
    let mut client = Client::connect(&daemon.socket);
    register(&mut client);

    let state = Arc::new(Mutex::new(Sender {
        phase: Phase::Marked,
        sent: 0,
    }));
    let sending = Arc::new(AtomicBool::new(true));
    let sender = {
        let (state, sending, socks) =
            (Arc::clone(&state), Arc::clone(&sending), Arc::clone(&socks));
        std::thread::spawn(move || {
            let start = Instant::now();
            let tick = Duration::from_nanos(1_000_000_000 / RATE);
            let mut t = 0u32;
            while sending.load(Ordering::SeqCst) {
                if let Some(wait) = (start + tick * t).checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let mut st = state.lock().unwrap();
                for (i, s) in socks.iter().enumerate() {
                    let expect = match st.phase {
                        Phase::Marked => (56 << 2) | ecn(i),
                        Phase::Unmarked => ecn(i),
                        Phase::Changing => UNCHECKED,
                    };
                    s.send(&datagram(i as u32, t, expect)).unwrap();
                }
                st.sent += 1;
                t += 1;
            }
        })
    };
    // Makes the datagrams unchecked and waits until every one sent before has arrived.
    let begin_change = || {
        let sent = {
            let mut st = state.lock().unwrap();
            st.phase = Phase::Changing;
            st.sent
        };
        for f in 0..FLOWS {
            assert!(
                tally.wait_received(f, sent, Duration::from_secs(5)),
                "flow {f}: datagrams sent before the change did not arrive"
            );
        }
    };
    let set_phase = |p: Phase| state.lock().unwrap().phase = p;
    let phase_received = |f: usize| tally.received(f);

    // 1. Marked traffic through the daemon.
    std::thread::sleep(Duration::from_secs(1));
    let marked_before = Tally::sum(&tally.marked);
    assert!(marked_before > 0, "nothing marked before the kill");

    // 2. SIGKILL mid-traffic.
    begin_change();
    let at_kill: Vec<u64> = (0..FLOWS).map(phase_received).collect();
    let tick_at_kill = state.lock().unwrap().sent;
    // SAFETY: signalling our own child (the daemon) by pid.
    let ret = unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGKILL) };
    assert_eq!(ret, 0);
    let killed = Instant::now();
    wait_dead(pid);
    let kill_time = killed.elapsed();
    set_phase(Phase::Unmarked);
    let tick_at_death = state.lock().unwrap().sent;
    let stale = our_rules(&net.sender);
    assert!(
        stale.iter().all(|(_, n)| *n == 2),
        "the killed daemon's rules stay (TCP + UDP per family): {stale:?}"
    );
    let marked_at_death = Tally::sum(&tally.marked);
    std::thread::sleep(Duration::from_secs(1));
    // Every datagram sent since the death arrived unmarked (judged per datagram); the
    // receiver counts marked arrivals too: none after the death's in-flight ones.
    let after_death: u64 = (0..FLOWS).map(|f| phase_received(f) - at_kill[f]).sum();
    assert!(after_death > 0, "traffic stopped after the kill");
    drop(daemon);
    drop(client);

    // 3. Restart: stale rules removed, its own installed, the socket path reused.
    let marked_while_dead = Tally::sum(&tally.marked) - marked_at_death;
    let tick_at_restart = state.lock().unwrap().sent;
    begin_change();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let log = daemon.log_text();
    assert!(
        log.contains("left by a previous run: removed 2 IPv4 rule(s)")
            && log.contains("left by a previous run: removed 2 IPv6 rule(s)"),
        "restart log does not report the stale rules removed:\n{log}"
    );
    let fresh = our_rules(&net.sender);
    assert!(
        fresh.iter().all(|(_, n)| *n == 2),
        "after the restart exactly the new rules: {fresh:?}"
    );
    let mut client = Client::connect(&daemon.socket);
    register(&mut client);
    set_phase(Phase::Marked);
    std::thread::sleep(Duration::from_secs(1));
    let marked_restart = {
        let st = state.lock().unwrap();
        st.sent
    };

    // 4. Stop, count.
    sending.store(false, Ordering::SeqCst);
    sender.join().unwrap();
    let sent = state.lock().unwrap().sent;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Tally::sum(&tally.received) < sent * FLOWS as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    for r in receivers {
        r.join().unwrap();
    }
    let status = client.status();
    let received = Tally::sum(&tally.received);
    let wrong = Tally::sum(&tally.wrong);
    eprintln!(
        "kill: {FLOWS} flows x {RATE}/s, {sent} ticks ({marked_restart} at the end of the marked phase after restart), {} datagrams sent, {received} received, {} judged, {wrong} wrong; dead {kill_time:?} after SIGKILL; {marked_at_death} marked before the death, {marked_while_dead} after it (in flight at the kill); restarted daemon: {} marked, fail-open {:?}",
        sent * FLOWS as u64,
        Tally::sum(&tally.checked),
        status.marked,
        status.fail_open
    );
    let mut missing: std::collections::BTreeMap<u32, usize> = std::collections::BTreeMap::new();
    for f in 0..FLOWS {
        for s in tally.missing(f, u32::try_from(sent).unwrap()) {
            *missing.entry(s).or_default() += 1;
        }
    }
    eprintln!(
        "kill: ticks: {tick_at_kill} sent when SIGKILL was sent, {tick_at_death} at death, {tick_at_restart} at restart; lost datagrams per tick: {missing:?}"
    );
    let examples = tally.examples.lock().unwrap().clone();
    assert_eq!(wrong, 0, "wrong marks: {examples:#?}");
    // The kernel drops what sits in a queue whose program dies (`nfnetlink_queue` reinjects a
    // destroyed instance's packets with NF_DROP): datagrams still waiting for their verdict
    // when the daemon dies may be lost, nothing else. Those are the ones sent between SIGKILL
    // and the death of the daemon's last thread, plus the last tick sent before SIGKILL, whose
    // burst of datagrams may still be in the queue (CI saw exactly that tick lost once).
    let window_start = tick_at_kill.saturating_sub(1);
    let outside: Vec<(&u32, &usize)> = missing
        .iter()
        .filter(|(t, _)| u64::from(**t) < window_start || u64::from(**t) >= tick_at_death)
        .collect();
    assert!(
        outside.is_empty(),
        "datagrams lost outside the dying window (ticks {window_start}..{tick_at_death}): (tick, flows) {outside:?}"
    );
    let lost_total: usize = missing.values().sum();
    eprintln!(
        "kill: {lost_total} datagrams lost, all still queued or sent while the daemon was dying ({} ticks x {FLOWS} flows at most)",
        tick_at_death - window_start
    );
    assert!(status.marked > 0, "{status:?}");
    assert_eq!(status.fail_open.iter().sum::<u64>(), 0, "{status:?}");
    drop(client);
    daemon.stop();
}
