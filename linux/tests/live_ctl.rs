//! `qosmarkctl` against `qosmarkd`: `status` and `flows` show a live flow and its packets,
//! `rules load` and `table allow` change the daemon and reach its state file, and an absent
//! daemon is exit code 3.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failure"
)]

mod common;

use common::{
    check_udp, in_ns, live, send_tagged, Capture, Client, Daemon, DaemonOptions, Expect, Net,
    UdpSink,
};
use qosmark_engine::abi::TrafficType;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `qosmarkctl` into a target directory of its own (the running `cargo test` holds the
/// main one; the C API test shares this one).
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

fn ctl(exe: &Path, socket: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(exe)
        .args(args)
        .env("QOSMARK_SOCKET", socket)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn qosmarkctl_status_flows_rules_and_table() {
    if !live() {
        return;
    }
    let exe = qosmarkctl();
    let net = Net::new();
    let daemon = Daemon::start(&net, &DaemonOptions::default());
    let dest = net.receiver_addr(false, 8200);
    let sink = UdpSink::start(&net, &[dest]);
    let capture = Capture::start(&net);
    let bind = net.sender_addr(false, 0);
    let sock = in_ns(&net.sender, move || {
        let s = UdpSocket::bind(bind).unwrap();
        s.connect(dest).unwrap();
        s
    });
    let mut client = Client::connect(&daemon.socket);
    let flow = client
        .add_socket(&sock, None, TrafficType::Voice, 0, 0)
        .unwrap();
    send_tagged(&sock, None, "ctl", 10);
    assert_eq!(sink.wait_for("ctl", 10), 10);

    let (code, out) = ctl(&exe, &daemon.socket, &["status", "--json"]);
    assert_eq!(code, 0, "{out}");
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(status["reachable"], true, "{out}");
    assert_eq!(status["flows"], 1, "{out}");
    assert!(status["marked"].as_u64().unwrap() >= 10, "{out}");

    let (code, out) = ctl(&exe, &daemon.socket, &["flows", "--json"]);
    assert_eq!(code, 0, "{out}");
    let flows: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let listed = flows["flows"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{out}");
    assert_eq!(listed[0]["id"], flow, "{out}");
    assert!(out.contains("56"), "the flow's DSCP is shown: {out}");

    let rules = net.dir.join("ctl-rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"from-ctl\"\nprotocol = \"udp\"\nremote_port = 8201\ndscp = 12\n",
    )
    .unwrap();
    let (code, out) = ctl(
        &exe,
        &daemon.socket,
        &["rules", "load", rules.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = ctl(&exe, &daemon.socket, &["table", "allow", "46"]);
    assert_eq!(code, 0, "{out}");
    let state = std::fs::read_to_string(&daemon.state).unwrap();
    assert!(state.contains("name = \"from-ctl\""), "{state}");
    assert!(state.contains("user_dscp_allow = [46]"), "{state}");

    let seen = capture.finish();
    assert_eq!(check_udp(&seen, "ctl", 0, Expect::Dscp(56)), 10);
    drop(client);
    daemon.stop();
    // No daemon: exit code 3.
    let (code, out) = ctl(&exe, &net.dir.join("absent.sock"), &["status"]);
    assert_eq!(code, 3, "{out}");
}
