//! Administrator rules — qosmark's equivalent of Windows policy-based `QoS` policies — and
//! their indexed classifier.
//!
//! ## Matching
//! A packet (seen as its outbound [`FiveTuple`]: local = source, remote = destination) matches a
//! rule when every condition the rule sets holds:
//! * protocol: `Tcp`/`Udp` must equal the packet's, `Any` matches both;
//! * local / remote prefix: the address is of the prefix's family (an IPv4 prefix never matches
//!   an IPv6 address and vice versa) and its first `len` bits equal the prefix's;
//! * local / remote port range: the port lies in the inclusive range.
//!
//! ## Which rule wins
//! One rule per packet (as on Windows: one policy per flow). Among the matching rules the
//! greatest `Rank` wins. Ranks compare lexicographically by:
//! 1. precedence (0..=255, higher wins);
//! 2. number of conditions ([`RuleSpec::condition_count`], more wins);
//! 3. prefix length ("the longer prefix", a more specific address match): the sum of the local
//!    and remote prefix lengths, absent prefixes counting 0 (two rules that both match one
//!    packet have prefixes of the packet's family, so the lengths are comparable);
//! 4. insertion order: the earlier-inserted rule wins (insertion order is a sequence number
//!    given at insert time; removing other rules does not change it).
//!
//! This is the order the rules format specifies. Windows additionally breaks ties between
//! policies with equally many conditions by *which* conditions they set (source prefix >
//! destination prefix > source port > destination port > protocol, qos-api.md §13.3); qosmark
//! does not: among equals, the earlier rule wins, which an administrator controls directly.
//!
//! Step 4 makes the order total, so the winner is always unique.
//!
//! ## Classifier (tuple-space search)
//! Rules are grouped into *classes* by their *shape*: the address family of their prefixes
//! (none when they set no prefix), the local and remote prefix lengths (or none), and whether
//! each port condition is a single port ("exact") or not (a real range, or none). Inside a class
//! every rule is hashed under a `Key` of protocol number, masked local and remote address and
//! exact ports (a rule with protocol `Any` is entered under TCP *and* UDP). A bucket holds the
//! indices of its rules sorted best `Rank` first; the candidates still have to pass their
//! port ranges, so the first candidate that matches is the best rule of that class. Classes are
//! kept sorted by the best rank they contain, so a lookup stops as soon as no remaining class
//! can beat the best match found so far.
//!
//! Inside a bucket the rules differ only by port *ranges* (and rank). When across the bucket at
//! most one side (local or remote) carries real ranges, the bucket keeps a *range index*: the
//! port line cut into elementary intervals at every range's first port and after its last,
//! each interval holding its best rule, so the bucket costs one binary search. A bucket whose
//! rules set ranges on both sides falls back to scanning its rules best-first.
//!
//! Cost of `RuleSet::lookup`: at most one hash probe (plus one binary search) per class,
//! `O(S log b)` with `S` the number of distinct shapes — independent of the number of rules
//! when rules share shapes (the usual case: e.g. a thousand "remote host + remote port" rules
//! form one class, a thousand local port ranges one bucket) — plus, only in buckets with ranges
//! on both sides, a scan of the rules that differ by those ranges. `S` is bounded by
//! the shape space, not by the rules: (1 + 33·33 + 129·129 + 33 + 33 + 129 + 129) prefix
//! shapes × 4 port shapes. No allocation: the index is precomputed by `RuleSet::insert` and
//! `RuleSet::remove`, where allocation is allowed (and fallible).
//!
//! Insert is `O(S log S + b)` (b = size of the buckets touched, intervals included); remove rebuilds the index in
//! `O(n · b)`; both leave the set unchanged when they fail.

use crate::counters::Counters;
use crate::shaper::{Behaviour, ShaperConfig, ShaperId, ShaperTable};
use crate::{EngineError, FiveTuple};
use alloc::vec::Vec;
use core::net::IpAddr;
use foldhash::fast::FixedState;
use hashbrown::HashMap;
use qosmark_abi::{
    heapless_name::RuleName, Pcp, PortRange, Prefix, RuleAction, RuleEntry, RuleProtocol, RuleSpec,
};

/// A rule match on the packet path.
#[derive(Debug)]
pub struct RuleHit<'a> {
    /// What the rule does.
    pub action: RuleAction,
    /// 802.1p, if the rule sets one.
    pub pcp: Option<Pcp>,
    /// The rule's counters.
    pub counters: &'a Counters,
    /// The rule's name.
    pub name: &'a RuleName,
    /// The rule's shaper, if it throttles.
    pub shaper: Option<ShaperId>,
}

/// The total order between rules: greater is better. See the module docs for the fields, most
/// significant first: precedence, condition count, total prefix length, then (inverted)
/// insertion sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Rank(u128);

impl Rank {
    /// The rank of `spec` inserted as the `seq`-th rule.
    fn of(spec: &RuleSpec, seq: u64) -> Rank {
        let prefix_bits = u16::from(spec.local_prefix.map_or(0, |p| p.len))
            + u16::from(spec.remote_prefix.map_or(0, |p| p.len));
        Rank(
            (u128::from(spec.precedence) << 120)
                | (u128::from(spec.condition_count()) << 112)
                | (u128::from(prefix_bits) << 96)
                | u128::from(u64::MAX - seq),
        )
    }
}

/// One stored rule.
#[derive(Debug)]
struct Rule {
    spec: RuleSpec,
    counters: Counters,
    /// One bucket for all the traffic the rule matches, when it throttles.
    shaper: Option<ShaperId>,
    rank: Rank,
}

/// The shaper a rule needs: one when it throttles (always delaying, as Windows' pacer does),
/// else none.
fn new_shaper(spec: &RuleSpec, shapers: &mut ShaperTable) -> Result<Option<ShaperId>, EngineError> {
    match spec.throttle_bps {
        None => Ok(None),
        Some(bps) => {
            let config = ShaperConfig::new(bps, Behaviour::Shape)?;
            shapers.create(config).map(Some)
        }
    }
}

/// Address family of a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

fn family_of(addr: IpAddr) -> Family {
    match addr {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

/// The first `len` bits of `addr` as an integer (IPv4 in the low 32 bits).
fn masked(addr: IpAddr, len: u8) -> u128 {
    match addr {
        IpAddr::V4(a) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len.min(32)))
            };
            u128::from(u32::from(a) & mask)
        }
        IpAddr::V6(a) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len.min(128)))
            };
            u128::from(a) & mask
        }
    }
}

fn prefix_matches(prefix: Option<Prefix>, addr: IpAddr) -> bool {
    prefix.is_none_or(|p| {
        family_of(p.addr) == family_of(addr) && masked(addr, p.len) == masked(p.addr, p.len)
    })
}

fn ports_match(range: Option<PortRange>, port: u16) -> bool {
    range.is_none_or(|r| (r.first..=r.last).contains(&port))
}

/// Whether `spec` matches `tuple` (the plain definition; the index only narrows candidates).
fn spec_matches(spec: &RuleSpec, tuple: &FiveTuple) -> bool {
    let protocol_ok = match spec.protocol {
        RuleProtocol::Any => true,
        RuleProtocol::Tcp => tuple.protocol == qosmark_abi::Protocol::Tcp,
        RuleProtocol::Udp => tuple.protocol == qosmark_abi::Protocol::Udp,
    };
    protocol_ok
        && prefix_matches(spec.local_prefix, tuple.local.ip())
        && prefix_matches(spec.remote_prefix, tuple.remote.ip())
        && ports_match(spec.local_ports, tuple.local.port())
        && ports_match(spec.remote_ports, tuple.remote.port())
}

/// The single port of a range that is one port.
fn exact_port(range: Option<PortRange>) -> Option<u16> {
    range.and_then(|r| (r.first == r.last).then_some(r.first))
}

/// Which fields of a packet a class hashes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    family: Option<Family>,
    local_len: Option<u8>,
    remote_len: Option<u8>,
    local_exact: bool,
    remote_exact: bool,
}

impl Shape {
    fn of(spec: &RuleSpec) -> Shape {
        let family = spec
            .local_prefix
            .or(spec.remote_prefix)
            .map(|p| family_of(p.addr));
        Shape {
            family,
            local_len: spec.local_prefix.map(|p| p.len),
            remote_len: spec.remote_prefix.map(|p| p.len),
            local_exact: exact_port(spec.local_ports).is_some(),
            remote_exact: exact_port(spec.remote_ports).is_some(),
        }
    }

    /// The key of a rule (of its own shape) under protocol number `protocol`.
    fn rule_key(spec: &RuleSpec, protocol: u8) -> Key {
        Key {
            protocol,
            local: spec.local_prefix.map_or(0, |p| masked(p.addr, p.len)),
            remote: spec.remote_prefix.map_or(0, |p| masked(p.addr, p.len)),
            local_port: exact_port(spec.local_ports).unwrap_or(0),
            remote_port: exact_port(spec.remote_ports).unwrap_or(0),
        }
    }

    /// The key a packet probes this class with, or `None` when the packet's address family
    /// cannot match the class's prefixes.
    fn packet_key(self, tuple: &FiveTuple) -> Option<Key> {
        let addr_part = |len: Option<u8>, addr: IpAddr| -> Option<u128> {
            match len {
                None => Some(0),
                Some(len) => (Some(family_of(addr)) == self.family).then(|| masked(addr, len)),
            }
        };
        Some(Key {
            protocol: tuple.protocol.number(),
            local: addr_part(self.local_len, tuple.local.ip())?,
            remote: addr_part(self.remote_len, tuple.remote.ip())?,
            local_port: if self.local_exact {
                tuple.local.port()
            } else {
                0
            },
            remote_port: if self.remote_exact {
                tuple.remote.port()
            } else {
                0
            },
        })
    }
}

/// Hash key inside a class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    protocol: u8,
    local: u128,
    remote: u128,
    local_port: u16,
    remote_port: u16,
}

fn protocols(p: RuleProtocol) -> &'static [u8] {
    match p {
        RuleProtocol::Tcp => &[6],
        RuleProtocol::Udp => &[17],
        RuleProtocol::Any => &[6, 17],
    }
}

/// Rules of one shape.
#[derive(Debug)]
struct Class {
    shape: Shape,
    /// Best rank of any rule in the class (`Rank(0)` while empty).
    best: Rank,
    /// Rule indices per key, best rank first, with their port-range index.
    buckets: HashMap<Key, Bucket, FixedState>,
}

/// No rule (in [`RangeIndex::best`]).
const NO_RULE: u32 = u32::MAX;

/// Which port a bucket's range index is keyed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Local,
    Remote,
}

/// The rules of one bucket differ only in their port *ranges* and rank (the key fixes
/// protocol, prefixes and exact ports). When at most one side (local or remote) carries real
/// ranges across the bucket, the port line is cut into elementary intervals, each holding its
/// best rule: a lookup is one binary search instead of a scan.
#[derive(Debug)]
enum RangeIndex {
    /// Indexed on `side` (`None` while no rule of the bucket has a range: one interval).
    On {
        side: Option<Side>,
        /// Start port of each interval, ascending; `starts[0] == 0`.
        starts: Vec<u16>,
        /// Best rule covering each interval, or [`NO_RULE`].
        best: Vec<u32>,
    },
    /// Rules with ranges on both sides: the bucket is scanned in rank order.
    Off,
}

/// The rules of one key.
#[derive(Debug)]
struct Bucket {
    /// Rule indices, best rank first.
    rules: Vec<u32>,
    ranges: RangeIndex,
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            rules: Vec::new(),
            ranges: RangeIndex::On {
                side: None,
                starts: Vec::new(),
                best: Vec::new(),
            },
        }
    }
}

/// The port ranges of `spec` that a packet reaching a bucket of `shape` still has to pass (an
/// exact port is part of the key, so it constrains nothing more).
fn open_ranges(shape: Shape, spec: &RuleSpec) -> (Option<PortRange>, Option<PortRange>) {
    let local = if shape.local_exact {
        None
    } else {
        spec.local_ports
    };
    let remote = if shape.remote_exact {
        None
    } else {
        spec.remote_ports
    };
    (local, remote)
}

impl RangeIndex {
    /// Makes room for one more rule (two more interval starts), so [`RangeIndex::insert`]
    /// cannot allocate.
    fn reserve(&mut self) -> Result<(), EngineError> {
        if let RangeIndex::On { starts, best, .. } = self {
            starts.try_reserve(3)?;
            best.try_reserve(3)?;
        }
        Ok(())
    }

    /// Enters rule `idx` (of rank `rank`, with the open ranges `ranges`) after
    /// [`RangeIndex::reserve`]. `rank_of` gives the rank of a rule already entered.
    fn insert(
        &mut self,
        idx: u32,
        rank: Rank,
        ranges: (Option<PortRange>, Option<PortRange>),
        rank_of: impl Fn(u32) -> Option<Rank>,
    ) {
        let RangeIndex::On { side, starts, best } = self else {
            return;
        };
        let (wanted, range) = match ranges {
            (None, None) => (None, None),
            (Some(r), None) => (Some(Side::Local), Some(r)),
            (None, Some(r)) => (Some(Side::Remote), Some(r)),
            (Some(_), Some(_)) => {
                *self = RangeIndex::Off;
                return;
            }
        };
        match (*side, wanted) {
            (Some(have), Some(want)) if have != want => {
                *self = RangeIndex::Off;
                return;
            }
            (None, Some(want)) => *side = Some(want),
            _ => {}
        }
        if starts.is_empty() {
            starts.push(0);
            best.push(NO_RULE);
        }
        let (first, last) = range.map_or((0, u16::MAX), |r| (r.first, r.last));
        // Cut the line at `first` and after `last` (each cut copies its interval's best).
        let mut cut = |at: u16| {
            let pos = starts.partition_point(|&s| s <= at);
            if starts.get(pos.wrapping_sub(1)) != Some(&at) {
                let inherited = best.get(pos.wrapping_sub(1)).copied().unwrap_or(NO_RULE);
                starts.insert(pos, at);
                best.insert(pos, inherited);
            }
        };
        cut(first);
        if let Some(after) = last.checked_add(1) {
            cut(after);
        }
        for (start, b) in starts.iter().zip(best.iter_mut()) {
            if (first..=last).contains(start) && (*b == NO_RULE || rank_of(*b) < Some(rank)) {
                *b = idx;
            }
        }
    }
}

/// The precomputed decision structure.
#[derive(Debug, Default)]
struct Index {
    /// Best class first.
    classes: Vec<Class>,
}

impl Index {
    /// Adds rule `idx` (already stored in `rules`). On error the index may hold new *empty*
    /// classes or buckets, which never match anything, and no reference to `idx`.
    fn add(&mut self, rules: &[Rule], idx: u32) -> Result<(), EngineError> {
        let rule = rules
            .get(idx as usize)
            .ok_or(EngineError::InvalidParameter)?;
        let shape = Shape::of(&rule.spec);
        let ci = if let Some(ci) = self.classes.iter().position(|c| c.shape == shape) {
            ci
        } else {
            self.classes.try_reserve(1)?;
            self.classes.push(Class {
                shape,
                best: Rank(0),
                buckets: HashMap::with_hasher(FixedState::default()),
            });
            self.classes.len() - 1
        };
        let class = self
            .classes
            .get_mut(ci)
            .ok_or(EngineError::InvalidParameter)?;
        let protos = protocols(rule.spec.protocol);
        // Phase 1, fallible: room for every bucket and every index.
        class
            .buckets
            .try_reserve(protos.len())
            .map_err(|_| EngineError::NoMemory)?;
        for &proto in protos {
            let bucket = class
                .buckets
                .entry(Shape::rule_key(&rule.spec, proto))
                .or_default();
            bucket.rules.try_reserve(1)?;
            bucket.ranges.reserve()?;
        }
        // Phase 2, infallible: insert in rank order (capacity reserved above).
        let rank_of = |j: u32| rules.get(j as usize).map(|r| r.rank);
        for &proto in protos {
            if let Some(bucket) = class.buckets.get_mut(&Shape::rule_key(&rule.spec, proto)) {
                let pos = bucket
                    .rules
                    .partition_point(|&j| rank_of(j).is_some_and(|other| other > rule.rank));
                bucket.rules.insert(pos, idx);
                bucket
                    .ranges
                    .insert(idx, rule.rank, open_ranges(shape, &rule.spec), rank_of);
            }
        }
        class.best = class.best.max(rule.rank);
        self.classes
            .sort_unstable_by_key(|c| core::cmp::Reverse(c.best));
        Ok(())
    }

    fn build(rules: &[Rule]) -> Result<Index, EngineError> {
        let mut index = Index::default();
        for idx in 0..rules.len() {
            index.add(
                rules,
                u32::try_from(idx).map_err(|_| EngineError::LimitReached)?,
            )?;
        }
        Ok(index)
    }
}

/// The rule set: rules in insertion order plus their index.
#[derive(Debug)]
pub(crate) struct RuleSet {
    max: usize,
    rules: Vec<Rule>,
    index: Index,
    next_seq: u64,
}

impl RuleSet {
    /// An empty set holding at most `max` rules (and never more than `u32::MAX`).
    pub(crate) fn new(max: usize) -> Self {
        RuleSet {
            max,
            rules: Vec::new(),
            index: Index::default(),
            next_seq: 0,
        }
    }

    /// Adds a rule (and its shaper when it throttles).
    ///
    /// # Errors
    /// `InvalidParameter` when `spec.validate()` fails, `AlreadyExists` for a duplicate name,
    /// `LimitReached` when the set (or the shaper table) is full, `NoMemory` when an allocation
    /// fails. On error the set and the shapers are unchanged.
    pub(crate) fn insert(
        &mut self,
        spec: RuleSpec,
        shapers: &mut ShaperTable,
    ) -> Result<(), EngineError> {
        spec.validate().map_err(|_| EngineError::InvalidParameter)?;
        if self.rules.iter().any(|r| r.spec.name == spec.name) {
            return Err(EngineError::AlreadyExists);
        }
        if self.rules.len() >= self.max {
            return Err(EngineError::LimitReached);
        }
        let idx = u32::try_from(self.rules.len()).map_err(|_| EngineError::LimitReached)?;
        self.rules.try_reserve(1)?;
        let shaper = new_shaper(&spec, shapers)?;
        let rank = Rank::of(&spec, self.next_seq);
        self.rules.push(Rule {
            spec,
            counters: Counters::default(),
            shaper,
            rank,
        });
        if let Err(e) = self.index.add(&self.rules, idx) {
            self.rules.pop();
            if let Some(s) = shaper {
                shapers.remove(s);
            }
            return Err(e);
        }
        self.next_seq += 1;
        Ok(())
    }

    /// Removes the rule called `name`.
    ///
    /// # Errors
    /// `NotFound` when no rule has that name; `NoMemory` when rebuilding the index fails (the
    /// set is then unchanged).
    pub(crate) fn remove(
        &mut self,
        name: &RuleName,
        shapers: &mut ShaperTable,
    ) -> Result<(), EngineError> {
        let pos = self
            .rules
            .iter()
            .position(|r| r.spec.name == *name)
            .ok_or(EngineError::NotFound)?;
        let removed = self.rules.remove(pos);
        match Index::build(&self.rules) {
            Ok(index) => {
                self.index = index;
                if let Some(s) = removed.shaper {
                    shapers.remove(s);
                }
                Ok(())
            }
            Err(e) => {
                self.rules.insert(pos, removed);
                Err(e)
            }
        }
    }

    /// Replaces every rule with `specs`, in that order (`ReplaceRules`). All or nothing: each
    /// spec is validated and the names checked before anything changes. The new rules' counters
    /// start at zero, even for a rule whose name was already there; so do their shapers (new
    /// ids: the old rules' shapers die, and the back end releases what they held).
    ///
    /// # Errors
    /// `InvalidParameter` for the first invalid spec, `AlreadyExists` when two specs share a
    /// name, `LimitReached` for more than the set (or, old and new together, the shaper table)
    /// holds, `NoMemory`. On error the set and the shapers are unchanged.
    pub(crate) fn replace(
        &mut self,
        specs: &[RuleSpec],
        shapers: &mut ShaperTable,
    ) -> Result<(), EngineError> {
        for spec in specs {
            spec.validate().map_err(|_| EngineError::InvalidParameter)?;
        }
        if specs.len() > self.max {
            return Err(EngineError::LimitReached);
        }
        // Duplicate names: sort a list of the names (O(n log n)) and compare neighbours.
        let mut names = Vec::new();
        names.try_reserve_exact(specs.len())?;
        names.extend(specs.iter().map(|s| s.name.as_str()));
        names.sort_unstable();
        if names.windows(2).any(|w| w.first() == w.last()) {
            return Err(EngineError::AlreadyExists);
        }
        let mut rules = Vec::new();
        rules.try_reserve_exact(specs.len())?;
        let mut seq = self.next_seq;
        // On any failure below, the shapers made so far are removed again.
        let undo = |rules: &[Rule], shapers: &mut ShaperTable| {
            for s in rules.iter().filter_map(|r| r.shaper) {
                shapers.remove(s);
            }
        };
        for spec in specs {
            let shaper = match new_shaper(spec, shapers) {
                Ok(s) => s,
                Err(e) => {
                    undo(&rules, shapers);
                    return Err(e);
                }
            };
            rules.push(Rule {
                spec: spec.clone(),
                counters: Counters::default(),
                shaper,
                rank: Rank::of(spec, seq),
            });
            seq += 1;
        }
        let index = match Index::build(&rules) {
            Ok(index) => index,
            Err(e) => {
                undo(&rules, shapers);
                return Err(e);
            }
        };
        let old = core::mem::replace(&mut self.rules, rules);
        undo(&old, shapers);
        self.index = index;
        self.next_seq = seq;
        Ok(())
    }

    /// The shaper of the rule called `name`, if it exists and throttles.
    pub(crate) fn shaper_of(&self, name: &RuleName) -> Option<ShaperId> {
        self.rules
            .iter()
            .find(|r| r.spec.name == *name)
            .and_then(|r| r.shaper)
    }

    /// Every rule's shaper is live, and only throttling rules have one.
    pub(crate) fn check_shapers(&self, shapers: &ShaperTable) -> Result<(), &'static str> {
        for r in &self.rules {
            match (r.spec.throttle_bps, r.shaper) {
                (None, None) => {}
                (Some(bps), Some(s)) => {
                    if shapers.config(s).map(|c| c.rate_bps()) != Some(bps) {
                        return Err("a rule's shaper is dead or has another rate");
                    }
                }
                _ => return Err("a rule's shaper does not match its throttle"),
            }
        }
        Ok(())
    }

    /// Every rule in insertion order, with its counters.
    ///
    /// # Errors
    /// `NoMemory` when the list cannot be allocated.
    pub(crate) fn list(&self) -> Result<Vec<RuleEntry>, EngineError> {
        let mut out = Vec::new();
        out.try_reserve_exact(self.rules.len())?;
        out.extend(self.rules.iter().map(|r| RuleEntry {
            spec: r.spec.clone(),
            counters: r.counters.snapshot(),
        }));
        Ok(out)
    }

    /// Number of rules.
    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }

    /// The winning rule for `tuple`, if any. Allocation-free; see the module docs for cost.
    pub(crate) fn lookup(&self, tuple: &FiveTuple) -> Option<RuleHit<'_>> {
        let mut best: Option<&Rule> = None;
        for class in &self.index.classes {
            if best.is_some_and(|b| class.best < b.rank) {
                break;
            }
            let Some(key) = class.shape.packet_key(tuple) else {
                continue;
            };
            let Some(bucket) = class.buckets.get(&key) else {
                continue;
            };
            if let RangeIndex::On {
                side,
                starts,
                best: best_of,
            } = &bucket.ranges
            {
                let port = match side {
                    Some(Side::Remote) => tuple.remote.port(),
                    Some(Side::Local) | None => tuple.local.port(),
                };
                let at = starts.partition_point(|&s| s <= port).wrapping_sub(1);
                let found = best_of
                    .get(at)
                    .and_then(|&i| self.rules.get(i as usize))
                    .filter(|r| spec_matches(&r.spec, tuple));
                if let Some(rule) = found {
                    if best.is_none_or(|b| rule.rank > b.rank) {
                        best = Some(rule);
                    }
                }
                continue;
            }
            for &i in &bucket.rules {
                let Some(rule) = self.rules.get(i as usize) else {
                    continue;
                };
                if best.is_some_and(|b| rule.rank < b.rank) {
                    break;
                }
                if spec_matches(&rule.spec, tuple) {
                    best = Some(rule);
                    break;
                }
            }
        }
        best.map(|r| RuleHit {
            action: r.spec.action,
            pcp: r.spec.pcp,
            counters: &r.counters,
            name: &r.spec.name,
            shaper: r.shaper,
        })
    }
}

#[cfg(test)]
mod tests {
    // Tests may unwrap and index: a panic is a test failure. `ports` mirrors the field type.
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::unnecessary_wraps
    )]
    use super::*;

    /// A shaper table for rules that do not throttle (none is ever created in it).
    fn st() -> ShaperTable {
        ShaperTable::new(
            0,
            crate::shaper::QueueLimits {
                packets_per_shaper: 0,
                bytes_per_shaper: 0,
                packets_total: 0,
                bytes_total: 0,
                max_delay_ns: u64::MAX,
            },
        )
    }
    use alloc::string::String;
    use alloc::vec;
    use core::cmp::Reverse;
    use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    use proptest::prelude::*;
    use qosmark_abi::{Dscp, Protocol};

    fn name(s: &str) -> RuleName {
        RuleName::try_new(s).unwrap()
    }

    fn base(n: &str) -> RuleSpec {
        RuleSpec {
            name: name(n),
            precedence: 127,
            protocol: RuleProtocol::Any,
            local_prefix: None,
            remote_prefix: None,
            local_ports: None,
            remote_ports: None,
            action: RuleAction::Dscp(Dscp::EF),
            pcp: None,
            throttle_bps: None,
        }
    }

    fn pfx(s: &str) -> Prefix {
        let (a, l) = s.split_once('/').unwrap();
        Prefix {
            addr: a.parse().unwrap(),
            len: l.parse().unwrap(),
        }
    }

    fn ports(first: u16, last: u16) -> Option<PortRange> {
        Some(PortRange { first, last })
    }

    fn tuple(p: Protocol, local: &str, remote: &str) -> FiveTuple {
        FiveTuple::new(p, local.parse().unwrap(), remote.parse().unwrap())
    }

    fn winner(set: &RuleSet, t: &FiveTuple) -> Option<String> {
        set.lookup(t).map(|h| String::from(h.name.as_str()))
    }

    /// The range index at the ends of the port line, and a rule with ranges on both sides
    /// turning a bucket back to a scan.
    #[test]
    fn range_index_edges() {
        let mut set = RuleSet::new(8);
        let mut high = base("high");
        high.local_ports = ports(65_000, 65_535);
        let mut low = base("low");
        low.local_ports = ports(0, 10);
        low.precedence = 200;
        let mut all = base("all");
        all.precedence = 1;
        for s in [high, low, all] {
            set.insert(s, &mut st()).unwrap();
        }
        let at = |set: &RuleSet, p: u16| {
            winner(
                set,
                &tuple(Protocol::Udp, &alloc::format!("10.0.0.1:{p}"), "10.0.0.2:1"),
            )
        };
        assert_eq!(at(&set, 65_535).as_deref(), Some("high"));
        assert_eq!(at(&set, 65_000).as_deref(), Some("high"));
        assert_eq!(at(&set, 64_999).as_deref(), Some("all"));
        assert_eq!(at(&set, 0).as_deref(), Some("low"));
        assert_eq!(at(&set, 10).as_deref(), Some("low"));
        assert_eq!(at(&set, 11).as_deref(), Some("all"));
        let mut both = base("both");
        both.local_ports = ports(20, 30);
        both.remote_ports = ports(1, 2);
        both.precedence = 255;
        set.insert(both, &mut st()).unwrap();
        assert_eq!(at(&set, 25).as_deref(), Some("both"));
        assert_eq!(at(&set, 31).as_deref(), Some("all"));
        assert_eq!(at(&set, 65_535).as_deref(), Some("high"));
    }

    #[test]
    fn insert_errors() {
        let mut set = RuleSet::new(2);
        set.insert(base("a"), &mut st()).unwrap();
        assert_eq!(
            set.insert(base("a"), &mut st()),
            Err(EngineError::AlreadyExists)
        );
        let mut bad = base("b");
        bad.remote_prefix = Some(pfx("10.0.0.1/24")); // host bits set
        assert_eq!(
            set.insert(bad, &mut st()),
            Err(EngineError::InvalidParameter)
        );
        let mut mixed = base("b");
        mixed.local_prefix = Some(pfx("10.0.0.0/8"));
        mixed.remote_prefix = Some(pfx("2001:db8::/32"));
        assert_eq!(
            set.insert(mixed, &mut st()),
            Err(EngineError::InvalidParameter)
        );
        let mut range = base("b");
        range.remote_ports = ports(9, 8);
        assert_eq!(
            set.insert(range, &mut st()),
            Err(EngineError::InvalidParameter)
        );
        set.insert(base("b"), &mut st()).unwrap();
        assert_eq!(
            set.insert(base("c"), &mut st()),
            Err(EngineError::LimitReached)
        );
        assert_eq!(set.len(), 2);
        assert_eq!(
            set.remove(&name("zz"), &mut st()),
            Err(EngineError::NotFound)
        );
        set.remove(&name("a"), &mut st()).unwrap();
        set.insert(base("c"), &mut st()).unwrap();
        let names: Vec<_> = set
            .list()
            .unwrap()
            .into_iter()
            .map(|e| e.spec.name)
            .collect();
        assert_eq!(names, vec![name("b"), name("c")]);
    }

    #[test]
    fn families_never_cross() {
        let mut set = RuleSet::new(8);
        let mut v4 = base("v4-all");
        v4.remote_prefix = Some(pfx("0.0.0.0/0"));
        set.insert(v4, &mut st()).unwrap();
        let mut v6 = base("v6-all");
        v6.local_prefix = Some(pfx("::/0"));
        set.insert(v6, &mut st()).unwrap();
        let t4 = tuple(Protocol::Udp, "192.0.2.1:1000", "198.51.100.1:53");
        let t6 = tuple(Protocol::Udp, "[2001:db8::1]:1000", "[2001:db8::2]:53");
        assert_eq!(winner(&set, &t4).as_deref(), Some("v4-all"));
        assert_eq!(winner(&set, &t6).as_deref(), Some("v6-all"));
        // A v4-mapped address is normalized to IPv4 and so matches the IPv4 rule.
        let mapped = tuple(
            Protocol::Udp,
            "[::ffff:192.0.2.1]:1",
            "[::ffff:198.51.100.1]:2",
        );
        assert_eq!(winner(&set, &mapped).as_deref(), Some("v4-all"));
    }

    #[test]
    fn protocol_and_ports() {
        let mut set = RuleSet::new(8);
        let mut tcp = base("tcp-https");
        tcp.protocol = RuleProtocol::Tcp;
        tcp.remote_ports = ports(443, 443);
        set.insert(tcp, &mut st()).unwrap();
        let mut udp = base("udp-range");
        udp.protocol = RuleProtocol::Udp;
        udp.local_ports = ports(5000, 5010);
        set.insert(udp, &mut st()).unwrap();
        assert_eq!(
            winner(&set, &tuple(Protocol::Tcp, "10.0.0.1:5000", "10.0.0.2:443")).as_deref(),
            Some("tcp-https")
        );
        assert_eq!(
            winner(&set, &tuple(Protocol::Udp, "10.0.0.1:6000", "10.0.0.2:443")),
            None
        );
        assert_eq!(
            winner(&set, &tuple(Protocol::Udp, "10.0.0.1:5010", "10.0.0.2:443")).as_deref(),
            Some("udp-range")
        );
        assert_eq!(
            winner(&set, &tuple(Protocol::Udp, "10.0.0.1:5011", "10.0.0.2:1")),
            None
        );
    }

    #[test]
    fn tie_breaks_in_documented_order() {
        let t = tuple(Protocol::Udp, "10.1.2.3:4000", "192.0.2.9:53");
        // 1. precedence beats everything.
        let mut set = RuleSet::new(16);
        let mut many = base("many-conditions");
        many.protocol = RuleProtocol::Udp;
        many.remote_ports = ports(53, 53);
        many.remote_prefix = Some(pfx("192.0.2.9/32"));
        set.insert(many, &mut st()).unwrap();
        let mut high = base("high");
        high.precedence = 200;
        set.insert(high, &mut st()).unwrap();
        assert_eq!(winner(&set, &t).as_deref(), Some("high"));

        // 2. more conditions.
        let mut set = RuleSet::new(16);
        let mut one = base("one");
        one.remote_ports = ports(53, 53);
        set.insert(one, &mut st()).unwrap();
        let mut two = base("two");
        two.remote_ports = ports(1, 100);
        two.protocol = RuleProtocol::Udp;
        set.insert(two, &mut st()).unwrap();
        assert_eq!(winner(&set, &t).as_deref(), Some("two"));

        // 3. equal count, no prefixes: which conditions are set does not matter (unlike
        //    Windows' source-before-destination order): the earlier rule wins.
        let mut set = RuleSet::new(16);
        let mut proto = base("protocol");
        proto.protocol = RuleProtocol::Udp;
        set.insert(proto, &mut st()).unwrap();
        let mut rport = base("remote-port");
        rport.remote_ports = ports(53, 53);
        set.insert(rport, &mut st()).unwrap();
        let mut lport = base("local-port");
        lport.local_ports = ports(4000, 4000);
        set.insert(lport, &mut st()).unwrap();
        assert_eq!(winner(&set, &t).as_deref(), Some("protocol"));

        // 3. longer prefix: the total prefix length, local and remote together.
        let mut set = RuleSet::new(16);
        let mut l24 = base("l24-rport");
        l24.local_prefix = Some(pfx("10.1.2.0/24"));
        l24.remote_ports = ports(53, 53);
        set.insert(l24, &mut st()).unwrap();
        let mut r32 = base("r32-rport");
        r32.remote_prefix = Some(pfx("192.0.2.9/32"));
        r32.remote_ports = ports(53, 53);
        set.insert(r32, &mut st()).unwrap();
        assert_eq!(winner(&set, &t).as_deref(), Some("r32-rport"));
        let mut set = RuleSet::new(16);
        let mut l16 = base("l16-r0");
        l16.local_prefix = Some(pfx("10.1.0.0/16"));
        l16.remote_prefix = Some(pfx("0.0.0.0/0"));
        set.insert(l16, &mut st()).unwrap();
        let mut r8 = base("l8-r32");
        r8.local_prefix = Some(pfx("10.0.0.0/8"));
        r8.remote_prefix = Some(pfx("192.0.2.9/32"));
        set.insert(r8, &mut st()).unwrap();
        assert_eq!(winner(&set, &t).as_deref(), Some("l8-r32"));
        // Equal totals (16 + 24 = 8 + 32): the earlier rule.
        let mut l16r24 = base("l16-r24");
        l16r24.local_prefix = Some(pfx("10.1.0.0/16"));
        l16r24.remote_prefix = Some(pfx("192.0.2.0/24"));
        set.insert(l16r24, &mut st()).unwrap();
        assert_eq!(winner(&set, &t).as_deref(), Some("l8-r32"));

        // 4. insertion order, kept across removals.
        let mut set = RuleSet::new(16);
        for n in ["first", "second", "third"] {
            set.insert(base(n), &mut st()).unwrap();
        }
        assert_eq!(winner(&set, &t).as_deref(), Some("first"));
        set.remove(&name("first"), &mut st()).unwrap();
        assert_eq!(winner(&set, &t).as_deref(), Some("second"));
        set.insert(base("first"), &mut st()).unwrap();
        assert_eq!(winner(&set, &t).as_deref(), Some("second"));
    }

    #[test]
    fn counters_are_per_rule_and_listed() {
        let mut set = RuleSet::new(4);
        set.insert(base("a"), &mut st()).unwrap();
        let t = tuple(Protocol::Tcp, "10.0.0.1:1", "10.0.0.2:2");
        let hit = set.lookup(&t).unwrap();
        hit.counters.record(100, crate::counters::Outcome::Marked);
        hit.counters
            .record(50, crate::counters::Outcome::AlreadyMarked);
        let list = set.list().unwrap();
        assert_eq!(list[0].counters.packets, 2);
        assert_eq!(list[0].counters.bytes, 150);
        assert_eq!(list[0].counters.marked, 1);
        assert_eq!(list[0].counters.already_marked, 1);
    }

    #[test]
    fn many_rules_of_one_shape_share_one_class() {
        let mut set = RuleSet::new(2000);
        for i in 0..1000u16 {
            let mut r = base(&alloc::format!("r{i}"));
            r.protocol = RuleProtocol::Udp;
            r.remote_prefix = Some(Prefix {
                addr: IpAddr::V4(Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8)),
                len: 32,
            });
            r.remote_ports = ports(5000 + i, 5000 + i);
            set.insert(r, &mut st()).unwrap();
        }
        assert_eq!(set.index.classes.len(), 1);
        assert!(set.index.classes[0]
            .buckets
            .values()
            .all(|b| b.rules.len() == 1));
        let t = tuple(Protocol::Udp, "192.0.2.1:1", "10.0.3.231:5999");
        assert_eq!(winner(&set, &t).as_deref(), Some("r999"));
    }

    // ---- Independent reference: a plain linear scan with the order written out. ----

    fn ref_prefix(p: Option<Prefix>, a: IpAddr) -> bool {
        let Some(p) = p else { return true };
        match (p.addr, a) {
            (IpAddr::V4(n), IpAddr::V4(x)) => {
                p.len == 0 || (u32::from(n) ^ u32::from(x)) >> (32 - u32::from(p.len)) == 0
            }
            (IpAddr::V6(n), IpAddr::V6(x)) => {
                p.len == 0 || (u128::from(n) ^ u128::from(x)) >> (128 - u32::from(p.len)) == 0
            }
            _ => false,
        }
    }

    fn ref_port(r: Option<PortRange>, port: u16) -> bool {
        r.is_none_or(|r| r.first <= port && port <= r.last)
    }

    fn ref_matches(s: &RuleSpec, t: &FiveTuple) -> bool {
        let proto = match s.protocol {
            RuleProtocol::Any => true,
            RuleProtocol::Tcp => t.protocol == Protocol::Tcp,
            RuleProtocol::Udp => t.protocol == Protocol::Udp,
        };
        proto
            && ref_prefix(s.local_prefix, t.local.ip())
            && ref_prefix(s.remote_prefix, t.remote.ip())
            && ref_port(s.local_ports, t.local.port())
            && ref_port(s.remote_ports, t.remote.port())
    }

    /// `rules` in insertion order.
    fn reference(rules: &[RuleSpec], t: &FiveTuple) -> Option<RuleName> {
        rules
            .iter()
            .enumerate()
            .filter(|(_, s)| ref_matches(s, t))
            .max_by_key(|(pos, s)| {
                (
                    s.precedence,
                    s.condition_count(),
                    u32::from(s.local_prefix.map_or(0, |p| p.len))
                        + u32::from(s.remote_prefix.map_or(0, |p| p.len)),
                    Reverse(*pos),
                )
            })
            .map(|(_, s)| s.name)
    }

    fn v4_pool() -> impl Strategy<Value = Ipv4Addr> {
        (prop_oneof![Just(10u8), Just(192u8)], 0u8..3, 0u8..4)
            .prop_map(|(a, c, d)| Ipv4Addr::new(a, 0, c, d))
    }

    fn v6_pool() -> impl Strategy<Value = Ipv6Addr> {
        (0u16..2, 0u16..4).prop_map(|(a, d)| Ipv6Addr::new(0x2001, 0xdb8, a, 0, 0, 0, 0, d))
    }

    fn mask(addr: IpAddr, len: u8) -> Prefix {
        Prefix {
            addr: match addr {
                IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(if len == 0 {
                    0
                } else {
                    u32::from(a) >> (32 - u32::from(len)) << (32 - u32::from(len))
                })),
                IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(if len == 0 {
                    0
                } else {
                    u128::from(a) >> (128 - u32::from(len)) << (128 - u32::from(len))
                })),
            },
            len,
        }
    }

    fn prefix_strategy(v6: bool) -> BoxedStrategy<Option<Prefix>> {
        if v6 {
            proptest::option::of(
                (
                    v6_pool(),
                    prop_oneof![Just(0u8), Just(32), Just(48), Just(127), Just(128)],
                )
                    .prop_map(|(a, l)| mask(IpAddr::V6(a), l)),
            )
            .boxed()
        } else {
            proptest::option::of(
                (
                    v4_pool(),
                    prop_oneof![
                        Just(0u8),
                        Just(8),
                        Just(16),
                        Just(23),
                        Just(24),
                        Just(31),
                        Just(32)
                    ],
                )
                    .prop_map(|(a, l)| mask(IpAddr::V4(a), l)),
            )
            .boxed()
        }
    }

    fn port_strategy() -> impl Strategy<Value = Option<PortRange>> {
        proptest::option::of(prop_oneof![
            (50u16..56).prop_map(|p| PortRange { first: p, last: p }),
            (50u16..56, 0u16..4).prop_map(|(p, w)| PortRange {
                first: p,
                last: p + w
            }),
        ])
    }

    fn spec_strategy() -> impl Strategy<Value = RuleSpec> {
        (
            any::<bool>(),
            prop_oneof![Just(0u8), Just(127), Just(255)],
            0u8..3,
        )
            .prop_flat_map(|(v6, precedence, proto)| {
                (
                    prefix_strategy(v6),
                    prefix_strategy(v6),
                    port_strategy(),
                    port_strategy(),
                )
                    .prop_map(move |(lp, rp, lports, rports)| RuleSpec {
                        name: name("placeholder"),
                        precedence,
                        protocol: [RuleProtocol::Tcp, RuleProtocol::Udp, RuleProtocol::Any]
                            [usize::from(proto)],
                        local_prefix: lp,
                        remote_prefix: rp,
                        local_ports: lports,
                        remote_ports: rports,
                        action: RuleAction::Dscp(Dscp::EF),
                        pcp: None,
                        throttle_bps: None,
                    })
            })
    }

    fn packet_strategy() -> impl Strategy<Value = FiveTuple> {
        let addrs = prop_oneof![
            (v4_pool(), v4_pool()).prop_map(|(a, b)| (IpAddr::V4(a), IpAddr::V4(b))),
            (v6_pool(), v6_pool()).prop_map(|(a, b)| (IpAddr::V6(a), IpAddr::V6(b))),
        ];
        (any::<bool>(), addrs, 48u16..60, 48u16..60).prop_map(|(tcp, (l, r), lp, rp)| {
            FiveTuple::new(
                if tcp { Protocol::Tcp } else { Protocol::Udp },
                SocketAddr::new(l, lp),
                SocketAddr::new(r, rp),
            )
        })
    }

    /// Rules that all set both prefixes and nothing else, at one precedence: the winner is
    /// decided by prefix lengths and insertion order only.
    fn dense_spec() -> impl Strategy<Value = RuleSpec> {
        (v4_pool(), v4_pool(), 0u8..=32, 0u8..=32).prop_map(|(l, r, ll, rl)| RuleSpec {
            name: name("placeholder"),
            precedence: 127,
            protocol: RuleProtocol::Any,
            local_prefix: Some(mask(IpAddr::V4(l), ll)),
            remote_prefix: Some(mask(IpAddr::V4(r), rl)),
            local_ports: None,
            remote_ports: None,
            action: RuleAction::Dscp(Dscp::EF),
            pcp: None,
            throttle_bps: None,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn classifier_agrees_with_linear_reference(
            specs in proptest::collection::vec(spec_strategy(), 0..40),
            removals in proptest::collection::vec(0usize..40, 0..8),
            packets in proptest::collection::vec(packet_strategy(), 1..40),
        ) {
            let mut set = RuleSet::new(64);
            let mut kept: Vec<RuleSpec> = Vec::new();
            for (i, mut s) in specs.into_iter().enumerate() {
                s.name = name(&alloc::format!("r{i}"));
                set.insert(s.clone(), &mut st()).unwrap();
                kept.push(s);
            }
            for t in &packets {
                prop_assert_eq!(set.lookup(t).map(|h| *h.name), reference(&kept, t));
            }
            for r in removals {
                if kept.is_empty() { break; }
                let s = kept.remove(r % kept.len());
                set.remove(&s.name, &mut st()).unwrap();
                for t in &packets {
                    prop_assert_eq!(set.lookup(t).map(|h| *h.name), reference(&kept, t));
                }
            }
            prop_assert_eq!(set.len(), kept.len());
            let listed: Vec<_> = set.list().unwrap().into_iter().map(|e| e.spec).collect();
            prop_assert_eq!(listed, kept);
        }

        #[test]
        fn prefix_length_ties_agree_with_reference(
            specs in proptest::collection::vec(dense_spec(), 1..40),
            packets in proptest::collection::vec(packet_strategy(), 1..40),
        ) {
            let mut set = RuleSet::new(64);
            let mut kept = Vec::new();
            for (i, mut s) in specs.into_iter().enumerate() {
                s.name = name(&alloc::format!("r{i}"));
                set.insert(s.clone(), &mut st()).unwrap();
                kept.push(s);
            }
            for t in &packets {
                prop_assert_eq!(set.lookup(t).map(|h| *h.name), reference(&kept, t));
            }
        }
    }
}
