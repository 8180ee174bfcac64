//! Nonblocking operations whose buffers cannot be freed or reused while MPI owns them.
//!
//! Each request **owns** its buffer (a `Vec<T>`) and gives it back when it completes. That makes the
//! classic use-after-free impossible in safe code:
//! - while the request exists, nobody else can touch the buffer;
//! - dropping an unfinished receive cancels and waits before the buffer is freed; dropping an
//!   unfinished collective waits for it; dropping an unfinished send does not wait (its peer may
//!   never receive, and a rendezvous-size send would block forever): the runtime adopts the request
//!   and the buffer, and frees the buffer once MPI reports the send complete (checked whenever
//!   another send is dropped unfinished, and at the end of the run, where sends that never
//!   completed are released to MPI and their buffers leaked);
//! - leaking a request (`mem::forget`) leaks the buffer too, so MPI never writes to freed memory;
//! - in fault-tolerant mode, a request that completes with a failure (a failed peer, a revoked
//!   communicator) leaks its buffer instead of freeing or returning it: Open MPI may still be
//!   moving its data.
//!
//! Requests are `#[must_use]`: call `wait` (or poll with `test`) and take the buffer back.

use std::marker::PhantomData;

use bytemuck::Pod;

use super::check::Signature;
use super::p2p::{Source, Status, Tag};
use super::{Comm, Op};
use crate::error::Result;
use crate::ffi::{self, MPI_Request};

/// An in-flight nonblocking send; owns the data until it completes.
#[must_use = "a send request must be waited for (dropping it leaves the send to the runtime)"]
#[derive(Debug)]
pub struct SendRequest<T: Pod> {
    req: MPI_Request,
    buf: Vec<T>,
    rank: i32,
    _not_send: PhantomData<*const ()>,
}

/// An in-flight nonblocking receive; owns the receive buffer until it completes.
#[must_use = "a receive request must be waited for (dropping it cancels the receive)"]
pub struct RecvRequest<'c, T: Pod> {
    req: MPI_Request,
    buf: Vec<T>,
    comm: &'c Comm,
    completed: Option<(Result<()>, ffi::MPI_Status)>,
    _not_send: PhantomData<*const ()>,
}

/// An in-flight nonblocking all-reduce; owns both buffers until it completes.
#[must_use = "a collective request must be waited for (dropping it blocks until it completes)"]
#[derive(Debug)]
pub struct AllreduceRequest<T: Pod> {
    req: MPI_Request,
    // Owned only so that it outlives the operation: MPI reads it, Rust never does.
    _send: Vec<T>,
    recv: Vec<T>,
    rank: i32,
    _not_send: PhantomData<*const ()>,
}

#[inline]
fn done(req: MPI_Request) -> bool {
    req == ffi::request_null()
}

/// In fault-tolerant mode, a request that completed with a failure (a failed peer, a revoked
/// communicator) may still have its transfer under way inside MPI: Open MPI 5.0.11 completes such a
/// request with the error, releases it, and can go on reading or writing its buffer (see
/// `ffi::ulfm::waitall_keep`). The buffer is then leaked rather than freed or handed back.
/// Returns `result` unchanged.
fn keep_on_failure<R>(result: Result<R>, bufs: &mut [&mut dyn Leak]) -> Result<R> {
    if result.as_ref().is_err_and(crate::runtime::ft::failure) {
        bufs.iter_mut().for_each(|b| b.leak());
    }
    result
}

/// A buffer MPI may still use after its request failed: forgotten, never freed.
trait Leak {
    fn leak(&mut self);
}

impl<T> Leak for Vec<T> {
    fn leak(&mut self) {
        std::mem::forget(std::mem::take(self));
    }
}

impl<T: Pod> SendRequest<T> {
    /// Blocks until the send completes and returns the buffer for reuse.
    ///
    /// # Errors
    /// An MPI error reported at completion.
    #[doc(alias = "MPI_Wait")]
    pub fn wait(mut self) -> Result<Vec<T>> {
        let (res, _) = ffi::wait(&mut self.req, "isend.wait", self.rank);
        keep_on_failure(res, &mut [&mut self.buf])?;
        Ok(std::mem::take(&mut self.buf))
    }

    /// Returns `true` once the send has completed (then `wait` returns at once).
    ///
    /// # Errors
    /// An MPI error reported at completion.
    #[doc(alias = "MPI_Test")]
    pub fn test(&mut self) -> Result<bool> {
        if done(self.req) {
            return Ok(true);
        }
        let res = ffi::test(&mut self.req, "isend.test", self.rank).0;
        keep_on_failure(res, &mut [&mut self.buf])
    }
}

impl<T: Pod> Drop for SendRequest<T> {
    /// An unfinished send is not waited for (its peer may never receive, and a rendezvous-size send
    /// would then block forever): the runtime adopts the request and the buffer, and frees the
    /// buffer once MPI reports the send complete (see `runtime::orphans`).
    fn drop(&mut self) {
        if done(self.req) || ffi::finalized() {
            return;
        }
        if matches!(ffi::test(&mut self.req, "isend.drop", self.rank).0, Ok(true)) {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        crate::runtime::orphans::adopt(vec![std::mem::replace(&mut self.req, ffi::request_null())], Box::new(buf));
    }
}

impl<T: Pod> RecvRequest<'_, T> {
    /// Blocks until the message has arrived; returns the buffer cut to the received length, and the
    /// status.
    ///
    /// # Errors
    /// [`ErrorKind::Truncated`](crate::ErrorKind::Truncated) if the message was longer than the
    /// capacity; [`ErrorKind::TypeMismatch`](crate::ErrorKind::TypeMismatch).
    #[doc(alias = "MPI_Wait")]
    pub fn wait(mut self) -> Result<(Vec<T>, Status)> {
        let (res, st) = match self.completed.take() {
            Some(done) => done,
            None => ffi::wait(&mut self.req, "irecv.wait", self.comm.rank),
        };
        let res = keep_on_failure(res, &mut [&mut self.buf]);
        let status = self.comm.finish_recv::<T>(res, &st, self.buf.len(), "irecv")?;
        let mut buf = std::mem::take(&mut self.buf);
        buf.truncate(status.count);
        Ok((buf, status))
    }

    /// Returns `true` once the message has arrived (then `wait` returns at once).
    ///
    /// # Errors
    /// None here: completion errors are reported by `wait`.
    #[doc(alias = "MPI_Test")]
    pub fn test(&mut self) -> Result<bool> {
        if self.completed.is_some() {
            return Ok(true);
        }
        let (res, st) = ffi::test(&mut self.req, "irecv.test", self.comm.rank);
        match res {
            Ok(false) => Ok(false),
            Ok(true) => {
                self.completed = Some((Ok(()), st));
                Ok(true)
            }
            Err(e) => {
                let res = keep_on_failure::<()>(Err(e), &mut [&mut self.buf]);
                self.completed = Some((res, st));
                Ok(true)
            }
        }
    }
}

impl<T: Pod> Drop for RecvRequest<'_, T> {
    fn drop(&mut self) {
        if !done(self.req) && !ffi::finalized() {
            // Nobody wants the message any more: cancel, then wait so MPI is done with the buffer.
            ffi::cancel(&mut self.req);
            let (res, _) = ffi::wait(&mut self.req, "irecv.drop", self.comm.rank);
            let _ = keep_on_failure(res, &mut [&mut self.buf]);
        }
    }
}

impl<T: Pod> AllreduceRequest<T> {
    /// Blocks until the reduction completes and returns the result.
    ///
    /// # Errors
    /// An MPI error reported at completion.
    #[doc(alias = "MPI_Wait")]
    pub fn wait(mut self) -> Result<Vec<T>> {
        let (res, _) = ffi::wait(&mut self.req, "iallreduce.wait", self.rank);
        keep_on_failure(res, &mut [&mut self._send, &mut self.recv])?;
        Ok(std::mem::take(&mut self.recv))
    }

    /// Drives progress and returns `true` once the reduction has completed. Open MPI without an
    /// asynchronous progress thread moves a nonblocking collective forward only inside MPI calls, so
    /// call this now and then during long computations.
    ///
    /// # Errors
    /// An MPI error reported at completion.
    #[doc(alias = "MPI_Test")]
    pub fn test(&mut self) -> Result<bool> {
        if done(self.req) {
            return Ok(true);
        }
        let res = ffi::test(&mut self.req, "iallreduce.test", self.rank).0;
        keep_on_failure(res, &mut [&mut self._send, &mut self.recv])
    }
}

impl<T: Pod> Drop for AllreduceRequest<T> {
    fn drop(&mut self) {
        if !done(self.req) && !ffi::finalized() {
            // Collectives cannot be cancelled; the buffers must outlive the operation.
            let (res, _) = ffi::wait(&mut self.req, "iallreduce.drop", self.rank);
            let _ = keep_on_failure(res, &mut [&mut self._send, &mut self.recv]);
        }
    }
}

impl Comm {
    /// Starts sending `data` to `dest`; the request owns `data` until it completes.
    ///
    /// Point-to-point.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRank`](crate::ErrorKind::InvalidRank),
    /// [`ErrorKind::InvalidTag`](crate::ErrorKind::InvalidTag), count overflow, MPI errors.
    #[doc(alias = "MPI_Isend")]
    pub fn isend<T: Pod>(&self, data: Vec<T>, dest: i32, tag: Tag) -> Result<SendRequest<T>> {
        let _busy = self.begin("isend")?;
        self.check_peer(dest, "destination", "isend")?;
        self.check_tag(tag, "isend")?;
        // SAFETY: the heap buffer of `data` is moved into the returned request, which neither reads
        // nor writes it until MPI_Wait/MPI_Test report completion; an unfinished request's Drop hands
        // the buffer to the runtime (`runtime::orphans`), which frees it only after completion or
        // leaks it; a leaked request leaks it too. Moving a Vec does not move its heap allocation.
        let req = unsafe { ffi::isend(ffi::send_ptr(&data), data.len(), dest, tag, self.raw, "isend", self.rank)? };
        Ok(SendRequest { req, buf: data, rank: self.rank, _not_send: PhantomData })
    }

    /// Starts receiving at most `capacity` elements; `wait` returns them.
    ///
    /// Point-to-point. `tag` may be [`ANY_TAG`](crate::comm::ANY_TAG). Truncation is reported by
    /// `wait`, except for a message from this rank itself: Open MPI 4.1 truncates those silently and
    /// a nonblocking receive cannot probe first (use [`Comm::recv_into`] or size the buffer).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRank`](crate::ErrorKind::InvalidRank),
    /// [`ErrorKind::InvalidTag`](crate::ErrorKind::InvalidTag), count overflow, MPI errors.
    #[doc(alias = "MPI_Irecv")]
    pub fn irecv<T: Pod>(&self, capacity: usize, source: impl Into<Source>, tag: Tag) -> Result<RecvRequest<'_, T>> {
        let (src, tag, _busy) = self.recv_args(source.into(), tag, "irecv")?;
        let mut buf = vec![T::zeroed(); capacity];
        // SAFETY: `buf` is moved into the returned request and not touched until completion; Drop
        // cancels and waits before freeing it, and leaking the request leaks the buffer.
        let req = unsafe { ffi::irecv(ffi::recv_ptr(&mut buf), buf.len(), src, tag, self.raw, "irecv", self.rank)? };
        Ok(RecvRequest { req, buf, comm: self, completed: None, _not_send: PhantomData })
    }

    /// Starts an element-wise all-reduce of `data`; `wait` returns the result. Compute while it is in
    /// flight, calling [`AllreduceRequest::test`] now and then to drive progress.
    ///
    /// Collective.
    ///
    /// # Errors
    /// As [`allreduce_into`](Comm::allreduce_into).
    #[doc(alias = "MPI_Iallreduce")]
    pub fn iallreduce<T: Pod>(&self, data: Vec<T>, op: Op) -> Result<AllreduceRequest<T>> {
        const OP: &str = "iallreduce";
        let _busy = self.begin(OP)?;
        let resolved = op.resolve::<T>(OP, self.rank);
        let sig = Signature {
            count: Some(data.len() as i64),
            elem_size: Some(std::mem::size_of::<T>() as i64),
            reduce_op: Some(op.index() as i64),
            root: None,
        };
        self.agree(OP, resolved.as_ref().map(|_| ()).map_err(Clone::clone), sig)?;
        let (mpi_op, dt) = resolved?;
        let mut recv = vec![T::zeroed(); data.len()];
        // SAFETY: both heap buffers move into the returned request and are not touched until
        // completion; Drop waits before freeing them; leaking the request leaks them.
        let req = unsafe {
            ffi::iallreduce_typed(
                ffi::send_ptr(&data),
                ffi::recv_ptr(&mut recv),
                data.len(),
                dt,
                mpi_op,
                self.raw,
                OP,
                self.rank,
            )?
        };
        Ok(AllreduceRequest { req, _send: data, recv, rank: self.rank, _not_send: PhantomData })
    }
}
