//! qosmark user-mode shim: the QOS2-compatible API (coming), its transports, and the
//! `qosmarkctl` tool.
//!
//! * [`rules_file`]: the administrator rules file (TOML) parser and writer.
//! * [`capture`]: pcap / pcapng reading and in-place patching.
//! * [`replay`]: offline replay of a capture through the engine (`qosmarkctl replay`).

pub mod capture;
pub mod replay;
pub mod rules_file;
