//! The interior and the boundary of a rank's block, for overlapping the halo exchange with
//! computation (PETSc users write this split by hand around `DMGlobalToLocalBegin/End`).
//!
//! A stencil of radius `width` at an **interior** cell reads owned cells only, so it can run while
//! the exchange is in flight; the **boundary** cells (within `width` of a face of the block) need
//! the ghosts and run after the exchange has finished:
//!
//! ```no_run
//! # use phalanx::decomp::{Decomposition, DistArray};
//! # use ndarray::{Ix2, Slice};
//! # let rt = phalanx::init()?; let world = rt.world();
//! let dc = Decomposition::builder(&world, &[512, 512]).build()?;
//! let mut u = DistArray::<f64, Ix2>::new(&dc, 0.0)?;
//! let mut next = u.owned().to_owned();
//! let update = |u: &DistArray<f64, Ix2>, next: &mut ndarray::Array2<f64>, b: &[std::ops::Range<usize>]| {
//!     let (v, g) = (u.ghosted(), dc.ghost_width());
//!     for i in b[0].clone() {
//!         for j in b[1].clone() {
//!             next[[i - g[0], j - g[1]]] = 0.25 * (v[[i - 1, j]] + v[[i + 1, j]] + v[[i, j - 1]] + v[[i, j + 1]]);
//!         }
//!     }
//! };
//! let ex = u.exchange_begin()?;
//! update(&u, &mut next, &dc.interior(1));       // while the ghosts are in flight
//! u.exchange_finish(ex)?;
//! for b in dc.boundary(1) {
//!     update(&u, &mut next, &b);                 // now that the ghosts have arrived
//! }
//! # Ok::<(), phalanx::Error>(())
//! ```

use std::ops::Range;

use super::Decomposition;

impl Decomposition {
    /// The owned cells at least `width` cells away from every face of this rank's block, as one
    /// index range per dimension into the ghosted array ([`DistArray::ghosted`](super::DistArray::ghosted)).
    /// Empty in a dimension whose block is narrower than `2 * width`.
    ///
    /// Local.
    pub fn interior(&self, width: usize) -> Vec<Range<usize>> {
        let (g, n) = (self.ghost_width(), self.owned_box().len());
        (0..self.ndim())
            .map(|d| {
                let lo = g[d] + width.min(n[d]);
                let hi = (g[d] + n[d]).saturating_sub(width).max(lo);
                lo..hi
            })
            .collect()
    }

    /// The owned cells within `width` of a face of this rank's block (everything owned but
    /// [`interior`](Self::interior)), as disjoint boxes, each one index range per dimension into
    /// the ghosted array. Empty boxes are left out.
    ///
    /// Local.
    pub fn boundary(&self, width: usize) -> Vec<Vec<Range<usize>>> {
        let (g, n) = (self.ghost_width(), self.owned_box().len());
        let nd = self.ndim();
        let inner = self.interior(width);
        let owned: Vec<Range<usize>> = (0..nd).map(|d| g[d]..g[d] + n[d]).collect();
        let mut out = Vec::new();
        // Box d: inside the interior in the dimensions before d, in a slab of dimension d, anything
        // in the dimensions after it. Every non-interior cell is in the box of its first dimension
        // outside the interior range, so the boxes cover it once.
        for d in 0..nd {
            let low = owned[d].start..inner[d].start;
            let high = inner[d].end.max(inner[d].start)..owned[d].end;
            for slab in [low, high] {
                let b: Vec<Range<usize>> = (0..nd)
                    .map(|e| match e.cmp(&d) {
                        std::cmp::Ordering::Less => inner[e].clone(),
                        std::cmp::Ordering::Equal => slab.clone(),
                        std::cmp::Ordering::Greater => owned[e].clone(),
                    })
                    .collect();
                if b.iter().all(|r| !r.is_empty()) {
                    out.push(b);
                }
            }
        }
        out
    }
}
