//! Nonblocking collectives (MPI-4.1 section 6.12): owning requests, and scoped ones on borrowed
//! buffers.
//!
//! Each operation comes in the two disciplines of point-to-point:
//! - **owning** ([`Comm::ibroadcast`], ...): the request owns every buffer MPI may touch (the data,
//!   the result, and the count and displacement arrays of the v-variants, which MPI may read until
//!   completion) and hands the result back from `wait`. Dropping an unfinished request waits for it
//!   (a collective cannot be cancelled); leaking it leaks the buffers.
//! - **scoped** ([`Scope::ibroadcast`], ...): the buffers are borrowed for the scope, which waits
//!   for every operation before it ends, also when its closure unwinds.
//!
//! Argument checks run before the operation starts and, in checked mode, agree across the ranks
//! with one small blocking all-reduce (see [`crate::comm`]); the v-variants take the counts from the
//! caller, since learning them would need a blocking collective first (see `counts.rs`).
//!
//! Open MPI 4.1 has no asynchronous progress: a nonblocking collective moves forward only inside
//! MPI calls, so call `test` (or [`Scope::progress`]) now and then while computing.

use std::marker::PhantomData;

use bytemuck::Pod;
use smallvec::SmallVec;

use super::check::Signature;
use super::collective::{elem_size, Blocks, Bounds};
use super::counts::{Counts, RecvBuf};
use super::scope::{Scope, ScopedCollective};
use super::{Comm, Op};
use crate::error::{ErrorKind, Result};
use crate::ffi::{self, MPI_Request};

// A collective's requests: inline for an MPI collective's one (no allocation per call).
pub(super) type Reqs = SmallVec<[MPI_Request; 1]>;

/// An in-flight nonblocking collective; owns its buffers until it completes, and `wait` returns its
/// result (`()` for a barrier, the data for the others).
#[must_use = "a collective request must be waited for (dropping it blocks until it completes)"]
pub struct CollectiveRequest<O> {
    // One request for an MPI collective; for a neighbourhood exchange phalanx runs itself (see
    // `topology.rs`) its receives and sends.
    reqs: Reqs,
    // Owns every buffer MPI may touch, and turns them into the result once MPI is done.
    finish: Option<Box<dyn FnOnce() -> O>>,
    op: &'static str,
    rank: i32,
    _not_send: PhantomData<*const ()>,
}

impl<O> std::fmt::Debug for CollectiveRequest<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectiveRequest").field("op", &self.op).field("rank", &self.rank).finish()
    }
}

impl<O> CollectiveRequest<O> {
    pub(super) fn new(req: MPI_Request, op: &'static str, rank: i32, finish: Box<dyn FnOnce() -> O>) -> Self {
        Self::with_requests(smallvec::smallvec![req], op, rank, finish)
    }

    /// Several requests (a neighbour exchange phalanx runs with its own messages), all reading and
    /// writing only buffers that `finish` owns.
    pub(super) fn with_requests(reqs: Reqs, op: &'static str, rank: i32, finish: Box<dyn FnOnce() -> O>) -> Self {
        CollectiveRequest { reqs, finish: Some(finish), op, rank, _not_send: PhantomData }
    }

    /// Blocks until the operation completes on this rank and returns its result.
    ///
    /// Local (completes this rank's part of the collective).
    ///
    /// # Errors
    /// An MPI error reported at completion.
    #[doc(alias = "MPI_Wait")]
    pub fn wait(mut self) -> Result<O> {
        let res = if let [req] = &mut self.reqs[..] {
            ffi::wait(req, self.op, self.rank).0
        } else {
            let mut st = vec![ffi::new_status(); self.reqs.len()];
            ffi::waitall(&mut self.reqs, &mut st, self.op, self.rank)
        };
        self.keep_on_failure(res)?;
        let finish = self.finish.take().expect("a request is finished once");
        Ok(finish())
    }

    /// Drives progress; returns `true` once the operation has completed (then `wait` returns at once).
    ///
    /// Local.
    ///
    /// # Errors
    /// An MPI error reported at completion.
    #[doc(alias = "MPI_Test")]
    pub fn test(&mut self) -> Result<bool> {
        if self.reqs.iter().all(|r| *r == ffi::request_null()) {
            return Ok(true);
        }
        let res = if let [req] = &mut self.reqs[..] {
            ffi::test(req, self.op, self.rank).0
        } else {
            ffi::testall(&mut self.reqs, self.op, self.rank)
        };
        self.keep_on_failure(res)
    }

    /// In fault-tolerant mode, after a failure (a failed member, a revoked communicator) the
    /// buffers `finish` owns are leaked, never freed: MPI may still use them (see
    /// `request::keep_on_failure`).
    fn keep_on_failure<R>(&mut self, res: Result<R>) -> Result<R> {
        if res.as_ref().is_err_and(crate::runtime::ft::failure) {
            std::mem::forget(self.finish.take());
        }
        res
    }
}

impl<O> Drop for CollectiveRequest<O> {
    fn drop(&mut self) {
        if self.reqs.iter().all(|r| *r == ffi::request_null()) || ffi::finalized() {
            return;
        }
        // Collectives cannot be cancelled: the buffers must outlive the operation. A neighbour
        // exchange phalanx runs with its own messages is waited for the same way, not cancelled:
        // every rank agreed to it and posted its sends, and a cancelled receive would leave its
        // message to be taken by the next exchange on the communicator.
        let mut st = vec![ffi::new_status(); self.reqs.len()];
        if let Err(e) = ffi::waitall(&mut self.reqs, &mut st, self.op, self.rank) {
            for r in self.reqs.iter_mut().filter(|r| **r != ffi::request_null()) {
                let _ = ffi::wait(r, self.op, self.rank);
            }
            let _ = self.keep_on_failure(Err::<(), _>(e));
        }
    }
}

impl Comm {
    // ---------------------------------------------------------------------------------------------
    // Starters shared by the owning and the scoped forms. Each checks its arguments, agrees in
    // checked mode, and starts the operation on the given buffers.
    //
    // Safety contract of every starter: the buffers stay valid until the request completes, those
    // MPI reads are not modified and those MPI writes are not accessed by anyone else until then.
    // The same holds for `keep`, where v-variants write their count arrays: it must stay at its
    // address, untouched, until completion (a box, or a slot of the scope).
    // ---------------------------------------------------------------------------------------------

    unsafe fn start_ibarrier(&self) -> Result<MPI_Request> {
        const OP: &str = "ibarrier";
        let _busy = self.begin(OP)?;
        self.agree(OP, Ok(()), Signature::default())?;
        ffi::ibarrier(self.raw, OP, self.rank)
    }

    unsafe fn start_ibroadcast<T: Pod>(&self, buf: &mut [T], root: i32) -> Result<MPI_Request> {
        const OP: &str = "ibroadcast";
        let _busy = self.begin(OP)?;
        let local = self.check_root(root, OP);
        let sig = Signature {
            root: Some(root as i64),
            count: Some(buf.len() as i64),
            elem_size: elem_size::<T>(),
            ..Default::default()
        };
        self.agree(OP, local, sig)?;
        self.check_root(root, OP)?;
        // SAFETY: forwarded from this function's contract.
        let req = unsafe { ffi::nonblocking::ibcast(ffi::recv_ptr(buf), buf.len(), root, self.raw, OP, self.rank)? };
        Ok(req)
    }

    unsafe fn start_iallreduce<T: Pod>(&self, send: &[T], recv: &mut [T], op: Op) -> Result<MPI_Request> {
        const OP: &str = "iallreduce";
        let _busy = self.begin(OP)?;
        let resolved = op.resolve::<T>(OP, self.rank);
        let local = resolved.as_ref().map(|_| ()).map_err(Clone::clone).and_then(|_| {
            self.local_check(recv.len() == send.len(), ErrorKind::InvalidArgument, OP, || {
                format!("a result buffer of {} elements for {} sent", recv.len(), send.len())
            })
        });
        let sig = Signature {
            count: Some(send.len() as i64),
            elem_size: elem_size::<T>(),
            reduce_op: Some(op.index() as i64),
            root: None,
        };
        self.agree(OP, local, sig)?;
        let (mpi_op, dt) = resolved?;
        // SAFETY: forwarded from this function's contract; both buffers hold `send.len()` elements.
        let req = unsafe {
            ffi::iallreduce_typed(
                ffi::send_ptr(send),
                ffi::recv_ptr(recv),
                send.len(),
                dt,
                mpi_op,
                self.raw,
                OP,
                self.rank,
            )?
        };
        Ok(req)
    }

    /// A given `recv` must hold the sum of `counts` on the root (it is not read elsewhere); a new
    /// one is allocated once the counts have passed their checks.
    unsafe fn start_igatherv<T: Pod>(
        &self,
        send: &[T],
        recv: &mut RecvBuf<T>,
        counts: &[usize],
        root: i32,
        keep: &mut Counts,
    ) -> Result<MPI_Request> {
        const OP: &str = "igatherv";
        let _busy = self.begin(OP)?;
        let have = recv.have().filter(|_| self.rank == root);
        self.gather_counts::<T>(send.len(), counts, have, root, keep, OP)?;
        let recv = recv.slice(keep.total);
        // SAFETY: forwarded from this function's contract; on the root every block lies inside
        // `recv` (checked above); the count arrays are in `keep`.
        unsafe {
            ffi::nonblocking::igatherv(
                ffi::send_ptr(send),
                send.len(),
                ffi::recv_ptr(recv),
                keep.mpi().as_ptr(),
                keep.displs().as_ptr(),
                root,
                self.raw,
                OP,
                self.rank,
            )
        }
    }

    unsafe fn start_iallgatherv<T: Pod>(
        &self,
        send: &[T],
        recv: &mut RecvBuf<T>,
        counts: &[usize],
        keep: &mut Counts,
    ) -> Result<MPI_Request> {
        const OP: &str = "iallgatherv";
        let _busy = self.begin(OP)?;
        self.allgather_counts::<T>(send.len(), counts, recv.have(), keep, OP)?;
        let recv = recv.slice(keep.total);
        // SAFETY: as in `start_igatherv`, on every rank.
        unsafe {
            ffi::nonblocking::iallgatherv(
                ffi::send_ptr(send),
                send.len(),
                ffi::recv_ptr(recv),
                keep.mpi().as_ptr(),
                keep.displs().as_ptr(),
                self.raw,
                OP,
                self.rank,
            )
        }
    }

    unsafe fn start_ialltoall<T: Pod>(&self, send: &[T], recv: &mut [T]) -> Result<MPI_Request> {
        const OP: &str = "ialltoall";
        let _busy = self.begin(OP)?;
        let per = self.agree_alltoall::<T>(send.len(), recv.len(), OP)?;
        // SAFETY: forwarded from this function's contract; both buffers hold `size * per` elements.
        let req = unsafe {
            ffi::nonblocking::ialltoall(ffi::send_ptr(send), ffi::recv_ptr(recv), per, self.raw, OP, self.rank)?
        };
        Ok(req)
    }

    unsafe fn start_ialltoallv<T: Pod>(
        &self,
        send: &[T],
        send_counts: &[usize],
        recv: &mut RecvBuf<T>,
        recv_counts: &[usize],
        keep: &mut (Counts, Counts),
    ) -> Result<MPI_Request> {
        const OP: &str = "ialltoallv";
        let _busy = self.begin(OP)?;
        let (s, r) = keep;
        self.alltoall_counts::<T>(send.len(), send_counts, recv_counts, recv.have(), (s, r), OP)?;
        let recv = recv.slice(r.total);
        // SAFETY: as in `start_igatherv`; every block lies inside its buffer (checked above).
        unsafe {
            ffi::nonblocking::ialltoallv(
                ffi::send_ptr(send),
                s.mpi().as_ptr(),
                s.displs().as_ptr(),
                ffi::recv_ptr(recv),
                r.mpi().as_ptr(),
                r.displs().as_ptr(),
                self.raw,
                OP,
                self.rank,
            )
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Owning forms
    // ---------------------------------------------------------------------------------------------

    /// Starts a barrier; `wait` returns once every rank has started it. Use it to detect that all
    /// ranks reached a point while doing other work.
    ///
    /// Collective (nonblocking).
    ///
    /// # Errors
    /// [`ErrorKind::CollectiveMismatch`] in checked mode if other ranks started another collective.
    #[doc(alias = "MPI_Ibarrier")]
    pub fn ibarrier(&self) -> Result<CollectiveRequest<()>> {
        // SAFETY: no buffer is involved.
        let req = unsafe { self.start_ibarrier()? };
        Ok(CollectiveRequest::new(req, "ibarrier", self.rank, Box::new(|| ())))
    }

    /// Starts broadcasting the root's `data` into every rank's `data` (all ranks pass a vector of
    /// the same length); `wait` returns it.
    ///
    /// Collective (nonblocking).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRoot`]; in checked mode [`ErrorKind::CollectiveMismatch`] if the lengths
    /// or element types differ (Open MPI 4.1 itself accepts a shorter root buffer silently).
    #[doc(alias = "MPI_Ibcast")]
    pub fn ibroadcast<T: Pod>(&self, mut data: Vec<T>, root: i32) -> Result<CollectiveRequest<Vec<T>>> {
        // SAFETY: `data`'s heap buffer moves into the request's closure and is touched by nobody
        // until completion; Drop waits first; leaking the request leaks it.
        let req = unsafe { self.start_ibroadcast(&mut data, root)? };
        Ok(CollectiveRequest::new(req, "ibroadcast", self.rank, Box::new(move || data)))
    }

    /// Starts gathering every rank's `send` on `root`, `counts[r]` elements from rank r (the counts
    /// are read on the root only: others may pass `&[]`); `wait` returns `Some(blocks)` on the root.
    ///
    /// Collective (nonblocking; the argument checks before it starts agree across the ranks in
    /// checked mode, see [`gatherv_counts`](Comm::gatherv_counts)).
    ///
    /// # Errors
    /// As [`gatherv_counts`](Comm::gatherv_counts).
    #[doc(alias = "MPI_Igatherv")]
    pub fn igatherv<T: Pod>(
        &self,
        send: Vec<T>,
        counts: &[usize],
        root: i32,
    ) -> Result<CollectiveRequest<Option<Blocks<T>>>> {
        // Allocated by the starter once the counts have passed their checks.
        let mut recv = RecvBuf::New(Vec::new());
        // Boxed: MPI reads the count arrays until completion, and the box moves into the request.
        let mut keep = Box::<Counts>::default();
        // SAFETY: both buffers and the boxed count arrays move into the request (moving a Vec or a
        // Box does not move its heap block) and are touched by nobody until completion; Drop waits
        // first; leaking the request leaks them.
        let req = unsafe { self.start_igatherv(&send, &mut recv, counts, root, &mut keep)? };
        let recv = recv.into_vec();
        // Checked on the root to be this list (as MPI received it).
        let bounds = (self.rank == root).then(|| Bounds::of(counts));
        Ok(CollectiveRequest::new(
            req,
            "igatherv",
            self.rank,
            Box::new(move || {
                drop((send, keep));
                bounds.map(|b| Blocks::from_parts(recv, b))
            }),
        ))
    }

    /// Starts gathering every rank's `send` on every rank, `counts[r]` elements from rank r (the
    /// same list everywhere); `wait` returns the blocks.
    ///
    /// Collective (nonblocking; see [`allgatherv_counts`](Comm::allgatherv_counts) for the checks).
    ///
    /// # Errors
    /// As [`allgatherv_counts`](Comm::allgatherv_counts).
    #[doc(alias = "MPI_Iallgatherv")]
    pub fn iallgatherv<T: Pod>(&self, send: Vec<T>, counts: &[usize]) -> Result<CollectiveRequest<Blocks<T>>> {
        let mut recv = RecvBuf::New(Vec::new());
        let mut keep = Box::<Counts>::default();
        // SAFETY: as in `igatherv`.
        let req = unsafe { self.start_iallgatherv(&send, &mut recv, counts, &mut keep)? };
        let recv = recv.into_vec();
        let bounds = Bounds::of(counts);
        Ok(CollectiveRequest::new(
            req,
            "iallgatherv",
            self.rank,
            Box::new(move || {
                drop((send, keep));
                Blocks::from_parts(recv, bounds)
            }),
        ))
    }

    /// Starts a personalised exchange of equal blocks (as [`alltoall`](Comm::alltoall)); `wait`
    /// returns the received blocks.
    ///
    /// Collective (nonblocking).
    ///
    /// # Errors
    /// As [`alltoall`](Comm::alltoall).
    #[doc(alias = "MPI_Ialltoall")]
    pub fn ialltoall<T: Pod>(&self, send: Vec<T>) -> Result<CollectiveRequest<Vec<T>>> {
        let mut recv = vec![T::zeroed(); send.len()];
        // SAFETY: as in `igatherv`.
        let req = unsafe { self.start_ialltoall(&send, &mut recv)? };
        Ok(CollectiveRequest::new(
            req,
            "ialltoall",
            self.rank,
            Box::new(move || {
                drop(send);
                recv
            }),
        ))
    }

    /// Starts a personalised exchange of blocks of given lengths (as
    /// [`alltoallv_counts`](Comm::alltoallv_counts)); `wait` returns the received blocks.
    ///
    /// Collective (nonblocking).
    ///
    /// # Errors
    /// As [`alltoallv_counts`](Comm::alltoallv_counts); [`ErrorKind::PeerFailed`] on every other
    /// rank when one rank's arguments were wrong.
    #[doc(alias = "MPI_Ialltoallv")]
    pub fn ialltoallv<T: Pod>(
        &self,
        send: Vec<T>,
        send_counts: &[usize],
        recv_counts: &[usize],
    ) -> Result<CollectiveRequest<Blocks<T>>> {
        let mut recv = RecvBuf::New(Vec::new());
        let mut keep = Box::<(Counts, Counts)>::default();
        // SAFETY: as in `igatherv`.
        let req = unsafe { self.start_ialltoallv(&send, send_counts, &mut recv, recv_counts, &mut keep)? };
        let recv = recv.into_vec();
        let bounds = Bounds::of(recv_counts);
        Ok(CollectiveRequest::new(
            req,
            "ialltoallv",
            self.rank,
            Box::new(move || {
                drop((send, keep));
                Blocks::from_parts(recv, bounds)
            }),
        ))
    }
}

impl<'scope, 'env> Scope<'scope, 'env> {
    #[inline]
    fn started(&'scope self, req: MPI_Request, op: &'static str) -> ScopedCollective<'scope> {
        let idx = self.push_collective(req);
        self.collective_handle(idx, op)
    }

    /// Starts a barrier in the scope.
    ///
    /// Collective (nonblocking).
    ///
    /// # Errors
    /// As [`Comm::ibarrier`].
    #[doc(alias = "MPI_Ibarrier")]
    pub fn ibarrier(&'scope self) -> Result<ScopedCollective<'scope>> {
        // SAFETY: no buffer is involved.
        let s = unsafe { self.comm().start_ibarrier()? };
        Ok(self.started(s, "ibarrier"))
    }

    /// Starts broadcasting the root's `buf` into every rank's `buf` (borrowed until the scope ends).
    ///
    /// Collective (nonblocking).
    ///
    /// # Errors
    /// As [`Comm::ibroadcast`].
    #[doc(alias = "MPI_Ibcast")]
    pub fn ibroadcast<T: Pod>(&'scope self, buf: &'scope mut [T], root: i32) -> Result<ScopedCollective<'scope>> {
        // SAFETY: `buf` is borrowed exclusively for 'scope, and the scope waits for this request
        // (kept in its list) before 'scope ends, also when the closure unwinds.
        let s = unsafe { self.comm().start_ibroadcast(buf, root)? };
        Ok(self.started(s, "ibroadcast"))
    }

    /// Starts an element-wise all-reduce of `send` into `recv` (same length; both borrowed until
    /// the scope ends).
    ///
    /// Collective (nonblocking).
    ///
    /// # Errors
    /// As [`Comm::iallreduce`]; [`ErrorKind::InvalidArgument`] if the lengths differ.
    #[doc(alias = "MPI_Iallreduce")]
    pub fn iallreduce<T: Pod>(
        &'scope self,
        send: &'scope [T],
        recv: &'scope mut [T],
        op: Op,
    ) -> Result<ScopedCollective<'scope>> {
        // SAFETY: as in `ibroadcast`; `send` is borrowed shared, so nobody writes it.
        let s = unsafe { self.comm().start_iallreduce(send, recv, op)? };
        Ok(self.started(s, "iallreduce"))
    }

    /// Starts gathering `send` from every rank into the root's `recv`, `counts[r]` elements from
    /// rank r (`recv` and `counts` are read on the root only).
    ///
    /// Collective (nonblocking).
    ///
    /// # Errors
    /// As [`Comm::igatherv`]; on the root [`ErrorKind::InvalidArgument`] if `recv` is not as long
    /// as the counts' sum.
    #[doc(alias = "MPI_Igatherv")]
    pub fn igatherv<T: Pod>(
        &'scope self,
        send: &'scope [T],
        recv: &'scope mut [T],
        counts: &[usize],
        root: i32,
    ) -> Result<ScopedCollective<'scope>> {
        let keep = self.count_slot();
        // SAFETY: as in `iallreduce`; the count arrays are in a slot of the scope that no one else
        // was given, which stays in place, untouched, until the scope has waited for every
        // request (the slots are dropped with the scope).
        let s = unsafe { self.comm().start_igatherv(send, &mut RecvBuf::Given(recv), counts, root, &mut (*keep).0)? };
        Ok(self.started(s, "igatherv"))
    }

    /// Starts gathering `send` from every rank into every rank's `recv`, `counts[r]` elements from
    /// rank r.
    ///
    /// Collective (nonblocking).
    ///
    /// # Errors
    /// As [`Comm::iallgatherv`]; [`ErrorKind::InvalidArgument`] if `recv` is not as long as the
    /// counts' sum.
    #[doc(alias = "MPI_Iallgatherv")]
    pub fn iallgatherv<T: Pod>(
        &'scope self,
        send: &'scope [T],
        recv: &'scope mut [T],
        counts: &[usize],
    ) -> Result<ScopedCollective<'scope>> {
        let keep = self.count_slot();
        // SAFETY: as in `igatherv`; `keep` is a slot no one else was given.
        let s = unsafe { self.comm().start_iallgatherv(send, &mut RecvBuf::Given(recv), counts, &mut (*keep).0)? };
        Ok(self.started(s, "iallgatherv"))
    }

    /// Starts a personalised exchange of equal blocks from `send` into `recv` (same length).
    ///
    /// Collective (nonblocking).
    ///
    /// # Errors
    /// As [`Comm::alltoall_into`].
    #[doc(alias = "MPI_Ialltoall")]
    pub fn ialltoall<T: Pod>(
        &'scope self,
        send: &'scope [T],
        recv: &'scope mut [T],
    ) -> Result<ScopedCollective<'scope>> {
        // SAFETY: as in `iallreduce`.
        let s = unsafe { self.comm().start_ialltoall(send, recv)? };
        Ok(self.started(s, "ialltoall"))
    }

    /// Starts a personalised exchange of blocks of given lengths from `send` into `recv`.
    ///
    /// Collective (nonblocking).
    ///
    /// # Errors
    /// As [`Comm::ialltoallv`]; [`ErrorKind::InvalidArgument`] if `recv` is not as long as the
    /// receive counts' sum.
    #[doc(alias = "MPI_Ialltoallv")]
    pub fn ialltoallv<T: Pod>(
        &'scope self,
        send: &'scope [T],
        send_counts: &[usize],
        recv: &'scope mut [T],
        recv_counts: &[usize],
    ) -> Result<ScopedCollective<'scope>> {
        let keep = self.count_slot();
        // SAFETY: as in `igatherv`; `keep` is a slot no one else was given.
        let s = unsafe {
            self.comm().start_ialltoallv(send, send_counts, &mut RecvBuf::Given(recv), recv_counts, &mut *keep)?
        };
        Ok(self.started(s, "ialltoallv"))
    }
}
