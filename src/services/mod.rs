//! The services layer: what a running simulation needs besides computing. Run-time metrics
//! ([`metrics`]): per-rank phase timers, their aggregation, Prometheus and trace output.
//! Checkpoint and restart ([`checkpoint`]), a clean stop on Slurm's signals ([`signals`]), a
//! watchdog that ends a stuck job and says where it is stuck ([`watchdog`]), in-job recovery from
//! failed processes with in-memory partner copies ([`recovery`]), output for ParaView written by
//! every rank in parallel ([`vtk`]), and fault injection for testing all of that ([`fault`]).

pub mod checkpoint;
pub mod fault;
pub mod metrics;
pub mod recovery;
pub mod signals;
pub mod vtk;
pub mod watchdog;
