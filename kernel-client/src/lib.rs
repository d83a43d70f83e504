//! # qosmark-kernel-client
//!
//! For Rust drivers that want qosmark to mark their traffic: a thin, `no_std` wrapper over
//! qosmark's kernel-mode function table (`qosmark_abi::kernel`, re-exported as [`abi`]). The
//! C equivalent is `include/qosmark_kernel.h`; both are checked against the same Rust
//! definitions, and `docs/kernel-interface.md` describes the contract.
//!
//! The crate does not send the query itself (that needs your driver's WDK bindings): build
//! the input with [`query_input`], send [`abi::IOCTL_QOSMARK_QUERY_KERNEL_INTERFACE`] as an
//! `IRP_MJ_INTERNAL_DEVICE_CONTROL` request to `\Device\QosMark` with an output buffer of
//! [`abi::KERNEL_INTERFACE_SIZE`] bytes, and hand the table to [`Interface::from_table`]:
//!
//! ```ignore
//! let input = qosmark_kernel_client::query_input();
//! let mut table = core::mem::MaybeUninit::<abi::KernelInterface>::zeroed();
//! // IoBuildDeviceIoControlRequest(IOCTL_QOSMARK_QUERY_KERNEL_INTERFACE, device,
//! //     input.as_ptr(), 24, table.as_mut_ptr(), 96, TRUE, &event, &iosb) ... IoCallDriver ...
//! let qos = unsafe { Interface::from_table(table.assume_init()) }?;
//! let h = qos.open()?;
//! let id = h.add_flow(&flow)?;   // ≤ DISPATCH_LEVEL
//! ```
//!
//! [`Interface`] owns the reference the query took and releases it in `Drop`
//! (`InterfaceDereference`); [`Handle`] closes its kernel handle, and with it every flow, in
//! `Drop`. Keep the device's `FILE_OBJECT` referenced for as long as you keep the
//! [`Interface`].
//!
//! IRQL: every call here may be made at `IRQL <= DISPATCH_LEVEL`, with the argument
//! structures in non-paged memory (locals on a kernel stack are). Errors are the `NTSTATUS`
//! values listed in the [`abi`] docs; [`abi::STATUS_QOSMARK_UNLOADING`] means qosmark is
//! going away: drop the handles and the [`Interface`], query again later, and compare
//! [`Interface::generation`] to tell a reload from the qosmark you knew.
#![no_std]

pub use qosmark_abi::kernel as abi;
pub use qosmark_abi::status::NtStatus;

use abi::{
    FlowInfo, FlowMark, FlowSpec, KernelFlow, KernelHandle, KernelInterface, KernelMark,
    QueryInterfaceInput, KERNEL_INTERFACE_SIZE, KERNEL_INTERFACE_VERSION,
};

/// The 24 input bytes of the query.
#[must_use]
pub fn query_input() -> [u8; abi::QUERY_INTERFACE_INPUT_SIZE] {
    QueryInterfaceInput::current().to_bytes()
}

/// Why a table handed to [`Interface::from_table`] is not usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableError {
    /// `Size` smaller than this crate's table, or another `Version`.
    Incompatible,
    /// An entry is null.
    MissingEntry,
}

/// The entries, all present.
#[derive(Clone, Copy)]
struct Entries {
    reference: abi::InterfaceReferenceFn,
    dereference: abi::InterfaceReferenceFn,
    open: abi::OpenHandleFn,
    close: abi::CloseHandleFn,
    add: abi::AddFlowFn,
    change: abi::ChangeFlowFn,
    query: abi::QueryFlowFn,
    remove: abi::RemoveFlowFn,
}

/// qosmark's function table with one reference held.
pub struct Interface {
    context: *mut core::ffi::c_void,
    generation: u64,
    entries: Entries,
}

// SAFETY: the table's entries are callable from any thread at IRQL <= DISPATCH_LEVEL
// (qosmark serializes them with its own lock), and `context` is only passed back to them.
unsafe impl Send for Interface {}
// SAFETY: as for `Send`: every method takes `&self` and only calls thread-safe entries.
unsafe impl Sync for Interface {}

impl core::fmt::Debug for Interface {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Interface")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

fn check(status: i32) -> Result<(), NtStatus> {
    NtStatus(status).to_result()
}

impl Interface {
    /// Takes ownership of a table returned by a successful query, and of the reference the
    /// query took (released when the `Interface` is dropped).
    ///
    /// # Errors
    /// [`TableError`] when the table is not this version's or lacks an entry; the reference is
    /// released then.
    ///
    /// # Safety
    /// `table` must be exactly what qosmark's query wrote, the query must have succeeded, and
    /// its reference must not be released by anyone else.
    pub unsafe fn from_table(table: KernelInterface) -> Result<Self, TableError> {
        let entries = (|| {
            Some(Entries {
                reference: table.interface_reference?,
                dereference: table.interface_dereference?,
                open: table.open_handle?,
                close: table.close_handle?,
                add: table.add_flow?,
                change: table.change_flow?,
                query: table.query_flow?,
                remove: table.remove_flow?,
            })
        })();
        let compatible =
            table.size >= KERNEL_INTERFACE_SIZE && table.version == KERNEL_INTERFACE_VERSION;
        match entries {
            Some(entries) if compatible => Ok(Interface {
                context: table.context,
                generation: table.generation,
                entries,
            }),
            _ => {
                if let Some(deref) = table.interface_dereference {
                    // SAFETY: the caller hands us the query's reference; releasing it through
                    // the table's own dereference is what the contract asks for.
                    unsafe { deref(table.context) };
                }
                Err(if compatible {
                    TableError::MissingEntry
                } else {
                    TableError::Incompatible
                })
            }
        }
    }

    /// The generation of the qosmark load this table belongs to.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Opens a kernel handle (`OpenHandle`).
    ///
    /// # Errors
    /// The entry's status.
    pub fn open(&self) -> Result<Handle<'_>, NtStatus> {
        let mut raw: KernelHandle = 0;
        // SAFETY: the table is valid while we hold our reference (`self`); `raw` is a valid
        // local for the write.
        check(unsafe { (self.entries.open)(self.context, 0, &raw mut raw) })?;
        Ok(Handle {
            interface: self,
            raw,
        })
    }

    /// Takes another reference (`InterfaceReference`) and returns it as a second `Interface`.
    #[must_use]
    pub fn reference(&self) -> Interface {
        // SAFETY: we hold a reference, so the table is valid; InterfaceReference cannot fail.
        unsafe { (self.entries.reference)(self.context) };
        Interface {
            context: self.context,
            generation: self.generation,
            entries: self.entries,
        }
    }
}

impl Drop for Interface {
    fn drop(&mut self) {
        // SAFETY: releases the one reference this value owns; no method can run afterwards.
        unsafe { (self.entries.dereference)(self.context) };
    }
}

/// An open kernel handle; closing it (in `Drop`) removes every flow it added.
#[derive(Debug)]
pub struct Handle<'a> {
    interface: &'a Interface,
    raw: KernelHandle,
}

impl Handle<'_> {
    /// Registers a flow (`AddFlow`) and returns its id.
    ///
    /// # Errors
    /// The entry's status (`STATUS_INVALID_PARAMETER`, `STATUS_OBJECT_NAME_COLLISION`, ...).
    pub fn add_flow(&self, flow: &KernelFlow) -> Result<u32, NtStatus> {
        let spec = FlowSpec::encode(flow);
        let mut id = 0u32;
        let e = &self.interface.entries;
        // SAFETY: valid table (reference held by `interface`); `spec` and `id` are valid locals.
        check(unsafe {
            (e.add)(
                self.interface.context,
                self.raw,
                &raw const spec,
                &raw mut id,
            )
        })?;
        Ok(id)
    }

    /// Replaces a flow's mark (`ChangeFlow`).
    ///
    /// # Errors
    /// The entry's status.
    pub fn change_flow(&self, flow_id: u32, mark: &KernelMark) -> Result<(), NtStatus> {
        let mark = FlowMark::encode(mark);
        let e = &self.interface.entries;
        // SAFETY: valid table; `mark` is a valid local.
        check(unsafe { (e.change)(self.interface.context, self.raw, flow_id, &raw const mark) })
    }

    /// A flow's mark and counters (`QueryFlow`).
    ///
    /// # Errors
    /// The entry's status.
    pub fn query_flow(&self, flow_id: u32) -> Result<FlowInfo, NtStatus> {
        let mut info = FlowInfo::default();
        let e = &self.interface.entries;
        // SAFETY: valid table; `info` is a valid local.
        check(unsafe { (e.query)(self.interface.context, self.raw, flow_id, &raw mut info) })?;
        Ok(info)
    }

    /// Removes a flow (`RemoveFlow`).
    ///
    /// # Errors
    /// The entry's status.
    pub fn remove_flow(&self, flow_id: u32) -> Result<(), NtStatus> {
        let e = &self.interface.entries;
        // SAFETY: valid table.
        check(unsafe { (e.remove)(self.interface.context, self.raw, flow_id) })
    }

    /// The raw handle value.
    #[must_use]
    pub fn raw(&self) -> KernelHandle {
        self.raw
    }
}

impl Drop for Handle<'_> {
    fn drop(&mut self) {
        let e = &self.interface.entries;
        // SAFETY: valid table; the handle is not used after this. Its status is ignored: the
        // handle is gone either way (closed now, or by qosmark's unload).
        let _ = unsafe { (e.close)(self.interface.context, self.raw) };
    }
}
