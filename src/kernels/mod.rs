//! Simulation kernels built on the lower layers: the programs in `examples/` are thin drivers around
//! these, and the benchmarks time them directly.

pub mod heat;
pub mod md;
pub mod nbody;
