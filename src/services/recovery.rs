//! In-job recovery from failed processes: the survivors shrink the job and continue from in-memory
//! copies of the state, kept by partner ranks, without a restart and without the file system.
//!
//! Needs fault-tolerant mode ([`crate::RuntimeBuilder::fault_tolerant`], `PHALANX_FT=1`, and an MPI
//! with ULFM, see [`crate::runtime::ft`]); without it a failed process ends the job as before.
//!
//! # The recovery loop
//! [`run`] calls the program's body with an [`Attempt`]: the communicator to compute on, and, after a
//! failure, the state [`Restored`] from the copies. When the body returns
//! [`ErrorKind::ProcessFailed`] or [`ErrorKind::Revoked`] (any MPI call on a rank that noticed the
//! failure, or on any rank after another revoked), `run` revokes every communicator phalanx made
//! (so that ranks blocked with live peers stop too), shrinks to the survivors, agrees on the newest
//! step whose copies survived, and calls the body again. The body rebuilds what it derived from the
//! communicator (decompositions, arrays) from [`Attempt::comm`], as Fenix and Reinit do: no handle
//! the program holds has to change behind its back.
//!
//! ```no_run
//! use phalanx::services::recovery::{self, Snapshot};
//! # fn main() -> phalanx::Result<()> {
//! let rt = phalanx::Runtime::builder().fault_tolerant(true).init()?;
//! let (n, steps, every) = (1000usize, 100u64, 10u64);
//! let total = recovery::run(&rt.world(), |at| {
//!     let comm = at.comm();
//!     let (r, p) = (comm.rank() as usize, comm.size() as usize);
//!     let mine = n * r / p..n * (r + 1) / p;
//!     let (mut step, mut x) = match at.restored() {
//!         Some(s) => (s.step(), s.segment::<f64>(comm, "x", mine.clone())?),
//!         None => (0, vec![1.0; mine.len()]),
//!     };
//!     while step < steps {
//!         if step % every == 0 {
//!             let mut snap = Snapshot::new(step);
//!             snap.segment("x", mine.start, n, &x);
//!             at.copy(&snap)?; // before the step: a restored step is copied again at once
//!         }
//!         x.iter_mut().for_each(|v| *v *= 1.01);
//!         comm.barrier()?;
//!         step += 1;
//!     }
//!     comm.allreduce(x.iter().sum::<f64>(), phalanx::comm::Op::Sum)
//! })?;
//! # let _ = total; Ok(()) }
//! ```
//!
//! # Partner copies
//! [`Attempt::copy`] sends this rank's snapshot to its partner and keeps the partner's (collective).
//! Partners are on different nodes where the job spans several and no node holds more than half
//! the ranks (the rank as many places further on in node order as the largest node has ranks), so
//! losing a node loses no state; otherwise (one node, or after a recovery left one node with most
//! of the ranks) some partners share a node, and rank 0 says so when the attempt starts. Each rank keeps
//! the last two copies of its own snapshot and of its partner's: a failure in the middle of a copy
//! leaves the previous one whole, and the survivors roll back to the newest step that every
//! survivor and every failed rank's partner holds. When a rank and its partner both fail, their state
//! is lost: with [`Recovery::disk_fallback`] the survivors continue from the newest disk checkpoint
//! ([`Attempt::disk_checkpoint`]); otherwise [`run`] returns an error naming both, on every survivor.
//! Memory: twice this rank's snapshot plus twice its partner's ([`Attempt::copy_bytes`]).
//!
//! # What a failure leaves behind
//! With Open MPI 5.0.11, releasing a request that completed with an error (its communicator
//! revoked, its peer failed) while its rendezvous transfer was still under way ended the job from
//! inside the library, and freeing a revoked communicator let a late message for it be matched on
//! the next new communicator. So after a failure, in fault-tolerant mode: revoked communicators are
//! never freed, a failed halo exchange leaves its requests and both buffers to MPI, and sends
//! abandoned because of the failure are neither cancelled nor tested, their buffers leaked. This
//! costs the memory of the exchanges in flight at each failure.
//!
//! # Spare ranks
//! With [`Recovery::spares`] the last ranks of the communicator do not run the body: they wait in
//! the agreement that ends each attempt (which a revocation does not interrupt), sleeping between
//! polls so that their cores stay free for the workers (`MPIX_Comm_iagree`; without fault-tolerant
//! mode, a barrier waited for the same way). After a failure
//! each spare takes the place of a failed rank, lowest first: it gets that rank's number in the
//! new communicator and its state from the partner's copy, so the body continues on as many ranks
//! as before; when the spares are used up, the run shrinks. A program whose result depends on the
//! rank count (nbody's all-pairs sums) keeps it this way.

use std::cell::RefCell;
use std::ops::Range;

use bytemuck::Pod;
use ndarray::Dimension;

use crate::comm::Comm;
use crate::decomp::DistArray;
use crate::error::{Error, ErrorKind, Result};
use crate::ffi;
use crate::services::checkpoint::{CheckpointStore, Generation};

const OP: &str = "recovery";
const NONE: u64 = u64::MAX;

/// Named pieces of global vectors that one rank copies to its partner at a step.
#[derive(Debug)]
pub struct Snapshot<'a> {
    step: u64,
    items: Vec<(String, usize, usize, usize, &'a [u8])>,
}

impl<'a> Snapshot<'a> {
    /// An empty snapshot of `step`.
    pub fn new(step: u64) -> Snapshot<'a> {
        Snapshot { step, items: Vec::new() }
    }

    /// This rank's elements `offset..offset + data.len()` of the global vector `name` of
    /// `global_len` elements. The segments of one name (over all ranks) must not overlap.
    pub fn segment<T: Pod>(&mut self, name: &str, offset: usize, global_len: usize, data: &'a [T]) -> &mut Self {
        self.items.push((name.to_string(), std::mem::size_of::<T>(), offset, global_len, bytemuck::cast_slice(data)));
        self
    }

    /// The owned block of a distributed array (the ghosts are not copied), restored onto any
    /// decomposition of the same global shape with [`Restored::array`].
    pub fn array<T: Pod + Send + Sync, D: Dimension>(&mut self, name: &str, a: &'a DistArray<T, D>) -> &mut Self {
        let d = a.decomposition();
        let (total, data) = (d.shape().iter().product::<usize>(), a.as_slice());
        for (local, global, len) in rows(d.owned_box().start(), d.owned_box().len(), d.ghost_width(), d.shape()) {
            self.segment(name, global, total, &data[local..local + len]);
        }
        self
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut put = |v: u64| out.extend_from_slice(&v.to_le_bytes());
        put(self.step);
        put(self.items.len() as u64);
        for (name, elem, offset, global, data) in &self.items {
            for v in [name.len(), *elem, *offset, *global, data.len()] {
                put(v as u64);
            }
        }
        for (name, .., data) in &self.items {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
        }
        out
    }
}

/// One segment piece inside an encoded snapshot.
#[derive(Clone, Debug, PartialEq)]
struct Piece {
    name: String,
    elem: usize,
    offset: usize,
    global: usize,
    bytes: Range<usize>,
}

/// The step and pieces of an encoded snapshot, or `None` when it is not one (checked: the bytes
/// came over the network).
fn decode(b: &[u8]) -> Option<(u64, Vec<Piece>)> {
    let word = |i: usize| -> Option<u64> { Some(u64::from_le_bytes(b.get(i * 8..i * 8 + 8)?.try_into().ok()?)) };
    let (step, n) = (word(0)?, usize::try_from(word(1)?).ok()?);
    let head = n.checked_mul(5)?.checked_add(2)?.checked_mul(8)?;
    let mut at = head;
    let mut out = Vec::with_capacity(n.min(b.len() / 40));
    for i in 0..n {
        let f = |k: usize| word(2 + i * 5 + k).and_then(|v| usize::try_from(v).ok());
        let (name_len, elem, offset, global, len) = (f(0)?, f(1)?, f(2)?, f(3)?, f(4)?);
        let name = std::str::from_utf8(b.get(at..at.checked_add(name_len)?)?).ok()?.to_string();
        at += name_len;
        let end = at.checked_add(len)?;
        if elem == 0 || len % elem != 0 || offset.checked_add(len / elem)? > global || end > b.len() {
            return None;
        }
        out.push(Piece { name, elem, offset, global, bytes: at..end });
        at = end;
    }
    (at == b.len()).then_some((step, out))
}

/// A copy: the step and the encoded snapshot.
#[derive(Clone, Debug)]
struct Copy {
    step: u64,
    bytes: Vec<u8>,
}

/// One run of the body: the communicator, the restored state, the copies.
#[derive(Debug)]
pub struct Attempt {
    /// Every rank of the run, the workers and the spares waiting (`None` without spares: the
    /// workers are all).
    all: Option<Comm>,
    /// The workers (the ranks that run the body); for a spare, the spares.
    comm: Comm,
    spare: bool,
    /// How many workers there are.
    width: i32,
    restored: Option<Restored>,
    disk: Option<Generation>,
    recoveries: u32,
    /// Seconds this rank spent recovering so far (all attempts before this one).
    spent: f64,
    /// For every worker, the worker that keeps its copies (empty on a spare).
    keeper: Vec<i32>,
    to: i32,
    from: i32,
    /// This rank's own snapshots, newest first.
    own: RefCell<[Option<Copy>; 2]>,
    /// The copies of rank `from`'s snapshots, newest first.
    held: RefCell<[Option<Copy>; 2]>,
}

impl Attempt {
    /// The first attempt: the last `spares` ranks of `comm` wait, the others work.
    fn first(comm: &Comm, spares: usize) -> Result<Attempt> {
        let width = comm.size() - spares as i32;
        let (all, workers, spare) = if spares == 0 {
            (None, comm.dup()?, false)
        } else {
            let all = comm.dup()?;
            let spare = all.rank() >= width;
            let workers = all.split(Some(i32::from(spare)), all.rank())?.expect("a color was given");
            (Some(all), workers, spare)
        };
        let keeper = if spare { Vec::new() } else { partners(&workers)? };
        Ok(Attempt::with_partners((all, workers, width), spare, (None, None), 0, 0.0, keeper))
    }

    /// Every rank of the run (workers and spares).
    fn all(&self) -> &Comm {
        self.all.as_ref().unwrap_or(&self.comm)
    }

    fn with_partners(
        (all, comm, width): (Option<Comm>, Comm, i32),
        spare: bool,
        (restored, disk): (Option<Restored>, Option<Generation>),
        recoveries: u32,
        spent: f64,
        keeper: Vec<i32>,
    ) -> Attempt {
        let me = comm.rank();
        let to = keeper.get(me as usize).copied().unwrap_or(-1);
        let from = keeper.iter().position(|k| *k == me).map_or(to, |r| r as i32);
        let (own, held) = (RefCell::new([None, None]), RefCell::new([None, None]));
        Attempt { all, comm, spare, width, restored, disk, recoveries, spent, keeper, to, from, own, held }
    }

    /// The communicator of this attempt: the ranks that run the body (every surviving rank, less the
    /// spares still waiting).
    pub fn comm(&self) -> &Comm {
        &self.comm
    }

    /// After a failure, the state to continue from; `None` on the first attempt (and after a
    /// failure before the first copy: the body starts over on the survivors; and when the copies
    /// were lost and the run falls back to a disk checkpoint, see [`Attempt::disk_checkpoint`]).
    pub fn restored(&self) -> Option<&Restored> {
        self.restored.as_ref()
    }

    /// After a failure that lost the partner copies of some rank (it and its partner failed), the
    /// newest disk checkpoint to continue from, when the run was given a directory with
    /// [`Recovery::disk_fallback`] and it holds one (read it as on a restart:
    /// [`Generation::read_array`], [`Generation::read_segment`]).
    pub fn disk_checkpoint(&self) -> Option<&Generation> {
        self.disk.as_ref()
    }

    /// How many failures were recovered from before this attempt.
    pub fn recoveries(&self) -> u32 {
        self.recoveries
    }

    /// Seconds this rank spent in recoveries so far, from entering each recovery to the next
    /// attempt (agreement, shrinking, choosing the step; not the time to notice the failure, nor
    /// the steps recomputed, which only the program knows).
    pub fn recovery_seconds(&self) -> f64 {
        self.spent
    }

    /// The rank this rank copies to, and the rank whose copies it keeps.
    pub fn partners(&self) -> (i32, i32) {
        (self.to, self.from)
    }

    /// The bytes of copies this rank keeps (its own two and its partner's two).
    pub fn copy_bytes(&self) -> usize {
        let (own, held) = (self.own.borrow(), self.held.borrow());
        own.iter().chain(held.iter()).flatten().map(|c| c.bytes.len()).sum()
    }

    /// Sends `snap` to this rank's partner and keeps the partner's snapshot of the same step; the
    /// previous copies stay until this one is complete.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] when the ranks copy different steps, a segment does not fit its
    /// global length or the snapshot exceeds 2 GiB (on the rank concerned; [`ErrorKind::PeerFailed`]
    /// naming it on the others); [`ErrorKind::ProcessFailed`] / [`ErrorKind::Revoked`] when a rank
    /// failed (return it from the body: [`run`] recovers); [`ErrorKind::Checkpoint`] when the
    /// partner's bytes are not a snapshot (and `PeerFailed` on the others).
    pub fn copy(&self, snap: &Snapshot<'_>) -> Result<()> {
        let c = &self.comm;
        let (lo, hi) = c.min_max(&[snap.step as i64])?;
        if lo != hi {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "recovery copy",
                Some(c.rank()),
                format!("the ranks copy different steps ({} to {}); this rank copies step {}", lo[0], hi[0], snap.step),
            ));
        }
        let mine = snap.encode();
        let local = if decode(&mine).is_none() {
            Err(format!(
                "a segment of the snapshot of step {} does not fit its global length: {}",
                snap.step,
                snap.items
                    .iter()
                    .map(|(n, e, o, g, d)| format!("{n}: elements {o}..{} of {g}", o + d.len() / e.max(&1)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        } else if mine.len() > MAX_COPY {
            Err(format!(
                "the snapshot of step {} is {} bytes; a partner copy is one MPI message, at most {MAX_COPY} bytes",
                snap.step,
                mine.len()
            ))
        } else {
            Ok(())
        };
        let local = local.map_err(|m| Error::new(ErrorKind::InvalidArgument, "recovery copy", Some(c.rank()), m));
        c.agree_result("recovery copy", local)?;
        // The sizes were checked by their senders (and agreed) above.
        let mut len = [0u64];
        c.sendrecv(&[mine.len() as u64], self.to, TAG, &mut len, self.from, TAG)?;
        crate::services::fault::in_partner_copy(snap.step);
        let mut theirs = vec![0u8; (len[0] as usize).min(MAX_COPY)];
        c.sendrecv(&mine, self.to, TAG + 1, &mut theirs, self.from, TAG + 1)?;
        let local = match decode(&theirs) {
            Some((step, _)) if step == snap.step => Ok(()),
            _ => Err(Error::new(
                ErrorKind::Checkpoint,
                "recovery copy",
                Some(c.rank()),
                format!("the copy from rank {} is not a snapshot of step {}", self.from, snap.step),
            )),
        };
        c.agree_result("recovery copy", local)?;
        // Complete: the newest becomes the previous.
        let (mut own, mut held) = (self.own.borrow_mut(), self.held.borrow_mut());
        *own = [Some(Copy { step: snap.step, bytes: mine }), own[0].take()];
        *held = [Some(Copy { step: snap.step, bytes: theirs }), held[0].take()];
        Ok(())
    }
}

const TAG: i32 = 31_000;

/// The largest snapshot one rank copies (one MPI message of bytes, whose count is an `int`).
const MAX_COPY: usize = i32::MAX as usize;

/// Each rank's partner: for every rank, the rank it copies to (so `to[r]` keeps rank r's copies).
/// In node order, the rank as many places on as the largest node has ranks: on another node when
/// the job spans several.
fn partners(comm: &Comm) -> Result<Vec<i32>> {
    let n = comm.size() as usize;
    let node = comm.split_node()?;
    let nodes = comm.allgather(node.node)?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|r| (nodes[*r], *r));
    let mut per_node = std::collections::HashMap::new();
    for x in &nodes {
        *per_node.entry(*x).or_insert(0usize) += 1;
    }
    let widest = per_node.values().copied().max().unwrap_or(1);
    let shift = if per_node.len() > 1 && widest < n { widest } else { 1 };
    if per_node.len() > 1 && 2 * widest > n && comm.rank() == 0 {
        eprintln!(
            "phalanx recovery: one node holds {widest} of the {n} ranks: some partner copies are kept on the same node, \
             so losing that node can lose state"
        );
    }
    let mut to = vec![0i32; n];
    for (at, r) in order.iter().enumerate() {
        to[*r] = order[(at + shift) % n] as i32;
    }
    Ok(to)
}

/// The state restored after a failure: the step, and the copies this rank brings (its own, and a
/// failed rank's when this rank kept them).
#[derive(Debug)]
pub struct Restored {
    step: u64,
    failed: Vec<i32>,
    copies: Vec<Vec<u8>>,
}

impl Restored {
    /// The step every survivor rolled back to.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The ranks (of the communicator before the failure) that failed.
    pub fn failed(&self) -> &[i32] {
        &self.failed
    }

    /// Elements `range` of the global vector `name` as it was at [`Restored::step`], gathered from
    /// the survivors' copies (each rank asks for its own range, on the new communicator).
    ///
    /// Collective over `comm` (the attempt's communicator).
    ///
    /// # Errors
    /// [`ErrorKind::Checkpoint`] when some element a rank asks for is in no copy (or in several),
    /// or the element size differs from the copied one (on that rank; [`ErrorKind::PeerFailed`]
    /// naming it on the others); MPI errors.
    pub fn segment<T: Pod>(&self, comm: &Comm, name: &str, range: Range<usize>) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); range.len()];
        self.gather(
            comm,
            name,
            std::mem::size_of::<T>(),
            &[(range.start, range.end)],
            bytemuck::cast_slice_mut(&mut out),
        )?;
        Ok(out)
    }

    /// Fills the owned block of `a` (on the new decomposition, any of the same global shape) with
    /// the array `name` as it was at [`Restored::step`]; the ghosts are left for the next exchange.
    ///
    /// Collective over `a`'s communicator.
    ///
    /// # Errors
    /// As [`Restored::segment`].
    pub fn array<T: Pod + Send + Sync, D: Dimension>(&self, name: &str, a: &mut DistArray<T, D>) -> Result<()> {
        let d = a.decomposition().clone();
        let rows = rows(d.owned_box().start(), d.owned_box().len(), d.ghost_width(), d.shape());
        let wants: Vec<(usize, usize)> = rows.iter().map(|(_, g, n)| (*g, g + n)).collect();
        let mut block = vec![T::zeroed(); rows.iter().map(|r| r.2).sum()];
        self.gather(d.comm(), name, std::mem::size_of::<T>(), &wants, bytemuck::cast_slice_mut(&mut block))?;
        let data = a.as_slice_mut();
        let mut at = 0;
        for (local, _, n) in rows {
            data[local..local + n].copy_from_slice(&block[at..at + n]);
            at += n;
        }
        Ok(())
    }

    /// The elements `wants` (sorted, disjoint global ranges) of `name`, in that order, into `out`:
    /// every survivor sends the overlaps of its pieces with every rank's wants (one all-to-all).
    fn gather(&self, comm: &Comm, name: &str, elem: usize, wants: &[(usize, usize)], out: &mut [u8]) -> Result<()> {
        // The pieces of `name` this rank brings, sorted: (offset, elements, element size), bytes.
        let mut pieces: Vec<(usize, usize, usize, &[u8])> = Vec::new();
        for c in &self.copies {
            let (_, ps) = decode(c).expect("checked when copied");
            for p in ps.into_iter().filter(|p| p.name == name) {
                pieces.push((p.offset, (p.bytes.end - p.bytes.start) / p.elem, p.elem, &c[p.bytes]));
            }
        }
        pieces.sort_by_key(|p| p.0);
        let meta: Vec<u64> = pieces.iter().flat_map(|p| [p.0 as u64, p.1 as u64, p.2 as u64]).collect();
        let all_meta = comm.allgatherv(&meta)?;
        let flat: Vec<u64> = wants.iter().flat_map(|w| [w.0 as u64, w.1 as u64]).collect();
        let all_wants = comm.allgatherv(&flat)?;
        let spans = |m: &[u64]| -> Vec<(usize, usize, usize)> {
            m.chunks_exact(3).map(|p| (p[0] as usize, p[0] as usize + p[1] as usize, p[2] as usize)).collect()
        };
        let mine = spans(&meta);
        let mut send = Vec::new();
        let mut counts = Vec::with_capacity(comm.size() as usize);
        for w in all_wants.iter() {
            let before = send.len();
            let w: Vec<(usize, usize)> = w.chunks_exact(2).map(|x| (x[0] as usize, x[1] as usize)).collect();
            overlaps(&mine, &w, elem, |k, lo, hi, _, _| {
                let (off, _, _, bytes) = pieces[k];
                send.extend_from_slice(&bytes[(lo - off) * elem..(hi - off) * elem]);
            });
            counts.push(send.len() - before);
        }
        let got = comm.alltoallv(&send, &counts)?;
        // Where each want starts in `out`.
        let mut starts = Vec::with_capacity(wants.len());
        let mut total = 0usize;
        for w in wants {
            starts.push(total);
            total += w.1 - w.0;
        }
        let (mut covered, mut bad_elem) = (0usize, None);
        for (src, m) in all_meta.iter().enumerate() {
            let theirs = spans(m);
            if let Some(p) = theirs.iter().find(|p| p.2 != elem && wants.iter().any(|w| p.0 < w.1 && p.1 > w.0)) {
                bad_elem = Some(p.2);
            }
            let block = got.block(src);
            let mut at = 0;
            overlaps(&theirs, wants, elem, |_, lo, hi, wi, w| {
                let len = (hi - lo) * elem;
                let to = (starts[wi] + lo - w.0) * elem;
                out[to..to + len].copy_from_slice(&block[at..at + len]);
                at += len;
                covered += hi - lo;
            });
        }
        let problem = match bad_elem {
            Some(e) => Some(format!("{name} was copied with {e}-byte elements, read as {elem}-byte ones")),
            None if covered > total => Some(format!(
                "{name}'s copied segments overlap ({covered} elements found for the {total} asked for); segments of \
                 one name must not overlap"
            )),
            None if covered < total => Some(format!(
                "{} of the {total} elements of {name} this rank asked for are in no survivor's copy of step {}",
                total - covered,
                self.step
            )),
            None => None,
        };
        let local = match problem {
            Some(m) => Err(Error::new(ErrorKind::Checkpoint, "restored data", Some(comm.rank()), m)),
            None => Ok(()),
        };
        comm.agree_result("restored data", local)
    }
}

/// Calls `f(piece, lo, hi, want index, want)` for every overlap `lo..hi` of the sorted, disjoint
/// `pieces` (start, end, element size; those of another element size skipped) with the sorted,
/// disjoint `wants`, in want order: the order both the sender and the receiver walk.
fn overlaps(
    pieces: &[(usize, usize, usize)],
    wants: &[(usize, usize)],
    elem: usize,
    mut f: impl FnMut(usize, usize, usize, usize, (usize, usize)),
) {
    let (mut i, mut k) = (0, 0);
    while i < wants.len() && k < pieces.len() {
        let (w, p) = (wants[i], pieces[k]);
        let (lo, hi) = (w.0.max(p.0), w.1.min(p.1));
        if lo < hi && p.2 == elem {
            f(k, lo, hi, i, w);
        }
        if w.1 <= p.1 {
            i += 1;
        } else {
            k += 1;
        }
    }
}

/// The rows (runs along the last dimension) of an owned box: for each, its offset in the ghosted
/// local storage, its offset in the global row-major array, and its length.
fn rows(start: &[usize], len: &[usize], ghost: &[usize], shape: &[usize]) -> Vec<(usize, usize, usize)> {
    let nd = shape.len();
    if nd == 0 || len.contains(&0) {
        return Vec::new();
    }
    let stored: Vec<usize> = (0..nd).map(|d| len[d] + 2 * ghost[d]).collect();
    let stride = |dims: &[usize], d: usize| dims[d + 1..].iter().product::<usize>();
    let count: usize = len[..nd - 1].iter().product();
    let mut out = Vec::with_capacity(count);
    let mut idx = vec![0usize; nd - 1];
    for _ in 0..count {
        let (mut local, mut global) = (ghost[nd - 1], start[nd - 1]);
        for d in 0..nd - 1 {
            local += (ghost[d] + idx[d]) * stride(&stored, d);
            global += (start[d] + idx[d]) * stride(shape, d);
        }
        out.push((local, global, len[nd - 1]));
        for d in (0..nd - 1).rev() {
            idx[d] += 1;
            if idx[d] < len[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// Whether an `MPI_ERR_OTHER` was caused by a process failure: Open MPI 5.0.11 reports that class
/// from `MPI_Cart_create` (its nonblocking context-id agreement) when a member fails during the
/// call. Such an error, returned while this rank knows of a failed process or a revoked
/// communicator among the attempt's, is taken for the failure. The rank may get the error before
/// its MPI has noticed the failure, so the check is repeated (driving MPI's progress) for up to
/// [`NOTICE`]; an `MPI_ERR_OTHER` with no failure behind it ends the run that much later. Every other
/// error of the program's still ends the run at once.
fn failure_behind(at: &Attempt, e: &Error) -> bool {
    if e.kind() != ErrorKind::Mpi || e.mpi_class() != Some(ffi::ERR_OTHER) {
        return false;
    }
    let comms = [at.all(), at.comm()];
    let start = std::time::Instant::now();
    let mut idle = ffi::Idle::new();
    loop {
        if comms.iter().any(|c| matches!(ffi::ulfm::broken(c.raw, OP, c.rank()), Ok(Some(_)))) {
            return true;
        }
        if start.elapsed() >= NOTICE {
            return false;
        }
        // A probe that receives nothing: MPI notices failures inside its progress engine (an
        // error here is the failure or a revocation showing, seen by the check above).
        let c = at.comm();
        let _ = ffi::iprobe(c.rank(), 0, c.raw, OP, c.rank());
        idle.pause();
    }
}

/// How long [`failure_behind`] waits for this rank's MPI to notice a failure behind an
/// `MPI_ERR_OTHER` (room for a busy node: the test's survivors, returning the error at once, recovered
/// in runs of 1.3 s overall).
const NOTICE: std::time::Duration = std::time::Duration::from_secs(2);

/// A barrier whose wait may be long (spare ranks wait here for the whole run), waited for without
/// keeping a core busy (`ffi::Idle`), as the agreement is in fault-tolerant mode
/// (`MPIX_Comm_iagree`, where the library has it). It is started unchecked: checked mode's
/// agreement on the operation would itself be a blocking collective, spun in.
fn barrier_idle(comm: &Comm) -> Result<()> {
    const OP: &str = "recovery: the spares' barrier";
    let _busy = comm.begin(OP)?;
    let mut req = ffi::ibarrier(comm.raw, OP, comm.rank())?;
    ffi::wait_idle(&mut req, OP, comm.rank())
}

/// How a run recovers: spare ranks, and a disk checkpoint to fall back to. [`run`] is
/// `Recovery::new().run(..)` without spares.
#[derive(Clone, Debug, Default)]
pub struct Recovery<'a> {
    spares: usize,
    disk: Option<&'a CheckpointStore>,
}

impl<'a> Recovery<'a> {
    /// No spares, no disk fallback.
    pub fn new() -> Recovery<'a> {
        Recovery::default()
    }

    /// Keeps the last `n` ranks of the communicator as spares: they do not run the body but wait,
    /// and after a failure each takes the place (the rank) of a failed one, so the body continues
    /// on as many ranks as before while spares last (then on the survivors). A spare that was never
    /// needed returns `Ok(None)` from [`Recovery::run`] when the workers finish. Without
    /// fault-tolerant mode the spares wait for the workers to finish.
    pub fn spares(mut self, n: usize) -> Recovery<'a> {
        self.spares = n;
        self
    }

    /// When a failure loses the state of some rank (it and its partner both failed), continue from
    /// the newest checkpoint generation this run wrote to `store` (or restarted from)
    /// ([`Attempt::disk_checkpoint`]) instead of ending with an error; the error stays when there
    /// is none. Pass the store the program writes with: a directory's generations of another run
    /// are never used.
    pub fn disk_fallback(mut self, store: &'a CheckpointStore) -> Recovery<'a> {
        self.disk = Some(store);
        self
    }

    /// Runs `body` on the workers until it returns something other than a process failure,
    /// recovering from each failure on the survivors (see the module's documentation). Returns the
    /// body's value on the workers, `None` on the spares never needed.
    ///
    /// Collective over `comm`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] (on every rank) when there are as many spares as ranks; what
    /// the body returns, except [`ErrorKind::ProcessFailed`] and [`ErrorKind::Revoked`] in
    /// fault-tolerant mode, and except an `MPI_ERR_OTHER` returned while this rank knows (within
    /// 2 s) of a failed process in the attempt's communicators (taken for the failure: Open MPI
    /// reports some failures so); [`ErrorKind::ProcessFailed`] on every survivor when a failed rank's
    /// state is in no survivor's copy (a rank and its partner both failed) and no disk checkpoint
    /// was found; MPI errors of the recovery.
    pub fn run<T>(&self, comm: &Comm, mut body: impl FnMut(&Attempt) -> Result<T>) -> Result<Option<T>> {
        if self.spares >= comm.size() as usize {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                OP,
                Some(comm.rank()),
                format!("{} spare rank(s) asked for among {} ranks: no rank left to work", self.spares, comm.size()),
            ));
        }
        let ft = crate::runtime::ft::fault_tolerant();
        if self.spares > 0 && !ft && comm.rank() == 0 {
            eprintln!(
                "phalanx recovery: not in fault-tolerant mode: the {} spare rank(s) only wait for the others to finish",
                self.spares
            );
        }
        let mut at = Attempt::first(comm, self.spares)?;
        loop {
            let result = if at.spare { None } else { Some(body(&at)) };
            if !ft {
                // A failure ends the job; the spares wait for the workers to finish.
                let value = result.transpose()?;
                if let Some(all) = &at.all {
                    barrier_idle(all)?;
                }
                return Ok(value);
            }
            let failure =
                |e: &Error| matches!(e.kind(), ErrorKind::ProcessFailed | ErrorKind::Revoked) || failure_behind(&at, e);
            if let Some(Err(e)) = &result {
                if !failure(e) {
                    // This rank's own error: it ends the run (and, under `phalanx::run`, the job),
                    // as without fault tolerance. Agreeing first could wait for ranks blocked on
                    // this one.
                    return result.transpose();
                }
            }
            let cause = match &result {
                Some(Err(e)) => {
                    // Stop every rank, also those blocked with live peers, before agreeing.
                    ffi::ulfm::revoke_all(at.all().rank());
                    Some(e.clone())
                }
                _ => None,
            };
            // Every rank agrees whether every worker finished: a rank whose last operations
            // completed before the failure was noticed elsewhere recovers with the others; the
            // spares wait here (the agreement is not stopped by a revocation).
            let (all_done, _) = at.all().agree_all(cause.is_none())?;
            if all_done {
                return result.transpose();
            }
            let cause = cause.unwrap_or_else(|| {
                Error::new(ErrorKind::ProcessFailed, OP, Some(at.all().rank()), "another rank noticed a failed process")
            });
            at = self.recover(at, &cause)?;
        }
    }

    /// After a failure: shrink to the survivors, put spares in the failed ranks' places, choose the
    /// step, and make the next attempt. A failure during this starts it over on the old
    /// communicator (shrinking it again leaves the new failure out).
    fn recover(&self, old: Attempt, cause: &Error) -> Result<Attempt> {
        let t = std::time::Instant::now();
        // Every survivor knows from here that processes failed (also one whose MPI calls all
        // succeeded): the end of the run and abandoned sends take the survivors' paths.
        ffi::ulfm::FAILURE_SEEN.store(true, std::sync::atomic::Ordering::SeqCst);
        ffi::ulfm::revoke_all(old.all().rank());
        let mut tries = 0;
        loop {
            tries += 1;
            let all = old.all().shrink()?;
            // Everything after the shrink may meet a new failure on some ranks only: the survivors
            // agree (fault-tolerantly) whether every one of them got through before going on, and
            // otherwise all shrink again.
            let local = self.decide(&old, &all);
            let (all_ok, _) = all.agree_all(local.is_ok())?;
            match local {
                Ok(d) if all_ok => {
                    let Decision { workers, spare, restored, disk, failed, replaced, keeper } = d;
                    if all.rank() == 0 {
                        let from = match (&restored, &disk) {
                            (Some(r), _) => format!("the partner copies of step {}", r.step),
                            (None, Some(g)) => {
                                format!("the disk checkpoint of step {} (the partner copies were lost)", g.step())
                            }
                            (None, None) => "the start (no copy was complete yet)".to_string(),
                        };
                        let spares = if replaced.is_empty() {
                            String::new()
                        } else {
                            format!("; spare(s) took the place of rank(s) {replaced:?}")
                        };
                        eprintln!(
                            "phalanx recovery: rank(s) {failed:?} of {} failed ({cause}){spares}; continuing on {} \
                             ranks from {from} (recovered in {:.2} s)",
                            old.width,
                            old.width as usize - failed.len() + replaced.len(),
                            t.elapsed().as_secs_f64()
                        );
                    }
                    let (recoveries, spent) = (old.recoveries + 1, old.spent + t.elapsed().as_secs_f64());
                    let width = old.width - failed.len() as i32 + replaced.len() as i32;
                    drop(old);
                    // Without spares the survivors are the workers.
                    let comms = match workers {
                        Some(w) => (Some(all), w, width),
                        None => (None, all, width),
                    };
                    return Ok(Attempt::with_partners(comms, spare, (restored, disk), recoveries, spent, keeper));
                }
                // The copies are lost: the same verdict on every survivor (it follows from the
                // rows all of them gathered).
                Err(e) if e.message().contains(LOST) => return Err(e),
                Err(e) if !matches!(e.kind(), ErrorKind::ProcessFailed | ErrorKind::Revoked) => return Err(e),
                _ if tries >= 8 => {
                    return Err(Error::new(
                        ErrorKind::ProcessFailed,
                        OP,
                        Some(all.rank()),
                        format!("processes kept failing during the recovery ({tries} tries)"),
                    ))
                }
                _ => ffi::ulfm::revoke_all(old.all().rank()),
            }
        }
    }

    /// Decides, on the survivors `all`, who works in which place, and the step and state to
    /// continue from (collective over `all`).
    fn decide(&self, old: &Attempt, all: &Comm) -> Result<Decision> {
        let (old_rank, old_size) = (old.comm.rank(), old.width);
        // Each survivor: its old rank among the workers (NONE for a spare), its own copies' steps,
        // whose copies it keeps and their steps.
        let step = |c: &Option<Copy>| c.as_ref().map_or(NONE, |c| c.step);
        let (own, held) = (old.own.borrow(), old.held.borrow());
        let mine = if old.spare {
            [NONE; 6]
        } else {
            [old_rank as u64, step(&own[0]), step(&own[1]), old.from as u64, step(&held[0]), step(&held[1])]
        };
        let everyone = all.allgatherv(&mine)?;
        let rows: Vec<&[u64]> = everyone.iter().filter(|r| r[0] != NONE).collect();
        let alive: Vec<i32> = rows.iter().map(|r| r[0] as i32).collect();
        let failed: Vec<i32> = (0..old_size).filter(|r| !alive.contains(r)).collect();
        // The spares (ranks of `all`, in order) take the failed places, lowest first.
        let spares: Vec<i32> = (0..all.size()).filter(|r| everyone.block(*r as usize)[0] == NONE).collect();
        let replaced: Vec<i32> = failed.iter().copied().take(spares.len()).collect();
        let me = all.rank();
        let (color, key) = if !old.spare {
            (0, old_rank)
        } else {
            match spares.iter().position(|s| *s == me).and_then(|i| replaced.get(i)) {
                Some(place) => (0, *place),
                None => (1, me),
            }
        };
        let spare = color == 1;
        let workers =
            if old.all.is_some() { Some(all.split(Some(color), key)?.expect("a color was given")) } else { None };
        let keeper = if spare { Vec::new() } else { partners(workers.as_ref().unwrap_or(all))? };
        let decision = |restored, disk| Decision {
            workers,
            spare,
            restored,
            disk,
            failed: failed.clone(),
            replaced: replaced.clone(),
            keeper,
        };
        let own_everywhere = |s: u64| rows.iter().all(|r| r[1] == s || r[2] == s);
        let kept = |s: u64| failed.iter().all(|d| rows.iter().any(|r| r[3] == *d as u64 && (r[4] == s || r[5] == s)));
        let steps: Vec<u64> = rows
            .first()
            .map_or(&[][..], |r| &r[1..3])
            .iter()
            .copied()
            .filter(|s| *s != NONE && own_everywhere(*s))
            .collect();
        if steps.is_empty() {
            // No copy was complete on every survivor yet: start over.
            return Ok(decision(None, None));
        }
        let Some(s) = steps.iter().copied().filter(|s| kept(*s)).max() else {
            let lost: Vec<String> = failed
                .iter()
                .filter(|d| !rows.iter().any(|r| r[3] == **d as u64))
                .map(|d| match old.keeper.get(*d as usize) {
                    Some(k) => format!("rank {d} and rank {k}, which kept its copies, both failed"),
                    // A spare does not know the pairs (the workers' messages name both).
                    None => format!("rank {d} and the rank that kept its copies both failed"),
                })
                .collect();
            let lost =
                if lost.is_empty() { "the copies in progress were incomplete".to_string() } else { lost.join("; ") };
            // Every survivor looks for a disk checkpoint (collective over `all`: the same answer).
            let disk = match self.disk {
                Some(store) => {
                    // Only this run's own generations: some survivor (a worker that wrote or was
                    // told of one) knows the run's lineage.
                    let (_, known) = all.min_max(&[i64::from(store.knows_lineage())])?;
                    if known[0] == 0 {
                        Err(format!("this run has no checkpoint in {} yet", store.dir().display()))
                    } else {
                        store.latest(all)?.ok_or_else(|| format!("no checkpoint in {}", store.dir().display()))
                    }
                }
                None => Err("no disk checkpoint to fall back to (see Recovery::disk_fallback)".to_string()),
            };
            return match disk {
                Ok(g) => Ok(decision(None, Some(g))),
                Err(why) => Err(Error::new(
                    ErrorKind::ProcessFailed,
                    OP,
                    Some(all.rank()),
                    format!("rank(s) {failed:?} of {old_size} failed and {LOST}: {lost}; {why}"),
                )),
            };
        };
        let pick = |c: &[Option<Copy>; 2]| c.iter().flatten().find(|c| c.step == s).map(|c| c.bytes.clone());
        let mut copies: Vec<Vec<u8>> = if old.spare { Vec::new() } else { pick(&own).into_iter().collect() };
        if !old.spare && failed.contains(&old.from) {
            copies.extend(pick(&held));
        }
        let restored = (!spare).then(|| Restored { step: s, failed: failed.clone(), copies });
        Ok(decision(restored, None))
    }
}

/// Who works where after a recovery, and from what.
struct Decision {
    /// The workers' communicator (`None` without spares: all the survivors).
    workers: Option<Comm>,
    spare: bool,
    restored: Option<Restored>,
    disk: Option<Generation>,
    failed: Vec<i32>,
    replaced: Vec<i32>,
    keeper: Vec<i32>,
}

/// Runs `body` until it returns something other than a process failure, recovering from each
/// failure on the survivors (see the module's documentation); [`Recovery`] adds spare ranks and a
/// disk fallback.
///
/// Collective over `comm`.
///
/// # Errors
/// What the body returns, except [`ErrorKind::ProcessFailed`] and [`ErrorKind::Revoked`] in
/// fault-tolerant mode; [`ErrorKind::ProcessFailed`] on every survivor when a failed rank's state is
/// in no survivor's copy (a rank and its partner both failed); MPI errors of the recovery.
pub fn run<T>(comm: &Comm, body: impl FnMut(&Attempt) -> Result<T>) -> Result<T> {
    Ok(Recovery::new().run(comm, body)?.expect("without spares every rank runs the body"))
}

const LOST: &str = "no step's copies survived on every rank";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_owned_boxes() {
        // A 2-D box of 2 x 3 at (1, 2) in a 4 x 6 array, ghost width 1: stored 4 x 5.
        assert_eq!(rows(&[1, 2], &[2, 3], &[1, 1], &[4, 6]), vec![(6, 8, 3), (11, 14, 3)]);
        // 1-D: one row.
        assert_eq!(rows(&[5], &[4], &[2], &[20]), vec![(2, 5, 4)]);
        // 3-D, no ghosts: rows in global order.
        let r = rows(&[0, 1, 0], &[2, 1, 2], &[0, 0, 0], &[2, 2, 2]);
        assert_eq!(r, vec![(0, 2, 2), (2, 6, 2)]);
        assert!(rows(&[0, 0], &[0, 3], &[1, 1], &[4, 6]).is_empty());
    }

    #[test]
    fn overlaps_walk_in_want_order() {
        let pieces = [(0, 4, 8), (4, 10, 8), (10, 12, 4)];
        let wants = [(2, 5), (9, 12)];
        let mut seen = Vec::new();
        overlaps(&pieces, &wants, 8, |k, lo, hi, wi, _| seen.push((k, lo, hi, wi)));
        assert_eq!(seen, vec![(0, 2, 4, 0), (1, 4, 5, 0), (1, 9, 10, 1)]);
    }

    #[test]
    fn snapshots_round_trip_and_bad_bytes_are_refused() {
        let (a, b) = ([1.0f64, 2.0, 3.0], [7u32]);
        let mut s = Snapshot::new(40);
        s.segment("x", 3, 10, &a).segment("n", 0, 1, &b);
        let bytes = s.encode();
        let (step, p) = decode(&bytes).unwrap();
        assert_eq!(step, 40);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].name.as_str(), p[0].elem, p[0].offset, p[0].global), ("x", 8, 3, 10));
        assert_eq!(bytemuck::pod_collect_to_vec::<u8, f64>(&bytes[p[0].bytes.clone()]), a);
        assert_eq!(&bytes[p[1].bytes.clone()], &7u32.to_le_bytes());
        // Every truncation and every single-byte change of the header is refused or decodes to
        // pieces inside the buffer.
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        for i in 0..(2 + 2 * 5) * 8 {
            let mut m = bytes.clone();
            m[i] ^= 0x40;
            if let Some((_, ps)) = decode(&m) {
                assert!(ps.iter().all(|p| p.bytes.end <= m.len() && p.offset + (p.bytes.len() / p.elem) <= p.global));
            }
        }
        // A piece that does not fit its global length.
        let mut bad = Snapshot::new(1);
        bad.segment("y", 9, 10, &a);
        assert!(decode(&bad.encode()).is_none());
    }
}
