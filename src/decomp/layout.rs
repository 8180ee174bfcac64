//! The decomposition of a global Cartesian domain over a communicator (PETSc's DMDA without the
//! vectors): process grid, per-dimension partitions, owned and ghosted boxes, stencil.

use std::cell::Cell;
use std::ops::Range;
use std::rc::Rc;

use super::grid::{ProcessGrid, MAX_DIMS};
use super::halo::HaloTransport;
use super::partition::Partition;
use crate::comm::{CartComm, Comm};
use crate::error::{Error, ErrorKind, Result};

/// Which neighbours a stencil reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[doc(alias = "DMDA_STENCIL_STAR")]
#[doc(alias = "DMDA_STENCIL_BOX")]
pub enum Stencil {
    /// Faces only (5-point in 2-D, 7-point in 3-D): corner and edge ghosts are never written.
    Star,
    /// Faces, edges and corners (9-point in 2-D, 27-point in 3-D).
    Box,
}

/// The cells a rank owns, in global indices. Distinct from [`GhostedBox`] so the two cannot be
/// confused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedBox {
    start: Vec<usize>,
    len: Vec<usize>,
}

/// The cells a rank stores: the owned box grown by the ghost width on every side, in global indices
/// (negative or past the end at a boundary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GhostedBox {
    start: Vec<isize>,
    len: Vec<usize>,
}

impl OwnedBox {
    /// First owned global index per dimension (PETSc's `xs`).
    pub fn start(&self) -> &[usize] {
        &self.start
    }
    /// Owned cells per dimension (PETSc's `xm`).
    pub fn len(&self) -> &[usize] {
        &self.len
    }
    /// Owned global range in dimension `d`.
    pub fn range(&self, d: usize) -> Range<usize> {
        self.start[d]..self.start[d] + self.len[d]
    }
    /// Number of owned cells.
    pub fn cells(&self) -> usize {
        self.len.iter().product()
    }
    /// Whether no cell is owned (never true in a valid decomposition).
    pub fn is_empty(&self) -> bool {
        self.cells() == 0
    }
    /// Whether global index `g` is owned here.
    pub fn contains(&self, g: &[usize]) -> bool {
        g.iter().enumerate().all(|(d, &x)| self.range(d).contains(&x))
    }
}

impl GhostedBox {
    /// First stored global index per dimension (PETSc's `Xs`); may be negative.
    pub fn start(&self) -> &[isize] {
        &self.start
    }
    /// Stored cells per dimension (PETSc's `Xm`).
    pub fn len(&self) -> &[usize] {
        &self.len
    }
    /// Stored global range in dimension `d` (may extend past the domain).
    pub fn range(&self, d: usize) -> Range<isize> {
        self.start[d]..self.start[d] + self.len[d] as isize
    }
    /// Number of stored cells.
    pub fn cells(&self) -> usize {
        self.len.iter().product()
    }
    /// Whether nothing is stored (never true in a valid decomposition).
    pub fn is_empty(&self) -> bool {
        self.cells() == 0
    }
}

/// A decomposition shared by all arrays with the same layout. Build it with
/// [`Decomposition::builder`].
#[derive(Debug)]
pub struct Decomposition {
    pub(crate) comm: CartComm,
    transport: HaloTransport,
    grid: ProcessGrid,
    parts: Vec<Partition>,
    shape: Vec<usize>,
    ghost: Vec<usize>,
    stencil: Stencil,
    coords: Vec<usize>,
    owned: OwnedBox,
    ghosted: GhostedBox,
    arrays: Cell<i32>,
}

/// Options for a [`Decomposition`].
#[derive(Debug)]
pub struct DecompositionBuilder<'c> {
    comm: &'c Comm,
    shape: Vec<usize>,
    ghost: Vec<usize>,
    periodic: Vec<bool>,
    stencil: Stencil,
    dims: Option<Vec<usize>>,
    sizes: Vec<Option<Vec<usize>>>,
    reorder: bool,
    transport: Option<HaloTransport>,
}

impl Decomposition {
    /// Starts describing a decomposition of a global domain of `shape` cells (row-major: the last
    /// dimension is contiguous in memory). Defaults: ghost width 1, [`Stencil::Star`], open
    /// (non-periodic) boundaries, process grid chosen by [`ProcessGrid::auto_for_width`] (smallest
    /// halo surface among grids whose blocks are at least the ghost width).
    pub fn builder<'c>(comm: &'c Comm, shape: &[usize]) -> DecompositionBuilder<'c> {
        let nd = shape.len();
        DecompositionBuilder {
            comm,
            shape: shape.to_vec(),
            ghost: vec![1; nd],
            periodic: vec![false; nd],
            stencil: Stencil::Star,
            dims: None,
            sizes: vec![None; nd],
            reorder: false,
            transport: None,
        }
    }

    /// The communicator (a Cartesian communicator over the one given, so halo traffic never
    /// matches user messages). Its ranks are the ones this decomposition keys everything by; they
    /// differ from the given communicator's only when built with
    /// [`reorder`](DecompositionBuilder::reorder).
    pub fn comm(&self) -> &Comm {
        &self.comm
    }

    /// The process grid as an MPI Cartesian communicator (for `shift`, row and column
    /// communicators, and neighbourhood collectives over the grid's faces).
    #[doc(alias = "MPI_Cart_create")]
    pub fn cartesian(&self) -> &CartComm {
        &self.comm
    }

    /// How halo exchanges of this decomposition's arrays move their messages.
    pub fn halo_transport(&self) -> HaloTransport {
        self.transport
    }
    /// The process grid.
    pub fn grid(&self) -> &ProcessGrid {
        &self.grid
    }
    /// The partition of dimension `d`.
    pub fn partition(&self, d: usize) -> &Partition {
        &self.parts[d]
    }
    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }
    /// The global shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Ghost width per dimension.
    pub fn ghost_width(&self) -> &[usize] {
        &self.ghost
    }
    /// The stencil type.
    pub fn stencil(&self) -> Stencil {
        self.stencil
    }
    /// Periodicity per dimension.
    pub fn periodic(&self) -> &[bool] {
        self.grid.periodic()
    }
    /// This rank's coordinates in the process grid.
    pub fn coords(&self) -> &[usize] {
        &self.coords
    }
    /// This rank's owned box.
    pub fn owned_box(&self) -> &OwnedBox {
        &self.owned
    }
    /// This rank's ghosted box.
    pub fn ghosted_box(&self) -> &GhostedBox {
        &self.ghosted
    }

    /// The owned box of any rank (pure arithmetic; used by gather and scatter).
    pub fn owned_box_of(&self, rank: usize) -> OwnedBox {
        let c = self.grid.coords(rank);
        OwnedBox {
            start: (0..self.ndim()).map(|d| self.parts[d].range(c[d]).start).collect(),
            len: (0..self.ndim()).map(|d| self.parts[d].size(c[d])).collect(),
        }
    }

    /// Whether this rank's owned box touches the low (`high == false`) or high end of the global
    /// domain in dimension `d`.
    pub fn at_boundary(&self, d: usize, high: bool) -> bool {
        if high {
            self.coords[d] + 1 == self.grid.dims()[d]
        } else {
            self.coords[d] == 0
        }
    }

    /// The creation number of a new array on this decomposition and its tag base, unique to each
    /// array so that exchanges of several arrays in flight at once never match each other's
    /// messages. Arrays must be created in the same order on every rank for the bases to agree;
    /// checked mode verifies it at each array's first exchange.
    pub(crate) fn next_tag_base(&self) -> (i32, i32) {
        let n = self.arrays.get();
        self.arrays.set(n + 1);
        (n, (n % self.tag_slots()) * 27)
    }

    /// Halo tag slots (27 tags each), leaving the two tags above them to
    /// [`redistribute_tag`](Self::redistribute_tag).
    fn tag_slots(&self) -> i32 {
        ((self.comm.tag_ub().min(1 << 20) - 2) / 27).max(1)
    }

    /// The tags (this one and the next) of [`DistArray::redistribute`](super::DistArray::redistribute):
    /// above every halo tag, so a redistribution never matches a halo message in flight.
    pub(crate) fn redistribute_tag(&self) -> i32 {
        self.tag_slots() * 27
    }

    /// The same decomposition (global shape, process grid, ghost widths, stencil, periodicity)
    /// with explicit block sizes per dimension (`sizes[d]`, one per rank along `d`, summing to the
    /// global extent), as a load balancer computes them ([`crate::decomp::Balancer`]). Move the
    /// arrays onto it with [`DistArray::redistribute`](super::DistArray::redistribute).
    ///
    /// Collective (as [`DecompositionBuilder::build`]: a new duplicate of the communicator, the
    /// sizes compared across the ranks).
    ///
    /// # Errors
    /// [`ErrorKind::Decomposition`] on every rank: not one list of sizes per dimension; as
    /// [`DecompositionBuilder::build`], sizes that do not sum to the extent, a block narrower
    /// than the ghost width, ranks that passed different sizes.
    pub fn rebalanced(&self, sizes: &[Vec<usize>]) -> Result<Rc<Decomposition>> {
        const OP: &str = "Decomposition::rebalanced";
        let nd = self.ndim();
        let local = if sizes.len() == nd {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Decomposition,
                OP,
                Some(self.comm.rank()),
                format!("{} lists of block sizes for a {nd}-dimensional decomposition", sizes.len()),
            ))
        };
        self.comm.agree_errors(OP, local)?;
        let mut b = Decomposition::builder(&self.comm, &self.shape)
            .ghost_widths(&self.ghost)
            .stencil(self.stencil)
            .periodic(self.grid.periodic())
            .dims(self.grid.dims())
            .halo_transport(self.transport);
        for (d, s) in sizes.iter().enumerate() {
            b = b.block_sizes(d, s);
        }
        b.build().map_err(|e| Error::new(e.kind(), OP, Some(self.comm.rank()), e.message().to_string()))
    }

    /// Block sizes per dimension (the argument [`rebalanced`](Self::rebalanced) takes; uniform
    /// blocks unless a balancer moved them).
    pub fn block_sizes(&self) -> Vec<Vec<usize>> {
        self.parts.iter().map(|p| (0..p.parts()).map(|b| p.size(b)).collect()).collect()
    }

    /// The ghosted box of any rank in global indices, padded to 3-D: `(lo, hi)`.
    pub(crate) fn ghosted_box3_of(&self, rank: usize) -> ([isize; 3], [isize; 3]) {
        let b = self.owned_box_of(rank);
        let nd = self.ndim();
        let (mut lo, mut hi) = ([0isize; 3], [1isize; 3]);
        for d in 0..nd {
            let g = self.ghost[d] as isize;
            lo[3 - nd + d] = b.start()[d] as isize - g;
            hi[3 - nd + d] = (b.start()[d] + b.len()[d]) as isize + g;
        }
        (lo, hi)
    }

    /// The box a rank's array stores and owns for a redistribution: its owned box grown by the
    /// ghost width where it touches an end of the domain, in global indices (padded to 3-D). The
    /// ghosts beyond an open end hold the boundary condition, which nobody else has, also where
    /// they meet a periodic dimension's ghosts (corners); the boxes of all ranks tile the ghosted
    /// global domain.
    #[allow(clippy::needless_range_loop)] // per-dimension arrays indexed together
    pub(crate) fn extended_box_of(&self, rank: usize) -> ([isize; 3], [isize; 3]) {
        let c = self.grid.coords(rank);
        let nd = self.ndim();
        let (mut lo, mut hi) = ([0isize; 3], [1isize; 3]);
        for d in 0..nd {
            let r = self.parts[d].range(c[d]);
            let g = self.ghost[d] as isize;
            let pd = 3 - nd + d;
            lo[pd] = r.start as isize - if c[d] == 0 { g } else { 0 };
            hi[pd] = r.end as isize + if c[d] + 1 == self.grid.dims()[d] { g } else { 0 };
        }
        (lo, hi)
    }
}

impl DecompositionBuilder<'_> {
    /// The same ghost width in every dimension.
    pub fn ghost_width(mut self, w: usize) -> Self {
        self.ghost = vec![w; self.shape.len()];
        self
    }
    /// A ghost width per dimension.
    pub fn ghost_widths(mut self, w: &[usize]) -> Self {
        self.ghost = w.to_vec();
        self
    }
    /// The stencil type (default [`Stencil::Star`]).
    pub fn stencil(mut self, s: Stencil) -> Self {
        self.stencil = s;
        self
    }
    /// Periodicity per dimension (default: none).
    pub fn periodic(mut self, p: &[bool]) -> Self {
        self.periodic = p.to_vec();
        self
    }
    /// The process grid, ranks per dimension (default: chosen to minimise the halo surface).
    pub fn dims(mut self, dims: &[usize]) -> Self {
        self.dims = Some(dims.to_vec());
        self
    }
    /// Lets the MPI library renumber the ranks to fit the process grid to the machine
    /// (`MPI_Cart_create` with `reorder`; default off). The decomposition's
    /// [`comm`](Decomposition::comm) then has this process at another rank than the communicator
    /// given, and every rank-keyed thing phalanx does with the decomposition (halo peers, gathers,
    /// checkpoints and output through its arrays) uses the new rank.
    pub fn reorder(mut self, reorder: bool) -> Self {
        self.reorder = reorder;
        self
    }

    /// How halo exchanges move their messages (default: `PHALANX_HALO` if set, else
    /// [`HaloTransport::default`]; see [`HaloTransport`]).
    pub fn halo_transport(mut self, t: HaloTransport) -> Self {
        self.transport = Some(t);
        self
    }

    /// Explicit block sizes along dimension `d` (PETSc's `lx`/`ly`/`lz`); their number sets the
    /// grid's extent in `d`. Out-of-range `d` is reported by [`build`](Self::build).
    pub fn block_sizes(mut self, d: usize, sizes: &[usize]) -> Self {
        if d >= self.sizes.len() {
            self.sizes.resize(d + 1, None);
        }
        self.sizes[d] = Some(sizes.to_vec());
        self
    }

    /// Validates the description on every rank and creates the decomposition.
    ///
    /// Every input (shape, ghost widths, periodicity, grid, block sizes, stencil) is compared across
    /// the ranks first, so a description that differs between ranks, or is wrong, is an error on every
    /// rank (never a hang, never disagreeing boxes).
    ///
    /// Collective (duplicates the communicator and checks that every rank passed the same
    /// description).
    ///
    /// # Errors
    /// [`ErrorKind::Decomposition`] with the numbers: unsupported dimension count, mismatched
    /// global shapes or options across ranks, a grid whose dims do not multiply to the communicator
    /// size, more ranks than cells in a dimension, explicit block sizes that do not sum to the
    /// global extent, or a local extent smaller than the ghost width.
    pub fn build(self) -> Result<Rc<Decomposition>> {
        const OP: &str = "Decomposition::build";
        let comm = self.comm;
        let rank = comm.rank();
        let fail = |msg: String| Error::new(ErrorKind::Decomposition, OP, Some(rank), msg);
        let nd = self.shape.len();

        // 1. Every rank must describe the same decomposition: compare a fixed-length signature of
        // every builder input, block sizes included (a rank that failed a check of its own before
        // this point would leave the others waiting in the collectives below).
        let transport = match self.transport {
            Some(t) => Ok(t),
            None => HaloTransport::from_env(),
        };
        let mut sig = [-1i64; 1 + 5 * MAX_DIMS + 3];
        sig[0] = nd as i64;
        for d in 0..nd.min(MAX_DIMS) {
            sig[1 + d] = self.shape[d] as i64;
            sig[1 + MAX_DIMS + d] = self.ghost.get(d).map_or(-2, |&g| g as i64);
            sig[1 + 2 * MAX_DIMS + d] = self.periodic.get(d).map_or(-2, |&p| p as i64);
            sig[1 + 3 * MAX_DIMS + d] = self.dims.as_ref().and_then(|v| v.get(d)).map_or(-2, |&p| p as i64);
            sig[1 + 4 * MAX_DIMS + d] = self.sizes.get(d).map_or(-2, |s| block_sizes_key(s.as_deref()));
        }
        sig[5 * MAX_DIMS + 1] = self.stencil as i64;
        sig[5 * MAX_DIMS + 2] =
            (self.sizes.len() as i64) << 8 | (self.ghost.len() as i64) << 4 | self.periodic.len() as i64;
        sig[5 * MAX_DIMS + 3] = transport.as_ref().map_or(15, |&t| t as i64) | (self.reorder as i64) << 4;
        // Values past what an i64 negation can hold would break the max/-min comparison.
        let sig = sig.map(|x| x.clamp(-(1 << 62), 1 << 62));
        let (min, max) = comm.min_max(&sig)?;
        if min != max {
            let what = ["dimension count", "global shape", "ghost width", "periodicity", "process grid", "block sizes"];
            let first = min.iter().zip(&max).position(|(a, b)| a != b).unwrap_or(0);
            let field = match first {
                0 => what[0],
                i if i <= 5 * MAX_DIMS => what[(i - 1) / MAX_DIMS + 1],
                i if i == 5 * MAX_DIMS + 1 => "stencil",
                i if i == 5 * MAX_DIMS + 3 => "halo transport (PHALANX_HALO) or reorder flag",
                _ => "number of per-dimension options",
            };
            let sizes: Vec<String> =
                self.sizes.iter().map(|s| s.as_ref().map_or("default".into(), |v| format!("{v:?}"))).collect();
            return Err(fail(format!(
                "ranks passed different decompositions: the {field} differs (this rank: shape {:?}, ghost {:?}, periodic {:?}, block sizes [{}])",
                self.shape,
                self.ghost,
                self.periodic,
                sizes.join(", ")
            )));
        }

        // 2. The description itself (identical on every rank now, so every rank reaches the same verdict).
        if nd == 0 || nd > MAX_DIMS {
            return Err(fail(format!("{nd} dimensions requested; 1 to {MAX_DIMS} are supported")));
        }
        if self.ghost.len() != nd || self.periodic.len() != nd || self.sizes.len() != nd {
            return Err(fail(format!(
                "a {nd}-dimensional domain needs {nd} ghost widths and periodicity flags (got {} and {}; block sizes for {} dimensions)",
                self.ghost.len(),
                self.periodic.len(),
                self.sizes.len()
            )));
        }
        if let Some(d) = self.shape.iter().position(|&n| n == 0) {
            return Err(fail(format!("global extent of dimension {d} is 0")));
        }
        let size = comm.size() as usize;
        let mut dims = self.dims.clone();
        if dims.is_none() && self.sizes.iter().any(Option::is_some) {
            // Dimensions with explicit blocks fix their extent; the rest share what remains.
            let fixed: usize = self.sizes.iter().flatten().map(Vec::len).product();
            if fixed == 0 || !size.is_multiple_of(fixed) {
                return Err(fail(format!(
                    "explicit block counts multiply to {fixed}, which does not divide {size} ranks"
                )));
            }
            let free: Vec<usize> = (0..nd).filter(|&d| self.sizes[d].is_none()).collect();
            let sub_shape: Vec<usize> = free.iter().map(|&d| self.shape[d]).collect();
            let sub_periodic: Vec<bool> = free.iter().map(|&d| self.periodic[d]).collect();
            let sub_ghost: Vec<usize> = free.iter().map(|&d| self.ghost[d]).collect();
            let sub = if free.is_empty() {
                None
            } else {
                Some(
                    ProcessGrid::auto_for_width(size / fixed, &sub_shape, &sub_periodic, &sub_ghost)
                        .map_err(|e| fail(e.message().to_string()))?,
                )
            };
            let mut k = 0;
            dims = Some(
                (0..nd)
                    .map(|d| match &self.sizes[d] {
                        Some(s) => s.len(),
                        None => {
                            k += 1;
                            sub.as_ref().map_or(1, |g| g.dims()[k - 1])
                        }
                    })
                    .collect(),
            );
        }
        let grid = match dims {
            Some(d) => ProcessGrid::new(size, &d, &self.periodic),
            None => ProcessGrid::auto_for_width(size, &self.shape, &self.periodic, &self.ghost),
        }
        .map_err(|e| fail(e.message().to_string()))?;

        let mut parts = Vec::with_capacity(nd);
        for d in 0..nd {
            let p = match &self.sizes[d] {
                Some(s) => {
                    if s.len() != grid.dims()[d] {
                        return Err(fail(format!(
                            "dimension {d}: {} block sizes for {} ranks in that dimension",
                            s.len(),
                            grid.dims()[d]
                        )));
                    }
                    let sum: usize = s.iter().sum();
                    if sum != self.shape[d] {
                        return Err(fail(format!(
                            "dimension {d}: block sizes {s:?} sum to {sum}, not the global extent {}",
                            self.shape[d]
                        )));
                    }
                    Partition::from_sizes(s)
                }
                None => Partition::balanced(self.shape[d], grid.dims()[d]),
            }
            .map_err(|e| fail(format!("dimension {d}: {}", e.message())))?;
            let exchanges = grid.dims()[d] > 1 || self.periodic[d];
            if exchanges && p.min_size() < self.ghost[d] {
                return Err(fail(format!(
                    "local extent {} in dimension {d} is smaller than the ghost width {} ({} cells over {} ranks); use fewer ranks in that dimension or a narrower stencil",
                    p.min_size(),
                    self.ghost[d],
                    self.shape[d],
                    grid.dims()[d]
                )));
            }
            parts.push(p);
        }

        // The grid as an MPI Cartesian communicator. With `reorder` MPI may renumber the ranks;
        // from here on everything is keyed by the new rank (MPI numbers Cartesian ranks row-major,
        // as `ProcessGrid` does).
        let dims: Vec<usize> = grid.dims().to_vec();
        let cart = comm
            .cartesian(&dims, &self.periodic, self.reorder)?
            .ok_or_else(|| fail(format!("rank {rank} was left out of the process grid {dims:?}")))?;
        let coords = grid.coords(cart.rank() as usize);
        debug_assert_eq!(coords, cart.coords());
        let transport = transport.map_err(fail)?;
        let owned = OwnedBox {
            start: (0..nd).map(|d| parts[d].range(coords[d]).start).collect(),
            len: (0..nd).map(|d| parts[d].size(coords[d])).collect(),
        };
        let ghosted = GhostedBox {
            start: (0..nd).map(|d| owned.start[d] as isize - self.ghost[d] as isize).collect(),
            len: (0..nd).map(|d| owned.len[d] + 2 * self.ghost[d]).collect(),
        };
        Ok(Rc::new(Decomposition {
            comm: cart,
            transport,
            grid,
            parts,
            shape: self.shape,
            ghost: self.ghost,
            stencil: self.stencil,
            coords,
            owned,
            ghosted,
            arrays: Cell::new(0),
        }))
    }
}

/// One number for a dimension's explicit block sizes (`-3` for none), equal on ranks that passed
/// the same list: the list's xxh3 hash, kept below 2^62.
fn block_sizes_key(sizes: Option<&[usize]>) -> i64 {
    match sizes {
        None => -3,
        Some(s) => {
            let bytes: Vec<u8> = s.iter().flat_map(|&x| (x as u64).to_le_bytes()).collect();
            (xxhash_rust::xxh3::xxh3_64(&bytes) >> 2) as i64
        }
    }
}
