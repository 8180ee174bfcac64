//! Persistent point-to-point requests (MPI-4.1 section 3.9): a send or receive set up once and
//! started many times, for a pattern that repeats every step (a halo exchange, a pipeline stage).
//!
//! Each request owns its buffer for its whole life (MPI holds its address from `MPI_Send_init` to
//! `MPI_Request_free`). Between runs the buffer is the caller's: [`PersistentSend::data_mut`] fills
//! the next message, [`PersistentRecv::data`] reads the last one. While a run is active those
//! accessors return an error instead of touching memory MPI owns, and `start` refuses to start an
//! active request. Dropping an active request hands it with its buffer to the runtime, as an
//! unfinished [`SendRequest`](super::SendRequest) is: a send goes on; a receive stays posted, so a
//! message that matches it later is taken there and discarded (cancelling is not used: MPICH 5.0.2
//! fails an assertion when a cancelled persistent receive later meets a large message). Leaking a
//! request leaks its buffer.

use std::marker::PhantomData;

use bytemuck::Pod;

use super::p2p::{Source, Status, Tag};
use super::Comm;
use crate::error::{ErrorKind, Result};
use crate::ffi::{self, topology as topo, MPI_Request};

/// A send set up once ([`Comm::send_init`]) and started many times.
#[must_use = "a persistent send does nothing until started"]
#[derive(Debug)]
pub struct PersistentSend<'c, T: Pod> {
    req: MPI_Request,
    buf: Vec<T>,
    active: bool,
    comm: &'c Comm,
    _not_send: PhantomData<*const ()>,
}

/// A receive set up once ([`Comm::recv_init`]) and started many times.
#[must_use = "a persistent receive does nothing until started"]
#[derive(Debug)]
pub struct PersistentRecv<'c, T: Pod> {
    req: MPI_Request,
    buf: Vec<T>,
    active: bool,
    // The last run's status (set by wait or test).
    last: Option<Status>,
    comm: &'c Comm,
    _not_send: PhantomData<*const ()>,
}

impl Comm {
    /// Sets up a send of `data` to `dest` with `tag`; each [`start`](PersistentSend::start) sends
    /// the buffer's contents at that time.
    ///
    /// Local (point-to-point once started).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRank`], [`ErrorKind::InvalidTag`], count overflow, MPI errors.
    #[doc(alias = "MPI_Send_init")]
    pub fn send_init<T: Pod>(&self, data: Vec<T>, dest: i32, tag: Tag) -> Result<PersistentSend<'_, T>> {
        const OP: &str = "send_init";
        let _busy = self.begin(OP)?;
        self.check_peer(dest, "destination", OP)?;
        self.check_tag(tag, OP)?;
        // SAFETY: the heap buffer of `data` moves into the returned request and stays there until
        // the request is freed in Drop (after completion, or handed to the runtime with the
        // request while a send is active); the accessors refuse writes while a run is active.
        let req = unsafe { topo::send_init(ffi::send_ptr(&data), data.len(), dest, tag, self.raw, OP, self.rank)? };
        Ok(PersistentSend { req, buf: data, active: false, comm: self, _not_send: PhantomData })
    }

    /// Sets up a receive of at most `capacity` elements from `source` with `tag` (a rank, or
    /// [`Source::Any`]; `tag` may be [`ANY_TAG`](super::ANY_TAG)). Truncation is reported by
    /// `wait`, except for a message from this rank itself, which Open MPI 4.1 truncates silently
    /// (as for [`Comm::irecv`]).
    ///
    /// Local (point-to-point once started).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRank`], [`ErrorKind::InvalidTag`], count overflow, MPI errors.
    #[doc(alias = "MPI_Recv_init")]
    pub fn recv_init<T: Pod>(
        &self,
        capacity: usize,
        source: impl Into<Source>,
        tag: Tag,
    ) -> Result<PersistentRecv<'_, T>> {
        const OP: &str = "recv_init";
        let (src, tag, _busy) = self.recv_args(source.into(), tag, OP)?;
        let mut buf = vec![T::zeroed(); capacity];
        // SAFETY: as in `send_init`; the accessors refuse any access while a run is active, and
        // Drop cancels and waits for an active run before freeing the buffer.
        let req = unsafe { topo::recv_init(ffi::recv_ptr(&mut buf), capacity, src, tag, self.raw, OP, self.rank)? };
        Ok(PersistentRecv { req, buf, active: false, last: None, comm: self, _not_send: PhantomData })
    }
}

fn already_active(comm: &Comm, op: &'static str) -> crate::Error {
    comm.err(ErrorKind::InvalidArgument, op, "the request is active: wait for its run first")
}

impl<T: Pod> PersistentSend<'_, T> {
    /// Starts one run: sends the buffer's current contents.
    ///
    /// Point-to-point.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if a run is still active; MPI errors.
    #[doc(alias = "MPI_Start")]
    pub fn start(&mut self) -> Result<()> {
        start_one(&mut self.req, &mut self.active, self.comm)
    }

    /// Blocks until the active run (if any) has completed.
    ///
    /// # Errors
    /// An MPI error reported at completion.
    #[doc(alias = "MPI_Wait")]
    pub fn wait(&mut self) -> Result<()> {
        if self.active {
            let res = ffi::wait_no_status(&mut self.req, "persistent send wait", self.comm.rank);
            self.active = false;
            res?;
        }
        Ok(())
    }

    /// Returns `true` once no run is active (then `wait` returns at once).
    ///
    /// # Errors
    /// An MPI error reported at completion.
    #[doc(alias = "MPI_Test")]
    pub fn test(&mut self) -> Result<bool> {
        if self.active {
            let (res, _) = ffi::test(&mut self.req, "persistent send test", self.comm.rank);
            if res? {
                self.active = false;
            }
        }
        Ok(!self.active)
    }

    /// Whether a run is in flight.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The message buffer (readable also while a send is active: MPI only reads it).
    pub fn data(&self) -> &[T] {
        &self.buf
    }

    /// The message buffer, to fill in the next message.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] while a run is active.
    pub fn data_mut(&mut self) -> Result<&mut [T]> {
        if self.active {
            return Err(already_active(self.comm, "persistent send data_mut"));
        }
        Ok(&mut self.buf)
    }
}

impl<T: Pod> PersistentRecv<'_, T> {
    /// Starts one run: receives the next matching message into the buffer.
    ///
    /// Point-to-point.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if a run is still active; MPI errors.
    #[doc(alias = "MPI_Start")]
    pub fn start(&mut self) -> Result<()> {
        start_one(&mut self.req, &mut self.active, self.comm)
    }

    /// Blocks until the active run has completed and returns its status (the last run's status if
    /// none is active).
    ///
    /// # Errors
    /// [`ErrorKind::Truncated`], [`ErrorKind::TypeMismatch`], MPI errors;
    /// [`ErrorKind::InvalidArgument`] if the request was never started.
    #[doc(alias = "MPI_Wait")]
    pub fn wait(&mut self) -> Result<Status> {
        const OP: &str = "persistent recv wait";
        if self.active {
            let (res, st) = ffi::wait(&mut self.req, OP, self.comm.rank);
            self.active = false;
            // A failed run leaves no status: `data` must not show the last good count over new bytes.
            self.last = None;
            self.last = Some(self.comm.finish_recv::<T>(res, &st, self.buf.len(), OP)?);
        }
        self.last.ok_or_else(|| self.comm.err(ErrorKind::InvalidArgument, OP, "the receive was never started"))
    }

    /// Returns `true` once no run is active (then `wait` returns at once with the status).
    ///
    /// # Errors
    /// As [`wait`](Self::wait), for a run that completed.
    #[doc(alias = "MPI_Test")]
    pub fn test(&mut self) -> Result<bool> {
        const OP: &str = "persistent recv test";
        if self.active {
            let (res, st) = ffi::test(&mut self.req, OP, self.comm.rank);
            match res {
                Ok(false) => return Ok(false),
                Ok(true) => {
                    self.active = false;
                    self.last = None;
                    self.last = Some(self.comm.finish_recv::<T>(Ok(()), &st, self.buf.len(), OP)?);
                }
                Err(e) => {
                    self.active = false;
                    self.last = None;
                    return self.comm.finish_recv::<T>(Err(e), &st, self.buf.len(), OP).map(|_| true);
                }
            }
        }
        Ok(true)
    }

    /// Whether a run is in flight.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The received elements of the last completed run (cut to the received count).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] while a run is active or before the first one completed.
    pub fn data(&self) -> Result<&[T]> {
        const OP: &str = "persistent recv data";
        if self.active {
            return Err(already_active(self.comm, OP));
        }
        let st = self.last.ok_or_else(|| self.comm.err(ErrorKind::InvalidArgument, OP, "no run has completed yet"))?;
        Ok(&self.buf[..st.count])
    }
}

mod sealed {
    pub trait Sealed {}
    /// Only this module can make one, so only it can call [`super::Persistent::handle`]: the
    /// handle gives out the request and its active flag, which safe code must not change.
    #[derive(Clone, Copy)]
    pub struct Token(pub(super) ());
}

/// A persistent request of either direction, for [`start_all`].
pub trait Persistent: sealed::Sealed {
    #[doc(hidden)]
    fn handle(&mut self, token: sealed::Token) -> (&mut MPI_Request, &mut bool, &Comm);
}

impl<T: Pod> sealed::Sealed for PersistentSend<'_, T> {}
impl<T: Pod> sealed::Sealed for PersistentRecv<'_, T> {}

impl<T: Pod> Persistent for PersistentSend<'_, T> {
    fn handle(&mut self, _: sealed::Token) -> (&mut MPI_Request, &mut bool, &Comm) {
        (&mut self.req, &mut self.active, self.comm)
    }
}

impl<T: Pod> Persistent for PersistentRecv<'_, T> {
    fn handle(&mut self, _: sealed::Token) -> (&mut MPI_Request, &mut bool, &Comm) {
        (&mut self.req, &mut self.active, self.comm)
    }
}

/// `start` of one request: [`start_all`] of it, without the loops over a list.
#[inline]
fn start_one(req: &mut MPI_Request, active: &mut bool, comm: &Comm) -> Result<()> {
    const OP: &str = "start_all";
    let _busy = comm.begin(OP)?;
    if *active {
        return Err(already_active(comm, OP));
    }
    // SAFETY: the request is inactive (checked above) and its owner keeps its buffer for its whole
    // life, refusing access while a run is active (see `send_init`/`recv_init`).
    unsafe { topo::start(req, OP, comm.rank)? };
    *active = true;
    Ok(())
}

/// Starts a run of every request in `reqs`, in order (receives first is the usual order: a
/// matching message then finds its receive posted). Each is started with its own `MPI_Start`, so
/// that after an error exactly the requests before it are active (`MPI_Startall` leaves their
/// state undefined, and a receive wrongly taken for inactive would be freed under MPI).
///
/// Point-to-point.
///
/// # Errors
/// [`ErrorKind::InvalidArgument`] if any of them is still active (then none is started); MPI
/// errors.
#[doc(alias = "MPI_Startall")]
pub fn start_all(reqs: &mut [&mut dyn Persistent]) -> Result<()> {
    const OP: &str = "start_all";
    let token = sealed::Token(());
    for r in reqs.iter_mut() {
        let (_, active, comm) = r.handle(token);
        let _busy = comm.begin(OP)?;
        if *active {
            return Err(already_active(comm, OP));
        }
    }
    for r in reqs.iter_mut() {
        let (req, active, comm) = r.handle(token);
        // SAFETY: as in `start_one`: every request is inactive (checked above) and its owner keeps
        // its buffer.
        unsafe { topo::start(req, OP, comm.rank)? };
        *active = true;
    }
    Ok(())
}

impl<T: Pod> Drop for PersistentSend<'_, T> {
    fn drop(&mut self) {
        if ffi::finalized() {
            return;
        }
        if self.active && !matches!(ffi::test(&mut self.req, "persistent send drop", self.comm.rank).0, Ok(true)) {
            // Its peer may never receive: the runtime keeps the buffer until MPI reports the send
            // complete, and then frees the request.
            crate::runtime::orphans::adopt(vec![self.req], Box::new(std::mem::take(&mut self.buf)));
            return;
        }
        ffi::request_free(&mut self.req);
    }
}

impl<T: Pod> Drop for PersistentRecv<'_, T> {
    fn drop(&mut self) {
        if ffi::finalized() {
            return;
        }
        if self.active && !matches!(ffi::test(&mut self.req, "persistent recv drop", self.comm.rank).0, Ok(true)) {
            // Not cancelled (MPICH 5.0.2 fails an assertion when a cancelled persistent receive
            // later meets its large message): the runtime keeps the request with its buffer, and
            // frees both once a matching message has arrived, or leaks them at the end of the run.
            crate::runtime::orphans::adopt(vec![self.req], Box::new(std::mem::take(&mut self.buf)));
            return;
        }
        ffi::request_free(&mut self.req);
    }
}
