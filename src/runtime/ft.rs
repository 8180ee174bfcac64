//! Fault-tolerant mode: whether this job can survive a failed process (ULFM), decided once at
//! `init`.
//!
//! Asked for with [`crate::RuntimeBuilder::fault_tolerant`] or `PHALANX_FT=1`. It is on only when
//! all three hold, else `init` says which one does not (on rank 0) and the job behaves as without
//! it (a failed process ends the job):
//! - the headers phalanx was built against declare the ULFM calls (cfg `phalanx_ulfm`, see
//!   `build.rs`);
//! - the implementation is on the allow-list of those known to recover: Open MPI 5 or later
//!   (verified on 5.0.11: four of four runs with a SIGKILLed rank recovered). MPICH 4.0.2 and 5.0.2
//!   export the calls but their jobs did not survive a killed rank here;
//! - the job was started with fault tolerance on: Open MPI's `mpiexec --with-ft ulfm` (or
//!   `ci/mpi run --ft`) sets `OMPI_MCA_mpi_ft_enable` in every rank; without it the launcher ends
//!   the job when a process dies.

use std::sync::atomic::{AtomicBool, Ordering};

use super::library::built_against;
use crate::ffi::ulfm;

static ON: AtomicBool = AtomicBool::new(false);

/// Whether this job runs in fault-tolerant mode (see the module's documentation).
pub fn fault_tolerant() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Whether `e` is a process failure or a revocation met in fault-tolerant mode: the run goes on,
/// and what MPI may still use (a failed request's buffers) is left to it.
pub(crate) fn failure(e: &crate::Error) -> bool {
    fault_tolerant() && matches!(e.kind(), crate::ErrorKind::ProcessFailed | crate::ErrorKind::Revoked)
}

/// Before `MPI_Init`, in a job started with fault tolerance (Open MPI's `--with-ft ulfm`, which
/// sets `OMPI_MCA_mpi_ft_enable`): leaves out Open MPI's hierarchical collectives (`coll/han`,
/// used when a job spans several nodes) unless the user chose the collective components
/// (`OMPI_MCA_coll`). They are not fault tolerant: after both ranks of an emulated node were
/// killed together, the survivors crashed inside `mca_coll_han_comm_create` or
/// `mca_pml_ob1_revoke_comm` (a segmentation fault, so the launcher ended the job) in 10 of 14
/// runs with Open MPI 5.0.11; 8 of 8 recovered without it.
pub(crate) fn exclude_unsafe_components() {
    if std::env::var_os("OMPI_MCA_mpi_ft_enable").is_some() && std::env::var_os("OMPI_MCA_coll").is_none() {
        // Before MPI_Init, from the thread that initialises: nothing else reads the environment
        // concurrently in phalanx; MPI reads it during MPI_Init.
        std::env::set_var("OMPI_MCA_coll", "^han");
    }
}

/// Whether the environment asks for fault-tolerant mode (`PHALANX_FT=1`).
pub(crate) fn requested_by_env() -> bool {
    matches!(std::env::var("PHALANX_FT").as_deref(), Ok("1") | Ok("true") | Ok("yes") | Ok("on"))
}

/// Why fault-tolerant mode cannot be on in this job, or `None` when it can.
pub(crate) fn unavailable(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let b = built_against();
    if !ulfm::DECLARED {
        return Some(format!(
            "the MPI phalanx was built against ({} {}, {}) declares no ULFM calls",
            b.family, b.version, b.include_dir
        ));
    }
    let major: u32 = b.version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    if b.family != "Open MPI" || major < 5 {
        return Some(format!(
            "{} {} is not known to survive a failed process (known to: Open MPI 5 or later, started with \
             `mpiexec --with-ft ulfm`)",
            b.family, b.version
        ));
    }
    let on = env("OMPI_MCA_mpi_ft_enable").is_some_and(|v| matches!(v.as_str(), "1" | "true" | "yes" | "on"));
    if !on {
        return Some(
            "this job was not started with fault tolerance on (Open MPI 5: `mpiexec --with-ft ulfm`, or \
             `ci/mpi run --ft`)"
                .into(),
        );
    }
    None
}

/// Decides the mode at `init` (after `MPI_Init`, when the world rank is known).
pub(crate) fn decide(requested: bool, world_rank: i32) -> bool {
    let on = requested
        && match unavailable(|v| std::env::var(v).ok()) {
            None => true,
            Some(why) => {
                if world_rank == 0 {
                    eprintln!(
                        "phalanx: fault-tolerant mode was asked for, but {why}: a failed process ends the job \
                         as without it"
                    );
                }
                false
            }
        };
    ON.store(on, Ordering::SeqCst);
    on
}
