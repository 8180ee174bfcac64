//! Sparse data exchange: every rank sends to a few ranks of its choice, and learns who sends to it
//! without an all-to-all of counts (the NBX algorithm of Hoefler, Siebert and Lumsdaine, "Scalable
//! communication protocols for dynamic sparse data exchange", PPoPP 2010).
//!
//! Each rank starts a *synchronous* send (`MPI_Issend`) per message, then receives whatever arrives
//! (`MPI_Iprobe` on any source) until its own sends have all been matched; it then enters a
//! nonblocking barrier and keeps receiving until the barrier completes. A synchronous send completes
//! only when its receive has matched it, so once every rank has entered the barrier every message
//! has been received: the barrier's completion is the end of the exchange. The cost is one barrier
//! and the messages themselves, O(log P) instead of the O(P) of an `MPI_Alltoall` of counts.
//!
//! A rank may see the barrier complete while a fast peer has already started the *next* exchange on
//! the same communicator; so that such a message is not taken for one of this round, consecutive
//! exchanges alternate between the tags `tag` and `tag + 1`.

use std::sync::atomic::Ordering;

use bytemuck::Pod;

use super::check::Signature;
use super::p2p::Tag;
use super::Comm;
use crate::error::{ErrorKind, Result};
use crate::ffi::{self, MPI_Request};

impl Comm {
    /// Sends each `(dest, data)` message to `dest` and returns the messages sent to this rank by
    /// any rank, as `(source, data)` ordered by source rank (messages from one source in the order
    /// they were sent). Ranks do not need to know who sends to them. Empty messages are not sent.
    ///
    /// Collective (every rank must call it, also with nothing to send). Uses the tags `tag` and
    /// `tag + 1`: no other message with these tags may be in flight on this communicator.
    ///
    /// ```no_run
    /// # let rt = phalanx::init()?; let world = rt.world();
    /// // Each rank sends its rank number to the rank twice its own, if there is one.
    /// let to = 2 * world.rank();
    /// let sends = if to < world.size() { vec![(to, vec![world.rank()])] } else { vec![] };
    /// for (source, data) in world.sparse_exchange(sends, 0)? {
    ///     assert_eq!(data, vec![source]);
    /// }
    /// # Ok::<(), phalanx::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRank`] for a destination outside the communicator,
    /// [`ErrorKind::InvalidTag`] if `tag + 1` is above [`Comm::tag_ub`], [`ErrorKind::TypeMismatch`] for
    /// a message that is not a whole number of `T`; in checked mode, every rank returns an error if
    /// one rank had one or the ranks disagree on the tag or element size. MPI errors. On an error the
    /// sends still in flight keep their buffers until MPI is done with them.
    #[doc(alias = "NBX")]
    #[doc(alias = "MPI_Issend")]
    #[doc(alias = "MPI_Ibarrier")]
    pub fn sparse_exchange<T: Pod>(&self, sends: Vec<(i32, Vec<T>)>, tag: Tag) -> Result<Vec<(i32, Vec<T>)>> {
        const OP: &str = "sparse_exchange";
        let _busy = self.begin(OP)?;
        let local = self.check_tag(tag, OP).and_then(|_| {
            if tag >= self.tag_ub() {
                return Err(self.err(
                    ErrorKind::InvalidTag,
                    OP,
                    format!("tag {tag} and tag + 1 are needed, but the largest tag is {}", self.tag_ub()),
                ));
            }
            match sends.iter().find(|(d, _)| *d < 0 || *d >= self.size) {
                Some((d, _)) => Err(self.err(
                    ErrorKind::InvalidRank,
                    OP,
                    format!("destination rank {d} is outside 0..{} (communicator size {})", self.size, self.size),
                )),
                None => Ok(()),
            }
        });
        self.agree(
            OP,
            local,
            Signature {
                root: Some(tag as i64),
                elem_size: Some(std::mem::size_of::<T>() as i64),
                ..Default::default()
            },
        )?;
        let tag = tag + (self.sparse_rounds.fetch_add(1, Ordering::Relaxed) & 1) as i32;
        let mut received: Vec<(i32, Vec<T>)> = Vec::new();
        let mut reqs: Vec<MPI_Request> = Vec::with_capacity(sends.len());
        let mut out = Ok(());
        for (dest, data) in &sends {
            if data.is_empty() {
                continue;
            }
            if *dest == self.rank {
                // Kept out of MPI: a copy is cheaper, and Open MPI 4.1 mishandles some self-messages.
                received.push((self.rank, data.clone()));
                continue;
            }
            // SAFETY: `data` lives in `sends`, which is either kept until these requests complete
            // (below) or handed to the orphan list, which keeps it until MPI reports them complete.
            match unsafe { ffi::issend(data.as_ptr(), data.len(), *dest, tag, self.raw, OP, self.rank) } {
                Ok(r) => reqs.push(r),
                Err(e) => {
                    out = Err(e);
                    break;
                }
            }
        }
        if out.is_ok() {
            out = self.nbx_receive(tag, &mut reqs, &mut received);
        }
        if let Err(e) = out {
            crate::runtime::orphans::adopt(reqs, Box::new(sends));
            return Err(e);
        }
        received.sort_by_key(|(source, _)| *source);
        Ok(received)
    }

    /// The receiving half of NBX: until the barrier that follows this rank's matched sends completes.
    fn nbx_receive<T: Pod>(&self, tag: Tag, sends: &mut [MPI_Request], into: &mut Vec<(i32, Vec<T>)>) -> Result<()> {
        const OP: &str = "sparse_exchange";
        let mut barrier: Option<MPI_Request> = None;
        let mut bad: Option<crate::Error> = None;
        let mut spins = 0u32;
        loop {
            if let Some(st) = ffi::iprobe(ffi::any_source(), tag, self.raw, OP, self.rank)? {
                let (mut msg, st) = ffi::mprobe(st.MPI_SOURCE, tag, self.raw, OP, self.rank)?;
                let bytes = ffi::status_bytes(&st);
                let size = std::mem::size_of::<T>();
                if !bytes.is_multiple_of(size) {
                    // Received anyway (as bytes), and the exchange goes on to its end, so that
                    // the peers are not left waiting for this rank in the barrier.
                    let mut sink = vec![0u8; bytes];
                    let _ = ffi::mrecv(&mut sink, &mut msg, OP, self.rank);
                    bad.get_or_insert_with(|| {
                        self.err(
                            ErrorKind::TypeMismatch,
                            OP,
                            format!(
                                "message of {bytes} bytes from rank {} is not a whole number of {size}-byte elements",
                                st.MPI_SOURCE
                            ),
                        )
                    });
                    continue;
                }
                let mut buf = bytemuck::zeroed_vec::<T>(bytes / size);
                ffi::mrecv(&mut buf, &mut msg, OP, self.rank).0?;
                into.push((st.MPI_SOURCE, buf));
                continue;
            }
            match barrier.as_mut() {
                None => {
                    if ffi::testall(sends, OP, self.rank)? {
                        barrier = Some(ffi::ibarrier(self.raw, OP, self.rank)?);
                    }
                }
                Some(b) => {
                    if ffi::test(b, OP, self.rank).0? {
                        return bad.map_or(Ok(()), Err);
                    }
                }
            }
            // On an oversubscribed node a rank spinning here starves the ranks it waits for.
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            }
        }
    }
}
