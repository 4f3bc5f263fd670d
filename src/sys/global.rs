//! A process-wide value that a forked child can replace.
//!
//! A `static` behind a lock does not survive `fork` well: a lock held by another
//! thread at the moment of the fork stays held forever in the child. Here a
//! value is installed by leaking a `Box` and publishing its pointer; a child
//! installs its own value the same way and never touches the parent's. Values
//! are never freed, which makes the `'static` references sound.

use std::sync::atomic::{AtomicPtr, Ordering};

/// A leaked, replaceable process-wide value.
#[derive(Debug)]
pub(crate) struct ForkGlobal<T> {
    /// The installed value, or null.
    ptr: AtomicPtr<T>,
}

impl<T> ForkGlobal<T> {
    /// An empty slot.
    pub(crate) const fn new() -> ForkGlobal<T> {
        ForkGlobal {
            ptr: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Installs `value`, leaking it, and returns a reference to it. An earlier
    /// value stays allocated (other threads may still hold references to it).
    pub(crate) fn set(&self, value: T) -> &'static T {
        let leaked: &'static mut T = Box::leak(Box::new(value));
        self.ptr.store(leaked as *mut T, Ordering::Release);
        leaked
    }

    /// The installed value, if any.
    pub(crate) fn get(&self) -> Option<&'static T> {
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: a non-null pointer was published by `set` from a leaked Box
        // that is never freed, so it is valid for 'static; only shared
        // references are ever handed out.
        unsafe { p.as_ref() }
    }
}
