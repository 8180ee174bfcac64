//! Command-line options for checkpoints, restarts and the watchdog, shared by the simulation
//! examples (`#[command(flatten)]`).

use std::path::PathBuf;

/// Checkpoint, restart and watchdog options.
#[derive(clap::Args, Debug)]
pub(crate) struct Resilience {
    /// Directory for checkpoint generations (on a file system every rank can read). With it,
    /// SIGUSR1 or SIGTERM make the run write a checkpoint and exit cleanly.
    #[arg(long)]
    pub(crate) checkpoint_dir: Option<PathBuf>,
    /// Write a checkpoint every this many steps (0: only on a signal).
    #[arg(long, default_value_t = 0)]
    pub(crate) checkpoint_every: usize,
    /// Checkpoint generations to keep.
    #[arg(long, default_value_t = 2)]
    pub(crate) checkpoint_keep: usize,
    /// Continue from the newest valid checkpoint in --checkpoint-dir, written on any number of
    /// ranks; a fresh start if there is none.
    #[arg(long, requires = "checkpoint_dir")]
    pub(crate) restart: bool,
    /// End the job, naming the stuck ranks and operations, when a rank makes no progress for this
    /// many seconds.
    #[arg(long)]
    pub(crate) watchdog: Option<f64>,
    /// Survive failed ranks in the job (fault-tolerant mode: Open MPI 5 started with
    /// `mpiexec --with-ft ulfm`, or `ci/mpi run --ft`): the survivors continue from in-memory
    /// partner copies made every --partner-every steps (with --watchdog, a dead rank is left to
    /// the recovery; a stuck one still ends the job).
    #[arg(long)]
    pub(crate) recover: bool,
    /// With --recover: copy the state to the partner rank every this many steps.
    #[arg(long, default_value_t = 10, requires = "recover", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) partner_every: u64,
    /// With --recover: keep this many of the ranks (the last ones) as spares that take the place
    /// of failed ranks, so the run continues on as many ranks as before.
    #[arg(long, default_value_t = 0, requires = "recover")]
    pub(crate) spares: usize,
}
