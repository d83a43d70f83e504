//! qosmark user-mode shim (skeleton).
