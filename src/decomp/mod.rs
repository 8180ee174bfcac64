//! The decomposition layer: Cartesian process grids, block partitions, distributed arrays with
//! ghost layers, the halo exchange, and particles decomposed in space ([`Particles`]: migration,
//! ghost particles, neighbour lists).
//!
//! A [`Decomposition`] splits a global domain into one block per rank; a [`DistArray`] stores a
//! rank's **owned** block plus **ghost** layers that mirror its neighbours' cells. In 2-D with ghost
//! width 1, a rank in the middle of the grid stores (`o` owned, `g` ghost, `.` ghost that only a
//! [`Stencil::Box`] exchange fills):
//!
//! ```text
//!      . g g g g .        ghosted box  = owned box grown by the ghost width on every side
//!      g o o o o g        owned box    = the cells this rank computes (OwnedBox, PETSc xs..xe)
//!      g o o o o g        ghost cells  = copies of the neighbours' owned cells, refreshed by
//!      g o o o o g                       DistArray::exchange (GhostedBox, PETSc Xs..Xe)
//!      . g g g g .
//! ```
//!
//! At an open (non-periodic) boundary of the global domain the ghosts are left to the program: set
//! them with [`DistArray::set_boundary_ghosts`] (fixed value) or
//! [`DistArray::mirror_boundary_ghosts`] (zero gradient). Periodic dimensions wrap, also when they
//! have one or two ranks.
//!
//! Construction validates everything up front, with the numbers: a ghost width wider than a local
//! block, more ranks than cells, a grid whose dims do not multiply to the communicator size, ranks
//! that disagree on the global shape.
//!
//! # Example: one Jacobi sweep of the 2-D heat equation
//!
//! ```no_run
//! use ndarray::{s, Ix2, Zip};
//! use phalanx::decomp::{Decomposition, DistArray, Stencil};
//!
//! let rt = phalanx::init()?;
//! let world = rt.world();
//! let decomp = Decomposition::builder(&world, &[512, 512]).ghost_width(1).stencil(Stencil::Star).build()?;
//! let mut u = DistArray::<f64, Ix2>::from_fn(&decomp, |g| if g[0] == 0 { 1.0 } else { 0.0 })?;
//! let mut next = DistArray::<f64, Ix2>::new(&decomp, 0.0)?;
//! u.set_boundary_ghosts(0.0);
//! u.exchange()?;                                   // neighbour-wise collective
//! let a = u.ghosted();
//! Zip::from(next.owned_mut())
//!     .and(a.slice(s![1..-1, 1..-1]))
//!     .and(a.slice(s![..-2, 1..-1]))
//!     .and(a.slice(s![2.., 1..-1]))
//!     .and(a.slice(s![1..-1, ..-2]))
//!     .and(a.slice(s![1..-1, 2..]))
//!     .for_each(|n, &c, &up, &down, &left, &right| *n = c + 0.1 * (up + down + left + right - 4.0 * c));
//! let hash = next.field_hash()?;                   // the same on any number of ranks
//! # Ok::<(), phalanx::Error>(())
//! ```

mod balance;
mod dist_array;
mod grid;
mod halo;
mod layout;
mod particles;
mod partition;
mod regions;

pub use balance::{imbalance, BalanceCheck, BalanceDecision, Balancer, ParticleCost};
pub use dist_array::{field_hash_of, DistArray};
pub use grid::{ProcessGrid, MAX_DIMS};
pub use halo::{HaloExchange, HaloTransport};
pub use layout::{Decomposition, DecompositionBuilder, GhostedBox, OwnedBox, Stencil};
pub use particles::{particles_hash_of, CellList, GhostUpdate, Particle, ParticleBox, Particles, VerletList};
pub use partition::Partition;
