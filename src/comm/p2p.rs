//! Typed point-to-point communication (MPI-4.1 chapter 3).
//!
//! Element types are any [`Pod`]. A received message must be a whole number of the receiver's
//! elements: 12 bytes received as `f64` is an [`ErrorKind::TypeMismatch`], a message longer than the
//! buffer an [`ErrorKind::Truncated`]. A mismatch whose byte count happens to divide (two `f32` read
//! as one `f64`) cannot be detected by any MPI: keep sender and receiver types in one place.

use bytemuck::Pod;

use super::Comm;
use crate::error::{ErrorKind, Result};
use crate::ffi::{self, MPI_Status};
use crate::runtime::activity::{self, Busy};

/// A message tag, `0..=comm.tag_ub()`.
pub type Tag = i32;

/// Receive from any tag (`MPI_ANY_TAG`). Only accepted where a receive matches messages.
pub const ANY_TAG: Tag = -1;

/// Where a receive accepts messages from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// This rank only.
    Rank(i32),
    /// Any rank (`MPI_ANY_SOURCE`).
    Any,
}

impl From<i32> for Source {
    fn from(r: i32) -> Self {
        Source::Rank(r)
    }
}

/// What a completed receive got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// The sending rank.
    pub source: i32,
    /// The message's tag.
    pub tag: Tag,
    /// The number of elements received.
    pub count: usize,
}

impl Comm {
    /// Checks a receive's arguments; the operation counts as running while the guard lives.
    #[inline]
    pub(crate) fn recv_args(&self, source: Source, tag: Tag, op: &'static str) -> Result<(i32, i32, Busy)> {
        let busy = self.begin(op)?;
        let src = match source {
            Source::Rank(r) => {
                self.check_peer(r, "source", op)?;
                r
            }
            Source::Any => ffi::any_source(),
        };
        let tag = if tag == ANY_TAG {
            ffi::any_tag()
        } else {
            self.check_tag(tag, op)?;
            tag
        };
        activity::set_peer(src);
        Ok((src, tag, busy))
    }

    #[inline]
    fn send_args(&self, dest: i32, tag: Tag, op: &'static str) -> Result<Busy> {
        let busy = self.begin(op)?;
        self.check_peer(dest, "destination", op)?;
        self.check_tag(tag, op)?;
        activity::set_peer(dest);
        Ok(busy)
    }

    fn truncated(
        &self,
        source: i32,
        tag: Tag,
        capacity: usize,
        size: usize,
        op: &'static str,
        class: Option<i32>,
    ) -> crate::Error {
        let e = self.err(
            ErrorKind::Truncated,
            op,
            format!(
                "message from rank {source} (tag {tag}) is longer than the receive buffer of {capacity} elements ({} bytes)",
                capacity * size
            ),
        );
        match class {
            Some(c) => e.with_mpi_class(c),
            None => e,
        }
    }

    /// Turns a receive's outcome into a [`Status`], with precise truncation and type errors.
    pub(crate) fn finish_recv<T: Pod>(
        &self,
        res: Result<()>,
        st: &MPI_Status,
        capacity: usize,
        op: &'static str,
    ) -> Result<Status> {
        let size = std::mem::size_of::<T>();
        if let Err(e) = res {
            if e.kind() == ErrorKind::Truncated {
                return Err(self.truncated(st.MPI_SOURCE, st.MPI_TAG, capacity, size, op, e.mpi_class()));
            }
            return Err(e);
        }
        match ffi::status_count::<T>(st) {
            Some(count) => Ok(Status { source: st.MPI_SOURCE, tag: st.MPI_TAG, count }),
            None => Err(self.type_mismatch::<T>(st, op)),
        }
    }

    #[cold]
    fn type_mismatch<T: Pod>(&self, st: &MPI_Status, op: &'static str) -> crate::Error {
        let size = std::mem::size_of::<T>();
        {
            self.err(
                ErrorKind::TypeMismatch,
                op,
                format!(
                    "received {} bytes from rank {} (tag {}), not a whole number of {size}-byte {} elements: sender and receiver disagree on the element type",
                    ffi::status_bytes(st),
                    st.MPI_SOURCE,
                    st.MPI_TAG,
                    std::any::type_name::<T>()
                ),
            )
        }
    }

    /// Sends `data` to `dest` (standard mode: may return before the receiver has it).
    ///
    /// Point-to-point.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRank`], [`ErrorKind::InvalidTag`], [`ErrorKind::CountOverflow`], or an
    /// MPI error.
    #[doc(alias = "MPI_Send")]
    pub fn send<T: Pod>(&self, data: &[T], dest: i32, tag: Tag) -> Result<()> {
        let _busy = self.send_args(dest, tag, "send")?;
        ffi::send(data, dest, tag, self.raw, "send", self.rank)
    }

    /// Sends one value; see [`send`](Comm::send).
    ///
    /// Point-to-point.
    ///
    /// # Errors
    /// As [`send`](Comm::send).
    #[doc(alias = "MPI_Send")]
    pub fn send_one<T: Pod>(&self, value: &T, dest: i32, tag: Tag) -> Result<()> {
        self.send(std::slice::from_ref(value), dest, tag)
    }

    /// Sends `data` and returns only once the receiver has started receiving it (synchronous mode).
    /// Useful to find sends that rely on buffering.
    ///
    /// Point-to-point.
    ///
    /// # Errors
    /// As [`send`](Comm::send).
    #[doc(alias = "MPI_Ssend")]
    pub fn ssend<T: Pod>(&self, data: &[T], dest: i32, tag: Tag) -> Result<()> {
        let _busy = self.send_args(dest, tag, "ssend")?;
        ffi::ssend(data, dest, tag, self.raw, "ssend", self.rank)
    }

    /// Receives into `buf`, which may be longer than the message; returns what arrived.
    ///
    /// Point-to-point. `tag` may be [`ANY_TAG`]. Receives that may match a message from this rank
    /// itself (`source` is this rank or [`Source::Any`]) go through a matched probe, because Open MPI
    /// 4.1 does not report truncation of self-messages.
    ///
    /// # Errors
    /// [`ErrorKind::Truncated`] if the message is longer than `buf`; [`ErrorKind::TypeMismatch`] if
    /// its byte count is not a whole number of `T`; [`ErrorKind::InvalidRank`],
    /// [`ErrorKind::InvalidTag`].
    #[doc(alias = "MPI_Recv")]
    pub fn recv_into<T: Pod>(&self, buf: &mut [T], source: impl Into<Source>, tag: Tag) -> Result<Status> {
        let source = source.into();
        let (src, mpi_tag, _busy) = self.recv_args(source, tag, "recv")?;
        if source == Source::Rank(self.rank) || source == Source::Any {
            return self.recv_probed(buf, src, mpi_tag);
        }
        let (res, st) = ffi::recv(buf, src, mpi_tag, self.raw, "recv", self.rank);
        self.finish_recv::<T>(res, &st, buf.len(), "recv")
    }

    /// Receive through a matched probe, so the message size is known before any byte moves.
    ///
    /// Open MPI 4.1 silently truncates a message a rank sends to itself (MPI_Recv returns success
    /// with the count cut to the buffer), so receives that may match a message from this rank take
    /// this path. A message too long for `buf` is consumed (so it cannot match a later receive) and
    /// reported as [`ErrorKind::Truncated`].
    fn recv_probed<T: Pod>(&self, buf: &mut [T], src: i32, tag: i32) -> Result<Status> {
        let (mut msg, st) = ffi::mprobe(src, tag, self.raw, "recv", self.rank)?;
        let bytes = ffi::status_bytes(&st);
        if bytes > std::mem::size_of_val(buf) {
            let mut drain = vec![0u8; bytes];
            let (res, _) = ffi::mrecv(&mut drain, &mut msg, "recv", self.rank);
            res?;
            return Err(self.truncated(st.MPI_SOURCE, st.MPI_TAG, buf.len(), std::mem::size_of::<T>(), "recv", None));
        }
        let (res, st) = ffi::mrecv(buf, &mut msg, "recv", self.rank);
        self.finish_recv::<T>(res, &st, buf.len(), "recv")
    }

    /// Receives exactly one value.
    ///
    /// Point-to-point.
    ///
    /// # Errors
    /// As [`recv_into`](Comm::recv_into), and [`ErrorKind::Truncated`] if the message was empty
    /// (so it did not carry one value).
    #[doc(alias = "MPI_Recv")]
    pub fn recv_one<T: Pod>(&self, source: impl Into<Source>, tag: Tag) -> Result<T> {
        let mut v = T::zeroed();
        let st = self.recv_into(std::slice::from_mut(&mut v), source, tag)?;
        if st.count != 1 {
            return Err(self.err(
                ErrorKind::Truncated,
                "recv",
                format!("expected one value from rank {} (tag {}), got an empty message", st.source, st.tag),
            ));
        }
        Ok(v)
    }

    /// Receives a message of any length into a new `Vec` (matched probe, then receive).
    ///
    /// Point-to-point.
    ///
    /// # Errors
    /// [`ErrorKind::TypeMismatch`] if the byte count is not a whole number of `T` (the message is
    /// still consumed, so the communicator stays usable); [`ErrorKind::InvalidRank`],
    /// [`ErrorKind::InvalidTag`].
    #[doc(alias = "MPI_Mprobe")]
    #[doc(alias = "MPI_Mrecv")]
    pub fn recv_vec<T: Pod>(&self, source: impl Into<Source>, tag: Tag) -> Result<(Vec<T>, Status)> {
        let (src, tag, _busy) = self.recv_args(source.into(), tag, "recv_vec")?;
        let (mut msg, st) = ffi::mprobe(src, tag, self.raw, "recv_vec", self.rank)?;
        match ffi::status_count::<T>(&st) {
            Some(n) => {
                let mut v = vec![T::zeroed(); n];
                let (res, st) = ffi::mrecv(&mut v, &mut msg, "recv_vec", self.rank);
                let status = self.finish_recv::<T>(res, &st, n, "recv_vec")?;
                Ok((v, status))
            }
            None => {
                // Consume the message as bytes so it cannot match a later receive.
                let mut bytes = vec![0u8; ffi::status_bytes(&st)];
                let (res, st2) = ffi::mrecv(&mut bytes, &mut msg, "recv_vec", self.rank);
                res?;
                let e = self.finish_recv::<T>(Ok(()), &st, 0, "recv_vec");
                debug_assert!(e.is_err());
                let _ = st2;
                Err(e.err().unwrap_or_else(|| self.err(ErrorKind::TypeMismatch, "recv_vec", "element type mismatch")))
            }
        }
    }

    /// Checks, without receiving, whether a message is waiting; returns its status if so.
    ///
    /// Point-to-point (local).
    ///
    /// # Errors
    /// [`ErrorKind::TypeMismatch`] if the waiting message is not a whole number of `T`;
    /// [`ErrorKind::InvalidRank`], [`ErrorKind::InvalidTag`].
    #[doc(alias = "MPI_Iprobe")]
    pub fn probe_nonblocking<T: Pod>(&self, source: impl Into<Source>, tag: Tag) -> Result<Option<Status>> {
        let (src, tag, _busy) = self.recv_args(source.into(), tag, "iprobe")?;
        match ffi::iprobe(src, tag, self.raw, "iprobe", self.rank)? {
            None => Ok(None),
            Some(st) => self.finish_recv::<T>(Ok(()), &st, usize::MAX, "iprobe").map(Some),
        }
    }

    /// Sends `send` to `dest` and receives into `recv` from `source` in one deadlock-free call
    /// (the building block of shifts and halo swaps).
    ///
    /// Point-to-point.
    ///
    /// # Errors
    /// As [`send`](Comm::send) and [`recv_into`](Comm::recv_into).
    #[doc(alias = "MPI_Sendrecv")]
    pub fn sendrecv<S: Pod, R: Pod>(
        &self,
        send: &[S],
        dest: i32,
        send_tag: Tag,
        recv: &mut [R],
        source: impl Into<Source>,
        recv_tag: Tag,
    ) -> Result<Status> {
        let _busy = self.send_args(dest, send_tag, "sendrecv")?;
        let source = source.into();
        // Kept alive: the receive side (the peer this rank waits for) is what a hang report names.
        let (src, rtag, _recv_busy) = self.recv_args(source, recv_tag, "sendrecv")?;
        // A swap with itself (one rank, periodic): the message size is known here, and Open MPI 4.1
        // would truncate it silently, so check before anything moves.
        if dest == self.rank && source == Source::Rank(self.rank) && send_tag == recv_tag {
            let (sb, rb) = (std::mem::size_of_val(send), std::mem::size_of_val(recv));
            if sb > rb {
                return Err(self.truncated(
                    self.rank,
                    send_tag,
                    recv.len(),
                    std::mem::size_of::<R>(),
                    "sendrecv",
                    None,
                ));
            }
        }
        let (res, st) = ffi::sendrecv(send, dest, send_tag, recv, src, rtag, self.raw, "sendrecv", self.rank);
        self.finish_recv::<R>(res, &st, recv.len(), "sendrecv")
    }
}
