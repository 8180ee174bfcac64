//! Process topologies (MPI-4.1 chapter 8): Cartesian and distributed-graph communicators, and the
//! neighbourhood collectives on them.
//!
//! A [`CartComm`] is a communicator with a grid attached (`MPI_Cart_create`); with `reorder` the
//! MPI library may renumber the ranks to match the machine (the new rank is then what everything
//! else must use: a [`Decomposition`](crate::decomp::Decomposition) built with
//! [`reorder`](crate::decomp::DecompositionBuilder::reorder) keys all its data by it). A
//! [`GraphComm`] lists its neighbours explicitly (`MPI_Dist_graph_create_adjacent`), for patterns a
//! grid's faces do not cover: a box stencil's edges and corners, or an irregular mesh.
//!
//! Both implement [`Neighbourhood`], whose collectives exchange with the neighbours only. The blocks
//! are in the order of [`Neighbourhood::sources`] / [`Neighbourhood::destinations`]: for a
//! Cartesian communicator, per dimension the neighbour below then the one above (`MPI_Cart_shift`
//! by 1), with `None` past a non-periodic edge (its receive block stays zeroed and its send block
//! goes nowhere). A neighbour may appear several times (a periodic dimension of one or two ranks);
//! MPI matches the repeated messages in list order.

use std::ffi::c_int;
use std::ops::Deref;

use bytemuck::Pod;

use super::check::Signature;
use super::collective::{elem_size, Blocks, Bounds};
use super::counts::{digest, fill_mpi, Counts, RecvBuf, INLINE};
use super::nonblocking::{CollectiveRequest, Reqs};
use super::Comm;
use crate::error::{ErrorKind, Result};
use crate::ffi::{self, topology as topo};

/// A communicator with a Cartesian process grid attached; dereferences to [`Comm`].
#[derive(Debug)]
pub struct CartComm {
    comm: Comm,
    dims: Vec<usize>,
    periodic: Vec<bool>,
    coords: Vec<usize>,
    neighbours: Vec<Option<i32>>,
    repeated: Option<Repeated>,
}

/// A communicator with explicit neighbour lists (a distributed graph); dereferences to [`Comm`].
#[derive(Debug)]
pub struct GraphComm {
    comm: Comm,
    sources: Vec<Option<i32>>,
    destinations: Vec<Option<i32>>,
    repeated: Option<Repeated>,
}

impl Deref for CartComm {
    type Target = Comm;
    #[inline]
    fn deref(&self) -> &Comm {
        &self.comm
    }
}

impl Deref for GraphComm {
    type Target = Comm;
    #[inline]
    fn deref(&self) -> &Comm {
        &self.comm
    }
}

fn opt_rank(r: c_int) -> Option<i32> {
    (r != topo::proc_null()).then_some(r)
}

impl Comm {
    /// A Cartesian communicator over the first `dims.iter().product()` ranks of this one, with the
    /// given periodicity; `Ok(None)` on ranks left outside the grid. With `reorder` the MPI library
    /// may give this process another rank in the new communicator (placing grid neighbours close
    /// together in the machine); use the new communicator's [`rank`](Comm::rank) from then on.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for no dimensions, a zero extent, `periodic` of another length
    /// or a grid larger than the communicator; in checked mode [`ErrorKind::CollectiveMismatch`] if
    /// the ranks pass different grids.
    #[doc(alias = "MPI_Cart_create")]
    pub fn cartesian(&self, dims: &[usize], periodic: &[bool], reorder: bool) -> Result<Option<CartComm>> {
        const OP: &str = "cartesian";
        let _busy = self.begin(OP)?;
        let cells = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let local = if dims.is_empty() || dims.contains(&0) {
            Err(self.err(
                ErrorKind::InvalidArgument,
                OP,
                format!("grid dims {dims:?}: need at least one dimension, none of extent 0"),
            ))
        } else if periodic.len() != dims.len() {
            Err(self.err(
                ErrorKind::InvalidArgument,
                OP,
                format!("{} periodicity flags for {} dimensions", periodic.len(), dims.len()),
            ))
        } else if cells.is_none_or(|c| c > self.size as usize) {
            Err(self.err(
                ErrorKind::InvalidArgument,
                OP,
                format!("grid dims {dims:?} need more ranks than the communicator's {}", self.size),
            ))
        } else {
            Ok(())
        };
        let key: Vec<usize> =
            dims.iter().copied().chain(periodic.iter().map(|&p| p as usize)).chain([reorder as usize]).collect();
        self.agree(OP, local, Signature { count: Some(digest(&key)), ..Default::default() })?;
        let cdims: Vec<c_int> = dims.iter().map(|&d| d as c_int).collect();
        let cper: Vec<c_int> = periodic.iter().map(|&p| p as c_int).collect();
        let raw = topo::cart_create(self.raw, &cdims, &cper, reorder, OP, self.rank)?;
        if raw == ffi::comm_null() {
            return Ok(None);
        }
        let comm = Comm::wrap_owned(raw, self);
        CartComm::describe(comm, dims.to_vec(), periodic.to_vec()).map(Some)
    }

    /// A distributed-graph communicator: this rank receives from `sources` and sends to
    /// `destinations` (ranks of this communicator, repeats allowed, order kept), and every edge
    /// must be listed at both ends. With `reorder` the MPI library may renumber the ranks; the
    /// neighbour lists of the result are in the new numbering.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRank`] for a rank outside the communicator; in checked mode
    /// [`ErrorKind::InvalidArgument`] on every rank if an edge is listed at one end only (one
    /// `MPI_Alltoall` of edge counts).
    #[doc(alias = "MPI_Dist_graph_create_adjacent")]
    pub fn dist_graph(&self, sources: &[i32], destinations: &[i32], reorder: bool) -> Result<GraphComm> {
        const OP: &str = "dist_graph";
        let _busy = self.begin(OP)?;
        let verify = self.will_check();
        let local = sources.iter().chain(destinations).try_for_each(|&r| self.check_peer(r, "neighbour", OP));
        self.agree(OP, local, Signature { count: Some(reorder as i64), ..Default::default() })?;
        if verify {
            let size = self.size as usize;
            let mut out = vec![0u64; size];
            destinations.iter().for_each(|&d| out[d as usize] += 1);
            let mut incoming = vec![0u64; size];
            ffi::alltoall(&out, &mut incoming, 1, self.raw, OP, self.rank)?;
            let mut mine = vec![0u64; size];
            sources.iter().for_each(|&s| mine[s as usize] += 1);
            let bad = (0..size).find(|&r| mine[r] != incoming[r]).map(|r| {
                self.err(
                    ErrorKind::InvalidArgument,
                    OP,
                    format!(
                        "this rank lists rank {r} {} time(s) as a source, but rank {r} lists this rank {} time(s) as a destination",
                        mine[r], incoming[r]
                    ),
                )
            });
            self.agree_errors(OP, bad.map_or(Ok(()), Err))?;
        }
        let s: Vec<c_int> = sources.to_vec();
        let d: Vec<c_int> = destinations.to_vec();
        // Made from a communicator without a topology: Open MPI 5.0.11 builds a graph from a
        // Cartesian communicator that still runs the Cartesian neighbour code (its
        // MPI_Neighbor_alltoallv then divides by zero in cart_shift). A split keeps the ranks.
        let raw = if topo::has_topology(self.raw, OP, self.rank)? {
            let mut plain = ffi::comm_split(self.raw, 0, self.rank, self.rank)?;
            let raw = topo::dist_graph_adjacent(plain, &s, &d, reorder, OP, self.rank);
            ffi::comm_free(&mut plain);
            raw?
        } else {
            topo::dist_graph_adjacent(self.raw, &s, &d, reorder, OP, self.rank)?
        };
        let comm = Comm::wrap_owned(raw, self);
        let (sources, destinations) =
            topo::dist_graph_neighbors(comm.raw, sources.len(), destinations.len(), OP, comm.rank)?;
        let sources: Vec<Option<i32>> = sources.into_iter().map(opt_rank).collect();
        let destinations: Vec<Option<i32>> = destinations.into_iter().map(opt_rank).collect();
        // Parallel edges anywhere: every rank exchanges by its own messages, so both ends agree.
        let repeated = if comm.any(has_repeats(&sources) || has_repeats(&destinations))? {
            Some(Repeated {
                comm: comm.dup()?,
                send_tags: occurrence_tags(&destinations),
                recv_tags: occurrence_tags(&sources),
            })
        } else {
            None
        };
        Ok(GraphComm { comm, sources, destinations, repeated })
    }
}

impl CartComm {
    fn describe(comm: Comm, dims: Vec<usize>, periodic: Vec<bool>) -> Result<CartComm> {
        const OP: &str = "cartesian";
        let nd = dims.len();
        let coords =
            topo::cart_coords(comm.raw, comm.rank, nd, OP, comm.rank)?.into_iter().map(|c| c as usize).collect();
        let mut neighbours = Vec::with_capacity(2 * nd);
        for d in 0..nd {
            let (below, above) = topo::cart_shift(comm.raw, d as c_int, 1, OP, comm.rank)?;
            neighbours.push(opt_rank(below));
            neighbours.push(opt_rank(above));
        }
        // Block s of a sender lands in block s ^ 1 of the receiver (MPI-4.1 section 8.6).
        let degenerate = dims.iter().zip(&periodic).any(|(&n, &p)| p && n <= 2);
        let repeated = if degenerate {
            let tags: Vec<i32> = (0..2 * nd as i32).collect();
            Some(Repeated { comm: comm.dup()?, recv_tags: tags.iter().map(|t| t ^ 1).collect(), send_tags: tags })
        } else {
            None
        };
        Ok(CartComm { comm, dims, periodic, coords, neighbours, repeated })
    }

    /// Ranks per dimension.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Periodicity per dimension.
    pub fn periodic(&self) -> &[bool] {
        &self.periodic
    }

    /// This rank's grid coordinates (row-major: the last dimension varies fastest).
    ///
    /// Local.
    #[doc(alias = "MPI_Cart_coords")]
    pub fn coords(&self) -> &[usize] {
        &self.coords
    }

    /// The grid coordinates of `rank`.
    ///
    /// Local.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRank`] outside the communicator.
    #[doc(alias = "MPI_Cart_coords")]
    pub fn coords_of(&self, rank: i32) -> Result<Vec<usize>> {
        self.check_peer(rank, "grid", "coords_of")?;
        Ok(topo::cart_coords(self.raw, rank, self.dims.len(), "coords_of", self.rank)?
            .into_iter()
            .map(|c| c as usize)
            .collect())
    }

    /// The rank at `coords`, wrapped in periodic dimensions; `None` outside a non-periodic one.
    ///
    /// Local.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if `coords` has the wrong length.
    #[doc(alias = "MPI_Cart_rank")]
    pub fn rank_at(&self, coords: &[i64]) -> Result<Option<i32>> {
        if coords.len() != self.dims.len() {
            return Err(self.err(
                ErrorKind::InvalidArgument,
                "rank_at",
                format!("{} coordinates for a {}-dimensional grid", coords.len(), self.dims.len()),
            ));
        }
        let mut rank = 0i64;
        for ((&x, &n), &p) in coords.iter().zip(&self.dims).zip(&self.periodic) {
            let n = n as i64;
            let c = if p { x.rem_euclid(n) } else { x };
            if !(0..n).contains(&c) {
                return Ok(None);
            }
            rank = rank * n + c;
        }
        // MPI numbers Cartesian ranks row-major by coordinates (MPI-4.1 section 8.5.1).
        Ok(Some(rank as i32))
    }

    /// The ranks `disp` steps below and above this one along `dim`: `(source, destination)` of a
    /// shift, `None` past a non-periodic edge.
    ///
    /// Local.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if `dim` is not a dimension of the grid.
    #[doc(alias = "MPI_Cart_shift")]
    pub fn shift(&self, dim: usize, disp: i32) -> Result<(Option<i32>, Option<i32>)> {
        if dim >= self.dims.len() {
            return Err(self.err(
                ErrorKind::InvalidArgument,
                "shift",
                format!("dimension {dim} of a {}-dimensional grid", self.dims.len()),
            ));
        }
        let (s, d) = topo::cart_shift(self.raw, dim as c_int, disp, "shift", self.rank)?;
        Ok((opt_rank(s), opt_rank(d)))
    }

    /// The sub-grid that keeps the dimensions marked in `keep` (a row or column communicator of a
    /// 2-D grid): the ranks that share this rank's coordinates in the other dimensions.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if `keep` has the wrong length; in checked mode
    /// [`ErrorKind::CollectiveMismatch`] if the ranks keep different dimensions.
    #[doc(alias = "MPI_Cart_sub")]
    pub fn sub(&self, keep: &[bool]) -> Result<CartComm> {
        const OP: &str = "cart sub";
        let _busy = self.begin(OP)?;
        let local = self.local_check(keep.len() == self.dims.len(), ErrorKind::InvalidArgument, OP, || {
            format!("{} flags for a {}-dimensional grid", keep.len(), self.dims.len())
        });
        let key: Vec<usize> = keep.iter().map(|&k| k as usize).collect();
        self.agree(OP, local, Signature { count: Some(digest(&key)), ..Default::default() })?;
        let remain: Vec<c_int> = keep.iter().map(|&k| k as c_int).collect();
        let raw = topo::cart_sub(self.raw, &remain, OP, self.rank)?;
        let comm = Comm::wrap_owned(raw, &self.comm);
        let pick = |v: &[usize]| -> Vec<usize> { v.iter().zip(keep).filter(|(_, &k)| k).map(|(&x, _)| x).collect() };
        let dims = pick(&self.dims);
        let periodic = self.periodic.iter().zip(keep).filter(|(_, &k)| k).map(|(&p, _)| p).collect();
        if dims.is_empty() {
            // Every dimension dropped: MPI gives a 0-dimensional grid of one rank.
            return Ok(CartComm { comm, dims, periodic, coords: Vec::new(), neighbours: Vec::new(), repeated: None });
        }
        CartComm::describe(comm, dims, periodic)
    }

    /// The plain communicator, giving up the grid description (MPI keeps the topology attached).
    pub fn into_comm(self) -> Comm {
        self.comm
    }
}

impl GraphComm {
    /// Whether any rank's neighbour lists repeat a rank (then phalanx exchanges by its own
    /// messages; the same answer on every rank).
    pub(crate) fn has_repeats(&self) -> bool {
        self.repeated.is_some()
    }

    /// The plain communicator, giving up the neighbour lists (MPI keeps the topology attached).
    pub fn into_comm(self) -> Comm {
        self.comm
    }
}

/// How phalanx runs the neighbourhood collectives of a communicator whose neighbour lists repeat a
/// rank (a periodic Cartesian dimension of one or two ranks, a graph with parallel edges): with
/// point-to-point messages on a private duplicate, one tag per block, instead of the MPI library's
/// collectives. MPI-4.1 section 8.6 fixes which block lands where in those cases (block `s` of a
/// Cartesian sender in block `s ^ 1` of the receiver; the k-th graph edge between two ranks matches
/// the k-th), and libraries have got it wrong for years: Open MPI 4.1 and 5.0's nonblocking forms
/// deliver the blocks of a periodic Cartesian dimension of one or two ranks swapped (open-mpi/ompi
/// #14430, fixed after 5.0.11; caught here by `tests/mpi_api.rs`), and MPICH fixed its graph
/// forms only in 2026 (pmodels/mpich #7945).
#[derive(Debug)]
pub struct Repeated {
    comm: Comm,
    send_tags: Vec<i32>,
    recv_tags: Vec<i32>,
}

mod sealed {
    /// Implemented by the communicators with neighbours; not for outside implementation.
    pub trait Topology {
        fn repeated(&self) -> Option<&super::Repeated>;
    }
}

/// The k-th occurrence of each rank in `list` gets tag k.
fn occurrence_tags(list: &[Option<i32>]) -> Vec<i32> {
    list.iter().enumerate().map(|(i, r)| list[..i].iter().filter(|x| r.is_some() && *x == r).count() as i32).collect()
}

fn has_repeats(list: &[Option<i32>]) -> bool {
    occurrence_tags(list).iter().any(|&t| t > 0)
}

/// A communicator with neighbours: [`CartComm`] (faces of the grid) or [`GraphComm`] (any lists).
/// Its collectives exchange with the neighbours only: each rank calls them, and each waits only
/// for its neighbours (neighbour-wise collective).
pub trait Neighbourhood: sealed::Topology + Deref<Target = Comm> {
    /// The ranks this one receives from, in block order (`None`: no neighbour there).
    fn sources(&self) -> &[Option<i32>];

    /// The ranks this one sends to, in block order (`None`: no neighbour there).
    fn destinations(&self) -> &[Option<i32>];

    /// Sends block i of `send` (`block` elements each) to destination i, and returns the blocks of
    /// `block` elements from the sources in order (zeroed where a source is `None`). Every rank
    /// passes the same `block` (a rank without destinations passes an empty `send` and still
    /// receives).
    ///
    /// Neighbour-wise collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if `send` is not `block` elements per destination;
    /// [`ErrorKind::CountOverflow`] past MPI's count limit; in checked mode
    /// [`ErrorKind::CollectiveMismatch`] if the ranks' block lengths differ.
    #[doc(alias = "MPI_Neighbor_alltoall")]
    #[doc(alias = "neighbor_alltoall")]
    fn neighbour_alltoall<T: Pod>(&self, send: &[T], block: usize) -> Result<Vec<T>> {
        const OP: &str = "neighbour_alltoall";
        let c: &Comm = self;
        let _busy = c.begin(OP)?;
        let (nd, ns) = (self.destinations().len(), self.sources().len());
        let per = block;
        let local = c
            .local_check(block.checked_mul(nd) == Some(send.len()), ErrorKind::InvalidArgument, OP, || {
                format!("{} elements are not {nd} blocks of {block} (one for each destination)", send.len())
            })
            .and_then(|_| {
                let total = block.saturating_mul(ns);
                ffi::to_count(total, ffi::layout::<T>().per_elem, OP, c.rank).map(|_| ())
            });
        c.agree(OP, local, Signature { count: Some(per as i64), elem_size: elem_size::<T>(), ..Default::default() })?;
        if self.repeated().is_some() {
            let (se, re) = (vec![per; nd], vec![per; ns]);
            let (s, r) = (c.list_counts::<T>(&se, OP)?, c.list_counts::<T>(&re, OP)?);
            return Ok(exchange(self, send, (&s, &se), (&r, &re), OP)?.into_data());
        }
        let mut out = vec![T::zeroed(); per * ns];
        // SAFETY: blocking; `send` holds `per` elements per destination (checked above) and `out`
        // `per` per source.
        unsafe { topo::neighbor_alltoall(ffi::send_ptr(send), ffi::recv_ptr(&mut out), per, c.raw, OP, c.rank)? };
        Ok(out)
    }

    /// Sends `send_counts[i]` consecutive elements of `send` to destination i and receives
    /// `recv_counts[i]` from source i; returns the blocks in source order.
    ///
    /// Neighbour-wise collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for count lists of the wrong length or send counts past
    /// `send.len()`; in checked mode [`ErrorKind::CollectiveMismatch`] on a rank whose receive
    /// count differs from what its neighbour sends (one extra neighbour exchange of the counts),
    /// and [`ErrorKind::PeerFailed`] on the others.
    #[doc(alias = "MPI_Neighbor_alltoallv")]
    #[doc(alias = "neighbor_alltoallv")]
    fn neighbour_alltoallv<T: Pod>(
        &self,
        send: &[T],
        send_counts: &[usize],
        recv_counts: &[usize],
    ) -> Result<Blocks<T>> {
        let mut data = RecvBuf::New(Vec::new());
        neighbour_alltoallv_in(self, send, send_counts, &mut data, recv_counts)?;
        Ok(Blocks::new(data.into_vec(), recv_counts))
    }

    /// [`neighbour_alltoallv`](Neighbourhood::neighbour_alltoallv) into `recv` (as long as the
    /// receive counts' sum, blocks in source order): nothing allocated per call, for exchanges
    /// repeated with the same counts. The blocks of missing sources (`None`, off an open grid
    /// edge) are left as they were.
    ///
    /// Neighbour-wise collective.
    ///
    /// # Errors
    /// As [`neighbour_alltoallv`](Neighbourhood::neighbour_alltoallv);
    /// [`ErrorKind::InvalidArgument`] if `recv` is not as long as the receive counts' sum.
    #[doc(alias = "MPI_Neighbor_alltoallv")]
    #[doc(alias = "neighbor_alltoallv")]
    fn neighbour_alltoallv_into<T: Pod>(
        &self,
        send: &[T],
        send_counts: &[usize],
        recv: &mut [T],
        recv_counts: &[usize],
    ) -> Result<()> {
        neighbour_alltoallv_in(self, send, send_counts, &mut RecvBuf::Given(recv), recv_counts)
    }

    /// [`neighbour_alltoallv`](Neighbourhood::neighbour_alltoallv) started without waiting: the
    /// request owns the buffers; `wait` returns the blocks. Compute meanwhile, calling `test` now
    /// and then to drive progress.
    ///
    /// Neighbour-wise collective (nonblocking).
    ///
    /// # Errors
    /// As [`neighbour_alltoallv`](Neighbourhood::neighbour_alltoallv).
    #[doc(alias = "MPI_Ineighbor_alltoallv")]
    #[doc(alias = "ineighbor_alltoallv")]
    fn ineighbour_alltoallv<T: Pod>(
        &self,
        send: Vec<T>,
        send_counts: &[usize],
        recv_counts: &[usize],
    ) -> Result<CollectiveRequest<Blocks<T>>> {
        const OP: &str = "ineighbour_alltoallv";
        let c: &Comm = self;
        let _busy = c.begin(OP)?;
        // Boxed (and filled in place) before MPI sees their addresses: the arrays may be inline.
        let mut counts = Box::<(Counts, Counts)>::default();
        let (s, r) = &mut *counts;
        neighbour_counts::<T, _>(self, (send.len(), None), send_counts, recv_counts, (s, r), OP)?;
        start(self, send, counts, (send_counts, recv_counts), OP)
    }

    /// Sends `send` to every destination and returns the sources' values in order (zeroed where a
    /// source is `None`). Every rank must send the same number of elements.
    ///
    /// Neighbour-wise collective.
    ///
    /// # Errors
    /// In checked mode [`ErrorKind::CollectiveMismatch`] if the ranks' lengths differ.
    #[doc(alias = "MPI_Neighbor_allgather")]
    #[doc(alias = "neighbor_allgather")]
    fn neighbour_allgather<T: Pod>(&self, send: &[T]) -> Result<Vec<T>> {
        const OP: &str = "neighbour_allgather";
        let c: &Comm = self;
        let _busy = c.begin(OP)?;
        c.agree(
            OP,
            Ok(()),
            Signature { count: Some(send.len() as i64), elem_size: elem_size::<T>(), ..Default::default() },
        )?;
        if self.repeated().is_some() {
            let re = vec![send.len(); self.sources().len()];
            let r = c.list_counts::<T>(&re, OP)?;
            return Ok(allgather(self, send, (&r, &re), OP)?.into_data());
        }
        let mut out = vec![T::zeroed(); send.len() * self.sources().len()];
        // SAFETY: blocking; `out` holds `send.len()` elements per source.
        unsafe {
            topo::neighbor_allgather(ffi::send_ptr(send), send.len(), ffi::recv_ptr(&mut out), c.raw, OP, c.rank)?
        };
        Ok(out)
    }

    /// Sends `send` to every destination and receives `recv_counts[i]` elements from source i.
    ///
    /// Neighbour-wise collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if `recv_counts` is not one per source; in checked mode
    /// [`ErrorKind::CollectiveMismatch`] on a rank whose count differs from what its neighbour
    /// sends, and [`ErrorKind::PeerFailed`] on the others.
    #[doc(alias = "MPI_Neighbor_allgatherv")]
    #[doc(alias = "neighbor_allgatherv")]
    fn neighbour_allgatherv<T: Pod>(&self, send: &[T], recv_counts: &[usize]) -> Result<Blocks<T>> {
        const OP: &str = "neighbour_allgatherv";
        let c: &Comm = self;
        let _busy = c.begin(OP)?;
        let nd = self.destinations().len();
        let (mut s, mut r) = (Counts::default(), Counts::default());
        let lens = (send.len() * nd, None);
        neighbour_counts::<T, _>(self, lens, &vec![send.len(); nd], recv_counts, (&mut s, &mut r), OP)?;
        allgather(self, send, (&r, recv_counts), OP)
    }
}

/// [`Neighbourhood::neighbour_alltoallv_into`], or into a buffer allocated once the counts have
/// passed their checks. Inlined into each of the two, so that the short path knows which buffer
/// it has (a shared copy called `RecvBuf::slice` and the MPI wrapper out of line: `_into` at 2
/// ranks, 8 B, took 1.054 of the raw call's time where it now takes 1.032, medians of 6 runs).
#[inline(always)]
fn neighbour_alltoallv_in<T: Pod, N: Neighbourhood + ?Sized>(
    n: &N,
    send: &[T],
    send_counts: &[usize],
    recv: &mut RecvBuf<T>,
    recv_counts: &[usize],
) -> Result<()> {
    const OP: &str = "neighbour_alltoallv";
    let c: &Comm = n;
    let _busy = c.begin(OP)?;
    match unchecked_inline(n, send, send_counts, recv, recv_counts, OP) {
        Some(done) => done,
        None => neighbour_alltoallv_checked(n, send, send_counts, recv, recv_counts, OP),
    }
}

/// [`neighbour_alltoallv_in`]'s general path: every check, the checked calls, more neighbours,
/// repeated ones. Out of line, so that its count structures do not weigh on the short path.
#[inline(never)]
fn neighbour_alltoallv_checked<T: Pod, N: Neighbourhood + ?Sized>(
    n: &N,
    send: &[T],
    send_counts: &[usize],
    recv: &mut RecvBuf<T>,
    recv_counts: &[usize],
    op: &'static str,
) -> Result<()> {
    let (mut s, mut r) = (Counts::default(), Counts::default());
    neighbour_counts::<T, _>(n, (send.len(), recv.have()), send_counts, recv_counts, (&mut s, &mut r), op)?;
    exchange_into(n, send, (&s, send_counts), recv.slice(r.total), (&r, recv_counts), op)
}

/// [`neighbour_alltoallv_in`]'s common case, on a short path: a call that is not checked (see
/// [`CheckMode`](super::CheckMode)) on a communicator with up to [`INLINE`] neighbours each way,
/// none repeated (the MPI library's collective), whose arguments pass the local checks: one pass
/// over each count list into one array on the stack (one pass in all when both sides are given the
/// same list, as a symmetric exchange gives them), then MPI. At 1 rank and 8 B (Open MPI 4.1, a
/// loop calling `neighbour_alltoallv_into` through a function) it adds 3.6-4.6 ns to the raw call
/// where the general path added 10.6 ns. `None` for every other call, and for arguments that fail
/// a check, before anything is counted or sent: the general path then checks them again and
/// reports the error.
#[inline(always)]
fn unchecked_inline<T: Pod, N: Neighbourhood + ?Sized>(
    n: &N,
    send: &[T],
    send_counts: &[usize],
    recv: &mut RecvBuf<T>,
    recv_counts: &[usize],
    op: &'static str,
) -> Option<Result<()>> {
    let c: &Comm = n;
    let (nd, ns) = (n.destinations().len(), n.sources().len());
    if send_counts.len() != nd || recv_counts.len() != ns || nd.max(ns) > INLINE || n.repeated().is_some() {
        return None;
    }
    let per = ffi::layout::<T>().per_elem;
    // Send counts and displacements, then receive counts and displacements.
    let mut arrays = [0 as c_int; 4 * INLINE];
    let (s, r) = arrays.split_at_mut(2 * INLINE);
    let ((sc, sd), (rc, rd)) = (s.split_at_mut(INLINE), r.split_at_mut(INLINE));
    let send_total = fill_mpi(send_counts, per, &mut sc[..nd], &mut sd[..nd])?;
    // One list for both sides (a symmetric exchange): its conversion serves both.
    let same = std::ptr::eq(send_counts, recv_counts);
    let recv_total = if same { send_total } else { fill_mpi(recv_counts, per, &mut rc[..ns], &mut rd[..ns])? };
    if send_total > send.len() || recv.have().is_some_and(|have| have != recv_total) || !c.count_unchecked() {
        return None;
    }
    let out = recv.slice(recv_total);
    let (rc, rd) = if same { (&*sc, &*sd) } else { (&*rc, &*rd) };
    // SAFETY: every block lies inside its buffer (the totals are checked above against `send` and
    // `out`), and the arrays hold one entry per neighbour.
    Some(unsafe { mpi_alltoallv(c, send, (sc, sd), out, (rc, rd), op) })
}

/// `MPI_Neighbor_alltoallv` of `send` into `recv`, with MPI's counts and displacements of each
/// side; blocking.
///
/// # Safety
/// The arrays hold an entry per neighbour (destinations for the send side, sources for the
/// receive side), and every block they describe lies inside its buffer.
#[inline(always)]
unsafe fn mpi_alltoallv<T: Pod>(
    c: &Comm,
    send: &[T],
    (sc, sd): (&[c_int], &[c_int]),
    recv: &mut [T],
    (rc, rd): (&[c_int], &[c_int]),
    op: &'static str,
) -> Result<()> {
    // SAFETY: forwarded from the caller's contract; both buffers and arrays are borrowed for the
    // blocking call.
    unsafe {
        topo::neighbor_alltoallv(
            ffi::send_ptr(send),
            sc.as_ptr(),
            sd.as_ptr(),
            ffi::recv_ptr(recv),
            rc.as_ptr(),
            rd.as_ptr(),
            c.raw,
            op,
            c.rank,
        )
    }
}

/// A blocking neighbour all-to-all on validated counts, into `recv` (as long as `r`'s total).
fn exchange_into<T: Pod, N: Neighbourhood + ?Sized>(
    n: &N,
    send: &[T],
    (s, se): (&Counts, &[usize]),
    recv: &mut [T],
    (r, re): (&Counts, &[usize]),
    op: &'static str,
) -> Result<()> {
    if n.repeated().is_some() {
        return exchange_repeated(n, send, (s, se), recv, (r, re), op);
    }
    // SAFETY: every block lies inside its buffer (validated counts), one entry per neighbour.
    unsafe { mpi_alltoallv(n, send, (s.mpi(), s.displs()), recv, (r.mpi(), r.displs()), op) }
}

/// [`exchange_into`] where the neighbour lists repeat a rank: phalanx's own messages (the rare
/// fallback of periodic dimensions of one or two ranks), out of line.
#[cold]
#[inline(never)]
fn exchange_repeated<T: Pod, N: Neighbourhood + ?Sized>(
    n: &N,
    send: &[T],
    (s, se): (&Counts, &[usize]),
    recv: &mut [T],
    (r, re): (&Counts, &[usize]),
    op: &'static str,
) -> Result<()> {
    let counts = Box::new((s.clone(), r.clone()));
    let got = start(n, send[..s.total].to_vec(), counts, (se, re), op)?.wait()?;
    // As MPI does: the blocks of missing sources stay as they were.
    for (i, src) in n.sources().iter().enumerate() {
        if src.is_some() {
            let at = got.offset(i);
            recv[at..at + re[i]].copy_from_slice(got.block(i));
        }
    }
    Ok(())
}

/// [`exchange_into`] a new buffer, as blocks.
fn exchange<T: Pod, N: Neighbourhood + ?Sized>(
    n: &N,
    send: &[T],
    (s, se): (&Counts, &[usize]),
    (r, re): (&Counts, &[usize]),
    op: &'static str,
) -> Result<Blocks<T>> {
    let mut data = vec![T::zeroed(); r.total];
    exchange_into(n, send, (s, se), &mut data, (r, re), op)?;
    Ok(Blocks::new(data, re))
}

/// A blocking neighbour all-gather of `send` into blocks of `r`.
fn allgather<T: Pod, N: Neighbourhood + ?Sized>(
    n: &N,
    send: &[T],
    (r, re): (&Counts, &[usize]),
    op: &'static str,
) -> Result<Blocks<T>> {
    let c: &Comm = n;
    if n.repeated().is_some() {
        let nd = n.destinations().len();
        let se = vec![send.len(); nd];
        let s = c.list_counts::<T>(&se, op)?;
        let copies: Vec<T> = (0..nd).flat_map(|_| send.iter().copied()).collect();
        return start(n, copies, Box::new((s, r.clone())), (&se, re), op)?.wait();
    }
    let mut data = vec![T::zeroed(); r.total];
    // SAFETY: blocking; every source's block lies inside `data` (validated counts).
    unsafe {
        topo::neighbor_allgatherv(
            ffi::send_ptr(send),
            send.len(),
            ffi::recv_ptr(&mut data),
            r.mpi().as_ptr(),
            r.displs().as_ptr(),
            c.raw,
            op,
            c.rank,
        )?
    };
    Ok(Blocks::new(data, re))
}

/// Starts a neighbour all-to-all on validated counts: MPI's, or phalanx's own messages where the
/// neighbour lists repeat a rank.
fn start<T: Pod, N: Neighbourhood + ?Sized>(
    n: &N,
    send: Vec<T>,
    counts: Box<(Counts, Counts)>,
    (se, re): (&[usize], &[usize]),
    op: &'static str,
) -> Result<CollectiveRequest<Blocks<T>>> {
    let c: &Comm = n;
    let mut data = vec![T::zeroed(); counts.1.total];
    let Some(rep) = n.repeated() else {
        // The count arrays are boxed (MPI keeps their addresses; they may be inline).
        let (s, r) = &*counts;
        // SAFETY: the buffers and the boxed count arrays move into the request's closure (moving
        // a Vec or a Box does not move its heap block) and nobody touches them until completion;
        // Drop waits first; leaking the request leaks them. Every block lies inside its buffer.
        let req = unsafe {
            topo::ineighbor_alltoallv(
                ffi::send_ptr(&send),
                s.mpi().as_ptr(),
                s.displs().as_ptr(),
                ffi::recv_ptr(&mut data),
                r.mpi().as_ptr(),
                r.displs().as_ptr(),
                c.raw,
                op,
                c.rank,
            )?
        };
        let bounds = Bounds::of(re);
        return Ok(CollectiveRequest::new(
            req,
            op,
            c.rank,
            Box::new(move || {
                drop((send, counts));
                Blocks::from_parts(data, bounds)
            }),
        ));
    };
    let (raw, rank) = (rep.comm.raw, c.rank);
    let mut reqs = Reqs::with_capacity(n.sources().len() + n.destinations().len());
    let mut failed = Ok(());
    let mut at = 0;
    for (i, src) in n.sources().iter().enumerate() {
        let (off, len) = (at, re[i]);
        at += len;
        let Some(src) = *src else { continue };
        // SAFETY: `data`'s heap buffer moves into the request below, which waits for every
        // receive before freeing it, or leaks it with the request; the segments of different
        // sources are disjoint.
        match unsafe { ffi::irecv(ffi::recv_ptr(&mut data[off..off + len]), len, src, rep.recv_tags[i], raw, op, rank) }
        {
            Ok(req) => reqs.push(req),
            Err(e) => {
                failed = Err(e);
                break;
            }
        }
    }
    let mut at = 0;
    for (i, dst) in n.destinations().iter().enumerate() {
        let (off, len) = (at, se[i]);
        at += len;
        let Some(dst) = *dst else { continue };
        if failed.is_err() {
            break;
        }
        // SAFETY: `send`'s heap buffer moves into the request below, which waits for every send
        // before freeing it, or leaks it with the request; nobody writes it.
        match unsafe { ffi::isend(ffi::send_ptr(&send[off..off + len]), len, dst, rep.send_tags[i], raw, op, rank) } {
            Ok(req) => reqs.push(req),
            Err(e) => failed = Err(e),
        }
    }
    let bounds = Bounds::of(re);
    let req = CollectiveRequest::with_requests(
        reqs,
        op,
        rank,
        Box::new(move || {
            drop(send);
            Blocks::from_parts(data, bounds)
        }),
    );
    // On an error the request is dropped, which waits for what was posted (the peers post theirs).
    failed.map(|_| req)
}

impl sealed::Topology for CartComm {
    #[inline]
    fn repeated(&self) -> Option<&Repeated> {
        self.repeated.as_ref()
    }
}

impl sealed::Topology for GraphComm {
    #[inline]
    fn repeated(&self) -> Option<&Repeated> {
        self.repeated.as_ref()
    }
}

impl Neighbourhood for CartComm {
    #[inline]
    fn sources(&self) -> &[Option<i32>] {
        &self.neighbours
    }
    #[inline]
    fn destinations(&self) -> &[Option<i32>] {
        &self.neighbours
    }
}

impl Neighbourhood for GraphComm {
    #[inline]
    fn sources(&self) -> &[Option<i32>] {
        &self.sources
    }
    #[inline]
    fn destinations(&self) -> &[Option<i32>] {
        &self.destinations
    }
}

/// Validates neighbour count lists and, in checked mode, compares the receive counts with what the
/// sources send (a neighbour all-to-all of the send counts first). Neighbour-wise collective.
fn neighbour_counts<T: Pod, N: Neighbourhood + ?Sized>(
    n: &N,
    (send_len, recv_have): (usize, Option<usize>),
    send_counts: &[usize],
    recv_counts: &[usize],
    (s, r): (&mut Counts, &mut Counts),
    op: &'static str,
) -> Result<()> {
    let c: &Comm = n;
    let verify = c.will_check();
    let (nd, ns) = (n.destinations().len(), n.sources().len());
    let local = (|| {
        for (what, list, want) in [("send counts", send_counts, nd), ("receive counts", recv_counts, ns)] {
            if list.len() != want {
                return Err(c.cold_err(ErrorKind::InvalidArgument, op, || {
                    format!("{} {what} for {want} neighbours", list.len())
                }));
            }
        }
        c.fill_counts::<T>(send_counts, s, op)?;
        if s.total > send_len {
            let total = s.total;
            return Err(c.cold_err(ErrorKind::InvalidArgument, op, || {
                format!("send counts sum to {total} but send has {send_len} elements")
            }));
        }
        c.fill_counts::<T>(recv_counts, r, op)?;
        c.recv_len(recv_have, r.total, op)
    })();
    c.agree(op, local, Signature { elem_size: elem_size::<T>(), ..Default::default() })?;
    if verify {
        verify_neighbour_counts(n, send_counts, recv_counts, op)?;
    }
    Ok(())
}

/// The checked-mode part of [`neighbour_counts`]: a neighbour all-to-all of the send counts,
/// compared with the receive counts. Out of line: sampled calls only.
#[inline(never)]
fn verify_neighbour_counts<N: Neighbourhood + ?Sized>(
    n: &N,
    send_counts: &[usize],
    recv_counts: &[usize],
    op: &'static str,
) -> Result<()> {
    let c: &Comm = n;
    let (nd, ns) = (n.destinations().len(), n.sources().len());
    let wire: Vec<u64> = send_counts.iter().map(|&x| x as u64).collect();
    let (oe, ie) = (vec![1; nd], vec![1; ns]);
    let (so, ro) = (c.list_counts::<u64>(&oe, op)?, c.list_counts::<u64>(&ie, op)?);
    let incoming = exchange(n, &wire, (&so, &oe), (&ro, &ie), op)?.into_data();
    let bad = (0..ns).find(|&i| n.sources()[i].is_some() && incoming[i] != recv_counts[i] as u64);
    let check = match bad {
        None => Ok(()),
        Some(i) => Err(c.err(
            ErrorKind::CollectiveMismatch,
            op,
            format!(
                "the receive count from neighbour {i} (rank {}) is {} but it sends {} elements",
                n.sources()[i].unwrap_or(-1),
                recv_counts[i],
                incoming[i]
            ),
        )),
    };
    c.agree_errors(op, check)
}
