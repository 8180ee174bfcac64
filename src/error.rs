//! One error type for the whole crate.
//!
//! Every fallible operation returns [`Result<T>`]. An [`Error`] names the operation, the rank that
//! detected it and the numbers involved, so that a line in a 1000-rank job log is enough to act on.
//! The [`ErrorKind`] is `#[non_exhaustive]`: match the kinds you handle and keep a catch-all arm.

use std::fmt;

/// What went wrong, coarsely; the [`Error`]'s message carries the numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A peer rank outside `0..size` (or a negative rank where a real one is needed).
    InvalidRank,
    /// A root rank outside `0..size`, or ranks that disagree on the root.
    InvalidRoot,
    /// A tag that is negative or above the MPI implementation's `MPI_TAG_UB`.
    InvalidTag,
    /// A message longer than the receive buffer.
    Truncated,
    /// The received byte count is not a whole number of receiver elements (sender and receiver
    /// disagree on the element type).
    TypeMismatch,
    /// Counts, roots or operations that must agree across the ranks of a collective do not.
    CollectiveMismatch,
    /// A count or displacement that does not fit MPI's 32-bit `int`.
    CountOverflow,
    /// The operation needs a higher MPI thread level than the one the runtime was given.
    ThreadLevel,
    /// MPI is already initialised, or already finalised.
    Runtime,
    /// An argument that is wrong on its own (a buffer of the wrong length, an operation that does not
    /// apply to the element type, ...).
    InvalidArgument,
    /// A decomposition that cannot work (ghost width wider than a block, more ranks than cells, ...).
    Decomposition,
    /// Another rank of a checked collective reported an argument error; this rank's own arguments
    /// were fine, but the operation was abandoned on every rank so that none waits forever.
    PeerFailed,
    /// An error returned by the MPI library that phalanx did not classify more precisely.
    Mpi,
    /// An operating-system I/O error.
    Io,
    /// A checkpoint that is truncated, corrupted, of another version, type or shape.
    Checkpoint,
    /// A process of the communicator failed (ULFM's `MPIX_ERR_PROC_FAILED`): in fault-tolerant
    /// mode, the survivors recover (see [`crate::services::recovery`]); [`crate::comm::Comm::failed_ranks`]
    /// names the ranks.
    ProcessFailed,
    /// The communicator was revoked (ULFM's `MPIX_ERR_REVOKED`): another rank noticed a failure and
    /// every rank is to recover.
    Revoked,
}

/// The error type of every fallible phalanx operation.
///
/// Display prints `OPERATION on rank R: MESSAGE`, for example
/// `recv on rank 1: message from rank 0 (tag 7) is longer than the receive buffer of 4 elements (32 bytes)`.
#[derive(Clone, Debug)]
pub struct Error(Box<Inner>);

// Boxed so that `Result<()>` is one pointer wide: every successful MPI call returns through it.
#[derive(Clone, Debug)]
struct Inner {
    kind: ErrorKind,
    op: &'static str,
    rank: Option<i32>,
    mpi_class: Option<i32>,
    message: String,
}

/// `Result<T, phalanx::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error detected by `rank` (if known) during `op`.
    #[cold]
    pub fn new(kind: ErrorKind, op: &'static str, rank: Option<i32>, message: impl Into<String>) -> Self {
        Self(Box::new(Inner { kind, op, rank, mpi_class: None, message: message.into() }))
    }

    /// The same error, as detected by `rank` (for checks made before the rank was at hand).
    pub(crate) fn at_rank(mut self, rank: i32) -> Self {
        self.0.rank = Some(rank);
        self
    }

    /// The same error, marked as MPI's error class `class` (what [`Error::mpi_class`] returns):
    /// for a program that calls MPI itself and reports its errors as phalanx's.
    pub fn with_mpi_class(mut self, class: i32) -> Self {
        self.0.mpi_class = Some(class);
        self
    }

    /// The coarse category of the error.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The name of the operation that failed (`"allreduce"`, `"recv"`, `"DistArray::new"`, ...).
    pub fn operation(&self) -> &'static str {
        self.0.op
    }

    /// The rank (in the communicator of the operation) that detected the error, if any.
    pub fn rank(&self) -> Option<i32> {
        self.0.rank
    }

    /// The MPI error class (`MPI_ERR_*`) when the MPI library reported the error itself.
    pub fn mpi_class(&self) -> Option<i32> {
        self.0.mpi_class
    }

    /// The human-readable detail, without the operation and rank prefix.
    pub fn message(&self) -> &str {
        &self.0.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.0;
        match e.rank {
            Some(r) => write!(f, "{} on rank {}: {}", e.op, r, e.message),
            None => write!(f, "{}: {}", e.op, e.message),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, "io", None, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_operation_rank_and_message() {
        let e = Error::new(ErrorKind::InvalidRank, "send", Some(3), "destination 9 is outside 0..4");
        assert_eq!(e.to_string(), "send on rank 3: destination 9 is outside 0..4");
        assert_eq!(e.kind(), ErrorKind::InvalidRank);
        assert_eq!(e.rank(), Some(3));
        let e = Error::new(ErrorKind::Io, "checkpoint", None, "disk full");
        assert_eq!(e.to_string(), "checkpoint: disk full");
    }
}
