//! The soak: churn on `qosmarkd` under 1,000-call traffic, with zero lost packets, zero wrong
//! marks and flat memory. `QOSMARK_SOAK_SECONDS` sets the length (default 120; CI runs the
//! default, the 30-minute figure in `linux/README.md` is 1800).
//!
//! Traffic, 50 datagrams/s per flow from one sender thread:
//! * 1,000 stable flows (half IPv4, half IPv6) registered once on one handle, each with a
//!   fixed mark (traffic types and custom DSCP values, the application's ECN bits kept);
//! * 20 unregistered "rule" sockets to receiver port 9100, marked only by an administrator
//!   rule whose DSCP the churn changes;
//! * 16 "churn" slots with fixed local ports 9300..9315 whose sockets are created, registered,
//!   changed, removed and closed over and over.
//!
//! Churn, one controller thread, in cycles: open a handle, register four sockets, change one
//! flow's DSCP, remove one socket and add it back, remove one flow, change one flow's traffic
//! type, reload the rules (alternately `ReplaceRules` on the control socket and
//! `qosmarkctl rules load`, 101 rules each time, the port-9100 rule's DSCP cycling 10 → 18 →
//! absent), close the handle (the daemon removes its flows), close the sockets.
//!
//! Every datagram carries the exact TOS it must arrive with. The expectation is unambiguous
//! because every state change goes through [`Controller::transition`]: the affected flows'
//! datagrams are sent as "unchecked" from that moment, the controller waits until the
//! receiver has every datagram sent before (so each was classified under the old state), makes
//! the change, waits for its answer (after which every new datagram is classified under the new
//! state) and only then sets the new expectation. A handle close has no answer: the controller
//! polls `QueryStatus` until the handle and its flows are gone.
//!
//! Memory: the daemon's `VmRSS` is sampled from `/proc` every 2 s; after a warm-up (a quarter of
//! the run, at most 60 s) it may grow by at most [`RSS_GROWTH_KB`]. Descriptors and threads of
//! the daemon are the same after the churn as before it.
//!
//! Its own test binary, so cargo runs it after (not alongside) the other live tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::similar_names,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::too_many_lines,
    reason = "test code: a panic is a failure"
)]

mod common;
mod traffic;

use common::{in_ns, live, Client, Daemon, DaemonOptions, Net};
use qosmark_engine::abi::heapless_name::RuleName;
use qosmark_engine::abi::{
    Dscp, FlowId, PortRange, Request, RuleAction, RuleProtocol, RuleSpec, SetFlow, TrafficType,
};
use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use traffic::{datagram, Tally, UNCHECKED};

const STABLE: usize = 1000;
const RULE_FLOWS: usize = 20;
const CHURN: usize = 16;
const GROUP: usize = 4;
const FLOWS: usize = STABLE + RULE_FLOWS + CHURN;
const RATE: u64 = 50;
const RULE_PORT: u16 = 9100;
const CHURN_PORT: u16 = 9200;
const CHURN_LOCAL_BASE: u16 = 9300;
const FILLER_RULES: u16 = 100;
/// Allowed growth of the daemon's resident set after the warm-up, in KiB.
const RSS_GROWTH_KB: u64 = 2048;
/// How long the receiver may take to deliver what was sent before a change.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

fn seconds() -> u64 {
    std::env::var("QOSMARK_SOAK_SECONDS")
        .ok()
        .map_or(120, |s| s.parse().expect("QOSMARK_SOAK_SECONDS: seconds"))
}

/// How long a flow stays in each state of a churn cycle: `QOSMARK_SOAK_HOLD_MS`, default 100
/// (smaller = more churn per second, for diagnosis).
fn hold() -> Duration {
    Duration::from_millis(std::env::var("QOSMARK_SOAK_HOLD_MS").ok().map_or(100, |s| {
        s.parse().expect("QOSMARK_SOAK_HOLD_MS: milliseconds")
    }))
}

/// Registration and DSCP of stable flow `i`.
fn plan(i: usize) -> (TrafficType, Option<u32>, u8) {
    match i % 5 {
        0 => (TrafficType::Voice, None, 56),
        1 => (TrafficType::AudioVideo, None, 40),
        2 => (TrafficType::Background, None, 8),
        3 => (TrafficType::Background, Some(46), 46),
        _ => (TrafficType::Voice, Some(26), 26),
    }
}

/// The ECN bits the application of flow `flow` sets.
fn ecn(flow: usize) -> u8 {
    (flow % 4) as u8
}

fn tos(dscp: u8, flow: usize) -> u8 {
    (dscp << 2) | ecn(flow)
}

fn type_dscp(tt: TrafficType) -> u8 {
    match tt {
        TrafficType::Voice | TrafficType::Control => 56,
        TrafficType::AudioVideo | TrafficType::ExcellentEffort => 40,
        TrafficType::Background => 8,
        TrafficType::BestEffort => 0,
    }
}

/// A flow whose socket and expectation the controller changes while the sender sends.
struct Slot {
    sock: Option<UdpSocket>,
    expect: u8,
    sent: u64,
}

/// The slots (rule flows, then churn flows), indexed by `flow - STABLE`.
struct Slots(Vec<Mutex<Slot>>);

impl Slots {
    fn get(&self, flow: usize) -> std::sync::MutexGuard<'_, Slot> {
        self.0[flow - STABLE].lock().unwrap()
    }
}

/// The port-9100 rule's DSCP in rule-set version `v` (`None`: no such rule).
fn rule_dscp(version: u64) -> Option<u8> {
    match version % 3 {
        0 => Some(10),
        1 => Some(18),
        _ => None,
    }
}

fn rule_specs(version: u64) -> Vec<RuleSpec> {
    let mut specs: Vec<RuleSpec> = (0..FILLER_RULES)
        .map(|i| RuleSpec {
            name: RuleName::try_new(&format!("filler-{i}")).unwrap(),
            precedence: 1,
            protocol: RuleProtocol::Udp,
            local_prefix: None,
            remote_prefix: None,
            local_ports: None,
            remote_ports: Some(PortRange {
                first: 20000 + i,
                last: 20000 + i,
            }),
            action: RuleAction::Dscp(Dscp::try_new(4).unwrap()),
            pcp: None,
            throttle_bps: None,
        })
        .collect();
    let key = rule_dscp(version).map_or(RuleAction::Dscp(Dscp::try_new(4).unwrap()), |d| {
        RuleAction::Dscp(Dscp::try_new(d).unwrap())
    });
    // Without the key rule the set still has 101 rules: the 101st is on a port nobody uses.
    let port = if rule_dscp(version).is_some() {
        RULE_PORT
    } else {
        30000
    };
    specs.push(RuleSpec {
        name: RuleName::try_new("soak-key").unwrap(),
        precedence: 50,
        protocol: RuleProtocol::Udp,
        local_prefix: None,
        remote_prefix: None,
        local_ports: None,
        remote_ports: Some(PortRange {
            first: port,
            last: port,
        }),
        action: key,
        pcp: None,
        throttle_bps: None,
    });
    specs
}

/// The same rule set as a rules file for `qosmarkctl rules load` / `--rules`.
fn rules_file(version: u64) -> String {
    let mut text = String::new();
    for i in 0..FILLER_RULES {
        writeln!(
            text,
            "[[rule]]\nname = \"filler-{i}\"\nprecedence = 1\nprotocol = \"udp\"\nremote_port = {}\ndscp = 4\n",
            20000 + i
        )
        .unwrap();
    }
    let (port, dscp) = rule_dscp(version).map_or((30000, 4), |d| (RULE_PORT, d));
    write!(
        text,
        "[[rule]]\nname = \"soak-key\"\nprecedence = 50\nprotocol = \"udp\"\nremote_port = {port}\ndscp = {dscp}\n"
    )
    .unwrap();
    text
}

/// Builds `qosmarkctl` into the target directory the other live tests use for it.
fn qosmarkctl() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target_dir = exe.ancestors().nth(3).unwrap().join("capi-live");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "qosmark-shim", "--bin", "qosmarkctl"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "building qosmarkctl failed");
    target_dir.join("debug").join("qosmarkctl")
}

/// The churn side: control-socket clients and the slots it changes.
struct Controller {
    slots: Arc<Slots>,
    tally: Arc<Tally>,
    admin: Client,
    socket: PathBuf,
    ctl: PathBuf,
    rules_path: PathBuf,
    net_sender: String,
    receiver: [SocketAddr; 2],
    sender: [SocketAddr; 2],
    base_handles: u32,
    rule_version: u64,
    cycles: u64,
    changes: u64,
}

impl Controller {
    /// Makes `flows` unchecked, waits until everything they sent so far has arrived, runs
    /// `change` (which returns the new expectation per flow once the daemon has answered) and
    /// sets it.
    fn transition(&mut self, flows: &[usize], change: impl FnOnce(&mut Controller) -> Vec<u8>) {
        let mut sent = Vec::new();
        for &f in flows {
            let mut slot = self.slots.get(f);
            slot.expect = UNCHECKED;
            sent.push(slot.sent);
        }
        for (&f, &n) in flows.iter().zip(&sent) {
            assert!(
                self.tally.wait_received(f, n, DRAIN_TIMEOUT),
                "flow {f}: {n} datagrams sent before a change, {} arrived within {DRAIN_TIMEOUT:?}",
                self.tally.received(f)
            );
        }
        let expect = change(self);
        assert_eq!(expect.len(), flows.len());
        for (&f, e) in flows.iter().zip(expect) {
            self.slots.get(f).expect = e;
        }
        self.changes += 1;
    }

    fn reload_rules(&mut self) {
        let rule_flows: Vec<usize> = (STABLE..STABLE + RULE_FLOWS).collect();
        let version = self.rule_version + 1;
        self.transition(&rule_flows, |c| {
            if version % 2 == 0 {
                c.admin
                    .done(&Request::ReplaceRules(rule_specs(version)))
                    .unwrap();
            } else {
                std::fs::write(&c.rules_path, rules_file(version)).unwrap();
                let out = Command::new(&c.ctl)
                    .args(["rules", "load", c.rules_path.to_str().unwrap()])
                    .env("QOSMARK_SOCKET", &c.socket)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "qosmarkctl rules load: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let status = c.admin.status();
            assert_eq!(status.rules, u32::from(FILLER_RULES) + 1, "{status:?}");
            rule_flows
                .iter()
                .map(|&f| rule_dscp(version).map_or(ecn(f), |d| tos(d, f)))
                .collect()
        });
        self.rule_version = version;
    }

    /// Waits until only the base handles and the stable flows are left.
    fn wait_quiet(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.admin.status();
            if s.handles == self.base_handles && s.flows as usize == STABLE {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "closed handle not cleaned up within 5 s: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn cycle(&mut self) {
        let group = (self.cycles as usize) % (CHURN / GROUP);
        let flows: Vec<usize> = (0..GROUP)
            .map(|k| STABLE + RULE_FLOWS + group * GROUP + k)
            .collect();
        // New sockets on the slots' fixed ports.
        for &f in &flows {
            let churn = f - STABLE - RULE_FLOWS;
            let v6 = churn % 2 == 1;
            let local = SocketAddr::new(
                self.sender[usize::from(v6)].ip(),
                CHURN_LOCAL_BASE + churn as u16,
            );
            let dest = self.receiver[usize::from(v6)];
            let sock = in_ns(&self.net_sender, move || {
                let s = UdpSocket::bind(local).unwrap();
                s.connect(dest).unwrap();
                s
            });
            traffic::set_app_tos(&sock, v6, ecn(f));
            let mut slot = self.slots.get(f);
            slot.expect = ecn(f);
            slot.sock = Some(sock);
        }
        std::thread::sleep(hold());
        let mut handle = Client::connect(&self.socket);
        let types = [
            TrafficType::Voice,
            TrafficType::AudioVideo,
            TrafficType::Background,
            TrafficType::Control,
        ];
        let mut ids: Vec<FlowId> = Vec::new();
        let (f0, f1, f2, f3) = (flows[0], flows[1], flows[2], flows[3]);
        // Register all four, each in its own flow.
        self.transition(&flows, |c| {
            let mut expect = Vec::new();
            for (k, &f) in flows.iter().enumerate() {
                let tt = types[(c.cycles as usize + k) % types.len()];
                let slot = c.slots.get(f);
                ids.push(
                    handle
                        .add_socket(slot.sock.as_ref().unwrap(), None, tt, 0, 0)
                        .unwrap(),
                );
                expect.push(tos(type_dscp(tt), f));
            }
            expect
        });
        std::thread::sleep(hold());
        self.transition(&[f0], |_| {
            handle
                .done(&Request::SetFlow {
                    flow_id: ids[0],
                    op: SetFlow::OutgoingDscp(46),
                })
                .unwrap();
            vec![tos(46, f0)]
        });
        std::thread::sleep(hold());
        let fd1 = self.slots.get(f1).sock.as_ref().unwrap().as_raw_fd();
        self.transition(&[f1], |_| {
            handle
                .done(&Request::RemoveSocketFromFlow {
                    socket: Some(u64::try_from(fd1).unwrap()),
                    flow_id: ids[1],
                })
                .unwrap();
            vec![ecn(f1)]
        });
        std::thread::sleep(hold());
        self.transition(&[f1], |c| {
            let slot = c.slots.get(f1);
            handle
                .add_socket(slot.sock.as_ref().unwrap(), None, TrafficType::Voice, 0, 0)
                .unwrap();
            vec![tos(56, f1)]
        });
        std::thread::sleep(hold());
        self.transition(&[f2], |_| {
            handle
                .done(&Request::RemoveSocketFromFlow {
                    socket: None,
                    flow_id: ids[2],
                })
                .unwrap();
            vec![ecn(f2)]
        });
        std::thread::sleep(hold());
        self.transition(&[f3], |_| {
            handle
                .done(&Request::SetFlow {
                    flow_id: ids[3],
                    op: SetFlow::TrafficType(TrafficType::Background),
                })
                .unwrap();
            vec![tos(8, f3)]
        });
        std::thread::sleep(hold());
        self.reload_rules();
        std::thread::sleep(hold());
        // Close the handle: the daemon removes its flows (no answer: poll the status).
        self.transition(&flows, |c| {
            drop(handle);
            c.wait_quiet();
            flows.iter().map(|&f| ecn(f)).collect()
        });
        std::thread::sleep(hold());
        // Close the sockets once all they sent has arrived.
        self.transition(&flows, |c| {
            for &f in &flows {
                c.slots.get(f).sock = None;
            }
            flows.iter().map(|&f| ecn(f)).collect()
        });
        self.cycles += 1;
    }
}

/// One `/proc` sample of the daemon.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: f64,
    rss_kb: u64,
    fds: usize,
    threads: u64,
}

fn sample(pid: u32, start: Instant) -> Sample {
    Sample {
        at: start.elapsed().as_secs_f64(),
        rss_kb: traffic::status_field(pid, "VmRSS:").unwrap_or(0),
        fds: traffic::fd_count(pid),
        threads: traffic::status_field(pid, "Threads:").unwrap_or(0),
    }
}

#[test]
fn soak_churn_under_thousand_call_traffic() {
    if !live() {
        return;
    }
    let secs = seconds();
    let ticks = RATE * secs;
    traffic::raise_fd_limit();
    let ctl = qosmarkctl();
    let net = Net::new();
    let daemon = Daemon::start(
        &net,
        &DaemonOptions {
            rules: Some(rules_file(0)),
            keep_state: false,
        },
    );
    let pid = daemon.pid();
    let tally = Arc::new(Tally::new(FLOWS));
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for port in [9000, RULE_PORT, CHURN_PORT] {
        for v6 in [false, true] {
            let addr = net.receiver_addr(v6, port);
            let sock = in_ns(&net.receiver, move || UdpSocket::bind(addr).unwrap());
            let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
            receivers.push(std::thread::spawn(move || {
                traffic::receive(&sock, v6, &tally, &stop);
            }));
        }
    }
    let binds = [net.sender_addr(false, 0), net.sender_addr(true, 0)];
    let stable_dest = [
        net.receiver_addr(false, 9000),
        net.receiver_addr(true, 9000),
    ];
    let rule_dest = [
        net.receiver_addr(false, RULE_PORT),
        net.receiver_addr(true, RULE_PORT),
    ];
    let (socks, rule_socks): (Vec<UdpSocket>, Vec<UdpSocket>) = in_ns(&net.sender, move || {
        let open = |i: usize, dest: &[SocketAddr; 2]| {
            let s = UdpSocket::bind(binds[i % 2]).unwrap();
            s.connect(dest[i % 2]).unwrap();
            s
        };
        (
            (0..STABLE).map(|i| open(i, &stable_dest)).collect(),
            (STABLE..STABLE + RULE_FLOWS)
                .map(|i| open(i, &rule_dest))
                .collect(),
        )
    });
    traffic::warm_neighbours(&net.sender, &[net.r4.to_string(), net.r6.to_string()]);
    let mut stable = Client::connect(&daemon.socket);
    let mut expected = Vec::with_capacity(STABLE);
    for (i, s) in socks.iter().enumerate() {
        traffic::set_app_tos(s, i % 2 == 1, ecn(i));
        let (tt, custom, dscp) = plan(i);
        let flow = stable.add_socket(s, None, tt, 0, 0).unwrap();
        if let Some(d) = custom {
            stable
                .done(&Request::SetFlow {
                    flow_id: flow,
                    op: SetFlow::OutgoingDscp(d),
                })
                .unwrap();
        }
        expected.push(tos(dscp, i));
    }
    let slots = Arc::new(Slots(
        (STABLE..FLOWS)
            .map(|f| {
                Mutex::new(Slot {
                    sock: None,
                    expect: ecn(f),
                    sent: 0,
                })
            })
            .collect(),
    ));
    for (k, s) in rule_socks.into_iter().enumerate() {
        let f = STABLE + k;
        traffic::set_app_tos(&s, f % 2 == 1, ecn(f));
        let mut slot = slots.get(f);
        slot.expect = tos(10, f);
        slot.sock = Some(s);
    }
    let mut admin = Client::connect(&daemon.socket);
    let s0 = admin.status();
    assert_eq!(s0.flows as usize, STABLE, "{s0:?}");
    assert_eq!(s0.rules, u32::from(FILLER_RULES) + 1, "{s0:?}");
    let start = Instant::now();
    let before = sample(pid, start);
    let cpu_before = traffic::cpu_ticks(pid);

    // Memory sampler.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = Arc::clone(&sampling);
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while sampling.load(Ordering::SeqCst) {
                samples.push(sample(pid, start));
                for _ in 0..20 {
                    if !sampling.load(Ordering::SeqCst) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            samples
        })
    };

    // Churn.
    let end = start + Duration::from_secs(secs);
    let churn_ok = Arc::new(AtomicBool::new(false));
    let controller = {
        let mut c = Controller {
            slots: Arc::clone(&slots),
            tally: Arc::clone(&tally),
            admin,
            socket: daemon.socket.clone(),
            ctl,
            rules_path: net.dir.join("soak-rules.toml"),
            net_sender: net.sender.clone(),
            receiver: [
                net.receiver_addr(false, CHURN_PORT),
                net.receiver_addr(true, CHURN_PORT),
            ],
            sender: binds,
            base_handles: s0.handles,
            rule_version: 0,
            cycles: 0,
            changes: 0,
        };
        let ok = Arc::clone(&churn_ok);
        std::thread::spawn(move || {
            // Let the traffic start before the first change.
            std::thread::sleep(Duration::from_secs(1));
            while Instant::now() + Duration::from_secs(2) < end {
                c.cycle();
            }
            ok.store(true, Ordering::SeqCst);
            c
        })
    };

    // Traffic: every flow, 50 datagrams/s, until the time is up and the churn has finished.
    let tick = Duration::from_nanos(1_000_000_000 / RATE);
    let mut t: u64 = 0;
    let mut late_ticks = 0u64;
    loop {
        if controller.is_finished() && (t >= ticks || !churn_ok.load(Ordering::SeqCst)) {
            // Done, or the controller failed (its panic is reported at join).
            break;
        }
        let due = start + tick * u32::try_from(t).unwrap();
        match due.checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            None => {
                if due.elapsed() > tick {
                    late_ticks += 1;
                }
            }
        }
        let seq = u32::try_from(t).unwrap();
        for (i, s) in socks.iter().enumerate() {
            s.send(&datagram(i as u32, seq, expected[i])).unwrap();
        }
        for (k, m) in slots.0.iter().enumerate() {
            let mut slot = m.lock().unwrap();
            let n = u32::try_from(slot.sent).unwrap();
            let expect = slot.expect;
            if let Some(s) = &slot.sock {
                s.send(&datagram((STABLE + k) as u32, n, expect)).unwrap();
                slot.sent += 1;
            }
        }
        t += 1;
    }
    let send_time = start.elapsed();
    let controller = match controller.join() {
        Ok(c) => c,
        Err(e) => std::panic::resume_unwind(e),
    };
    let sent: Vec<u64> = (0..FLOWS)
        .map(|f| if f < STABLE { t } else { slots.get(f).sent })
        .collect();
    let total: u64 = sent.iter().sum();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Tally::sum(&tally.received) < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut admin = controller.admin;
    let status = admin.status();
    let after = sample(pid, start);
    let cpu_after = traffic::cpu_ticks(pid);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    sampling.store(false, Ordering::SeqCst);
    let samples = sampler.join().unwrap();
    stop.store(true, Ordering::SeqCst);
    for r in receivers {
        r.join().unwrap();
    }

    let received = Tally::sum(&tally.received);
    let checked = Tally::sum(&tally.checked);
    let wrong = Tally::sum(&tally.wrong);
    let warmup = (secs as f64 / 4.0).min(60.0);
    let steady: Vec<&Sample> = samples.iter().filter(|s| s.at >= warmup).collect();
    let base_rss = steady.first().map_or(0, |s| s.rss_kb);
    let max_rss = steady.iter().map(|s| s.rss_kb).max().unwrap_or(0);
    let last_rss = steady.last().map_or(0, |s| s.rss_kb);
    eprintln!(
        "soak: {secs} s, {t} ticks in {:.1} s ({late_ticks} ticks over {} ms late), {} churn cycles, {} state changes, {} rule reloads",
        send_time.as_secs_f64(),
        tick.as_millis(),
        controller.cycles,
        controller.changes,
        controller.rule_version
    );
    eprintln!(
        "soak: sent {total}, received {received}, judged {checked}, wrong {wrong}, garbage {}",
        tally.garbage.load(Ordering::Relaxed)
    );
    eprintln!(
        "soak: daemon VmRSS {} kB at start, {base_rss} kB after {warmup:.0} s warm-up, max {max_rss} kB, last {last_rss} kB (growth {} kB, bound {RSS_GROWTH_KB} kB); fds {} -> {}, threads {} -> {}",
        before.rss_kb,
        max_rss.saturating_sub(base_rss),
        before.fds,
        after.fds,
        before.threads,
        after.threads
    );
    let series: Vec<String> = samples
        .iter()
        .step_by((samples.len() / 30).max(1))
        .map(|s| format!("{:.0}s:{}", s.at, s.rss_kb))
        .collect();
    eprintln!("soak: VmRSS kB series {}", series.join(" "));
    eprintln!("soak: status {status:?}");
    let (user, system) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    let hz = traffic::clock_hz();
    eprintln!(
        "soak: daemon CPU {:.1} % of one core (user {:.1} %, system {:.1} %); load average at the end {}",
        (user + system) as f64 / hz / send_time.as_secs_f64() * 100.0,
        user as f64 / hz / send_time.as_secs_f64() * 100.0,
        system as f64 / hz / send_time.as_secs_f64() * 100.0,
        loadavg.trim()
    );
    // Every datagram sent must have been seen (classified) by the daemon. One it never saw
    // went out through the kernel queue's fail-open (`NFQA_CFG_F_FAIL_OPEN`, queue full):
    // unmarked, a wrong mark for a registered flow even if the TOS check above was not
    // judging it (an "unchecked" datagram in a transition).
    let seen = status.packets - s0.packets;
    let log = daemon.log_text();
    for line in log.lines().filter(|l| l.contains("engine lock")) {
        eprintln!("soak: daemon log: {line}");
    }
    eprintln!(
        "soak: datagrams sent {total}, seen by the daemon {seen}, kernel fail-open {}",
        total.saturating_sub(seen)
    );
    let examples = tally.examples.lock().unwrap().clone();
    // Unmarked arrivals with no fail-open in the daemon's own counters are the kernel's
    // fail-open: the queue held --queue-maxlen packets (the packet thread stalled).
    assert_eq!(
        wrong, 0,
        "wrong marks (daemon fail-open {:?}), first ones: {examples:#?}",
        status.fail_open
    );
    let lost: Vec<(usize, u64, u64)> = (0..FLOWS)
        .map(|f| (f, sent[f], tally.received(f)))
        .filter(|(_, s, r)| s != r)
        .collect();
    assert!(
        lost.is_empty(),
        "flows with loss (flow, sent, received): {:?}",
        &lost[..lost.len().min(10)]
    );
    assert_eq!(tally.garbage.load(Ordering::Relaxed), 0);
    for (f, e) in expected.iter().enumerate() {
        assert_eq!(
            tally.checked[f].load(Ordering::Relaxed),
            t,
            "stable flow {f} ({e:#04x}): every datagram judged"
        );
    }
    assert!(controller.cycles > 0, "no churn cycle ran");
    assert!(
        seen >= total,
        "{} datagrams left through the kernel queue's fail-open without being classified",
        total - seen
    );
    assert_eq!(status.fail_open.iter().sum::<u64>(), 0, "{status:?}");
    assert_eq!(status.handles, s0.handles, "{status:?}");
    assert_eq!(status.flows as usize, STABLE, "{status:?}");
    assert!(
        max_rss.saturating_sub(base_rss) <= RSS_GROWTH_KB,
        "daemon memory grew {} kB after the warm-up (bound {RSS_GROWTH_KB} kB)",
        max_rss - base_rss
    );
    assert_eq!(after.fds, before.fds, "daemon descriptors before / after");
    assert_eq!(
        after.threads, before.threads,
        "daemon threads before / after"
    );
    drop(admin);
    drop(stable);
    let log = daemon.stop();
    for line in log
        .lines()
        .filter(|l| l.contains("engine lock: packet thread") || l.contains("final counters"))
    {
        eprintln!("soak: at exit: {line}");
    }
}
