//! Outgoing-rate shaping (`QOSSetFlow(QOSSetOutgoingRate)`, rule `throttle_bps`): one token
//! bucket per rate-limited flow or throttled rule, in GCRA form, lock-free, time passed in; and
//! [`HeldQueue`], the bounded container both back ends keep their delayed packets in.
//!
//! ## The bucket (GCRA, virtual scheduling)
//! A shaper with rate `r` bit/s charges a packet of `L` bytes (IP total length: qWAVE measures
//! the rate "at the IP level", headers included) its *packet time*
//! `T(L) = ceil(8 · L · 10⁹ / r)` ns ([`packet_time_ns`]). Its whole state is one number, the
//! theoretical arrival time `TAT`: the instant the flow's traffic so far would have finished at
//! exactly rate `r`. With tolerance (depth) `τ`, a packet arriving at `t`:
//!
//! * may leave at `d = max(t, TAT − τ)` — at once if `TAT − τ ≤ t` (conformant), else delayed;
//! * moves the state to `TAT' = max(TAT, t) + T(L)`.
//!
//! **Depth.** `τ = T(1500)` ([`depth_ns`], [`REFERENCE_PACKET_BYTES`]): one full-size Ethernet
//! packet's time at the rate, `12 000 / r` seconds (1.2 ms at 10 Mbit/s). In token-bucket terms:
//! a bucket of 1 500 bytes that refills at `r` and may send whenever it is not in debt.
//!
//! **The guarantee (exact).** Unrolling the recurrence gives, for packet `j` (arrival `tⱼ`,
//! packet times `Tₖ`), the delay
//!
//! ```text
//! wⱼ = max(0, max over i < j of (tᵢ + Tᵢ + … + Tⱼ₋₁) − tⱼ − τ)
//! ```
//!
//! Call a flow *J-early* when it never runs ahead of its rate by more than `J`: for all
//! `i < j`, `tⱼ − tᵢ ≥ Tᵢ + … + Tⱼ₋₁ − J`. Then every delay is at most `max(0, J − τ)`:
//! * a flow sending at its rate (J = 0), or up to one reference packet time early (J ≤ τ),
//!   is **never delayed**;
//! * a flow that sends at its rate but lets its packets bunch by up to *two* reference packet
//!   times (J ≤ 2τ) — timer jitter, a packet sent as soon as its bytes are ready — is delayed
//!   by **at most one packet time** `τ`.
//!
//! The bound is tight. `tests/shaper_conformance.rs` checks the formula against a separate
//! token-bucket simulation and the bound over random J-early sequences, and builds the
//! sequence that reaches it.
//!
//! **Arithmetic.** Times are `u64` nanoseconds of the back end's monotonic clock; sums saturate.
//! `T(L)` is computed in `u128` (no overflow for any `L` and rate) and rounded **up**, so the
//! shaper never sends faster than the rate: per packet it is slower by less than 1 ns, which is
//! below 0.01 % for a 1 500-byte packet up to 1 Gbit/s and 0.8 % at the 100 Gbit/s maximum.
//!
//! **Rates.** [`ShaperConfig::new`] refuses with 87 ([`EngineError::InvalidParameter`]):
//! * 0 and anything below one reference packet per second, [`MIN_RATE_BPS`] = 12 000 bit/s
//!   (1 500 bytes × 8): below that a single full-size packet would wait more than a second;
//! * anything above [`MAX_RATE_BPS`] = 100 Gbit/s: a minimal packet would then cost less than a
//!   nanosecond, the clock's unit, and the rounding above would stop being negligible.
//!
//! ## Behaviours ([`Behaviour`])
//! * `QOSShapeOnly` and `QOSShapeAndMark` → [`Behaviour::Shape`]: a packet that is not
//!   conformant is **delayed** until `d` ([`crate::Verdict::Delay`]) and keeps its conformant
//!   mark. qos-api.md §2.2: the two values' real difference is unconfirmed, so qosmark treats
//!   them identically.
//! * `QOSUseNonConformantMarkings` → [`Behaviour::NonConformantMark`]: nothing is delayed; a
//!   packet that is not conformant leaves **now** with the non-conformant mark (the traffic
//!   table's non-conformant DSCP and 802.1p, default 0 and 0) and does **not** take from the
//!   bucket (as a GCRA policer: non-conforming cells leave `TAT` alone), so the conformant
//!   packets are exactly those that fit the rate.
//!
//! ## Order: departure times never decrease
//! A packet is held whenever its departure is in the future **or the shaper still holds
//! packets** (then its departure may already have passed: it waits behind them, and the back
//! end releases it at once in order). Per shaper, departure times never decrease: `TAT` only
//! grows, and the `t` a shaper uses is the largest time any caller has passed it so far (one
//! `fetch_max`), so of two calls where one returns before the other starts, the later one never
//! departs earlier, whatever clock values the back end passes in. Hence a back end that
//! releases in (departure, arrival sequence) order — [`HeldQueue`] — keeps each flow's order.
//! Two calls that truly overlap (two CPUs, one flow) have no order to keep.
//!
//! ## Queue room, fail-open
//! A held packet needs room, reserved by `classify` before it answers `Delay`: per shaper at
//! most [`QueueLimits::packets_per_shaper`] packets and [`QueueLimits::bytes_per_shaper`]
//! bytes, and in total [`QueueLimits::packets_total`] / [`QueueLimits::bytes_total`] (sizes in
//! [`crate::Limits`]; a packet's "bytes" are its IP length, [`held_bytes`], whether the back
//! end passed it whole or only its headers). Without room
//! the packet is **sent now with its conformant mark** (fail open, never dropped), counted as
//! `FailOpen::ShaperQueueFull`, and does not take from the bucket. Such a packet may overtake
//! the flow's held packets: that is the price of not dropping it.
//!
//! ## Lifetime and the back-end contract
//! Shapers live in a slot table; a [`ShaperId`] is (slot, generation), so an id of a removed
//! shaper never names its successor. A flow's shaper is created by its first `SetOutgoingRate`
//! and removed with the flow (`QOSRemoveSocketFromFlow`, `QOSCloseHandle`); a rule's with the
//! rule. Changing a rate keeps the id. The back end:
//! 1. on `Verdict::Delay { mark, until_ns, shaper }` rewrites the packet with `mark`, pushes it
//!    into its [`HeldQueue`] with [`held_bytes`] of the bytes it classified as `bytes` and then
//!    releases what is due ([`HeldQueue::pop_due`]: `until_ns` may already have passed). If it
//!    cannot hold the packet (queue full, no memory) it sends it at once:
//!    `Engine::not_held` gives the room back and says which mark to write;
//! 2. for every packet it sends from the queue (or drops) calls
//!    [`crate::Engine::shaper_released`]`(shaper, bytes)` so the room comes back;
//! 3. after every control request that may remove shapers (or periodically) releases at once
//!    the held packets of every shaper for which [`crate::Engine::shaper_live`] is false
//!    ([`HeldQueue::drain_where`]). Releasing a dead shaper's packets needs no
//!    `shaper_released` (the engine returned their room when it removed the shaper; a call is
//!    harmless).
//!
//! Back ends should pass a system-wide monotonic clock (`CLOCK_MONOTONIC`,
//! `KeQueryInterruptTimePrecise`), the same one they release packets by.
use crate::EngineError;
use alloc::collections::BinaryHeap;
use alloc::vec::Vec;
use core::cmp::Ordering as CmpOrdering;
use core::num::NonZeroU32;
use core::sync::atomic::{AtomicU64, Ordering};
use qosmark_abi::{FlowRate, Shaping};

/// The packet size that defines the minimum rate and the bucket depth: one full-size Ethernet
/// payload, 1 500 bytes.
pub const REFERENCE_PACKET_BYTES: u64 = 1500;

/// The smallest accepted rate: one reference packet per second, 12 000 bit/s (the abi's
/// constant, which rule specs are validated against).
pub const MIN_RATE_BPS: u64 = qosmark_abi::MIN_RATE_BPS;

/// The largest accepted rate: 100 Gbit/s (see the module docs, *Arithmetic*).
pub const MAX_RATE_BPS: u64 = qosmark_abi::MAX_RATE_BPS;

const _: () = assert!(MIN_RATE_BPS == REFERENCE_PACKET_BYTES * 8);

const NS_PER_S: u128 = 1_000_000_000;

/// `ceil(8 · bytes · 10⁹ / rate_bps)` nanoseconds, saturating at `u64::MAX`; `rate_bps` 0 is
/// treated as 1.
#[must_use]
pub fn packet_time_ns(rate_bps: u64, bytes: u64) -> u64 {
    let bits_ns = u128::from(bytes) * 8 * NS_PER_S;
    let rate = u128::from(rate_bps.max(1));
    u64::try_from(bits_ns.div_ceil(rate)).unwrap_or(u64::MAX)
}

/// The queue room (bytes) `classify` reserves for a held packet whose bytes — from the IP
/// header on, as given to `classify` — are `packet`: its IP length from the header (IPv4
/// total length; IPv6 40 + payload length), or `packet.len()` when the header cannot be
/// parsed. The same value whether the back end passed the whole packet or only its headers,
/// so it is what the back end pushes into [`HeldQueue`] and passes to
/// `Engine::shaper_released`.
#[must_use]
pub fn held_bytes(packet: &[u8]) -> u64 {
    crate::wire::parse_ip(packet).map_or(packet.len(), |s| s.total_len) as u64
}

/// The bucket depth (GCRA tolerance τ) for a rate: one reference packet time.
#[must_use]
pub fn depth_ns(rate_bps: u64) -> u64 {
    packet_time_ns(rate_bps, REFERENCE_PACKET_BYTES)
}

/// What a shaper does with traffic above its rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// Delay it (`QOSShapeOnly`, `QOSShapeAndMark`, rule throttles).
    Shape,
    /// Send it now with the non-conformant mark (`QOSUseNonConformantMarkings`).
    NonConformantMark,
}

impl From<Shaping> for Behaviour {
    fn from(s: Shaping) -> Self {
        match s {
            Shaping::ShapeOnly | Shaping::ShapeAndMark => Behaviour::Shape,
            Shaping::UseNonConformantMarkings => Behaviour::NonConformantMark,
        }
    }
}

/// A validated rate and behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShaperConfig {
    rate_bps: u64,
    behaviour: Behaviour,
}

impl ShaperConfig {
    /// A configuration, if the rate is within [`MIN_RATE_BPS`]..=[`MAX_RATE_BPS`].
    ///
    /// # Errors
    /// [`EngineError::InvalidParameter`] (87) for any other rate (0 included).
    pub const fn new(rate_bps: u64, behaviour: Behaviour) -> Result<Self, EngineError> {
        if rate_bps < MIN_RATE_BPS || rate_bps > MAX_RATE_BPS {
            return Err(EngineError::InvalidParameter);
        }
        Ok(ShaperConfig {
            rate_bps,
            behaviour,
        })
    }

    /// The configuration a `QOS_FLOWRATE_OUTGOING` asks for (its `Reason` is not used).
    ///
    /// # Errors
    /// As [`ShaperConfig::new`].
    pub fn from_flow_rate(rate: &FlowRate) -> Result<Self, EngineError> {
        Self::new(rate.bandwidth, rate.shaping.into())
    }

    /// Bits per second.
    #[must_use]
    pub const fn rate_bps(&self) -> u64 {
        self.rate_bps
    }

    /// What happens above the rate.
    #[must_use]
    pub const fn behaviour(&self) -> Behaviour {
        self.behaviour
    }
}

/// Names one shaper: its slot and the slot's generation, so the id of a removed shaper never
/// names a later one (a slot would have to be reused 2³² − 1 times first). `Option<ShaperId>`
/// is 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShaperId {
    index: u32,
    generation: NonZeroU32,
}

impl ShaperId {
    /// The id as one `u64` (slot in the low half, generation in the high half), e.g. to carry
    /// it in a completion context. Never 0.
    #[must_use]
    pub const fn to_u64(self) -> u64 {
        ((self.generation.get() as u64) << 32) | self.index as u64
    }

    /// The id [`ShaperId::to_u64`] encoded; `None` for a value no id encodes to (generation 0).
    #[must_use]
    pub const fn from_u64(v: u64) -> Option<Self> {
        match NonZeroU32::new((v >> 32) as u32) {
            Some(generation) => Some(ShaperId {
                index: v as u32,
                generation,
            }),
            None => None,
        }
    }
}

/// Limits on held packets (see the module docs, *Queue room*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Held packets per shaper.
    pub packets_per_shaper: u64,
    /// Held bytes per shaper.
    pub bytes_per_shaper: u64,
    /// Held packets over all shapers (size the back end's [`HeldQueue`] with this).
    pub packets_total: u64,
    /// Held bytes over all shapers.
    pub bytes_total: u64,
    /// Longest delay a back end can hold a packet for (ns): a packet whose departure would be
    /// later is answered `NoRoom` before the bucket is touched, so a packet the back end could
    /// not hold never uses up the rate. `u64::MAX` = no cap.
    pub max_delay_ns: u64,
}

/// What the shaper decided for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Send now; `conformant` = within the rate (always true for [`Behaviour::Shape`]).
    Now { conformant: bool },
    /// Hold until `until_ns` (room reserved).
    Hold { until_ns: u64, conformant: bool },
    /// It should have been held, but there was no room: send now, conformant mark.
    NoRoom,
}

/// One shaper's state. The plain fields change only under `&mut` (control path); the atomics
/// are the packet path's.
#[derive(Debug)]
struct Slot {
    generation: NonZeroU32,
    live: bool,
    config: ShaperConfig,
    /// τ for `config`'s rate.
    tau_ns: u64,
    /// GCRA theoretical arrival time.
    tat: AtomicU64,
    /// Largest `now` any caller passed (the shaper's monotonic clock).
    clock: AtomicU64,
    held_packets: AtomicU64,
    held_bytes: AtomicU64,
    delayed: AtomicU64,
    non_conformant: AtomicU64,
    no_room: AtomicU64,
}

impl Slot {
    fn new(generation: NonZeroU32, config: ShaperConfig) -> Self {
        Slot {
            generation,
            live: true,
            config,
            tau_ns: depth_ns(config.rate_bps),
            tat: AtomicU64::new(0),
            clock: AtomicU64::new(0),
            held_packets: AtomicU64::new(0),
            held_bytes: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
            non_conformant: AtomicU64::new(0),
            no_room: AtomicU64::new(0),
        }
    }
}

/// Counters of one shaper.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShaperStats {
    /// Packets it told the back end to hold.
    pub delayed: u64,
    /// Packets it sent with the non-conformant mark.
    pub non_conformant: u64,
    /// Packets it should have held but had no room for (sent at once, fail open).
    pub no_room: u64,
    /// Packets held right now (reserved and not yet released).
    pub held_packets: u64,
    /// Bytes held right now.
    pub held_bytes: u64,
}

/// Takes one unit of `amount` from `counter` if it stays within `max`.
fn try_take(counter: &AtomicU64, amount: u64, max: u64) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            v.checked_add(amount).filter(|n| *n <= max)
        })
        .is_ok()
}

/// Gives back what [`try_take`] took (saturating at 0: a confused back end cannot wrap it).
fn give_back(counter: &AtomicU64, amount: u64) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        Some(v.saturating_sub(amount))
    });
}

/// All shapers. Slots are reused (with a new generation) after their shaper is removed.
#[derive(Debug)]
pub(crate) struct ShaperTable {
    slots: Vec<Slot>,
    /// Free slot indexes; its capacity always covers every slot, so freeing never allocates.
    free: Vec<u32>,
    live: usize,
    max_shapers: usize,
    limits: QueueLimits,
    held_packets: AtomicU64,
    held_bytes: AtomicU64,
}

impl ShaperTable {
    pub(crate) fn new(max_shapers: usize, limits: QueueLimits) -> Self {
        ShaperTable {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            max_shapers,
            limits,
            held_packets: AtomicU64::new(0),
            held_bytes: AtomicU64::new(0),
        }
    }

    /// Live shapers.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// The live slot `id` names.
    fn slot(&self, id: ShaperId) -> Option<&Slot> {
        self.slots
            .get(id.index as usize)
            .filter(|s| s.live && s.generation == id.generation)
    }

    fn slot_mut(&mut self, id: ShaperId) -> Option<&mut Slot> {
        self.slots
            .get_mut(id.index as usize)
            .filter(|s| s.live && s.generation == id.generation)
    }

    pub(crate) fn is_live(&self, id: ShaperId) -> bool {
        self.slot(id).is_some()
    }

    pub(crate) fn config(&self, id: ShaperId) -> Option<ShaperConfig> {
        self.slot(id).map(|s| s.config)
    }

    pub(crate) fn stats(&self, id: ShaperId) -> Option<ShaperStats> {
        self.slot(id).map(|s| ShaperStats {
            delayed: s.delayed.load(Ordering::Relaxed),
            non_conformant: s.non_conformant.load(Ordering::Relaxed),
            no_room: s.no_room.load(Ordering::Relaxed),
            held_packets: s.held_packets.load(Ordering::Relaxed),
            held_bytes: s.held_bytes.load(Ordering::Relaxed),
        })
    }

    /// Packets and bytes held over all shapers.
    pub(crate) fn held(&self) -> (u64, u64) {
        (
            self.held_packets.load(Ordering::Relaxed),
            self.held_bytes.load(Ordering::Relaxed),
        )
    }

    /// A new shaper. 1450 at the shaper limit, 8 when memory runs out; nothing changes then.
    pub(crate) fn create(&mut self, config: ShaperConfig) -> Result<ShaperId, EngineError> {
        if self.live >= self.max_shapers {
            return Err(EngineError::LimitReached);
        }
        if let Some(index) = self.free.pop() {
            if let Some(slot) = self.slots.get_mut(index as usize) {
                let generation = slot.generation.checked_add(1).unwrap_or(NonZeroU32::MIN);
                *slot = Slot::new(generation, config);
                self.live += 1;
                return Ok(ShaperId { index, generation });
            }
        }
        let index = u32::try_from(self.slots.len()).map_err(|_| EngineError::LimitReached)?;
        // Room for the slot, and for its index on the free list once it is removed.
        self.slots.try_reserve(1)?;
        self.free
            .try_reserve(self.slots.len() + 1 - self.free.len())?;
        self.slots.push(Slot::new(NonZeroU32::MIN, config));
        self.live += 1;
        Ok(ShaperId {
            index,
            generation: NonZeroU32::MIN,
        })
    }

    /// Changes a live shaper's rate or behaviour; its id and held packets stay. The bucket keeps
    /// its state, except that the next departure can be no earlier than any departure already
    /// scheduled (order is kept across the change). Returns false for a dead id.
    pub(crate) fn reconfigure(&mut self, id: ShaperId, config: ShaperConfig) -> bool {
        let Some(slot) = self.slot_mut(id) else {
            return false;
        };
        let tat = slot.tat.load(Ordering::Acquire);
        let clock = slot.clock.load(Ordering::Acquire);
        // Every departure so far is at most max(clock, TAT − τ_old).
        let latest = clock.max(tat.saturating_sub(slot.tau_ns));
        let tau = depth_ns(config.rate_bps);
        slot.tat
            .store(tat.max(latest.saturating_add(tau)), Ordering::Release);
        slot.tau_ns = tau;
        slot.config = config;
        true
    }

    /// Removes a shaper: its id is dead from now on and the room its held packets took is
    /// returned (the back end releases them at once, see the module docs). Never allocates.
    pub(crate) fn remove(&mut self, id: ShaperId) {
        let Some(slot) = self.slot_mut(id) else {
            return;
        };
        slot.live = false;
        let packets = slot.held_packets.swap(0, Ordering::AcqRel);
        let bytes = slot.held_bytes.swap(0, Ordering::AcqRel);
        give_back(&self.held_packets, packets);
        give_back(&self.held_bytes, bytes);
        self.live = self.live.saturating_sub(1);
        // Capacity was reserved when the slot was created; without it the slot is not reused.
        if self.free.len() < self.free.capacity() {
            self.free.push(id.index);
        }
    }

    /// A held packet of `id` left the back end's queue: its room comes back. Ignored for a
    /// dead id (its room came back when it was removed).
    pub(crate) fn released(&self, id: ShaperId, bytes: u64) {
        if let Some(slot) = self.slot(id) {
            if slot.held_packets.load(Ordering::Acquire) == 0 {
                return;
            }
            give_back(&slot.held_packets, 1);
            give_back(&slot.held_bytes, bytes);
            give_back(&self.held_packets, 1);
            give_back(&self.held_bytes, bytes);
        }
    }

    /// Reserves room for one held packet of `bytes` bytes in `slot`, or changes nothing.
    fn reserve(&self, slot: &Slot, bytes: u64) -> bool {
        let l = &self.limits;
        if !try_take(&slot.held_packets, 1, l.packets_per_shaper) {
            return false;
        }
        if !try_take(&slot.held_bytes, bytes, l.bytes_per_shaper) {
            give_back(&slot.held_packets, 1);
            return false;
        }
        if !try_take(&self.held_packets, 1, l.packets_total) {
            give_back(&slot.held_packets, 1);
            give_back(&slot.held_bytes, bytes);
            return false;
        }
        if !try_take(&self.held_bytes, bytes, l.bytes_total) {
            give_back(&self.held_packets, 1);
            give_back(&slot.held_packets, 1);
            give_back(&slot.held_bytes, bytes);
            return false;
        }
        true
    }

    fn unreserve(&self, slot: &Slot, bytes: u64) {
        give_back(&slot.held_packets, 1);
        give_back(&slot.held_bytes, bytes);
        give_back(&self.held_packets, 1);
        give_back(&self.held_bytes, bytes);
    }

    /// The shaper's decision for a packet of `ip_len` bytes at the IP level (charged to the
    /// bucket) whose held copy takes `held_bytes` of queue room, arriving at `now_ns`.
    /// Lock-free: a CAS loop on the shaper's `TAT`. A dead id admits everything at once.
    pub(crate) fn admit(&self, id: ShaperId, ip_len: u64, held_bytes: u64, now_ns: u64) -> Admit {
        let Some(slot) = self.slot(id) else {
            return Admit::Now { conformant: true };
        };
        let now = slot.clock.fetch_max(now_ns, Ordering::AcqRel).max(now_ns);
        let cost = packet_time_ns(slot.config.rate_bps, ip_len);
        let tau = slot.tau_ns;
        let shape = slot.config.behaviour == Behaviour::Shape;
        let mut reserved = false;
        let mut tat = slot.tat.load(Ordering::Acquire);
        loop {
            let earliest = now.max(tat.saturating_sub(tau));
            let conformant = earliest <= now;
            let backlog = slot.held_packets.load(Ordering::Acquire) > u64::from(reserved);
            let hold = backlog || (shape && !conformant);
            // Shaping charges every packet; marking charges only conformant ones.
            let new_tat = if shape || conformant {
                tat.max(now).saturating_add(cost)
            } else {
                tat
            };
            if hold && earliest.saturating_sub(now) > self.limits.max_delay_ns {
                // Beyond what the back end can hold: fail open without charging the bucket.
                if reserved {
                    self.unreserve(slot, held_bytes);
                }
                slot.no_room.fetch_add(1, Ordering::Relaxed);
                return Admit::NoRoom;
            }
            if hold && !reserved {
                if !self.reserve(slot, held_bytes) {
                    slot.no_room.fetch_add(1, Ordering::Relaxed);
                    return Admit::NoRoom;
                }
                reserved = true;
            } else if !hold && reserved {
                self.unreserve(slot, held_bytes);
                reserved = false;
            }
            if new_tat != tat {
                if let Err(current) = slot.tat.compare_exchange_weak(
                    tat,
                    new_tat,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    tat = current;
                    continue;
                }
            }
            let conformant = shape || conformant;
            if !conformant {
                slot.non_conformant.fetch_add(1, Ordering::Relaxed);
            }
            return if hold {
                slot.delayed.fetch_add(1, Ordering::Relaxed);
                Admit::Hold {
                    until_ns: earliest,
                    conformant,
                }
            } else {
                Admit::Now { conformant }
            };
        }
    }
}

/// One packet in a [`HeldQueue`].
#[derive(Debug)]
pub struct Held<T> {
    /// When it may leave (`Verdict::Delay::until_ns`).
    pub until_ns: u64,
    /// Arrival order: assigned by [`HeldQueue::push`], increasing.
    pub seq: u64,
    /// Its shaper.
    pub shaper: ShaperId,
    /// The bytes it holds (pass to `Engine::shaper_released` when it leaves).
    pub bytes: u64,
    /// The back end's packet.
    pub item: T,
}

impl<T> Held<T> {
    fn key(&self) -> (u64, u64) {
        (self.until_ns, self.seq)
    }
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<T> Eq for Held<T> {}

impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Held<T> {
    /// Reversed: the standard heap is a max-heap and the earliest (until, seq) must come first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other.key().cmp(&self.key())
    }
}

/// The back ends' bounded container of held packets, ordered by (departure, arrival sequence):
/// a binary heap in one buffer allocated (fallibly) at construction. `push`, `pop_due` and
/// `next_due` never allocate; `drain_where` neither (it partitions and sorts in place).
/// Not synchronized: the back end owns it under its own lock.
#[derive(Debug)]
pub struct HeldQueue<T> {
    heap: BinaryHeap<Held<T>>,
    capacity: usize,
    next_seq: u64,
}

impl<T> HeldQueue<T> {
    /// An empty queue for `capacity` packets, allocated now.
    ///
    /// # Errors
    /// [`EngineError::NoMemory`] when the buffer cannot be allocated.
    pub fn with_capacity(capacity: usize) -> Result<Self, EngineError> {
        let mut heap = BinaryHeap::new();
        heap.try_reserve_exact(capacity)?;
        Ok(HeldQueue {
            heap,
            capacity,
            next_seq: 0,
        })
    }

    /// Holds `item` until `until_ns`; it gets the next arrival sequence number.
    ///
    /// # Errors
    /// The item back when the queue is full: send it now (fail open) and call
    /// `Engine::shaper_released`.
    pub fn push(&mut self, until_ns: u64, shaper: ShaperId, bytes: u64, item: T) -> Result<(), T> {
        if self.heap.len() >= self.capacity {
            return Err(item);
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.heap.push(Held {
            until_ns,
            seq,
            shaper,
            bytes,
            item,
        });
        Ok(())
    }

    /// The earliest held packet if it is due (`until_ns <= now_ns`).
    pub fn pop_due(&mut self, now_ns: u64) -> Option<Held<T>> {
        if self.heap.peek()?.until_ns <= now_ns {
            self.heap.pop()
        } else {
            None
        }
    }

    /// When the earliest held packet is due (arm the timer for it).
    #[must_use]
    pub fn next_due(&self) -> Option<u64> {
        self.heap.peek().map(|h| h.until_ns)
    }

    /// Removes every packet of the shapers `which` selects and hands them to `out` in
    /// (departure, arrival) order; returns how many. For dead shapers: `|id|
    /// !engine.shaper_live(id)`. O(n log n), no allocation.
    pub fn drain_where(
        &mut self,
        mut which: impl FnMut(ShaperId) -> bool,
        mut out: impl FnMut(Held<T>),
    ) -> usize {
        if self.heap.is_empty() {
            return 0;
        }
        let mut v = core::mem::take(&mut self.heap).into_vec();
        // Partition: kept first, drained after `split`.
        let mut split = 0;
        for i in 0..v.len() {
            if !which(v.get(i).map_or(ShaperId::DUMMY, |h| h.shaper)) {
                v.swap(split, i);
                split += 1;
            }
        }
        let n = v.len() - split;
        if let Some(tail) = v.get_mut(split..) {
            tail.sort_unstable_by_key(Held::key);
        }
        for h in v.drain(split..) {
            out(h);
        }
        self.heap = BinaryHeap::from(v);
        n
    }

    /// [`HeldQueue::drain_where`] for one shaper.
    pub fn drain_shaper(&mut self, id: ShaperId, out: impl FnMut(Held<T>)) -> usize {
        self.drain_where(|s| s == id, out)
    }

    /// Removes everything (driver unload, daemon exit), in order.
    pub fn drain_all(&mut self, out: impl FnMut(Held<T>)) -> usize {
        self.drain_where(|_| true, out)
    }

    /// Held packets.
    #[must_use]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Nothing held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The most it holds.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl ShaperId {
    /// Placeholder for an index that cannot miss (never returned to callers).
    const DUMMY: ShaperId = ShaperId {
        index: u32::MAX,
        generation: NonZeroU32::MAX,
    };
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::panic,
        reason = "test code: a failed unwrap, index or panic is a failed test"
    )]
    use super::*;
    use alloc::vec;

    const MS: u64 = 1_000_000;

    fn limits(packets: u64, bytes: u64) -> QueueLimits {
        QueueLimits {
            packets_per_shaper: packets,
            bytes_per_shaper: bytes,
            packets_total: packets * 2,
            bytes_total: bytes * 2,
            max_delay_ns: u64::MAX,
        }
    }

    #[test]
    fn packet_time_rounds_up() {
        // 1500 bytes at 12 kbit/s is exactly one second.
        assert_eq!(packet_time_ns(12_000, 1500), 1_000_000_000);
        // 1 byte at 3 bit/s: 8/3 s, rounded up.
        assert_eq!(packet_time_ns(3, 1), 2_666_666_667);
        assert_eq!(depth_ns(10_000_000), 1_200_000);
        assert_eq!(packet_time_ns(1, u64::MAX), u64::MAX);
    }

    #[test]
    fn rate_bounds() {
        for bad in [0, 1, MIN_RATE_BPS - 1, MAX_RATE_BPS + 1, u64::MAX] {
            assert_eq!(
                ShaperConfig::new(bad, Behaviour::Shape),
                Err(EngineError::InvalidParameter),
                "{bad}"
            );
        }
        for good in [MIN_RATE_BPS, 1_000_000, MAX_RATE_BPS] {
            assert_eq!(
                ShaperConfig::new(good, Behaviour::Shape)
                    .unwrap()
                    .rate_bps(),
                good
            );
        }
    }

    #[test]
    fn id_round_trips_and_dead_ids_stay_dead() {
        let mut t = ShaperTable::new(2, limits(10, 10_000));
        let cfg = ShaperConfig::new(1_000_000, Behaviour::Shape).unwrap();
        let a = t.create(cfg).unwrap();
        assert_eq!(ShaperId::from_u64(a.to_u64()), Some(a));
        assert_eq!(ShaperId::from_u64(5), None);
        let b = t.create(cfg).unwrap();
        assert_eq!(t.create(cfg), Err(EngineError::LimitReached));
        t.remove(a);
        assert!(!t.is_live(a));
        assert!(t.is_live(b));
        let c = t.create(cfg).unwrap();
        // Same slot, new generation: the old id stays dead.
        assert_eq!(c.index, a.index);
        assert_ne!(c, a);
        assert!(!t.is_live(a));
        assert!(t.is_live(c));
    }

    #[test]
    fn back_to_back_packets_leave_at_the_rate() {
        // 1 Mbit/s: a 1000-byte packet takes 8 ms; depth 12 ms.
        let mut t = ShaperTable::new(1, limits(100, 1_000_000));
        let id = t
            .create(ShaperConfig::new(1_000_000, Behaviour::Shape).unwrap())
            .unwrap();
        let now = 1_000 * MS;
        let mut got = vec![];
        for _ in 0..5 {
            got.push(t.admit(id, 1000, 1000, now));
        }
        // Credit of 12 ms: the first two go at once (TAT − τ ≤ now), then 8 ms apart, and each
        // waits behind the held ones.
        assert_eq!(got[0], Admit::Now { conformant: true });
        assert_eq!(got[1], Admit::Now { conformant: true });
        assert_eq!(
            got[2],
            Admit::Hold {
                until_ns: now + 4 * MS,
                conformant: true
            }
        );
        assert_eq!(
            got[3],
            Admit::Hold {
                until_ns: now + 12 * MS,
                conformant: true
            }
        );
        assert_eq!(t.stats(id).unwrap().held_packets, 3);
        t.released(id, 1000);
        assert_eq!(t.stats(id).unwrap().held_packets, 2);
        assert_eq!(t.held(), (2, 2000));
        t.remove(id);
        assert_eq!(t.held(), (0, 0));
        t.released(id, 1000);
        assert_eq!(t.held(), (0, 0));
    }

    /// A 1 Mbit/s shaper under `l`, fed three 1500-byte packets at 10 ms: depth = one
    /// 1500-byte packet, so two go at once and the third waits 12 ms (asserted). Returns the
    /// table, the shaper and the arrival time.
    fn three_at_once(l: QueueLimits) -> (ShaperTable, ShaperId, u64) {
        let mut t = ShaperTable::new(1, l);
        let id = t
            .create(ShaperConfig::new(1_000_000, Behaviour::Shape).unwrap())
            .unwrap();
        let now = 10 * MS;
        assert_eq!(
            t.admit(id, 1500, 1500, now),
            Admit::Now { conformant: true }
        );
        assert_eq!(
            t.admit(id, 1500, 1500, now),
            Admit::Now { conformant: true }
        );
        assert_eq!(
            t.admit(id, 1500, 1500, now),
            Admit::Hold {
                until_ns: now + 12 * MS,
                conformant: true
            }
        );
        (t, id, now)
    }

    #[test]
    fn no_room_fails_open_without_charging() {
        let (t, id, now) = three_at_once(limits(1, 1_000_000));
        let tat = t.slots[0].tat.load(Ordering::Relaxed);
        assert_eq!(t.admit(id, 1500, 1500, now), Admit::NoRoom);
        assert_eq!(t.slots[0].tat.load(Ordering::Relaxed), tat);
        assert_eq!(t.stats(id).unwrap().no_room, 1);
    }

    /// A delay beyond `max_delay_ns` is `NoRoom` and leaves the bucket and the queue room
    /// untouched, so sustained overload beyond the cap cannot push the flow's later packets
    /// further and further out (the back end sends such packets at once).
    #[test]
    fn a_delay_beyond_the_cap_fails_open_without_charging() {
        let mut l = limits(100, 1_000_000);
        l.max_delay_ns = 20 * MS;
        // +12 ms held; the next would be +24 ms, beyond the cap.
        let (t, id, now) = three_at_once(l);
        let tat = t.slots[0].tat.load(Ordering::Relaxed);
        let held = t.held();
        for _ in 0..100 {
            assert_eq!(t.admit(id, 1500, 1500, now), Admit::NoRoom);
        }
        assert_eq!(t.slots[0].tat.load(Ordering::Relaxed), tat);
        assert_eq!(t.held(), held);
        assert_eq!(t.stats(id).unwrap().no_room, 100);
        // Once time passes, the next packet is held again right after the last held one.
        assert_eq!(
            t.admit(id, 1500, 1500, now + 5 * MS),
            Admit::Hold {
                until_ns: now + 24 * MS,
                conformant: true
            }
        );
    }

    #[test]
    fn non_conformant_marking_does_not_charge() {
        let mut t = ShaperTable::new(1, limits(10, 1_000_000));
        let id = t
            .create(ShaperConfig::new(1_200_000, Behaviour::NonConformantMark).unwrap())
            .unwrap();
        // 1500 bytes = 10 ms at 1.2 Mbit/s; depth 10 ms.
        let now = 100 * MS;
        assert_eq!(
            t.admit(id, 1500, 1500, now),
            Admit::Now { conformant: true }
        );
        assert_eq!(
            t.admit(id, 1500, 1500, now),
            Admit::Now { conformant: true }
        );
        assert_eq!(
            t.admit(id, 1500, 1500, now),
            Admit::Now { conformant: false }
        );
        assert_eq!(
            t.admit(id, 1500, 1500, now),
            Admit::Now { conformant: false }
        );
        // 10 ms later exactly one more fits.
        assert_eq!(
            t.admit(id, 1500, 1500, now + 10 * MS),
            Admit::Now { conformant: true }
        );
        assert_eq!(
            t.admit(id, 1500, 1500, now + 10 * MS),
            Admit::Now { conformant: false }
        );
        assert_eq!(t.stats(id).unwrap().non_conformant, 3);
        assert_eq!(t.held(), (0, 0));
    }

    #[test]
    fn reconfigure_keeps_order() {
        let mut t = ShaperTable::new(1, limits(100, 1_000_000));
        let id = t
            .create(ShaperConfig::new(100_000, Behaviour::Shape).unwrap())
            .unwrap();
        let now = 1_000 * MS;
        let mut last = 0;
        for _ in 0..4 {
            if let Admit::Hold { until_ns, .. } = t.admit(id, 1500, 1500, now) {
                last = until_ns;
            }
        }
        assert!(last > now);
        // Much faster now, and a much deeper bucket: still no departure before `last`.
        assert!(t.reconfigure(
            id,
            ShaperConfig::new(MAX_RATE_BPS, Behaviour::Shape).unwrap()
        ));
        match t.admit(id, 1500, 1500, now) {
            Admit::Hold { until_ns, .. } => assert!(until_ns >= last),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn held_queue_orders_by_time_then_arrival() {
        let mut t = ShaperTable::new(2, limits(1, 1));
        let cfg = ShaperConfig::new(MIN_RATE_BPS, Behaviour::Shape).unwrap();
        let a = t.create(cfg).unwrap();
        let b = t.create(cfg).unwrap();
        let mut q = HeldQueue::with_capacity(4).unwrap();
        q.push(20, a, 1, 'x').unwrap();
        q.push(10, b, 1, 'y').unwrap();
        q.push(20, b, 1, 'z').unwrap();
        q.push(10, a, 1, 'w').unwrap();
        assert_eq!(q.push(0, a, 1, 'v'), Err('v'));
        assert_eq!(q.next_due(), Some(10));
        assert!(q.pop_due(9).is_none());
        assert_eq!(q.pop_due(10).unwrap().item, 'y');
        let mut drained = vec![];
        assert_eq!(q.drain_shaper(a, |h| drained.push(h.item)), 2);
        assert_eq!(drained, ['w', 'x']);
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop_due(100).unwrap().item, 'z');
        assert!(q.is_empty());
        assert_eq!(q.next_due(), None);
    }
}
