//! # qosmark-linux: `qosmarkd`
//!
//! The qosmark engine on the Linux network stack: outbound packets come from a netfilter
//! queue ([`nfq`]), control requests from a unix socket ([`control`]) speaking the `abi`
//! records of `docs/linux-transport.md`.
//!
//! ## Threads
//! * **main**: start-up, then waits for SIGTERM / SIGINT / SIGHUP (blocked in every thread,
//!   taken with `sigwait`) and shuts down: iptables rules first, so no new packet is queued,
//!   then every packet held for shaping is sent ([`held::ShapeShared`]), then a short drain,
//!   then the socket file.
//! * **packets**: the [`nfq::PacketLoop`] (`SCHED_FIFO`; takes the engine lock once per batch);
//!   it also releases the packets it holds for shaping, by a `ppoll` timer ([`nfq`], *Shaping*).
//! * **accept** + one thread per client connection ([`control::serve`], bounded).
//! * **bind watcher**: TCP sockets registered before `connect` ([`pending::PendingTcp::watch`];
//!   the packet thread pins them itself when their SYN is queued).
//! * **reaper**: every second, retires registered sockets the application closed without
//!   removing them ([`reaper::Registry::run`]).
//!
//! ## Engine lock
//! The engine sits in an `Arc<`[`lock::EngineLock`]`>`: a mutex with priority inheritance,
//! taken by the packet thread once per batch ([`lock::EngineLock::read`]: `&Engine`, classify
//! is `&self`) and by every control-side change ([`lock::EngineLock::write_as`]). Not a
//! reader/writer lock: the packet thread is the only reader, it runs `SCHED_FIFO`, and with a
//! `RwLock` it slept behind control threads that the machine's other work kept off the CPU
//! while they held the write side (a priority inversion: the kernel queue filled and failed
//! open). With inheritance the holder runs at the packet thread's priority while it waits.
//! Why, the evidence and the rules for holders: [`lock`].
//!
//! `unsafe` lives only in [`sys`].
#![deny(unsafe_code)]

pub mod changes;
pub mod control;
pub mod held;
pub mod iptables;
pub mod lock;
pub mod nfq;
pub mod pending;
pub mod reaper;
pub mod state;
pub mod sys;

use qosmark_engine::{Engine, Limits};
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/qosmark/qosmark.sock";
/// Default state file.
pub const DEFAULT_STATE: &str = "/var/lib/qosmark/state.toml";

/// Writes one log line to standard error.
pub fn log(msg: &str) {
    eprintln!("qosmarkd: {msg}");
}

/// The daemon's configuration (command line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Control socket path.
    pub socket: PathBuf,
    /// Netfilter queue number.
    pub queue_num: u16,
    /// Kernel queue length (packets waiting for a verdict).
    pub queue_maxlen: u32,
    /// Rules file loaded at start (overrides the state's rules).
    pub rules: Option<PathBuf>,
    /// State file.
    pub state: PathBuf,
    /// Maximum concurrent client connections.
    pub max_clients: usize,
    /// Shaping: packets one shaper (a rate-limited flow or a throttled rule) may hold.
    pub shape_queue_packets: u64,
    /// Shaping: bytes one shaper may hold.
    pub shape_queue_bytes: u64,
    /// Shaping: packets held at once in all (at most half of `queue_maxlen`).
    pub shape_held_packets: u64,
    /// Shaping: bytes held at once in all (the held-packet store's size).
    pub shape_held_bytes: u64,
    /// Shaping: the longest a packet may be held, in milliseconds; a packet that would wait
    /// longer is sent at once with its mark, counted as a shaping fail-open, and does not
    /// count against its flow's rate (`Limits::shaper_max_delay_ns`). `None`: no cap.
    pub shape_max_delay_ms: Option<u64>,
}

/// Largest `--shape-max-delay-ms`: one hour.
pub const MAX_SHAPE_MAX_DELAY_MS: u64 = 3_600_000;

/// Default of `--shape-held-packets`: a quarter of the default kernel queue.
pub const DEFAULT_SHAPE_HELD_PACKETS: u64 = 16_384;
/// Largest `--shape-held-bytes` (the store is allocated, lazily, at start).
pub const MAX_SHAPE_HELD_BYTES: u64 = 1 << 30;

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: PathBuf::from(DEFAULT_SOCKET),
            queue_num: 0,
            queue_maxlen: 65_536,
            rules: None,
            state: PathBuf::from(DEFAULT_STATE),
            max_clients: 1024,
            shape_queue_packets: Limits::default().shaper_queue_packets,
            shape_queue_bytes: Limits::default().shaper_queue_bytes,
            shape_held_packets: DEFAULT_SHAPE_HELD_PACKETS,
            shape_held_bytes: Limits::default().held_bytes_total,
            shape_max_delay_ms: None,
        }
    }
}

/// `--help` text.
pub const USAGE: &str = "\
usage: qosmarkd [OPTIONS]

Marks outbound packets of registered flows with DSCP (qosmark's Linux back end). Runs as
root: binds a netfilter queue and installs its own NFQUEUE rules for TCP and UDP in the mangle
OUTPUT chain (iptables and ip6tables, comment qosmarkd:queue=N, --queue-bypass), removed again
on exit.

options:
  --socket PATH        control socket (default /run/qosmark/qosmark.sock)
  --queue-num N        netfilter queue number, 0..=65535 (default 0)
  --queue-maxlen N     packets the kernel queues for us before accepting unmarked (default 65536)
  --rules FILE         administrator rules (TOML, qosmarkctl's rules format); they replace
                       the rules kept in the state file
  --state FILE         where the traffic table, user DSCP allow-list and rules changed at run
                       time are kept (default /var/lib/qosmark/state.toml)
  --max-clients N      concurrent client connections (default 1024)
  --shape-queue-packets N  packets one rate-limited flow or throttled rule may hold
                       waiting for its departure time (default 16384)
  --shape-queue-bytes N    bytes one rate-limited flow or rule may hold (default 16777216)
  --shape-held-packets N   packets held in all; they stay in the kernel queue, so at most
                       half of --queue-maxlen (default 16384)
  --shape-held-bytes N     bytes held in all (default 67108864, at most 1073741824)
  --shape-max-delay-ms N   hold no packet longer than N ms (1..=3600000): one that would
                       wait longer is sent at once, marked, counted as a shaping fail-open,
                       and does not count against its rate (default: no limit)
  -h, --help           this text
  -V, --version        version

Stops on SIGTERM or SIGINT. Logs go to standard error.";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the daemon.
    Run(Config),
    /// Print the usage.
    Help,
    /// Print the version.
    Version,
}

/// Parses the arguments (without the program name).
///
/// # Errors
/// A one-line message for the first bad argument.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut config = Config::default();
    let mut args = args.into_iter();
    let mut seen: Vec<String> = Vec::new();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--socket"
            | "--queue-num"
            | "--queue-maxlen"
            | "--rules"
            | "--state"
            | "--max-clients"
            | "--shape-queue-packets"
            | "--shape-queue-bytes"
            | "--shape-held-packets"
            | "--shape-held-bytes"
            | "--shape-max-delay-ms" => {
                if seen.contains(&name) {
                    return Err(format!("{name} given twice"));
                }
                seen.push(name.clone());
                let value = match inline {
                    Some(v) => v,
                    None => args.next().ok_or_else(|| format!("{name} needs a value"))?,
                };
                if value.is_empty() {
                    return Err(format!("{name} needs a value"));
                }
                match name.as_str() {
                    "--socket" => config.socket = PathBuf::from(value),
                    "--rules" => config.rules = Some(PathBuf::from(value)),
                    "--state" => config.state = PathBuf::from(value),
                    "--queue-num" => {
                        config.queue_num = value
                            .parse()
                            .map_err(|_| format!("--queue-num: `{value}` is not 0..=65535"))?;
                    }
                    "--queue-maxlen" => {
                        config.queue_maxlen =
                            value.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
                                format!("--queue-maxlen: `{value}` is not a positive number")
                            })?;
                    }
                    "--max-clients" => {
                        config.max_clients =
                            value.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
                                format!("--max-clients: `{value}` is not a positive number")
                            })?;
                    }
                    shape => {
                        let v: u64 = value.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
                            format!("{shape}: `{value}` is not a positive number")
                        })?;
                        match shape {
                            "--shape-queue-packets" => config.shape_queue_packets = v,
                            "--shape-queue-bytes" => config.shape_queue_bytes = v,
                            "--shape-held-packets" => config.shape_held_packets = v,
                            "--shape-max-delay-ms" => {
                                if v > MAX_SHAPE_MAX_DELAY_MS {
                                    return Err(format!(
                                        "--shape-max-delay-ms: {v} is more than {MAX_SHAPE_MAX_DELAY_MS} (one hour)"
                                    ));
                                }
                                config.shape_max_delay_ms = Some(v);
                            }
                            _ => config.shape_held_bytes = v,
                        }
                    }
                }
            }
            _ => return Err(format!("unknown argument `{arg}` (see --help)")),
        }
    }
    // Held packets stay in the kernel queue: they must leave room for the traffic that only
    // passes through, or the kernel would let it go unmarked (fail-open) behind them.
    if config.shape_held_packets > u64::from(config.queue_maxlen / 2) {
        return Err(format!(
            "--shape-held-packets: {} is more than half of --queue-maxlen ({}): held packets stay in the kernel queue and must leave room for the rest",
            config.shape_held_packets, config.queue_maxlen
        ));
    }
    if config.shape_held_bytes > MAX_SHAPE_HELD_BYTES {
        return Err(format!(
            "--shape-held-bytes: {} is more than {MAX_SHAPE_HELD_BYTES} (1 GiB)",
            config.shape_held_bytes
        ));
    }
    Ok(Command::Run(config))
}

/// 64 random bits for the engine's fragment-memory key.
fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    u64::from_ne_bytes(bytes)
}

/// The engine with the persisted state and the rules file loaded.
fn build_engine(config: &Config) -> Result<Engine, String> {
    let limits = Limits {
        shaper_queue_packets: config.shape_queue_packets,
        shaper_queue_bytes: config.shape_queue_bytes,
        held_packets_total: config.shape_held_packets,
        held_bytes_total: config.shape_held_bytes,
        // At most one hour: the product fits in u64.
        shaper_max_delay_ns: config
            .shape_max_delay_ms
            .map_or(u64::MAX, |ms| ms.saturating_mul(1_000_000)),
        ..Limits::default()
    };
    let mut engine = Engine::with_seed(limits, random_seed());
    let defaults = qosmark_engine::traffic::default_table();
    let mut loaded = state::load(&config.state, defaults)
        .map_err(|e| format!("state file {}: {e}", config.state.display()))?;
    match &loaded {
        Some(s) => log(&format!(
            "state loaded from {} ({} rules)",
            config.state.display(),
            s.rules.len()
        )),
        None => log(&format!(
            "no state file at {}: default traffic table, no rules",
            config.state.display()
        )),
    }
    if let Some(path) = &config.rules {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("rules file {}: {e}", path.display()))?;
        let rules = qosmark::rules_file::parse_rules(&text)
            .map_err(|e| format!("rules file {}: {e}", path.display()))?;
        log(&format!(
            "{} rules loaded from {}",
            rules.len(),
            path.display()
        ));
        let st = loaded.get_or_insert(state::State {
            table: defaults,
            rules: Vec::new(),
        });
        st.rules = rules;
    }
    if let Some(st) = &loaded {
        control::load_state(&mut engine, st)?;
    }
    Ok(engine)
}

/// Creates the socket's directory and binds the listener (0666). A socket file left by a
/// previous run is replaced; one that answers is another daemon.
fn bind_socket(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir)
                .and_then(|()| {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                })
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt as _;
        if !meta.file_type().is_socket() {
            return Err(format!(
                "socket path {} exists and is not a socket",
                path.display()
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "socket path {} is in use: another qosmarkd is running",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
    Ok(listener)
}

/// Removes our rules from both tools, logging what was removed.
fn remove_rules(num: u16, when: &str) {
    for (tool, family) in iptables::TOOLS {
        match iptables::remove(tool, num) {
            Ok(0) => {}
            Ok(n) => log(&format!(
                "{when}: removed {n} {family} rule(s) tagged {}",
                iptables::tag(num)
            )),
            Err(e) => log(&format!("{when}: {e}")),
        }
    }
}

/// Starts the packet, bind-watcher and accept threads.
fn start_workers(
    config: &Config,
    queue: nfq::Queue,
    engine: &Arc<lock::EngineLock>,
    listener: UnixListener,
    fatal: &Arc<AtomicBool>,
    shape: &Arc<held::ShapeShared>,
) -> Result<(), String> {
    let pending = Arc::new(
        pending::PendingTcp::new()
            .map_err(|e| format!("cannot create the pending-socket list's lock: {e}"))?,
    );
    let registry = Arc::new(reaper::Registry::new());
    let drain = Arc::new(nfq::Drain::new());
    let mut shared = control::Shared::new(
        Arc::clone(engine),
        Some(config.state.clone()),
        config.max_clients,
        Arc::clone(&pending),
        Arc::clone(&registry),
    );
    shared.drain = Some(Arc::clone(&drain));
    let shared = Arc::new(shared);
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(f)
            .map(|_| ())
            .map_err(|e| format!("cannot start the {name} thread: {e}"))
    };
    let hold = nfq::HoldLimits {
        packets: usize::try_from(config.shape_held_packets).unwrap_or(usize::MAX),
        bytes: usize::try_from(config.shape_held_bytes).unwrap_or(usize::MAX),
    };
    let mut packet_loop = nfq::PacketLoop::new(
        queue,
        Arc::clone(engine),
        Arc::clone(&pending),
        drain,
        hold,
        Arc::clone(shape),
    )
    .map_err(|e| format!("cannot allocate the held-packet store: {e}"))?;
    let packet_fatal = Arc::clone(fatal);
    spawn(
        "qosmarkd-packets",
        Box::new(move || {
            if let Err(e) = packet_loop.run() {
                log(&format!("ERROR: packet loop stopped: {e}"));
                packet_fatal.store(true, Ordering::SeqCst);
                sys::terminate_self();
            }
        }),
    )
    .and_then(|()| {
        let e = Arc::clone(engine);
        spawn("qosmarkd-bind", Box::new(move || pending.watch(&e)))
    })
    .and_then(|()| {
        let e = Arc::clone(engine);
        spawn("qosmarkd-reaper", Box::new(move || registry.run(&e)))
    })
    .and_then(|()| {
        let s = Arc::clone(&shared);
        spawn(
            "qosmarkd-accept",
            Box::new(move || control::serve(&listener, &s)),
        )
    })
}

/// Runs the daemon until a termination signal. Start-up errors are one line each.
///
/// # Errors
/// The start-up error, or a fatal error of the packet loop.
pub fn run(config: &Config) -> Result<(), String> {
    sys::block_termination_signals().map_err(|e| format!("cannot block signals: {e}"))?;
    if sys::effective_uid() != 0 {
        return Err(
            "must run as root (binds a netfilter queue and installs iptables rules)".to_owned(),
        );
    }
    for (tool, _) in iptables::TOOLS {
        iptables::check(tool).map_err(|e| e.to_string())?;
    }
    match sys::raise_fd_limit() {
        Ok((old, new)) if new > old => log(&format!("open-file limit raised from {old} to {new}")),
        Ok((_, new)) if (new as usize) < config.max_clients + pending::MAX_PENDING + 64 => log(&format!(
            "warning: open-file limit {new} is below --max-clients + pending sockets; raise it (LimitNOFILE=)"
        )),
        Ok(_) => {}
        Err(e) => log(&format!("cannot raise the open-file limit: {e}")),
    }
    let engine = Arc::new(
        lock::EngineLock::new(build_engine(config)?)
            .map_err(|e| format!("cannot create the engine lock (priority inheritance): {e}"))?,
    );
    let listener = bind_socket(&config.socket)?;
    let cleanup_socket = |path: &Path| {
        let _ = std::fs::remove_file(path);
    };
    // Bind the queue first: if another program owns it, its rules must stay untouched.
    let queue = match nfq::Queue::open(config.queue_num, config.queue_maxlen) {
        Ok(q) => q,
        Err(e) => {
            cleanup_socket(&config.socket);
            return Err(e.to_string());
        }
    };
    remove_rules(config.queue_num, "left by a previous run");
    log(&format!(
        "bound netfilter queue {} (copy-packet, fail-open, max {} queued)",
        queue.num(),
        config.queue_maxlen
    ));
    for (tool, family) in iptables::TOOLS {
        match iptables::install(tool, config.queue_num) {
            Ok(cmds) => {
                for cmd in cmds {
                    log(&format!("installed {family} rule: {cmd}"));
                }
            }
            Err(e) => {
                remove_rules(config.queue_num, "start-up failed");
                cleanup_socket(&config.socket);
                return Err(e.to_string());
            }
        }
    }

    let fatal = Arc::new(AtomicBool::new(false));
    let shape = Arc::new(held::ShapeShared::new());
    let started = start_workers(config, queue, &engine, listener, &fatal, &shape);
    if let Err(e) = started {
        remove_rules(config.queue_num, "start-up failed");
        cleanup_socket(&config.socket);
        return Err(e);
    }
    log(&format!(
        "ready: control socket {}, queue {}, max {} clients",
        config.socket.display(),
        config.queue_num,
        config.max_clients
    ));

    let signal = sys::wait_for_signal().unwrap_or(libc::SIGTERM);
    log(&format!("signal {signal}: shutting down"));
    remove_rules(config.queue_num, "shutdown");
    // Held packets leave now (accepted, not dropped: the kernel drops what is still queued
    // when the queue's socket closes), then packets queued before the rules went away still
    // get their verdicts.
    if !shape.wait_released_all_after_request(Duration::from_secs(2)) {
        log("shutdown: the packet thread did not release the held packets within 2 s");
    }
    std::thread::sleep(Duration::from_millis(100));
    cleanup_socket(&config.socket);
    let status = {
        let mut engine = engine.write_as(lock::Holder::Daemon);
        final_status(&mut engine)
    };
    log(&status);
    log(&shape.summary());
    log(&engine.stats().to_string());
    if fatal.load(Ordering::SeqCst) {
        Err("stopped after a fatal packet-loop error".to_owned())
    } else {
        Ok(())
    }
}

/// One log line with the engine's global counters (`QueryStatus` through a short-lived
/// administrator handle).
fn final_status(engine: &mut Engine) -> String {
    let handle = engine.open_handle(qosmark_engine::abi::Caller {
        pid: std::process::id(),
        privilege: qosmark_engine::abi::Privilege::Admin,
    });
    let Ok(handle) = handle else {
        return "final counters unavailable".to_owned();
    };
    let status = engine.apply(handle, &qosmark_engine::abi::Request::QueryStatus);
    let _ = engine.close_handle(handle);
    match status {
        Ok(qosmark_engine::abi::Response::Status(s)) => format!(
            "final counters: {} packets, {} marked, {} already marked, {} not matched, {} failed open",
            s.packets,
            s.marked,
            s.already_marked,
            s.skipped.first().copied().unwrap_or(0),
            s.fail_open.iter().sum::<u64>()
        ),
        _ => "final counters unavailable".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn command_line() {
        assert_eq!(
            parse_args(args("")).unwrap(),
            Command::Run(Config::default())
        );
        assert_eq!(parse_args(args("--help")).unwrap(), Command::Help);
        let Command::Run(c) = parse_args(args(
            "--socket /tmp/s --queue-num=7 --rules r.toml --state s.toml --max-clients 3",
        ))
        .unwrap() else {
            unreachable!("run")
        };
        assert_eq!(c.socket, PathBuf::from("/tmp/s"));
        assert_eq!(c.queue_num, 7);
        assert_eq!(c.rules, Some(PathBuf::from("r.toml")));
        assert_eq!(c.state, PathBuf::from("s.toml"));
        assert_eq!(c.max_clients, 3);
        assert_eq!(
            parse_args(args("--queue-num 70000")).unwrap_err(),
            "--queue-num: `70000` is not 0..=65535"
        );
        assert_eq!(
            parse_args(args("--rules")).unwrap_err(),
            "--rules needs a value"
        );
        assert_eq!(
            parse_args(args("--rules a --rules b")).unwrap_err(),
            "--rules given twice"
        );
        assert_eq!(
            parse_args(args("--verbose")).unwrap_err(),
            "unknown argument `--verbose` (see --help)"
        );
        assert_eq!(
            parse_args(args("--max-clients 0")).unwrap_err(),
            "--max-clients: `0` is not a positive number"
        );
        let Command::Run(c) = parse_args(args(
            "--shape-queue-packets 100 --shape-queue-bytes=2000 --shape-held-packets 300 --shape-held-bytes 4000",
        ))
        .unwrap() else {
            unreachable!("run")
        };
        assert_eq!(
            (
                c.shape_queue_packets,
                c.shape_queue_bytes,
                c.shape_held_packets,
                c.shape_held_bytes
            ),
            (100, 2000, 300, 4000)
        );
        // The longest hold: 1 ms .. one hour; none by default.
        let Command::Run(c) = parse_args(args("--shape-max-delay-ms=250")).unwrap() else {
            unreachable!("run")
        };
        assert_eq!(c.shape_max_delay_ms, Some(250));
        assert_eq!(Config::default().shape_max_delay_ms, None);
        for bad in ["0", "-5", "1.5", ""] {
            let err = parse_args(args(&format!("--shape-max-delay-ms={bad}"))).unwrap_err();
            assert!(err.starts_with("--shape-max-delay-ms"), "{bad}: {err}");
        }
        assert_eq!(
            parse_args(args("--shape-max-delay-ms 3600001")).unwrap_err(),
            "--shape-max-delay-ms: 3600001 is more than 3600000 (one hour)"
        );
        let d = Config::default();
        assert_eq!(d.shape_held_packets, 16_384);
        assert!(d.shape_held_packets <= u64::from(d.queue_maxlen / 2));
        for bad in ["0", "-1", "x", "18446744073709551616"] {
            assert_eq!(
                parse_args(args(&format!("--shape-queue-packets {bad}"))).unwrap_err(),
                format!("--shape-queue-packets: `{bad}` is not a positive number")
            );
        }
        assert_eq!(
            parse_args(args("--shape-held-bytes")).unwrap_err(),
            "--shape-held-bytes needs a value"
        );
        // Held packets must leave half the kernel queue, whatever the order of the flags.
        assert_eq!(
            parse_args(args("--shape-held-packets 600 --queue-maxlen 1000")).unwrap_err(),
            "--shape-held-packets: 600 is more than half of --queue-maxlen (1000): held packets stay in the kernel queue and must leave room for the rest"
        );
        assert!(parse_args(args("--queue-maxlen 1000 --shape-held-packets 500")).is_ok());
        assert_eq!(
            parse_args(args("--shape-held-bytes 1073741825")).unwrap_err(),
            "--shape-held-bytes: 1073741825 is more than 1073741824 (1 GiB)"
        );
    }
}
