//! The Internet checksum (RFC 1071): the ones' complement of the ones' complement sum of the
//! data taken as big-endian 16-bit words, an odd last byte padded with a zero byte.
//!
//! Only the IPv4 header checksum is computed by qosmark. Neither the IPv4 TOS nor the IPv6
//! Traffic Class is covered by the TCP/UDP pseudo-header, so marking never touches transport
//! checksums. No function here panics or allocates.

/// The ones' complement sum of `data` folded to 16 bits (not complemented).
#[must_use]
pub fn ones_complement_sum(data: &[u8]) -> u16 {
    let mut chunks = data.chunks_exact(2);
    // A u64 accumulator cannot overflow before 2^48 words, far beyond any slice we are given.
    let mut sum: u64 = 0;
    for word in chunks.by_ref() {
        if let Some(w) = word.first_chunk::<2>() {
            sum = sum.wrapping_add(u64::from(u16::from_be_bytes(*w)));
        }
    }
    if let Some(&last) = chunks.remainder().first() {
        sum = sum.wrapping_add(u64::from(u16::from_be_bytes([last, 0])));
    }
    fold(sum)
}

/// The checksum to store in a header: the complement of [`ones_complement_sum`]. Compute it
/// over the header with the checksum field set to zero.
#[must_use]
pub fn internet_checksum(data: &[u8]) -> u16 {
    !ones_complement_sum(data)
}

/// True when `data`, checksum field included, sums to `0xffff` (a valid checksum).
#[must_use]
pub fn verify(data: &[u8]) -> bool {
    ones_complement_sum(data) == 0xffff
}

/// Folds the carries of a wide sum back into 16 bits (end-around carry).
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 significant bits.
    sum as u16
}

#[cfg(test)]
mod tests {
    // Tests index fixed-size arrays they built themselves.
    #![allow(clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(ones_complement_sum(&data), 0xddf2);
        assert_eq!(internet_checksum(&data), 0x220d);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(ones_complement_sum(&[0x12]), 0x1200);
        assert_eq!(ones_complement_sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
        assert_eq!(ones_complement_sum(&[]), 0);
    }

    #[test]
    fn carries_wrap_around() {
        assert_eq!(ones_complement_sum(&[0xff, 0xff, 0x00, 0x01]), 0x0001);
        assert_eq!(ones_complement_sum(&[0xff; 64]), 0xffff);
    }

    #[test]
    fn known_ipv4_header_verifies() {
        // A header captured from the wild (Wikipedia's IPv4 checksum example), checksum b861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert!(verify(&header));
        let mut zeroed = header;
        zeroed[10] = 0;
        zeroed[11] = 0;
        assert_eq!(internet_checksum(&zeroed), 0xb861);
        let mut broken = header;
        broken[1] = 0x04;
        assert!(!verify(&broken));
    }
}
