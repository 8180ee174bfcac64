//! Cross-rank agreement on collective arguments (the "checked" mode, after KaMPIng's assertion
//! levels).
//!
//! Every checked collective first calls [`Comm::agree`] with the same fixed-length signature: an
//! `MPI_Allreduce(MAX)` over `[op, -op, failed_rank+1, f0, -f0, f1, -f1, ...]`. From the maxima each
//! rank reads both the largest and the smallest value of every field, so all ranks reach the same
//! verdict from the same data and either all enter the real collective or none does. Because the
//! signature has the same length for every operation, ranks that call *different* collectives at
//! the same point are caught too instead of hanging.

use super::Comm;
use crate::error::{Error, ErrorKind, Result};
use crate::ffi;

/// The fields a collective may ask its ranks to agree on. `None` means "this rank does not care"
/// (for example the count of a non-root rank in a gather).
#[derive(Clone, Copy, Default)]
pub(crate) struct Signature {
    pub(crate) root: Option<i64>,
    pub(crate) count: Option<i64>,
    pub(crate) elem_size: Option<i64>,
    pub(crate) reduce_op: Option<i64>,
}

const FIELDS: usize = 4;
const LEN: usize = 3 + 2 * FIELDS;

fn op_code(name: &str) -> i64 {
    // FNV-1a, folded to 62 bits so that negation cannot overflow.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h >> 2) as i64
}

impl Comm {
    /// Agrees across all ranks that `op` may proceed. Returns this rank's own error first, then
    /// [`ErrorKind::PeerFailed`] if another rank had one, then [`ErrorKind::CollectiveMismatch`] for
    /// any field or operation that differs. Unchecked communicators return `local` unchanged.
    ///
    /// Collective (in checked mode).
    #[inline]
    pub(crate) fn agree(&self, op: &'static str, local: Result<()>, sig: Signature) -> Result<()> {
        if self.count_unchecked() {
            return local;
        }
        self.count_collective();
        self.agree_checked(op, local, sig)
    }

    /// The checked part of [`agree`](Comm::agree), out of line: most calls skip it.
    #[inline(never)]
    fn agree_checked(&self, op: &'static str, local: Result<()>, sig: Signature) -> Result<()> {
        let code = op_code(op);
        let mut v = [i64::MIN; LEN];
        v[0] = code;
        v[1] = -code;
        v[2] = if local.is_err() { self.rank as i64 + 1 } else { 0 };
        let fields = [sig.root, sig.count, sig.elem_size, sig.reduce_op];
        for (i, f) in fields.iter().enumerate() {
            if let Some(x) = *f {
                v[3 + 2 * i] = x;
                v[4 + 2 * i] = -x;
            }
        }
        let out = self.max_over_ranks(&v, op)?;
        local?;
        let verdict = self.verdict(&out, code, op, &fields);
        if verdict.is_err() && crate::runtime::ft::fault_tolerant() {
            // After a process failure in the middle of the agreement, the maxima can mix
            // contributions from different points of the program (seen with a node's ranks killed
            // together): the failure is the error, not a mismatch.
            if let Some(class) = ffi::ulfm::broken(self.raw, op, self.rank)? {
                return ffi::check(class, op, self.rank);
            }
        }
        verdict
    }

    /// [`agree`](Comm::agree) on a local check only, in the communicator's check mode: for
    /// neighbour-wise operations whose argument errors would leave the peers waiting for messages.
    ///
    /// Collective (in checked mode).
    pub(crate) fn agree_local(&self, op: &'static str, local: Result<()>) -> Result<()> {
        self.agree(op, local, Signature::default())
    }

    /// Agrees, in every check mode, on whether any rank had a local error: returns this rank's own
    /// error, or [`ErrorKind::PeerFailed`] naming the lowest rank that had one. For operations whose
    /// input errors show on some ranks only (a particle outside the box), so that every rank
    /// returns an error instead of the others waiting in the next message.
    ///
    /// Collective (one small `MPI_Allreduce`).
    pub(crate) fn agree_errors(&self, op: &'static str, local: Result<()>) -> Result<()> {
        let mine = if local.is_err() { -(self.rank as i64) - 1 } else { i64::MIN };
        let out = self.max_over_ranks(&[mine], op)?;
        local?;
        if out[0] != i64::MIN {
            return Err(Error::new(
                ErrorKind::PeerFailed,
                op,
                Some(self.rank),
                format!("rank {} reported an error (see its message), so every rank stops here", -out[0] - 1),
            ));
        }
        Ok(())
    }

    /// The element-wise maximum of `v` over the ranks (`MPI_Allreduce(MAX)`).
    fn max_over_ranks<const N: usize>(&self, v: &[i64; N], op: &'static str) -> Result<[i64; N]> {
        let mut out = [0_i64; N];
        ffi::allreduce_typed(v, &mut out, ffi::layout::<i64>().datatype, ffi::builtin_op(3), self.raw, op, self.rank)?;
        Ok(out)
    }

    /// The verdict of the agreement from the maxima `out`.
    fn verdict(&self, out: &[i64; LEN], code: i64, op: &'static str, fields: &[Option<i64>; FIELDS]) -> Result<()> {
        if out[2] > 0 {
            return Err(Error::new(
                ErrorKind::PeerFailed,
                op,
                Some(self.rank),
                format!("rank {} (at least) reported an argument error, so no rank entered the collective", out[2] - 1),
            ));
        }
        if out[0] != code || -out[1] != code {
            return Err(self.err(
                ErrorKind::CollectiveMismatch,
                op,
                format!("ranks called different collective operations at the same point (this rank called {op})"),
            ));
        }
        let names = ["root", "count", "element size", "reduction operation"];
        for (i, f) in fields.iter().enumerate() {
            let (max, neg_min) = (out[3 + 2 * i], out[4 + 2 * i]);
            if max == i64::MIN {
                continue; // no rank cared
            }
            let min = -neg_min;
            if min != max {
                let kind = if i == 0 { ErrorKind::InvalidRoot } else { ErrorKind::CollectiveMismatch };
                let mine = f.map_or("not given".to_string(), |x| x.to_string());
                let (lo, hi) = if i == 3 {
                    (super::Op::name_of(min), super::Op::name_of(max))
                } else {
                    (min.to_string(), max.to_string())
                };
                return Err(self.err(
                    kind,
                    op,
                    format!("ranks disagree on the {} (smallest {lo}, largest {hi}; this rank {mine})", names[i]),
                ));
            }
        }
        Ok(())
    }
}
