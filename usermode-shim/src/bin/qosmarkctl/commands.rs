//! Running the back-end commands over a [`Backend`], and turning failures into an exit code and
//! a message that says what to do next.
//!
//! Exit codes (the crate README documents them; `replay` uses 0, 1 and 2 with the same
//! meanings):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the back end refused the request (the message names the Win32 error) |
//! | 2 | bad usage or bad input (usage, rules file): nothing was sent |
//! | 3 | the back end is unreachable: driver / `qosmarkd` not running, versions differ, connection lost |
//! | 4 | access denied: the command needs an administrator (Windows) / root or `CAP_NET_ADMIN` (Linux) |

use crate::args::{EntryChange, RulesCommand, TableCommand};
use crate::backend::{Backend, OpenError};
use crate::render::Output;
use qosmark_abi::heapless_name::RuleName;
use qosmark_abi::status::Win32Error;
use qosmark_abi::{FlowId, Request, Response, RuleSpec, TrafficTable};

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the back end refused the request.
pub const EXIT_REFUSED: u8 = 1;
/// Exit code: bad usage or bad input; nothing sent.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the back end is unreachable.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: access denied.
pub const EXIT_ACCESS_DENIED: u8 = 4;

/// A failed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Process exit code.
    pub exit: u8,
    /// The back end's Win32 error, when it answered one.
    pub win32: Option<u32>,
    /// What happened and what to do.
    pub message: String,
    /// Print the usage after the message.
    pub usage: bool,
}

impl Failure {
    /// A usage error (exit 2, usage printed).
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            exit: EXIT_USAGE,
            win32: None,
            message: message.into(),
            usage: true,
        }
    }

    /// Bad input (exit 2, no usage).
    pub fn input(message: impl Into<String>) -> Self {
        Failure {
            exit: EXIT_USAGE,
            win32: None,
            message: message.into(),
            usage: false,
        }
    }
}

/// How to become privileged on this platform.
const BECOME_ADMIN: &str = if cfg!(windows) {
    "run qosmarkctl from an elevated prompt (as administrator)"
} else {
    "run qosmarkctl as root (sudo) or with CAP_NET_ADMIN"
};

impl From<OpenError> for Failure {
    fn from(e: OpenError) -> Self {
        let exit = if e.win32 == Win32Error::ACCESS_DENIED {
            EXIT_ACCESS_DENIED
        } else {
            EXIT_UNREACHABLE
        };
        Failure {
            exit,
            win32: Some(e.win32.0),
            message: e.message,
            usage: false,
        }
    }
}

/// What a refused request means for `what` ("add rule voip", ...).
#[must_use]
pub fn refused(what: &str, code: Win32Error) -> Failure {
    let (exit, hint) = match code.0 {
        5 => (
            EXIT_ACCESS_DENIED,
            format!("access denied: this needs an administrator; {BECOME_ADMIN}"),
        ),
        183 => (EXIT_REFUSED, "already exists".to_owned()),
        1168 => (EXIT_REFUSED, "not found".to_owned()),
        1450 => (
            EXIT_REFUSED,
            "a limit of the back end is reached (rules, flows or sockets)".to_owned(),
        ),
        87 => (
            EXIT_REFUSED,
            "the back end refused it as invalid".to_owned(),
        ),
        8 => (EXIT_REFUSED, "the back end is out of memory".to_owned()),
        6 => (
            EXIT_UNREACHABLE,
            "the handle is no longer valid (back end restarted?): try again".to_owned(),
        ),
        1164 => (
            EXIT_UNREACHABLE,
            "the connection to the back end was lost (restarted or stopped?): check with \
             `qosmarkctl status` and try again"
                .to_owned(),
        ),
        31 => (EXIT_REFUSED, "general failure in the back end".to_owned()),
        n => (EXIT_REFUSED, format!("Win32 error {n}")),
    };
    Failure {
        exit,
        win32: Some(code.0),
        message: format!("{what}: {hint} (error {})", code.0),
        usage: false,
    }
}

fn call(b: &mut dyn Backend, what: &str, request: &Request) -> Result<Response, Failure> {
    b.call(request).map_err(|e| refused(what, e))
}

fn unexpected(what: &str, r: &Response) -> Failure {
    Failure {
        exit: EXIT_UNREACHABLE,
        win32: None,
        message: format!("{what}: the back end answered with {r:?}: versions differ?"),
        usage: false,
    }
}

/// `status`.
///
/// # Errors
/// [`Failure`].
pub fn status(b: &mut dyn Backend) -> Result<Output, Failure> {
    match call(b, "status", &Request::QueryStatus)? {
        Response::Status(info) => Ok(Output::Status {
            endpoint: b.endpoint(),
            info,
        }),
        other => Err(unexpected("status", &other)),
    }
}

/// `flows`: every page of `ListFlows`.
///
/// # Errors
/// [`Failure`].
pub fn flows(b: &mut dyn Backend) -> Result<Output, Failure> {
    let mut all = Vec::new();
    let mut after: FlowId = 0;
    loop {
        let page = match call(b, "flows", &Request::ListFlows { after })? {
            Response::Flows(page) => page,
            other => return Err(unexpected("flows", &other)),
        };
        all.extend(page.flows);
        // Pages advance strictly; a back end that does not is stopped rather than followed
        // around in a circle.
        if page.next_after == 0 || page.next_after <= after {
            break;
        }
        after = page.next_after;
    }
    Ok(Output::Flows(all))
}

fn list_rules(b: &mut dyn Backend) -> Result<Vec<qosmark_abi::RuleEntry>, Failure> {
    match call(b, "rules list", &Request::ListRules)? {
        Response::Rules(r) => Ok(r),
        other => Err(unexpected("rules list", &other)),
    }
}

/// `rules ...`; `load` has already been read and parsed into `specs`.
///
/// # Errors
/// [`Failure`].
pub fn rules(
    b: &mut dyn Backend,
    cmd: &RulesCommand,
    loaded: Option<Vec<RuleSpec>>,
) -> Result<Output, Failure> {
    match cmd {
        RulesCommand::List => list_rules(b).map(Output::Rules),
        RulesCommand::Export => {
            let specs: Vec<RuleSpec> = list_rules(b)?.into_iter().map(|r| r.spec).collect();
            Ok(Output::RulesFile(qosmark::rules_file::to_toml(&specs)))
        }
        RulesCommand::Add(spec) => {
            let what = format!("rules add {}", spec.name);
            call(b, &what, &Request::AddRule(spec.clone())).map_err(|mut f| {
                if f.win32 == Some(183) {
                    f.message = format!(
                        "{what}: a rule named {} already exists: remove it first, or choose \
                         another name",
                        spec.name
                    );
                }
                f
            })?;
            Ok(Output::RuleAdded(spec.name.as_str().to_owned()))
        }
        RulesCommand::Remove(name) => remove_rule(b, *name),
        RulesCommand::Load(path) => {
            let specs = loaded.unwrap_or_default();
            let count = specs.len();
            call(
                b,
                &format!("rules load {path}"),
                &Request::ReplaceRules(specs),
            )?;
            Ok(Output::RulesLoaded {
                count,
                path: path.clone(),
            })
        }
    }
}

fn remove_rule(b: &mut dyn Backend, name: RuleName) -> Result<Output, Failure> {
    let what = format!("rules remove {name}");
    call(b, &what, &Request::RemoveRule(name)).map_err(|mut f| {
        if f.win32 == Some(1168) {
            f.message =
                format!("{what}: no rule named {name} (`qosmarkctl rules list` shows them)");
        }
        f
    })?;
    Ok(Output::RuleRemoved(name.as_str().to_owned()))
}

/// The table after `cmd` (pure: tested without a back end).
#[must_use]
pub fn apply_table(mut t: TrafficTable, cmd: &TableCommand) -> TrafficTable {
    match cmd {
        TableCommand::Show => {}
        TableCommand::Reset => t = qosmark_engine::traffic::default_table(),
        TableCommand::Set(tt, EntryChange { dscp, pcp }) => {
            if let Some(entry) = t.marks.get_mut(tt.index()) {
                if let Some(d) = dscp {
                    entry.dscp = *d;
                }
                if let Some(p) = pcp {
                    entry.pcp = *p;
                }
            }
        }
        TableCommand::Allow(values) => {
            for d in values {
                t.user_dscp_allow |= 1u64 << d.value();
            }
        }
        TableCommand::Disallow(None) => t.user_dscp_allow = 0,
        TableCommand::Disallow(Some(values)) => {
            for d in values {
                t.user_dscp_allow &= !(1u64 << d.value());
            }
        }
        TableCommand::TagAdaptive(on) => t.tag_adaptive_flows = *on,
        TableCommand::NonConformant { dscp, pcp } => {
            if let Some(d) = dscp {
                t.non_conformant_dscp = *d;
            }
            if let Some(p) = pcp {
                t.non_conformant_pcp = *p;
            }
        }
    }
    t
}

/// `table ...`: read the table; for a change, write the changed table and show it.
///
/// Two administrators changing the table at the same moment: the last write wins (read,
/// change, write is not atomic across handles).
///
/// # Errors
/// [`Failure`].
pub fn table(b: &mut dyn Backend, cmd: &TableCommand) -> Result<Output, Failure> {
    let current = match call(b, "table", &Request::GetTrafficTable)? {
        Response::TrafficTable(t) => t,
        other => return Err(unexpected("table", &other)),
    };
    if *cmd == TableCommand::Show {
        return Ok(Output::Table(current));
    }
    let new = apply_table(current, cmd);
    call(b, "table", &Request::SetTrafficTable(new))?;
    Ok(Output::Table(new))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::panic,
        reason = "test code"
    )]
    use super::*;
    use crate::args::{parse, Command, Invocation};
    use crate::backend::in_process::backend;
    use qosmark_abi::{
        Caller, Dscp, Family, Privilege, Protocol, SocketInfo, TrafficType, QOS_NON_ADAPTIVE_FLOW,
    };

    fn inv(s: &str) -> Invocation {
        let v: Vec<String> = s.split_whitespace().map(str::to_owned).collect();
        parse(&v).unwrap()
    }

    fn rules_cmd(s: &str) -> RulesCommand {
        match inv(s).command {
            Command::Rules(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn table_cmd(s: &str) -> TableCommand {
        match inv(s).command {
            Command::Table(t) => t,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn status_counts_the_engine_state() {
        let (mut b, _engine) = backend(Privilege::Admin);
        rules(&mut b, &rules_cmd("rules add --name a --dscp 46"), None).unwrap();
        let Output::Status { info, endpoint } = status(&mut b).unwrap() else {
            panic!()
        };
        assert_eq!(endpoint, "in-process engine");
        assert_eq!(info.rules, 1);
        assert_eq!(info.handles, 1);
        assert_eq!(info.protocol_version, qosmark_abi::PROTOCOL_VERSION);
    }

    #[test]
    fn rules_add_list_remove_and_errors() {
        let (mut b, _engine) = backend(Privilege::Admin);
        let add = rules_cmd("rules add --name voip --protocol udp --remote-port 5004 --dscp ef");
        assert_eq!(
            rules(&mut b, &add, None).unwrap(),
            Output::RuleAdded("voip".into())
        );
        let again = rules(&mut b, &add, None).unwrap_err();
        assert_eq!((again.exit, again.win32), (EXIT_REFUSED, Some(183)));
        assert!(
            again.message.contains("already exists"),
            "{}",
            again.message
        );
        let Output::Rules(list) = rules(&mut b, &RulesCommand::List, None).unwrap() else {
            panic!()
        };
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].spec.name.as_str(), "voip");
        let Output::RulesFile(toml) = rules(&mut b, &RulesCommand::Export, None).unwrap() else {
            panic!()
        };
        let back = qosmark::rules_file::parse_rules(&toml).unwrap();
        assert_eq!(back, vec![list[0].spec.clone()]);
        let rm = rules_cmd("rules remove voip");
        assert_eq!(
            rules(&mut b, &rm, None).unwrap(),
            Output::RuleRemoved("voip".into())
        );
        let gone = rules(&mut b, &rm, None).unwrap_err();
        assert_eq!((gone.exit, gone.win32), (EXIT_REFUSED, Some(1168)));
        assert!(
            gone.message.contains("no rule named voip"),
            "{}",
            gone.message
        );
    }

    #[test]
    fn rules_load_replaces_everything() {
        let (mut b, _engine) = backend(Privilege::Admin);
        rules(&mut b, &rules_cmd("rules add --name old --dscp 8"), None).unwrap();
        let specs = qosmark::rules_file::parse_rules(
            "[[rule]]\nname = \"a\"\ndscp = 46\n\n[[rule]]\nname = \"b\"\n\
             traffic_type = \"voice\"\n",
        )
        .unwrap();
        let out = rules(&mut b, &rules_cmd("rules load f.toml"), Some(specs)).unwrap();
        assert_eq!(
            out,
            Output::RulesLoaded {
                count: 2,
                path: "f.toml".into()
            }
        );
        let Output::Rules(list) = rules(&mut b, &RulesCommand::List, None).unwrap() else {
            panic!()
        };
        let names: Vec<&str> = list.iter().map(|r| r.spec.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn users_are_refused_with_exit_4() {
        let (mut b, _engine) = backend(Privilege::User);
        let f = rules(&mut b, &rules_cmd("rules add --name a --dscp 46"), None).unwrap_err();
        assert_eq!((f.exit, f.win32), (EXIT_ACCESS_DENIED, Some(5)));
        assert!(f.message.contains("administrator"), "{}", f.message);
        let f = table(&mut b, &table_cmd("table allow ef")).unwrap_err();
        assert_eq!(f.exit, EXIT_ACCESS_DENIED);
        // Reading the table is open to everyone.
        assert!(matches!(
            table(&mut b, &TableCommand::Show).unwrap(),
            Output::Table(_)
        ));
    }

    #[test]
    fn table_changes_reach_the_engine() {
        let (mut b, _engine) = backend(Privilege::Admin);
        let out = table(&mut b, &table_cmd("table set voice --dscp ef --pcp 6")).unwrap();
        let Output::Table(t) = out else { panic!() };
        assert_eq!(t.marks[TrafficType::Voice.index()].dscp, Some(Dscp::EF));
        table(&mut b, &table_cmd("table allow 46 34")).unwrap();
        table(&mut b, &table_cmd("table disallow 34")).unwrap();
        let Output::Table(t) = table(&mut b, &TableCommand::Show).unwrap() else {
            panic!()
        };
        assert_eq!(t.user_dscp_allow, 1u64 << 46);
        assert_eq!(
            t.marks[TrafficType::Voice.index()]
                .pcp
                .map(qosmark_abi::Pcp::value),
            Some(6)
        );
        let Output::Table(t) = table(&mut b, &table_cmd("table reset")).unwrap() else {
            panic!()
        };
        assert_eq!(t, qosmark_engine::traffic::default_table());
    }

    #[test]
    fn apply_table_is_exact() {
        let d = qosmark_engine::traffic::default_table();
        let t = apply_table(d, &table_cmd("table set background --dscp none"));
        assert_eq!(t.marks[1].dscp, None);
        assert_eq!(t.marks[1].pcp, d.marks[1].pcp, "pcp untouched");
        assert_eq!(t.marks[2], d.marks[2], "other types untouched");
        let t = apply_table(d, &table_cmd("table allow 0 63"));
        assert_eq!(t.user_dscp_allow, 1 | (1u64 << 63));
        assert_eq!(
            apply_table(t, &table_cmd("table disallow --all")).user_dscp_allow,
            0
        );
        assert!(!apply_table(d, &table_cmd("table tag-adaptive off")).tag_adaptive_flows);
        let t = apply_table(d, &table_cmd("table set non-conformant --dscp cs1"));
        assert_eq!(
            (t.non_conformant_dscp.value(), t.non_conformant_pcp.value()),
            (8, 1)
        );
        assert_eq!(t.marks, d.marks, "traffic types untouched");
        let t = apply_table(t, &table_cmd("table set non-conformant --pcp=0"));
        assert_eq!(
            (t.non_conformant_dscp.value(), t.non_conformant_pcp.value()),
            (8, 0)
        );
    }

    #[test]
    fn flows_lists_every_page() {
        let (mut b, engine) = backend(Privilege::Admin);
        // More flows than one ListFlows page holds (512), from a second handle (pid 7).
        let mut engine = engine.lock().unwrap();
        let other = engine
            .open_handle(Caller {
                pid: 7,
                privilege: Privilege::User,
            })
            .unwrap();
        let n: u16 = 600;
        for i in 0..n {
            let req = Request::AddSocketToFlow {
                socket: SocketInfo {
                    socket: u64::from(i),
                    family: Family::V4,
                    protocol: Protocol::Udp,
                    local: format!("10.0.0.1:{}", 10_000 + i).parse().unwrap(),
                    peer: Some("192.0.2.1:5004".parse().unwrap()),
                },
                dest: None,
                traffic_type: TrafficType::Voice,
                flags: QOS_NON_ADAPTIVE_FLOW,
                flow_id: 0,
            };
            engine.apply(other, &req).unwrap();
        }
        drop(engine);
        let Output::Flows(all) = flows(&mut b).unwrap() else {
            panic!()
        };
        assert_eq!(all.len(), usize::from(n));
        assert!(all.windows(2).all(|w| w[0].id < w[1].id));
        assert!(all.iter().all(|f| f.pid == 7 && f.sockets.len() == 1));
        // A user sees only their own process's flows: none here.
        let (mut user, _engine) = backend(Privilege::User);
        assert_eq!(flows(&mut user).unwrap(), Output::Flows(vec![]));
    }

    #[test]
    fn transport_failures_are_unreachable() {
        let f = refused("status", Win32Error(1164));
        assert_eq!((f.exit, f.win32), (EXIT_UNREACHABLE, Some(1164)));
        assert!(
            f.message.starts_with("status: the connection"),
            "{}",
            f.message
        );
        let f = refused("x", Win32Error(1450));
        assert_eq!(f.exit, EXIT_REFUSED);
        let f: Failure = OpenError {
            win32: Win32Error(1068),
            message: "m".into(),
        }
        .into();
        assert_eq!((f.exit, f.win32), (EXIT_UNREACHABLE, Some(1068)));
        let f: Failure = OpenError {
            win32: Win32Error::ACCESS_DENIED,
            message: "m".into(),
        }
        .into();
        assert_eq!(f.exit, EXIT_ACCESS_DENIED);
    }
}
