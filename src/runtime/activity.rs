//! What this rank is doing right now, for the watchdog ([`crate::services::watchdog`]).
//!
//! Every blocking operation of the communication layer records its name on entry
//! ([`enter`], through the returned [`Busy`] guard) and "computing" when it returns; each entry
//! also advances a progress counter. A watchdog thread samples both: a counter that has not moved
//! for longer than its limit means the rank is stuck, and the name says where.
//!
//! Nothing is recorded unless a watchdog runs ([`set_watched`]): then one relaxed load. With a
//! watchdog, three relaxed atomic stores on entry and one on exit (about a nanosecond); no clock is
//! read on the hot path, the watchdog keeps time itself. The operation's name (a `&'static str`)
//! is packed with its length into one 64-bit word so that a reader never sees the pointer of one
//! name with the length of another.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

static WATCHED: AtomicBool = AtomicBool::new(false);

static OP: AtomicU64 = AtomicU64::new(0);
static PEER: AtomicI64 = AtomicI64::new(-1);
static COUNT: AtomicU64 = AtomicU64::new(0);

const LEN_SHIFT: u32 = 48;
const COMPUTING: &str = "computing (between MPI calls)";

fn pack(op: &'static str) -> u64 {
    let (ptr, len) = (op.as_ptr() as u64, op.len() as u64);
    if ptr >> LEN_SHIFT == 0 && len >> (64 - LEN_SHIFT) == 0 {
        ptr | len << LEN_SHIFT
    } else {
        0 // An address beyond 48 bits: reported as "computing" rather than misread.
    }
}

fn unpack(word: u64) -> &'static str {
    if word == 0 {
        return COMPUTING;
    }
    let (ptr, len) = ((word & ((1 << LEN_SHIFT) - 1)) as *const u8, (word >> LEN_SHIFT) as usize);
    // SAFETY:
    // - `word` was produced by `pack` from a `&'static str` (the only writer of `OP`), and one
    //   atomic load returns one whole stored word, so `ptr` and `len` describe that same string;
    // - the string is 'static: its bytes stay valid and immutable for the rest of the process,
    //   and are valid UTF-8 because they came from a `str`.
    unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(ptr, len)) }
}

/// Marks this rank as inside operation `op` with `peer` (-1: a collective or several peers) until
/// the guard is dropped.
/// Guards nest: an operation that calls another (a `sendrecv` checking its receive side, a wait inside
/// a request) gets its own name and peer back when the inner guard is dropped, not "computing".
#[must_use = "the operation counts as running only while the guard lives"]
#[inline]
pub(crate) fn enter(op: &'static str, peer: i32) -> Busy {
    if WATCHED.load(Ordering::Relaxed) {
        let outer = (OP.load(Ordering::Relaxed), PEER.load(Ordering::Relaxed));
        OP.store(pack(op), Ordering::Relaxed);
        PEER.store(peer as i64, Ordering::Relaxed);
        COUNT.store(COUNT.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        return Busy(Some(outer));
    }
    Busy(None)
}

/// Turns the recording on (a watchdog starts) or off.
pub(crate) fn set_watched(on: bool) {
    WATCHED.store(on, Ordering::SeqCst);
}

/// Sets the peer of the operation in progress (known only after its arguments are checked).
#[inline]
pub(crate) fn set_peer(peer: i32) {
    if WATCHED.load(Ordering::Relaxed) {
        PEER.store(peer as i64, Ordering::Relaxed);
    }
}

/// Marks the end of an operation started with [`enter`] when dropped, restoring the operation (and
/// peer) that was running around it.
#[derive(Debug)]
pub(crate) struct Busy(Option<(u64, i64)>);

impl Drop for Busy {
    #[inline]
    fn drop(&mut self) {
        if let Some((op, peer)) = self.0 {
            OP.store(op, Ordering::Relaxed);
            PEER.store(peer, Ordering::Relaxed);
        }
    }
}

/// Records progress made outside MPI (a long computation that is still advancing), so that the
/// watchdog does not take it for a hang. Cheap enough to call every iteration.
///
/// Local.
pub fn mark_progress() {
    COUNT.store(COUNT.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

/// A sample of this rank's activity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity {
    /// The operation in progress, or "computing (between MPI calls)".
    pub op: &'static str,
    /// The peer rank of a point-to-point operation; `None` for collectives and exchanges with
    /// several neighbours.
    pub peer: Option<i32>,
    /// Operations entered (plus [`mark_progress`] calls) so far; it moves while the rank makes
    /// progress.
    pub count: u64,
}

/// This rank's current activity (readable from any thread).
///
/// Local.
pub fn current_activity() -> Activity {
    let op = unpack(OP.load(Ordering::Relaxed));
    let peer = PEER.load(Ordering::Relaxed);
    Activity { op, peer: (op != COMPUTING && peer >= 0).then_some(peer as i32), count: COUNT.load(Ordering::Relaxed) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_the_guard_clears_them() {
        set_watched(true);
        let before = current_activity().count;
        {
            let _b = enter("allreduce", -1);
            let a = current_activity();
            assert_eq!((a.op, a.peer), ("allreduce", None));
            {
                let _c = enter("recv", 3);
                assert_eq!(current_activity().peer, Some(3));
            }
            // The inner guard gives the outer operation back (it used to leave "computing").
            assert_eq!((current_activity().op, current_activity().peer), ("allreduce", None));
        }
        let a = current_activity();
        assert_eq!(a.op, COMPUTING);
        assert!(a.count >= before + 2);
    }
}
