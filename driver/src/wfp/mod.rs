//! The WFP side of the driver: callout registration, the packet path and flow ownership.
//! The walkthrough, IRQL of every callback, lock order and unload order are in
//! `driver/docs/packet-path.md`.
//!
//! Plain Rust, compiled and unit-tested on every host:
//! * [`table`]: sublayer, callouts, layers and filters, as data.
//! * [`decide`]: every packet-path decision that needs no Windows API.
//! * [`flows`]: the registry of flow contexts we attached.
//! * [`gate`]: keeps the BFE state callback out of state that unload is tearing down.
//!
//! Windows only (kernel calls): `registration` ([`Wfp`]: start and teardown, BFE
//! subscription, dynamic session and transaction), `callouts` (classify, notify and
//! flow-delete callbacks), `packet` (`NET_BUFFER` access, clone, inject, completion).
#![cfg_attr(
    not(windows),
    allow(
        dead_code,
        reason = "on the host only the unit tests use the plain-Rust modules"
    )
)]

pub(crate) mod decide;
pub(crate) mod flows;
pub(crate) mod gate;
pub(crate) mod table;

#[cfg(all(windows, not(test)))]
mod callouts;
#[cfg(all(windows, not(test)))]
mod packet;
#[cfg(all(windows, not(test)))]
mod registration;

#[cfg(all(windows, not(test)))]
pub(crate) use registration::Wfp;
