//! Distributed arrays: the owned block of a global array plus ghost layers, on an `ndarray`.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytemuck::Pod;
use ndarray::{Array, ArrayView, ArrayViewMut, Dimension, Slice};

use super::halo::{pack, pad3, unpack, HaloExchange, HaloPlan, Region};
use super::layout::{Decomposition, GhostedBox, OwnedBox};
use crate::comm::{Comm, Op};
use crate::error::{Error, ErrorKind, Result};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn hash_cell<T: Pod>(lanes: &mut [u64; 2], linear: u64, v: &T) {
    use xxhash_rust::xxh3::xxh3_64_with_seed;
    let bytes = bytemuck::bytes_of(v);
    lanes[0] = lanes[0].wrapping_add(xxh3_64_with_seed(bytes, linear));
    lanes[1] = lanes[1].wrapping_add(xxh3_64_with_seed(bytes, linear ^ 0x9e37_79b9_7f4a_7c15));
}

/// Calls `f(index, row)` for each row (lane along the last axis) of a block of `shape` whose first
/// cell has global index `start`, given its rows in row-major order; `index` is the global index
/// of the row's first cell, stepped once per row, so the cells of a row need no n-D index of their
/// own (`f` may advance `index`'s last entry along the row; it is reset for the next row).
/// ndarray's `rows()`/`rows_mut()` yield the rows in that order, also for strided views (checked by
/// the test below for ndarray 0.16).
fn by_rows<R>(rows: impl IntoIterator<Item = R>, shape: &[usize], start: &[usize], mut f: impl FnMut(&mut [usize], R)) {
    let last = shape.len() - 1;
    let mut at = start.to_vec();
    for row in rows {
        at[last] = start[last];
        f(&mut at, row);
        for d in (0..last).rev() {
            at[d] += 1;
            if at[d] < start[d] + shape[d] {
                break;
            }
            at[d] = start[d];
        }
    }
}

/// The [`DistArray::field_hash`] of a whole global field given in row-major order on one process
/// (to compare a distributed run with a serial one).
///
/// Local.
pub fn field_hash_of<T: Pod>(global_row_major: &[T]) -> u128 {
    let mut lanes = [0u64; 2];
    for (i, v) in global_row_major.iter().enumerate() {
        hash_cell(&mut lanes, i as u64, v);
    }
    (lanes[0] as u128) << 64 | lanes[1] as u128
}

/// Storage for `shape` cells set to `value`, first touched by the threads of the current rayon pool:
/// the allocation comes from `calloc` (the kernel maps zero pages lazily), and each worker writes a
/// contiguous block of outer rows, so on a NUMA node the pages land next to the thread that
/// computes on them when kernels split the outer dimension the same way (`par_chunks` over rows).
fn first_touch<T: Pod + Send + Sync>(shape: &[usize], value: T) -> Vec<T> {
    use rayon::prelude::*;
    let total: usize = shape.iter().product();
    let mut v: Vec<T> = bytemuck::zeroed_vec(total);
    let rows = shape.first().copied().unwrap_or(1).max(1);
    let row = total / rows;
    let per = rows.div_ceil(rayon::current_num_threads()).max(1) * row;
    if per > 0 {
        v.par_chunks_mut(per).for_each(|c| c.fill(value));
    }
    v
}

/// A distributed array over a [`Decomposition`]: this rank's owned block plus ghost layers, stored
/// as one row-major `ndarray` of the ghosted shape. Element type: any `Pod` (numbers, or a
/// `#[repr(C)]` struct of several fields per cell; `Send + Sync` so threads can fill and compute on
/// it). `D` is `ndarray::Ix1`, `Ix2` or `Ix3` (or `IxDyn`).
///
/// See the [module documentation](crate::decomp) for a picture and a complete example.
#[derive(Debug)]
pub struct DistArray<T: Pod + Send + Sync, D: Dimension> {
    // Dropped first: its persistent requests are freed while their communicator (held through
    // `decomp`) still exists.
    halo: HaloPlan<T>,
    decomp: Rc<Decomposition>,
    data: Array<T, D>,
}

impl<T: Pod + Send + Sync, D: Dimension> DistArray<T, D> {
    /// A new array with every cell (owned and ghost) set to `value`.
    ///
    /// Collective in effect: create arrays on a decomposition in the same order on every rank (their
    /// halo tags are numbered in creation order).
    ///
    /// # Errors
    /// [`ErrorKind::Decomposition`] if `D` has a different number of dimensions than the
    /// decomposition.
    pub fn new(decomp: &Rc<Decomposition>, value: T) -> Result<Self> {
        Self::build(decomp, value, None)
    }

    /// As [`new`](DistArray::new), with the storage first touched by the workers of `pool` (use
    /// [`Threads::pool`](crate::comm::Threads::pool)): each worker writes the block of outer rows a
    /// `par_chunks` split of the same pool will give it, so on NUMA nodes the pages are placed next
    /// to the threads that compute on them.
    ///
    /// Collective in effect, as [`new`](DistArray::new).
    ///
    /// # Errors
    /// As [`new`](DistArray::new).
    pub fn new_in(decomp: &Rc<Decomposition>, value: T, pool: &rayon::ThreadPool) -> Result<Self> {
        Self::build(decomp, value, Some(pool))
    }

    fn build(decomp: &Rc<Decomposition>, value: T, pool: Option<&rayon::ThreadPool>) -> Result<Self> {
        let nd = decomp.ndim();
        if D::NDIM.is_some_and(|n| n != nd) {
            return Err(Error::new(
                ErrorKind::Decomposition,
                "DistArray::new",
                Some(decomp.comm().rank()),
                format!("a {}-dimensional array type on a {nd}-dimensional decomposition", D::NDIM.unwrap_or(0)),
            ));
        }
        let mut dim = D::zeros(nd);
        dim.slice_mut().copy_from_slice(decomp.ghosted_box().len());
        let shape = decomp.ghosted_box().len();
        let storage = match pool {
            Some(p) => p.install(|| first_touch(shape, value)),
            None => first_touch(shape, value),
        };
        let data = Array::from_shape_vec(dim, storage).map_err(|e| {
            Error::new(ErrorKind::Decomposition, "DistArray::new", Some(decomp.comm().rank()), e.to_string())
        })?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Ok(DistArray { halo: HaloPlan::new(decomp, id), decomp: Rc::clone(decomp), data })
    }

    /// A new array whose owned cells are `f(global index)`; ghosts are zero.
    ///
    /// Collective in effect, as [`new`](DistArray::new).
    ///
    /// # Errors
    /// As [`new`](DistArray::new).
    pub fn from_fn(decomp: &Rc<Decomposition>, f: impl Fn(&[usize]) -> T) -> Result<Self> {
        let mut a = Self::new(decomp, T::zeroed())?;
        a.fill_owned_with(f);
        Ok(a)
    }

    /// Sets every owned cell to `f(global index)`.
    ///
    /// Local.
    pub fn fill_owned_with(&mut self, f: impl Fn(&[usize]) -> T) {
        let start = self.decomp.owned_box().start().to_vec();
        let mut owned = self.owned_mut();
        let shape = owned.shape().to_vec();
        let last = shape.len() - 1;
        by_rows(owned.rows_mut(), &shape, &start, |g, row| {
            for v in row {
                *v = f(g);
                g[last] += 1;
            }
        });
    }

    /// The decomposition.
    pub fn decomposition(&self) -> &Rc<Decomposition> {
        &self.decomp
    }

    /// The communicator the array lives on.
    pub fn comm(&self) -> &Comm {
        self.decomp.comm()
    }

    /// The owned cells in global indices.
    pub fn owned_box(&self) -> &OwnedBox {
        self.decomp.owned_box()
    }

    /// The stored cells (owned plus ghosts) in global indices.
    pub fn ghosted_box(&self) -> &GhostedBox {
        self.decomp.ghosted_box()
    }

    /// A view of the owned block (index 0 is the first owned cell).
    pub fn owned(&self) -> ArrayView<'_, T, D> {
        let (g, n) = (self.decomp.ghost_width(), self.decomp.owned_box().len());
        self.data.slice_each_axis(|ax| {
            let d = ax.axis.index();
            Slice::from(g[d]..g[d] + n[d])
        })
    }

    /// A mutable view of the owned block.
    pub fn owned_mut(&mut self) -> ArrayViewMut<'_, T, D> {
        let g = self.decomp.ghost_width().to_vec();
        let n = self.decomp.owned_box().len().to_vec();
        self.data.slice_each_axis_mut(|ax| {
            let d = ax.axis.index();
            Slice::from(g[d]..g[d] + n[d])
        })
    }

    /// A view of everything stored (index 0 is the first ghost cell).
    pub fn ghosted(&self) -> ArrayView<'_, T, D> {
        self.data.view()
    }

    /// A mutable view of everything stored.
    pub fn ghosted_mut(&mut self) -> ArrayViewMut<'_, T, D> {
        self.data.view_mut()
    }

    /// The ghosted storage as one contiguous row-major slice (for hand-written kernels).
    pub fn as_slice(&self) -> &[T] {
        self.data.as_slice().unwrap_or(&[])
    }

    /// The ghosted storage as one contiguous mutable row-major slice.
    pub fn as_slice_mut(&mut self) -> &mut [T] {
        self.data.as_slice_mut().unwrap_or(&mut [])
    }

    /// The index into [`ghosted`](DistArray::ghosted) of global index `global`, if this rank stores
    /// it (owned, or in its ghost layer without wrapping).
    pub fn global_to_local(&self, global: &[usize]) -> Option<Vec<usize>> {
        let gb = self.decomp.ghosted_box();
        global
            .iter()
            .enumerate()
            .map(|(d, &x)| {
                let l = x as isize - gb.start()[d];
                (0..gb.len()[d] as isize).contains(&l).then_some(l as usize)
            })
            .collect()
    }

    /// The global index of ghosted-view index `local`; components may be negative or past the
    /// domain for ghosts at a boundary (periodic images are not wrapped).
    pub fn local_to_global(&self, local: &[usize]) -> Vec<isize> {
        let gb = self.decomp.ghosted_box();
        local.iter().enumerate().map(|(d, &l)| gb.start()[d] + l as isize).collect()
    }

    /// Elements sent and received by one halo exchange on this rank, and the number of messages.
    pub fn halo_volume(&self) -> (usize, usize, usize) {
        let (s, r) = self.halo.volume();
        (s, r, self.halo.messages())
    }

    // -----------------------------------------------------------------------------------------
    // Halo exchange
    // -----------------------------------------------------------------------------------------

    /// Updates every ghost cell of the stencil from its owner (blocking).
    ///
    /// Neighbour-wise collective.
    ///
    /// # Errors
    /// An MPI error; [`ErrorKind::InvalidArgument`] if an exchange is already in flight.
    #[doc(alias = "DMGlobalToLocal")]
    pub fn exchange(&mut self) -> Result<()> {
        let ex = self.exchange_begin()?;
        self.exchange_finish(ex)
    }

    /// Starts a halo exchange: packs the owned boundary cells and posts all messages. Compute on the
    /// interior meanwhile (calling [`HaloExchange::progress`] now and then), then
    /// [`exchange_finish`](DistArray::exchange_finish).
    ///
    /// Neighbour-wise collective; under [`HaloTransport::Neighbour`](super::HaloTransport) the
    /// array's first exchange is collective over the decomposition's communicator (it builds the
    /// array's graph communicator), so every rank must make its arrays' first exchanges in the same
    /// order (checked mode verifies it).
    ///
    /// # Errors
    /// An MPI error; [`ErrorKind::InvalidArgument`] if an exchange is already in flight.
    #[doc(alias = "DMGlobalToLocalBegin")]
    pub fn exchange_begin(&mut self) -> Result<HaloExchange<T>> {
        let data = self.data.as_slice().unwrap_or(&[]);
        self.halo.begin(data, &self.decomp.comm, Rc::clone(&self.decomp))
    }

    /// Completes an exchange started by [`exchange_begin`](DistArray::exchange_begin) on this array
    /// and writes the ghost cells.
    ///
    /// Neighbour-wise collective.
    ///
    /// # Errors
    /// An MPI error; [`ErrorKind::InvalidArgument`] if `ex` belongs to another array.
    #[doc(alias = "DMGlobalToLocalEnd")]
    pub fn exchange_finish(&mut self, ex: HaloExchange<T>) -> Result<()> {
        let data = self.data.as_slice_mut().unwrap_or(&mut []);
        self.halo.finish(ex, data)
    }

    // -----------------------------------------------------------------------------------------
    // Physical boundaries
    // -----------------------------------------------------------------------------------------

    fn boundary_slabs(&self) -> Vec<(usize, bool, Region)> {
        let dc = &self.decomp;
        let nd = dc.ndim();
        let shape = pad3(dc.ghosted_box().len(), 1);
        let g = pad3(dc.ghost_width(), 0);
        let n = pad3(dc.owned_box().len(), 1);
        let mut out = Vec::new();
        for d in 0..nd {
            if dc.periodic()[d] {
                continue;
            }
            let p = d + 3 - nd;
            for high in [false, true] {
                if g[p] == 0 || !dc.at_boundary(d, high) {
                    continue;
                }
                let mut r = Region { lo: [0; 3], hi: shape };
                (r.lo[p], r.hi[p]) = if high { (g[p] + n[p], shape[p]) } else { (0, g[p]) };
                out.push((p, high, r));
            }
        }
        out
    }

    /// Sets the ghost cells beyond the open (non-periodic) boundaries of the global domain to
    /// `value` (a fixed-value, Dirichlet boundary). Ghosts between ranks are left alone.
    ///
    /// Local.
    pub fn set_boundary_ghosts(&mut self, value: T) {
        let shape = pad3(self.decomp.ghosted_box().len(), 1);
        let slabs = self.boundary_slabs();
        let data = self.data.as_slice_mut().unwrap_or(&mut []);
        for (_, _, r) in slabs {
            let fill = vec![value; r.count()];
            unpack(data, shape, &r, &fill);
        }
    }

    /// Sets the ghost cells beyond one face of the global domain, the low (`high == false`) or high
    /// end of dimension `d`, to `value`, if this rank touches that face and the dimension is open.
    /// Different values per face give the usual fixed-temperature boundaries.
    ///
    /// Local.
    pub fn set_boundary_face(&mut self, d: usize, high: bool, value: T) {
        let shape = pad3(self.decomp.ghosted_box().len(), 1);
        let p = d + 3 - self.decomp.ndim();
        let slabs = self.boundary_slabs();
        let data = self.data.as_slice_mut().unwrap_or(&mut []);
        for (q, h, r) in slabs {
            if q == p && h == high {
                unpack(data, shape, &r, &vec![value; r.count()]);
            }
        }
    }

    /// Mirrors the owned cells next to each open boundary into the ghosts beyond it (ghost `k`
    /// outside takes the value of owned cell `k` inside: a zero-gradient, Neumann boundary).
    ///
    /// Local.
    pub fn mirror_boundary_ghosts(&mut self) {
        let shape = pad3(self.decomp.ghosted_box().len(), 1);
        let g = pad3(self.decomp.ghost_width(), 0);
        let n = pad3(self.decomp.owned_box().len(), 1);
        let slabs = self.boundary_slabs();
        let data = self.data.as_slice_mut().unwrap_or(&mut []);
        let mut buf = Vec::new();
        for (p, high, slab) in slabs {
            for k in 0..g[p] {
                let (src, dst) = if high { (g[p] + n[p] - 1 - k, g[p] + n[p] + k) } else { (g[p] + k, g[p] - 1 - k) };
                let (mut s, mut t) = (slab, slab);
                (s.lo[p], s.hi[p]) = (src, src + 1);
                (t.lo[p], t.hi[p]) = (dst, dst + 1);
                buf.resize(s.count(), data[0]);
                pack(data, shape, &s, &mut buf);
                unpack(data, shape, &t, &buf);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Global operations
    // -----------------------------------------------------------------------------------------

    /// The owned block, packed row-major.
    pub(crate) fn owned_packed(&self) -> Vec<T> {
        self.owned().iter().copied().collect()
    }

    /// The whole global array on `root` (`Some` there, `None` elsewhere).
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRoot`]; [`ErrorKind::CountOverflow`] beyond MPI's count limit.
    #[doc(alias = "DMDAGlobalToNaturalAllCreate")]
    pub fn gather(&self, root: i32) -> Result<Option<Array<T, D>>> {
        let dc = &self.decomp;
        let blocks = dc.comm().gatherv(&self.owned_packed(), root)?;
        let Some(blocks) = blocks else { return Ok(None) };
        let mut dim = D::zeros(dc.ndim());
        dim.slice_mut().copy_from_slice(dc.shape());
        let mut global = Array::from_elem(dim, T::zeroed());
        let shape = pad3(dc.shape(), 1);
        let out = global.as_slice_mut().unwrap_or(&mut []);
        for r in 0..dc.comm().size() as usize {
            let b = dc.owned_box_of(r);
            let (s, l) = (pad3(b.start(), 0), pad3(b.len(), 1));
            let region = Region { lo: s, hi: [s[0] + l[0], s[1] + l[1], s[2] + l[2]] };
            unpack(out, shape, &region, blocks.block(r));
        }
        Ok(Some(global))
    }

    /// Distributes `global` (given on `root`, `None` elsewhere) into the owned blocks.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] on the root if `global` is missing or has the wrong shape (the
    /// other ranks get [`ErrorKind::PeerFailed`]); [`ErrorKind::InvalidRoot`].
    pub fn scatter(&mut self, global: Option<&Array<T, D>>, root: i32) -> Result<()> {
        let dc = Rc::clone(&self.decomp);
        let comm = dc.comm();
        let size = comm.size() as usize;
        let mut packed = Vec::new();
        let mut counts = Vec::new();
        let mut bad = None;
        if comm.rank() == root {
            match global.and_then(|g| g.as_slice().map(|s| (g.shape(), s))) {
                Some((shape, data)) if shape == dc.shape() => {
                    let gshape = pad3(dc.shape(), 1);
                    for r in 0..size {
                        let b = dc.owned_box_of(r);
                        let (s, l) = (pad3(b.start(), 0), pad3(b.len(), 1));
                        let region = Region { lo: s, hi: [s[0] + l[0], s[1] + l[1], s[2] + l[2]] };
                        let at = packed.len();
                        packed.resize(at + region.count(), T::zeroed());
                        pack(data, gshape, &region, &mut packed[at..]);
                        counts.push(region.count());
                    }
                }
                other => {
                    bad = Some(format!(
                        "the root's global array has shape {:?}, the decomposition {:?}",
                        other.map(|(s, _)| s.to_vec()),
                        dc.shape()
                    ))
                }
            }
        }
        let arg = match (&bad, comm.rank() == root) {
            (None, true) => Some((&packed[..], &counts[..])),
            _ => None,
        };
        let mine = comm.scatterv(arg, root).map_err(|e| match &bad {
            Some(msg) => Error::new(ErrorKind::InvalidArgument, "DistArray::scatter", Some(comm.rank()), msg.clone()),
            None => e,
        })?;
        let shape = pad3(dc.ghosted_box().len(), 1);
        let g = pad3(dc.ghost_width(), 0);
        let n = pad3(dc.owned_box().len(), 1);
        let region = Region { lo: g, hi: [g[0] + n[0], g[1] + n[1], g[2] + n[2]] };
        unpack(self.data.as_slice_mut().unwrap_or(&mut []), shape, &region, &mine);
        Ok(())
    }

    /// This array's data on another decomposition of the same global domain (the same shape,
    /// process grid, ghost widths and communicator size; other block sizes, as
    /// [`Decomposition::rebalanced`] makes them): every owned cell moves to its new owner, bit for
    /// bit, and so do the ghosts beyond an open boundary (the boundary condition). The ghosts
    /// between ranks get their owners' current values, the periodic images the old ghost copies:
    /// exchange before reading them ([`exchange`](DistArray::exchange)). Each rank sends the cells it loses and the ghost layers its
    /// neighbours need, to those ranks only (a sparse exchange): moving a plane by a few cells
    /// moves a few layers.
    ///
    /// Collective (over both decompositions' communicators). Create the new arrays in the same
    /// order on every rank, as with [`new`](DistArray::new).
    ///
    /// # Errors
    /// [`ErrorKind::Decomposition`] on every rank when the decompositions differ in more than
    /// their block sizes, or a rank has another number in `to`'s communicator (naming what
    /// differs); MPI errors.
    #[doc(alias = "DMDARedistribute")]
    pub fn redistribute(&self, to: &Rc<Decomposition>) -> Result<DistArray<T, D>> {
        self.redistribute_on(to, None)
    }

    /// As [`redistribute`](DistArray::redistribute), with the new storage first touched by the
    /// workers of `pool` (as [`new_in`](DistArray::new_in)).
    ///
    /// Collective.
    ///
    /// # Errors
    /// As [`redistribute`](DistArray::redistribute).
    pub fn redistribute_in(&self, to: &Rc<Decomposition>, pool: &rayon::ThreadPool) -> Result<DistArray<T, D>> {
        self.redistribute_on(to, Some(pool))
    }

    fn redistribute_on(&self, to: &Rc<Decomposition>, pool: Option<&rayon::ThreadPool>) -> Result<DistArray<T, D>> {
        const OP: &str = "DistArray::redistribute";
        let from = &self.decomp;
        let comm = from.comm();
        let local = if from.shape() != to.shape()
            || from.ghost_width() != to.ghost_width()
            || from.grid().dims() != to.grid().dims()
            || from.periodic() != to.periodic()
            || from.stencil() != to.stencil()
            || comm.size() != to.comm().size()
            || comm.rank() != to.comm().rank()
        {
            Err(Error::new(
                ErrorKind::Decomposition,
                OP,
                Some(comm.rank()),
                format!(
                    "only the block sizes may change: shape {:?} -> {:?}, ghost widths {:?} -> {:?}, grid {:?} -> {:?}, \
                     periodic {:?} -> {:?}, stencil {:?} -> {:?}, {} -> {} ranks, this rank {} -> {}",
                    from.shape(),
                    to.shape(),
                    from.ghost_width(),
                    to.ghost_width(),
                    from.grid().dims(),
                    to.grid().dims(),
                    from.periodic(),
                    to.periodic(),
                    from.stencil(),
                    to.stencil(),
                    comm.size(),
                    to.comm().size(),
                    comm.rank(),
                    to.comm().rank()
                ),
            ))
        } else {
            Ok(())
        };
        comm.agree_errors(OP, local)?;
        let me = comm.rank() as usize;
        let size = comm.size() as usize;
        let mut out = DistArray::build(to, T::zeroed(), pool)?;
        let overlap = |a: ([isize; 3], [isize; 3]), b: ([isize; 3], [isize; 3])| {
            let lo: [isize; 3] = std::array::from_fn(|d| a.0[d].max(b.0[d]));
            let hi: [isize; 3] = std::array::from_fn(|d| a.1[d].min(b.1[d]));
            (0..3).all(|d| lo[d] < hi[d]).then_some((lo, hi))
        };
        // A global box in the local (ghosted) frame of decomposition `dc` on this rank.
        let local_region = |dc: &Decomposition, (lo, hi): ([isize; 3], [isize; 3])| {
            let nd = dc.ndim();
            let mut start = [0isize; 3];
            for d in 0..nd {
                start[3 - nd + d] = dc.ghosted_box().start()[d];
            }
            Region {
                lo: std::array::from_fn(|d| (lo[d] - start[d]) as usize),
                hi: std::array::from_fn(|d| (hi[d] - start[d]) as usize),
            }
        };
        // Every stored cell of the new blocks, ghosts included, comes from the one rank whose old
        // extended box holds it: owned cells from their old owner, the boundary condition beyond
        // an open end from the rank that stored it (corners included), ghosts between ranks from
        // the owner (fresher than a ghost copy; the next exchange refreshes them anyway).
        let mine_old = from.extended_box_of(me);
        let mine_new = to.ghosted_box3_of(me);
        let src = self.data.as_slice().unwrap_or(&[]);
        let src_shape = pad3(from.ghosted_box().len(), 1);
        let dst_shape = pad3(to.ghosted_box().len(), 1);
        let mut sends = Vec::new();
        for r in 0..size {
            if let Some(b) = overlap(mine_old, to.ghosted_box3_of(r)) {
                let region = local_region(from, b);
                let mut buf = vec![T::zeroed(); region.count()];
                pack(src, src_shape, &region, &mut buf);
                if r == me {
                    let dst = local_region(to, b);
                    unpack(out.data.as_slice_mut().unwrap_or(&mut []), dst_shape, &dst, &buf);
                } else {
                    sends.push((r as i32, buf));
                }
            }
        }
        let received = comm.sparse_exchange(sends, from.redistribute_tag())?;
        let dst = out.data.as_slice_mut().unwrap_or(&mut []);
        let mut res = Ok(());
        for (source, buf) in received {
            let expected = overlap(from.extended_box_of(source as usize), mine_new);
            let region = expected.map(|b| local_region(to, b));
            match region {
                Some(region) if region.count() == buf.len() => unpack(dst, dst_shape, &region, &buf),
                _ => {
                    res = Err(Error::new(
                        ErrorKind::Decomposition,
                        OP,
                        Some(comm.rank()),
                        format!(
                            "rank {source} sent {} cells; its old block overlaps this rank's new block in {}",
                            buf.len(),
                            region.map_or(0, |r| r.count())
                        ),
                    ));
                }
            }
        }
        comm.agree_errors(OP, res)?;
        Ok(out)
    }

    /// A hash of the global field that does not depend on the decomposition: the wrapping sum over
    /// all cells of `xxh3_64(bytes of the cell, seed = global row-major index)`, in two independent
    /// 64-bit lanes. Two runs on any rank counts and grids give the same hash exactly when every cell
    /// has the same bytes (up to 128-bit hash collisions).
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors.
    pub fn field_hash(&self) -> Result<u128> {
        let dc = &self.decomp;
        let (shape, start) = (dc.shape(), dc.owned_box().start());
        let owned = self.owned();
        // The global linear index of a row's first cell once per row, not an n-D index per cell.
        let mut lanes = [0u64; 2];
        by_rows(owned.rows(), owned.shape(), start, |g, row| {
            let first = g.iter().zip(shape).fold(0u64, |acc, (&i, &n)| acc * n as u64 + i as u64);
            for (j, v) in row.into_iter().enumerate() {
                hash_cell(&mut lanes, first + j as u64, v);
            }
        });
        let total = dc.comm().allreduce_vec(&lanes, Op::Sum)?;
        Ok((total[0] as u128) << 64 | total[1] as u128)
    }

    /// Maps every owned cell with `map` and combines the results with `reduce`, first over this
    /// rank's cells (starting from `identity`), then over the ranks in rank order; every rank gets
    /// the result. Works for any `Pod` result (a struct of sums and extremes, a histogram array):
    /// `reduce` must be associative, and `identity` its neutral element.
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors.
    ///
    /// ```no_run
    /// # use phalanx::decomp::{Decomposition, DistArray};
    /// # let rt = phalanx::init()?; let world = rt.world();
    /// # let dc = Decomposition::builder(&world, &[64, 64]).build()?;
    /// let u = DistArray::<f32, ndarray::Ix2>::new(&dc, 1.5)?;
    /// // How many cells are above 1, and the largest value: one pass, one collective.
    /// let [above, max] = u.map_reduce([0.0f64, f64::MIN], |&v| [f64::from(u8::from(v > 1.0)), f64::from(v)], |a, b| {
    ///     [a[0] + b[0], a[1].max(b[1])]
    /// })?;
    /// # Ok::<(), phalanx::Error>(())
    /// ```
    #[doc(alias = "MPI_Allreduce")]
    pub fn map_reduce<R: Pod>(
        &self,
        identity: R,
        map: impl Fn(&T) -> R,
        reduce: impl Fn(R, R) -> R + Sync,
    ) -> Result<R> {
        let local = self.owned().iter().fold(identity, |acc, v| reduce(acc, map(v)));
        Ok(self.comm().allreduce_with(&[local], |a, b| reduce(*a, *b))?[0])
    }

    /// [`map_reduce`](Self::map_reduce) with the global index of each cell passed to `map`.
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors.
    #[doc(alias = "MPI_Allreduce")]
    pub fn map_reduce_indexed<R: Pod>(
        &self,
        identity: R,
        map: impl Fn(&[usize], &T) -> R,
        reduce: impl Fn(R, R) -> R + Sync,
    ) -> Result<R> {
        let owned = self.owned();
        let last = owned.ndim() - 1;
        let mut local = identity;
        by_rows(owned.rows(), owned.shape(), self.decomp.owned_box().start(), |g, row| {
            for v in row {
                local = reduce(local, map(g, v));
                g[last] += 1;
            }
        });
        Ok(self.comm().allreduce_with(&[local], |a, b| reduce(*a, *b))?[0])
    }
}

impl<T: Pod + Send + Sync + Into<f64>, D: Dimension> DistArray<T, D> {
    fn reduce_owned(&self, init: f64, f: impl Fn(f64, f64) -> f64, op: Op) -> Result<f64> {
        let local = self.owned().iter().fold(init, |acc, &v| f(acc, v.into()));
        self.comm().allreduce(local, op)
    }

    /// The sum of all owned cells over all ranks (in `f64`; the summation order, and so the last
    /// bits, depend on the decomposition: use [`field_hash`](DistArray::field_hash) to compare runs).
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors.
    pub fn sum(&self) -> Result<f64> {
        self.reduce_owned(0.0, |a, b| a + b, Op::Sum)
    }

    /// The largest cell value.
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors.
    pub fn max(&self) -> Result<f64> {
        self.reduce_owned(f64::NEG_INFINITY, f64::max, Op::Max)
    }

    /// The smallest cell value.
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors.
    pub fn min(&self) -> Result<f64> {
        self.reduce_owned(f64::INFINITY, f64::min, Op::Min)
    }

    /// The 2-norm, `sqrt(sum of squares)`, over all cells.
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors.
    pub fn norm2(&self) -> Result<f64> {
        Ok(self.reduce_owned(0.0, |a, b| a + b * b, Op::Sum)?.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::by_rows;
    use ndarray::{s, Array, Dimension, IxDyn};

    /// `by_rows` over ndarray's generalized rows gives every cell its own index, in the order of
    /// `indexed_iter`, on strided views (a block inside a larger array) of 1 to 3 dimensions.
    #[test]
    fn by_rows_matches_indexed_iter() {
        let full = Array::from_shape_fn(IxDyn(&[5, 6, 7]), |i| (i[0] * 100 + i[1] * 10 + i[2]) as u32);
        let views = [
            full.slice(s![1..4, 2..5, 1..6]).into_dyn(),
            full.slice(s![2, 1..6, 2..4]).into_dyn(),
            full.slice(s![3, 4, 1..7]).into_dyn(),
        ];
        for v in views {
            let last = v.ndim() - 1;
            let want: Vec<(Vec<usize>, u32)> = v.indexed_iter().map(|(i, &x)| (i.slice().to_vec(), x)).collect();
            let mut got = Vec::new();
            by_rows(v.rows(), v.shape(), &vec![0; v.ndim()], |g, row| {
                for &x in row {
                    got.push((g.to_vec(), x));
                    g[last] += 1;
                }
            });
            assert_eq!(got, want, "view of shape {:?}", v.shape());
        }
    }
}
