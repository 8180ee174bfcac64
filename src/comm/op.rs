//! Reduction operations (MPI-4.1 section 6.9): the predefined ones, and user closures on `Pod` types.
//!
//! # User closures
//! `MPI_Op_create` takes a bare C function without a context pointer; the one argument that tells
//! one reduction from another is the datatype MPI hands to it. So every closure reduction gets a
//! datatype of its own (a committed `MPI_Type_contiguous` of one element), and a process-wide
//! table lends the closure to that datatype for the duration of the *blocking* call. The trampoline
//! finds the closure by the datatype it is given, on whichever thread MPI runs it (an MPI whose
//! progress thread runs reduction steps, or two threads reducing at once under `SharedComm`).
//! Closures are offered for blocking reductions only, never for `MPI_Iallreduce`: the closure is
//! borrowed for the call.

use std::ffi::{c_int, c_void};
use std::sync::Mutex;

use bytemuck::{Pod, Zeroable};

use crate::error::{ErrorKind, Result};
use crate::ffi::{self, MPI_Datatype, Primitive};

/// A predefined reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Sum (`MPI_SUM`), numbers only.
    #[doc(alias = "MPI_SUM")]
    Sum,
    /// Product (`MPI_PROD`), numbers only.
    #[doc(alias = "MPI_PROD")]
    Prod,
    /// Minimum (`MPI_MIN`), numbers only.
    #[doc(alias = "MPI_MIN")]
    Min,
    /// Maximum (`MPI_MAX`), numbers only.
    #[doc(alias = "MPI_MAX")]
    Max,
    /// Logical and (`MPI_LAND`) of integers read as booleans (nonzero is true); result 0 or 1.
    #[doc(alias = "MPI_LAND")]
    LogicalAnd,
    /// Logical or (`MPI_LOR`), integers only.
    #[doc(alias = "MPI_LOR")]
    LogicalOr,
    /// Logical exclusive or (`MPI_LXOR`), integers only.
    #[doc(alias = "MPI_LXOR")]
    LogicalXor,
    /// Bitwise and (`MPI_BAND`), integers only.
    #[doc(alias = "MPI_BAND")]
    BitAnd,
    /// Bitwise or (`MPI_BOR`), integers only.
    #[doc(alias = "MPI_BOR")]
    BitOr,
    /// Bitwise exclusive or (`MPI_BXOR`), integers only.
    #[doc(alias = "MPI_BXOR")]
    BitXor,
}

const ALL: [Op; 10] = [
    Op::Sum,
    Op::Prod,
    Op::Min,
    Op::Max,
    Op::LogicalAnd,
    Op::LogicalOr,
    Op::LogicalXor,
    Op::BitAnd,
    Op::BitOr,
    Op::BitXor,
];

impl Op {
    /// The position in `ALL` (a match, not a search: every reduction asks).
    #[inline]
    pub(crate) fn index(self) -> usize {
        match self {
            Op::Sum => 0,
            Op::Prod => 1,
            Op::Min => 2,
            Op::Max => 3,
            Op::LogicalAnd => 4,
            Op::LogicalOr => 5,
            Op::LogicalXor => 6,
            Op::BitAnd => 7,
            Op::BitOr => 8,
            Op::BitXor => 9,
        }
    }

    pub(crate) fn name_of(index: i64) -> String {
        usize::try_from(index).ok().and_then(|i| ALL.get(i)).map_or_else(|| format!("#{index}"), |o| format!("{o:?}"))
    }

    /// The MPI handle and datatype for reducing `T` with this operation, or an error naming why the
    /// operation does not apply to `T`.
    pub(crate) fn resolve<T: Pod>(self, op: &'static str, rank: i32) -> Result<(ffi::MPI_Op, MPI_Datatype)> {
        let p = Primitive::of::<T>();
        let ok = match self {
            Op::Sum | Op::Prod | Op::Min | Op::Max => p.is_numeric(),
            _ => p.is_integer(),
        };
        if !ok {
            let need = if p.is_numeric() { "an integer type" } else { "a primitive number type" };
            return Err(crate::Error::new(
                ErrorKind::InvalidArgument,
                op,
                Some(rank),
                format!(
                    "Op::{self:?} does not apply to {} (it needs {need}); use a closure reduction for structs",
                    std::any::type_name::<T>()
                ),
            ));
        }
        Ok((ffi::builtin_op(self.index()), ffi::layout::<T>().datatype))
    }
}

/// A value together with the rank that holds it: the result of min/max-with-location reductions.
#[derive(Clone, Copy, Debug, PartialEq)]
#[doc(alias = "MPI_MINLOC")]
#[doc(alias = "MPI_MAXLOC")]
pub struct Loc<T> {
    /// The extreme value.
    pub value: T,
    /// The lowest rank holding it.
    pub rank: i32,
}

/// The wire form of [`Loc`]: packed, so it has no padding whatever `T` is.
#[derive(Clone, Copy)]
#[repr(C, packed)]
pub(crate) struct PackedLoc<T: Pod> {
    pub(crate) value: T,
    pub(crate) rank: i32,
}

// SAFETY: `repr(C, packed)` leaves no padding between or after the fields; both fields are `Pod`, so
// every bit pattern of the struct is valid and all-zero is valid.
unsafe impl<T: Pod> Zeroable for PackedLoc<T> {}
// SAFETY: as above; `T: Pod` implies `T: Copy + 'static`, so the struct is `Copy + 'static`.
unsafe impl<T: Pod> Pod for PackedLoc<T> {}

// ---------------------------------------------------------------------------------------------
// Closure trampoline
// ---------------------------------------------------------------------------------------------

/// An erased closure lent to MPI: a pointer to the closure and the monomorphised function that
/// knows its type and the element type.
#[derive(Clone, Copy)]
struct Erased(*const (), unsafe fn(*const (), *const u8, *mut u8, usize));

// SAFETY: the closure behind the pointer is only called while the reduction that lent it is in
// progress (it is removed from the table before `with_closure` returns); closures passed to the
// reductions are `Fn + Sync` and shared by reference, and the reductions are blocking calls whose
// caller waits, so calling it from MPI's thread is calling it through a shared borrow.
unsafe impl Send for Erased {}

/// The closures lent to MPI, by the key of the datatype made for their reduction.
static LENT: Mutex<Vec<(u64, Erased)>> = Mutex::new(Vec::new());

/// A datatype handle as a number (Open MPI's are pointers, MPICH's integers).
fn key(dt: MPI_Datatype) -> u64 {
    let mut k = 0u64;
    let n = std::mem::size_of::<MPI_Datatype>().min(8);
    // SAFETY: copies the first `n <= 8` bytes of a live handle into a u64; both are plain data.
    unsafe {
        std::ptr::copy_nonoverlapping((&dt as *const MPI_Datatype).cast::<u8>(), (&mut k as *mut u64).cast::<u8>(), n)
    };
    k
}

fn lent() -> std::sync::MutexGuard<'static, Vec<(u64, Erased)>> {
    // A panic while the lock is held cannot leave the table half-changed (push and remove only).
    LENT.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes a lent closure when its reduction ends, also when the reduction unwinds.
struct Lending(u64);

impl Drop for Lending {
    fn drop(&mut self) {
        lent().retain(|(k, _)| *k != self.0);
    }
}

/// Applies `f` element-wise: `inout[i] = f(in[i], inout[i])` (the MPI order: `in` is the left operand).
///
/// # Safety
/// `f` must point at a live `F`; `inv` and `inout` must hold `len` (possibly unaligned) `T`s, and
/// `inout` must be writable.
unsafe fn apply<T: Pod, F: Fn(&T, &T) -> T>(f: *const (), inv: *const u8, inout: *mut u8, len: usize) {
    // SAFETY: the caller guarantees `f` points at a live `F` for this call.
    let f = unsafe { &*(f as *const F) };
    let size = std::mem::size_of::<T>();
    for i in 0..len {
        // SAFETY: both buffers hold `len` elements of `size` bytes; MPI's temporary buffers need not
        // be aligned for `T`, so reads and writes are unaligned. `T: Pod` accepts any bytes.
        unsafe {
            let a: T = std::ptr::read_unaligned(inv.add(i * size) as *const T);
            let b: T = std::ptr::read_unaligned(inout.add(i * size) as *const T);
            std::ptr::write_unaligned(inout.add(i * size) as *mut T, f(&a, &b));
        }
    }
}

unsafe extern "C" fn trampoline(inv: *mut c_void, inout: *mut c_void, len: *mut c_int, dt: *mut MPI_Datatype) {
    // SAFETY: MPI passes a valid pointer to the datatype of the reduction it runs.
    let k = key(unsafe { *dt });
    let found = lent().iter().find(|(x, _)| *x == k).map(|(_, e)| *e);
    let Some(Erased(f, call)) = found else {
        // Unreachable while phalanx lends a closure to every datatype it reduces with this op.
        eprintln!("phalanx: an MPI reduction called a phalanx closure for a datatype it was not lent to");
        crate::runtime::abort_job(70);
    };
    // SAFETY: `len` points at MPI's element count for this call; the table holds `f` only while the
    // reduction that lent it (the one MPI runs now, the datatype tells) is in progress, so `f` is
    // live and `call` matches its type; MPI hands us `len` elements in each buffer.
    unsafe { call(f, inv as *const u8, inout as *mut u8, (*len).max(0) as usize) };
}

/// Runs `body` with an `MPI_Op` and datatype that apply `f` to `T` elements.
pub(crate) fn with_closure<T: Pod, F: Fn(&T, &T) -> T + Sync, R>(
    f: &F,
    op: &'static str,
    rank: i32,
    body: impl FnOnce(ffi::MPI_Op, MPI_Datatype) -> Result<R>,
) -> Result<R> {
    // A datatype of this call's own, so that the trampoline can tell which closure to run: one
    // element of the primitive type, or one block of bytes for anything else.
    let dt = match Primitive::of::<T>() {
        Primitive::Bytes => ffi::OwnedDatatype::contiguous_bytes(std::mem::size_of::<T>(), op, rank)?,
        _ => ffi::OwnedDatatype::contiguous(1, ffi::layout::<T>().datatype, op, rank)?,
    };
    // Non-commutative: MPI then combines in rank order, so results do not depend on the algorithm.
    let mpi_op = ffi::OwnedOp::new(trampoline, false, op, rank)?;
    let k = key(dt.0);
    lent().push((k, Erased(f as *const F as *const (), apply::<T, F>)));
    let _lending = Lending(k);
    body(mpi_op.0, dt.0)
}

#[cfg(test)]
mod tests {
    use super::{Op, ALL};

    #[test]
    fn index_is_the_place_in_all() {
        for (i, op) in ALL.iter().enumerate() {
            assert_eq!(op.index(), i, "{op:?}");
            assert_eq!(Op::name_of(i as i64), format!("{op:?}"));
        }
    }
}
