//! qosmark user-mode shim (skeleton).
//!
//! * [`rules_file`]: the administrator rules file (TOML) parser and writer.

pub mod rules_file;
