//! The NDIS subset: `NET_BUFFER_LIST`, `NET_BUFFER`, the out-of-band info slots and
//! `NdisGetDataBuffer` (ndis/nbl.h, ndis/nblinfo.h, ndis/nbl8021q.h as included by ndis.h).
//!
//! Source of the layouts: the WDK definitions, with `NdisReserved`, `ProtocolReserved` and
//! `MiniportReserved` declared `DECLSPEC_ALIGN(MEMORY_ALLOCATION_ALIGNMENT)` (16 on x64), and
//! the header union holding an `SLIST_HEADER` (16 bytes, alignment 16 on x64). mingw-w64's
//! `ddk/ndis.h` is NDIS 5 and has no `NET_BUFFER_LIST`, and windows-sys has none either, so
//! there is no compiler oracle: the offsets below were derived by hand and cross-read against
//! two independent re-declarations of the same header (one mirroring nbl.h for user mode, one
//! in an NDIS wrapper), which agree with each other on every member used here.
//!
//! Only the members the driver touches are declared, as prefixes of the real structures:
//! NDIS and WFP allocate every NBL and NB we see; we never create or copy one, so reading a
//! prefix through a pointer to the real object is sound. `NetBufferListInfo` is declared with
//! the slots up to `Ieee8021QNetBufferListInfo`; every NDIS 6.x `MaxNetBufferListInfo` is
//! larger.
#![allow(
    non_camel_case_types,
    non_snake_case,
    reason = "C names are kept in ffi (STYLE.md §14)"
)]

use core::ffi::c_void;
use core::mem::{align_of, offset_of, size_of};

/// `NDIS_NET_BUFFER_LIST_INFO` indexes (ndis/nblinfo.h): `TcpIpChecksumNetBufferListInfo` (0),
/// `IPsecOffloadV1NetBufferListInfo` (1), `TcpLargeSendNetBufferListInfo` (2),
/// `ClassificationHandleNetBufferListInfo` (3), `Ieee8021QNetBufferListInfo` (4).
pub(crate) mod nbl_info {
    /// `TcpIpChecksumNetBufferListInfo`.
    pub(crate) const TCP_IP_CHECKSUM: usize = 0;
    /// `TcpLargeSendNetBufferListInfo`.
    pub(crate) const TCP_LARGE_SEND: usize = 2;
    /// `Ieee8021QNetBufferListInfo`.
    pub(crate) const IEEE_8021Q: usize = 4;
    /// Slots declared in [`super::NET_BUFFER_LIST::NetBufferListInfo`].
    pub(crate) const DECLARED: usize = IEEE_8021Q + 1;
}

/// Two pointers aligned to `MEMORY_ALLOCATION_ALIGNMENT` (16).
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Aligned2(pub(crate) [*mut c_void; 2]);

/// Four pointers aligned to `MEMORY_ALLOCATION_ALIGNMENT` (16).
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Aligned4(pub(crate) [*mut c_void; 4]);

/// Six pointers aligned to `MEMORY_ALLOCATION_ALIGNMENT` (16).
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Aligned6(pub(crate) [*mut c_void; 6]);

/// `NET_BUFFER` (prefix through `MiniportReserved`).
#[repr(C, align(16))]
#[derive(Debug)]
pub(crate) struct NET_BUFFER {
    pub(crate) Next: *mut NET_BUFFER,
    /// `PMDL`.
    pub(crate) CurrentMdl: *mut c_void,
    pub(crate) CurrentMdlOffset: u32,
    /// The union `{ ULONG DataLength; SIZE_T stDataLength; }`: read the low 32 bits
    /// ([`NET_BUFFER::data_length`]).
    pub(crate) DataLength: usize,
    /// `PMDL`.
    pub(crate) MdlChain: *mut c_void,
    pub(crate) DataOffset: u32,
    /// End of the header union: its inner struct is 44 bytes padded to 48 (alignment 8).
    pub(crate) _UnionPadding: u32,
    pub(crate) ChecksumBias: u16,
    pub(crate) Reserved: u16,
    pub(crate) NdisPoolHandle: *mut c_void,
    pub(crate) NdisReserved: Aligned2,
    pub(crate) ProtocolReserved: Aligned6,
    pub(crate) MiniportReserved: Aligned4,
}

impl NET_BUFFER {
    /// `NET_BUFFER_DATA_LENGTH(nb)`: the `ULONG` member of the length union.
    pub(crate) fn data_length(&self) -> u32 {
        self.DataLength as u32
    }
}

/// `NET_BUFFER_LIST` (prefix through the declared info slots).
#[repr(C, align(16))]
#[derive(Debug)]
pub(crate) struct NET_BUFFER_LIST {
    pub(crate) Next: *mut NET_BUFFER_LIST,
    pub(crate) FirstNetBuffer: *mut NET_BUFFER,
    /// `PNET_BUFFER_LIST_CONTEXT`.
    pub(crate) Context: *mut c_void,
    pub(crate) ParentNetBufferList: *mut NET_BUFFER_LIST,
    pub(crate) NdisPoolHandle: *mut c_void,
    pub(crate) NdisReserved: Aligned2,
    pub(crate) ProtocolReserved: Aligned4,
    pub(crate) MiniportReserved: Aligned2,
    pub(crate) Scratch: *mut c_void,
    pub(crate) SourceHandle: *mut c_void,
    pub(crate) NblFlags: u32,
    pub(crate) ChildRefCount: i32,
    pub(crate) Flags: u32,
    /// `NDIS_STATUS` (union with `NdisReserved2`).
    pub(crate) Status: i32,
    /// `NET_BUFFER_LIST_INFO(nbl, id)` slots `0..nbl_info::DECLARED`.
    pub(crate) NetBufferListInfo: [*mut c_void; nbl_info::DECLARED],
}

/// `PNET_BUFFER_LIST`.
pub(crate) type PNET_BUFFER_LIST = *mut NET_BUFFER_LIST;

const _: () = {
    assert!(offset_of!(NET_BUFFER, CurrentMdl) == 8);
    assert!(offset_of!(NET_BUFFER, CurrentMdlOffset) == 16);
    assert!(offset_of!(NET_BUFFER, DataLength) == 24);
    assert!(offset_of!(NET_BUFFER, MdlChain) == 32);
    assert!(offset_of!(NET_BUFFER, DataOffset) == 40);
    assert!(offset_of!(NET_BUFFER, ChecksumBias) == 48);
    assert!(offset_of!(NET_BUFFER, NdisPoolHandle) == 56);
    assert!(offset_of!(NET_BUFFER, NdisReserved) == 64);
    assert!(offset_of!(NET_BUFFER, ProtocolReserved) == 80);
    assert!(offset_of!(NET_BUFFER, MiniportReserved) == 128);
    assert!(align_of::<NET_BUFFER>() == 16);
    assert!(offset_of!(NET_BUFFER_LIST, FirstNetBuffer) == 8);
    assert!(offset_of!(NET_BUFFER_LIST, Context) == 16);
    assert!(offset_of!(NET_BUFFER_LIST, ParentNetBufferList) == 24);
    assert!(offset_of!(NET_BUFFER_LIST, NdisPoolHandle) == 32);
    assert!(offset_of!(NET_BUFFER_LIST, NdisReserved) == 48);
    assert!(offset_of!(NET_BUFFER_LIST, ProtocolReserved) == 64);
    assert!(offset_of!(NET_BUFFER_LIST, MiniportReserved) == 96);
    assert!(offset_of!(NET_BUFFER_LIST, Scratch) == 112);
    assert!(offset_of!(NET_BUFFER_LIST, NblFlags) == 128);
    assert!(offset_of!(NET_BUFFER_LIST, ChildRefCount) == 132);
    assert!(offset_of!(NET_BUFFER_LIST, Flags) == 136);
    assert!(offset_of!(NET_BUFFER_LIST, Status) == 140);
    assert!(offset_of!(NET_BUFFER_LIST, NetBufferListInfo) == 144);
    assert!(size_of::<*mut c_void>() == 8);
};

/// `NDIS_NET_BUFFER_LIST_8021Q_INFO`: a pointer-sized union whose `TagHeader` is the bit
/// field `UserPriority:3, CanonicalFormatId:1, VlanId:12, Reserved:16` (MSVC allocates bit
/// fields from the least significant bit), overlaid on `PVOID Value`. The driver handles it
/// as the slot's integer value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ieee8021qInfo(pub(crate) usize);

impl Ieee8021qInfo {
    const USER_PRIORITY_MASK: usize = 0b111;

    /// `TagHeader.UserPriority`.
    pub(crate) fn user_priority(self) -> u8 {
        (self.0 & Self::USER_PRIORITY_MASK) as u8
    }

    /// The value with `TagHeader.UserPriority = priority & 7`, every other bit (VLAN id,
    /// CFI, `WLanTagHeader.WMMInfo`) kept.
    #[must_use]
    pub(crate) fn with_user_priority(self, priority: u8) -> Self {
        Ieee8021qInfo((self.0 & !Self::USER_PRIORITY_MASK) | usize::from(priority & 0b111))
    }

    /// `TagHeader.VlanId`.
    pub(crate) fn vlan_id(self) -> u16 {
        ((self.0 >> 4) & 0xfff) as u16
    }
}

// SAFETY: the signature matches ndis.h: `PVOID NdisGetDataBuffer(PNET_BUFFER NetBuffer,
// ULONG BytesNeeded, PVOID Storage, UINT AlignMultiple, UINT AlignOffset)`, NDIS_API =
// "system"; exported by ndis.sys through ndis.lib (IRQL <= DISPATCH_LEVEL).
#[cfg(windows)]
#[link(name = "ndis")]
unsafe extern "system" {
    pub(crate) fn NdisGetDataBuffer(
        net_buffer: *mut NET_BUFFER,
        bytes_needed: u32,
        storage: *mut c_void,
        align_multiple: u32,
        align_offset: u32,
    ) -> *mut c_void;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_priority_keeps_vlan_and_wmm_bits() {
        // VLAN 0x123, CFI 0, WMMInfo 0b1010 (bits 16..19), UserPriority 2.
        let v = Ieee8021qInfo((0b1010 << 16) | (0x123 << 4) | 2);
        assert_eq!((v.user_priority(), v.vlan_id()), (2, 0x123));
        let w = v.with_user_priority(6);
        assert_eq!((w.user_priority(), w.vlan_id()), (6, 0x123));
        assert_eq!(w.0 >> 16, 0b1010);
        assert_eq!(Ieee8021qInfo(0).with_user_priority(9).user_priority(), 1);
    }
}
