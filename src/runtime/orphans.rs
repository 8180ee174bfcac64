//! Sends whose handle was dropped before they completed.
//!
//! Dropping an unfinished owning send ([`crate::comm::SendRequest`], the sends of an unfinished
//! halo exchange) used to wait for it. A send of rendezvous size whose peer will never receive (it
//! cancelled its receive, or left the exchange the same way) then waited forever. Cancelling a send
//! is unreliable in MPI, so the runtime adopts the request with its buffer instead: the send goes on,
//! and the buffer is freed when MPI reports the send complete, which is checked each time another
//! one is adopted and at the end of the run. Sends still pending when the runtime ends are released
//! to MPI (`MPI_Request_free`; in fault-tolerant mode left alone, see [`release_all`]) and their
//! buffers are leaked, never freed under MPI.
//!
//! Requests are handles of the thread that made them (the communicating thread), so the list is
//! per thread.

use std::any::Any;
use std::cell::RefCell;

use crate::ffi::{self, MPI_Request};

struct Orphan {
    reqs: Vec<MPI_Request>,
    // Owned by the list until every request above has completed: MPI reads it until then.
    buf: Box<dyn Any>,
}

thread_local! {
    static ORPHANS: RefCell<Vec<Orphan>> = const { RefCell::new(Vec::new()) };
}

/// Takes over sends `reqs` that read from `buf`, and frees the buffers of earlier ones that completed.
///
/// In fault-tolerant mode, once a process failure has been seen, sends are abandoned because of it:
/// they are cancelled
/// (ULFM grants the cancel of a send to a failed peer) and waited for, for at most
/// [`FT_SETTLE`]. Open MPI 5.0.11 otherwise completes a rendezvous send to the failed peer with an
/// error after the request was released and ends the job from inside the library ("Send error
/// after request freed", seen with heat --recover at 1024 x 1024).
pub(crate) fn adopt(mut reqs: Vec<MPI_Request>, buf: Box<dyn Any>) {
    if super::ft::fault_tolerant() && ffi::ulfm::FAILURE_SEEN.load(std::sync::atomic::Ordering::SeqCst) {
        for r in reqs.iter_mut().filter(|r| **r != ffi::request_null()) {
            ffi::cancel(r);
        }
        let start = std::time::Instant::now();
        while start.elapsed() < FT_SETTLE {
            reqs.retain_mut(|r| *r != ffi::request_null() && !ffi::test_quiet(r));
            if reqs.is_empty() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    ORPHANS.with(|o| o.borrow_mut().push(Orphan { reqs, buf }));
    reap();
}

/// How long an abandoned send is waited for after its cancel in fault-tolerant mode.
const FT_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Frees the buffers of adopted sends that have completed. Returns how many are still pending.
pub(crate) fn reap() -> usize {
    ORPHANS.with(|o| {
        let mut list = o.borrow_mut();
        list.retain_mut(|orphan| {
            // A send that completed with an error (its peer failed, its communicator was revoked)
            // is over too: MPI has released the request.
            orphan.reqs.retain_mut(|r| *r != ffi::request_null() && !ffi::test_quiet(r));
            !orphan.reqs.is_empty()
        });
        list.len()
    })
}

/// At the end of the run, before `MPI_Finalize`: the sends that never completed are released to MPI
/// and their buffers leaked (MPI may still read them).
pub(crate) fn release_all() {
    if reap() == 0 {
        return;
    }
    let ft = super::ft::fault_tolerant();
    ORPHANS.with(|o| {
        for mut orphan in o.borrow_mut().drain(..) {
            // In fault-tolerant mode a released send to a failed peer fails later, and Open MPI
            // raises that error on no communicator, with MPI_ERRORS_ARE_FATAL (seen: heat --recover
            // ended by it after recovering): the request is left alone, as its buffer is.
            if !ft {
                for r in &mut orphan.reqs {
                    ffi::request_free(r);
                }
            }
            std::mem::forget(orphan.buf);
        }
    });
}
