//! The state file: what administrators changed at run time, so it survives a restart.
//!
//! ## What is persisted
//! The traffic-type table (DSCP and 802.1p per type), the user DSCP allow-list, whether
//! adaptive flows request 802.1p, the non-conformant DSCP and 802.1p (shaping), and the
//! **current admin rule set** (with their `throttle_bps`) (rules added or removed
//! through requests at run time). Socket flows are never persisted: they belong to live
//! connections.
//!
//! ## Precedence at start
//! The table always comes from the state file (defaults when there is none). Rules come from
//! `--rules FILE` when it is given (the administrator's configuration wins; the state's rules
//! are then ignored and overwritten at the next change), else from the state file.
//!
//! ## Format (TOML, written by the daemon)
//! ```toml
//! version = 1
//! user_dscp_allow = [46]           # DSCP values ordinary users may set
//! tag_adaptive_flows = true
//! non_conformant_dscp = 0          # marks of packets above a QOSUseNonConformantMarkings
//! non_conformant_8021p = 1         # rate (absent: the defaults, 0 and 1)
//! [traffic_type.voice]             # best-effort, background, excellent-effort,
//! dscp = 56                        # audio-video, voice, control; absent key = "not added"
//! priority_8021p = 7
//! [[rule]]                         # the rules-file format, see qosmark::rules_file
//! name = "voip"
//! ...
//! ```
//! Writes are atomic: the text goes to `FILE.tmp` (mode 0644), is synced, then renamed over
//! `FILE`, so a crash leaves the old or the new state, never a mix.

use qosmark::rules_file;
use qosmark_engine::abi::{Dscp, Pcp, RuleSpec, TrafficTable, TrafficType, TrafficTypeMark};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// The persisted state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// Traffic table and user allow-list.
    pub table: TrafficTable,
    /// Admin rules, in insertion order.
    pub rules: Vec<RuleSpec>,
}

/// The name of a traffic type in the state file (the rules file's spelling).
#[must_use]
pub fn type_name(tt: TrafficType) -> &'static str {
    match tt {
        TrafficType::BestEffort => "best-effort",
        TrafficType::Background => "background",
        TrafficType::ExcellentEffort => "excellent-effort",
        TrafficType::AudioVideo => "audio-video",
        TrafficType::Voice => "voice",
        TrafficType::Control => "control",
    }
}

/// Writes `state` as TOML.
#[must_use]
pub fn to_toml(state: &State) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# qosmarkd state, rewritten by the daemon when an administrator changes the traffic\n\
         # table or the rules. Edit only while qosmarkd is stopped.\nversion = 1"
    );
    let allowed: Vec<String> = (0u8..64)
        .filter(|d| (state.table.user_dscp_allow >> d) & 1 == 1)
        .map(|d| d.to_string())
        .collect();
    let _ = writeln!(out, "user_dscp_allow = [{}]", allowed.join(", "));
    let _ = writeln!(
        out,
        "tag_adaptive_flows = {}",
        state.table.tag_adaptive_flows
    );
    let _ = writeln!(
        out,
        "non_conformant_dscp = {}\nnon_conformant_8021p = {}",
        state.table.non_conformant_dscp.value(),
        state.table.non_conformant_pcp.value()
    );
    for tt in TrafficType::ALL {
        let m = state
            .table
            .marks
            .get(tt.index())
            .copied()
            .unwrap_or(TrafficTypeMark {
                dscp: None,
                pcp: None,
            });
        let _ = writeln!(out, "\n[traffic_type.{}]", type_name(tt));
        if let Some(d) = m.dscp {
            let _ = writeln!(out, "dscp = {}", d.value());
        }
        if let Some(p) = m.pcp {
            let _ = writeln!(out, "priority_8021p = {}", p.value());
        }
    }
    if !state.rules.is_empty() {
        out.push('\n');
        out.push_str(&rules_file::to_toml(&state.rules));
    }
    out
}

fn small_int(value: &toml::Value, max: u8, what: &str) -> Result<u8, String> {
    value
        .as_integer()
        .and_then(|v| u8::try_from(v).ok())
        .filter(|v| *v <= max)
        .ok_or_else(|| format!("{what} must be an integer 0..={max}"))
}

/// Reads a state file's text. `rules_default` is used for the rules when the file has none.
///
/// # Errors
/// A one-line description of the first problem.
pub fn parse(text: &str, default_table: TrafficTable) -> Result<State, String> {
    let mut doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| e.message().to_owned())?;
    let mut table = default_table;
    let rules = match doc.remove("rule") {
        Some(rules) => {
            let mut only = toml::Table::new();
            only.insert("rule".to_owned(), rules);
            let text = toml::to_string(&only).map_err(|e| e.to_string())?;
            rules_file::parse_rules(&text).map_err(|e| format!("rules: {}", e.message))?
        }
        None => Vec::new(),
    };
    for (key, value) in doc {
        match key.as_str() {
            "version" => {
                if value.as_integer() != Some(1) {
                    return Err("version must be 1".to_owned());
                }
            }
            "user_dscp_allow" => {
                let list = value
                    .as_array()
                    .ok_or("user_dscp_allow must be an array of DSCP values")?;
                let mut bits = 0u64;
                for v in list {
                    bits |= 1u64 << small_int(v, 63, "a user_dscp_allow entry")?;
                }
                table.user_dscp_allow = bits;
            }
            "tag_adaptive_flows" => {
                table.tag_adaptive_flows = value
                    .as_bool()
                    .ok_or("tag_adaptive_flows must be true or false")?;
            }
            "non_conformant_dscp" => {
                let d = small_int(&value, 63, "non_conformant_dscp")?;
                table.non_conformant_dscp = Dscp::try_new(d).map_err(|_| "non_conformant_dscp")?;
            }
            "non_conformant_8021p" => {
                let p = small_int(&value, 7, "non_conformant_8021p")?;
                table.non_conformant_pcp = Pcp::try_new(p).map_err(|_| "non_conformant_8021p")?;
            }
            "traffic_type" => {
                let types = value
                    .as_table()
                    .ok_or("traffic_type must be a table of traffic types")?;
                for (name, entry) in types {
                    let tt = TrafficType::ALL
                        .into_iter()
                        .find(|t| type_name(*t) == name)
                        .ok_or_else(|| format!("unknown traffic type `{name}`"))?;
                    let entry = entry
                        .as_table()
                        .ok_or_else(|| format!("traffic_type.{name} must be a table"))?;
                    let mut mark = TrafficTypeMark {
                        dscp: None,
                        pcp: None,
                    };
                    for (k, v) in entry {
                        match k.as_str() {
                            "dscp" => {
                                mark.dscp = Dscp::try_new(small_int(v, 63, "dscp")?).ok();
                            }
                            "priority_8021p" => {
                                mark.pcp = Pcp::try_new(small_int(v, 7, "priority_8021p")?).ok();
                            }
                            other => {
                                return Err(format!("unknown key `{other}` in traffic_type.{name}"))
                            }
                        }
                    }
                    if let Some(slot) = table.marks.get_mut(tt.index()) {
                        *slot = mark;
                    }
                }
            }
            other => return Err(format!("unknown key `{other}`")),
        }
    }
    Ok(State { table, rules })
}

/// Reads the state file; `Ok(None)` when it does not exist.
///
/// # Errors
/// A one-line description (read error or content).
pub fn load(path: &Path, default_table: TrafficTable) -> Result<Option<State>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, default_table).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes the state file atomically (temporary file, fsync, rename, fsync of the directory),
/// creating its directory (0755). The file is 0600 (root's, as the daemon runs as root). The
/// temporary file `PATH.tmp` is created exclusively (`O_EXCL`, which never follows a symlink)
/// after removing a stale one, so a symlink planted there in a writable directory cannot make
/// the daemon overwrite another file.
///
/// # Errors
/// The I/O error.
pub fn save(path: &Path, state: &State) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    // Left by a crash mid-save (a symlink is removed itself, never followed).
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(to_toml(state).as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    // The rename itself is durable once the directory is.
    std::fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;
    use qosmark_engine::traffic::default_table;

    fn sample() -> State {
        let mut table = default_table();
        table.user_dscp_allow = (1 << 46) | (1 << 10) | 1;
        table.tag_adaptive_flows = false;
        table.marks[4] = TrafficTypeMark {
            dscp: Some(Dscp::EF),
            pcp: None,
        };
        table.non_conformant_dscp = Dscp::try_new(8).unwrap();
        table.non_conformant_pcp = Pcp::try_new(3).unwrap();
        let rules = rules_file::parse_rules(
            "[[rule]]\nname = \"voip\"\nprotocol = \"udp\"\nremote_port = \"5000-5100\"\ndscp = 46\n\
             [[rule]]\nname = \"bulk\"\nlocal_address = \"10.0.0.0/8\"\ntraffic_type = \"background\"\npriority_8021p = 1\nthrottle_bps = 2000000\n",
        )
        .unwrap();
        assert_eq!(rules.get(1).and_then(|r| r.throttle_bps), Some(2_000_000));
        State { table, rules }
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let text = to_toml(&s);
        assert_eq!(parse(&text, default_table()).unwrap(), s);
        let empty = State {
            table: default_table(),
            rules: Vec::new(),
        };
        assert_eq!(parse(&to_toml(&empty), default_table()).unwrap(), empty);
    }

    #[test]
    fn missing_keys_keep_defaults_and_errors_are_precise() {
        let s = parse("version = 1\n", default_table()).unwrap();
        assert_eq!(s.table, default_table());
        assert!(s.rules.is_empty());
        assert_eq!(
            parse("version = 2\n", default_table()).unwrap_err(),
            "version must be 1"
        );
        assert_eq!(
            parse("user_dscp_allow = [64]\n", default_table()).unwrap_err(),
            "a user_dscp_allow entry must be an integer 0..=63"
        );
        assert_eq!(
            parse("[traffic_type.loud]\ndscp = 1\n", default_table()).unwrap_err(),
            "unknown traffic type `loud`"
        );
        assert_eq!(
            parse("[traffic_type.voice]\npcp = 1\n", default_table()).unwrap_err(),
            "unknown key `pcp` in traffic_type.voice"
        );
        assert_eq!(
            parse("colour = 1\n", default_table()).unwrap_err(),
            "unknown key `colour`"
        );
        assert_eq!(
            parse("non_conformant_dscp = 64\n", default_table()).unwrap_err(),
            "non_conformant_dscp must be an integer 0..=63"
        );
        assert_eq!(
            parse("non_conformant_8021p = 8\n", default_table()).unwrap_err(),
            "non_conformant_8021p must be an integer 0..=7"
        );
        // A state file written before the non-conformant keys existed keeps the defaults.
        let s = parse("version = 1\ntag_adaptive_flows = true\n", default_table()).unwrap();
        assert_eq!(
            (s.table.non_conformant_dscp, s.table.non_conformant_pcp),
            (Dscp::CS0, Pcp::ONE)
        );
        assert!(parse("[[rule]]\nname = \"x\"\n", default_table())
            .unwrap_err()
            .starts_with("rules: "));
    }

    #[test]
    fn save_is_atomic_and_readable() {
        let dir = std::env::temp_dir().join(format!("qosmarkd-state-{}", std::process::id()));
        let path = dir.join("sub").join("state.toml");
        save(&path, &sample()).unwrap();
        assert_eq!(load(&path, default_table()).unwrap(), Some(sample()));
        assert!(!dir.join("sub").join("state.toml.tmp").exists());
        assert_eq!(load(&dir.join("none.toml"), default_table()).unwrap(), None);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "state file mode {mode:o}");
        // A symlink planted at the temporary path is replaced, not followed.
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("sub").join("state.toml.tmp")).unwrap();
        let mut other = sample();
        other.rules.clear();
        save(&path, &other).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(load(&path, default_table()).unwrap(), Some(other));
        assert!(!dir.join("sub").join("state.toml.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
