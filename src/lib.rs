//! # phalanx
//!
//! Typed MPI communication, domain decomposition and hybrid MPI + threads parallelism for
//! simulations that run on clusters.
//!
//! The crate is layered, and lower layers never use upper ones:
//!
//! | layer | module | what it holds |
//! |---|---|---|
//! | runtime | [`runtime`] | MPI initialisation, thread level, abort-on-panic |
//! | communication | [`comm`] | communicators, typed point-to-point and collectives |
//! | decomposition | [`decomp`] | process grids, partitions, distributed arrays, halo exchange, particles |
//! | services | [`services`] | run-time metrics, checkpoints and restarts, the watchdog |
//! | kernels | [`kernels`] | the simulation kernels the examples and benchmarks run |
//!
//! ```no_run
//! use phalanx::prelude::*;
//!
//! fn main() -> std::process::ExitCode {
//!     // MPI_Init_thread(FUNNELED); an error on any rank ends the whole job (see `runtime`).
//!     phalanx::run(|rt| {
//!         let world = rt.world();
//!         let local = (world.rank() + 1) as f64;
//!         let total = world.allreduce(local, Op::Sum)?;
//!         if world.rank() == 0 {
//!             println!("sum over {} ranks = {total}", world.size());
//!         }
//!         Ok::<(), phalanx::Error>(())
//!     })
//! }
//! ```
//!
//! A panic on any rank aborts the whole job (see [`runtime`]); errors are values ([`Error`]).

pub mod comm;
pub mod decomp;
mod error;
mod ffi;
pub mod kernels;
pub mod prelude;
pub mod runtime;
pub mod services;

pub use error::{Error, ErrorKind, Result};
pub use runtime::{init, run, Runtime, RuntimeBuilder, ThreadLevel};

/// The `bytemuck` phalanx is built with: element types of messages and arrays are its [`Pod`](bytemuck::Pod).
/// A crate that depends on phalanx alone derives them through this path:
///
/// ```
/// use phalanx::bytemuck::{Pod, Zeroable};
///
/// #[derive(Clone, Copy, Pod, Zeroable)]
/// #[bytemuck(crate = "phalanx::bytemuck")]
/// #[repr(C)]
/// struct Particle {
///     x: [f64; 3],
///     id: u32,
///     // `Pod` forbids padding: the 4 bytes that would follow `id` must be a field.
///     _pad: u32,
/// }
/// let p = Particle { x: [1.0, 2.0, 3.0], id: 7, _pad: 0 };
/// assert_eq!(phalanx::bytemuck::bytes_of(&p).len(), 32);
/// ```
pub use bytemuck;
/// The `ndarray` phalanx is built with (its `rayon` feature on): [`DistArray`](decomp::DistArray)
/// hands out its views, so use this one rather than a version of your own.
pub use ndarray;
/// The `rayon` phalanx's threads run on ([`comm::ThreadConfig`] sizes its pool).
pub use rayon;

/// docs/GUIDE.md's code blocks, compiled (and the ones that need no `mpirun`, run) as doctests.
#[doc = include_str!("../docs/GUIDE.md")]
#[cfg(doctest)]
pub struct GuideDoctests;
