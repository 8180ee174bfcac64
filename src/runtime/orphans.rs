//! Sends whose handle was dropped before they completed.
//!
//! Dropping an unfinished owning send ([`crate::comm::SendRequest`], the sends of an unfinished
//! halo exchange) used to wait for it. A send of rendezvous size whose peer will never receive (it
//! cancelled its receive, or left the exchange the same way) then waited forever. Cancelling a send
//! is unreliable in MPI, so the runtime adopts the request with its buffer instead: the send goes on,
//! and the buffer is freed when MPI reports the send complete, which is checked each time another
//! one is adopted and at the end of the run. Sends still pending when the runtime ends are released
//! to MPI (`MPI_Request_free`) and their buffers are leaked, never freed under MPI.
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
pub(crate) fn adopt(reqs: Vec<MPI_Request>, buf: Box<dyn Any>) {
    ORPHANS.with(|o| o.borrow_mut().push(Orphan { reqs, buf }));
    reap();
}

/// Frees the buffers of adopted sends that have completed. Returns how many are still pending.
pub(crate) fn reap() -> usize {
    ORPHANS.with(|o| {
        let mut list = o.borrow_mut();
        list.retain_mut(|orphan| {
            orphan
                .reqs
                .retain_mut(|r| *r != ffi::request_null() && !matches!(ffi::test(r, "orphaned send", -1).0, Ok(true)));
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
    ORPHANS.with(|o| {
        for mut orphan in o.borrow_mut().drain(..) {
            for r in &mut orphan.reqs {
                ffi::request_free(r);
            }
            std::mem::forget(orphan.buf);
        }
    });
}
