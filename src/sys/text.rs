//! Function pointers that cross a fork as plain addresses.
//!
//! A process forked from the same executable (the zygote's children, the
//! schedulers) has the same code at the same addresses, so a function can be
//! named by its address. Before an address is turned back into a callable
//! pointer it is checked against the executable's executable `PT_LOAD` segments
//! (found with `dl_iterate_phdr(3)`) and against a fingerprint of the exact
//! pointer type it was taken from.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// A function pointer as an address plus a fingerprint of its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FnAddr {
    /// The address of the function.
    pub(crate) addr: usize,
    /// A fingerprint of the fn-pointer type's name.
    pub(crate) sig: u64,
}

mod sealed {
    pub(crate) trait Sealed {}
}

/// Implemented by plain `fn` pointer types only (sealed).
pub(crate) trait FnPointer: Copy + sealed::Sealed + 'static {}

macro_rules! fn_pointer {
    ($($arg: ident),*) => {
        impl<$($arg: 'static,)* R: 'static> sealed::Sealed for fn($($arg),*) -> R {}
        impl<$($arg: 'static,)* R: 'static> FnPointer for fn($($arg),*) -> R {}
    };
}
fn_pointer!();
fn_pointer!(A);
fn_pointer!(A, B);
fn_pointer!(A, B, C);

fn type_sig<F: 'static>() -> u64 {
    crate::wire::fingerprint_str(std::any::type_name::<F>())
}

/// Records `f` as an address.
pub(crate) fn erase<F: FnPointer>(f: F) -> FnAddr {
    const { assert!(std::mem::size_of::<F>() == std::mem::size_of::<usize>()) };
    // SAFETY: F is a fn pointer type (sealed trait), which has the size and
    // representation of a usize; reading it as one is a plain copy.
    let addr = unsafe { std::mem::transmute_copy::<F, usize>(&f) };
    FnAddr {
        addr,
        sig: type_sig::<F>(),
    }
}

/// Turns an address back into a callable `F`, if it lies in the executable's
/// text and was recorded from the same pointer type.
pub(crate) fn restore<F: FnPointer>(a: FnAddr) -> Option<F> {
    if a.sig != type_sig::<F>() || !in_text(a.addr) {
        return None;
    }
    // SAFETY: F is a fn pointer type of usize size. The address lies inside the
    // executable's own code and was produced by `erase::<F>` for this very type
    // in a process forked from the same executable (the fingerprint checks the
    // type; the channels that carry FnAddr are private to the node's processes).
    Some(unsafe { std::mem::transmute_copy::<usize, F>(&a.addr) })
}

/// Whether `addr` lies in an executable segment of the main executable.
pub(crate) fn in_text(addr: usize) -> bool {
    text_ranges().iter().any(|&(lo, hi)| addr >= lo && addr < hi)
}

fn text_ranges() -> &'static [(usize, usize)] {
    static RANGES: OnceLock<Vec<(usize, usize)>> = OnceLock::new();
    RANGES.get_or_init(|| {
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        extern "C" fn callback(
            info: *mut libc::dl_phdr_info,
            _size: libc::size_t,
            data: *mut libc::c_void,
        ) -> libc::c_int {
            // SAFETY: dl_iterate_phdr passes a valid info for the duration of the
            // call, and `data` is the Vec we passed in below.
            unsafe {
                let ranges = &mut *(data as *mut Vec<(usize, usize)>);
                let info = &*info;
                for i in 0..info.dlpi_phnum as usize {
                    let ph = &*info.dlpi_phdr.add(i);
                    if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
                        let lo = info.dlpi_addr as usize + ph.p_vaddr as usize;
                        ranges.push((lo, lo + ph.p_memsz as usize));
                    }
                }
            }
            // The first object is the main executable: stop after it.
            1
        }
        // SAFETY: the callback only reads the headers it is given and writes to
        // the Vec passed as `data`, which outlives the call.
        unsafe {
            libc::dl_iterate_phdr(Some(callback), (&mut ranges as *mut Vec<(usize, usize)>).cast());
        }
        ranges
    })
}
