//! TCP (RFC 9293) and UDP (RFC 768) header views, and [`ports`], the 4-byte prefix both share.
//!
//! ```text
//!  0                   1                   2                   3
//! +-------------------------------+-------------------------------+
//! |          Source Port          |       Destination Port        |   TCP and UDP
//! +-------------------------------+-------------------------------+
//! ```
//!
//! Classification needs only the ports, so [`crate::wire::parse_ip`] uses [`ports`], which
//! needs 4 bytes: a TCP header cut below its 20 bytes still yields ports. The strict views
//! [`TcpPacket`] and [`UdpPacket`] check the whole header. No accessor panics.

use super::bytes::{be16, be32, u8_at};
use super::WireError;

/// Bytes needed to read both ports.
pub const PORTS_LEN: usize = 4;

/// `(source, destination)` ports from the first 4 bytes of a TCP or UDP header, or `None`
/// when fewer than 4 bytes are present.
#[must_use]
pub fn ports(transport: &[u8]) -> Option<(u16, u16)> {
    Some((be16(transport, 0)?, be16(transport, 2)?))
}

/// A checked view of a UDP header (8 bytes; the payload may be cut).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Length of the UDP header.
    pub const HEADER_LEN: usize = 8;

    /// Wraps `buffer` (UDP header first).
    ///
    /// # Errors
    /// [`WireError::Empty`] for an empty buffer, [`WireError::Truncated`] below 8 bytes.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        match buffer.as_ref().len() {
            0 => Err(WireError::Empty),
            n if n < Self::HEADER_LEN => Err(WireError::Truncated),
            _ => Ok(UdpPacket { buffer }),
        }
    }

    /// Source port.
    #[must_use]
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 0).unwrap_or(0)
    }

    /// Destination port.
    #[must_use]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 2).unwrap_or(0)
    }

    /// The length field (header plus data).
    #[must_use]
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), 4).unwrap_or(0)
    }

    /// True when the length field is zero (never valid: the header alone is 8 bytes).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The checksum field.
    #[must_use]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), 6).unwrap_or(0)
    }
}

/// A checked view of a TCP header (data offset * 4 bytes, options included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Length of a TCP header without options.
    pub const MIN_HEADER_LEN: usize = 20;

    /// Wraps `buffer` (TCP header first).
    ///
    /// # Errors
    /// In this order: [`WireError::Empty`]; [`WireError::Truncated`] below 20 bytes;
    /// [`WireError::Malformed`] when the data offset is below 5; [`WireError::Truncated`] when
    /// fewer than `data offset * 4` bytes are present.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = TcpPacket { buffer };
        let len = packet.buffer.as_ref().len();
        if len == 0 {
            return Err(WireError::Empty);
        }
        if len < Self::MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if packet.header_len() < Self::MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if len < packet.header_len() {
            return Err(WireError::Truncated);
        }
        Ok(packet)
    }

    /// Source port.
    #[must_use]
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 0).unwrap_or(0)
    }

    /// Destination port.
    #[must_use]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 2).unwrap_or(0)
    }

    /// Sequence number.
    #[must_use]
    pub fn seq_number(&self) -> u32 {
        be32(self.buffer.as_ref(), 4).unwrap_or(0)
    }

    /// Acknowledgment number.
    #[must_use]
    pub fn ack_number(&self) -> u32 {
        be32(self.buffer.as_ref(), 8).unwrap_or(0)
    }

    /// Header length in bytes: data offset * 4.
    #[must_use]
    pub fn header_len(&self) -> usize {
        usize::from(u8_at(self.buffer.as_ref(), 12).unwrap_or(0) >> 4) * 4
    }

    /// The eight flag bits (CWR ECE URG ACK PSH RST SYN FIN).
    #[must_use]
    pub fn flags(&self) -> u8 {
        u8_at(self.buffer.as_ref(), 13).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    // Tests index and unwrap buffers they built themselves.
    #![allow(clippy::indexing_slicing, clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ports_need_four_bytes() {
        let buf = [0x13, 0x88, 0x00, 0x35, 0xa5];
        assert_eq!(ports(&buf), Some((5000, 53)));
        assert_eq!(ports(&buf[..4]), Some((5000, 53)));
        assert_eq!(ports(&buf[..3]), None);
        assert_eq!(ports(&[]), None);
    }

    #[test]
    fn udp_view() {
        let mut buf = [0xa5u8; 12];
        buf[..8].copy_from_slice(&[0x13, 0x88, 0x00, 0x35, 0x00, 0x0c, 0xbe, 0xef]);
        let u = UdpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(
            (u.src_port(), u.dst_port(), u.len(), u.checksum()),
            (5000, 53, 12, 0xbeef)
        );
        assert!(!u.is_empty());
        assert_eq!(UdpPacket::new_checked(&buf[..7]), Err(WireError::Truncated));
        assert_eq!(UdpPacket::new_checked(&buf[..0]), Err(WireError::Empty));
    }

    #[test]
    fn tcp_view_and_errors() {
        let mut buf = [0xa5u8; 32];
        buf[..20].copy_from_slice(&[
            0xc0, 0x00, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 2, 0x60, 0x12, 0xff, 0xff, 0, 0, 0, 0,
        ]);
        let t = TcpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!((t.src_port(), t.dst_port()), (49152, 443));
        assert_eq!((t.seq_number(), t.ack_number()), (1, 2));
        assert_eq!(t.header_len(), 24);
        assert_eq!(t.flags(), 0x12);
        assert_eq!(
            TcpPacket::new_checked(&buf[..23]),
            Err(WireError::Truncated)
        );
        assert_eq!(
            TcpPacket::new_checked(&buf[..19]),
            Err(WireError::Truncated)
        );
        assert_eq!(TcpPacket::new_checked(&buf[..0]), Err(WireError::Empty));
        buf[12] = 0x40;
        assert_eq!(TcpPacket::new_checked(&buf[..]), Err(WireError::Malformed));
    }
}
