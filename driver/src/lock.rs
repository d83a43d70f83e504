//! Locks that own what they protect (STYLE.md §3).
//!
//! * [`SpinRwLock<T>`]: an executive reader/writer spin lock (`EX_SPIN_LOCK`). Shared on the
//!   packet path (classify, `<= DISPATCH_LEVEL`), exclusive for control requests. Acquiring
//!   raises the IRQL to `DISPATCH_LEVEL`; the guard restores the IRQL it saved when dropped.
//!   Not recursive: a thread that holds it must not acquire it again (deadlock). While it is
//!   held: no waits, no paged memory, no `Zw*`/`Fwpm*` calls, no `FwpsFlowRemoveContext0`.
//! * [`PassiveMutex<T>`]: a kernel mutex (`KMUTEX`) for work that must stay at
//!   `PASSIVE_LEVEL` while serialised (registry writes). Acquiring it enters a critical region
//!   (normal kernel APCs off, special kernel APCs on), which is what `ZwSetValueKey` and
//!   friends require.
//!
//! Lock order (driver-wide): `PassiveMutex` (configuration) → `SpinRwLock` (engine) →
//! the cancel-safe queue's spin lock. Never the other way round.
//!
//! Both live in non-paged memory that never moves once initialised (`globals`), as
//! `EX_SPIN_LOCK` and `KMUTEX` require.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

use wdk_sys::ntddk::{
    ExAcquireSpinLockExclusive, ExAcquireSpinLockShared, ExReleaseSpinLockExclusive,
    ExReleaseSpinLockShared, KeInitializeMutex, KeReleaseMutex, KeWaitForSingleObject,
};
use wdk_sys::{EX_SPIN_LOCK, KIRQL, KMUTEX};

/// A reader/writer spin lock owning a `T`.
pub(crate) struct SpinRwLock<T> {
    lock: UnsafeCell<EX_SPIN_LOCK>,
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is only through guards: shared references under the shared lock
// (so `T: Sync` is needed to hand `&T` to several threads at once), the unique reference
// under the exclusive lock (so `T: Send`, since another thread may then mutate or drop the
// value); `lock` is only touched through the Ex*SpinLock* routines, which are atomic.
unsafe impl<T: Send + Sync> Sync for SpinRwLock<T> {}
// SAFETY: moving the lock moves the `T`; nothing in it refers to a thread.
unsafe impl<T: Send> Send for SpinRwLock<T> {}

impl<T> SpinRwLock<T> {
    /// A lock in its released state: an `EX_SPIN_LOCK` is initialised by setting it to zero
    /// ("Reader/Writer Spin Locks": no initialisation routine exists).
    pub(crate) const fn new(data: T) -> Self {
        Self {
            lock: UnsafeCell::new(0),
            data: UnsafeCell::new(data),
        }
    }

    /// Shared access. IRQL `<= DISPATCH_LEVEL` on entry; `DISPATCH_LEVEL` while the guard
    /// lives.
    pub(crate) fn read(&self) -> ReadGuard<'_, T> {
        // SAFETY: `self.lock` is a valid, initialised EX_SPIN_LOCK in non-paged memory that
        // outlives the guard (the guard borrows `self`). ExAcquireSpinLockShared may be called
        // at IRQL <= DISPATCH_LEVEL, which is this method's contract; it returns the previous
        // IRQL, which the guard hands back to ExReleaseSpinLockShared.
        let old_irql = unsafe { ExAcquireSpinLockShared(self.lock.get()) };
        ReadGuard {
            lock: self,
            old_irql,
        }
    }

    /// Exclusive access. IRQL `<= DISPATCH_LEVEL` on entry; `DISPATCH_LEVEL` while the guard
    /// lives.
    pub(crate) fn write(&self) -> WriteGuard<'_, T> {
        // SAFETY: as in `read`; ExAcquireSpinLockExclusive has the same IRQL contract and
        // waits until no reader and no writer holds the lock.
        let old_irql = unsafe { ExAcquireSpinLockExclusive(self.lock.get()) };
        WriteGuard {
            lock: self,
            old_irql,
        }
    }
}

/// Shared access to the data of a [`SpinRwLock`]; releases the lock and restores the IRQL
/// when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub(crate) struct ReadGuard<'a, T> {
    lock: &'a SpinRwLock<T>,
    old_irql: KIRQL,
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the shared lock is held for the guard's lifetime, so no exclusive guard
        // (the only source of `&mut T`) exists, and the returned borrow cannot outlive `self`.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this guard acquired the lock shared (in `read`) and releases it exactly
        // once, at DISPATCH_LEVEL, with the IRQL saved by that acquisition.
        unsafe { ExReleaseSpinLockShared(self.lock.lock.get(), self.old_irql) }
    }
}

/// Exclusive access to the data of a [`SpinRwLock`]; releases the lock and restores the IRQL
/// when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub(crate) struct WriteGuard<'a, T> {
    lock: &'a SpinRwLock<T>,
    old_irql: KIRQL,
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the exclusive lock is held for the guard's lifetime: no other reference to
        // the data exists outside this guard.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only live borrow through the
        // guard.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this guard acquired the lock exclusively (in `write`) and releases it
        // exactly once, at DISPATCH_LEVEL, with the IRQL saved by that acquisition.
        unsafe { ExReleaseSpinLockExclusive(self.lock.lock.get(), self.old_irql) }
    }
}

/// A kernel mutex owning a `T`, for serialised work at `PASSIVE_LEVEL`.
///
/// Must be initialised in its final place with [`PassiveMutex::init`] before first use
/// (`KeInitializeMutex` works on the object where it lives).
pub(crate) struct PassiveMutex<T> {
    mutex: UnsafeCell<KMUTEX>,
    data: UnsafeCell<T>,
}

// SAFETY: `data` is reached only through a guard, which exists only while the mutex is owned
// by the current thread: one thread at a time, hence `T: Send` suffices.
unsafe impl<T: Send> Sync for PassiveMutex<T> {}
// SAFETY: moving the value moves the `T`; `init` is required again after a move, which
// `globals` never does (it initialises the mutex in place, once).
unsafe impl<T: Send> Send for PassiveMutex<T> {}

impl<T> PassiveMutex<T> {
    /// An uninitialised mutex (all-zero `KMUTEX`); call [`PassiveMutex::init`] in place.
    pub(crate) fn new(data: T) -> Self {
        Self {
            mutex: UnsafeCell::new(KMUTEX::default()),
            data: UnsafeCell::new(data),
        }
    }

    /// Initialises the `KMUTEX` where it now lives. IRQL: any (`KeInitializeMutex` is
    /// callable at any IRQL); in practice `PASSIVE_LEVEL` in `DriverEntry`.
    ///
    /// # Safety
    ///
    /// Called once, before any [`PassiveMutex::lock`], on a value in non-paged memory that is
    /// never moved afterwards and that no other thread can reach yet.
    pub(crate) unsafe fn init(&self) {
        // SAFETY: per this function's contract the KMUTEX is at its final non-paged address
        // and not yet shared, so initialising it in place cannot race; level 0 is what
        // drivers pass (the level is unused on current Windows).
        unsafe { KeInitializeMutex(self.mutex.get(), 0) }
    }

    /// Waits for the mutex. IRQL `PASSIVE_LEVEL` (an unbounded wait); the guard keeps the
    /// thread in a critical region until dropped.
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        // SAFETY: the KMUTEX was initialised in place (`init` contract, upheld by `globals`)
        // and lives as long as `self`. Waiting without a timeout at PASSIVE_LEVEL is allowed;
        // Executive / KernelMode / not alertable is the documented choice for a driver waiting
        // on its own object. With no timeout the only possible result is STATUS_SUCCESS
        // (a kernel-mode, non-alertable wait cannot return STATUS_ALERTED / USER_APC).
        let _status = unsafe {
            KeWaitForSingleObject(
                self.mutex.get().cast(),
                wdk_sys::_KWAIT_REASON::Executive,
                wdk_sys::_MODE::KernelMode as wdk_sys::KPROCESSOR_MODE,
                0,
                core::ptr::null_mut(),
            )
        };
        MutexGuard { mutex: self }
    }
}

/// Ownership of a [`PassiveMutex`]; releases it when dropped.
#[must_use = "the mutex is released as soon as the guard is dropped"]
pub(crate) struct MutexGuard<'a, T> {
    mutex: &'a PassiveMutex<T>,
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the current thread owns the mutex for the guard's lifetime.
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only borrow through the guard.
        unsafe { &mut *self.mutex.data.get() }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the current thread acquired the mutex in `lock` and releases it once, at
        // the IRQL it acquired it at (PASSIVE_LEVEL); Wait = FALSE because no wait follows
        // immediately.
        let _previous = unsafe { KeReleaseMutex(self.mutex.mutex.get(), 0) };
    }
}
