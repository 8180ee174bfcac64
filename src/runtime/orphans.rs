//! Sends (and persistent requests) whose handle was dropped before they completed.
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
    // Nonblocking collectives may not be released with MPI_Request_free (MPI-4.1 section 6.12).
    collective: bool,
    // Owned by the list until every request above has completed: MPI reads it until then.
    buf: Box<dyn Any>,
}

thread_local! {
    static ORPHANS: RefCell<Vec<Orphan>> = const { RefCell::new(Vec::new()) };
}

/// Takes over sends `reqs` that read from `buf`, and frees the buffers of earlier ones that completed.
///
/// In fault-tolerant mode, once a process failure has been seen, sends abandoned because of it are
/// left alone for good: neither cancelled nor tested, their buffers leaked. Open MPI 5.0.11 grants
/// the cancel of a send to a failed peer, and completes a send on a revoked communicator with an
/// error, while its rendezvous transfer may still be under way; a test or wait then releases the
/// request, and when the transfer fails afterwards the library ends the job ("Send error after
/// request freed", see `ffi::ulfm::waitall_keep`).
pub(crate) fn adopt(reqs: Vec<MPI_Request>, buf: Box<dyn Any>) {
    take_over(Orphan { reqs, collective: false, buf });
}

/// Takes over an unfinished nonblocking collective (a neighbour exchange whose peers may have left
/// it) with everything it reads or writes; freed once it completes, leaked at the end of the run
/// if it never does (a collective request cannot be released to MPI).
pub(crate) fn adopt_collective(reqs: Vec<MPI_Request>, buf: Box<dyn Any>) {
    take_over(Orphan { reqs, collective: true, buf });
}

fn take_over(orphan: Orphan) {
    if ffi::ulfm::failure_seen() {
        std::mem::forget(orphan.buf);
        return;
    }
    ORPHANS.with(|o| o.borrow_mut().push(orphan));
    reap();
}

/// Frees the buffers of adopted sends that have completed. Returns how many are still pending.
pub(crate) fn reap() -> usize {
    ORPHANS.with(|o| {
        let mut list = o.borrow_mut();
        list.retain_mut(|orphan| {
            // A send that completed with an error (its peer failed, its communicator was revoked)
            // is over too: MPI has released the request.
            orphan.reqs.retain_mut(|r| {
                if *r == ffi::request_null() {
                    return false;
                }
                if !ffi::test_quiet(r) {
                    return true;
                }
                // A completed persistent request is inactive, not null: released here.
                if *r != ffi::request_null() {
                    ffi::request_free(r);
                }
                false
            });
            !orphan.reqs.is_empty()
        });
        list.len()
    })
}

/// At the end of the run, before `MPI_Finalize`: the sends that never completed are released to MPI
/// and their buffers leaked (MPI may still read them).
pub(crate) fn release_all() {
    if ffi::ulfm::failure_seen() {
        // Not even tested: a test would release a send that completed with an error while its
        // transfer may be under way (see `adopt`).
        ORPHANS.with(|o| o.borrow_mut().drain(..).for_each(|orphan| std::mem::forget(orphan.buf)));
        return;
    }
    if reap() == 0 {
        return;
    }
    let ft = super::ft::fault_tolerant();
    ORPHANS.with(|o| {
        for mut orphan in o.borrow_mut().drain(..) {
            // In fault-tolerant mode a released send to a failed peer fails later, and Open MPI
            // raises that error on no communicator, with MPI_ERRORS_ARE_FATAL (seen: heat --recover
            // ended by it after recovering): the request is left alone, as its buffer is.
            if !ft && !orphan.collective {
                for r in &mut orphan.reqs {
                    ffi::request_free(r);
                }
            }
            std::mem::forget(orphan.buf);
        }
    });
}
