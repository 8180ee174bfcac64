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
