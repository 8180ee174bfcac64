//! A clean stop on `SIGUSR1` or `SIGTERM`: the signal only sets a flag; the program looks at it
//! between steps, all ranks agree, write a checkpoint and exit.
//!
//! Slurm sends `SIGTERM` to every task when a job is cancelled or reaches its time limit (and
//! `SIGKILL` `KillWait` seconds later), and with `#SBATCH --signal=B:USR1@60` it sends `SIGUSR1` to
//! the batch script 60 s before the limit, which forwards it to the job step (see
//! `examples/slurm/heat-checkpoint.sbatch`). `mpirun` forwards `SIGUSR1` to its ranks.

use std::sync::atomic::{AtomicI32, Ordering};

use crate::comm::{Comm, Op};
use crate::error::{Error, ErrorKind, Result};

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// Installs the handler for `SIGUSR1` and `SIGTERM` (with `SA_RESTART`, so that interrupted system
/// calls inside MPI resume).
///
/// Local.
///
/// # Errors
/// [`ErrorKind::Runtime`] if `sigaction` fails.
pub fn install_stop_handler() -> Result<()> {
    for sig in [libc::SIGUSR1, libc::SIGTERM] {
        // SAFETY:
        // - `act` is fully initialised (zeroed, then the fields set), and `sa_mask` is emptied with
        //   sigemptyset before use;
        // - `on_signal` is an `extern "C" fn(c_int)` that only performs an atomic store, which is
        //   async-signal-safe; sigaction copies `act` and keeps no pointer to it.
        let rc = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            act.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(Error::new(
                ErrorKind::Runtime,
                "install_stop_handler",
                crate::runtime::world_rank(),
                format!("sigaction({sig}): {}", std::io::Error::last_os_error()),
            ));
        }
    }
    Ok(())
}

/// The stop signal this rank has received, if any.
///
/// Local.
pub fn stop_signal() -> Option<i32> {
    let s = SIGNAL.load(Ordering::SeqCst);
    (s != 0).then_some(s)
}

/// Whether any rank has received a stop signal: the same answer on every rank, so that all of
/// them stop at the same step (one small all-reduce).
///
/// Collective.
///
/// # Errors
/// MPI errors.
pub fn stop_requested(comm: &Comm) -> Result<Option<i32>> {
    let s = comm.allreduce(SIGNAL.load(Ordering::SeqCst), Op::Max)?;
    Ok((s != 0).then_some(s))
}

/// The name of a stop signal (`SIGUSR1`, `SIGTERM`).
pub fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGUSR1 => "SIGUSR1".into(),
        libc::SIGTERM => "SIGTERM".into(),
        s => format!("signal {s}"),
    }
}
