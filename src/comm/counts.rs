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
//!
//! The `_into` forms receive into the caller's buffer and allocate nothing per call. Its length is
//! checked against the counts' sum on each rank; as every local argument error, it reaches the
//! other ranks (as [`ErrorKind::PeerFailed`]) when the call is checked ([`crate::comm::CheckMode`]:
//! always in debug builds, the first calls on a communicator and then a sample in release builds).
//! An unchecked call returns the error on the rank that made it while the others wait in the
//! collective, so develop with checking on.

use std::ffi::c_int;

use bytemuck::Pod;

use super::check::Signature;
use super::collective::{elem_size, Blocks};
use super::Comm;
use crate::error::{ErrorKind, Result};
use crate::ffi;

/// Inline capacity of count arrays: ranks or neighbours up to this many need no heap allocation.
pub(super) const INLINE: usize = 8;

/// MPI counts and displacements for one side of a v-collective (the element counts stay the
/// caller's list), and their sum in elements.
#[derive(Clone, Default)]
pub(super) struct Counts {
    // The counts, then the displacements: in `inline` for up to `INLINE` entries each, else in
    // `heap` (a plain array rather than a `SmallVec`: its `resize` cost more than the MPI call).
    inline: [c_int; 2 * INLINE],
    heap: Vec<c_int>,
    n: usize,
    pub(super) total: usize,
}

impl Counts {
    /// Converts element counts of `per` MPI items each ([`fill_mpi`]). Past MPI's count limit
    /// `Err(Some(total))`, or `Err(None)` if the counts sum past `usize::MAX`; after an error the
    /// arrays hold nothing meaningful (the callers return the error and drop them).
    #[inline]
    fn convert(&mut self, counts: &[usize], per: usize) -> std::result::Result<(), Option<usize>> {
        let n = counts.len();
        let (mpi, displs) = self.arrays_mut(n).split_at_mut(n);
        match fill_mpi(counts, per, mpi, displs) {
            Some(total) => {
                self.total = total;
                Ok(())
            }
            None => Err(counts.iter().try_fold(0usize, |a, &c| a.checked_add(c))),
        }
    }

    /// Room for `n` counts and `n` displacements.
    #[inline]
    fn arrays_mut(&mut self, n: usize) -> &mut [c_int] {
        self.n = n;
        if n <= INLINE {
            &mut self.inline[..2 * n]
        } else {
            self.heap.resize(2 * n, 0);
            &mut self.heap
        }
    }

    #[inline]
    fn arrays(&self) -> &[c_int] {
        if self.n <= INLINE {
            &self.inline[..2 * self.n]
        } else {
            &self.heap
        }
    }

    /// MPI's counts.
    #[inline]
    pub(super) fn mpi(&self) -> &[c_int] {
        &self.arrays()[..self.n]
    }

    /// MPI's displacements.
    #[inline]
    pub(super) fn displs(&self) -> &[c_int] {
        &self.arrays()[self.n..]
    }
}

/// Writes element counts of `per` MPI items each, and their displacements, into the first
/// `counts.len()` entries of `mpi` and `displs` (at least that long) as MPI's `int`s, and returns
/// the counts' sum in elements; `None` if the sum does not fit MPI's count or even `usize` (then
/// what was written means nothing). When the sum fits, so does every count and displacement (each
/// is at most the sum), so no element needs its own check.
#[inline(always)]
pub(super) fn fill_mpi(counts: &[usize], per: usize, mpi: &mut [c_int], displs: &mut [c_int]) -> Option<usize> {
    debug_assert!(mpi.len() >= counts.len() && displs.len() >= counts.len(), "count arrays too short");
    let mut acc = 0usize;
    for ((m, d), &c) in mpi.iter_mut().zip(displs.iter_mut()).zip(counts) {
        // Wrapping: meaningless only when the sum turns out too large, and then not used.
        *m = c.wrapping_mul(per) as c_int;
        *d = acc.wrapping_mul(per) as c_int;
        acc = acc.checked_add(c)?;
    }
    acc.checked_mul(per).filter(|&b| b <= c_int::MAX as usize).map(|_| acc)
}

/// A 62-bit digest of a count list, so that ranks can agree on a whole list in one signature field.
/// The ranks of a job share one architecture, so the list's bytes in memory serve.
pub(super) fn digest(counts: &[usize]) -> i64 {
    (xxhash_rust::xxh3::xxh3_64(bytemuck::cast_slice(counts)) >> 2) as i64
}

impl Comm {
    /// Validates a per-rank count list given by the caller (`what` names it in errors) and converts
    /// it into `out`.
    #[inline]
    pub(super) fn given_counts<T: Pod>(
        &self,
        counts: &[usize],
        what: &str,
        out: &mut Counts,
        op: &'static str,
    ) -> Result<()> {
        if counts.len() != self.size as usize {
            return Err(self.cold_err(ErrorKind::InvalidArgument, op, || {
                format!("{} {what} given for a communicator of size {}", counts.len(), self.size)
            }));
        }
        self.fill_counts::<T>(counts, out, op)
    }

    /// Converts a count list of any length (per rank, or per neighbour) to MPI's counts and
    /// displacements.
    pub(super) fn list_counts<T: Pod>(&self, counts: &[usize], op: &'static str) -> Result<Counts> {
        let mut c = Counts::default();
        self.fill_counts::<T>(counts, &mut c, op)?;
        Ok(c)
    }

    /// [`list_counts`](Comm::list_counts) into `out` where it stays: on the paths where every call
    /// counts, the arrays are written in place, not moved (a copy of a just-written inline array
    /// stalls on store forwarding, several times per call).
    #[inline(always)]
    pub(super) fn fill_counts<T: Pod>(&self, counts: &[usize], out: &mut Counts, op: &'static str) -> Result<()> {
        let per = ffi::layout::<T>().per_elem;
        match out.convert(counts, per) {
            Ok(()) => Ok(()),
            Err(total) => Err(self.counts_overflow(counts, per, total, op)),
        }
    }

    /// The error of counts MPI cannot count (out of line: the calls that pass are the ones that
    /// matter).
    #[cold]
    #[inline(never)]
    fn counts_overflow(&self, counts: &[usize], per: usize, total: Option<usize>, op: &'static str) -> crate::Error {
        let Some(t) = total else {
            return self.err(ErrorKind::CountOverflow, op, "the counts sum past usize::MAX");
        };
        // Names the first count or displacement that overflows, else the total.
        let mut acc = 0usize;
        for &c in counts {
            for x in [c, acc] {
                if let Err(e) = ffi::to_count(x, per, op, self.rank) {
                    return e;
                }
            }
            acc += c;
        }
        ffi::to_count(t, per, op, self.rank).expect_err("the total exceeds MPI's count limit")
    }

    /// The receive counts of a gather to `root` as given by the caller (read on the root only),
    /// checked: on the root against its own send length, and in checked mode against every rank's
    /// send length. Converts them into `out` on the root (left empty elsewhere). Collective.
    pub(super) fn gather_counts<T: Pod>(
        &self,
        mine: usize,
        counts: &[usize],
        recv_have: Option<usize>,
        root: i32,
        out: &mut Counts,
        op: &'static str,
    ) -> Result<()> {
        let is_root = self.rank == root;
        let verify = self.will_check();
        let local = self.check_root(root, op).and_then(|_| {
            if !is_root {
                return Ok(());
            }
            self.given_counts::<T>(counts, "receive counts", out, op)?;
            self.own_count(counts, mine, op)?;
            self.recv_len(recv_have, out.total, op)
        });
        self.agree(
            op,
            local,
            Signature { root: Some(root as i64), elem_size: elem_size::<T>(), ..Default::default() },
        )?;
        if verify && self.size > 1 {
            self.verify_gather_counts(mine, counts, root, op)?;
        }
        Ok(())
    }

    /// The checked-mode part of [`gather_counts`](Comm::gather_counts): the root gathers every
    /// rank's send length and compares. Out of line: sampled calls only.
    #[inline(never)]
    fn verify_gather_counts(&self, mine: usize, counts: &[usize], root: i32, op: &'static str) -> Result<()> {
        let is_root = self.rank == root;
        let (ones, displs): (Vec<c_int>, Vec<c_int>) =
            if is_root { (vec![1; self.size as usize], (0..self.size).collect()) } else { (Vec::new(), Vec::new()) };
        let mut lens = if is_root { vec![0u64; self.size as usize] } else { Vec::new() };
        ffi::gatherv(&[mine as u64], &mut lens, &ones, &displs, root, self.raw, op, self.rank)?;
        let check = if is_root { self.compare_counts(counts, &lens, "sends", op) } else { Ok(()) };
        self.agree_errors(op, check)
    }

    /// The counts of an all-gather as given by the caller (the same list on every rank), checked
    /// against this rank's send length and, in checked mode, across the ranks; converted into
    /// `out`. Collective.
    pub(super) fn allgather_counts<T: Pod>(
        &self,
        mine: usize,
        counts: &[usize],
        recv_have: Option<usize>,
        out: &mut Counts,
        op: &'static str,
    ) -> Result<()> {
        let local = self.given_counts::<T>(counts, "counts", out, op).and_then(|_| {
            self.own_count(counts, mine, op)?;
            self.recv_len(recv_have, out.total, op)
        });
        self.agree(
            op,
            local,
            // The digest only when the call is checked (`agree` ignores the signature otherwise).
            Signature {
                count: self.will_check().then(|| digest(counts)),
                elem_size: elem_size::<T>(),
                ..Default::default()
            },
        )
    }

    /// The send and receive counts of an all-to-all as given by the caller, checked against the
    /// buffer lengths and, in checked mode, against what the other ranks send; converted into
    /// `send_out` and `recv_out`. Collective.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn alltoall_counts<T: Pod>(
        &self,
        send_len: usize,
        send_counts: &[usize],
        recv_counts: &[usize],
        recv_have: Option<usize>,
        (send_out, recv_out): (&mut Counts, &mut Counts),
        op: &'static str,
    ) -> Result<()> {
        let verify = self.will_check();
        let local = self.given_counts::<T>(send_counts, "send counts", send_out, op).and_then(|_| {
            if send_out.total > send_len {
                let total = send_out.total;
                return Err(self.cold_err(ErrorKind::InvalidArgument, op, || {
                    format!("send counts sum to {total} but send has {send_len} elements")
                }));
            }
            self.given_counts::<T>(recv_counts, "receive counts", recv_out, op)?;
            self.recv_len(recv_have, recv_out.total, op)
        });
        self.agree(op, local, Signature { elem_size: elem_size::<T>(), ..Default::default() })?;
        if verify {
            self.verify_alltoall_counts(send_counts, recv_counts, op)?;
        }
        Ok(())
    }

    /// The checked-mode part of [`alltoall_counts`](Comm::alltoall_counts): an all-to-all of the
    /// send counts, compared with the receive counts. Out of line: sampled calls only.
    #[inline(never)]
    fn verify_alltoall_counts(&self, send_counts: &[usize], recv_counts: &[usize], op: &'static str) -> Result<()> {
        let wire: Vec<u64> = send_counts.iter().map(|&c| c as u64).collect();
        let mut incoming = vec![0u64; self.size as usize];
        ffi::alltoall(&wire, &mut incoming, 1, self.raw, op, self.rank)?;
        self.agree_errors(op, self.compare_counts(recv_counts, &incoming, "sends this rank", op))
    }

    /// A caller's receive buffer (`None`: phalanx allocates it) must hold exactly the counts' sum.
    #[inline]
    pub(super) fn recv_len(&self, have: Option<usize>, need: usize, op: &'static str) -> Result<()> {
        match have {
            Some(have) if have != need => Err(self.cold_err(ErrorKind::InvalidArgument, op, || {
                format!("the receive buffer has {have} elements but the counts sum to {need}")
            })),
            _ => Ok(()),
        }
    }

    #[inline]
    fn own_count(&self, counts: &[usize], mine: usize, op: &'static str) -> Result<()> {
        let given = counts[self.rank as usize];
        if given != mine {
            return Err(self.cold_err(ErrorKind::CollectiveMismatch, op, || {
                format!("the counts give this rank {given} elements but it sends {mine}")
            }));
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
        let mut data = RecvBuf::New(Vec::new());
        self.gatherv_in(send, &mut data, counts, root)?;
        Ok((self.rank == root).then(|| Blocks::new(data.into_vec(), counts)))
    }

    /// [`gatherv_counts`](Comm::gatherv_counts) into the root's `recv` (as long as the counts' sum;
    /// not read elsewhere, where `&mut []` will do): nothing allocated per call, for gathers
    /// repeated with the same counts.
    ///
    /// Collective.
    ///
    /// # Errors
    /// As [`gatherv_counts`](Comm::gatherv_counts); on the root [`ErrorKind::InvalidArgument`] if
    /// `recv` is not as long as the counts' sum.
    #[doc(alias = "MPI_Gatherv")]
    pub fn gatherv_into<T: Pod>(&self, send: &[T], recv: &mut [T], counts: &[usize], root: i32) -> Result<()> {
        self.gatherv_in(send, &mut RecvBuf::Given(recv), counts, root)
    }

    fn gatherv_in<T: Pod>(&self, send: &[T], recv: &mut RecvBuf<T>, counts: &[usize], root: i32) -> Result<()> {
        const OP: &str = "gatherv";
        let _busy = self.begin(OP)?;
        let mut g = Counts::default();
        let have = recv.have().filter(|_| self.rank == root);
        self.gather_counts::<T>(send.len(), counts, have, root, &mut g, OP)?;
        ffi::gatherv(send, recv.slice(g.total), g.mpi(), g.displs(), root, self.raw, OP, self.rank)
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
        let mut data = RecvBuf::New(Vec::new());
        self.allgatherv_in(send, &mut data, counts)?;
        Ok(Blocks::new(data.into_vec(), counts))
    }

    /// [`allgatherv_counts`](Comm::allgatherv_counts) into `recv` (as long as the counts' sum):
    /// nothing allocated per call.
    ///
    /// Collective.
    ///
    /// # Errors
    /// As [`allgatherv_counts`](Comm::allgatherv_counts); [`ErrorKind::InvalidArgument`] if `recv`
    /// is not as long as the counts' sum.
    #[doc(alias = "MPI_Allgatherv")]
    pub fn allgatherv_into<T: Pod>(&self, send: &[T], recv: &mut [T], counts: &[usize]) -> Result<()> {
        self.allgatherv_in(send, &mut RecvBuf::Given(recv), counts)
    }

    fn allgatherv_in<T: Pod>(&self, send: &[T], recv: &mut RecvBuf<T>, counts: &[usize]) -> Result<()> {
        const OP: &str = "allgatherv";
        let _busy = self.begin(OP)?;
        let mut g = Counts::default();
        self.allgather_counts::<T>(send.len(), counts, recv.have(), &mut g, OP)?;
        ffi::allgatherv(send, recv.slice(g.total), g.mpi(), g.displs(), self.raw, OP, self.rank)
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
        let mut data = RecvBuf::New(Vec::new());
        self.alltoallv_in(send, send_counts, &mut data, recv_counts)?;
        Ok(Blocks::new(data.into_vec(), recv_counts))
    }

    /// [`alltoallv_counts`](Comm::alltoallv_counts) into `recv` (as long as the receive counts'
    /// sum): nothing allocated per call.
    ///
    /// Collective.
    ///
    /// # Errors
    /// As [`alltoallv_counts`](Comm::alltoallv_counts); [`ErrorKind::InvalidArgument`] if `recv` is
    /// not as long as the receive counts' sum.
    #[doc(alias = "MPI_Alltoallv")]
    pub fn alltoallv_into<T: Pod>(
        &self,
        send: &[T],
        send_counts: &[usize],
        recv: &mut [T],
        recv_counts: &[usize],
    ) -> Result<()> {
        self.alltoallv_in(send, send_counts, &mut RecvBuf::Given(recv), recv_counts)
    }

    fn alltoallv_in<T: Pod>(
        &self,
        send: &[T],
        send_counts: &[usize],
        recv: &mut RecvBuf<T>,
        recv_counts: &[usize],
    ) -> Result<()> {
        const OP: &str = "alltoallv";
        let _busy = self.begin(OP)?;
        let (mut s, mut r) = (Counts::default(), Counts::default());
        self.alltoall_counts::<T>(send.len(), send_counts, recv_counts, recv.have(), (&mut s, &mut r), OP)?;
        let recv = recv.slice(r.total);
        ffi::alltoallv(send, s.mpi(), s.displs(), recv, r.mpi(), r.displs(), self.raw, OP, self.rank)
    }
}

/// The receive side of a blocking v-collective: the caller's buffer (its length checked with the
/// other arguments), or, for the forms returning blocks, a new one allocated once the counts have
/// passed their checks (a wrong count must be an error, not an allocation of its size).
pub(super) enum RecvBuf<'a, T> {
    Given(&'a mut [T]),
    New(Vec<T>),
}

impl<T: Pod> RecvBuf<'_, T> {
    /// The length to check against the counts' sum: the caller's buffer's.
    #[inline]
    pub(super) fn have(&self) -> Option<usize> {
        match self {
            RecvBuf::Given(b) => Some(b.len()),
            RecvBuf::New(_) => None,
        }
    }

    /// The buffer to receive `total` elements into, allocated now for a new one.
    #[inline]
    pub(super) fn slice(&mut self, total: usize) -> &mut [T] {
        match self {
            RecvBuf::Given(b) => b,
            RecvBuf::New(v) => {
                *v = vec![T::zeroed(); total];
                v
            }
        }
    }

    pub(super) fn into_vec(self) -> Vec<T> {
        match self {
            RecvBuf::New(v) => v,
            RecvBuf::Given(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{digest, Counts, INLINE};

    #[test]
    fn counts_convert_inline_and_on_the_heap() {
        for n in [0, 3, INLINE, INLINE + 1, 20] {
            let counts: Vec<usize> = (0..n).map(|i| i % 4).collect();
            for per in [1, 8] {
                let mut c = Counts::default();
                c.convert(&counts, per).unwrap();
                assert_eq!(c.mpi(), counts.iter().map(|&x| (x * per) as i32).collect::<Vec<_>>());
                let displs: Vec<i32> = (0..n).map(|i| (counts[..i].iter().sum::<usize>() * per) as i32).collect();
                assert_eq!(c.displs(), displs);
                assert_eq!(c.total, counts.iter().sum::<usize>());
            }
        }
        // Reused for a shorter list, as the blocking forms do not, but nothing stops it.
        let mut c = Counts::default();
        c.convert(&[1; 20], 1).unwrap();
        c.convert(&[2, 3], 1).unwrap();
        assert_eq!((c.mpi(), c.displs(), c.total), (&[2, 3][..], &[0, 2][..], 5));
    }

    #[test]
    fn counts_refuse_what_mpi_cannot_count() {
        let mut c = Counts::default();
        assert_eq!(c.convert(&[usize::MAX, 1], 1), Err(None));
        let big = i32::MAX as usize;
        assert_eq!(c.convert(&[big, 1], 1), Err(Some(big + 1)));
        assert_eq!(c.convert(&[big / 8 + 1], 8), Err(Some(big / 8 + 1)));
        c.convert(&[big - 1, 1], 1).unwrap();
        assert_eq!(c.displs(), &[0, i32::MAX - 1]);
    }

    #[test]
    fn digests_tell_count_lists_apart() {
        assert_eq!(digest(&[1, 2, 3]), digest(&[1, 2, 3]));
        assert_ne!(digest(&[1, 2, 3]), digest(&[1, 3, 2]));
        assert_ne!(digest(&[]), digest(&[0]));
        assert!(digest(&[usize::MAX; 4]) >= 0);
    }
}
