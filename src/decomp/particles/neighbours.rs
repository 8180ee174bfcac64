//! Cell lists and Verlet neighbour lists (see [`VerletList`]).
use rayon::prelude::*;

use super::{Particle, Particles};
use crate::comm::Op;
use crate::error::{ErrorKind, Result};

/// Particles binned into cubic-ish cells at least `cell` wide over a region.
#[derive(Clone, Debug, Default)]
pub struct CellList {
    lo: [f64; 3],
    inv: [f64; 3],
    n: [usize; 3],
    start: Vec<u32>,
    items: Vec<u32>,
}

impl CellList {
    /// Bins `positions` (indices into it) into cells at least `cell` wide covering `lo..hi`;
    /// positions outside go to the nearest edge cell.
    ///
    /// Local.
    pub fn build(positions: &[[f64; 3]], lo: [f64; 3], hi: [f64; 3], cell: f64) -> CellList {
        let n: [usize; 3] = std::array::from_fn(|d| (((hi[d] - lo[d]) / cell).floor() as usize).max(1));
        let inv = std::array::from_fn(|d| n[d] as f64 / (hi[d] - lo[d]));
        let mut c = CellList { lo, inv, n, start: vec![0; n[0] * n[1] * n[2] + 1], items: vec![0; positions.len()] };
        let cells: Vec<u32> = positions.iter().map(|x| c.linear(c.cell_of(*x)) as u32).collect();
        for &k in &cells {
            c.start[k as usize + 1] += 1;
        }
        for k in 0..c.start.len() - 1 {
            c.start[k + 1] += c.start[k];
        }
        let mut fill = c.start.clone();
        for (i, &k) in cells.iter().enumerate() {
            c.items[fill[k as usize] as usize] = i as u32;
            fill[k as usize] += 1;
        }
        c
    }

    /// The number of cells along each dimension.
    pub fn dims(&self) -> [usize; 3] {
        self.n
    }

    /// The cell holding `x` (clamped to the grid of cells).
    #[inline]
    pub fn cell_of(&self, x: [f64; 3]) -> [usize; 3] {
        std::array::from_fn(|d| (((x[d] - self.lo[d]) * self.inv[d]).floor().max(0.0) as usize).min(self.n[d] - 1))
    }

    #[inline]
    fn linear(&self, c: [usize; 3]) -> usize {
        (c[0] * self.n[1] + c[1]) * self.n[2] + c[2]
    }

    /// The indices in the cells of linear indices `a..b` (consecutive cells: one slice).
    #[inline]
    fn cells_between(&self, a: usize, b: usize) -> &[u32] {
        &self.items[self.start[a] as usize..self.start[b] as usize]
    }

    /// The indices in the cell of linear index `k` (row-major over [`dims`](CellList::dims)).
    #[inline]
    fn cell_at(&self, k: usize) -> &[u32] {
        &self.items[self.start[k] as usize..self.start[k + 1] as usize]
    }

    /// The indices in cell `c`, in increasing order.
    #[inline]
    pub fn cell(&self, c: [usize; 3]) -> &[u32] {
        let k = self.linear(c);
        &self.items[self.start[k] as usize..self.start[k + 1] as usize]
    }

    /// Every index, cell by cell: an order in which particles close in space are close in memory.
    pub fn order(&self) -> &[u32] {
        &self.items
    }
}

/// Cell lists and Verlet neighbour lists over a rank's owned particles and ghosts.
///
/// A [`VerletList`] is a *half* list for Newton's third law: each pair within the list cutoff appears
/// once over the whole job. Two owned particles: on the owner, listed with the lower index. An owned
/// particle and a ghost: the same pair is seen from both ranks, as `i` with a ghost of `j` on one
/// and `j` with a ghost of `i` on the other, and only the rank on which the ghost lies *above* its
/// partner (greater z, then y, then x: LAMMPS's rule) lists it; the force on the ghost goes home with
/// [`Particles::reverse_add`]. Coordinates are compared, not subtracted, so the two ranks decide
/// exactly opposite ways.
///
/// Lists are built with a skin and rebuilt when any particle moved more than half of it since the
/// last build (decided collectively, [`VerletList::needs_rebuild`]), or on a fixed schedule.
#[derive(Clone, Debug)]
pub struct VerletList {
    cutoff: f64,
    skin: f64,
    every: usize,
    check: bool,
    since: usize,
    builds: usize,
    start: Vec<u32>,
    nbr: Vec<u32>,
    built_at: Vec<[f64; 3]>,
}

impl VerletList {
    /// An empty list for pairs within `cutoff`, holding pairs within `cutoff + skin`; by default
    /// rebuilt when any particle moved more than `skin / 2` (checked every step).
    pub fn new(cutoff: f64, skin: f64) -> VerletList {
        VerletList {
            cutoff,
            skin,
            every: 1,
            check: true,
            since: 0,
            builds: 0,
            start: vec![0],
            nbr: Vec::new(),
            built_at: Vec::new(),
        }
    }

    /// Look at the list every `every` steps only (LAMMPS's `neigh_modify every`), and with
    /// `check == false` rebuild then without looking at the displacements (`check no`).
    pub fn schedule(mut self, every: usize, check: bool) -> VerletList {
        self.every = every.max(1);
        self.check = check;
        self
    }

    /// The cutoff of the pairs listed (the interaction cutoff plus the skin).
    pub fn list_cutoff(&self) -> f64 {
        self.cutoff + self.skin
    }

    /// Lists the pairs within the list cutoff among `parts`' owned particles and ghosts, as they are
    /// now (call after [`Particles::migrate`]), with the threads of `pool`.
    ///
    /// Local.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if the container's ghost cutoff is smaller than the list cutoff
    /// (pairs with particles beyond the ghosts would be missed).
    pub fn build<T: Particle>(&mut self, parts: &Particles<T>, pool: &rayon::ThreadPool) -> Result<()> {
        const OP: &str = "VerletList::build";
        let rl = self.list_cutoff();
        if parts.ghost_cutoff() < rl {
            return Err(parts.comm().err(
                ErrorKind::InvalidArgument,
                OP,
                format!(
                    "the list cutoff {rl} (cutoff {} + skin {}) is larger than the container's ghost cutoff {}",
                    self.cutoff,
                    self.skin,
                    parts.ghost_cutoff()
                ),
            ));
        }
        let x: Vec<[f64; 3]> = parts.all().iter().map(|p| p.position()).collect();
        let owned = parts.owned_len();
        let (lo, hi) = parts.block();
        let g = parts.ghost_cutoff();
        // Bins half the list cutoff wide, searched 2 bins out: a smaller volume than 1 bin of the
        // full cutoff (LAMMPS's default too). Owned pairs with a half stencil (each pair of bins
        // once), owned-ghost pairs with the full stencil and the coordinate rule; ghosts have bins
        // of their own, empty away from the block's faces.
        // The bins reach 2 bins past the ghosts, so that every stencil bin of an owned particle
        // exists: no bounds to check in the loop, only index offsets.
        let pad = g + rl;
        let (glo, ghi) = (lo.map(|v| v - pad), hi.map(|v| v + pad));
        let own_cells = CellList::build(&x[..owned], glo, ghi, 0.5 * rl);
        let ghost_cells = CellList::build(&x[owned..], glo, ghi, 0.5 * rl);
        let rl2 = rl * rl;
        let n = own_cells.dims();
        // The stencil as rows along z: the bins of one row are consecutive, so their particles are
        // one slice of the cell list (5 bins visited as one, not one by one). A row is the range of
        // linear offsets `lo..hi` from the particle's bin.
        let row = |dx: i64, dy: i64| ((dx * n[1] as i64 + dy) * n[2] as i64) as isize;
        let rows: Vec<(i64, i64)> = (0..25).map(|k| (k / 5 - 2, k % 5 - 2)).collect();
        let full: Vec<(isize, isize)> = rows.iter().map(|&(dx, dy)| (row(dx, dy) - 2, row(dx, dy) + 3)).collect();
        // Owned pairs: the rows after (0, 0) whole, and in row (0, 0) the bins after this one.
        let mut half: Vec<(isize, isize)> =
            rows.iter().filter(|r| **r > (0, 0)).map(|&(dx, dy)| (row(dx, dy) - 2, row(dx, dy) + 3)).collect();
        half.push((1, 3));
        const CHUNK: usize = 512;
        let (x, own_cells, ghost_cells, full, half) = (&x, &own_cells, &ghost_cells, &full, &half);
        let parts_lists: Vec<(Vec<u32>, Vec<u32>)> = pool.install(|| {
            (0..owned.div_ceil(CHUNK))
                .into_par_iter()
                .map(|chunk| {
                    let mut counts = Vec::with_capacity(CHUNK);
                    let mut nbr = Vec::new();
                    for i in chunk * CHUNK..((chunk + 1) * CHUNK).min(owned) {
                        let xi = x[i];
                        let k = own_cells.linear(own_cells.cell_of(xi)) as isize;
                        let before = nbr.len();
                        let near = |j: usize| {
                            let xj = x[j];
                            let d = [xj[0] - xi[0], xj[1] - xi[1], xj[2] - xi[2]];
                            d[0] * d[0] + d[1] * d[1] + d[2] * d[2] < rl2
                        };
                        for &j in own_cells.cell_at(k as usize) {
                            if j as usize > i && near(j as usize) {
                                nbr.push(j);
                            }
                        }
                        for &(a, b) in half {
                            let run = own_cells.cells_between((k + a) as usize, (k + b) as usize);
                            nbr.extend(run.iter().copied().filter(|&j| near(j as usize)));
                        }
                        // Ghosts within the list cutoff exist only near the block's faces.
                        if (0..3).any(|d| xi[d] < lo[d] + rl || xi[d] >= hi[d] - rl) {
                            for &(a, b) in full {
                                for &m in ghost_cells.cells_between((k + a) as usize, (k + b) as usize) {
                                    let j = owned + m as usize;
                                    if above(x[j], xi) && near(j) {
                                        nbr.push(j as u32);
                                    }
                                }
                            }
                        }
                        counts.push((nbr.len() - before) as u32);
                    }
                    (counts, nbr)
                })
                .collect()
        });
        self.start.clear();
        self.start.push(0);
        self.nbr.clear();
        for (counts, nbr) in parts_lists {
            for c in counts {
                let last = *self.start.last().expect("start holds 0");
                self.start.push(last + c);
            }
            self.nbr.extend_from_slice(&nbr);
        }
        self.built_at.clear();
        self.built_at.extend_from_slice(&x[..owned]);
        self.since = 0;
        self.builds += 1;
        Ok(())
    }

    /// The listed neighbours of owned particle `i` (indices into [`Particles::all`]).
    #[inline]
    pub fn neighbours(&self, i: usize) -> &[u32] {
        &self.nbr[self.start[i] as usize..self.start[i + 1] as usize]
    }

    /// The number of owned particles the list was built for.
    pub fn len(&self) -> usize {
        self.start.len() - 1
    }

    /// Whether the list was built for no particle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of pairs listed on this rank.
    pub fn pairs(&self) -> usize {
        self.nbr.len()
    }

    /// The number of builds so far.
    pub fn builds(&self) -> usize {
        self.builds
    }

    /// Counts a step and says whether the list must be rebuilt (with a [`Particles::migrate`]
    /// first): on the schedule's steps, when any particle on any rank moved more than half the skin
    /// since the last build (or always, without the check).
    ///
    /// Collective on the steps the schedule looks (one `MPI_Allreduce` of a flag), local otherwise.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if the owned particles are not those of the last build (a
    /// `migrate` since, without a build), [`ErrorKind::PeerFailed`] on the other ranks; MPI errors.
    pub fn needs_rebuild<T: Particle>(&mut self, parts: &Particles<T>) -> Result<bool> {
        self.since += 1;
        if !self.since.is_multiple_of(self.every) {
            return Ok(false);
        }
        if !self.check {
            return Ok(true);
        }
        // The check travels with the flag, so that a rank with a stale list does not leave the
        // others in the all-reduce: 2 = an error somewhere.
        let local = if parts.owned_len() != self.built_at.len() {
            Err(parts.comm().err(
                ErrorKind::InvalidArgument,
                "VerletList::needs_rebuild",
                format!(
                    "the list was built for {} owned particles, the container has {}: build the list after every migrate",
                    self.built_at.len(),
                    parts.owned_len()
                ),
            ))
        } else {
            Ok(())
        };
        let half2 = 0.25 * self.skin * self.skin;
        let moved = local.is_ok()
            && parts.owned().iter().zip(&self.built_at).any(|(p, b)| {
                let x = p.position();
                let d = [x[0] - b[0], x[1] - b[1], x[2] - b[2]];
                d[0] * d[0] + d[1] * d[1] + d[2] * d[2] > half2
            });
        let flag = if local.is_err() { 2u8 } else { moved as u8 };
        let any = parts.comm().allreduce(flag, Op::Max)?;
        local?;
        if any == 2 {
            return Err(crate::Error::new(
                ErrorKind::PeerFailed,
                "VerletList::needs_rebuild",
                Some(parts.comm().rank()),
                "another rank's list was built for other particles than its container holds (see its message)",
            ));
        }
        Ok(any != 0)
    }
}

/// LAMMPS's tie-break for a pair of an owned particle at `xi` and a ghost at `xj`.
#[inline]
fn above(xj: [f64; 3], xi: [f64; 3]) -> bool {
    if xj[2] != xi[2] {
        return xj[2] > xi[2];
    }
    if xj[1] != xi[1] {
        return xj[1] > xi[1];
    }
    xj[0] >= xi[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_hold_every_index_once() {
        let xs: Vec<[f64; 3]> = (0..200).map(|i| [(i * 7 % 13) as f64, (i * 3 % 11) as f64, (i % 5) as f64]).collect();
        let c = CellList::build(&xs, [0.0; 3], [13.0, 11.0, 5.0], 2.0);
        let mut seen: Vec<u32> = c.order().to_vec();
        seen.sort_unstable();
        assert_eq!(seen, (0..200).collect::<Vec<u32>>());
        for (i, x) in xs.iter().enumerate() {
            assert!(c.cell(c.cell_of(*x)).contains(&(i as u32)));
        }
    }

    #[test]
    fn the_ghost_rule_is_antisymmetric() {
        let a = [1.0, 2.0, 3.0];
        for b in [[1.0, 2.0, 3.5], [0.5, 2.5, 3.0], [2.0, 2.0, 3.0], [0.0, 0.0, 0.0]] {
            assert_ne!(above(a, b), above(b, a));
        }
    }
}
