//! The interface's lifetime: reference counting, "no unload while referenced", generations.
//!
//! One [`Lifetime`] per driver load (a `static` in the glue). Its state is a single
//! `AtomicU32`: bit 31 says the driver has begun to unload, bits 0..=30 count references.
//! A reference is held
//!
//! * by every client from a successful query until its `InterfaceDereference` (plus one per
//!   `InterfaceReference` it made), and
//! * by every entry call for the duration of the call ([`Lifetime::enter`]), so the unload
//!   also waits for calls that are running on other processors.
//!
//! The unload ([`Lifetime::begin_unload`]) sets the bit: from then on new queries and entry
//! calls are refused ([`Unloading`]), while references already held stay valid and can still
//! be duplicated (`InterfaceReference` returns nothing, so it cannot be refused; the count is
//! non-zero anyway because its caller holds one). `DriverUnload` then waits until
//! [`Lifetime::is_drained`] — count 0 with the bit set — before it frees the engine and lets
//! the image go, so no client can be left holding a function pointer into unmapped code
//! unless it breaks the contract (calls after its last dereference).
//!
//! Everything here is lock-free (compare-and-swap loops), allocates nothing and never
//! blocks: callable at any `IRQL <= DISPATCH_LEVEL`. Waiting is the glue's business.
//!
//! The generation is a 64-bit value chosen at load (the glue uses the system time, 100 ns
//! units, so two loads never share it). Handles carry its low and high halves folded to 32
//! bits ([`Lifetime::handle_tag`]), so a handle from an earlier load is refused instead of
//! aliasing a handle of this load (unless the 32-bit tags collide, chance 2^-32 per reload).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const UNLOADING: u32 = 1 << 31;
const COUNT_MASK: u32 = UNLOADING - 1;

/// Refusal: the driver has begun to unload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unloading;

/// A reference could not be taken or released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefError {
    /// The driver is unloading (new references are refused).
    Unloading,
    /// 2^31 - 1 references are held already.
    Overflow,
    /// Released more often than taken (a client bug); nothing changed.
    Underflow,
}

/// Reference count, unloading flag and generation of the kernel interface.
#[derive(Debug)]
pub(crate) struct Lifetime {
    state: AtomicU32,
    generation: AtomicU64,
}

/// One entry call in progress: holds a reference until dropped.
#[must_use = "the reference is released when the guard is dropped"]
#[derive(Debug)]
pub(crate) struct CallGuard<'a> {
    lifetime: &'a Lifetime,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        // Cannot underflow: this guard's own reference is still counted.
        let _ = self.lifetime.release();
    }
}

impl Lifetime {
    /// Not started: no generation yet, not unloading, no references.
    pub(crate) const fn new() -> Self {
        Lifetime {
            state: AtomicU32::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// Starts a load with this generation (`DriverEntry`, before the device is visible).
    pub(crate) fn start(&self, generation: u64) {
        self.generation.store(generation, Ordering::Release);
        self.state.store(0, Ordering::Release);
    }

    /// This load's generation (the table's `Generation`).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The 32-bit tag handles of this load carry: the generation's halves combined with `^`, never 0.
    pub(crate) fn handle_tag(&self) -> u32 {
        let g = self.generation();
        let tag = (g as u32) ^ ((g >> 32) as u32);
        if tag == 0 {
            1
        } else {
            tag
        }
    }

    /// Current number of references.
    pub(crate) fn references(&self) -> u32 {
        self.state.load(Ordering::Acquire) & COUNT_MASK
    }

    /// Whether the unload has begun.
    pub(crate) fn is_unloading(&self) -> bool {
        self.state.load(Ordering::Acquire) & UNLOADING != 0
    }

    /// Unloading and no reference left: the driver may free what the interface uses.
    pub(crate) fn is_drained(&self) -> bool {
        self.state.load(Ordering::Acquire) == UNLOADING
    }

    fn increment(&self, refuse_when_unloading: bool) -> Result<(), RefError> {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            if refuse_when_unloading && cur & UNLOADING != 0 {
                return Err(RefError::Unloading);
            }
            if cur & COUNT_MASK == COUNT_MASK {
                return Err(RefError::Overflow);
            }
            match self.state.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Takes a new reference for a client (a successful query).
    pub(crate) fn try_reference(&self) -> Result<(), RefError> {
        self.increment(true)
    }

    /// `InterfaceReference`: duplicates a reference the caller already holds, so it is taken
    /// even while unloading.
    pub(crate) fn add_reference(&self) -> Result<(), RefError> {
        self.increment(false)
    }

    /// Releases one reference (`InterfaceDereference`, end of a call).
    pub(crate) fn release(&self) -> Result<(), RefError> {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            if cur & COUNT_MASK == 0 {
                return Err(RefError::Underflow);
            }
            match self.state.compare_exchange_weak(
                cur,
                cur - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Holds a reference for one entry call; refused once unloading.
    pub(crate) fn enter(&self) -> Result<CallGuard<'_>, Unloading> {
        match self.increment(true) {
            Ok(()) => Ok(CallGuard { lifetime: self }),
            // An overflowing count cannot serve a call either; the caller sees "unloading".
            Err(_) => Err(Unloading),
        }
    }

    /// Begins the unload: refuses new references from now on. Returns whether nothing is
    /// held (the caller can proceed at once).
    pub(crate) fn begin_unload(&self) -> bool {
        self.state.fetch_or(UNLOADING, Ordering::AcqRel) & COUNT_MASK == 0
    }
}
