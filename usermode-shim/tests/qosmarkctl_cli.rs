//! End-to-end tests of the `qosmarkctl` binary against a unix-socket server in the test that
//! speaks the Linux control transport (`docs/linux-transport.md`: framed `abi` records, one
//! answer per request) in front of a real engine. Checks exit codes, JSON output, that bad
//! command lines and bad rules files send nothing, and the unreachable / version messages.
#![cfg(unix)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code"
)]

use qosmark_abi::codec::{self, ErrorReply};
use qosmark_abi::{
    Caller, Family, Privilege, Protocol, Request, Response, SocketInfo, StatusInfo, TrafficType,
};
use qosmark_engine::{Engine, Limits};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What the fake daemon does with each request.
#[derive(Clone, Copy)]
enum Mode {
    /// Hand it to the engine with a handle of this privilege.
    Engine(Privilege),
    /// Answer `QueryStatus` with another protocol version.
    WrongVersion,
}

struct Server {
    dir: PathBuf,
    socket: PathBuf,
    engine: Arc<Mutex<Engine>>,
    /// Requests received (all connections).
    requests: Arc<AtomicUsize>,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_record(s: &mut UnixStream) -> Option<Vec<u8>> {
    let mut rec = vec![0u8; codec::HEADER_LEN as usize];
    s.read_exact(&mut rec).ok()?;
    let len = codec::record_len(&rec).ok()? as usize;
    let mut rest = vec![0u8; len - rec.len()];
    s.read_exact(&mut rest).ok()?;
    rec.extend_from_slice(&rest);
    Some(rec)
}

fn serve(mut s: UnixStream, mode: Mode, engine: &Mutex<Engine>, requests: &AtomicUsize) {
    let handle = match mode {
        Mode::Engine(privilege) => Some(
            engine
                .lock()
                .unwrap()
                .open_handle(Caller { pid: 1, privilege })
                .unwrap(),
        ),
        Mode::WrongVersion => None,
    };
    while let Some(rec) = read_record(&mut s) {
        requests.fetch_add(1, Ordering::SeqCst);
        let req = codec::decode_request(&rec).expect("qosmarkctl sends valid records");
        let answer = match (mode, handle) {
            (Mode::Engine(_), Some(h)) => engine.lock().unwrap().apply(h, &req),
            _ => Ok(Response::Status(StatusInfo {
                protocol_version: qosmark_abi::PROTOCOL_VERSION + 1,
                ..StatusInfo::default()
            })),
        };
        let mut out = Vec::new();
        match answer {
            Ok(r) => codec::encode_response(&r, &mut out).unwrap(),
            Err(e) => codec::encode_error(
                ErrorReply {
                    win32: e.win32(),
                    required_size: 0,
                },
                &mut out,
            )
            .unwrap(),
        }
        if s.write_all(&out).is_err() {
            break;
        }
    }
    if let Some(h) = handle {
        let _ = engine.lock().unwrap().close_handle(h);
    }
}

fn server(mode: Mode) -> Server {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "qosmarkctl-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("qosmark.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let engine = Arc::new(Mutex::new(Engine::new(Limits::default())));
    let requests = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (e, r, c) = (engine.clone(), requests.clone(), connections.clone());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { break };
            c.fetch_add(1, Ordering::SeqCst);
            let (e, r) = (e.clone(), r.clone());
            std::thread::spawn(move || serve(s, mode, &e, &r));
        }
    });
    Server {
        dir,
        socket,
        engine,
        requests,
        connections,
    }
}

fn ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qosmarkctl"))
        .args(args)
        .env("QOSMARK_SOCKET", socket)
        .output()
        .unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited")
}

fn stdout_json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn status_reports_the_daemon() {
    let s = server(Mode::Engine(Privilege::User));
    let o = ctl(&s.socket, &["status", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let j = stdout_json(&o);
    assert_eq!(j["reachable"], true);
    assert_eq!(j["endpoint"], s.socket.display().to_string());
    assert_eq!(j["protocol_version"], qosmark_abi::PROTOCOL_VERSION);
    assert_eq!(j["handles"], 1, "qosmarkctl's own handle");
    assert_eq!(j["fail_open"]["verdict_failed"], 0);
    let o = ctl(&s.socket, &["status"]);
    assert_eq!(code(&o), 0);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("(reachable, protocol version 1)"), "{text}");
}

#[test]
fn unreachable_daemon_exit_3_with_what_to_do() {
    let dir = std::env::temp_dir().join(format!("qosmarkctl-none-{}", std::process::id()));
    let missing = dir.join("absent.sock");
    let o = ctl(&missing, &["status", "--json"]);
    assert_eq!(code(&o), 3);
    let j = stdout_json(&o);
    assert_eq!(j["reachable"], false);
    assert_eq!(j["error"]["exit"], 3);
    assert_eq!(j["error"]["win32"], 1068);
    let e = stderr(&o);
    assert!(e.contains("qosmarkd is not running"), "{e}");
    assert!(e.contains(&missing.display().to_string()), "{e}");
    assert!(
        e.contains("sudo qosmarkd") && e.contains("QOSMARK_SOCKET"),
        "{e}"
    );
    let o = ctl(&missing, &["rules", "list"]);
    assert_eq!(code(&o), 3);
}

#[test]
fn version_mismatch_is_unreachable() {
    let s = server(Mode::WrongVersion);
    let o = ctl(&s.socket, &["table", "--json"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert_eq!(stdout_json(&o)["error"]["win32"], 1306);
    assert!(stderr(&o).contains("different versions"), "{}", stderr(&o));
}

#[test]
fn bad_usage_sends_nothing() {
    let s = server(Mode::Engine(Privilege::Admin));
    for args in [
        &["status", "--bogus"][..],
        &["rules", "add", "--name", "a", "--dscp", "64"],
        &["rules", "add", "--dscp", "46"],
        &["table", "set", "voice", "--dscp", "99"],
        &["table", "allow"],
        &["flows", "extra"],
        &["nonsense"],
    ] {
        let o = ctl(&s.socket, args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("usage:"), "{args:?}");
    }
    let o = ctl(&s.socket, &["rules", "add", "--json", "--dscp", "46"]);
    assert_eq!(code(&o), 2);
    assert_eq!(stdout_json(&o)["error"]["exit"], 2);
    assert_eq!(s.connections.load(Ordering::SeqCst), 0, "nothing was sent");
}

#[test]
fn rules_load_add_list_remove() {
    let s = server(Mode::Engine(Privilege::Admin));
    let file = s.dir.join("rules.toml");
    std::fs::write(
        &file,
        "[[rule]]\nname = \"sip\"\nprotocol = \"udp\"\nremote_port = 5060\ndscp = 24\n\n\
         [[rule]]\nname = \"media\"\nremote_port = \"16384-32767\"\ntraffic_type = \"voice\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let o = ctl(&s.socket, &["rules", "load", f, "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout_json(&o)["loaded"], 2);
    let o = ctl(
        &s.socket,
        &[
            "rules",
            "add",
            "--name",
            "ef",
            "--remote-address",
            "192.0.2.0/24",
            "--dscp",
            "ef",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = ctl(&s.socket, &["rules", "list", "--json"]);
    let j = stdout_json(&o);
    let names: Vec<&str> = j["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sip", "media", "ef"]);
    assert_eq!(j["rules"][2]["dscp"], 46);
    assert_eq!(j["rules"][2]["remote_address"], "192.0.2.0/24");
    assert_eq!(j["rules"][1]["traffic_type"], "voice");
    // Same name again: refused by the engine, exit 1.
    let o = ctl(&s.socket, &["rules", "add", "--name", "ef", "--dscp", "1"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    let o = ctl(&s.socket, &["rules", "remove", "sip"]);
    assert_eq!(code(&o), 0);
    let o = ctl(&s.socket, &["rules", "remove", "sip", "--json"]);
    assert_eq!(code(&o), 1);
    assert_eq!(stdout_json(&o)["error"]["win32"], 1168);
    // A bad file: exit 2 with its line, nothing sent, rules unchanged.
    std::fs::write(&file, "[[rule]]\nname = \"x\"\ndscp = 77\n").unwrap();
    let before = s.requests.load(Ordering::SeqCst);
    let o = ctl(&s.socket, &["rules", "load", f]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains(&format!("{f}:3: ")), "{}", stderr(&o));
    assert_eq!(s.requests.load(Ordering::SeqCst), before);
    let o = ctl(&s.socket, &["rules", "list", "--json"]);
    assert_eq!(
        stdout_json(&o)["rules"].as_array().unwrap().len(),
        2,
        "unchanged"
    );
    // Export prints a rules file that load reads back.
    let o = ctl(&s.socket, &["rules", "export"]);
    std::fs::write(&file, &o.stdout).unwrap();
    let o = ctl(&s.socket, &["rules", "load", f, "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout_json(&o)["loaded"], 2);
}

#[test]
fn users_get_exit_4_for_admin_commands() {
    let s = server(Mode::Engine(Privilege::User));
    let o = ctl(&s.socket, &["rules", "add", "--name", "a", "--dscp", "46"]);
    assert_eq!(code(&o), 4);
    let e = stderr(&o);
    assert!(e.contains("access denied") && e.contains("root"), "{e}");
    let o = ctl(&s.socket, &["table", "allow", "ef", "--json"]);
    assert_eq!(code(&o), 4);
    assert_eq!(stdout_json(&o)["error"]["win32"], 5);
    // Reading the table needs no privilege.
    let o = ctl(&s.socket, &["table", "--json"]);
    assert_eq!(code(&o), 0);
    assert_eq!(stdout_json(&o)["traffic_types"][4]["dscp"], 56);
}

#[test]
fn table_changes_and_flows() {
    let s = server(Mode::Engine(Privilege::Admin));
    let o = ctl(
        &s.socket,
        &["table", "set", "voice", "--dscp", "ef", "--pcp", "6"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = ctl(&s.socket, &["table", "allow", "46,34", "--json"]);
    assert_eq!(
        stdout_json(&o)["user_dscp_allow"],
        serde_json::json!([34, 46])
    );
    // A flow registered by "an application" (another handle on the same engine).
    {
        let mut e = s.engine.lock().unwrap();
        let h = e
            .open_handle(Caller {
                pid: 4711,
                privilege: Privilege::User,
            })
            .unwrap();
        let req = Request::AddSocketToFlow {
            socket: SocketInfo {
                socket: 9,
                family: Family::V6,
                protocol: Protocol::Udp,
                local: "[::]:5004".parse().unwrap(),
                peer: None,
            },
            dest: Some("[::ffff:192.0.2.7]:6000".parse().unwrap()),
            traffic_type: TrafficType::Voice,
            flags: 0,
            flow_id: 0,
        };
        e.apply(h, &req).unwrap();
    }
    let o = ctl(&s.socket, &["flows", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let j = stdout_json(&o);
    let f = &j["flows"][0];
    assert_eq!(f["pid"], 4711);
    assert_eq!(f["traffic_type"], "voice");
    assert_eq!(
        f["mark"]["dscp"], 46,
        "the table change applies to the live flow"
    );
    assert_eq!(f["mark"]["pcp"], 6);
    assert_eq!(f["sockets"][0]["local"], "*:5004");
    assert_eq!(
        f["sockets"][0]["remote"], "192.0.2.7:6000",
        "v4-mapped shown as IPv4"
    );
    let o = ctl(&s.socket, &["flows"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("socket 9 udp *:5004 -> 192.0.2.7:6000"),
        "{text}"
    );
}
