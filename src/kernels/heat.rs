//! The explicit heat equation (Jacobi sweep) on 2-D (5-point) and 3-D (7-point) grids.
//!
//! `u_new = u + r * (sum of the face neighbours - 2d * u)` with fixed boundary values: the low face
//! of dimension 0 is held at 1, every other face at 0, the interior starts at 0. Each cell's update
//! is written once ([`update2`], [`update3`]: the sum in a fixed order, then two fused multiply-adds,
//! as a C compiler contracts the same expression), so the distributed solver and the serial
//! reference agree bit for bit whatever the decomposition, thread count, overlap or CPU.
//!
//! # Overlap without asynchronous progress
//! A step starts the halo exchange, computes the interior (the cells whose stencil touches no ghost
//! a neighbour sends) in `chunks` blocks of rows on the thread pool (one block when the rank has no
//! neighbour), and polls MPI between blocks (Open MPI 4.1 moves messages above its eager limit only
//! inside MPI calls), then finishes the exchange and computes the shell: one cell on each side that
//! has a neighbour. A side on the domain's boundary is not peeled (its ghosts hold the boundary
//! values all along), so on one rank the overlapped step is one plain sweep. The main thread never
//! spins: it waits in the pool while a block runs.
//!
//! # Temporal blocking
//! [`HeatSolver::with_time_block`]`(k)` and [`HeatSolver::step_block`] trade that overlap for
//! memory traffic: one exchange of a `k`-deep halo (edges and corners included), then `k` steps in
//! one wavefront pass over the rows (planes in 3-D), each of them going through all `k` steps while
//! it is in cache (see `fused_block` for the ordering argument). Ranks recompute the ghost layers
//! they would otherwise receive each step. Every cell still gets [`update2`]/[`update3`] on the same
//! operands, so the field is the same bits; [`sweep_grid_blocked`] is the same pass without MPI.

use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::IxDyn;
use rayon::prelude::*;

use std::time::Instant;

use crate::comm::Comm;
use crate::decomp::{Decomposition, DistArray, Stencil};
use crate::error::{Error, ErrorKind, Result};
use crate::services::checkpoint::Generation;
use crate::services::fault;
use crate::services::metrics::{cpu_seconds, Metrics, Phase};
use crate::services::recovery::Restored;

/// The diffusion number used for `dims` dimensions (stable: below 1 / (2 dims)).
pub fn default_r(dims: usize) -> f64 {
    if dims == 2 {
        0.2
    } else {
        0.15
    }
}

/// One 5-point update, `c + r (n + s + w + e - 4 c)`, with the two multiply-adds fused (as a C
/// compiler contracts the same expression): `fma(r, fma(-4, c, n + s + w + e), c)`. A fused
/// multiply-add is one correctly rounded IEEE operation, so the bits are the same on every CPU
/// (x86 without FMA computes it in software, slowly).
#[inline(always)]
pub fn update2(r: f64, c: f64, n: f64, s: f64, w: f64, e: f64) -> f64 {
    r.mul_add((-4.0f64).mul_add(c, n + s + w + e), c)
}

/// One 7-point update, `c + r (n + s + w + e + b + t - 6 c)`, fused as [`update2`].
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the stencil's operands by name: reads like the maths
pub fn update3(r: f64, c: f64, n: f64, s: f64, w: f64, e: f64, b: f64, t: f64) -> f64 {
    r.mul_add((-6.0f64).mul_add(c, n + s + w + e + b + t), c)
}

/// A box of ghosted-array indices, padded to 3-D.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Box3 {
    lo: [usize; 3],
    hi: [usize; 3],
}

impl Box3 {
    fn is_empty(&self) -> bool {
        (0..3).any(|d| self.lo[d] >= self.hi[d])
    }
}

/// Updates one row segment `x in lo..hi` of row `(z, y)` of `u` into the same cells of `out`.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // hot inner function: plain arguments keep it transparent to LLVM
fn row(
    u: &[f64],
    out: &mut [f64],
    shape: [usize; 3],
    three_d: bool,
    r: f64,
    z: usize,
    y: usize,
    lo: usize,
    hi: usize,
    stream: bool,
) {
    row_ops(Neighbours::of(u, shape, three_d, z, y, lo, hi), &mut out[lo..hi], three_d, r, stream);
}

/// Computes `o[i]` from the operands' element `i`, with 256-bit vectors and fused multiply-adds
/// when the CPU has AVX2 and FMA (chosen at run time; the same bits as the baseline build's, whose
/// `mul_add` is the same IEEE operation done in software).
#[inline(always)]
fn row_ops(nb: Neighbours<'_>, o: &mut [f64], three_d: bool, r: f64, stream: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            if stream {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above), the only requirement
                // of a `#[target_feature(enable = "avx2,fma")]` function.
                unsafe { row_stream_avx2(nb, o, three_d, r) };
            } else {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above), the only requirement
                // of a `#[target_feature(enable = "avx2,fma")]` function.
                unsafe { row_avx2(nb, o, three_d, r) };
            }
            return;
        }
    }
    let _ = stream;
    row_generic(nb, o, three_d, r);
}

/// The stencil's operands for a row segment: the row itself and its neighbours, all `hi - lo` long
/// (`below`/`above` alias the row in 2-D, where they are not used).
struct Neighbours<'a> {
    c: &'a [f64],
    west: &'a [f64],
    east: &'a [f64],
    north: &'a [f64],
    south: &'a [f64],
    below: &'a [f64],
    above: &'a [f64],
}

impl<'a> Neighbours<'a> {
    #[inline(always)]
    fn of(u: &'a [f64], shape: [usize; 3], three_d: bool, z: usize, y: usize, lo: usize, hi: usize) -> Self {
        let w = shape[2];
        let plane = shape[1] * w;
        let at = z * plane + y * w;
        let c = &u[at + lo..at + hi];
        let (below, above) =
            if three_d { (&u[at - plane + lo..at - plane + hi], &u[at + plane + lo..at + plane + hi]) } else { (c, c) };
        Neighbours {
            c,
            west: &u[at + lo - 1..at + hi - 1],
            east: &u[at + lo + 1..at + hi + 1],
            north: &u[at - w + lo..at - w + hi],
            south: &u[at + w + lo..at + w + hi],
            below,
            above,
        }
    }
}

/// The same row update with non-temporal (streaming) stores: the output bypasses the cache, so a
/// large sweep moves 16 bytes per update instead of 24 (no write-allocate read). The arithmetic is
/// the same sequence of IEEE operations as [`update2`]/[`update3`], so the bits are the same.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_stream_avx2(nb: Neighbours<'_>, o: &mut [f64], three_d: bool, r: f64) {
    use std::arch::x86_64::*;
    let Neighbours { c, west, east, north, south, below, above } = nb;
    let len = o.len();
    assert!([c, west, east, north, south, below, above].iter().all(|s| s.len() == len));
    let scalar = |i: usize| {
        if three_d {
            update3(r, c[i], north[i], south[i], west[i], east[i], below[i], above[i])
        } else {
            update2(r, c[i], north[i], south[i], west[i], east[i])
        }
    };
    // Scalar head until the output is 32-byte aligned, streamed body, scalar tail.
    let mut i = 0;
    while i < len && !(o[i..].as_ptr() as usize).is_multiple_of(32) {
        o[i] = scalar(i);
        i += 1;
    }
    // SAFETY: AVX2 and FMA are enabled for this function (its callers check the CPU). Every load reads 4 elements at index i..i+4 < len of
    // slices that are all `len` long (bounds established by the slicing above); the stream store
    // writes 4 elements of `o` at an address aligned to 32 bytes (the head loop above), as
    // _mm256_stream_pd requires. `o` is exclusively borrowed, so nobody else touches it; the sfence
    // at the end orders the streaming stores before anything that follows on this thread.
    unsafe {
        let (vr, four, six) = (_mm256_set1_pd(r), _mm256_set1_pd(4.0), _mm256_set1_pd(6.0));
        while i + 4 <= len {
            let cv = _mm256_loadu_pd(c.as_ptr().add(i));
            let mut t = _mm256_add_pd(_mm256_loadu_pd(north.as_ptr().add(i)), _mm256_loadu_pd(south.as_ptr().add(i)));
            t = _mm256_add_pd(t, _mm256_loadu_pd(west.as_ptr().add(i)));
            t = _mm256_add_pd(t, _mm256_loadu_pd(east.as_ptr().add(i)));
            // fnmadd(a, b, t) = t - a b rounded once: the same as fma(-a, b, t) in update2/3.
            if three_d {
                t = _mm256_add_pd(t, _mm256_loadu_pd(below.as_ptr().add(i)));
                t = _mm256_add_pd(t, _mm256_loadu_pd(above.as_ptr().add(i)));
                t = _mm256_fnmadd_pd(six, cv, t);
            } else {
                t = _mm256_fnmadd_pd(four, cv, t);
            }
            let v = _mm256_fmadd_pd(vr, t, cv);
            _mm256_stream_pd(o.as_mut_ptr().add(i), v);
            i += 4;
        }
        _mm_sfence();
    }
    while i < len {
        o[i] = scalar(i);
        i += 1;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_avx2(nb: Neighbours<'_>, o: &mut [f64], three_d: bool, r: f64) {
    row_generic(nb, o, three_d, r);
}

/// The update of one row segment, in plain Rust. Inside [`row_avx2`] the compiler vectorises it
/// with fused multiply-adds; as the fallback of an x86 CPU without AVX2 and FMA, each `mul_add` is
/// a call to the C library's `fma` (in software without FMA hardware): the same bits, several
/// times slower. Every x86 CPU since 2013-2015 (Haswell, Zen) has both; ARM's `mul_add` is one
/// instruction.
#[inline(always)]
fn row_generic(nb: Neighbours<'_>, o: &mut [f64], three_d: bool, r: f64) {
    let Neighbours { c, west, east, north, south, below, above } = nb;
    let len = o.len();
    // Equal lengths up front let the compiler drop the bounds checks in the loops.
    let (c, west, east, north, south) = (&c[..len], &west[..len], &east[..len], &north[..len], &south[..len]);
    let (below, above) = (&below[..len], &above[..len]);
    if three_d {
        for i in 0..o.len() {
            o[i] = update3(r, c[i], north[i], south[i], west[i], east[i], below[i], above[i]);
        }
    } else {
        for i in 0..o.len() {
            o[i] = update2(r, c[i], north[i], south[i], west[i], east[i]);
        }
    }
}

/// Sweeps box `b`, in parallel over blocks of the outermost active dimension (about four blocks per
/// thread); with tracing metrics, each block is one event on its worker's track.
#[allow(clippy::too_many_arguments)]
fn sweep(
    u: &[f64],
    out: &mut [f64],
    shape: [usize; 3],
    three_d: bool,
    r: f64,
    b: Box3,
    m: Option<&Metrics>,
    stream: bool,
) {
    if b.is_empty() {
        return;
    }
    let w = shape[2];
    let (outer, stride) = if three_d { (0, shape[1] * w) } else { (1, w) };
    let (lo, hi) = (b.lo[outer], b.hi[outer]);
    let per = (hi - lo).div_ceil(4 * rayon::current_num_threads()).max(1);
    let region = &mut out[lo * stride..hi * stride];
    region.par_chunks_mut(per * stride).enumerate().for_each(|(k, block)| {
        let t0 = m.filter(|m| m.tracing()).map(|_| Instant::now());
        let first = lo + k * per;
        for (q, slab) in block.chunks_mut(stride).enumerate() {
            let o = first + q;
            if three_d {
                for y in b.lo[1]..b.hi[1] {
                    row(u, &mut slab[y * w..(y + 1) * w], shape, true, r, o, y, b.lo[2], b.hi[2], stream);
                }
            } else {
                row(u, slab, shape, false, r, 0, o, b.lo[2], b.hi[2], stream);
            }
        }
        if let (Some(m), Some(t0)) = (m, t0) {
            m.worker_event(Phase::Compute, rayon::current_thread_index().unwrap_or(0), t0, Instant::now());
        }
    });
}

/// The two arrays of a fused block, shared by the band workers through raw pointers: workers
/// write disjoint cells and never read a cell another worker is writing (see [`fused_block`]), which
/// slices of the whole arrays could not express.
#[derive(Clone, Copy)]
struct Grids {
    p: [*mut f64; 2],
    len: usize,
}

// SAFETY: `Grids` is only a pair of addresses; the workers that share it follow the access
// discipline of `fused_block` (no cell written by one worker is read or written by another at the
// same time, ordered by the release/acquire progress counters).
unsafe impl Send for Grids {}
// SAFETY: as for `Send`.
unsafe impl Sync for Grids {}

impl Grids {
    /// Computes level `j` (from array `(j - 1) % 2` into array `j % 2`) on slab `x` of the outer
    /// dimension, cells of box `b` in the other dimensions.
    ///
    /// # Safety
    /// `b` and `x` must lie at least one cell inside the arrays (of `shape`) in every active
    /// dimension, and no other thread may write the cells this reads (the box and its face
    /// neighbours in the source array) or access the cells it writes while it runs.
    unsafe fn slab(&self, j: usize, x: usize, b: Box3, shape: [usize; 3], three_d: bool, r: f64) {
        let (src, dst) = (self.p[(j - 1) % 2], self.p[j % 2]);
        let w = shape[2];
        let plane = shape[1] * w;
        let (lo, hi) = (b.lo[2], b.hi[2]);
        let len = hi - lo;
        let (zs, ys) = if three_d { (x..x + 1, b.lo[1]..b.hi[1]) } else { (0..1, x..x + 1) };
        let reach = if three_d { plane } else { w };
        for z in zs {
            for y in ys.clone() {
                let at = z * plane + y * w + lo;
                debug_assert!(at >= reach && at + len + reach <= self.len);
                // SAFETY: the caller keeps the box one cell inside the arrays, so every operand
                // range lies within them, and guarantees no concurrent writer of the cells read nor
                // concurrent access to the cells written.
                let rd = |off: isize| unsafe { std::slice::from_raw_parts(src.offset(at as isize + off), len) };
                let c = rd(0);
                let (below, above) = if three_d { (rd(-(plane as isize)), rd(plane as isize)) } else { (c, c) };
                let nb = Neighbours {
                    c,
                    west: rd(-1),
                    east: rd(1),
                    north: rd(-(w as isize)),
                    south: rd(w as isize),
                    below,
                    above,
                };
                // SAFETY: as above; `dst` is the other array, so `o` overlaps none of the operands.
                let o = unsafe { std::slice::from_raw_parts_mut(dst.add(at), len) };
                row_ops(nb, o, three_d, r, false);
            }
        }
    }
}

/// A progress counter on its own cache line.
#[repr(align(128))]
struct Progress(AtomicUsize);

/// Waits until `p` reaches `v`: spins briefly (1024 pauses, about 25 us here), then yields
/// (threads may share cores when ranks are oversubscribed).
fn wait_for(p: &Progress, v: usize) {
    let mut spins = 0u32;
    while p.0.load(Ordering::Acquire) < v {
        if spins < 1 << 10 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
}

/// Levels `1..=boxes.len()` of a fused block (temporal blocking): level `j` is computed on
/// `boxes[j - 1]` from level `j - 1`, alternating between the two arrays (level 0 in `grids.p[0]`),
/// in one pass over the outer dimension (rows in 2-D, planes in 3-D).
///
/// The pass is a wavefront: at position `w`, level `j` is computed on slab `x = w - (j - 1)`, from
/// level `j - 1` on slabs `x - 1` (position `w - 2`), `x` (`w - 1`) and `x + 1` (earlier at `w`).
/// Each level overwrites the level two below it, whose last reader (level `j - 1` on slab `x + 1`)
/// has run, so two arrays suffice and each slab goes through all levels while it is in cache.
///
/// Several workers split the band dimension (columns in 2-D, rows in 3-D); a worker starts position
/// `w` once both neighbours have finished `w - 1`, so neighbours are never more than one position
/// apart. Across a band edge a worker reads only level `j - 1` on its own slab `x`, which the
/// neighbour finished at `w - 1`; at the same position the neighbour writes slab `x` only at level
/// `j`, in the other array; and it cannot be at `w + 1`, where it would overwrite that slab's level
/// `j - 1` with level `j + 1`.
fn fused_block(
    grids: Grids,
    boxes: &[Box3],
    shape: [usize; 3],
    three_d: bool,
    r: f64,
    pool: &rayon::ThreadPool,
    m: Option<&Metrics>,
) {
    let levels = boxes.len();
    let (outer, band) = if three_d { (0, 1) } else { (1, 2) };
    for b in boxes {
        for d in (if three_d { 0 } else { 1 })..3 {
            assert!(b.lo[d] >= 1 && b.hi[d] < shape[d], "fused block box {b:?} not inside {shape:?}");
        }
    }
    let (blo, bhi) = (boxes[0].lo[band], boxes[0].hi[band]);
    // Bands at least two cells wide, so workers two apart never touch the same cells.
    let workers = pool.current_num_threads().min((bhi - blo) / 2).max(1);
    let (wlo, whi) = (boxes[0].lo[outer], boxes[levels - 1].hi[outer] + levels - 1);
    let progress: Vec<Progress> = (0..workers).map(|_| Progress(AtomicUsize::new(0))).collect();
    let work = |t: usize| {
        let t0 = m.filter(|m| m.tracing()).map(|_| Instant::now());
        let (mine_lo, mine_hi) = (blo + t * (bhi - blo) / workers, blo + (t + 1) * (bhi - blo) / workers);
        for w in wlo..whi {
            let done = w - wlo;
            if t > 0 {
                wait_for(&progress[t - 1], done);
            }
            if t + 1 < workers {
                wait_for(&progress[t + 1], done);
            }
            for (j, bx) in boxes.iter().enumerate().map(|(i, b)| (i + 1, b)) {
                let Some(x) = w.checked_sub(j - 1) else { break };
                if x < bx.lo[outer] || x >= bx.hi[outer] {
                    continue;
                }
                let mut b = *bx;
                b.lo[band] = b.lo[band].max(mine_lo);
                b.hi[band] = b.hi[band].min(mine_hi);
                if b.lo[band] < b.hi[band] {
                    // SAFETY: the boxes lie one cell inside the arrays (asserted above), and the
                    // wavefront order with the progress counters keeps every cell this reads or
                    // writes away from the other workers' accesses (see the function's comment).
                    unsafe { grids.slab(j, x, b, shape, three_d, r) };
                }
                #[cfg(test)]
                tests::jitter(t, w, j);
            }
            progress[t].0.store(done + 1, Ordering::Release);
        }
        if let (Some(m), Some(t0)) = (m, t0) {
            m.worker_event(Phase::Compute, rayon::current_thread_index().unwrap_or(0), t0, Instant::now());
        }
    };
    if workers == 1 {
        pool.install(|| work(0));
    } else {
        // Every worker must run at the same time (each waits for its neighbours): `broadcast` runs
        // the closure once on every thread of the pool.
        pool.broadcast(|ctx| {
            if ctx.index() < workers {
                work(ctx.index());
            }
        });
    }
}

/// One Jacobi sweep of a plain `n`^`dims` grid stored with a one-cell border (row-major,
/// `(n + 2)`^`dims` elements): every interior cell of `out` gets its update from `u`, in parallel in
/// the current rayon pool. The kernel the distributed solver runs, without MPI (for benchmarks and
/// single-process use).
///
/// Local.
///
/// # Panics
/// If `dims` is not 2 or 3, or a slice is shorter than `(n + 2)`^`dims`.
pub fn sweep_grid(u: &[f64], out: &mut [f64], dims: usize, n: usize) {
    let (shape, interior) = plain_grid(u.len(), out.len(), dims, n);
    sweep(u, out, shape, dims == 3, default_r(dims), interior, None, false);
}

/// The padded shape and the interior box of a plain `n`^`dims` grid with a one-cell border, after
/// checking the arguments against slices of `a` and `b` elements.
fn plain_grid(a: usize, b: usize, dims: usize, n: usize) -> ([usize; 3], Box3) {
    assert!(dims == 2 || dims == 3, "dims must be 2 or 3, not {dims}");
    let g = n + 2;
    let shape = if dims == 2 { [1, g, g] } else { [g, g, g] };
    let cells: usize = shape.iter().product();
    assert!(a >= cells && b >= cells, "grids of {a} and {b} elements for {cells} cells");
    let lo = if dims == 2 { [0, 1, 1] } else { [1, 1, 1] };
    let hi = if dims == 2 { [1, n + 1, n + 1] } else { [n + 1, n + 1, n + 1] };
    (shape, Box3 { lo, hi })
}

/// `k` Jacobi sweeps of a plain `n`^`dims` grid stored with a one-cell border (as for
/// [`sweep_grid`]) in one temporally blocked pass (see [`HeatSolver::with_time_block`]), with the
/// threads of the given pool. The result is where `k` single sweeps alternating between the two
/// slices would leave it: in `u` for even `k`, in `out` for odd `k`; the other slice holds step
/// `k - 1`. Both slices need the border values.
///
/// Local.
///
/// # Panics
/// If `dims` is not 2 or 3, `k` is 0, or a slice is shorter than `(n + 2)`^`dims`.
pub fn sweep_grid_blocked(u: &mut [f64], out: &mut [f64], dims: usize, n: usize, k: usize, pool: &rayon::ThreadPool) {
    assert!(k > 0, "a time block of 0 steps");
    let (shape, interior) = plain_grid(u.len(), out.len(), dims, n);
    // Every side is the domain boundary: each level covers the whole interior.
    let boxes = vec![interior; k];
    let grids = Grids { p: [u.as_mut_ptr(), out.as_mut_ptr()], len: u.len().min(out.len()) };
    fused_block(grids, &boxes, shape, dims == 3, default_r(dims), pool, None);
}

/// The distributed solver: two arrays (current and next), the interior and the boundary shell.
///
/// Two ways to advance:
/// - [`step`](HeatSolver::step): one step per halo exchange, the interior computed while the halo
///   is in flight;
/// - [`step_block`](HeatSolver::step_block), for a solver made by
///   [`with_time_block`](HeatSolver::with_time_block)`(k)`: up to `k` steps per exchange of a
///   `k`-deep halo (temporal blocking). The `k` steps are computed in one pass over memory, each
///   row (2-D) or plane (3-D) going through all of them while it is in cache, so a grid far larger
///   than the caches moves about `32 / k` bytes per update instead of 24; ranks recompute the
///   `k - 1` ghost layers nearest to them instead of receiving them every step. No overlap: the
///   exchange (k times rarer, k times larger) finishes before the pass starts.
///
/// Both compute every cell with the same operations on the same operands, so the field is the
/// same bits either way, for any decomposition and thread count.
#[derive(Debug)]
pub struct HeatSolver {
    u: DistArray<f64, IxDyn>,
    next: DistArray<f64, IxDyn>,
    r: f64,
    dims: usize,
    shape: [usize; 3],
    owned: Box3,
    interior: Box3,
    shell: Vec<Box3>,
    steps: usize,
    stream: bool,
    block: usize,
    /// Per padded dimension, whether a neighbour lies below / above (its ghosts are recomputed in
    /// a fused block; ghosts beyond the domain boundary hold the boundary values).
    shared: [[bool; 2]; 3],
}

impl HeatSolver {
    /// A solver on `comm` for an `n`^`dims` grid; storage first touched by `pool`'s workers.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for dims other than 2 or 3; decomposition errors (for example
    /// more ranks than rows).
    pub fn new(comm: &Comm, dims: usize, n: usize, pool: &rayon::ThreadPool) -> Result<HeatSolver> {
        Self::build(comm, dims, n, pool, 1, "HeatSolver::new")
    }

    /// A solver that can advance `k` steps per halo exchange with
    /// [`step_block`](HeatSolver::step_block): its halo is `k` cells deep and includes edges and
    /// corners. `k = 1` is the same solver as [`new`](HeatSolver::new). Its
    /// [`step`](HeatSolver::step) still works (and gives the same field) but moves the whole
    /// `k`-deep halo every step.
    ///
    /// Collective.
    ///
    /// # Errors
    /// As [`new`](HeatSolver::new), and [`ErrorKind::InvalidArgument`] for `k = 0` or a `k` larger
    /// than some rank's extent in a dimension split over several ranks.
    pub fn with_time_block(
        comm: &Comm,
        dims: usize,
        n: usize,
        pool: &rayon::ThreadPool,
        k: usize,
    ) -> Result<HeatSolver> {
        Self::build(comm, dims, n, pool, k, "HeatSolver::with_time_block")
    }

    /// As [`with_time_block`](HeatSolver::with_time_block), with explicit block sizes per
    /// dimension (as a load balancer moved them, or as a checkpoint recorded them; see
    /// [`Decomposition::rebalanced`]).
    ///
    /// Collective.
    ///
    /// # Errors
    /// As [`with_time_block`](HeatSolver::with_time_block), and decomposition errors for sizes
    /// that do not fit the grid (naming the dimension and the numbers).
    pub fn with_block_sizes(
        comm: &Comm,
        dims: usize,
        n: usize,
        pool: &rayon::ThreadPool,
        k: usize,
        sizes: &[Vec<usize>],
    ) -> Result<HeatSolver> {
        Self::build_sized(comm, dims, n, pool, k, Some(sizes), "HeatSolver::with_block_sizes")
    }

    fn build(
        comm: &Comm,
        dims: usize,
        n: usize,
        pool: &rayon::ThreadPool,
        k: usize,
        op: &'static str,
    ) -> Result<HeatSolver> {
        Self::build_sized(comm, dims, n, pool, k, None, op)
    }

    fn build_sized(
        comm: &Comm,
        dims: usize,
        n: usize,
        pool: &rayon::ThreadPool,
        k: usize,
        sizes: Option<&[Vec<usize>]>,
        op: &'static str,
    ) -> Result<HeatSolver> {
        let fail = |msg: String| Error::new(ErrorKind::InvalidArgument, op, Some(comm.rank()), msg);
        if dims != 2 && dims != 3 {
            return Err(fail(format!("dims must be 2 or 3, not {dims}")));
        }
        if k == 0 {
            return Err(fail("a time block of 0 steps: use 1 or more".into()));
        }
        let stencil = if k == 1 { Stencil::Star } else { Stencil::Box };
        let mut builder = Decomposition::builder(comm, &vec![n; dims]).ghost_width(k).stencil(stencil);
        if let Some(sizes) = sizes {
            for (d, s) in sizes.iter().enumerate() {
                builder = builder.block_sizes(d, s);
            }
        }
        let dc: Rc<Decomposition> = builder.build().map_err(|e| {
            if k > 1 {
                Error::new(
                    e.kind(),
                    op,
                    Some(comm.rank()),
                    format!("time block of {k} steps (a halo {k} cells deep): {}", e.message()),
                )
            } else {
                e
            }
        })?;
        let u = Self::field_on(&dc, pool)?;
        let next = Self::field_on(&dc, pool)?;
        // Streaming stores are opt-in: on the development machine (AMD EPYC VM) they made a one-core
        // 4000^2 sweep slower, 1160-1190 against 1530-1620 M updates/s with ordinary stores.
        Ok(Self::assemble(u, next, dims, k, false, 0))
    }

    /// A field on `dc` with the boundary condition in its boundary ghosts.
    fn field_on(dc: &Rc<Decomposition>, pool: &rayon::ThreadPool) -> Result<DistArray<f64, IxDyn>> {
        let mut a = DistArray::<f64, IxDyn>::new_in(dc, 0.0, pool)?;
        a.set_boundary_ghosts(0.0);
        a.set_boundary_face(0, false, 1.0);
        Ok(a)
    }

    /// The solver around two fields on one decomposition: the owned box, the interior and the shell.
    fn assemble(
        u: DistArray<f64, IxDyn>,
        next: DistArray<f64, IxDyn>,
        dims: usize,
        k: usize,
        stream: bool,
        steps: usize,
    ) -> HeatSolver {
        let dc = Rc::clone(u.decomposition());
        let pad = 3 - dims;
        let mut shape = [1; 3];
        let mut owned = Box3 { lo: [0; 3], hi: [1; 3] };
        let mut shared = [[false; 2]; 3];
        for d in 0..dims {
            shape[pad + d] = dc.ghosted_box().len()[d];
            owned.lo[pad + d] = k;
            owned.hi[pad + d] = k + dc.owned_box().len()[d];
            shared[pad + d] = [!dc.at_boundary(d, false), !dc.at_boundary(d, true)];
        }
        // The interior needs no ghost from a neighbour: peel one cell only on the sides that have
        // one. A side at the domain's boundary holds the boundary condition, ready before the
        // exchange, and peeling it would cost a second pass (in x, a strided one over every row):
        // at one rank the overlapped step is then the plain sweep.
        let mut interior = owned;
        for (d, [low, high]) in shared.iter().copied().enumerate().skip(pad) {
            interior.lo[d] += usize::from(low);
            interior.hi[d] = interior.hi[d].saturating_sub(usize::from(high)).max(interior.lo[d]);
        }
        // The shell: owned minus interior, as disjoint boxes (peel one dimension at a time).
        let mut shell = Vec::new();
        let mut rest = owned;
        for d in pad..3 {
            let mut low = rest;
            low.hi[d] = interior.lo[d].min(rest.hi[d]);
            let mut high = rest;
            high.lo[d] = interior.hi[d].max(low.hi[d]);
            shell.extend([low, high].into_iter().filter(|b| !b.is_empty()));
            rest.lo[d] = low.hi[d];
            rest.hi[d] = high.lo[d];
        }
        HeatSolver { u, next, r: default_r(dims), dims, shape, owned, interior, shell, steps, stream, block: k, shared }
    }

    /// Moves the solver onto new block sizes per dimension (a load balancer's
    /// [`BalanceDecision::sizes`](crate::decomp::BalanceDecision)): the field is redistributed
    /// bit for bit ([`DistArray::redistribute`]), the halo plans are rebuilt, and the run goes on
    /// with the same results as without the move.
    ///
    /// Collective.
    ///
    /// # Errors
    /// Decomposition errors for sizes that do not fit (a block thinner than the halo, which is
    /// the time block deep); MPI errors. On an error the solver is unchanged.
    pub fn rebalance(&mut self, sizes: &[Vec<usize>], pool: &rayon::ThreadPool) -> Result<()> {
        let dc = self.u.decomposition().rebalanced(sizes)?;
        let u = self.u.redistribute_in(&dc, pool)?;
        let next = Self::field_on(&dc, pool)?;
        *self = Self::assemble(u, next, self.dims, self.block, self.stream, self.steps);
        Ok(())
    }

    /// The decomposition of the field (its block sizes are what a checkpoint records to restart
    /// on the same blocks).
    pub fn decomposition(&self) -> &Rc<Decomposition> {
        self.u.decomposition()
    }

    /// Advances one step. With `overlap`, the interior is computed while the halo is in flight, in
    /// `chunks` blocks with MPI progress polled between them (one block when this rank has no
    /// neighbour, so nothing is in flight).
    ///
    /// Collective (neighbour-wise).
    ///
    /// # Errors
    /// MPI errors.
    pub fn step(&mut self, pool: &rayon::ThreadPool, overlap: bool, chunks: usize) -> Result<()> {
        self.step_timed(pool, overlap, chunks, None)
    }

    /// As [`step`](HeatSolver::step), recording compute, halo post and halo wait (with the bytes the
    /// halo plan moves) in `metrics`.
    ///
    /// Collective (neighbour-wise).
    ///
    /// # Errors
    /// MPI errors.
    pub fn step_timed(
        &mut self,
        pool: &rayon::ThreadPool,
        overlap: bool,
        chunks: usize,
        mut metrics: Option<&mut Metrics>,
    ) -> Result<()> {
        let (shape, three_d, r, stream) = (self.shape, self.dims == 3, self.r, self.stream);
        let (sent, received, messages) = self.u.halo_volume();
        let (sent, received) = ((sent * 8) as u64, (received * 8) as u64);
        // With no message in flight (one rank) there is nothing to poll: the interior in one pass.
        let chunks = if messages == 0 { 1 } else { chunks };
        let mark = |m: &mut Option<&mut Metrics>, phase: Phase, t0: Instant, bytes: u64| {
            if let Some(m) = m.as_deref_mut() {
                m.add(phase, t0, Instant::now(), bytes);
            }
        };
        // CPU time of the compute phase: the cost a load balancer reads (and what a slowed rank
        // stretches, PHALANX_FAULT=slow).
        let slowed = fault::slow_factor().is_some();
        let measure = metrics.is_some() || slowed;
        let mut cpu = 0.0;
        let t0 = Instant::now();
        let mut ex = self.u.exchange_begin()?;
        mark(&mut metrics, Phase::HaloPost, t0, sent);
        if overlap {
            let outer = if three_d { 0 } else { 1 };
            let (lo, hi) = (self.interior.lo[outer], self.interior.hi[outer]);
            let per = (hi.saturating_sub(lo)).div_ceil(chunks.max(1)).max(1);
            let mut at = lo;
            while at < hi {
                let mut b = self.interior;
                b.lo[outer] = at;
                b.hi[outer] = (at + per).min(hi);
                let (u, out) = (self.u.as_slice(), self.next.as_slice_mut());
                let t0 = Instant::now();
                let c0 = if measure { cpu_seconds() } else { 0.0 };
                let m = metrics.as_deref();
                pool.install(|| sweep(u, out, shape, three_d, r, b, m, stream));
                if measure {
                    cpu += cpu_seconds() - c0;
                }
                mark(&mut metrics, Phase::Compute, t0, 0);
                let t0 = Instant::now();
                ex.progress()?;
                mark(&mut metrics, Phase::HaloWait, t0, 0);
                at = b.hi[outer];
            }
        }
        let t0 = Instant::now();
        self.u.exchange_finish(ex)?;
        mark(&mut metrics, Phase::HaloWait, t0, received);
        let boxes: &[Box3] = if overlap { &self.shell } else { std::slice::from_ref(&self.owned) };
        let (u, out) = (self.u.as_slice(), self.next.as_slice_mut());
        let t0 = Instant::now();
        let c0 = if measure { cpu_seconds() } else { 0.0 };
        let m = metrics.as_deref();
        pool.install(|| {
            for &b in boxes {
                sweep(u, out, shape, three_d, r, b, m, stream);
            }
        });
        if measure {
            cpu += cpu_seconds() - c0;
            if slowed {
                let c1 = cpu_seconds();
                fault::slow_down(cpu);
                cpu += cpu_seconds() - c1;
            }
            if let Some(m) = metrics.as_deref_mut() {
                m.add_cpu(Phase::Compute, cpu);
            }
        }
        mark(&mut metrics, Phase::Compute, t0, 0);
        std::mem::swap(&mut self.u, &mut self.next);
        self.steps += 1;
        Ok(())
    }

    /// Advances `min(max_steps, k)` steps with one exchange of the `k`-deep halo (`k` from
    /// [`with_time_block`](HeatSolver::with_time_block)) and one fused pass over memory; returns
    /// the number of steps taken. Stop at a checkpoint step by passing the steps left until it.
    /// Records compute, halo post and halo wait in `metrics`.
    ///
    /// Collective (neighbour-wise): every rank must pass the same `max_steps`.
    ///
    /// # Errors
    /// MPI errors.
    pub fn step_block(
        &mut self,
        pool: &rayon::ThreadPool,
        max_steps: usize,
        mut metrics: Option<&mut Metrics>,
    ) -> Result<usize> {
        let k = max_steps.min(self.block);
        if k == 0 {
            return Ok(0);
        }
        let (sent, received, _) = self.u.halo_volume();
        let t0 = Instant::now();
        let ex = self.u.exchange_begin()?;
        let t1 = Instant::now();
        self.u.exchange_finish(ex)?;
        let t2 = Instant::now();
        if let Some(m) = metrics.as_deref_mut() {
            m.add(Phase::HaloPost, t0, t1, (sent * 8) as u64);
            m.add(Phase::HaloWait, t1, t2, (received * 8) as u64);
        }
        // Level j is computed on the owned box widened by k - j layers towards each neighbour:
        // level k needs level k - 1 one layer around the owned cells, and so on down to level 0,
        // the k layers just received.
        let boxes: Vec<Box3> = (1..=k)
            .map(|j| {
                let mut b = self.owned;
                for d in 0..3 {
                    if self.shared[d][0] {
                        b.lo[d] -= k - j;
                    }
                    if self.shared[d][1] {
                        b.hi[d] += k - j;
                    }
                }
                b
            })
            .collect();
        let u = self.u.as_slice_mut();
        let next = self.next.as_slice_mut();
        debug_assert_eq!(u.len(), next.len());
        let grids = Grids { p: [u.as_mut_ptr(), next.as_mut_ptr()], len: u.len() };
        let t0 = Instant::now();
        let c0 = cpu_seconds();
        fused_block(grids, &boxes, self.shape, self.dims == 3, self.r, pool, metrics.as_deref());
        fault::slow_down(cpu_seconds() - c0);
        if let Some(m) = metrics {
            m.add_cpu(Phase::Compute, cpu_seconds() - c0);
            m.add(Phase::Compute, t0, Instant::now(), 0);
        }
        // Level k is in `u` for even k, in `next` for odd k.
        if k % 2 == 1 {
            std::mem::swap(&mut self.u, &mut self.next);
        }
        self.steps += k;
        Ok(k)
    }

    /// Steps per halo exchange for [`step_block`](HeatSolver::step_block) (the halo's depth).
    pub fn time_block(&self) -> usize {
        self.block
    }

    /// Whether the sweep writes with streaming (non-temporal) stores (off by default; see
    /// [`set_streaming_stores`](HeatSolver::set_streaming_stores)). The bits are the same either way.
    pub fn streaming_stores(&self) -> bool {
        self.stream
    }

    /// Turns streaming stores on or off (they only take effect on CPUs with AVX2 and FMA). They save the
    /// write-allocate traffic of arrays far larger than the caches, which helps on some memory
    /// systems; measure before keeping them on (`docs/PERFORMANCE.md`).
    pub fn set_streaming_stores(&mut self, on: bool) {
        self.stream = on;
    }

    /// The current field.
    pub fn field(&self) -> &DistArray<f64, IxDyn> {
        &self.u
    }

    /// Steps taken.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Restores the state of step `steps` from a checkpoint generation (array item `name`, written
    /// from [`field`](HeatSolver::field) on any decomposition of the same grid).
    ///
    /// Collective.
    ///
    /// # Errors
    /// Those of [`Generation::read_array`] (missing item, other shape or type, unreadable file).
    pub fn restore(&mut self, g: &Generation, name: &str) -> Result<()> {
        // Only the owned cells are state: boundary ghosts are the boundary condition (set at
        // construction) and interior ghosts come with the next exchange.
        g.read_array(name, &mut self.u)?;
        self.steps = g.step() as usize;
        Ok(())
    }

    /// Restores the state of step [`Restored::step`] from the partner copies of an in-job recovery
    /// (array item `name`, copied from [`field`](HeatSolver::field) on the ranks before the failure).
    ///
    /// Collective.
    ///
    /// # Errors
    /// Those of [`Restored::array`].
    pub fn restore_recovered(&mut self, r: &Restored, name: &str) -> Result<()> {
        r.array(name, &mut self.u)?;
        self.steps = r.step() as usize;
        Ok(())
    }

    /// Cells updated per step on this rank.
    pub fn local_cells(&self) -> usize {
        self.u.owned_box().cells()
    }
}

/// The same computation on one process with plain loops over the whole grid (no phalanx), for
/// checking: returns the field after `steps` steps in row-major order.
pub fn serial_reference(dims: usize, n: usize, steps: usize) -> Vec<f64> {
    let r = default_r(dims);
    let g = n + 2;
    let cells = if dims == 2 { g * g } else { g * g * g };
    let mut u = vec![0.0f64; cells];
    let idx2 = |i: usize, j: usize| i * g + j;
    let idx3 = |i: usize, j: usize, k: usize| (i * g + j) * g + k;
    // Boundary values: low face of dimension 0 at 1, the rest 0.
    if dims == 2 {
        for j in 1..=n {
            u[idx2(0, j)] = 1.0;
        }
    } else {
        for j in 1..=n {
            for k in 1..=n {
                u[idx3(0, j, k)] = 1.0;
            }
        }
    }
    let mut v = u.clone();
    for _ in 0..steps {
        if dims == 2 {
            for i in 1..=n {
                for j in 1..=n {
                    v[idx2(i, j)] = update2(
                        r,
                        u[idx2(i, j)],
                        u[idx2(i - 1, j)],
                        u[idx2(i + 1, j)],
                        u[idx2(i, j - 1)],
                        u[idx2(i, j + 1)],
                    );
                }
            }
        } else {
            for i in 1..=n {
                for j in 1..=n {
                    for k in 1..=n {
                        v[idx3(i, j, k)] = update3(
                            r,
                            u[idx3(i, j, k)],
                            u[idx3(i, j - 1, k)],
                            u[idx3(i, j + 1, k)],
                            u[idx3(i, j, k - 1)],
                            u[idx3(i, j, k + 1)],
                            u[idx3(i - 1, j, k)],
                            u[idx3(i + 1, j, k)],
                        );
                    }
                }
            }
        }
        std::mem::swap(&mut u, &mut v);
    }
    // Owned cells only, row-major.
    let mut out = Vec::with_capacity(n.pow(dims as u32));
    if dims == 2 {
        for i in 1..=n {
            out.extend_from_slice(&u[idx2(i, 1)..idx2(i, n + 1)]);
        }
    } else {
        for i in 1..=n {
            for j in 1..=n {
                out.extend_from_slice(&u[idx3(i, j, 1)..idx3(i, j, n + 1)]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In unit tests, workers of a fused block pause now and then between slabs, so an ordering
    /// mistake between neighbouring bands shows as wrong bits instead of hiding behind lockstep.
    pub(super) fn jitter(worker: usize, w: usize, level: usize) {
        let h = (worker as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ ((w * 31 + level) as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        if (h >> 59) == 0 {
            std::thread::sleep(std::time::Duration::from_micros(30));
        }
    }

    /// A grid with a one-cell border: the border at 1 on the low face of dimension 0, varied values
    /// inside (so a wrong operand shows).
    fn grid(dims: usize, n: usize) -> Vec<f64> {
        let g = n + 2;
        let cells = g.pow(dims as u32);
        let mut u: Vec<f64> = (0..cells).map(|i| ((i * 37) % 101) as f64 / 101.0).collect();
        let plane = if dims == 2 { g } else { g * g };
        u[..plane].fill(1.0);
        u
    }

    #[test]
    fn blocked_sweeps_equal_single_sweeps_bit_for_bit() {
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for (dims, n) in [(2, 1), (2, 5), (2, 61), (3, 2), (3, 17)] {
                for k in [1, 2, 3, 4, 7] {
                    let (mut a, mut b) = (grid(dims, n), grid(dims, n));
                    for _ in 0..k {
                        pool.install(|| sweep_grid(&a, &mut b, dims, n));
                        std::mem::swap(&mut a, &mut b);
                    }
                    let (mut u, mut out) = (grid(dims, n), grid(dims, n));
                    sweep_grid_blocked(&mut u, &mut out, dims, n, k, &pool);
                    let (last, prev) = if k % 2 == 0 { (&u, &out) } else { (&out, &u) };
                    let same = |x: &[f64], y: &[f64]| x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
                    assert!(same(last, &a), "{dims}-D n={n} k={k} on {threads} threads: step k differs");
                    assert!(same(prev, &b), "{dims}-D n={n} k={k} on {threads} threads: step k - 1 differs");
                }
            }
        }
    }
}
