//! The runtime layer: MPI initialisation and finalisation, the thread level, and what happens when a
//! rank panics.
//!
//! # Why a panic aborts the job
//! `MPI_Finalize` is collective in practice: a rank that unwinds out of `main` and finalises while its
//! peers wait in a collective leaves them waiting forever (rsmpi's `Universe` does exactly that). phalanx
//! installs a panic hook that prints the message with the rank and calls `MPI_Abort` on
//! `MPI_COMM_WORLD`, so the launcher tears down every rank within seconds and the job exits non-zero.
//! A panic inside a rayon worker takes the same path.
//!
//! Errors that are *values* ([`crate::Error`]) do not abort: the caller decides.

pub(crate) mod activity;
mod level;
mod library;
pub mod pin;
mod threads;
mod topology;

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Once;

pub use activity::{current_activity, mark_progress, Activity};
pub use level::ThreadLevel;
pub use library::{built_against, library_version, MpiBuild};
pub use pin::{PinPlan, PinPolicy};
pub use threads::{build_pool, resolve_threads, ThreadSource};
pub use topology::{Core, Topology};

use crate::error::{Error, ErrorKind, Result};
use crate::ffi;

static INITIALISED_BY_US: AtomicBool = AtomicBool::new(false);
static WORLD_RANK: AtomicI32 = AtomicI32::new(-1);
static HOOK: Once = Once::new();

/// The MPI environment of this process. Created once by [`init`] or [`RuntimeBuilder::init`]; dropping
/// it finalises MPI.
///
/// It is neither `Send` nor `Sync`: MPI is finalised by the thread that initialised it, and with
/// [`ThreadLevel::Funneled`] (the default) only that thread may make MPI calls. Communicators are
/// obtained from it with [`Runtime::world`](crate::comm::Comm) (see the communication layer).
#[derive(Debug)]
pub struct Runtime {
    level: ThreadLevel,
    world_rank: i32,
    world_size: i32,
    _not_send: PhantomData<*const ()>,
}

/// Options for [`Runtime`] creation.
#[derive(Clone, Debug)]
pub struct RuntimeBuilder {
    level: ThreadLevel,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        Self { level: ThreadLevel::Funneled }
    }
}

/// Initialises MPI at [`ThreadLevel::Funneled`]: the main thread communicates, rayon workers compute.
///
/// Local (every process calls it once, before any other phalanx call).
///
/// # Errors
/// [`ErrorKind::Runtime`] if MPI is already initialised or was finalised, or if the MPI library or
/// launcher is not the one the program was built for (see [`RuntimeBuilder::init`]);
/// [`ErrorKind::ThreadLevel`] if the MPI library cannot provide Funneled.
#[doc(alias = "MPI_Init_thread")]
pub fn init() -> Result<Runtime> {
    RuntimeBuilder::default().init()
}

impl RuntimeBuilder {
    /// A builder with the defaults ([`ThreadLevel::Funneled`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// The thread level to ask MPI for. `Multiple` is needed to communicate from several threads at
    /// once; it costs latency in most MPI libraries, so ask for it only when you use it.
    pub fn thread_level(mut self, level: ThreadLevel) -> Self {
        self.level = level;
        self
    }

    /// Initialises MPI and installs the abort-on-panic hook.
    ///
    /// Local.
    ///
    /// # Errors
    /// [`ErrorKind::Runtime`] if MPI is already initialised or was finalised, or if the MPI library
    /// loaded or the launcher is not the one the program was built for (see [`built_against`]; checked
    /// before `MPI_Init`, and the world size against the launcher's after it);
    /// [`ErrorKind::ThreadLevel`] if the library provides less than the requested level (MPI is then
    /// finalised again before returning).
    #[doc(alias = "MPI_Init_thread")]
    pub fn init(self) -> Result<Runtime> {
        if ffi::finalized() {
            return Err(Error::new(ErrorKind::Runtime, "init", None, "MPI was already finalised in this process"));
        }
        if ffi::initialized() {
            return Err(Error::new(
                ErrorKind::Runtime,
                "init",
                None,
                "MPI is already initialised (a second phalanx::init, or another library initialised it)",
            ));
        }
        let launch = library::LaunchEnv::from(|v| std::env::var(v).ok());
        library::check_before_init(&launch)?;
        let provided = ThreadLevel::from_raw(ffi::init_thread(self.level.to_raw())?);
        INITIALISED_BY_US.store(true, Ordering::SeqCst);
        let world = ffi::comm_world();
        ffi::set_errors_return(world);
        let world_rank = ffi::comm_rank(world);
        let world_size = ffi::comm_size(world);
        WORLD_RANK.store(world_rank, Ordering::SeqCst);
        if let Err(e) = library::check_after_init(&launch, world_rank, world_size) {
            // Every process is a job of its own here: finalising waits for nobody.
            ffi::finalize();
            return Err(e);
        }
        if provided < self.level {
            ffi::finalize();
            return Err(Error::new(
                ErrorKind::ThreadLevel,
                "init",
                Some(world_rank),
                format!("requested MPI thread level {:?} but the library provides only {:?}", self.level, provided),
            ));
        }
        install_abort_hook();
        Ok(Runtime { level: provided, world_rank, world_size, _not_send: PhantomData })
    }
}

impl Runtime {
    /// A builder to choose the thread level.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The thread level MPI provides (at least the one requested).
    #[doc(alias = "MPI_Query_thread")]
    pub fn thread_level(&self) -> ThreadLevel {
        self.level
    }

    /// This process's rank in `MPI_COMM_WORLD`.
    pub fn world_rank(&self) -> i32 {
        self.world_rank
    }

    /// The number of processes in `MPI_COMM_WORLD`.
    pub fn world_size(&self) -> i32 {
        self.world_size
    }

    /// The name MPI gives this node (`MPI_Get_processor_name`, usually the host name).
    #[doc(alias = "MPI_Get_processor_name")]
    pub fn processor_name(&self) -> String {
        ffi::processor_name()
    }

    /// Wall-clock seconds since an arbitrary point in the past (`MPI_Wtime`).
    #[doc(alias = "MPI_Wtime")]
    pub fn wtime(&self) -> f64 {
        ffi::wtime()
    }

    /// Ends every process of the job with `code`. Use it for unrecoverable errors: returning from
    /// `main` on one rank while the others wait in a collective hangs the job.
    #[doc(alias = "MPI_Abort")]
    pub fn abort(&self, code: i32) -> ! {
        abort_job(code)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The hook aborts before unwinding starts; this is only reached if it was replaced.
            abort_job(101);
        }
        if !ffi::finalized() {
            ffi::finalize();
        }
    }
}

/// Wall-clock seconds since an arbitrary point in the past (`MPI_Wtime`); MPI must be initialised.
#[doc(alias = "MPI_Wtime")]
pub fn wtime() -> f64 {
    ffi::wtime()
}

/// The `MPI_COMM_WORLD` rank of this process once MPI is initialised by phalanx, else `None`.
pub fn world_rank() -> Option<i32> {
    let r = WORLD_RANK.load(Ordering::Relaxed);
    (r >= 0).then_some(r)
}

/// Ends every process of the job with exit code `code` (`MPI_Abort` on `MPI_COMM_WORLD`), or this
/// process alone if MPI is not running.
pub fn abort_job(code: i32) -> ! {
    ffi::abort(code)
}

fn install_abort_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Print the ordinary message (location, payload, backtrace hint) first.
            previous(info);
            if ffi::initialized() && !ffi::finalized() && INITIALISED_BY_US.load(Ordering::SeqCst) {
                let rank = WORLD_RANK.load(Ordering::Relaxed);
                eprintln!("phalanx: rank {rank} panicked; aborting every rank of the job (MPI_Abort)");
                abort_job(101);
            }
        }));
    });
}
