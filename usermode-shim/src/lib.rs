//! qosmark user-mode shim: the QOS2-compatible API, transports, and the `qosmarkctl` tool.
//!
//! * [`capture`]: pcap / pcapng reading and in-place patching.
//! * [`replay`]: offline replay of a capture through the engine (`qosmarkctl replay`).

pub mod capture;
pub mod replay;
