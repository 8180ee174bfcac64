//! Nonblocking operations on *borrowed* buffers, inside a scope that waits for all of them.
//!
//! Owning requests ([`Comm::isend`]) are the simplest safe API but force one buffer per message in
//! flight. A [`Scope`] works like `std::thread::scope`: requests borrow their buffers for the scope's
//! lifetime, and the scope itself keeps every `MPI_Request`, so when the closure returns it waits for
//! whatever is still in flight. Forgetting or leaking a handle therefore cannot let a buffer be freed
//! or reused while MPI still owns it: the borrow checker keeps the buffer borrowed until the scope
//! ends, and the scope does not end before MPI is done.
//!
//! Nonblocking collectives ([`Scope::ibroadcast`], [`Scope::iallgatherv`], ...) may borrow buffers
//! the same way; see `nonblocking.rs`.
//!
//! Several sends may borrow the same buffer (shared borrows, allowed by MPI-3 and later); a receive
//! borrows its buffer exclusively.
//!
//! # When the closure unwinds
//! A panic normally aborts the job (see [`crate::runtime`]), but a program may replace the panic hook
//! or catch the unwind (`std::panic::catch_unwind` around the scope). The scope then still finishes
//! every request before the borrowed buffers can be freed, as `std::thread::scope` joins its threads:
//! it catches the unwind, cancels the receives still in flight (waiting alone would hang when the
//! peer never sends), waits for every request, and then lets the unwind continue. A collective
//! cannot be cancelled: it is waited for, which returns once the other ranks have taken part (and
//! blocks until they do). A cancelled receive leaves its message, if one comes, for
//! a later receive; a send waits until MPI is done with its buffer.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::marker::PhantomData;
use std::mem::MaybeUninit;

use bytemuck::Pod;
use smallvec::SmallVec;

use super::counts::Counts;
use super::p2p::{Source, Status, Tag};
use super::Comm;
use crate::error::Result;
use crate::ffi::{self, MPI_Request, MPI_Status};

// A scope's requests, inline for the usual few (MPI keeps no pointer to a handle after a call).
type Reqs = SmallVec<[MPI_Request; 4]>;
type Done = SmallVec<[Option<MPI_Status>; 4]>;

/// Count arrays of a scope's nonblocking v-collectives: the first `SLOTS` in the scope itself (it
/// stays in place while borrowed), so the usual one or two per scope allocate nothing; later ones
/// boxed. Nothing is initialised before it is handed out.
struct CountSlots {
    inline: [UnsafeCell<MaybeUninit<(Counts, Counts)>>; SLOTS],
    used: Cell<usize>,
    // From `Box::into_raw`, freed on drop.
    boxed: RefCell<Vec<*mut (Counts, Counts)>>,
}

const SLOTS: usize = 2;

impl CountSlots {
    fn new() -> Self {
        CountSlots {
            inline: [const { UnsafeCell::new(MaybeUninit::uninit()) }; SLOTS],
            used: Cell::new(0),
            boxed: RefCell::new(Vec::new()),
        }
    }

    /// A pair no one else has been given, initialised empty.
    #[inline]
    fn take(&self) -> *mut (Counts, Counts) {
        let i = self.used.get();
        if i < SLOTS {
            let p = self.inline[i].get().cast::<(Counts, Counts)>();
            // SAFETY: slot `i` was never handed out (`used` counts the ones that were), so
            // nothing refers to it; writing initialises it.
            unsafe { p.write(Default::default()) };
            // Counted once initialised: `Drop` drops the first `used`.
            self.used.set(i + 1);
            p
        } else {
            let p = Box::into_raw(Box::<(Counts, Counts)>::default());
            self.boxed.borrow_mut().push(p);
            p
        }
    }
}

impl Drop for CountSlots {
    fn drop(&mut self) {
        for slot in &mut self.inline[..self.used.get()] {
            // SAFETY: the first `used` slots were initialised by `take`; dropped once, here.
            unsafe { slot.get_mut().assume_init_drop() };
        }
        for &p in self.boxed.get_mut().iter() {
            // SAFETY: made by `Box::into_raw` in `take`, freed once, here.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// A region in which nonblocking operations may borrow buffers; see [`Comm::scope`].
///
/// A buffer lent to a scoped receive cannot be read before the scope ends:
///
/// ```compile_fail
/// # let rt = phalanx::init().unwrap(); let world = rt.world();
/// let mut buf = [0u8; 4];
/// world.scope(|s| {
///     let _r = s.irecv(&mut buf, 0, 0).unwrap();
///     println!("{}", buf[0]); // error: `buf` is mutably borrowed by the receive
/// });
/// ```
///
/// and a scoped send's buffer cannot be modified while the send may be in flight:
///
/// ```compile_fail
/// # let rt = phalanx::init().unwrap(); let world = rt.world();
/// let mut buf = vec![0u8; 4];
/// world.scope(|s| {
///     let _ = s.isend(&buf, 0, 0).unwrap();
///     buf[0] = 1; // error: `buf` is borrowed by the send
/// });
/// ```
pub struct Scope<'scope, 'env: 'scope> {
    comm: &'env Comm,
    reqs: RefCell<Reqs>,
    // Statuses of requests that `progress` found complete, kept for their handles' `wait`.
    done: RefCell<Done>,
    // Which requests are receives, one bit each (cancelled, not only waited for, when the scope
    // unwinds).
    receives: RefCell<SmallVec<[u64; 2]>>,
    // The count arrays of nonblocking v-collectives, which MPI reads until they complete: dropped
    // only with the scope, after every wait.
    counts: CountSlots,
    _scope: PhantomData<&'scope mut &'scope ()>,
    _env: PhantomData<&'env mut &'env ()>,
}

/// A send started in a [`Scope`]. Waiting is optional: the scope waits at its end.
#[must_use = "wait for the send, or let the scope wait for it at its end"]
pub struct ScopedSend<'scope> {
    idx: usize,
    reqs: &'scope RefCell<Reqs>,
    done: &'scope RefCell<Done>,
    rank: i32,
}

/// A nonblocking collective started in a [`Scope`]. Waiting is optional: the scope waits at its
/// end; the results are in the borrowed buffers once it has completed.
#[must_use = "wait for the collective, or let the scope wait for it at its end"]
pub struct ScopedCollective<'scope> {
    idx: usize,
    reqs: &'scope RefCell<Reqs>,
    done: &'scope RefCell<Done>,
    op: &'static str,
    rank: i32,
}

/// A receive started in a [`Scope`]; `wait` returns its status.
#[must_use = "a receive's status (and errors such as truncation) is only seen through wait"]
pub struct ScopedRecv<'scope, T> {
    idx: usize,
    reqs: &'scope RefCell<Reqs>,
    done: &'scope RefCell<Done>,
    comm: &'scope Comm,
    capacity: usize,
    _elem: PhantomData<T>,
}

impl Comm {
    /// Runs `f` with a [`Scope`] in which nonblocking sends and receives may borrow buffers; waits
    /// for every operation still in flight before returning.
    ///
    /// Local, except for what is started inside: point-to-point operations, and nonblocking
    /// collectives, whose completion at the end of the scope waits for the other ranks to take part.
    ///
    /// ```no_run
    /// # let rt = phalanx::init()?; let world = rt.world();
    /// let (left, right) = ((world.rank() + world.size() - 1) % world.size(), (world.rank() + 1) % world.size());
    /// let send = vec![world.rank() as f64; 1024];
    /// let mut from_left = vec![0.0; 1024];
    /// world.scope(|s| -> phalanx::Result<()> {
    ///     let r = s.irecv(&mut from_left, left, 0)?;
    ///     s.isend(&send, right, 0)?;          // no need to keep the handle
    ///     // ... compute on data that is not in flight ...
    ///     r.wait()?;
    ///     Ok(())
    /// })?;
    /// # Ok::<(), phalanx::Error>(())
    /// ```
    pub fn scope<'env, R>(&'env self, f: impl for<'scope> FnOnce(&'scope Scope<'scope, 'env>) -> R) -> R {
        let scope = Scope {
            comm: self,
            reqs: RefCell::new(Reqs::new()),
            done: RefCell::new(Done::new()),
            receives: RefCell::new(SmallVec::new()),
            counts: CountSlots::new(),
            _scope: PhantomData,
            _env: PhantomData,
        };
        // As `std::thread::scope` does: catch an unwind from `f`, finish every request (cancelling
        // receives first), and only then let the unwind continue and the buffers go.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&scope))) {
            Ok(out) => {
                scope.wait_all_inner();
                out
            }
            Err(payload) => {
                scope.cancel_and_wait();
                std::panic::resume_unwind(payload)
            }
        }
    }
}

impl<'scope, 'env> Scope<'scope, 'env> {
    #[inline]
    fn push(&'scope self, req: MPI_Request, is_recv: bool) -> usize {
        let mut r = self.reqs.borrow_mut();
        if r.len() == r.capacity() {
            // Past the inline few, grow in large steps: a scope with many requests (a window of
            // messages) would otherwise reallocate at 8, 16, 32, ...
            let n = r.len();
            r.reserve(n.max(60));
        }
        r.push(req);
        let idx = r.len() - 1;
        if is_recv {
            let mut bits = self.receives.borrow_mut();
            if bits.len() <= idx / 64 {
                bits.resize(idx / 64 + 1, 0);
            }
            bits[idx / 64] |= 1 << (idx % 64);
        }
        idx
    }

    /// Registers a nonblocking collective.
    #[inline]
    pub(super) fn push_collective(&'scope self, req: MPI_Request) -> usize {
        self.push(req, false)
    }

    /// A new, empty pair of count arrays that stays at its address, and is touched by nobody else,
    /// until the scope is dropped (after it has waited for every request).
    #[inline]
    pub(super) fn count_slot(&'scope self) -> *mut (Counts, Counts) {
        self.counts.take()
    }

    #[inline]
    pub(super) fn collective_handle(&'scope self, idx: usize, op: &'static str) -> ScopedCollective<'scope> {
        ScopedCollective { idx, reqs: &self.reqs, done: &self.done, op, rank: self.comm.rank }
    }

    /// Drives every operation of the scope forward (`MPI_Test` on each); returns `true` when all have
    /// completed. Call it between chunks of computation: without asynchronous progress, large
    /// messages move only inside MPI calls. Handles of completed operations still report their
    /// status through `wait`.
    ///
    /// Local.
    ///
    /// # Errors
    /// An MPI error reported by a completed operation.
    #[doc(alias = "MPI_Test")]
    pub fn progress(&self) -> Result<bool> {
        let mut reqs = self.reqs.borrow_mut();
        let mut done = self.done.borrow_mut();
        // Statuses are kept only once `progress` is used (`wait` asks MPI otherwise).
        done.resize(reqs.len(), None);
        let mut all = true;
        for (r, d) in reqs.iter_mut().zip(done.iter_mut()) {
            if *r == ffi::request_null() {
                continue;
            }
            let (res, st) = ffi::test(r, "scope progress", self.comm.rank);
            if res? {
                *d = Some(st);
            } else {
                all = false;
            }
        }
        Ok(all)
    }

    /// The communicator the scope was opened on.
    pub fn comm(&self) -> &'env Comm {
        self.comm
    }

    /// Starts sending `data` (borrowed until the scope ends) to `dest`.
    ///
    /// Point-to-point.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRank`](crate::ErrorKind::InvalidRank),
    /// [`ErrorKind::InvalidTag`](crate::ErrorKind::InvalidTag), count overflow, MPI errors.
    #[doc(alias = "MPI_Isend")]
    pub fn isend<T: Pod>(&'scope self, data: &'scope [T], dest: i32, tag: Tag) -> Result<ScopedSend<'scope>> {
        let c = self.comm;
        let _busy = c.begin("isend")?;
        c.check_peer(dest, "destination", "isend")?;
        c.check_tag(tag, "isend")?;
        // SAFETY: `data` is borrowed for 'scope, and `Comm::scope` waits for this request (kept in
        // `self.reqs`) before 'scope ends, whatever happens to the returned handle, and also when
        // the closure unwinds. Shared borrows
        // only allow reads, which concurrent sends may do.
        let req = unsafe { ffi::isend(data.as_ptr(), data.len(), dest, tag, c.raw, "isend", c.rank)? };
        Ok(ScopedSend { idx: self.push(req, false), reqs: &self.reqs, done: &self.done, rank: c.rank })
    }

    /// Starts receiving into `buf` (borrowed exclusively until the scope ends).
    ///
    /// Point-to-point. Truncation is reported by [`ScopedRecv::wait`] (not for messages from this
    /// rank itself: see [`Comm::irecv`]).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRank`](crate::ErrorKind::InvalidRank),
    /// [`ErrorKind::InvalidTag`](crate::ErrorKind::InvalidTag), count overflow, MPI errors.
    #[doc(alias = "MPI_Irecv")]
    pub fn irecv<T: Pod>(
        &'scope self,
        buf: &'scope mut [T],
        source: impl Into<Source>,
        tag: Tag,
    ) -> Result<ScopedRecv<'scope, T>> {
        let c = self.comm;
        let (src, tag, _busy) = c.recv_args(source.into(), tag, "irecv")?;
        let capacity = buf.len();
        // SAFETY: `buf` is borrowed exclusively for 'scope and the scope waits for this request
        // before 'scope ends (on unwinding too: it cancels, then waits), so MPI is the
        // only writer until completion and the memory stays valid.
        let req = unsafe { ffi::irecv(buf.as_mut_ptr(), capacity, src, tag, c.raw, "irecv", c.rank)? };
        Ok(ScopedRecv {
            idx: self.push(req, true),
            reqs: &self.reqs,
            done: &self.done,
            comm: c,
            capacity,
            _elem: PhantomData,
        })
    }

    /// Waits for every operation started so far in this scope.
    ///
    /// # Errors
    /// The first MPI error reported by any of them.
    #[doc(alias = "MPI_Waitall")]
    #[inline]
    pub fn wait_all(&self) -> Result<()> {
        let mut reqs = self.reqs.borrow_mut();
        // Each handle waited for already (the usual end of a scope): nothing for MPI to do.
        let null = ffi::request_null();
        if reqs.iter().all(|&r| r == null) {
            return Ok(());
        }
        let mut st: SmallVec<[MPI_Status; 4]> = smallvec::smallvec![ffi::new_status(); reqs.len()];
        ffi::waitall(&mut reqs, &mut st, "waitall", self.comm.rank)
    }

    /// After an unwind: cancels the receives still in flight (their peers may never send), then
    /// waits for every request, so that MPI has let go of every borrowed buffer.
    fn cancel_and_wait(&self) {
        let mut reqs = self.reqs.borrow_mut();
        let bits = self.receives.borrow();
        for (i, r) in reqs.iter_mut().enumerate() {
            let is_recv = bits.get(i / 64).is_some_and(|b| b & (1 << (i % 64)) != 0);
            if is_recv && *r != ffi::request_null() {
                ffi::cancel(r);
            }
        }
        let mut st: SmallVec<[MPI_Status; 4]> = smallvec::smallvec![ffi::new_status(); reqs.len()];
        // Errors are of no use to anyone here; what matters is that MPI is done with the buffers.
        if ffi::waitall(&mut reqs, &mut st, "scope unwinding", self.comm.rank).is_err() {
            for r in reqs.iter_mut().filter(|r| **r != ffi::request_null()) {
                let _ = ffi::wait(r, "scope unwinding", self.comm.rank);
            }
        }
    }

    #[inline]
    fn wait_all_inner(&self) {
        // Errors here would already have been reported to anyone who waited; the point is only that
        // MPI is done with every borrowed buffer: after an error (`MPI_ERR_PENDING` leaves requests
        // in flight) each request still pending is waited for on its own.
        if self.wait_all().is_err() {
            let mut reqs = self.reqs.borrow_mut();
            for r in reqs.iter_mut().filter(|r| **r != ffi::request_null()) {
                let _ = ffi::wait(r, "scope end", self.comm.rank);
            }
        }
    }
}

#[inline]
fn wait_one(
    reqs: &RefCell<Reqs>,
    done: &RefCell<Done>,
    idx: usize,
    op: &'static str,
    rank: i32,
) -> (Result<()>, MPI_Status) {
    if let Some(st) = done.borrow_mut().get_mut(idx).and_then(Option::take) {
        return (Ok(()), st);
    }
    let mut r = reqs.borrow_mut();
    ffi::wait(&mut r[idx], op, rank)
}

impl ScopedSend<'_> {
    /// Blocks until the send has completed.
    ///
    /// # Errors
    /// An MPI error reported at completion.
    #[doc(alias = "MPI_Wait")]
    #[inline]
    pub fn wait(self) -> Result<()> {
        wait_one(self.reqs, self.done, self.idx, "isend.wait", self.rank).0
    }
}

impl ScopedCollective<'_> {
    /// Blocks until this rank's part of the collective has completed; its results are then in the
    /// buffers lent to it (readable once the scope has ended).
    ///
    /// # Errors
    /// An MPI error reported at completion.
    #[doc(alias = "MPI_Wait")]
    #[inline]
    pub fn wait(self) -> Result<()> {
        wait_one(self.reqs, self.done, self.idx, self.op, self.rank).0
    }
}

impl<T: Pod> ScopedRecv<'_, T> {
    /// Blocks until the message has arrived and returns its status.
    ///
    /// # Errors
    /// [`ErrorKind::Truncated`](crate::ErrorKind::Truncated),
    /// [`ErrorKind::TypeMismatch`](crate::ErrorKind::TypeMismatch), MPI errors.
    #[doc(alias = "MPI_Wait")]
    #[inline]
    pub fn wait(self) -> Result<Status> {
        let (res, st) = wait_one(self.reqs, self.done, self.idx, "irecv.wait", self.comm.rank);
        self.comm.finish_recv::<T>(res, &st, self.capacity, "irecv")
    }
}
