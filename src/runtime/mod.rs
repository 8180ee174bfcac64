//! The runtime layer: MPI initialisation and finalisation, the thread level, and what happens when a
//! rank panics.
//!
//! # Why a panic aborts the job
//! `MPI_Finalize` is collective in practice: a rank that unwinds out of `main` and finalises while its
//! peers wait in a collective leaves them waiting forever (rsmpi's `Universe` does exactly that). phalanx
//! installs a panic hook that prints the message with the rank and calls `MPI_Abort` on
//! `MPI_COMM_WORLD`, so the launcher tears down every rank within seconds and the job exits non-zero.
//! A panic inside a rayon worker takes the same path, except that below `ThreadLevel::Multiple` a
//! thread other than the one that initialised MPI may not call `MPI_Abort`: it ends its own process
//! with `_exit` and the launcher ends the others (see [`abort_job`]).
//!
//! Errors that are *values* ([`crate::Error`]) do not abort: the caller decides.
//!
//! # Why the end of a run cannot hang
//! An error returned on one rank (`fn main() -> phalanx::Result<()>` with `?`) leaves the other ranks
//! waiting in their next collective, and `MPI_Finalize` on the failing rank waits for them: the job
//! hangs. Two guards:
//! - [`run`] (and [`RuntimeBuilder::run`]) runs the program's body and, when it returns `Err` on any
//!   rank, prints the error with the rank and ends the whole job at once (`MPI_Abort`, exit code 3).
//!   Use it as `main`'s body.
//! - Dropping the [`Runtime`] (the plain pattern) first waits, at most `PHALANX_FINALIZE_TIMEOUT`
//!   seconds (default 300: the largest gap allowed between ranks at the end of a run, for example
//!   while rank 0 writes output), for every rank to reach the end too (a nonblocking barrier). If
//!   they do not, it says so, skips `MPI_Finalize`, and the process exits with status 1 after Rust has
//!   printed `main`'s error, so the launcher ends the others.

pub(crate) mod activity;
pub mod ft;
mod level;
mod library;
pub(crate) mod orphans;
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
/// Set when the [`Runtime`] is dropped: MPI is finalised (or abandoned), no call may reach it.
static ENDED: AtomicBool = AtomicBool::new(false);
/// Set when the run ended with processes lost (fault-tolerant mode): MPI is not finalised.
static SURVIVORS_ONLY: AtomicBool = AtomicBool::new(false);

/// Whether the runtime has ended (dropped): communicators check it before every MPI call, so that
/// a `Comm` used after `drop(rt)` is an error instead of a call into a finalised MPI.
#[inline]
pub(crate) fn mpi_ended() -> bool {
    ENDED.load(Ordering::Relaxed)
}
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
    // A private duplicate of MPI_COMM_WORLD for the end-of-run agreement (see the module docs).
    end: ffi::MPI_Comm,
    _not_send: PhantomData<*const ()>,
}

/// Options for [`Runtime`] creation.
#[derive(Clone, Debug)]
pub struct RuntimeBuilder {
    level: ThreadLevel,
    fault_tolerant: bool,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        Self { level: ThreadLevel::Funneled, fault_tolerant: ft::requested_by_env() }
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

    /// Asks for fault-tolerant mode (also `PHALANX_FT=1`): the survivors of a failed process get
    /// [`ErrorKind::ProcessFailed`] / [`ErrorKind::Revoked`] and may recover (see
    /// [`crate::services::recovery`]) instead of the job ending. On only where the MPI library and the
    /// launcher can do it ([`ft`] says which); elsewhere `init` says why and the job behaves as
    /// without it.
    pub fn fault_tolerant(mut self, on: bool) -> Self {
        self.fault_tolerant = on;
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
        if self.fault_tolerant {
            ft::exclude_unsafe_components();
        }
        let provided = ThreadLevel::from_raw(ffi::init_thread(self.level.to_raw())?);
        INITIALISED_BY_US.store(true, Ordering::SeqCst);
        PROVIDED.store(provided.to_raw(), Ordering::SeqCst);
        MPI_MAIN.with(|m| m.set(true));
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
        ft::decide(self.fault_tolerant, world_rank);
        install_abort_hook();
        let end = ffi::comm_dup(world, world_rank)?;
        Ok(Runtime { level: provided, world_rank, world_size, end, _not_send: PhantomData })
    }

    /// Initialises MPI, runs `body`, and ends the job so that it cannot hang: `Ok` finalises MPI
    /// (after every rank got there) and exits with the body's code; `Err` on any rank prints
    /// `PROGRAM: rank R: ERROR` and aborts every rank of the job with exit code 3. A failed
    /// initialisation prints its error and exits with 3, on every process.
    ///
    /// Collective over `MPI_COMM_WORLD` (every process calls it once, as `main`'s body).
    ///
    /// ```no_run
    /// use phalanx::prelude::*;
    ///
    /// fn main() -> std::process::ExitCode {
    ///     phalanx::run(|rt| {
    ///         let world = rt.world();
    ///         let total = world.allreduce((world.rank() + 1) as f64, Op::Sum)?;
    ///         if world.rank() == 0 {
    ///             println!("sum = {total}");
    ///         }
    ///         Ok::<(), phalanx::Error>(())
    ///     })
    /// }
    /// ```
    pub fn run<T: RunCode, E: std::fmt::Display>(
        self,
        body: impl FnOnce(&Runtime) -> std::result::Result<T, E>,
    ) -> std::process::ExitCode {
        let program = std::env::args()
            .next()
            .and_then(|a| std::path::Path::new(&a).file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "phalanx".into());
        let rt = match self.init() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("{program}: {e}");
                return std::process::ExitCode::from(ERROR_EXIT);
            }
        };
        match body(&rt) {
            Ok(v) => {
                let code = v.code();
                drop(rt);
                std::process::ExitCode::from(code)
            }
            Err(e) => {
                eprintln!("{program}: rank {} of {}: {e}; ending the job", rt.world_rank, rt.world_size);
                // While MPI still runs: the other ranks may be waiting for this one in a collective.
                abort_job(i32::from(ERROR_EXIT))
            }
        }
    }
}

/// The exit code [`run`] ends a job with when the body returns an error (2 is left to usage
/// errors, 1 to the program's own verdicts).
pub const ERROR_EXIT: u8 = 3;

/// What a [`run`] body may return on success: `()` (exit code 0) or an exit code.
pub trait RunCode {
    /// The process exit code.
    fn code(self) -> u8;
}

impl RunCode for () {
    fn code(self) -> u8 {
        0
    }
}

impl RunCode for u8 {
    fn code(self) -> u8 {
        self
    }
}

impl RunCode for i32 {
    fn code(self) -> u8 {
        u8::try_from(self).unwrap_or(1)
    }
}

/// [`RuntimeBuilder::run`] with the defaults ([`ThreadLevel::Funneled`]): the entry point that
/// cannot hang. See the module docs.
pub fn run<T: RunCode, E: std::fmt::Display>(
    body: impl FnOnce(&Runtime) -> std::result::Result<T, E>,
) -> std::process::ExitCode {
    RuntimeBuilder::default().run(body)
}

/// How long dropping the [`Runtime`] waits for every rank to reach the end of the run
/// (`PHALANX_FINALIZE_TIMEOUT`, seconds; default 300).
pub fn finalize_timeout() -> std::time::Duration {
    let secs = std::env::var("PHALANX_FINALIZE_TIMEOUT").ok().and_then(|s| s.trim().parse::<f64>().ok());
    std::time::Duration::from_secs_f64(secs.filter(|s| s.is_finite() && *s >= 0.0).unwrap_or(300.0))
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
        if ffi::finalized() {
            return;
        }
        let limit = finalize_timeout();
        let agreed = self.every_rank_ended(limit);
        orphans::release_all();
        ENDED.store(true, Ordering::SeqCst);
        if agreed {
            ffi::comm_free(&mut self.end);
            if SURVIVORS_ONLY.load(Ordering::SeqCst) {
                // Open MPI 5.0.11's MPI_Finalize waited forever in 1 of 11 runs whose job had lost
                // processes; the survivors have agreed that the run is over, so they leave without it
                // (the launcher in fault-tolerant mode expects processes to end that way).
                eprintln!(
                    "phalanx: rank {}: the job lost processes during the run; leaving without MPI_Finalize",
                    self.world_rank
                );
                return;
            }
            ffi::finalize();
            return;
        }
        eprintln!(
            "phalanx: rank {} of {}: the other ranks did not reach the end of the run within {:.0} s (a rank \
             that ended early, for example with an error, while others wait in a collective); leaving \
             without MPI_Finalize, exit status 1, so that the launcher ends the job \
             (PHALANX_FINALIZE_TIMEOUT sets the limit)",
            self.world_rank,
            self.world_size,
            limit.as_secs_f64()
        );
        exit_nonzero_after_main();
    }
}

impl Runtime {
    /// The end-of-run agreement: a nonblocking barrier on the private communicator, polled until
    /// every rank has started it or `limit` has passed.
    fn every_rank_ended(&self, limit: std::time::Duration) -> bool {
        if ffi::ulfm::failure_seen() {
            // Not a nonblocking barrier with dead members: Open MPI 5.0.11's schedule gives up on
            // the dead peer and frees its sends, and a send that fails after that ends the job
            // ("Send error after request freed", seen over TCP). The survivors agree instead.
            let e = Error::new(ErrorKind::ProcessFailed, "end of run", Some(self.world_rank), "processes failed");
            return self.survivors_ended(&e);
        }
        let mut req = match ffi::ibarrier(self.end, "end of run", self.world_rank) {
            Ok(r) => r,
            Err(e) => return self.survivors_ended(&e),
        };
        let start = std::time::Instant::now();
        loop {
            match ffi::test(&mut req, "end of run", self.world_rank).0 {
                Ok(true) => return true,
                Err(e) => return self.survivors_ended(&e),
                Ok(false) if start.elapsed() >= limit => return false,
                Ok(false) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
    }
}

impl Runtime {
    /// In fault-tolerant mode, when the end-of-run barrier failed because processes failed during
    /// the run (the program recovered from them): the survivors agree instead (revoke, so that
    /// every survivor's barrier ends too, then `MPIX_Comm_agree`, which does not wait for the dead).
    fn survivors_ended(&self, e: &Error) -> bool {
        if !ft::failure(e) {
            return false;
        }
        // MPIX_Comm_agree has no deadline: a rank that never gets here would hold the others. The
        // end of the run keeps its bound (PHALANX_FINALIZE_TIMEOUT) with a timer.
        let (rank, limit) = (self.world_rank, finalize_timeout());
        static AGREED: AtomicBool = AtomicBool::new(false);
        let _ = std::thread::Builder::new().name("phalanx-end".into()).spawn(move || {
            std::thread::sleep(limit);
            if AGREED.load(Ordering::SeqCst) {
                return; // the program may go on long after the runtime ended
            }
            eprintln!(
                "phalanx: rank {rank}: the survivors did not agree on the end of the run within {:.0} s; leaving, \
                 exit status 1",
                limit.as_secs_f64()
            );
            // SAFETY: _exit has no preconditions.
            unsafe { libc::_exit(1) }
        });
        let _ = ffi::ulfm::revoke(self.end, self.world_rank);
        let (_, r) = ffi::ulfm::agree(self.end, 1, self.world_rank);
        let ok = r.is_ok() || r.is_err_and(|e| e.kind() == ErrorKind::ProcessFailed);
        AGREED.store(true, Ordering::SeqCst);
        SURVIVORS_ONLY.store(ok, Ordering::SeqCst);
        ok
    }
}

/// Makes the process exit with status 1 however `main` returns, once Rust has printed `main`'s error
/// and flushed standard output: an `atexit` handler that calls `_exit(1)`.
fn exit_nonzero_after_main() {
    extern "C" fn leave() {
        // SAFETY: _exit has no preconditions; it ends the process without running further handlers.
        unsafe { libc::_exit(1) }
    }
    // SAFETY: registers a function with C linkage that takes no arguments, as atexit requires.
    if unsafe { libc::atexit(leave) } != 0 {
        std::process::exit(1);
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

/// Ends every process of the job with exit code `code`, or this process alone if MPI is not
/// running.
///
/// From a thread that may call MPI (any thread at [`ThreadLevel::Multiple`]; at the lower levels,
/// the thread that initialised MPI) this is `MPI_Abort` on `MPI_COMM_WORLD`. Any other thread (the
/// watchdog's, a rayon worker that panicked) may not call MPI at all under `Funneled`, and under
/// `Serialized` not while the main thread is inside MPI, which is where a stuck job's main thread
/// is: there, the process says so and ends itself with `_exit(code)`, and the launcher ends the
/// other ranks because one ended without `MPI_Finalize` (`mpirun` and `mpiexec` always do; `srun`
/// only with `-K`/`--kill-on-bad-exit`, which the Slurm scripts pass).
///
/// In fault-tolerant mode ([`ft`]) every rank ends itself this way: Open MPI 5 started with
/// `--with-ft ulfm` does not end the job reliably on `MPI_Abort`, and treats a rank that ends as a
/// failed process. A rank that ends with an error is then recovered from like a failed one (see
/// [`crate::services::recovery`]); an error every survivor reaches (a lost partner copy) ends them all.
pub fn abort_job(code: i32) -> ! {
    use std::io::Write;
    if let Some(f) = BEFORE_ABORT.get() {
        f();
    }
    let _ = std::io::stdout().flush();
    let running = ffi::initialized() && !ffi::finalized();
    // In fault-tolerant mode the launcher does not reliably end the job on MPI_Abort (Open MPI
    // 5.0.11 with `--with-ft ulfm` left the other ranks running in 1 of 3 runs, and reported exit
    // status 0 in another): every survivor reaches the same unrecoverable error, so each ends itself.
    let mpi_here = running && may_call_mpi_here() && !ft::fault_tolerant();
    if running && !mpi_here {
        let level = ThreadLevel::from_raw(PROVIDED.load(Ordering::Relaxed));
        let why = if ft::fault_tolerant() {
            "fault-tolerant mode: the other ranks end too when they reach the same error, or recover without \
             this one"
                .to_string()
        } else {
            format!("the launcher ends the other ranks (MPI_Abort may not be called from this thread at thread level {level:?})")
        };
        eprintln!(
            "phalanx: rank {}: ending this process with exit code {code}; {why}",
            WORLD_RANK.load(Ordering::Relaxed)
        );
    }
    let _ = std::io::stderr().flush();
    if running {
        // MPI_Abort makes the launcher kill every rank at once, and MPICH's hydra then drops what
        // it had not yet forwarded from the ranks' pipes: the error that explains the abort was lost
        // in 2 of 6 runs of examples_cli's checkpoint case. A moment lets the last lines through.
        std::thread::sleep(ABORT_FLUSH);
    }
    if running && !mpi_here {
        // SAFETY: _exit has no preconditions; it ends the process at once without running atexit
        // handlers or destructors (the MPI library's among them), which is what we want here.
        unsafe { libc::_exit(code) }
    }
    ffi::abort(code)
}

/// The thread level MPI provided, as [`ThreadLevel::to_raw`] gives it.
static PROVIDED: AtomicI32 = AtomicI32::new(0);

thread_local! {
    /// Set on the thread that initialised MPI.
    static MPI_MAIN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread may call MPI while another thread may be inside it: any thread at
/// `Multiple`, else only the thread that initialised MPI (the "main" thread of the MPI standard).
pub(crate) fn may_call_mpi_here() -> bool {
    ThreadLevel::from_raw(PROVIDED.load(Ordering::Relaxed)) == ThreadLevel::Multiple
        || MPI_MAIN.try_with(std::cell::Cell::get).unwrap_or(false)
}

/// What [`abort_job`] runs first: the watchdog's goodbye (a service, so registered from above).
static BEFORE_ABORT: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Registers `f` to run at the start of [`abort_job`]; once per process, later calls are ignored.
pub(crate) fn before_abort(f: fn()) {
    let _ = BEFORE_ABORT.set(f);
}

/// How long [`abort_job`] waits for the launcher to forward this rank's last output.
const ABORT_FLUSH: std::time::Duration = std::time::Duration::from_millis(200);

fn install_abort_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Print the ordinary message (location, payload, backtrace hint) first.
            previous(info);
            if ffi::initialized() && !ffi::finalized() && INITIALISED_BY_US.load(Ordering::SeqCst) {
                let rank = WORLD_RANK.load(Ordering::Relaxed);
                eprintln!("phalanx: rank {rank} panicked; ending every rank of the job");
                abort_job(101);
            }
        }));
    });
}
