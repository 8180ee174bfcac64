//! Collective communication (MPI-4.1 chapter 6) on Rust values.
//!
//! Every function here is **collective**: all ranks of the communicator call it, in the same order.
//! Receive sizes and v-counts are computed by phalanx (`gatherv` learns each rank's count with an
//! `MPI_Allgather` first; `scatterv` and `broadcast_vec` send the counts from the root) so the caller
//! never supplies what the library can find out.
//!
//! Root-side errors in `scatter*` and `broadcast_vec` are announced to the other ranks through the
//! count message itself, so even unchecked communicators do not hang on them.

use bytemuck::Pod;

use super::check::Signature;
use super::counts::INLINE;
use super::op::{with_closure, Loc, PackedLoc};
use super::{Comm, Op};
use crate::error::{Error, ErrorKind, Result};
use crate::ffi::{self, to_count};
use crate::runtime::activity::Busy;

/// A root's "I failed" marker in a count message.
const ROOT_FAILED: u64 = u64::MAX;

/// Data gathered from every rank (or neighbour), with each block's bounds.
///
/// The bounds of up to 8 blocks are kept inline, so a v-collective on up to 8 ranks or neighbours
/// allocates the data alone, as plain MPI code does.
///
/// The data is read with [`data`](Blocks::data) (all blocks concatenated in rank order) or
/// [`block`](Blocks::block), written in place with [`data_mut`](Blocks::data_mut), and taken with
/// [`into_data`](Blocks::into_data); its length stays the blocks' total, so the bounds stay true.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocks<T> {
    data: Vec<T>,
    bounds: Bounds,
}

/// The `n + 1` offsets of `n` blocks (0, then each block's end): inline for up to `INLINE` blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Bounds {
    Inline(u8, [usize; INLINE + 1]),
    Heap(Vec<usize>),
}

impl Bounds {
    /// The bounds of blocks of `counts[i]` elements.
    #[inline]
    pub(super) fn of(counts: &[usize]) -> Bounds {
        let mut acc = 0;
        if counts.len() <= INLINE {
            let mut a = [0; INLINE + 1];
            for (o, &c) in a[1..].iter_mut().zip(counts) {
                acc += c;
                *o = acc;
            }
            Bounds::Inline(counts.len() as u8, a)
        } else {
            let mut v = Vec::with_capacity(counts.len() + 1);
            v.push(0);
            v.extend(counts.iter().map(|&c| {
                acc += c;
                acc
            }));
            Bounds::Heap(v)
        }
    }

    #[inline]
    fn offsets(&self) -> &[usize] {
        match self {
            Bounds::Inline(n, a) => &a[..*n as usize + 1],
            Bounds::Heap(v) => v,
        }
    }
}

impl<T> Blocks<T> {
    /// `data` cut into blocks of `counts[i]` elements (their sum is `data.len()`).
    #[inline]
    pub(super) fn new(data: Vec<T>, counts: &[usize]) -> Self {
        Blocks::from_parts(data, Bounds::of(counts))
    }

    /// `data` cut at `bounds` (computed when a nonblocking operation started, so that completing
    /// it allocates nothing).
    #[inline]
    pub(super) fn from_parts(data: Vec<T>, bounds: Bounds) -> Self {
        debug_assert_eq!(bounds.offsets().last().copied(), Some(data.len()));
        Blocks { data, bounds }
    }

    /// All blocks, concatenated in rank order.
    #[inline]
    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// All blocks, concatenated in rank order, to write in place.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// The number of blocks: one per rank (or per source of a neighbourhood collective).
    #[inline]
    pub fn len(&self) -> usize {
        self.offsets().len() - 1
    }

    /// Whether there are no blocks at all (not: whether every block is empty).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The block that came from (or goes to) `rank`.
    ///
    /// # Panics
    /// If `rank` is not a rank of the communicator the blocks were gathered on.
    #[inline]
    pub fn block(&self, rank: usize) -> &[T] {
        let o = self.offsets();
        &self.data[o[rank]..o[rank + 1]]
    }

    /// The number of elements from `rank`.
    ///
    /// # Panics
    /// As [`block`](Blocks::block).
    #[inline]
    pub fn count(&self, rank: usize) -> usize {
        let o = self.offsets();
        o[rank + 1] - o[rank]
    }

    /// Where `rank`'s block starts in `data`.
    ///
    /// # Panics
    /// As [`block`](Blocks::block).
    #[inline]
    pub fn offset(&self, rank: usize) -> usize {
        let o = self.offsets();
        assert!(rank + 1 < o.len(), "rank {rank} of {} blocks", o.len() - 1);
        o[rank]
    }

    /// The block bounds: `len() + 1` offsets into `data`, from 0 to `data.len()`; block r is
    /// `data[offsets[r]..offsets[r + 1]]`.
    #[inline]
    pub fn offsets(&self) -> &[usize] {
        self.bounds.offsets()
    }

    /// The element count of each block, in rank order.
    pub fn counts(&self) -> impl ExactSizeIterator<Item = usize> + '_ {
        self.offsets().windows(2).map(|w| w[1] - w[0])
    }

    /// Iterates over the blocks in rank order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[T]> + '_ {
        self.offsets().windows(2).map(move |w| &self.data[w[0]..w[1]])
    }

    /// The data, all blocks concatenated in rank order.
    #[inline]
    pub fn into_data(self) -> Vec<T> {
        self.data
    }
}

pub(super) fn elem_size<T>() -> Option<i64> {
    Some(std::mem::size_of::<T>() as i64)
}

impl Comm {
    /// The prologue of a rooted collective whose counts differ per rank: a valid root, and (checked)
    /// the same root, element size and operation everywhere.
    fn agree_on_root<T>(&self, op: &'static str, root: i32) -> Result<Busy> {
        let busy = self.begin(op)?;
        let local = self.check_root(root, op);
        self.agree(
            op,
            local,
            Signature { root: Some(root as i64), elem_size: elem_size::<T>(), ..Default::default() },
        )?;
        Ok(busy)
    }

    pub(super) fn local_check(
        &self,
        cond: bool,
        kind: ErrorKind,
        op: &'static str,
        msg: impl FnOnce() -> String,
    ) -> Result<()> {
        if cond {
            Ok(())
        } else {
            Err(self.err(kind, op, msg()))
        }
    }

    // -----------------------------------------------------------------------------------------
    // Synchronisation and broadcast
    // -----------------------------------------------------------------------------------------

    /// Blocks until every rank has called it.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::CollectiveMismatch`] in checked mode if other ranks called another collective.
    #[doc(alias = "MPI_Barrier")]
    pub fn barrier(&self) -> Result<()> {
        let _busy = self.begin("barrier")?;
        self.agree("barrier", Ok(()), Signature::default())?;
        ffi::barrier(self.raw, self.rank)
    }

    /// Returns the root's `value` on every rank.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRoot`]; mismatches in checked mode.
    #[doc(alias = "MPI_Bcast")]
    pub fn broadcast<T: Pod>(&self, value: T, root: i32) -> Result<T> {
        let mut v = value;
        self.broadcast_slice(std::slice::from_mut(&mut v), root)?;
        Ok(v)
    }

    /// Overwrites `buf` on every rank with the root's `buf`. Every rank must pass the same length
    /// (checked mode verifies it: Open MPI silently accepts a shorter root buffer).
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRoot`]; [`ErrorKind::CollectiveMismatch`] when lengths differ (checked);
    /// [`ErrorKind::Truncated`] from MPI when the root's is longer (unchecked).
    #[doc(alias = "MPI_Bcast")]
    pub fn broadcast_slice<T: Pod>(&self, buf: &mut [T], root: i32) -> Result<()> {
        const OP: &str = "broadcast";
        let _busy = self.begin(OP)?;
        let local = self.check_root(root, OP);
        self.agree(
            OP,
            local,
            Signature {
                root: Some(root as i64),
                count: Some(buf.len() as i64),
                elem_size: elem_size::<T>(),
                reduce_op: None,
            },
        )?;
        ffi::bcast(buf, root, self.raw, OP, self.rank)
    }

    /// Broadcasts a vector whose length only the root knows: on return every rank's `data` equals the
    /// root's. Non-root contents are discarded.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRoot`]; [`ErrorKind::CountOverflow`] on the root for more than `i32::MAX`
    /// items (the other ranks then get [`ErrorKind::PeerFailed`]).
    #[doc(alias = "MPI_Bcast")]
    pub fn broadcast_vec<T: Pod>(&self, data: &mut Vec<T>, root: i32) -> Result<()> {
        const OP: &str = "broadcast_vec";
        let _busy = self.agree_on_root::<T>(OP, root)?;
        let mut len = [0u64];
        let mut root_err = None;
        if self.rank == root {
            len[0] = match to_count(data.len(), ffi::layout::<T>().per_elem, OP, self.rank) {
                Ok(_) => data.len() as u64,
                Err(e) => {
                    root_err = Some(e);
                    ROOT_FAILED
                }
            };
        }
        ffi::bcast(&mut len, root, self.raw, OP, self.rank)?;
        if let Some(e) = root_err {
            return Err(e);
        }
        if len[0] == ROOT_FAILED {
            return Err(self.peer_failed(OP, root));
        }
        if self.rank != root {
            data.clear();
            data.resize(len[0] as usize, T::zeroed());
        }
        ffi::bcast(data.as_mut_slice(), root, self.raw, OP, self.rank)
    }

    fn peer_failed(&self, op: &'static str, root: i32) -> Error {
        self.err(ErrorKind::PeerFailed, op, format!("the root (rank {root}) rejected its arguments; see its error"))
    }

    // -----------------------------------------------------------------------------------------
    // Reductions
    // -----------------------------------------------------------------------------------------

    fn reduce_sig<T>(&self, root: Option<i32>, len: usize, op: Option<Op>) -> Signature {
        Signature {
            root: root.map(|r| r as i64),
            count: Some(len as i64),
            elem_size: elem_size::<T>(),
            reduce_op: op.map(|o| o.index() as i64),
        }
    }

    /// Combines `value` from every rank with `op`; every rank gets the result.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if `op` does not apply to `T` (bitwise on floats, anything
    /// predefined on structs); mismatches in checked mode.
    #[doc(alias = "MPI_Allreduce")]
    pub fn allreduce<T: Pod>(&self, value: T, op: Op) -> Result<T> {
        let mut out = T::zeroed();
        self.allreduce_into(std::slice::from_ref(&value), std::slice::from_mut(&mut out), op)?;
        Ok(out)
    }

    /// Element-wise all-reduce of `send` into `recv` (same length).
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for unequal lengths or an `op` that does not apply to `T`;
    /// [`ErrorKind::CollectiveMismatch`] when ranks pass different lengths or ops (checked mode).
    #[doc(alias = "MPI_Allreduce")]
    pub fn allreduce_into<T: Pod>(&self, send: &[T], recv: &mut [T], op: Op) -> Result<()> {
        const OP: &str = "allreduce";
        let _busy = self.begin(OP)?;
        let resolved = op.resolve::<T>(OP, self.rank);
        let local = resolved.as_ref().map(|_| ()).map_err(Clone::clone).and_then(|_| {
            self.local_check(send.len() == recv.len(), ErrorKind::InvalidArgument, OP, || {
                format!("send has {} elements but recv has {}", send.len(), recv.len())
            })
        });
        self.agree(OP, local, self.reduce_sig::<T>(None, send.len(), Some(op)))?;
        let (mpi_op, dt) = resolved?;
        ffi::allreduce_typed(send, recv, dt, mpi_op, self.raw, OP, self.rank)
    }

    /// Element-wise all-reduce returning a new vector.
    ///
    /// Collective.
    ///
    /// # Errors
    /// As [`allreduce_into`](Comm::allreduce_into).
    #[doc(alias = "MPI_Allreduce")]
    pub fn allreduce_vec<T: Pod>(&self, send: &[T], op: Op) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); send.len()];
        self.allreduce_into(send, &mut out, op)?;
        Ok(out)
    }

    /// Combines `value` from every rank with `op`; only `root` gets `Some(result)`.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRoot`]; as [`allreduce`](Comm::allreduce).
    #[doc(alias = "MPI_Reduce")]
    pub fn reduce<T: Pod>(&self, value: T, op: Op, root: i32) -> Result<Option<T>> {
        Ok(self.reduce_vec(std::slice::from_ref(&value), op, root)?.map(|v| v[0]))
    }

    /// Element-wise reduction to `root`, which gets `Some(vector)`; other ranks get `None`.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRoot`]; as [`allreduce_into`](Comm::allreduce_into).
    #[doc(alias = "MPI_Reduce")]
    pub fn reduce_vec<T: Pod>(&self, send: &[T], op: Op, root: i32) -> Result<Option<Vec<T>>> {
        const OP: &str = "reduce";
        let _busy = self.begin(OP)?;
        let resolved = op.resolve::<T>(OP, self.rank);
        let local = self.check_root(root, OP).and(resolved.as_ref().map(|_| ()).map_err(Clone::clone));
        self.agree(OP, local, self.reduce_sig::<T>(Some(root), send.len(), Some(op)))?;
        let (mpi_op, dt) = resolved?;
        let mut out = if self.rank == root { vec![T::zeroed(); send.len()] } else { Vec::new() };
        ffi::reduce_typed(send, &mut out, dt, mpi_op, root, self.raw, OP, self.rank)?;
        Ok((self.rank == root).then_some(out))
    }

    /// Element-wise reduction whose result is scattered in equal blocks: `send` holds `size`
    /// blocks of `send.len() / size` elements, and rank r gets block r of the element-wise
    /// reduction over all ranks.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if `send.len()` is not a multiple of the size; as
    /// [`allreduce_into`](Comm::allreduce_into).
    #[doc(alias = "MPI_Reduce_scatter_block")]
    pub fn reduce_scatter_block<T: Pod>(&self, send: &[T], op: Op) -> Result<Vec<T>> {
        const OP: &str = "reduce_scatter_block";
        let _busy = self.begin(OP)?;
        let size = self.size as usize;
        let resolved = op.resolve::<T>(OP, self.rank);
        let local = self
            .local_check(send.len().is_multiple_of(size), ErrorKind::InvalidArgument, OP, || {
                format!("{} elements are not {size} equal blocks", send.len())
            })
            .and(resolved.as_ref().map(|_| ()).map_err(Clone::clone));
        let per = send.len() / size;
        self.agree(OP, local, self.reduce_sig::<T>(None, per, Some(op)))?;
        let (mpi_op, dt) = resolved?;
        let mut out = vec![T::zeroed(); per];
        ffi::nonblocking::reduce_scatter_block(send, &mut out, dt, mpi_op, self.raw, OP, self.rank)?;
        Ok(out)
    }

    /// Element-wise reduction whose result is scattered in blocks of given lengths: `send` holds
    /// `counts.iter().sum()` elements, and rank r gets the `counts[r]` elements of the reduction
    /// that start at `counts[..r].iter().sum()`. Every rank passes the same `counts`.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if `counts` does not have one entry per rank or does not sum
    /// to `send.len()`; [`ErrorKind::CollectiveMismatch`] in checked mode if the ranks pass
    /// different counts; as [`allreduce_into`](Comm::allreduce_into).
    #[doc(alias = "MPI_Reduce_scatter")]
    pub fn reduce_scatter<T: Pod>(&self, send: &[T], counts: &[usize], op: Op) -> Result<Vec<T>> {
        const OP: &str = "reduce_scatter";
        let _busy = self.begin(OP)?;
        let resolved = op.resolve::<T>(OP, self.rank);
        let mut c = super::counts::Counts::default();
        let given = self.given_counts::<T>(counts, "counts", &mut c, OP).and_then(|_| {
            self.local_check(c.total == send.len(), ErrorKind::InvalidArgument, OP, || {
                format!("counts sum to {} but send has {} elements", c.total, send.len())
            })?;
            resolved.as_ref().map(|_| ()).map_err(Clone::clone)
        });
        let mut sig = self.reduce_sig::<T>(None, send.len(), Some(op));
        sig.count = self.will_check().then(|| super::counts::digest(counts));
        self.agree(OP, given, sig)?;
        let (mpi_op, dt) = resolved?;
        // Counts in elements of `dt` (reductions run on primitive element types, one item each).
        let mut out = vec![T::zeroed(); counts[self.rank as usize]];
        ffi::nonblocking::reduce_scatter(send, &mut out, c.mpi(), dt, mpi_op, self.raw, OP, self.rank)?;
        Ok(out)
    }

    /// Element-wise all-reduce with a closure `f(left, right)`, applied in rank order (so `f` need not
    /// be commutative, only associative). Works for any `Pod`, including structs.
    ///
    /// Collective.
    ///
    /// # Errors
    /// Mismatched lengths in checked mode; MPI errors.
    #[doc(alias = "MPI_Op_create")]
    pub fn allreduce_with<T: Pod, F: Fn(&T, &T) -> T + Sync>(&self, send: &[T], f: F) -> Result<Vec<T>> {
        const OP: &str = "allreduce_with";
        let _busy = self.begin(OP)?;
        self.agree(OP, Ok(()), self.reduce_sig::<T>(None, send.len(), None))?;
        let mut out = vec![T::zeroed(); send.len()];
        with_closure(&f, OP, self.rank, |mpi_op, dt| {
            ffi::allreduce_typed(send, &mut out, dt, mpi_op, self.raw, OP, self.rank)
        })?;
        Ok(out)
    }

    /// Reduction to `root` with a closure, as [`allreduce_with`](Comm::allreduce_with).
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRoot`]; as [`allreduce_with`](Comm::allreduce_with).
    #[doc(alias = "MPI_Reduce")]
    pub fn reduce_with<T: Pod, F: Fn(&T, &T) -> T + Sync>(
        &self,
        send: &[T],
        root: i32,
        f: F,
    ) -> Result<Option<Vec<T>>> {
        const OP: &str = "reduce_with";
        let _busy = self.begin(OP)?;
        let local = self.check_root(root, OP);
        self.agree(OP, local, self.reduce_sig::<T>(Some(root), send.len(), None))?;
        let mut out = if self.rank == root { vec![T::zeroed(); send.len()] } else { Vec::new() };
        with_closure(&f, OP, self.rank, |mpi_op, dt| {
            ffi::reduce_typed(send, &mut out, dt, mpi_op, root, self.raw, OP, self.rank)
        })?;
        Ok((self.rank == root).then_some(out))
    }

    fn extreme_loc<T: Pod + PartialOrd>(&self, value: T, want_max: bool, op: &'static str) -> Result<Loc<T>> {
        let mine = [PackedLoc { value, rank: self.rank }];
        let pick = |a: &PackedLoc<T>, b: &PackedLoc<T>| {
            let (av, bv, ar, br) = (a.value, b.value, a.rank, b.rank);
            let a_wins = if want_max { av > bv } else { av < bv };
            if a_wins || (av == bv && ar < br) {
                *a
            } else {
                *b
            }
        };
        let _busy = self.begin(op)?;
        self.agree(op, Ok(()), self.reduce_sig::<T>(None, 1, None))?;
        let mut out = [PackedLoc { value: T::zeroed(), rank: 0 }];
        with_closure(&pick, op, self.rank, |mpi_op, dt| {
            ffi::allreduce_typed(&mine, &mut out, dt, mpi_op, self.raw, op, self.rank)
        })?;
        let PackedLoc { value, rank } = out[0];
        Ok(Loc { value, rank })
    }

    /// The smallest `value` over all ranks and the lowest rank holding it.
    ///
    /// Collective.
    ///
    /// # Errors
    /// Mismatches in checked mode; MPI errors.
    #[doc(alias = "MPI_MINLOC")]
    pub fn allreduce_minloc<T: Pod + PartialOrd>(&self, value: T) -> Result<Loc<T>> {
        self.extreme_loc(value, false, "allreduce_minloc")
    }

    /// The largest `value` over all ranks and the lowest rank holding it.
    ///
    /// Collective.
    ///
    /// # Errors
    /// Mismatches in checked mode; MPI errors.
    #[doc(alias = "MPI_MAXLOC")]
    pub fn allreduce_maxloc<T: Pod + PartialOrd>(&self, value: T) -> Result<Loc<T>> {
        self.extreme_loc(value, true, "allreduce_maxloc")
    }

    /// True on every rank if `flag` is true on every rank.
    ///
    /// Collective.
    ///
    /// # Errors
    /// Mismatches in checked mode; MPI errors.
    #[doc(alias = "MPI_LAND")]
    pub fn all(&self, flag: bool) -> Result<bool> {
        Ok(self.allreduce(flag as u8, Op::LogicalAnd)? != 0)
    }

    /// True on every rank if `flag` is true on any rank.
    ///
    /// Collective.
    ///
    /// # Errors
    /// Mismatches in checked mode; MPI errors.
    #[doc(alias = "MPI_LOR")]
    pub fn any(&self, flag: bool) -> Result<bool> {
        Ok(self.allreduce(flag as u8, Op::LogicalOr)? != 0)
    }

    fn scan_impl<T: Pod>(&self, send: &[T], op: Op, exclusive: bool) -> Result<Vec<T>> {
        let name = if exclusive { "exscan" } else { "scan" };
        let _busy = self.begin(name)?;
        let resolved = op.resolve::<T>(name, self.rank);
        self.agree(
            name,
            resolved.as_ref().map(|_| ()).map_err(Clone::clone),
            self.reduce_sig::<T>(None, send.len(), Some(op)),
        )?;
        let (mpi_op, dt) = resolved?;
        let mut out = vec![T::zeroed(); send.len()];
        ffi::scan_typed(send, &mut out, dt, mpi_op, exclusive, self.raw, self.rank)?;
        Ok(out)
    }

    /// Inclusive prefix reduction: rank r gets `value_0 op ... op value_r`.
    ///
    /// Collective.
    ///
    /// # Errors
    /// As [`allreduce`](Comm::allreduce).
    #[doc(alias = "MPI_Scan")]
    pub fn scan<T: Pod>(&self, value: T, op: Op) -> Result<T> {
        Ok(self.scan_impl(std::slice::from_ref(&value), op, false)?[0])
    }

    /// Element-wise inclusive prefix reduction of slices.
    ///
    /// Collective.
    ///
    /// # Errors
    /// As [`allreduce_into`](Comm::allreduce_into).
    #[doc(alias = "MPI_Scan")]
    pub fn scan_vec<T: Pod>(&self, send: &[T], op: Op) -> Result<Vec<T>> {
        self.scan_impl(send, op, false)
    }

    /// Exclusive prefix reduction: rank r > 0 gets `Some(value_0 op ... op value_{r-1})`, rank 0 gets
    /// `None` (MPI leaves it undefined).
    ///
    /// Collective.
    ///
    /// # Errors
    /// As [`allreduce`](Comm::allreduce).
    #[doc(alias = "MPI_Exscan")]
    pub fn exscan<T: Pod>(&self, value: T, op: Op) -> Result<Option<T>> {
        let v = self.scan_impl(std::slice::from_ref(&value), op, true)?;
        Ok((self.rank > 0).then(|| v[0]))
    }

    /// Element-wise exclusive prefix reduction of slices (`None` on rank 0).
    ///
    /// Collective.
    ///
    /// # Errors
    /// As [`allreduce_into`](Comm::allreduce_into).
    #[doc(alias = "MPI_Exscan")]
    pub fn exscan_vec<T: Pod>(&self, send: &[T], op: Op) -> Result<Option<Vec<T>>> {
        let v = self.scan_impl(send, op, true)?;
        Ok((self.rank > 0).then_some(v))
    }

    // -----------------------------------------------------------------------------------------
    // Gather
    // -----------------------------------------------------------------------------------------

    /// Collects one value from every rank on `root` (`Some(values)` in rank order there).
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRoot`]; mismatches in checked mode.
    #[doc(alias = "MPI_Gather")]
    pub fn gather<T: Pod>(&self, value: T, root: i32) -> Result<Option<Vec<T>>> {
        Ok(self.gatherv(std::slice::from_ref(&value), root)?.map(Blocks::into_data))
    }

    /// Collects a slice of any length from every rank on `root`; counts are found automatically.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRoot`]; [`ErrorKind::CountOverflow`] on every rank if the total exceeds
    /// MPI's count limit.
    #[doc(alias = "MPI_Gatherv")]
    pub fn gatherv<T: Pod>(&self, send: &[T], root: i32) -> Result<Option<Blocks<T>>> {
        const OP: &str = "gatherv";
        let _busy = self.agree_on_root::<T>(OP, root)?;
        let counts = self.exchange_counts::<T>(send.len(), OP)?;
        let c = self.list_counts::<T>(&counts, OP)?;
        let mut data = if self.rank == root { vec![T::zeroed(); c.total] } else { Vec::new() };
        ffi::gatherv(send, &mut data, c.mpi(), c.displs(), root, self.raw, OP, self.rank)?;
        Ok((self.rank == root).then(|| Blocks::new(data, &counts)))
    }

    /// Every rank's count, known on every rank (one `MPI_Allgather`). Also validates that the total
    /// fits MPI's counts, identically on all ranks.
    pub(super) fn exchange_counts<T: Pod>(&self, mine: usize, op: &'static str) -> Result<Vec<usize>> {
        let mut all = vec![0u64; self.size as usize];
        ffi::allgather(&[mine as u64], &mut all, self.raw, op, self.rank)?;
        let counts: Vec<usize> = all.into_iter().map(|c| c as usize).collect();
        to_count(counts.iter().sum(), ffi::layout::<T>().per_elem, op, self.rank)?;
        Ok(counts)
    }

    /// Every rank gets every rank's `value`, in rank order.
    ///
    /// Collective.
    ///
    /// # Errors
    /// Mismatches in checked mode; MPI errors.
    #[doc(alias = "MPI_Allgather")]
    pub fn allgather<T: Pod>(&self, value: T) -> Result<Vec<T>> {
        const OP: &str = "allgather";
        let _busy = self.begin(OP)?;
        self.agree(OP, Ok(()), Signature { count: Some(1), elem_size: elem_size::<T>(), ..Default::default() })?;
        let mut out = vec![T::zeroed(); self.size as usize];
        ffi::allgather(std::slice::from_ref(&value), &mut out, self.raw, OP, self.rank)?;
        Ok(out)
    }

    /// Every rank gets every rank's slice (of any length); counts are found automatically.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::CountOverflow`] on every rank if the total exceeds MPI's count limit.
    #[doc(alias = "MPI_Allgatherv")]
    pub fn allgatherv<T: Pod>(&self, send: &[T]) -> Result<Blocks<T>> {
        const OP: &str = "allgatherv";
        let _busy = self.begin(OP)?;
        self.agree(OP, Ok(()), Signature { elem_size: elem_size::<T>(), ..Default::default() })?;
        let counts = self.exchange_counts::<T>(send.len(), OP)?;
        let c = self.list_counts::<T>(&counts, OP)?;
        let mut data = vec![T::zeroed(); c.total];
        ffi::allgatherv(send, &mut data, c.mpi(), c.displs(), self.raw, OP, self.rank)?;
        Ok(Blocks::new(data, &counts))
    }

    // -----------------------------------------------------------------------------------------
    // Scatter
    // -----------------------------------------------------------------------------------------

    /// Splits the root's `data` into `size` equal parts; rank r gets part r. Non-root ranks pass `None`.
    ///
    /// Collective.
    ///
    /// # Errors
    /// On the root: [`ErrorKind::InvalidArgument`] if `data` is `None` or its length is not a multiple
    /// of the size; the other ranks then get [`ErrorKind::PeerFailed`]. [`ErrorKind::InvalidRoot`].
    #[doc(alias = "MPI_Scatter")]
    pub fn scatter<T: Pod>(&self, data: Option<&[T]>, root: i32) -> Result<Vec<T>> {
        const OP: &str = "scatter";
        let size = self.size as usize;
        let counts = match data {
            Some(d) if self.rank == root && d.len() % size != 0 => Err(self.err(
                ErrorKind::InvalidArgument,
                OP,
                format!("{} elements cannot be split into {size} equal parts; use scatterv", d.len()),
            )),
            Some(d) => Ok(vec![d.len() / size; size]),
            None => Ok(Vec::new()),
        };
        self.scatter_impl(data, counts, root, OP)
    }

    /// Sends `counts[r]` consecutive elements of the root's `data` to rank r. Non-root ranks pass
    /// `None`; each learns its count from the root.
    ///
    /// Collective.
    ///
    /// # Errors
    /// On the root: [`ErrorKind::InvalidArgument`] if `data` is `None`, `counts` has the wrong length
    /// or its sum exceeds `data.len()`; the other ranks then get [`ErrorKind::PeerFailed`].
    #[doc(alias = "MPI_Scatterv")]
    pub fn scatterv<T: Pod>(&self, data: Option<(&[T], &[usize])>, root: i32) -> Result<Vec<T>> {
        const OP: &str = "scatterv";
        let counts = match data {
            Some((d, c)) if self.rank == root => {
                // Checked: counts are the caller's input, and a wrapped sum would pass the length check.
                let sum = c.iter().try_fold(0usize, |a, &x| a.checked_add(x)).unwrap_or(usize::MAX);
                if c.len() != self.size as usize {
                    Err(self.err(
                        ErrorKind::InvalidArgument,
                        OP,
                        format!("{} counts given for a communicator of size {}", c.len(), self.size),
                    ))
                } else if sum > d.len() {
                    Err(self.err(
                        ErrorKind::InvalidArgument,
                        OP,
                        format!("counts sum to {sum} but data has {} elements", d.len()),
                    ))
                } else {
                    Ok(c.to_vec())
                }
            }
            _ => Ok(Vec::new()),
        };
        self.scatter_impl(data.map(|(d, _)| d), counts, root, OP)
    }

    fn scatter_impl<T: Pod>(
        &self,
        data: Option<&[T]>,
        counts: Result<Vec<usize>>,
        root: i32,
        op: &'static str,
    ) -> Result<Vec<T>> {
        let _busy = self.begin(op)?;
        let is_root = self.rank == root;
        // The root's own argument problems. Checked communicators agree on them up front; unchecked
        // ones announce them through the count message, so receivers never wait for data.
        let root_state = self.check_root(root, op).and_then(|_| match (is_root, data, counts) {
            (false, _, _) => Ok(Default::default()),
            (true, None, _) => Err(self.err(ErrorKind::InvalidArgument, op, "the root passed no data")),
            (true, _, Err(e)) => Err(e),
            (true, Some(_), Ok(c)) => self.list_counts::<T>(&c, op).map(|m| (m, c)),
        });
        let pre = if self.will_check() { root_state.as_ref().map(|_| ()).map_err(Clone::clone) } else { Ok(()) };
        self.agree(op, pre, Signature { root: Some(root as i64), elem_size: elem_size::<T>(), ..Default::default() })?;
        self.check_root(root, op)?;
        let size = self.size as usize;
        let wire: Vec<u64> = match (&root_state, is_root) {
            (Ok((_, c)), true) => c.iter().map(|&x| x as u64).collect(),
            (Err(_), true) => vec![ROOT_FAILED; size],
            _ => Vec::new(),
        };
        let (ones, displs) = if is_root { (vec![1; size], (0..self.size).collect()) } else { (Vec::new(), Vec::new()) };
        let mut mine = [0u64];
        ffi::scatterv(&wire, &ones, &displs, &mut mine, root, self.raw, op, self.rank)?;
        let (m, _) = root_state?;
        if mine[0] == ROOT_FAILED {
            return Err(self.peer_failed(op, root));
        }
        let mut out = vec![T::zeroed(); mine[0] as usize];
        ffi::scatterv(data.unwrap_or(&[]), m.mpi(), m.displs(), &mut out, root, self.raw, op, self.rank)?;
        Ok(out)
    }

    // -----------------------------------------------------------------------------------------
    // All-to-all
    // -----------------------------------------------------------------------------------------

    /// Personalised exchange of equal blocks: `send` holds `size` blocks of `send.len() / size`
    /// elements; block r goes to rank r, and block r of the result came from rank r.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if `send.len()` is not a multiple of the size;
    /// [`ErrorKind::CollectiveMismatch`] if ranks use different block lengths (checked mode).
    #[doc(alias = "MPI_Alltoall")]
    pub fn alltoall<T: Pod>(&self, send: &[T]) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); send.len()];
        self.alltoall_into(send, &mut out)?;
        Ok(out)
    }

    /// [`alltoall`](Comm::alltoall) into a buffer the caller keeps (no allocation per call, which
    /// matters for large blocks): `recv` must be as long as `send`.
    ///
    /// Collective.
    ///
    /// # Errors
    /// As [`alltoall`](Comm::alltoall); [`ErrorKind::InvalidArgument`] if `recv.len()` differs
    /// from `send.len()`.
    #[doc(alias = "MPI_Alltoall")]
    pub fn alltoall_into<T: Pod>(&self, send: &[T], recv: &mut [T]) -> Result<()> {
        const OP: &str = "alltoall";
        let _busy = self.begin(OP)?;
        let per = self.agree_alltoall::<T>(send.len(), recv.len(), OP)?;
        ffi::alltoall(send, recv, per, self.raw, OP, self.rank)
    }

    /// The checks of an all-to-all of equal blocks (`send_len` a multiple of the size, a receive
    /// buffer as long), agreed across the ranks; returns the block length. Collective (checked).
    pub(super) fn agree_alltoall<T: Pod>(&self, send_len: usize, recv_len: usize, op: &'static str) -> Result<usize> {
        let size = self.size as usize;
        let local = self
            .local_check(send_len.is_multiple_of(size), ErrorKind::InvalidArgument, op, || {
                format!("{send_len} elements are not {size} equal blocks")
            })
            .and_then(|_| {
                self.local_check(recv_len == send_len, ErrorKind::InvalidArgument, op, || {
                    format!("a receive buffer of {recv_len} elements for {send_len} sent")
                })
            });
        let per = send_len / size;
        self.agree(
            op,
            local,
            Signature { count: Some(per as i64), elem_size: elem_size::<T>(), ..Default::default() },
        )?;
        Ok(per)
    }

    /// Personalised exchange of blocks of any length: `counts[r]` consecutive elements of `send` go
    /// to rank r. What each rank receives from each other is found automatically.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if `counts` has the wrong length or sums past `send.len()`;
    /// [`ErrorKind::CountOverflow`] beyond MPI's count limit.
    #[doc(alias = "MPI_Alltoallv")]
    pub fn alltoallv<T: Pod>(&self, send: &[T], counts: &[usize]) -> Result<Blocks<T>> {
        const OP: &str = "alltoallv";
        let _busy = self.begin(OP)?;
        let size = self.size as usize;
        let sum = counts.iter().try_fold(0usize, |a, &x| a.checked_add(x)).unwrap_or(usize::MAX);
        let local = if counts.len() != size {
            Err(self.err(
                ErrorKind::InvalidArgument,
                OP,
                format!("{} counts given for a communicator of size {size}", counts.len()),
            ))
        } else if sum > send.len() {
            Err(self.err(
                ErrorKind::InvalidArgument,
                OP,
                format!("counts sum to {sum} but send has {} elements", send.len()),
            ))
        } else {
            Ok(())
        };
        let send_mpi = local.and_then(|_| self.list_counts::<T>(counts, OP));
        self.agree(
            OP,
            send_mpi.as_ref().map(|_| ()).map_err(Clone::clone),
            Signature { elem_size: elem_size::<T>(), ..Default::default() },
        )?;
        let sm = send_mpi?;
        let wire: Vec<u64> = counts.iter().map(|&c| c as u64).collect();
        let mut rwire = vec![0u64; size];
        ffi::alltoall(&wire, &mut rwire, 1, self.raw, OP, self.rank)?;
        let rcounts: Vec<usize> = rwire.iter().map(|&c| c as usize).collect();
        let recv_mpi = self.list_counts::<T>(&rcounts, OP);
        self.agree(OP, recv_mpi.as_ref().map(|_| ()).map_err(Clone::clone), Signature::default())?;
        let rm = recv_mpi?;
        let mut data = vec![T::zeroed(); rm.total];
        ffi::alltoallv(send, sm.mpi(), sm.displs(), &mut data, rm.mpi(), rm.displs(), self.raw, OP, self.rank)?;
        Ok(Blocks::new(data, &rcounts))
    }
}

#[cfg(test)]
mod tests {
    use super::{Blocks, INLINE};

    #[test]
    fn blocks_bounds_inline_and_on_the_heap() {
        for n in [0, 1, 3, INLINE, INLINE + 1, 20] {
            let counts: Vec<usize> = (0..n).map(|i| (i * 7) % 4).collect();
            let total: usize = counts.iter().sum();
            let b = Blocks::new((0..total as u32).collect(), &counts);
            assert_eq!(b.len(), n);
            assert_eq!(b.is_empty(), n == 0);
            assert_eq!(b.counts().collect::<Vec<_>>(), counts);
            assert_eq!(b.offsets().len(), n + 1);
            assert_eq!(*b.offsets().last().unwrap(), total);
            let mut at = 0;
            for (r, blk) in b.iter().enumerate() {
                assert_eq!(b.offset(r), at);
                assert_eq!(b.count(r), counts[r]);
                assert_eq!(blk, &(at as u32..(at + counts[r]) as u32).collect::<Vec<_>>()[..]);
                assert_eq!(blk, b.block(r));
                at += counts[r];
            }
            assert_eq!(b.clone(), b);
            let mut b = b;
            b.data_mut().iter_mut().for_each(|x| *x += 1);
            assert_eq!(b.data(), &(1..=total as u32).collect::<Vec<_>>()[..]);
            assert_eq!(b.offsets().last(), Some(&total));
            assert_eq!(b.into_data().len(), total);
        }
    }

    #[test]
    #[should_panic(expected = "rank 3 of 3 blocks")]
    fn blocks_offset_past_the_last_rank_panics() {
        Blocks::new(vec![1u8, 2, 3], &[1, 1, 1]).offset(3);
    }
}
