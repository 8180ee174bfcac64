//! Particles decomposed in space: the container, its migration and its ghosts (see [`Particles`]).
mod domain;
mod ghosts;
mod neighbours;

use bytemuck::Pod;

pub use domain::ParticleBox;
use domain::{auto_grid, Cuts};
use ghosts::GhostPlan;
pub use ghosts::GhostUpdate;
pub use neighbours::{CellList, VerletList};

use crate::comm::{Comm, Op};
use crate::decomp::ProcessGrid;
use crate::error::{Error, ErrorKind, Result};

/// A particle type: any `Pod` struct with a position and a global id.
///
/// ```
/// use bytemuck::{Pod, Zeroable};
/// use phalanx::decomp::Particle;
///
/// #[derive(Clone, Copy, Pod, Zeroable)]
/// #[repr(C)]
/// struct Atom {
///     id: u64,
///     x: [f64; 3],
///     v: [f64; 3],
/// }
///
/// impl Particle for Atom {
///     fn position(&self) -> [f64; 3] { self.x }
///     fn set_position(&mut self, x: [f64; 3]) { self.x = x }
///     fn id(&self) -> u64 { self.id }
/// }
/// ```
pub trait Particle: Pod + Send + Sync {
    /// The position.
    fn position(&self) -> [f64; 3];
    /// Moves the particle (used for periodic wrapping and the ghosts' images).
    fn set_position(&mut self, x: [f64; 3]);
    /// A global id, unique across the ranks (the order of [`Particles::gather`] and of the hash).
    fn id(&self) -> u64;
}

/// Tags on the container's own communicator.
const TAG_MIGRATE: i32 = 1; // and 2 (sparse exchange)
pub(crate) const TAG_BORDERS: i32 = 3;
pub(crate) const TAG_FORWARD: i32 = 4;
pub(crate) const TAG_REVERSE: i32 = 5;

/// Migrations between two sorts of the owned particles into cell order.
const SORT_EVERY: u64 = 16;

/// Particles decomposed in space: each rank owns the particles inside its block of the box, particles
/// migrate when they cross a cut plane, and copies of the particles within a cutoff of a block's
/// faces ("ghosts", with periodic images shifted by the box length) are kept on the neighbouring
/// ranks. The domain-decomposition layer of molecular dynamics, SPH, DEM and short-range gravity.
///
/// After LAMMPS's `comm_brick`, four exchanges, each with one name:
///
/// | LAMMPS | phalanx | when | what moves |
/// |---|---|---|---|
/// | `exchange()` | [`Particles::migrate`] (first half) | a rebuild step | owned particles to their new owners |
/// | `borders()` | [`Particles::migrate`] (second half) | a rebuild step | whole particles into the ghost lists |
/// | `forward_comm()` | [`Particles::update_ghosts`] | every other step | positions to the ghosts |
/// | `reverse_comm()` | [`Particles::reverse_add`] | every step, Newton on | ghost forces back to their owners |
///
/// The ghost lists are a plan (after Cabana's `Halo`): built by `migrate`, then executed every step
/// with buffers owned by the plan, so a step allocates nothing. Ghosts go to all 26 face, edge and
/// corner neighbours directly, one message per distinct neighbour rank; the split-phase
/// [`Particles::begin_update_ghosts`] therefore has every message in flight at once and the interior
/// work overlaps all of it. A rank that is its own neighbour (one or two ranks along a periodic
/// dimension) copies its images locally. Ghosts come from the nearest rank only: every block must
/// be at least the ghost cutoff wide along a dimension that exchanges ghosts, checked when built.
///
/// Migration sends each leaving particle straight to its new owner with
/// [`Comm::sparse_exchange`](crate::comm::Comm::sparse_exchange): to a face, edge or corner
/// neighbour or, after a jump, to any rank, in the same exchange.
///
/// Storage is one `Vec<T>`: the owned particles first, then the ghosts, so neighbour lists index
/// both with one `u32`. Indices change at every `migrate`.
///
/// Everything here is 3-D; a 2-D code uses a box one block thick along z, open there (no ghosts).
pub struct Particles<T: Particle> {
    comm: Comm,
    grid: ProcessGrid,
    bbox: ParticleBox,
    cuts: Cuts,
    cutoff: f64,
    coords: [usize; 3],
    lo: [f64; 3],
    hi: [f64; 3],
    data: Vec<T>,
    owned: usize,
    plan: GhostPlan,
    migrations: u64,
}

impl<T: Particle> Particles<T> {
    /// An empty container on `comm` over `bbox`, with ghosts within `ghost_cutoff` of each block
    /// (for a pair potential with a Verlet skin, the cutoff plus the skin), on the process grid
    /// with the least ghost volume whose blocks are at least `ghost_cutoff` wide.
    ///
    /// Collective (duplicates `comm`: the container's messages never meet the program's).
    ///
    /// # Errors
    /// [`ErrorKind::Decomposition`] if no grid of this many ranks has blocks that wide;
    /// [`ErrorKind::InvalidArgument`] for a cutoff that is not positive and finite.
    pub fn new(comm: &Comm, bbox: ParticleBox, ghost_cutoff: f64) -> Result<Particles<T>> {
        const OP: &str = "Particles::new";
        let grid = check_cutoff(ghost_cutoff, OP)
            .and_then(|_| auto_grid(comm.size() as usize, &bbox, ghost_cutoff, OP))
            .map_err(|e| e.at_rank(comm.rank()))?;
        Self::with_grid(comm, grid, bbox, ghost_cutoff)
    }

    /// As [`new`](Particles::new), on a given 3-D process grid (uniform cut planes).
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::Decomposition`] if the grid does not have 3 dimensions, does not match the
    /// communicator's size or its periodicity differs from the box's, or a block is narrower
    /// than the cutoff where it exchanges ghosts (ghosts from beyond the nearest rank are not
    /// supported).
    pub fn with_grid(comm: &Comm, grid: ProcessGrid, bbox: ParticleBox, ghost_cutoff: f64) -> Result<Particles<T>> {
        const OP: &str = "Particles::with_grid";
        let rank = comm.rank();
        check_cutoff(ghost_cutoff, OP).map_err(|e| e.at_rank(rank))?;
        if grid.ndim() != 3 || grid.size() != comm.size() as usize || grid.periodic() != bbox.periodic {
            return Err(Error::new(
                ErrorKind::Decomposition,
                OP,
                Some(rank),
                format!(
                    "the process grid {:?} (periodic {:?}) does not fit {} ranks and a box periodic along {:?}",
                    grid.dims(),
                    grid.periodic(),
                    comm.size(),
                    bbox.periodic
                ),
            ));
        }
        let cuts = Cuts::uniform(&bbox, grid.dims());
        cuts.check_width(&bbox, grid.dims(), ghost_cutoff, OP).map_err(|e| e.at_rank(rank))?;
        let comm = comm.dup()?;
        let c = grid.coords(rank as usize);
        let coords = [c[0], c[1], c[2]];
        let (lo, hi) = cuts.block(&c);
        let plan = GhostPlan::new(&grid, rank as usize, &bbox);
        Ok(Particles {
            comm,
            grid,
            bbox,
            cuts,
            cutoff: ghost_cutoff,
            coords,
            lo,
            hi,
            data: Vec::new(),
            owned: 0,
            plan,
            migrations: 0,
        })
    }

    /// The container's communicator (a duplicate of the one it was built on).
    pub fn comm(&self) -> &Comm {
        &self.comm
    }

    /// The process grid.
    pub fn grid(&self) -> &ProcessGrid {
        &self.grid
    }

    /// The box.
    pub fn bbox(&self) -> &ParticleBox {
        &self.bbox
    }

    /// The ghost cutoff.
    pub fn ghost_cutoff(&self) -> f64 {
        self.cutoff
    }

    /// This rank's block of the box, `(lo, hi)`: it owns the particles with `lo <= x < hi`.
    pub fn block(&self) -> ([f64; 3], [f64; 3]) {
        (self.lo, self.hi)
    }

    /// The cut planes per dimension: `grid().dims()[d] + 1` coordinates along `d`, the first the
    /// box's `lo`, the last its `hi`; rank `(i, j, k)` owns `planes[0][i]..planes[0][i + 1]` along
    /// x, and so on. Uniform unless moved by [`set_cut_planes`](Particles::set_cut_planes).
    pub fn cut_planes(&self) -> &[Vec<f64>; 3] {
        &self.cuts.planes
    }

    /// Moves the cut planes (as a load balancer decides: [`crate::decomp::Balancer`]), then
    /// migrates every particle to its new owner and rebuilds the ghosts (and puts the owned
    /// particles in cell order): rebuild neighbour lists after it, as after
    /// [`migrate`](Particles::migrate).
    ///
    /// Collective: every rank must pass the same planes.
    ///
    /// # Errors
    /// On every rank, [`ErrorKind::Decomposition`] for planes that do not fit the grid (a count
    /// other than `dims[d] + 1`, ends other than the box's, not increasing, a block narrower than
    /// the ghost cutoff where it exchanges ghosts) or that differ between ranks, naming the
    /// numbers; what [`migrate`](Particles::migrate) refuses (a particle not finite or outside an
    /// open side, an unfinished ghost update), checked first. The planes, the particles and
    /// their ghosts are as they were then. MPI errors.
    pub fn set_cut_planes(&mut self, planes: [Vec<f64>; 3]) -> Result<()> {
        const OP: &str = "Particles::set_cut_planes";
        let rank = self.comm.rank();
        let dims = self.grid.dims().to_vec();
        let fail = |msg: String| Error::new(ErrorKind::Decomposition, OP, Some(rank), msg);
        let mut local = Ok(());
        for d in 0..3 {
            let p = &planes[d];
            if p.len() != dims[d] + 1 {
                local = Err(fail(format!(
                    "{} planes along dimension {d} for a grid of {} ranks there (want {})",
                    p.len(),
                    dims[d],
                    dims[d] + 1
                )));
                break;
            }
            if p[0] != self.bbox.lo[d] || p[dims[d]] != self.bbox.hi[d] {
                local = Err(fail(format!(
                    "the planes along dimension {d} run {}..{}, the box {}..{}",
                    p[0], p[dims[d]], self.bbox.lo[d], self.bbox.hi[d]
                )));
                break;
            }
            if let Some(i) = p.windows(2).position(|w| w[1].partial_cmp(&w[0]) != Some(std::cmp::Ordering::Greater)) {
                local = Err(fail(format!(
                    "planes {i} and {} along dimension {d} are {} and {}: they must increase",
                    i + 1,
                    p[i],
                    p[i + 1]
                )));
                break;
            }
        }
        let cuts = Cuts { planes };
        if local.is_ok() {
            local = cuts.check_width(&self.bbox, &dims, self.cutoff, OP).map_err(|e| e.at_rank(rank));
        }
        // What the migration would refuse, refused before anything changes.
        if local.is_ok() {
            local = if self.plan.in_flight() { Err(self.unfinished(OP)) } else { self.check_positions() };
        }
        self.comm.agree_errors(OP, local)?;
        let bytes: Vec<u8> = cuts.planes.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
        let key = (xxhash_rust::xxh3::xxh3_64(&bytes) >> 2) as i64;
        let (min, max) = self.comm.min_max(&[key])?;
        if min != max {
            return Err(fail(format!("ranks passed different planes (this rank: {:?})", cuts.planes)));
        }
        self.cuts = cuts;
        (self.lo, self.hi) = self.cuts.block(&self.coords);
        // A block that moved gathers particles from elsewhere: put them in cell order.
        self.migrations = 0;
        self.migrate()
    }

    /// This rank's coordinates in the process grid.
    pub fn grid_coords(&self) -> [usize; 3] {
        self.coords
    }

    /// The owned particles.
    pub fn owned(&self) -> &[T] {
        &self.data[..self.owned]
    }

    /// The owned particles, to update (velocities, positions). Moved particles keep their owner
    /// until the next [`migrate`](Particles::migrate).
    pub fn owned_mut(&mut self) -> &mut [T] {
        &mut self.data[..self.owned]
    }

    /// The ghosts (copies of other ranks' particles and periodic images), after the owned ones in
    /// [`all`](Particles::all).
    pub fn ghosts(&self) -> &[T] {
        &self.data[self.owned..]
    }

    /// Owned particles, then ghosts: what neighbour lists index.
    pub fn all(&self) -> &[T] {
        &self.data
    }

    /// The number of owned particles.
    pub fn owned_len(&self) -> usize {
        self.owned
    }

    /// The number of owned particles and ghosts.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether this rank holds no particles (owned or ghost).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Adds particles on this rank, anywhere in the box (they go to their owners at the next
    /// [`migrate`](Particles::migrate)). Drops the ghosts until then.
    ///
    /// Local.
    pub fn extend(&mut self, particles: impl IntoIterator<Item = T>) {
        self.data.truncate(self.owned);
        self.plan.clear();
        self.data.extend(particles);
        self.owned = self.data.len();
    }

    /// The total number of owned particles over all ranks.
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors.
    pub fn global_len(&self) -> Result<u64> {
        self.comm.allreduce(self.owned as u64, Op::Sum)
    }

    /// Moves every owned particle to the rank that owns its position (wrapping it into the box along
    /// periodic dimensions), to a neighbour or any rank in one sparse exchange, then rebuilds the
    /// ghosts: copies of all particles within the ghost cutoff of this rank's block, periodic images
    /// shifted by the box length. Indices change (and at the first and every 16th migration the
    /// owned particles are put in cell order, for cache locality): rebuild neighbour lists after it.
    ///
    /// Collective.
    ///
    /// # Errors
    /// On every rank, [`ErrorKind::InvalidArgument`] (on the rank that has it, naming the
    /// particle) for a position that is not finite or outside an open dimension of the box;
    /// [`ErrorKind::PeerFailed`] on the others. Then no particle has moved (the ghosts are dropped:
    /// migrate again after fixing the positions). MPI errors.
    #[doc(alias = "exchange")]
    #[doc(alias = "borders")]
    pub fn migrate(&mut self) -> Result<()> {
        const OP: &str = "Particles::migrate";
        self.data.truncate(self.owned);
        self.plan.clear();
        // Everything that can fail is checked, and agreed on, before any particle moves: a failed
        // migration leaves every rank's particles as they were.
        let local = if self.plan.in_flight() { Err(self.unfinished(OP)) } else { self.check_positions() };
        self.comm.agree_errors(OP, local)?;
        let mut out: Vec<Vec<T>> = Vec::new();
        let mut dests: Vec<usize> = Vec::new(); // the ranks of `out`, in order of first use
        self.sort_out(&mut out, &mut dests);
        let sends: Vec<(i32, Vec<T>)> = dests.iter().map(|&d| d as i32).zip(out).collect();
        for (_, batch) in self.comm.sparse_exchange(sends, TAG_MIGRATE)? {
            self.data.extend_from_slice(&batch);
        }
        self.owned = self.data.len();
        // Particles drift slowly: the order stays good for many migrations (LAMMPS sorts every
        // 1000 steps by default), and a sort costs about as much as the rest of a migration.
        if self.migrations.is_multiple_of(SORT_EVERY) {
            self.sort_by_cell();
        }
        self.migrations += 1;
        self.build_ghosts()
    }

    /// The first owned particle whose position is not finite or outside an open side of the box.
    fn check_positions(&self) -> Result<()> {
        for p in &self.data[..self.owned] {
            let x = p.position();
            if !x.iter().all(|c| c.is_finite()) {
                return Err(self.bad_particle(p, "is not finite"));
            }
            let w = self.bbox.wrap(x);
            if (0..3).any(|d| !(self.bbox.lo[d]..self.bbox.hi[d]).contains(&w[d])) {
                return Err(self.bad_particle(p, "is outside the box along an open dimension"));
            }
        }
        Ok(())
    }

    /// Wraps the owned particles (checked), keeps this rank's (in order) and puts the others in
    /// `out`, per destination.
    fn sort_out(&mut self, out: &mut Vec<Vec<T>>, dests: &mut Vec<usize>) {
        let me = self.comm.rank() as usize;
        let mut slot = vec![usize::MAX; self.grid.size()];
        let mut keep = 0;
        for i in 0..self.data.len() {
            let mut p = self.data[i];
            let x = p.position();
            let w = self.bbox.wrap(x);
            if w != x {
                p.set_position(w);
            }
            let inside = (0..3).all(|d| (self.lo[d]..self.hi[d]).contains(&w[d]));
            let owner = if inside { me } else { self.cuts.owner(&self.grid, w) };
            if owner == me {
                self.data[keep] = p;
                keep += 1;
            } else {
                if slot[owner] == usize::MAX {
                    slot[owner] = out.len();
                    out.push(Vec::new());
                    dests.push(owner);
                }
                out[slot[owner]].push(p);
            }
        }
        self.data.truncate(keep);
        self.owned = keep;
    }

    fn bad_particle(&self, p: &T, what: &str) -> Error {
        self.comm.err(
            ErrorKind::InvalidArgument,
            "Particles::migrate",
            format!(
                "particle {} at {:?} {what} {:?}..{:?} (periodic {:?})",
                p.id(),
                p.position(),
                self.bbox.lo,
                self.bbox.hi,
                self.bbox.periodic
            ),
        )
    }

    /// Orders the owned particles cell by cell (cells half the ghost cutoff wide): particles near
    /// in space are near in memory, so pair loops over neighbour lists stay in cache.
    fn sort_by_cell(&mut self) {
        let x: Vec<[f64; 3]> = self.data.iter().map(|p| p.position()).collect();
        let cells = CellList::build(&x, self.lo, self.hi, 0.5 * self.cutoff);
        let sorted: Vec<T> = cells.order().iter().map(|&i| self.data[i as usize]).collect();
        self.data = sorted;
    }

    /// Every rank's owned particles on rank 0, ordered by id (`None` elsewhere).
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors.
    #[doc(alias = "MPI_Gatherv")]
    pub fn gather(&self) -> Result<Option<Vec<T>>> {
        Ok(self.comm.gatherv(self.owned(), 0)?.map(|b| {
            let mut all: Vec<T> = b.iter().flat_map(|s| s.iter().copied()).collect();
            all.sort_by_key(|p| p.id());
            all
        }))
    }

    /// A hash of every owned particle's bytes, keyed by its id: the same for the same particles
    /// on any number of ranks, in any order (compare runs bit for bit). Positions are hashed
    /// wrapped into the box along periodic dimensions, as a migration or a checkpoint restart
    /// leaves them: a particle that crossed a periodic side since the last migration hashes as
    /// its image inside the box.
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors.
    pub fn hash(&self) -> Result<u128> {
        let wrapped: Vec<T> = self
            .owned()
            .iter()
            .map(|p| {
                let mut q = *p;
                let w = self.bbox.wrap(p.position());
                if w != p.position() {
                    q.set_position(w);
                }
                q
            })
            .collect();
        let lanes = particle_hash_lanes(&wrapped);
        let sum = self.comm.allreduce_vec(&lanes, Op::Sum)?;
        Ok((sum[0] as u128) << 64 | sum[1] as u128)
    }
}

/// The two lanes of [`Particles::hash`] for `particles` (summed, wrapping, over the ranks).
fn particle_hash_lanes<T: Particle>(particles: &[T]) -> [u64; 2] {
    let mut lanes = [0u64; 2];
    for p in particles {
        crate::decomp::dist_array::hash_cell(&mut lanes, p.id(), p);
    }
    lanes
}

/// [`Particles::hash`] of particles held on one process (a serial run, a gathered state).
///
/// Local.
pub fn particles_hash_of<T: Particle>(particles: &[T]) -> u128 {
    let lanes = particle_hash_lanes(particles);
    (lanes[0] as u128) << 64 | lanes[1] as u128
}

fn check_cutoff(c: f64, op: &'static str) -> Result<()> {
    if c.is_finite() && c > 0.0 {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidArgument,
            op,
            None,
            format!("the ghost cutoff {c} must be positive and finite"),
        ))
    }
}
