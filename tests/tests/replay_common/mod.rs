//! Shared helpers of the `replay_*` integration tests: running the real `qosmarkctl` binary,
//! and an independent oracle built from tshark's dissection and etherparse.
//!
//! The oracle never uses qosmark's capture reader or engine: tshark reads IN and OUT (framing,
//! timestamps, raw frame bytes, header fields, its own IPv4 checksum verdict), a per-test rule
//! model written in plain Rust says which rule each packet matches, and etherparse re-checks
//! the IPv4 header checksum of every rewritten packet.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::missing_panics_doc,
    dead_code,
    reason = "test helpers: a failed expectation is a test failure"
)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A committed capture or rules file.
pub fn capture(name: &str) -> PathBuf {
    root().join("tests/captures").join(name)
}

/// A scratch directory for this test binary.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qosmark-replay-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The `qosmarkctl` binary. `cargo test -p qosmark-tests` does not build other packages'
/// binaries, so the first call builds it with the cargo that runs the tests, into the same
/// target directory (the test executable lives in `<target>/<profile>/deps/`).
pub fn qosmarkctl() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap().to_path_buf();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "qosmark-shim",
            "--bin",
            "qosmarkctl",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(root());
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo to build qosmarkctl");
        assert!(status.success(), "building qosmarkctl failed");
        let bin = profile_dir.join(format!("qosmarkctl{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "qosmarkctl not found at {}", bin.display());
        bin
    })
    .clone()
}

/// Runs `qosmarkctl` with these arguments.
pub fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(qosmarkctl())
        .args(args)
        .output()
        .expect("run qosmarkctl")
}

/// Runs `qosmarkctl replay --rules RULES IN OUT --json`, asserts success, returns the JSON.
pub fn replay_json(rules: &Path, input: &Path, output: &Path) -> serde_json::Value {
    let out = run(&[
        "replay".as_ref(),
        "--rules".as_ref(),
        rules.as_os_str(),
        input.as_os_str(),
        output.as_os_str(),
        "--json".as_ref(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "qosmarkctl failed on {}: {}",
        input.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints one JSON object")
}

fn tshark_cmd() -> Command {
    let mut c = Command::new("tshark");
    c.env("LC_ALL", "C");
    c
}

/// Fails with a clear message when tshark is missing.
pub fn require_tshark() {
    let ok = tshark_cmd()
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "tshark not found: install tshark (Debian: apt-get install tshark)"
    );
}

const FIELDS: &[&str] = &[
    "frame.time_epoch",
    "frame.len",
    "frame.cap_len",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "ip.dsfield.dscp",
    "ip.dsfield.ecn",
    "ip.checksum.status",
    "ipv6.tclass.dscp",
    "ipv6.tclass.ecn",
    "vlan.priority",
    "udp.srcport",
    "udp.dstport",
    "tcp.srcport",
    "tcp.dstport",
    "ip.flags.mf",
    "ip.frag_offset",
    "ip.id",
    "ipv6.fraghdr.offset",
    "ipv6.fraghdr.more",
    "ipv6.fraghdr.ident",
    "ip.len",
    "ipv6.plen",
    "ip.proto",
    "ipv6.nxt",
    "ieee8021ad.priority",
    "ip.hdr_len",
    "frame.interface_id",
];

/// One frame as tshark dissects it (first occurrence of each field; VLAN priorities keep all
/// tags, outermost first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Timestamp text as tshark prints it (compared as text, full precision).
    pub time: String,
    /// Wire length.
    pub len: u32,
    /// Captured length.
    pub cap_len: u32,
    /// Source and destination address, if IPv4 or IPv6.
    pub src: Option<IpAddr>,
    /// Destination address.
    pub dst: Option<IpAddr>,
    /// DSCP (IPv4 or IPv6).
    pub dscp: Option<u8>,
    /// ECN bits.
    pub ecn: Option<u8>,
    /// tshark's IPv4 header checksum status: 1 = good, 0 = bad, 2 = unverified.
    pub checksum_status: Option<u8>,
    /// PCP of each VLAN tag, outermost first.
    pub vlan_pcp: Vec<u8>,
    /// 6 = TCP, 17 = UDP with ports, else `None`.
    pub transport: Option<(u8, u16, u16)>,
    /// Fragment offset (in 8-byte units for IPv6, bytes for IPv4 as tshark prints them).
    pub frag_offset: u32,
    /// More-fragments flag.
    pub more_fragments: bool,
    /// Fragment identification.
    pub frag_id: u32,
    /// IP length (IPv4 total length, IPv6 payload length + 40).
    pub ip_len: u32,
    /// pcapng interface id (0 for pcap).
    pub interface: usize,
    /// IPv4 header length in bytes.
    pub ipv4_header_len: Option<u32>,
    /// IPv6 Next Header of the fixed header (0 = hop-by-hop, 60 = destination options, ...).
    pub ipv6_next: Option<u8>,
}

impl Frame {
    /// Carries IPv4 or IPv6.
    pub fn is_ip(&self) -> bool {
        self.src.is_some()
    }
    /// A fragment that is not the first one.
    pub fn is_later_fragment(&self) -> bool {
        self.frag_offset != 0
    }
    /// A first fragment of a fragmented datagram.
    pub fn is_first_fragment(&self) -> bool {
        self.frag_offset == 0 && self.more_fragments
    }
    /// Key that ties fragments of one datagram together.
    pub fn frag_key(&self) -> (Option<IpAddr>, Option<IpAddr>, u32) {
        (self.src, self.dst, self.frag_id)
    }
}

fn first(s: &str) -> Option<&str> {
    s.split(',').next().filter(|v| !v.is_empty())
}

fn num<T: std::str::FromStr>(s: &str) -> Option<T> {
    let v = first(s)?;
    if let Some(hex) = v.strip_prefix("0x") {
        let n = u64::from_str_radix(hex, 16).ok()?;
        return n.to_string().parse().ok();
    }
    v.parse().ok()
}

fn flag(s: &str) -> bool {
    matches!(first(s), Some("1" | "True" | "true"))
}

/// Dissects a capture with tshark (reassembly off, IPv4 checksum verification on).
pub fn dissect(path: &Path) -> Vec<Frame> {
    require_tshark();
    let mut cmd = tshark_cmd();
    cmd.arg("-r").arg(path).args([
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "ip.defragment:FALSE",
        "-o",
        "ipv6.defragment:FALSE",
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-E",
        "occurrence=a",
    ]);
    for f in FIELDS {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("run tshark");
    assert!(out.status.success(), "tshark failed on {}", path.display());
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .map(|line| {
            let c: Vec<&str> = line.split('\t').collect();
            assert_eq!(c.len(), FIELDS.len(), "tshark line: {line}");
            let v4 = first(c[3]).is_some();
            let (src, dst) = if v4 {
                (num::<IpAddr>(c[3]), num::<IpAddr>(c[4]))
            } else {
                (num::<IpAddr>(c[5]), num::<IpAddr>(c[6]))
            };
            let transport = if let (Some(s), Some(d)) = (num(c[13]), num(c[14])) {
                Some((17, s, d))
            } else if let (Some(s), Some(d)) = (num(c[15]), num(c[16])) {
                Some((6, s, d))
            } else {
                None
            };
            let (frag_offset, more_fragments, frag_id) = if v4 {
                (
                    num(c[18]).unwrap_or(0),
                    flag(c[17]),
                    num(c[19]).unwrap_or(0),
                )
            } else {
                (
                    num(c[20]).unwrap_or(0),
                    flag(c[21]),
                    num(c[22]).unwrap_or(0),
                )
            };
            Frame {
                time: c[0].to_owned(),
                len: num(c[1]).unwrap(),
                cap_len: num(c[2]).unwrap(),
                src,
                dst,
                dscp: if v4 { num(c[7]) } else { num(c[10]) },
                ecn: if v4 { num(c[8]) } else { num(c[11]) },
                checksum_status: if v4 { num(c[9]) } else { None },
                // 802.1ad (outer) tags first, then 802.1Q tags: outermost first.
                vlan_pcp: c[27]
                    .split(',')
                    .chain(c[12].split(','))
                    .filter_map(|v| v.parse().ok())
                    .collect(),
                transport,
                frag_offset,
                more_fragments,
                frag_id,
                ipv4_header_len: num(c[28]),
                interface: num(c[29]).unwrap_or(0),
                ipv6_next: if v4 { None } else { num(c[26]) },
                ip_len: if v4 {
                    num(c[23]).unwrap_or(0)
                } else {
                    num::<u32>(c[24]).map_or(0, |p| p + 40)
                },
            }
        })
        .collect()
}

/// The raw bytes of every frame, as tshark reads them.
pub fn raw_frames(path: &Path) -> Vec<Vec<u8>> {
    require_tshark();
    let out = tshark_cmd()
        .arg("-r")
        .arg(path)
        .args(["-T", "jsonraw", "-x"])
        .output()
        .expect("run tshark");
    assert!(out.status.success(), "tshark failed on {}", path.display());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let hex = p["_source"]["layers"]["frame_raw"][0].as_str().unwrap();
            (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

/// What the rule model says about one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    /// Rule name.
    pub rule: &'static str,
    /// DSCP the rule sets (`None` = adds no mark).
    pub dscp: Option<u8>,
    /// PCP the rule sets.
    pub pcp: Option<u8>,
}

/// Per-rule counts the model predicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Matched packets.
    pub packets: u64,
    /// Their IP bytes.
    pub bytes: u64,
    /// Rewritten.
    pub marked: u64,
    /// Already carrying the mark.
    pub already_marked: u64,
}

/// Result of [`check_replay`], for test-specific extra assertions.
pub struct Checked {
    /// The `--json` document.
    pub json: serde_json::Value,
    /// Frames of IN.
    pub input: Vec<Frame>,
    /// Frames of OUT.
    pub output: Vec<Frame>,
    /// Per rule, the model's counts.
    pub counts: HashMap<&'static str, Counts>,
}

/// Position of the IP header in a frame, found by etherparse (`link` = `LINKTYPE_` number).
fn ipv4_header_checksum_ok(link: u32, frame: &[u8]) -> Option<bool> {
    use etherparse::{NetSlice, SlicedPacket};
    let sliced = match link {
        1 => SlicedPacket::from_ethernet(frame),
        113 => SlicedPacket::from_linux_sll(frame),
        276 => SlicedPacket::from_ip(frame.get(20..)?),
        _ => SlicedPacket::from_ip(frame),
    }
    .ok()?;
    match sliced.net? {
        NetSlice::Ipv4(v4) => {
            let h = v4.header();
            Some(h.to_header().calc_header_checksum() == h.header_checksum())
        }
        _ => None,
    }
}

/// Runs replay on `input` with `rules`, and checks OUT against IN with the oracle:
/// * same file length, same number of frames, same timestamps and lengths;
/// * every byte that differs between the files lies inside a frame, at most four per frame;
/// * per packet, the rule `model` picks (fragments after the first follow their first
///   fragment): matched packets carry the rule's DSCP (or their own, when the rule adds
///   none), ECN unchanged, valid IPv4 checksum (tshark and etherparse), innermost PCP as the
///   rule says on tagged frames; all other packets are byte-identical;
/// * the per-rule and total numbers of the JSON summary equal the model's counts.
///
/// `links[i]` is the `LINKTYPE_` of pcapng interface `i` (one entry for pcap files).
#[allow(
    clippy::too_many_lines,
    reason = "one linear walk over the frames reads best whole"
)]
pub fn check_replay(
    input: &Path,
    rules: &Path,
    links: &[u32],
    model: &dyn Fn(&Frame) -> Option<Expect>,
) -> Checked {
    let out_path = scratch(&format!(
        "{}.out",
        input.file_name().unwrap().to_string_lossy()
    ));
    let json = replay_json(rules, input, &out_path);
    let in_bytes = std::fs::read(input).unwrap();
    let out_bytes = std::fs::read(&out_path).unwrap();
    assert_eq!(in_bytes.len(), out_bytes.len(), "output length differs");

    let fin = dissect(input);
    let fout = dissect(&out_path);
    let rin = raw_frames(input);
    let rout = raw_frames(&out_path);
    assert_eq!(fin.len(), fout.len(), "frame count differs");
    assert_eq!(rin.len(), fin.len());
    assert_eq!(rout.len(), fin.len());

    // Per rule: packets that carry ports, and later fragments (which follow their first
    // fragment's verdict) separately.
    let mut counts: HashMap<&'static str, Counts> = HashMap::new();
    let mut later: HashMap<&'static str, Counts> = HashMap::new();
    let mut first_fragments: HashMap<_, Option<Expect>> = HashMap::new();
    let mut frame_diffs = 0usize;
    let (mut not_ip, mut other_protocol, mut no_match, mut no_mark) = (0u64, 0u64, 0u64, 0u64);
    for (i, (a, b)) in fin.iter().zip(&fout).enumerate() {
        let n = i + 1;
        assert_eq!(a.time, b.time, "frame {n}: timestamp changed");
        assert_eq!(
            (a.len, a.cap_len),
            (b.len, b.cap_len),
            "frame {n}: length changed"
        );
        let diffs = rin[i].iter().zip(&rout[i]).filter(|(x, y)| x != y).count();
        frame_diffs += diffs;
        assert!(diffs <= 4, "frame {n}: {diffs} bytes changed");

        let expect = if !a.is_ip() {
            not_ip += 1;
            None
        } else if a.is_later_fragment() {
            first_fragments.get(&a.frag_key()).copied().flatten()
        } else if a.transport.is_none() {
            other_protocol += 1;
            None
        } else {
            let e = model(a);
            if a.is_first_fragment() {
                first_fragments.insert(a.frag_key(), e);
            }
            e
        };
        let Some(e) = expect else {
            if a.is_ip() && a.transport.is_some() {
                no_match += 1;
            }
            assert_eq!(rin[i], rout[i], "frame {n}: unmatched packet changed");
            continue;
        };
        let c = if a.is_later_fragment() {
            later.entry(e.rule).or_default()
        } else {
            counts.entry(e.rule).or_default()
        };
        c.packets += 1;
        c.bytes += u64::from(a.ip_len);
        let Some(dscp) = e.dscp else {
            no_mark += 1;
            assert_eq!(rin[i], rout[i], "frame {n}: rule {} adds no mark", e.rule);
            continue;
        };
        let pcp_done = e.pcp.is_none_or(|p| a.vlan_pcp.last() == Some(&p));
        if a.dscp == Some(dscp) && pcp_done {
            c.already_marked += 1;
            assert_eq!(
                rin[i], rout[i],
                "frame {n}: already marked, must be unchanged"
            );
            continue;
        }
        c.marked += 1;
        assert_eq!(b.dscp, Some(dscp), "frame {n}: DSCP of rule {}", e.rule);
        assert_eq!(a.ecn, b.ecn, "frame {n}: ECN changed");
        if b.checksum_status.is_some() {
            assert_eq!(
                b.checksum_status,
                Some(1),
                "frame {n}: tshark says bad IPv4 checksum"
            );
            assert_eq!(
                ipv4_header_checksum_ok(links[a.interface], &rout[i]),
                Some(true),
                "frame {n}: etherparse says bad IPv4 checksum"
            );
        }
        let mut want_pcp = a.vlan_pcp.clone();
        if let (Some(p), Some(last)) = (e.pcp, want_pcp.last_mut()) {
            *last = p;
        }
        assert_eq!(b.vlan_pcp, want_pcp, "frame {n}: VLAN priorities");
        assert_eq!((a.src, a.dst, a.transport), (b.src, b.dst, b.transport));
    }
    let file_diffs = in_bytes
        .iter()
        .zip(&out_bytes)
        .filter(|(x, y)| x != y)
        .count();
    assert_eq!(file_diffs, frame_diffs, "bytes outside packet data changed");

    let s = &json["summary"];
    assert_eq!(s["packets"], fin.len() as u64);
    assert_eq!(s["not_ip_frames"], not_ip);
    assert_eq!(s["cut_by_snaplen"], 0);
    assert_eq!(s["classified"], fin.len() as u64 - not_ip);
    assert_eq!(s["rewrite_failed"], 0);
    assert_eq!(s["skipped"]["other_protocol"], other_protocol);
    assert_eq!(s["skipped"]["no_match"], no_match);
    assert_eq!(s["skipped"]["no_mark_configured"], no_mark);
    for reason in [
        "not_ip",
        "malformed",
        "truncated",
        "fragment_unknown",
        "self_injected",
    ] {
        assert_eq!(s["skipped"][reason], 0, "skipped {reason}");
    }
    // A rule's counters count the packets whose ports the rule matched; later fragments follow
    // their first fragment's mark and are reported apart (`later_fragments_*`); the verdict
    // totals include every fragment.
    let mut all = counts.clone();
    for (name, l) in &later {
        let c = all.entry(name).or_default();
        c.packets += l.packets;
        c.bytes += l.bytes;
        c.marked += l.marked;
        c.already_marked += l.already_marked;
    }
    let mut total = Counts::default();
    for r in s["rules"].as_array().unwrap() {
        let name = r["name"].as_str().unwrap();
        let want_all = all.get(name).copied().unwrap_or_default();
        let want_ports = counts.get(name).copied().unwrap_or_default();
        let got = Counts {
            packets: r["packets"].as_u64().unwrap(),
            bytes: r["bytes"].as_u64().unwrap(),
            marked: r["marked"].as_u64().unwrap(),
            already_marked: r["already_marked"].as_u64().unwrap(),
        };
        assert_eq!(got, want_ports, "rule {name}");
        total.marked += want_all.marked;
        total.already_marked += want_all.already_marked;
    }
    for name in all.keys() {
        assert!(
            s["rules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == *name),
            "rule {name} missing from the summary"
        );
    }
    assert_eq!(s["marked"], total.marked);
    assert_eq!(s["already_marked"], total.already_marked);
    let later_marked: u64 = later.values().map(|l| l.marked).sum();
    let later_already: u64 = later.values().map(|l| l.already_marked).sum();
    assert_eq!(s["later_fragments_marked"], later_marked);
    assert_eq!(s["later_fragments_already_marked"], later_already);
    Checked {
        json,
        input: fin,
        output: fout,
        counts: all,
    }
}

/// True when `a` is inside `prefix/len`.
pub fn in_prefix(a: Option<IpAddr>, prefix: &str, len: u32) -> bool {
    match (a, prefix.parse::<IpAddr>().unwrap()) {
        (Some(IpAddr::V4(a)), IpAddr::V4(p)) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & m == u32::from(p)
        }
        (Some(IpAddr::V6(a)), IpAddr::V6(p)) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & m == u128::from(p)
        }
        _ => false,
    }
}

/// The model of `tests/captures/sample-rules.toml`.
pub fn sample_rules(f: &Frame) -> Option<Expect> {
    let (proto, sport, dport) = f.transport?;
    if proto == 17 && dport == 5060 {
        return Some(Expect {
            rule: "sip-signalling",
            dscp: Some(24),
            pcp: None,
        });
    }
    if proto == 17 && (10_000..=20_000).contains(&sport) {
        return Some(Expect {
            rule: "rtp-media",
            dscp: Some(46),
            pcp: None,
        });
    }
    if proto == 6 && dport == 8080 && in_prefix(f.dst, "10.231.0.0", 24) {
        return Some(Expect {
            rule: "bulk-tcp-v4",
            dscp: Some(10),
            pcp: None,
        });
    }
    if proto == 6 && in_prefix(f.dst, "fd00:231::", 64) {
        // Traffic type Voice: qWAVE's table gives CS7 (56).
        return Some(Expect {
            rule: "v6-tcp-voice",
            dscp: Some(56),
            pcp: None,
        });
    }
    if dport == 9999 {
        return Some(Expect {
            rule: "port-9999-best-effort",
            dscp: None,
            pcp: None,
        });
    }
    None
}

/// The model of `tests/captures/vlan-rules.toml`.
pub fn vlan_rules(f: &Frame) -> Option<Expect> {
    let (proto, sport, dport) = f.transport?;
    if proto == 17 && dport == 5060 {
        return Some(Expect {
            rule: "sip-cs3-pcp3",
            dscp: Some(24),
            pcp: Some(3),
        });
    }
    if proto == 17 && (10_000..=20_000).contains(&sport) {
        return Some(Expect {
            rule: "rtp-ef-pcp6",
            dscp: Some(46),
            pcp: Some(6),
        });
    }
    if proto == 6 {
        return Some(Expect {
            rule: "tcp-af11",
            dscp: Some(10),
            pcp: None,
        });
    }
    None
}
