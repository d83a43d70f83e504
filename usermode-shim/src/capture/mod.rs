//! Reading packet captures (pcap and pcapng) for offline replay, and patching them in place.
//!
//! A capture is parsed into a list of [`Record`]s: where each packet's bytes live in the file,
//! its link type, timestamp and lengths. Nothing is copied or re-encoded: the replay tool copies
//! the whole file and rewrites only bytes inside packet data ranges (a DSCP or PCP rewrite never
//! changes a length), so framing, timestamps, options and unknown blocks come out byte-identical.
//!
//! ## No-panic contract
//! [`parse`] accepts arbitrary bytes and returns `Err` for anything it cannot read; it never
//! indexes out of bounds (all reads go through `Reader`), never overflows, and its allocation
//! is bounded by the number of records actually present in the input.
//!
//! Supported formats: pcap (both byte orders, microsecond and nanosecond magic) and pcapng
//! (sections of either byte order, interfaces with their own link type, snap length and
//! timestamp resolution; enhanced, simple and obsolete packet blocks; other blocks are skipped
//! and therefore copied as they are). Supported link types: see [`LinkType`].

mod link;
mod pcap;
mod pcapng;

pub use link::{locate, Located, TagInfo};

use core::fmt;
use core::ops::Range;

/// The link types replay understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    /// `LINKTYPE_ETHERNET` (1): Ethernet II, optionally with 802.1Q / 802.1ad tags.
    Ethernet,
    /// `LINKTYPE_RAW` (101): raw IPv4 or IPv6, version from the first nibble.
    RawIp,
    /// `LINKTYPE_LINUX_SLL` (113): Linux cooked capture v1 (`tcpdump -i any`).
    LinuxSll,
    /// `LINKTYPE_IPV4` (228): raw IPv4.
    Ipv4,
    /// `LINKTYPE_IPV6` (229): raw IPv6.
    Ipv6,
    /// `LINKTYPE_LINUX_SLL2` (276): Linux cooked capture v2.
    LinuxSll2,
}

impl LinkType {
    /// The link type with this `LINKTYPE_` number, or `None` when replay does not support it.
    #[must_use]
    pub fn from_number(n: u32) -> Option<Self> {
        match n {
            1 => Some(LinkType::Ethernet),
            101 => Some(LinkType::RawIp),
            113 => Some(LinkType::LinuxSll),
            228 => Some(LinkType::Ipv4),
            229 => Some(LinkType::Ipv6),
            276 => Some(LinkType::LinuxSll2),
            _ => None,
        }
    }

    /// The `LINKTYPE_` number.
    #[must_use]
    pub fn number(self) -> u32 {
        match self {
            LinkType::Ethernet => 1,
            LinkType::RawIp => 101,
            LinkType::LinuxSll => 113,
            LinkType::Ipv4 => 228,
            LinkType::Ipv6 => 229,
            LinkType::LinuxSll2 => 276,
        }
    }

    /// The `LINKTYPE_` name.
    #[must_use]
    pub fn name(self) -> &'static str {
        link_type_name(self.number())
    }
}

/// The registry name of a `LINKTYPE_` number, for error messages (common ones only).
#[must_use]
pub fn link_type_name(n: u32) -> &'static str {
    match n {
        0 => "LINKTYPE_NULL",
        1 => "LINKTYPE_ETHERNET",
        6 => "LINKTYPE_IEEE802_5",
        9 => "LINKTYPE_PPP",
        101 => "LINKTYPE_RAW",
        105 => "LINKTYPE_IEEE802_11",
        108 => "LINKTYPE_LOOP",
        113 => "LINKTYPE_LINUX_SLL",
        127 => "LINKTYPE_IEEE802_11_RADIOTAP",
        147..=162 => "LINKTYPE_USER",
        192 => "LINKTYPE_PPI",
        195 => "LINKTYPE_IEEE802_15_4_WITHFCS",
        220 => "LINKTYPE_USB_LINUX_MMAPPED",
        228 => "LINKTYPE_IPV4",
        229 => "LINKTYPE_IPV6",
        239 => "LINKTYPE_NFLOG",
        249 => "LINKTYPE_USBPCAP",
        252 => "LINKTYPE_WIRESHARK_UPPER_PDU",
        253 => "LINKTYPE_NETLINK",
        276 => "LINKTYPE_LINUX_SLL2",
        _ => "unknown link type",
    }
}

/// Container format of a capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Classic pcap with microsecond timestamps.
    PcapMicro,
    /// Classic pcap with nanosecond timestamps.
    PcapNano,
    /// pcapng.
    Pcapng,
}

impl Format {
    /// Short name for reports: `pcap` or `pcapng`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Format::PcapMicro | Format::PcapNano => "pcap",
            Format::Pcapng => "pcapng",
        }
    }
}

/// One packet of a capture, by position in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Link type of the packet's interface.
    pub link: LinkType,
    /// Timestamp in nanoseconds since the Unix epoch (saturating); `None` for pcapng simple
    /// packet blocks, which carry none.
    pub ts_ns: Option<u64>,
    /// Where the captured bytes are in the file (`len()` = captured length).
    pub data: Range<usize>,
    /// Length of the packet on the wire.
    pub orig_len: u32,
    /// Byte offset of the record (pcap) or block (pcapng) in the file.
    pub offset: usize,
}

impl Record {
    /// Captured length.
    #[must_use]
    pub fn caplen(&self) -> usize {
        self.data.len()
    }

    /// True when fewer bytes were captured than the packet had on the wire.
    #[must_use]
    pub fn is_cut(&self) -> bool {
        u64::try_from(self.caplen()).map_or(true, |c| c < u64::from(self.orig_len))
    }
}

/// A parsed capture: its format and its packets in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    /// Container format.
    pub format: Format,
    /// Packets in file order.
    pub records: Vec<Record>,
}

/// Why a capture cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureError {
    /// Neither a pcap nor a pcapng magic number at the start of the file.
    NotACapture,
    /// The structure is broken at this byte offset.
    Corrupt {
        /// Byte offset of the record or block that is broken.
        offset: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// A link type replay does not handle.
    UnsupportedLinkType {
        /// Byte offset of the header or interface block that declares it.
        offset: usize,
        /// The `LINKTYPE_` number.
        link_type: u32,
    },
    /// The memory for the record list or the output could not be allocated.
    OutOfMemory,
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaptureError::NotACapture => {
                f.write_str("not a pcap or pcapng capture (unknown magic number)")
            }
            CaptureError::Corrupt { offset, what } => {
                write!(f, "corrupt capture at byte offset {offset}: {what}")
            }
            CaptureError::UnsupportedLinkType { offset, link_type } => write!(
                f,
                "unsupported link type {link_type} ({}) declared at byte offset {offset}; \
                 supported: Ethernet (1), raw IP (101, 228, 229), Linux cooked (113, 276)",
                link_type_name(*link_type)
            ),
            CaptureError::OutOfMemory => f.write_str("out of memory"),
        }
    }
}

impl std::error::Error for CaptureError {}

/// Parses a capture.
///
/// # Errors
/// [`CaptureError`] describing the first problem found; never panics on any input.
pub fn parse(input: &[u8]) -> Result<Capture, CaptureError> {
    let magic = Reader::new(input)
        .u32_le(0)
        .ok_or(CaptureError::NotACapture)?;
    match magic {
        pcapng::SHB_TYPE => pcapng::parse(input),
        _ => pcap::parse(input),
    }
}

/// Bounds-checked reads at absolute offsets of the input, in a chosen byte order.
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    big_endian: bool,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader {
            bytes,
            big_endian: false,
        }
    }

    pub(crate) fn with_order(self, big_endian: bool) -> Self {
        Reader {
            bytes: self.bytes,
            big_endian,
        }
    }

    pub(crate) fn len(self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn array<const N: usize>(self, at: usize) -> Option<[u8; N]> {
        let end = at.checked_add(N)?;
        self.bytes.get(at..end)?.try_into().ok()
    }

    pub(crate) fn u8(self, at: usize) -> Option<u8> {
        self.bytes.get(at).copied()
    }

    pub(crate) fn u16(self, at: usize) -> Option<u16> {
        let a = self.array::<2>(at)?;
        Some(if self.big_endian {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        })
    }

    pub(crate) fn u32(self, at: usize) -> Option<u32> {
        let a = self.array::<4>(at)?;
        Some(if self.big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        })
    }

    pub(crate) fn u32_le(self, at: usize) -> Option<u32> {
        self.array::<4>(at).map(u32::from_le_bytes)
    }

    pub(crate) fn u64(self, at: usize) -> Option<u64> {
        let a = self.array::<8>(at)?;
        Some(if self.big_endian {
            u64::from_be_bytes(a)
        } else {
            u64::from_le_bytes(a)
        })
    }
}

/// Pushes onto a vector with fallible allocation.
pub(crate) fn push<T>(v: &mut Vec<T>, item: T) -> Result<(), CaptureError> {
    v.try_reserve(1).map_err(|_| CaptureError::OutOfMemory)?;
    v.push(item);
    Ok(())
}

/// `seconds * 1e9 + fraction * 1e9 / units_per_second`, saturating.
pub(crate) fn to_ns(units: u64, units_per_second: u128, offset_seconds: i64) -> u64 {
    if units_per_second == 0 {
        return 0;
    }
    let ns = u128::from(units).saturating_mul(1_000_000_000) / units_per_second;
    let offset = i128::from(offset_seconds).saturating_mul(1_000_000_000);
    let total = i128::try_from(ns)
        .unwrap_or(i128::MAX)
        .saturating_add(offset);
    u64::try_from(total.max(0)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
