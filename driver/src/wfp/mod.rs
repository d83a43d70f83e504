//! The WFP side of the driver: callout registration, the packet path and flow ownership.
//! The walkthrough, IRQL of every callback, lock order and unload order are in
//! `driver/docs/packet-path.md`.
//!
//! Plain Rust, compiled and unit-tested on every host:
//! * [`table`]: sublayer, callouts, layers and filters, as data.
//! * [`decide`]: every packet-path decision that needs no Windows API.
//! * [`flows`]: the registry of flow contexts we attached.
//! * [`gate`]: keeps the BFE state callback (and `release_dead_shapers`) out of state that
//!   unload is tearing down.
//! * [`shaping`]: held packets of delay verdicts and the release timer's decisions.
//!
//! Windows only (kernel calls): `registration` ([`Wfp`]: start and teardown, BFE
//! subscription, dynamic session and transaction), `callouts` (classify, notify and
//! flow-delete callbacks), `packet` (`NET_BUFFER` access, clone, inject, completion),
//! `release` (held clones, their lock, the high-resolution release timer,
//! `release_dead_shapers`).
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
pub(crate) mod shaping;
pub(crate) mod table;

#[cfg(all(windows, not(test)))]
mod callouts;
#[cfg(all(windows, not(test)))]
mod packet;
#[cfg(all(windows, not(test)))]
mod registration;
#[cfg(all(windows, not(test)))]
mod release;

#[cfg(all(windows, not(test)))]
pub(crate) use registration::Wfp;
/// After a control request that may have removed flows, handles, rules or rates: every held
/// packet whose shaper is gone leaves at once (the release timer sends it; nothing is
/// injected in the caller's context). `<= DISPATCH_LEVEL`, no lock held.
#[cfg(all(windows, not(test)))]
pub(crate) use release::release_dead_shapers;
