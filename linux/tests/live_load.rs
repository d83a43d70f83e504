//! The load test: 1,000 concurrent flows × 50 packets/s for 10 s (a `VoIP` gateway at 1,000
//! calls) through `qosmarkd`, with zero loss and zero wrong marks, judged on the receiving
//! side from the TOS / Traffic Class each datagram arrived with (`IP_RECVTOS`,
//! `IPV6_RECVTCLASS`). Half the flows are IPv4, half IPv6; their marks cycle through traffic
//! types and custom DSCP values, and each keeps the ECN bits its application set. The
//! daemon's CPU use over the run is read from `/proc/<pid>/stat` and printed.
//!
//! Its own test binary, so cargo runs it after (not alongside) the other live tests.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_precision_loss,
    clippy::too_many_lines,
    reason = "test code: a panic is a failure"
)]

mod common;
mod traffic;

use common::{in_ns, live, Client, Daemon, DaemonOptions, Net};
use qosmark_engine::abi::{Request, SetFlow, TrafficType};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FLOWS: usize = 1000;
const RATE: u64 = 50;
const SECONDS: u64 = 10;
const TICKS: u64 = RATE * SECONDS;

/// Per flow: how it is registered and the DSCP its packets must carry.
fn plan(i: usize) -> (TrafficType, Option<u32>, u8) {
    match i % 5 {
        0 => (TrafficType::Voice, None, 56),
        1 => (TrafficType::AudioVideo, None, 40),
        2 => (TrafficType::Background, None, 8),
        3 => (TrafficType::Background, Some(46), 46),
        _ => (TrafficType::Voice, Some(26), 26),
    }
}

/// Per-flow receive counts and wrong marks, filled by the receiver threads.
struct Tally {
    received: Vec<AtomicU64>,
    wrong: Vec<AtomicU64>,
    expected_tos: Vec<u8>,
}

/// Reads datagrams `[flow u32][seq u32]` with their TOS until `stop`.
fn receive(sock: &UdpSocket, v6: bool, tally: &Tally, stop: &AtomicBool) {
    traffic::report_tos(sock, v6);
    let mut buf = [0u8; 64];
    loop {
        let Some((_, tos)) = traffic::recv_with_tos(sock, &mut buf) else {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            continue;
        };
        let flow = u32::from_ne_bytes(buf[..4].try_into().unwrap()) as usize;
        tally.received[flow].fetch_add(1, Ordering::Relaxed);
        if tos != Some(tally.expected_tos[flow]) {
            tally.wrong[flow].fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn thousand_flows_fifty_packets_per_second_ten_seconds() {
    if !live() {
        return;
    }
    traffic::raise_fd_limit();
    let net = Net::new();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let dest = [
        net.receiver_addr(false, 9000),
        net.receiver_addr(true, 9000),
    ];
    let tally = Arc::new(Tally {
        received: (0..FLOWS).map(|_| AtomicU64::new(0)).collect(),
        wrong: (0..FLOWS).map(|_| AtomicU64::new(0)).collect(),
        expected_tos: (0..FLOWS)
            .map(|i| (plan(i).2 << 2) | (i % 4) as u8)
            .collect(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let receivers: Vec<_> = dest
        .iter()
        .copied()
        .map(|addr| {
            let sock = in_ns(&net.receiver, move || UdpSocket::bind(addr).unwrap());
            let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
            std::thread::spawn(move || receive(&sock, addr.is_ipv6(), &tally, &stop))
        })
        .collect();
    let binds: Vec<SocketAddr> = (0..2).map(|f| net.sender_addr(f == 1, 0)).collect();
    let socks: Vec<UdpSocket> = in_ns(&net.sender, move || {
        (0..FLOWS)
            .map(|i| {
                let s = UdpSocket::bind(binds[i % 2]).unwrap();
                s.connect(dest[i % 2]).unwrap();
                s
            })
            .collect()
    });
    // A gateway's neighbour caches are warm; resolve ARP / NDP before the clock starts.
    traffic::warm_neighbours(&net.sender, &[net.r4.to_string(), net.r6.to_string()]);
    let mut client = Client::connect(&daemon.socket);
    for (i, s) in socks.iter().enumerate() {
        common::set_tos(s.as_raw_fd(), i % 2 == 1, (i % 4) as u8);
        let (tt, custom, _) = plan(i);
        let flow = client.add_socket(s, None, tt, 0, 0).unwrap();
        if let Some(d) = custom {
            client
                .done(&Request::SetFlow {
                    flow_id: flow,
                    op: SetFlow::OutgoingDscp(d),
                })
                .unwrap();
        }
    }
    assert_eq!(client.status().flows as usize, FLOWS);

    let pid = daemon.pid();
    let cpu_before = traffic::cpu_ticks(pid);
    let start = Instant::now();
    let tick = Duration::from_nanos(1_000_000_000 / RATE);
    for t in 0..TICKS {
        let due = start + tick * u32::try_from(t).unwrap();
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for (i, s) in socks.iter().enumerate() {
            let mut payload = [0u8; 8];
            payload[..4].copy_from_slice(&(i as u32).to_ne_bytes());
            payload[4..].copy_from_slice(&(t as u32).to_ne_bytes());
            s.send(&payload).unwrap();
        }
    }
    let send_time = start.elapsed();
    let total = (FLOWS as u64) * TICKS;
    let deadline = Instant::now() + Duration::from_secs(10);
    let received = || {
        tally
            .received
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    while received() < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu_after = traffic::cpu_ticks(pid);
    let (user, system) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    let cpu = user + system;
    let elapsed = start.elapsed();
    let hz = traffic::clock_hz();
    let cpu_percent = cpu as f64 / hz / elapsed.as_secs_f64() * 100.0;
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    for r in receivers {
        r.join().unwrap();
    }
    let status = client.status();
    eprintln!(
        "load: {total} packets in {:.2} s ({FLOWS} flows x {RATE}/s x {SECONDS} s); qosmarkd CPU {:.1}% of one core ({user} user + {system} system ticks over {:.2} s); engine: {} marked, {} already marked, fail-open {:?}",
        send_time.as_secs_f64(),
        cpu_percent,
        elapsed.as_secs_f64(),
        status.marked,
        status.already_marked,
        status.fail_open
    );
    for fam in 0..2 {
        let got: u64 = (fam..FLOWS)
            .step_by(2)
            .map(|i| tally.received[i].load(Ordering::Relaxed))
            .sum();
        let bad: u64 = (fam..FLOWS)
            .step_by(2)
            .map(|i| tally.wrong[i].load(Ordering::Relaxed))
            .sum();
        eprintln!(
            "family {}: received {got}, wrong {bad}",
            if fam == 0 { "v4" } else { "v6" }
        );
    }
    eprintln!("status: {status:?}");
    let lost: Vec<(usize, u64)> = tally
        .received
        .iter()
        .enumerate()
        .map(|(i, c)| (i, c.load(Ordering::Relaxed)))
        .filter(|(_, c)| *c != TICKS)
        .collect();
    assert!(
        lost.is_empty(),
        "flows with loss (flow, received of {TICKS}): {:?}",
        &lost[..lost.len().min(10)]
    );
    let wrong: u64 = tally.wrong.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    assert_eq!(wrong, 0, "packets with a wrong mark");
    assert_eq!(status.fail_open.iter().sum::<u64>(), 0);
    assert!(status.marked >= total, "{status:?}");
    drop(client);
    daemon.stop();
}
