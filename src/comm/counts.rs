//! V-collectives whose counts the caller gives (KaMPIng's `recv_counts(...)`), and the count checks
//! they share with the nonblocking v-collectives.
//!
//! [`Comm::gatherv`], [`Comm::allgatherv`] and [`Comm::alltoallv`] learn the receive counts with a
//! hidden extra collective. A program that knows them already (a fixed pattern, a plan built once)
//! passes them to the `_counts` variants here and saves that round trip. Nothing is trusted blindly:
//! each rank checks the counts against its own buffers, and in checked mode the ranks also check
//! the counts against what the others send (an `MPI_Gather` or `MPI_Alltoall` of the lengths, only
//! when the collective is checked), so a wrong count is an error on every rank instead of a
//! truncated message or a hang.

use std::ffi::c_int;

use bytemuck::Pod;
use smallvec::SmallVec;

use super::check::Signature;
use super::collective::{elem_size, Blocks, MpiCounts};
use super::Comm;
use crate::error::{ErrorKind, Result};
use crate::ffi;

/// Inline capacity of count arrays: ranks or neighbours up to this many need no heap allocation.
pub(super) const INLINE: usize = 8;

/// MPI counts and displacements for one side of a v-collective, with the element counts.
pub(super) struct Counts {
    pub(super) mpi: MpiCounts,
    pub(super) displs: MpiCounts,
    pub(super) elems: SmallVec<[usize; INLINE]>,
    pub(super) total: usize,
}

impl Counts {
    pub(super) fn empty() -> Counts {
        Counts { mpi: SmallVec::new(), displs: SmallVec::new(), elems: SmallVec::new(), total: 0 }
    }

    /// The element counts as a `Vec` (for [`Blocks`]).
    pub(super) fn elems_vec(&self) -> Vec<usize> {
        self.elems.to_vec()
    }
}

/// A 62-bit digest of a count list, so that ranks can agree on a whole list in one signature field.
pub(super) fn digest(counts: &[usize]) -> i64 {
    let bytes: Vec<u8> = counts.iter().flat_map(|&c| (c as u64).to_le_bytes()).collect();
    (xxhash_rust::xxh3::xxh3_64(&bytes) >> 2) as i64
}

impl Comm {
    /// Validates a per-rank count list given by the caller (`what` names it in errors) and converts it.
    pub(super) fn given_counts<T: Pod>(&self, counts: &[usize], what: &str, op: &'static str) -> Result<Counts> {
        if counts.len() != self.size as usize {
            return Err(self.err(
                ErrorKind::InvalidArgument,
                op,
                format!("{} {what} given for a communicator of size {}", counts.len(), self.size),
            ));
        }
        self.list_counts::<T>(counts, op)
    }

    /// Converts a count list of any length (per rank, or per neighbour) for MPI.
    pub(super) fn list_counts<T: Pod>(&self, counts: &[usize], op: &'static str) -> Result<Counts> {
        let (mpi, displs) = self.mpi_counts::<T>(counts, op)?;
        let total: usize = counts.iter().sum(); // no overflow: `mpi_counts` summed them checked
        ffi::to_count(total, ffi::layout::<T>().per_elem, op, self.rank)?;
        Ok(Counts { mpi, displs, elems: SmallVec::from_slice(counts), total })
    }

    /// The receive counts of a gather to `root` as given by the caller (read on the root only),
    /// checked: on the root against its own send length, and in checked mode against every rank's
    /// send length. Returns the root's counts (`None` elsewhere). Collective.
    pub(super) fn gather_counts<T: Pod>(
        &self,
        mine: usize,
        counts: &[usize],
        recv_have: Option<usize>,
        root: i32,
        op: &'static str,
    ) -> Result<Option<Counts>> {
        let is_root = self.rank == root;
        let verify = self.will_check();
        let local = self.check_root(root, op).and_then(|_| {
            if !is_root {
                return Ok(None);
            }
            let c = self.given_counts::<T>(counts, "receive counts", op)?;
            self.own_count(&c, mine, op)?;
            self.recv_len(recv_have, c.total, op)?;
            Ok(Some(c))
        });
        self.agree(
            op,
            local.as_ref().map(|_| ()).map_err(Clone::clone),
            Signature { root: Some(root as i64), elem_size: elem_size::<T>(), ..Default::default() },
        )?;
        let given = local?;
        if verify && self.size > 1 {
            let (ones, displs): (Vec<c_int>, Vec<c_int>) = if is_root {
                (vec![1; self.size as usize], (0..self.size).collect())
            } else {
                (Vec::new(), Vec::new())
            };
            let mut lens = if is_root { vec![0u64; self.size as usize] } else { Vec::new() };
            ffi::gatherv(&[mine as u64], &mut lens, &ones, &displs, root, self.raw, op, self.rank)?;
            let check = match &given {
                Some(c) => self.compare_counts(&c.elems, &lens, "sends", op),
                None => Ok(()),
            };
            self.agree_errors(op, check)?;
        }
        Ok(given)
    }

    /// The counts of an all-gather as given by the caller (the same list on every rank), checked
    /// against this rank's send length and, in checked mode, across the ranks. Collective.
    pub(super) fn allgather_counts<T: Pod>(
        &self,
        mine: usize,
        counts: &[usize],
        recv_have: Option<usize>,
        op: &'static str,
    ) -> Result<Counts> {
        let local = self.given_counts::<T>(counts, "counts", op).and_then(|c| {
            self.own_count(&c, mine, op)?;
            self.recv_len(recv_have, c.total, op)?;
            Ok(c)
        });
        self.agree(
            op,
            local.as_ref().map(|_| ()).map_err(Clone::clone),
            Signature { count: Some(digest(counts)), elem_size: elem_size::<T>(), ..Default::default() },
        )?;
        local
    }

    /// The send and receive counts of an all-to-all as given by the caller, checked against the
    /// buffer lengths and, in checked mode, against what the other ranks send. Collective.
    pub(super) fn alltoall_counts<T: Pod>(
        &self,
        send_len: usize,
        send_counts: &[usize],
        recv_counts: &[usize],
        recv_have: Option<usize>,
        op: &'static str,
    ) -> Result<(Counts, Counts)> {
        let verify = self.will_check();
        let local = self.given_counts::<T>(send_counts, "send counts", op).and_then(|s| {
            if s.total > send_len {
                return Err(self.err(
                    ErrorKind::InvalidArgument,
                    op,
                    format!("send counts sum to {} but send has {send_len} elements", s.total),
                ));
            }
            let r = self.given_counts::<T>(recv_counts, "receive counts", op)?;
            self.recv_len(recv_have, r.total, op)?;
            Ok((s, r))
        });
        self.agree(
            op,
            local.as_ref().map(|_| ()).map_err(Clone::clone),
            Signature { elem_size: elem_size::<T>(), ..Default::default() },
        )?;
        let (s, r) = local?;
        if verify {
            let wire: Vec<u64> = send_counts.iter().map(|&c| c as u64).collect();
            let mut incoming = vec![0u64; self.size as usize];
            ffi::alltoall(&wire, &mut incoming, 1, self.raw, op, self.rank)?;
            self.agree_errors(op, self.compare_counts(recv_counts, &incoming, "sends this rank", op))?;
        }
        Ok((s, r))
    }

    /// A caller's receive buffer (`None`: phalanx allocates it) must hold exactly the counts' sum.
    fn recv_len(&self, have: Option<usize>, need: usize, op: &'static str) -> Result<()> {
        match have {
            Some(have) if have != need => Err(self.err(
                ErrorKind::InvalidArgument,
                op,
                format!("the receive buffer has {have} elements but the counts sum to {need}"),
            )),
            _ => Ok(()),
        }
    }

    fn own_count(&self, c: &Counts, mine: usize, op: &'static str) -> Result<()> {
        let given = c.elems[self.rank as usize];
        if given != mine {
            return Err(self.err(
                ErrorKind::CollectiveMismatch,
                op,
                format!("the counts give this rank {given} elements but it sends {mine}"),
            ));
        }
        Ok(())
    }

    fn compare_counts(&self, given: &[usize], actual: &[u64], verb: &str, op: &'static str) -> Result<()> {
        match given.iter().zip(actual).position(|(&g, &a)| g as u64 != a) {
            None => Ok(()),
            Some(r) => Err(self.err(
                ErrorKind::CollectiveMismatch,
                op,
                format!("the receive count for rank {r} is {} but rank {r} {verb} {} elements", given[r], actual[r]),
            )),
        }
    }

    /// [`gatherv`](Comm::gatherv) with the receive counts given by the caller: `counts[r]` elements
    /// from rank r, read on the root only (other ranks may pass `&[]`). No hidden count exchange.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRoot`]; on the root [`ErrorKind::InvalidArgument`] if `counts` does not
    /// have one entry per rank and [`ErrorKind::CollectiveMismatch`] if its own entry differs from
    /// `send.len()`; in checked mode [`ErrorKind::CollectiveMismatch`] on the root (and
    /// [`ErrorKind::PeerFailed`] elsewhere) if any rank sends another count than the root expects.
    #[doc(alias = "MPI_Gatherv")]
    pub fn gatherv_counts<T: Pod>(&self, send: &[T], counts: &[usize], root: i32) -> Result<Option<Blocks<T>>> {
        const OP: &str = "gatherv";
        let _busy = self.begin(OP)?;
        let given = self.gather_counts::<T>(send.len(), counts, None, root, OP)?;
        let (c, d, total) = match &given {
            Some(g) => (&g.mpi[..], &g.displs[..], g.total),
            None => (&[][..], &[][..], 0),
        };
        let mut data = vec![T::zeroed(); total];
        ffi::gatherv(send, &mut data, c, d, root, self.raw, OP, self.rank)?;
        Ok(given.map(|g| Blocks::new(data, g.elems_vec())))
    }

    /// [`allgatherv`](Comm::allgatherv) with the counts given by the caller: `counts[r]` elements
    /// from rank r, the same list on every rank. No hidden count exchange.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if `counts` does not have one entry per rank;
    /// [`ErrorKind::CollectiveMismatch`] if this rank's entry differs from `send.len()`, or (checked
    /// mode) if the ranks pass different lists.
    #[doc(alias = "MPI_Allgatherv")]
    pub fn allgatherv_counts<T: Pod>(&self, send: &[T], counts: &[usize]) -> Result<Blocks<T>> {
        const OP: &str = "allgatherv";
        let _busy = self.begin(OP)?;
        let g = self.allgather_counts::<T>(send.len(), counts, None, OP)?;
        let mut data = vec![T::zeroed(); g.total];
        ffi::allgatherv(send, &mut data, &g.mpi, &g.displs, self.raw, OP, self.rank)?;
        Ok(Blocks::new(data, g.elems_vec()))
    }

    /// [`alltoallv`](Comm::alltoallv) with the receive counts given by the caller:
    /// `send_counts[r]` consecutive elements of `send` go to rank r, and `recv_counts[r]` come from
    /// rank r. No hidden count exchange.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if a count list does not have one entry per rank or the send
    /// counts sum past `send.len()`; in checked mode [`ErrorKind::CollectiveMismatch`] on a rank
    /// whose receive count differs from what its peer sends (and [`ErrorKind::PeerFailed`] on the
    /// others).
    #[doc(alias = "MPI_Alltoallv")]
    pub fn alltoallv_counts<T: Pod>(
        &self,
        send: &[T],
        send_counts: &[usize],
        recv_counts: &[usize],
    ) -> Result<Blocks<T>> {
        const OP: &str = "alltoallv";
        let _busy = self.begin(OP)?;
        let (s, r) = self.alltoall_counts::<T>(send.len(), send_counts, recv_counts, None, OP)?;
        let mut data = vec![T::zeroed(); r.total];
        ffi::alltoallv(send, &s.mpi, &s.displs, &mut data, &r.mpi, &r.displs, self.raw, OP, self.rank)?;
        Ok(Blocks::new(data, r.elems_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::digest;

    #[test]
    fn digests_tell_count_lists_apart() {
        assert_eq!(digest(&[1, 2, 3]), digest(&[1, 2, 3]));
        assert_ne!(digest(&[1, 2, 3]), digest(&[1, 3, 2]));
        assert_ne!(digest(&[]), digest(&[0]));
        assert!(digest(&[usize::MAX; 4]) >= 0);
    }
}
