//! The communication layer: communicators, typed point-to-point and collectives.
//!
//! Everything here takes and returns Rust values of any [`bytemuck::Pod`] element type (all
//! primitive numbers, and `#[derive(Pod, Zeroable)]` `#[repr(C)]` structs without padding: where
//! the layout would leave a gap, write it as an explicit field such as `_pad: u32`, or the derive
//! refuses the struct; see [`crate::bytemuck`] for a crate that depends on phalanx alone). Primitive
//! numbers travel as their MPI datatype (`MPI_DOUBLE`, `MPI_INT32_T`, ...), other `Pod` types as
//! `size_of::<T>()` bytes per element, so a struct is never sent with padding and a received struct
//! is never an invalid bit pattern.
//!
//! # Errors are values
//! Communicators carry `MPI_ERRORS_RETURN`, and phalanx validates what MPI does not (Open MPI 4.1
//! silently accepts a broadcast whose root count is smaller than the receivers', and mismatched
//! element types). Every failure is an [`Error`](crate::Error) naming the operation, the rank and the
//! numbers.
//!
//! # Checked collectives
//! An argument error seen on only some ranks of a collective would leave the others waiting forever.
//! A checked collective first agrees on a small signature (operation, root, counts, element size,
//! local errors) with one `MPI_Allreduce`; if anything disagrees, **every** rank returns an error and
//! none enters the real collective. The cost is one small all-reduce per checked collective. Which
//! collectives are checked ([`CheckMode`], `PHALANX_CHECK`):
//! - `Always` (`PHALANX_CHECK=1`; the default of debug builds): every one;
//! - `Sampled` (`PHALANX_CHECK=sampled`; the default of release builds): the first 32 collectives on
//!   each communicator, then one in 256, chosen by a count of collectives on the communicator that is
//!   the same on every rank. A systematic mismatch (a wrong count, root or operation in the code)
//!   shows on the first calls; its cost is in `docs/PERFORMANCE.md`;
//! - `Off` (`PHALANX_CHECK=0`): none. Each rank still validates its own arguments, but a rank that
//!   returns early, or a mismatch between ranks, leaves its peers blocked or computes garbage.
//!
//! # Beyond point-to-point and the basic collectives
//! Nonblocking collectives (`nonblocking.rs`, owning and scoped), v-collectives with given counts
//! (`counts.rs`), reduce-scatter, Cartesian and graph communicators with neighbourhood collectives
//! (`topology.rs`) and persistent requests (`persistent.rs`):
//!
//! ```no_run
//! use phalanx::comm::{start_all, Neighbourhood, Op};
//! # let rt = phalanx::init()?; let world = rt.world();
//! let (n, me) = (world.size() as usize, world.rank() as usize);
//! let req = world.iallgatherv(vec![me as f64; 3], &vec![3; n])?; // counts given: no hidden exchange
//! let _blocks = req.wait()?;
//! let mut sums = vec![0.0; 4];
//! world.scope(|s| s.iallreduce(&[1.0; 4], &mut sums, Op::Sum)?.wait())?;
//! let _mine = world.reduce_scatter_block(&vec![1u64; 2 * n], Op::Sum)?;
//! let cart = world.cartesian(&[n], &[true], true)?.expect("every rank is in the grid");
//! let (below, above) = cart.shift(0, 1)?;
//! let _from_neighbours = cart.neighbour_alltoall(&[me as i32, me as i32], 1)?;
//! let (below, above) = (below.expect("periodic"), above.expect("periodic"));
//! let mut send = cart.send_init(vec![0.0f64; 1024], above, 0)?;
//! let mut recv = cart.recv_init::<f64>(1024, below, 0)?;
//! for step in 0..10 {
//!     send.data_mut()?.fill(step as f64);
//!     start_all(&mut [&mut recv, &mut send])?;
//!     recv.wait()?;
//!     send.wait()?;
//! }
//! # Ok::<(), phalanx::Error>(())
//! ```

mod check;
mod collective;
mod communicator;
mod counts;
mod hybrid;
mod nonblocking;
mod op;
mod p2p;
mod persistent;
mod request;
mod scope;
mod sparse;
mod topology;

pub use collective::Blocks;
pub use communicator::{CheckMode, Comm, NodeSplit, SharedComm, SAMPLED_EVERY, SAMPLED_FIRST};
pub use hybrid::{BindingReport, BindingRow, ThreadConfig, Threads, MAX_THREADS_PER_RANK};
pub use nonblocking::CollectiveRequest;
pub use op::{Loc, Op};
pub use p2p::{Source, Status, Tag, ANY_TAG};
pub use persistent::{start_all, Persistent, PersistentRecv, PersistentSend};
pub use request::{AllreduceRequest, RecvRequest, SendRequest};
pub use scope::{Scope, ScopedCollective, ScopedRecv, ScopedSend};
pub use topology::{CartComm, GraphComm, Neighbourhood};
