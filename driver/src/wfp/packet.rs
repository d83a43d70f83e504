//! `NET_BUFFER_LIST` / `NET_BUFFER` access, the clone, the injection and its completion.
//! Windows only. Every function here runs at `IRQL <= DISPATCH_LEVEL`, inside a classify
//! callback or an injection completion, and allocates nothing (the clone is WFP's).

use core::ffi::c_void;
use core::ptr;

use crate::ffi::ndis::{nbl_info, NdisGetDataBuffer, NET_BUFFER, NET_BUFFER_LIST};
use crate::ffi::wfp::{
    FwpsAllocateCloneNetBufferList0, FwpsFreeCloneNetBufferList0, FwpsInjectNetworkSendAsync0,
};
use crate::ffi::{nt_success, Handle, NtStatus};

use super::decide::{header_read_len, HEADER_BYTES};

/// The first `NET_BUFFER` of `nbl`.
///
/// # Safety
/// `nbl` points to a live `NET_BUFFER_LIST` the caller may read (the classify's
/// `layerData`, or a clone we own), at `IRQL <= DISPATCH_LEVEL`.
pub(super) unsafe fn first_nb(nbl: *const NET_BUFFER_LIST) -> *mut NET_BUFFER {
    // SAFETY: per the contract `nbl` is live and readable; `FirstNetBuffer` is at the
    // asserted offset 8 of the NBL (ffi::ndis layout checks).
    unsafe { (*nbl).FirstNetBuffer }
}

/// The `NET_BUFFER` after `nb` (null at the end).
///
/// # Safety
/// `nb` points to a live `NET_BUFFER` of an NBL the caller may read.
pub(super) unsafe fn next_nb(nb: *const NET_BUFFER) -> *mut NET_BUFFER {
    // SAFETY: per the contract `nb` is live; `Next` is its first member.
    unsafe { (*nb).Next }
}

/// `NET_BUFFER_DATA_LENGTH(nb)`.
///
/// # Safety
/// As [`next_nb`].
pub(super) unsafe fn nb_length(nb: *const NET_BUFFER) -> u32 {
    // SAFETY: per the contract `nb` is live and readable.
    unsafe { (*nb).data_length() }
}

/// `NET_BUFFER_LIST_INFO(nbl, slot)` as an integer.
///
/// # Safety
/// As [`first_nb`]; `slot < nbl_info::DECLARED`.
pub(super) unsafe fn nbl_info_value(nbl: *const NET_BUFFER_LIST, slot: usize) -> usize {
    // SAFETY: per the contract `nbl` is live and readable; `get` bounds the slot to the
    // declared prefix of `NetBufferListInfo`, which every NDIS 6 NBL has.
    unsafe { (*nbl).NetBufferListInfo.get(slot).map_or(0, |p| p.addr()) }
}

/// Copies the out-of-band slots the clone needs from `original` to `clone`: checksum
/// offload, large send and 802.1Q (wfp-driver.md §5/§6).
///
/// # Safety
/// `original` is the classified NBL (readable), `clone` our clone of it (writable, not yet
/// injected), at `IRQL <= DISPATCH_LEVEL`.
pub(super) unsafe fn copy_send_info(original: *const NET_BUFFER_LIST, clone: *mut NET_BUFFER_LIST) {
    for slot in [
        nbl_info::TCP_IP_CHECKSUM,
        nbl_info::TCP_LARGE_SEND,
        nbl_info::IEEE_8021Q,
    ] {
        // SAFETY: per the contract both NBLs are live; reading the original's slot.
        let value = unsafe { (*original).NetBufferListInfo.get(slot).copied() };
        // SAFETY: per the contract the clone is ours and nobody else touches it before
        // injection; writing one declared slot.
        let target = unsafe { (*clone).NetBufferListInfo.get_mut(slot) };
        if let (Some(v), Some(t)) = (value, target) {
            *t = v;
        }
    }
}

/// Sets `NET_BUFFER_LIST_INFO(clone, Ieee8021QNetBufferListInfo)` to `value`.
///
/// # Safety
/// As [`copy_send_info`] for `clone`.
pub(super) unsafe fn set_8021q(clone: *mut NET_BUFFER_LIST, value: usize) {
    // SAFETY: per the contract the clone is ours and not yet injected; one declared slot.
    let slot = unsafe { (*clone).NetBufferListInfo.get_mut(nbl_info::IEEE_8021Q) };
    if let Some(s) = slot {
        *s = ptr::without_provenance_mut(value);
    }
}

/// The first bytes of `nb` (up to [`HEADER_BYTES`]), contiguous: a pointer into the
/// buffer's own memory when the bytes are contiguous there, else a copy in `storage`.
/// `None` when NDIS cannot provide them.
///
/// # Safety
/// `nb` is a live `NET_BUFFER` of the classified NBL; `IRQL <= DISPATCH_LEVEL`. The returned
/// slice must not outlive the classify call (it may point into the NBL's data).
pub(super) unsafe fn read_headers(
    nb: *mut NET_BUFFER,
    storage: &mut [u8; HEADER_BYTES],
) -> Option<&[u8]> {
    // SAFETY: `nb` is live per the contract.
    let len = header_read_len(unsafe { nb_length(nb) });
    if len == 0 {
        return None;
    }
    // SAFETY: `nb` is live; `storage` is writable for `len <= HEADER_BYTES` bytes; alignment
    // 1/0 asks for no alignment. NdisGetDataBuffer is callable at <= DISPATCH_LEVEL.
    let p = unsafe { NdisGetDataBuffer(nb, len, storage.as_mut_ptr().cast::<c_void>(), 1, 0) };
    if p.is_null() {
        return None;
    }
    // SAFETY: a non-null result points to `len` contiguous readable bytes (in the buffer or
    // in `storage`), valid while the NBL is not modified — i.e. for this classify call; the
    // lifetime ties the slice to `storage`'s borrow, which ends before classify returns.
    Some(unsafe { core::slice::from_raw_parts(p.cast::<u8>().cast_const(), len as usize) })
}

/// The first `span` bytes of `nb` as a writable slice into the buffer's own memory, or
/// `None` if they are not contiguous there (then nothing is written: the rewrite is skipped
/// and counted, see `docs/packet-path.md`).
///
/// # Safety
/// `nb` is a `NET_BUFFER` of our clone, before injection; `IRQL <= DISPATCH_LEVEL`; no other
/// reference to those bytes exists during the returned borrow (the original NBL, which shares
/// them, is held by WFP for this classify call and not read concurrently by us).
pub(super) unsafe fn header_mut<'a>(nb: *mut NET_BUFFER, span: usize) -> Option<&'a mut [u8]> {
    let len = u32::try_from(span).ok()?;
    // SAFETY: `nb` is live per the contract.
    if unsafe { nb_length(nb) } < len {
        return None;
    }
    // SAFETY: `nb` is live; with Storage NULL, NdisGetDataBuffer returns a pointer into the
    // mapped buffer if the `len` bytes are contiguous, else NULL. <= DISPATCH_LEVEL.
    let p = unsafe { NdisGetDataBuffer(nb, len, ptr::null_mut(), 1, 0) };
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` points to `len` contiguous bytes of the buffer's system-mapped memory
    // (NdisGetDataBuffer returns NULL rather than a copy when Storage is NULL). Its page does
    // not promise the mapping is writable; Microsoft's samples write clone headers through
    // exactly this pointer (ddproxy's UDP port rewrite, WFPSampler's IP header rewrite), and
    // so do we (VM item 6). Exclusivity per the contract.
    Some(unsafe { core::slice::from_raw_parts_mut(p.cast::<u8>(), span) })
}

/// A clone of `nbl` that shares its buffers (`FwpsAllocateCloneNetBufferList0`, default
/// pools, flags 0), or the failure status.
///
/// # Safety
/// `nbl` is the classified NBL, `IRQL <= DISPATCH_LEVEL`.
pub(super) unsafe fn clone_nbl(
    nbl: *mut NET_BUFFER_LIST,
) -> Result<*mut NET_BUFFER_LIST, NtStatus> {
    let mut clone: *mut NET_BUFFER_LIST = ptr::null_mut();
    // SAFETY: `nbl` is the live classified NBL; NULL pools select NDIS' defaults; `clone` is
    // a valid out pointer. Callable at <= DISPATCH_LEVEL.
    let status = unsafe {
        FwpsAllocateCloneNetBufferList0(nbl, ptr::null_mut(), ptr::null_mut(), 0, &raw mut clone)
    };
    if nt_success(status) && !clone.is_null() {
        Ok(clone)
    } else {
        Err(status)
    }
}

/// Frees a clone that was never injected (or whose injection completed).
///
/// # Safety
/// `clone` came from [`clone_nbl`] and is not referenced afterwards; `<= DISPATCH_LEVEL`.
pub(super) unsafe fn free_clone(clone: *mut NET_BUFFER_LIST) {
    // SAFETY: per the contract we own `clone`; flags must be 0.
    unsafe { FwpsFreeCloneNetBufferList0(clone, 0) };
}

/// Injects `clone` on the send path of `compartment`. On success the completion routine
/// owns it; on failure the caller still does (the completion is not called).
///
/// # Safety
/// `handle` is a live network injection handle of the clone's address family; `clone` came
/// from [`clone_nbl`], starts at the IP header and is not touched by the caller after a
/// successful return; `<= DISPATCH_LEVEL`.
pub(super) unsafe fn inject(
    handle: Handle,
    compartment: u32,
    clone: *mut NET_BUFFER_LIST,
) -> Result<(), NtStatus> {
    // SAFETY: per the contract; injection context NULL, flags 0 (required), completion
    // `inject_complete` frees the clone; no completion context.
    let status = unsafe {
        FwpsInjectNetworkSendAsync0(
            handle,
            ptr::null_mut(),
            0,
            compartment,
            clone,
            inject_complete,
            ptr::null_mut(),
        )
    };
    if nt_success(status) {
        Ok(())
    } else {
        Err(status)
    }
}

/// `FWPS_INJECT_COMPLETE0` of our injections: frees the clone, which also releases the
/// reference it held on the absorbed original's buffers. Runs at `IRQL <= DISPATCH_LEVEL`
/// (`dispatch_level` says which). `clone->Status` carries the send result; a failed send
/// means the packet was dropped after we absorbed the original (a VM test item, not counted).
unsafe extern "system" fn inject_complete(
    _context: *mut c_void,
    clone: *mut NET_BUFFER_LIST,
    _dispatch_level: u8,
) {
    if clone.is_null() {
        return;
    }
    // SAFETY: WFP hands back the clone we injected; it is ours again and nothing else
    // references it. FwpsFreeCloneNetBufferList0 is callable at <= DISPATCH_LEVEL.
    unsafe { free_clone(clone) };
}
