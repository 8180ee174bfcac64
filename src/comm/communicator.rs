//! The communicator handle (MPI-4.1 chapter 7: groups, contexts, communicators).

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::error::{Error, ErrorKind, Result};
use crate::ffi::{self, MPI_Comm};
use crate::runtime::activity::{self, Busy};
use crate::runtime::{Runtime, ThreadLevel};

/// A communicator: a group of ranks with its own message space.
///
/// `Comm` is neither `Send` nor `Sync`. Under [`ThreadLevel::Funneled`] (the default) only the main
/// thread may call MPI, and the type system enforces it: a rayon closure cannot capture a `Comm`.
/// Compute in parallel between communication calls:
///
/// ```no_run
/// use rayon::prelude::*;
/// let rt = phalanx::init()?;
/// let world = rt.world();
/// let mut local = vec![1.0_f64; 1 << 20];
/// local.par_iter_mut().for_each(|x| *x *= 2.0);        // threads compute...
/// let sum: f64 = local.par_iter().sum();
/// let total = world.allreduce(sum, phalanx::comm::Op::Sum)?; // ...the main thread communicates
/// # Ok::<(), phalanx::Error>(())
/// ```
///
/// With [`ThreadLevel::Multiple`], [`Comm::into_shared`] gives a [`SharedComm`] that may be used from
/// any thread.
///
/// Communicators created by [`dup`](Comm::dup) and [`split`](Comm::split) are freed on drop.
#[derive(Debug)]
pub struct Comm {
    pub(crate) raw: MPI_Comm,
    pub(crate) rank: i32,
    pub(crate) size: i32,
    pub(crate) tag_ub: i32,
    owned: bool,
    checked: AtomicU8,
    // Collectives entered on this communicator: the same count on every rank of a correct program,
    // so a sampling decision taken from it is the same on every rank.
    calls: AtomicU64,
    // Sparse exchanges started on this communicator (their tags alternate, see `sparse.rs`).
    pub(crate) sparse_rounds: AtomicU64,
    level: ThreadLevel,
    _not_send: PhantomData<*const ()>,
}

/// A communicator that may be used from several threads at once (requires [`ThreadLevel::Multiple`]).
///
/// Dereferences to [`Comm`] for every operation.
#[derive(Debug)]
pub struct SharedComm(Comm);

// SAFETY: a SharedComm is only created when MPI provides MPI_THREAD_MULTIPLE, under which MPI calls on
// one communicator from several threads are allowed (MPI-4.1 section 11.6.2). Its fields are immutable
// after construction except `checked`, an atomic.
unsafe impl Send for SharedComm {}
// SAFETY: as for Send; `&SharedComm` only gives `&Comm`, whose methods take `&self`.
unsafe impl Sync for SharedComm {}

impl std::ops::Deref for SharedComm {
    type Target = Comm;
    #[inline]
    fn deref(&self) -> &Comm {
        &self.0
    }
}

/// The result of [`Comm::split_node`]: the ranks that share this node's memory.
#[derive(Debug)]
pub struct NodeSplit {
    /// The node-local communicator (ranks sharing memory), ordered by rank in the parent.
    pub local: Comm,
    /// This node's index, `0..nodes`, ordered by the lowest parent rank on each node.
    pub node: i32,
    /// The number of nodes spanned by the parent communicator.
    pub nodes: i32,
}

/// How collectives verify their arguments across the ranks (see the [module docs](crate::comm)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckMode {
    /// Never: each rank validates only its own arguments.
    Off,
    /// The first [`SAMPLED_FIRST`] collectives on a communicator, then one in [`SAMPLED_EVERY`]: a
    /// systematic mismatch shows on the first calls, at a cost measured in `docs/PERFORMANCE.md`.
    /// The default of release builds.
    Sampled,
    /// Every collective. The default of debug builds.
    Always,
}

/// Collectives checked at the start of a communicator's life in [`CheckMode::Sampled`].
pub const SAMPLED_FIRST: u64 = 32;
/// After those, one collective in this many is checked in [`CheckMode::Sampled`].
pub const SAMPLED_EVERY: u64 = 256;

/// Whether [`CheckMode::Sampled`] checks the collective that `n` collectives on the communicator
/// preceded.
#[inline]
fn sampled(n: u64) -> bool {
    n < SAMPLED_FIRST || n.is_multiple_of(SAMPLED_EVERY)
}

fn default_mode() -> CheckMode {
    match std::env::var("PHALANX_CHECK").as_deref() {
        Ok("0") | Ok("off") | Ok("false") => CheckMode::Off,
        Ok("sampled") => CheckMode::Sampled,
        Ok(_) => CheckMode::Always,
        Err(_) if cfg!(debug_assertions) => CheckMode::Always,
        Err(_) => CheckMode::Sampled,
    }
}

impl Runtime {
    /// The communicator of every process in the job (`MPI_COMM_WORLD`).
    ///
    /// Local. Cheap: it wraps the predefined handle, which is never freed.
    #[doc(alias = "MPI_COMM_WORLD")]
    pub fn world(&self) -> Comm {
        Comm::wrap(ffi::comm_world(), false, self.thread_level())
    }
}

impl Comm {
    fn wrap(raw: MPI_Comm, owned: bool, level: ThreadLevel) -> Comm {
        ffi::set_errors_return(raw);
        if owned && crate::runtime::ft::fault_tolerant() {
            ffi::ulfm::created(raw);
        }
        Comm {
            raw,
            rank: ffi::comm_rank(raw),
            size: ffi::comm_size(raw),
            tag_ub: ffi::tag_ub(raw),
            owned,
            checked: AtomicU8::new(default_mode() as u8),
            calls: AtomicU64::new(0),
            sparse_rounds: AtomicU64::new(0),
            level,
            _not_send: PhantomData,
        }
    }

    /// Wraps a communicator that `parent` just created (freed on drop, same check mode).
    pub(super) fn wrap_owned(raw: MPI_Comm, parent: &Comm) -> Comm {
        let c = Comm::wrap(raw, true, parent.level);
        c.set_check_mode(parent.check_mode());
        c
    }

    /// This process's rank, `0..size()`.
    #[doc(alias = "MPI_Comm_rank")]
    #[inline]
    pub fn rank(&self) -> i32 {
        self.rank
    }

    /// The number of ranks.
    #[doc(alias = "MPI_Comm_size")]
    #[inline]
    pub fn size(&self) -> i32 {
        self.size
    }

    /// The thread level of the runtime this communicator came from.
    pub fn thread_level(&self) -> ThreadLevel {
        self.level
    }

    /// The largest usable tag (`MPI_TAG_UB`).
    #[doc(alias = "MPI_TAG_UB")]
    pub fn tag_ub(&self) -> i32 {
        self.tag_ub
    }

    /// Whether collectives on this communicator verify their arguments across ranks, always or
    /// sampled (see the [module docs](crate::comm)).
    pub fn is_checked(&self) -> bool {
        self.check_mode() != CheckMode::Off
    }

    /// How collectives on this communicator verify their arguments across ranks.
    #[inline]
    pub fn check_mode(&self) -> CheckMode {
        match self.checked.load(Ordering::Relaxed) {
            0 => CheckMode::Off,
            1 => CheckMode::Sampled,
            _ => CheckMode::Always,
        }
    }

    /// Turns cross-rank argument checking of collectives on ([`CheckMode::Always`]) or off.
    ///
    /// Collective in effect: every rank must make the same choice, or checked and unchecked ranks
    /// will disagree on the number of messages.
    pub fn set_checked(&self, on: bool) {
        self.set_check_mode(if on { CheckMode::Always } else { CheckMode::Off });
    }

    /// Sets how collectives on this communicator verify their arguments.
    ///
    /// Collective in effect, as [`set_checked`](Comm::set_checked).
    pub fn set_check_mode(&self, mode: CheckMode) {
        self.checked.store(mode as u8, Ordering::Relaxed);
    }

    /// Whether the next collective verifies its arguments (the same answer on every rank).
    #[inline]
    pub(crate) fn will_check(&self) -> bool {
        self.checks(self.calls.load(Ordering::Relaxed))
    }

    /// Whether the collective that `n` collectives preceded on this communicator is checked.
    #[inline]
    fn checks(&self, n: u64) -> bool {
        match self.check_mode() {
            CheckMode::Off => false,
            CheckMode::Always => true,
            CheckMode::Sampled => sampled(n),
        }
    }

    /// Counts a collective that is not checked and returns `true`; `false` (uncounted) for one that
    /// is, which the caller counts when it checks it (`agree`). [`will_check`](Comm::will_check)
    /// and [`count_collective`](Comm::count_collective) in one read of the counter, for `agree`
    /// and for the short paths that skip it.
    #[inline]
    pub(crate) fn count_unchecked(&self) -> bool {
        let n = self.calls.load(Ordering::Relaxed);
        let check = self.checks(n);
        if !check {
            self.calls.store(n.wrapping_add(1), Ordering::Relaxed);
        }
        !check
    }

    /// Counts a collective entered (see `will_check`). A load and a store, not a locked
    /// read-modify-write: collectives on one communicator are never concurrent in a correct MPI
    /// program, and this runs on every collective.
    #[inline]
    pub(crate) fn count_collective(&self) {
        self.calls.store(self.calls.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    /// The raw MPI handle, for calling MPI functions phalanx does not wrap. The handle stays owned by
    /// this `Comm`; do not free it.
    pub fn as_raw(&self) -> MPI_Comm {
        self.raw
    }

    /// A new communicator with the same group and a separate message space (libraries use one so
    /// their messages never match the application's).
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::Mpi`] if MPI cannot create the communicator.
    #[doc(alias = "MPI_Comm_dup")]
    pub fn dup(&self) -> Result<Comm> {
        let _busy = self.begin("dup")?;
        let raw = ffi::comm_dup(self.raw, self.rank)?;
        let c = Comm::wrap(raw, true, self.level);
        c.set_check_mode(self.check_mode());
        Ok(c)
    }

    /// Revokes this communicator (ULFM's `MPIX_Comm_revoke`): every operation pending or later
    /// posted on it, on every rank, fails with [`ErrorKind::Revoked`]. The way one rank that noticed
    /// a failure makes every rank stop and recover, also those blocked with live peers.
    ///
    /// Local (its effect reaches every rank).
    ///
    /// # Errors
    /// [`ErrorKind::Runtime`] when the MPI library has no ULFM.
    #[doc(alias = "MPIX_Comm_revoke")]
    pub fn revoke(&self) -> Result<()> {
        let _busy = self.begin("revoke")?;
        ffi::ulfm::revoke(self.raw, self.rank)
    }

    /// A new communicator of the ranks that have not failed (ULFM's `MPIX_Comm_shrink`), in the
    /// same order. Works on a revoked communicator.
    ///
    /// Collective over the survivors.
    ///
    /// # Errors
    /// [`ErrorKind::Runtime`] when the MPI library has no ULFM; MPI errors.
    #[doc(alias = "MPIX_Comm_shrink")]
    pub fn shrink(&self) -> Result<Comm> {
        let _busy = self.begin("shrink")?;
        let raw = ffi::ulfm::shrink(self.raw, self.rank)?;
        let c = Comm::wrap(raw, true, self.level);
        c.set_check_mode(self.check_mode());
        Ok(c)
    }

    /// Fault-tolerant agreement (ULFM's `MPIX_Comm_agree`): whether `flag` holds on every
    /// surviving rank, the same answer on each even when ranks fail during the call. Works on a
    /// revoked communicator. Also returns whether a failure was noticed during the call that this
    /// rank had not seen before ([`Comm::failed_ranks`] names the ranks).
    ///
    /// Collective over the survivors.
    ///
    /// # Errors
    /// [`ErrorKind::Runtime`] when the MPI library has no ULFM; MPI errors other than a failure.
    #[doc(alias = "MPIX_Comm_agree")]
    pub fn agree_all(&self, flag: bool) -> Result<(bool, bool)> {
        let _busy = self.begin("agree")?;
        let (f, r) = ffi::ulfm::agree(self.raw, i32::from(flag), self.rank);
        match r {
            Ok(()) => Ok((f != 0, false)),
            Err(e) if e.kind() == ErrorKind::ProcessFailed => Ok((f != 0, true)),
            Err(e) => Err(e),
        }
    }

    /// The ranks of this communicator whose failure this rank has noticed so far (ULFM's
    /// `MPIX_Comm_failure_ack` and `_get_acked`), in increasing order. Acknowledging them lets
    /// wildcard receives and [`Comm::agree_all`] go on.
    ///
    /// Local.
    ///
    /// # Errors
    /// [`ErrorKind::Runtime`] when the MPI library has no ULFM.
    pub fn failed_ranks(&self) -> Result<Vec<i32>> {
        let _busy = self.begin("failed_ranks")?;
        ffi::ulfm::failed_ranks(self.raw, self.rank)
    }

    /// Splits into sub-communicators: ranks with the same `color` end up together, ordered by `key`
    /// (ties by rank). A `None` color leaves this rank out (`MPI_UNDEFINED`) and returns `Ok(None)`.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for a negative color (MPI reserves them);
    /// [`ErrorKind::Mpi`] if MPI fails.
    #[doc(alias = "MPI_Comm_split")]
    pub fn split(&self, color: Option<i32>, key: i32) -> Result<Option<Comm>> {
        let c = match color {
            Some(c) if c < 0 => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "split",
                    Some(self.rank),
                    format!("color {c} is negative; use None to leave a rank out"),
                ))
            }
            Some(c) => c,
            None => ffi::undefined(),
        };
        let _busy = self.begin("split")?;
        let mut raw = ffi::comm_split(self.raw, c, key, self.rank)?;
        if raw == ffi::comm_null() {
            return Ok(None);
        }
        if color.is_none() {
            ffi::comm_free(&mut raw);
            return Ok(None);
        }
        let comm = Comm::wrap(raw, true, self.level);
        comm.set_check_mode(self.check_mode());
        Ok(Some(comm))
    }

    /// Splits by node: the ranks that share memory with this one, plus the node index and count.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::Mpi`] if MPI fails.
    #[doc(alias = "MPI_Comm_split_type")]
    #[doc(alias = "MPI_COMM_TYPE_SHARED")]
    pub fn split_node(&self) -> Result<NodeSplit> {
        // Only the check here: the collectives below record their own activity.
        drop(self.begin("split_node")?);
        let raw = ffi::comm_split_shared(self.raw, self.rank, self.rank)?;
        let local = Comm::wrap(raw, true, self.level);
        local.set_check_mode(self.check_mode());
        // Leaders (local rank 0) number the nodes; everyone learns its node from its leader.
        let leaders = self.split((local.rank() == 0).then_some(0), self.rank)?;
        let (mut node, mut nodes) = (0_i32, 0_i32);
        if let Some(l) = &leaders {
            node = l.rank();
            nodes = l.size();
        }
        let mut info = [node, nodes];
        local.broadcast_slice(&mut info, 0)?;
        Ok(NodeSplit { local, node: info[0], nodes: info[1] })
    }

    /// Converts into a communicator usable from several threads at once.
    ///
    /// Local.
    ///
    /// # Errors
    /// [`ErrorKind::ThreadLevel`] unless the runtime was initialised with [`ThreadLevel::Multiple`].
    pub fn into_shared(self) -> Result<SharedComm> {
        if self.level < ThreadLevel::Multiple {
            return Err(Error::new(
                ErrorKind::ThreadLevel,
                "into_shared",
                Some(self.rank),
                format!(
                    "sharing a communicator between threads needs ThreadLevel::Multiple, but the runtime has {:?}",
                    self.level
                ),
            ));
        }
        Ok(SharedComm(self))
    }

    /// Every rank learns whether any rank's `local` result failed: the first failing rank's error
    /// is returned on the others as [`ErrorKind::PeerFailed`] naming it (its message included), so
    /// that a rank-local failure before a collective never leaves the other ranks waiting in it.
    ///
    /// Collective.
    pub(crate) fn agree_result<T>(&self, op: &'static str, local: Result<T>) -> Result<T> {
        let mine = match &local {
            Ok(_) => Vec::new(),
            Err(e) => e.to_string().into_bytes(),
        };
        let all = self.allgatherv(&mine)?;
        match local {
            Err(e) => Err(e),
            Ok(v) => match all.iter().position(|m| !m.is_empty()) {
                None => Ok(v),
                Some(r) => Err(Error::new(
                    ErrorKind::PeerFailed,
                    op,
                    Some(self.rank),
                    format!("rank {r} failed: {}", String::from_utf8_lossy(all.block(r))),
                )),
            },
        }
    }

    /// The smallest and the largest of each value over all ranks, with one all-reduce (`MAX` over
    /// the values and their negations); values must stay above `i64::MIN`. Equal lists on every
    /// rank come back as `min == max`.
    ///
    /// Collective.
    pub(crate) fn min_max(&self, values: &[i64]) -> Result<(Vec<i64>, Vec<i64>)> {
        let both: Vec<i64> = values.iter().copied().chain(values.iter().map(|x| -x)).collect();
        let all = self.allreduce_vec(&both, super::Op::Max)?;
        let (max, neg_min) = all.split_at(values.len());
        Ok((neg_min.iter().map(|x| -x).collect(), max.to_vec()))
    }

    pub(crate) fn err(&self, kind: ErrorKind, op: &'static str, msg: impl Into<String>) -> Error {
        Error::new(kind, op, Some(self.rank), msg)
    }

    /// [`err`](Comm::err) with the message built out of line: for checks on paths where every call
    /// counts, so that the check itself stays small enough to inline.
    #[cold]
    #[inline(never)]
    pub(crate) fn cold_err(&self, kind: ErrorKind, op: &'static str, msg: impl FnOnce() -> String) -> Error {
        Error::new(kind, op, Some(self.rank), msg())
    }

    /// Validates a peer rank (`MPI_PROC_NULL` is not accepted here: phalanx uses `Option`).
    #[inline]
    pub(crate) fn check_peer(&self, peer: i32, what: &str, op: &'static str) -> Result<()> {
        if peer < 0 || peer >= self.size {
            return Err(self.cold_err(ErrorKind::InvalidRank, op, || {
                format!("{what} rank {peer} is outside 0..{} (communicator size {})", self.size, self.size)
            }));
        }
        Ok(())
    }

    #[inline]
    pub(crate) fn check_root(&self, root: i32, op: &'static str) -> Result<()> {
        if root < 0 || root >= self.size {
            return Err(self.cold_err(ErrorKind::InvalidRoot, op, || {
                format!("root {root} is outside 0..{} (communicator size {})", self.size, self.size)
            }));
        }
        Ok(())
    }

    #[inline]
    pub(crate) fn check_tag(&self, tag: i32, op: &'static str) -> Result<()> {
        if tag < 0 || tag > self.tag_ub {
            return Err(self.cold_err(ErrorKind::InvalidTag, op, || {
                format!("tag {tag} is outside 0..={} (MPI_TAG_UB)", self.tag_ub)
            }));
        }
        Ok(())
    }

    /// The start of operation `op`: recorded for the watchdog until the returned guard drops.
    ///
    /// Under Funneled/Single, MPI calls must come from the thread that initialised MPI. The types
    /// already prevent moving a `Comm` to another thread; this catches the remaining hole (a `Comm`
    /// created on a non-main thread through raw handles) cheaply in debug builds.
    #[inline]
    pub(crate) fn begin(&self, op: &'static str) -> Result<Busy> {
        if crate::runtime::mpi_ended() {
            return Err(self.err(
                ErrorKind::Runtime,
                op,
                "MPI has been finalised (the phalanx Runtime was dropped); communicators cannot be used after it",
            ));
        }
        if cfg!(debug_assertions) && self.level <= ThreadLevel::Funneled && !ffi::is_thread_main() {
            return Err(self.err(
                ErrorKind::ThreadLevel,
                op,
                format!("called from a thread other than the main thread under {:?}", self.level),
            ));
        }
        Ok(activity::enter(op, -1))
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        if self.owned && !ffi::finalized() {
            if crate::runtime::ft::fault_tolerant() {
                ffi::ulfm::free_registered(&mut self.raw);
            } else {
                ffi::comm_free(&mut self.raw);
            }
        }
    }
}
