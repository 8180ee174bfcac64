//! MPI thread support levels.

use crate::ffi;

/// How much threading MPI must support (MPI-4.1 section 11.6).
///
/// Ordered: `Single < Funneled < Serialized < Multiple`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[doc(alias = "MPI_THREAD_FUNNELED")]
pub enum ThreadLevel {
    /// Only one thread exists.
    Single,
    /// Threads exist, but only the main thread makes MPI calls (the phalanx default: rayon workers
    /// compute, the main thread communicates between parallel regions).
    Funneled,
    /// Any thread may call MPI, one at a time.
    Serialized,
    /// Any thread may call MPI at any time.
    Multiple,
}

impl ThreadLevel {
    pub(crate) fn to_raw(self) -> i32 {
        ffi::thread_level_constants()[self as usize]
    }

    pub(crate) fn from_raw(raw: i32) -> Self {
        let c = ffi::thread_level_constants();
        [ThreadLevel::Single, ThreadLevel::Funneled, ThreadLevel::Serialized, ThreadLevel::Multiple]
            .into_iter()
            .zip(c)
            .rfind(|&(_, v)| v <= raw)
            .map(|(l, _)| l)
            .unwrap_or(ThreadLevel::Single)
    }
}
