//! Throughput of `qosmarkd` in the network-namespace setup, side by side with the kernel's own
//! `iptables -t mangle -j DSCP --set-dscp` on the same traffic, and with no marking at all (the
//! ceiling of this harness: one sender thread, two receiver threads, one veth pair, on the
//! same cores). A benchmark, not a check: `#[ignore]`d, run explicitly —
//!
//! ```sh
//! cargo build --release -p qosmark-linux --bin qosmarkd
//! QOSMARKD=$PWD/target/release/qosmarkd cargo test -p qosmark-linux --test live_bench -- --ignored --nocapture
//! ```
//!
//! Traffic: 1,000 connected UDP sockets (half IPv4, half IPv6), datagrams round-robin over
//! them, paced in 1 ms ticks at each step's rate (`QOSMARK_BENCH_RATES`, packets/s,
//! comma-separated; `QOSMARK_BENCH_STEP_SECONDS` per step, default 3). For each mode the
//! rate steps up until a step loses a datagram or delivers one with the wrong TOS (the
//! kernel's fail-open when the queue is full shows up as unmarked datagrams); the last clean
//! step is the sustained zero-loss rate. qosmarkd marks by registered socket flows (1,000
//! flows, DSCP 46), iptables by one rule (DSCP 46 on all UDP). Printed per step: achieved
//! send rate, received, lost, wrong TOS, the daemon's CPU (`/proc/<pid>/stat`), the kernel's
//! queue drops (`/proc/net/netfilter/nfnetlink_queue`) and the receiver's UDP buffer drops.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::similar_names,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::too_many_lines,
    reason = "benchmark code: a panic is a failure"
)]

mod common;
mod traffic;

use common::{in_ns, live, Client, Daemon, DaemonOptions, Net};
use qosmark_engine::abi::{Request, SetFlow, TrafficType};
use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use traffic::{datagram, Tally};

const FLOWS: usize = 1000;
const DSCP: u8 = 46;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Plain,
    Iptables,
    Qosmarkd,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "no marking",
            Mode::Iptables => "iptables -j DSCP",
            Mode::Qosmarkd => "qosmarkd",
        }
    }
}

struct Row {
    mode: Mode,
    target: u64,
    achieved: f64,
    sent: u64,
    received: u64,
    wrong: u64,
    cpu_percent: Option<f64>,
    queue_drops: u64,
    rcvbuf_drops: u64,
}

fn ns_read(ns: &str, path: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", path])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `queue_dropped` + `user_dropped` over the sender namespace's queues.
fn queue_drops(ns: &str) -> u64 {
    ns_read(ns, "/proc/net/netfilter/nfnetlink_queue")
        .lines()
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            f.get(5).copied().unwrap_or(0) + f.get(6).copied().unwrap_or(0)
        })
        .sum()
}

/// UDP receive-buffer drops (IPv4 + IPv6) in the receiver namespace.
fn rcvbuf_drops(ns: &str) -> u64 {
    let snmp = ns_read(ns, "/proc/net/snmp");
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let v4 = match (lines.next(), lines.next()) {
        (Some(names), Some(values)) => names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "RcvbufErrors")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(0),
        _ => 0,
    };
    let v6 = ns_read(ns, "/proc/net/snmp6")
        .lines()
        .find(|l| l.starts_with("Udp6RcvbufErrors"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    v4 + v6
}

fn rates() -> Vec<u64> {
    std::env::var("QOSMARK_BENCH_RATES")
        .unwrap_or_else(|_| "25000,50000,75000,100000,150000,200000,300000".into())
        .split(',')
        .map(|r| r.trim().parse().expect("QOSMARK_BENCH_RATES: numbers"))
        .collect()
}

fn step_seconds() -> u64 {
    std::env::var("QOSMARK_BENCH_STEP_SECONDS")
        .ok()
        .map_or(3, |s| s.parse().expect("QOSMARK_BENCH_STEP_SECONDS"))
}

fn run_mode(mode: Mode, rows: &mut Vec<Row>) {
    let net = Net::new();
    let tally = Arc::new(Tally::new(FLOWS));
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
    let socks: Vec<UdpSocket> = in_ns(&net.sender, move || {
        (0..FLOWS)
            .map(|i| {
                let s = UdpSocket::bind(binds[i % 2]).unwrap();
                s.connect(dest[i % 2]).unwrap();
                s
            })
            .collect()
    });
    traffic::warm_neighbours(&net.sender, &[net.r4.to_string(), net.r6.to_string()]);
    let mut daemon = None;
    let mut client = None;
    match mode {
        Mode::Plain => {}
        Mode::Iptables => {
            for tool in ["iptables", "ip6tables"] {
                let dscp = DSCP.to_string();
                let ok = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &net.sender,
                        tool,
                        "-w",
                        "-t",
                        "mangle",
                        "-A",
                        "OUTPUT",
                        "-p",
                        "udp",
                        "-j",
                        "DSCP",
                        "--set-dscp",
                        &dscp,
                    ])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "{tool} -j DSCP");
            }
        }
        Mode::Qosmarkd => {
            let d = Daemon::start(&net, &DaemonOptions::default());
            let mut c = Client::connect(&d.socket);
            for s in &socks {
                let flow = c
                    .add_socket(s, None, TrafficType::Background, 0, 0)
                    .unwrap();
                c.done(&Request::SetFlow {
                    flow_id: flow,
                    op: SetFlow::OutgoingDscp(u32::from(DSCP)),
                })
                .unwrap();
            }
            daemon = Some(d);
            client = Some(c);
        }
    }
    let expect = if mode == Mode::Plain { 0 } else { DSCP << 2 };
    let pid = daemon.as_ref().map(Daemon::pid);
    let mut seq: u32 = 0;
    for target in rates() {
        let recv0 = Tally::sum(&tally.received);
        let wrong0 = Tally::sum(&tally.wrong);
        let cpu0 = pid.map(traffic::cpu_ticks);
        let q0 = queue_drops(&net.sender);
        let r0 = rcvbuf_drops(&net.receiver);
        let duration = Duration::from_secs(step_seconds());
        let start = Instant::now();
        let mut sent: u64 = 0;
        let mut next = 0usize;
        loop {
            let elapsed = start.elapsed();
            if elapsed >= duration {
                break;
            }
            let due = (target as f64 * elapsed.as_secs_f64()) as u64;
            if sent >= due {
                std::thread::sleep(Duration::from_micros(
                    1000 - u64::from(elapsed.subsec_micros() % 1000),
                ));
                continue;
            }
            while sent < due {
                socks[next]
                    .send(&datagram(next as u32, seq, expect))
                    .unwrap();
                next = (next + 1) % FLOWS;
                seq = seq.wrapping_add(1);
                sent += 1;
            }
        }
        let send_time = start.elapsed();
        // Settle: until everything arrived or nothing moved for 1 s.
        let mut last = Tally::sum(&tally.received);
        let mut still = Instant::now();
        while last - recv0 < sent && still.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(20));
            let now = Tally::sum(&tally.received);
            if now != last {
                last = now;
                still = Instant::now();
            }
        }
        let measured = start.elapsed();
        let cpu_percent = pid.zip(cpu0).map(|(p, c0)| {
            let c1 = traffic::cpu_ticks(p);
            let ticks = (c1.0 + c1.1) - (c0.0 + c0.1);
            ticks as f64 / traffic::clock_hz() / measured.as_secs_f64() * 100.0
        });
        let row = Row {
            mode,
            target,
            achieved: sent as f64 / send_time.as_secs_f64(),
            sent,
            received: Tally::sum(&tally.received) - recv0,
            wrong: Tally::sum(&tally.wrong) - wrong0,
            cpu_percent,
            queue_drops: queue_drops(&net.sender) - q0,
            rcvbuf_drops: rcvbuf_drops(&net.receiver) - r0,
        };
        print_row(&row);
        let clean = row.received == row.sent && row.wrong == 0;
        let generator_limited = row.achieved < 0.95 * target as f64;
        rows.push(row);
        if !clean || generator_limited {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for r in receivers {
        r.join().unwrap();
    }
    if let (Some(d), Some(mut c)) = (daemon, client) {
        eprintln!("qosmarkd status: {:?}", c.status());
        drop(c);
        d.stop();
    }
}

fn print_row(r: &Row) {
    eprintln!(
        "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
        r.mode.name(),
        r.target,
        r.achieved,
        r.sent,
        r.received,
        r.sent.saturating_sub(r.received),
        r.wrong,
        r.cpu_percent.map_or("-".into(), |c| format!("{c:.1}")),
        r.queue_drops,
        r.rcvbuf_drops
    );
}

#[test]
#[ignore = "benchmark: run explicitly with --ignored (see linux/README.md)"]
fn throughput_qosmarkd_vs_iptables_dscp() {
    if !live() {
        return;
    }
    traffic::raise_fd_limit();
    eprintln!(
        "daemon: {}",
        std::env::var("QOSMARKD").unwrap_or_else(|_| env!("CARGO_BIN_EXE_qosmarkd").into())
    );
    eprintln!(
        "| mode | target pps | sent pps | sent | received | lost | wrong TOS | daemon CPU % of one core | queue drops | receiver buffer drops |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for mode in [Mode::Plain, Mode::Iptables, Mode::Qosmarkd] {
        run_mode(mode, &mut rows);
    }
    eprintln!("sustained with zero loss and zero wrong TOS (highest clean step):");
    for mode in [Mode::Plain, Mode::Iptables, Mode::Qosmarkd] {
        let best = rows
            .iter()
            .filter(|r| r.mode == mode && r.received == r.sent && r.wrong == 0)
            .map(|r| r.achieved)
            .fold(0.0f64, f64::max);
        let first_bad = rows
            .iter()
            .find(|r| r.mode == mode && (r.received != r.sent || r.wrong != 0))
            .map_or("none".into(), |r| format!("{} pps", r.target));
        eprintln!(
            "  {}: {best:.0} pps (first failing step: {first_bad})",
            mode.name()
        );
    }
    // A benchmark must at least have measured something for every mode.
    for mode in [Mode::Plain, Mode::Iptables, Mode::Qosmarkd] {
        assert!(rows.iter().any(|r| r.mode == mode), "{mode:?} not measured");
    }
}
