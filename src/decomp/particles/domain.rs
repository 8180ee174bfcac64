//! The simulation box and its cut into one subdomain per rank (pure geometry, no MPI).

use crate::decomp::ProcessGrid;
use crate::error::{Error, ErrorKind, Result};

const AXES: [&str; 3] = ["x", "y", "z"];

/// A rectangular simulation box, periodic or open along each dimension, in physical coordinates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParticleBox {
    /// Lower corner.
    pub lo: [f64; 3],
    /// Upper corner (exclusive: a particle at `hi` of a periodic dimension is at `lo`).
    pub hi: [f64; 3],
    /// Periodic along each dimension.
    pub periodic: [bool; 3],
}

impl ParticleBox {
    /// A box from `lo` to `hi`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if a side is not a positive finite length.
    pub fn new(lo: [f64; 3], hi: [f64; 3], periodic: [bool; 3]) -> Result<ParticleBox> {
        for d in 0..3 {
            if !(lo[d].is_finite() && hi[d].is_finite() && hi[d] > lo[d]) {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "ParticleBox::new",
                    None,
                    format!(
                        "the box side along {} is {}..{}: it must be a positive finite length",
                        AXES[d], lo[d], hi[d]
                    ),
                ));
            }
        }
        Ok(ParticleBox { lo, hi, periodic })
    }

    /// The side lengths.
    pub fn lengths(&self) -> [f64; 3] {
        [self.hi[0] - self.lo[0], self.hi[1] - self.lo[1], self.hi[2] - self.lo[2]]
    }

    /// The volume.
    pub fn volume(&self) -> f64 {
        self.lengths().iter().product()
    }

    /// `x` wrapped into the box along the periodic dimensions (open dimensions unchanged).
    pub fn wrap(&self, mut x: [f64; 3]) -> [f64; 3] {
        #[allow(clippy::needless_range_loop)] // four arrays indexed by the dimension
        for d in 0..3 {
            if self.periodic[d] && !(self.lo[d]..self.hi[d]).contains(&x[d]) {
                let l = self.hi[d] - self.lo[d];
                x[d] -= l * ((x[d] - self.lo[d]) / l).floor();
                // Rounding can land a hair outside: on `hi` (x slightly below `lo`), or below `lo`
                // (after many periods).
                if x[d] < self.lo[d] {
                    x[d] += l;
                }
                if x[d] >= self.hi[d] {
                    x[d] = self.lo[d];
                }
            }
        }
        x
    }
}

/// The cut of a box into the blocks of a process grid: `planes[d]` holds the `dims[d] + 1`
/// coordinates of the cut planes along dimension `d` (first `lo`, last `hi`). Planes are physical
/// coordinates, so a load balancer may move them.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Cuts {
    pub(crate) planes: [Vec<f64>; 3],
}

impl Cuts {
    /// Equal slabs along every dimension.
    pub(crate) fn uniform(b: &ParticleBox, dims: &[usize]) -> Cuts {
        let planes = std::array::from_fn(|d| {
            let n = dims[d];
            let l = b.hi[d] - b.lo[d];
            (0..=n).map(|i| if i == n { b.hi[d] } else { b.lo[d] + l * i as f64 / n as f64 }).collect()
        });
        Cuts { planes }
    }

    /// The grid coordinate along `d` of the block holding coordinate `x` (clamped to the grid).
    #[inline]
    pub(crate) fn coord(&self, d: usize, x: f64) -> usize {
        let p = &self.planes[d];
        // The number of interior planes at or below x.
        p[1..p.len() - 1].partition_point(|&c| c <= x)
    }

    /// The rank owning position `x` (inside the box).
    #[inline]
    pub(crate) fn owner(&self, grid: &ProcessGrid, x: [f64; 3]) -> usize {
        let c = [self.coord(0, x[0]), self.coord(1, x[1]), self.coord(2, x[2])];
        (c[0] * grid.dims()[1] + c[1]) * grid.dims()[2] + c[2]
    }

    /// The block of grid coordinates `c`: `(lo, hi)`.
    pub(crate) fn block(&self, c: &[usize]) -> ([f64; 3], [f64; 3]) {
        (std::array::from_fn(|d| self.planes[d][c[d]]), std::array::from_fn(|d| self.planes[d][c[d] + 1]))
    }

    /// Checks that every block that exchanges ghosts along `d` is at least `cutoff` wide: ghosts
    /// come from the nearest neighbour only.
    pub(crate) fn check_width(&self, b: &ParticleBox, dims: &[usize], cutoff: f64, op: &'static str) -> Result<()> {
        for d in 0..3 {
            if dims[d] == 1 && !b.periodic[d] {
                continue;
            }
            let p = &self.planes[d];
            let (i, w) = p.windows(2).map(|w| w[1] - w[0]).enumerate().fold((0, f64::INFINITY), |m, (i, w)| {
                if w < m.1 {
                    (i, w)
                } else {
                    m
                }
            });
            if w < cutoff {
                return Err(Error::new(
                    ErrorKind::Decomposition,
                    op,
                    None,
                    format!(
                        "the ghost cutoff {cutoff} is larger than subdomain {i} along {} ({:.6} wide: the box {}..{} cut \
                         into {} slabs); ghosts would have to come from beyond the nearest rank, which phalanx does \
                         not support: use fewer ranks along {} (a process grid) or a smaller cutoff",
                        AXES[d], w, b.lo[d], b.hi[d], dims[d], AXES[d]
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The process grid for `size` ranks over `b` whose blocks are at least `cutoff` wide where they
/// exchange ghosts, with the least surface (the volume of ghosts).
pub(crate) fn auto_grid(size: usize, b: &ParticleBox, cutoff: f64, op: &'static str) -> Result<ProcessGrid> {
    let l = b.lengths();
    // The box in cells of the cutoff: a block of at least one cell is wide enough.
    let cells: Vec<usize> = (0..3).map(|d| ((l[d] / cutoff).floor() as usize).max(1)).collect();
    ProcessGrid::auto_for_width(size, &cells, &b.periodic, &[1, 1, 1]).map_err(|_| {
        Error::new(
            ErrorKind::Decomposition,
            op,
            None,
            format!(
                "{size} ranks cannot cut the box {:?}..{:?} into blocks at least the ghost cutoff {cutoff} wide \
                 (at most {} x {} x {} blocks): use fewer ranks or a smaller cutoff",
                b.lo, b.hi, cells[0], cells[1], cells[2]
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_lands_inside_the_box() {
        let b = ParticleBox::new([0.0; 3], [10.0; 3], [true, true, false]).unwrap();
        assert_eq!(b.wrap([-0.5, 10.0, 12.0]), [9.5, 0.0, 12.0]);
        assert_eq!(b.wrap([25.0, -20.0, -1.0]), [5.0, 0.0, -1.0]);
        let w = b.wrap([-1e-17, 0.0, 0.0]);
        assert!(w[0] >= 0.0 && w[0] < 10.0);
    }

    #[test]
    fn owner_follows_the_planes() {
        let b = ParticleBox::new([0.0; 3], [12.0; 3], [true; 3]).unwrap();
        let g = ProcessGrid::new(12, &[3, 2, 2], &[true; 3]).unwrap();
        let c = Cuts::uniform(&b, g.dims());
        assert_eq!(c.owner(&g, [0.0, 0.0, 0.0]), 0);
        assert_eq!(c.owner(&g, [4.0, 0.0, 0.0]), 4);
        assert_eq!(c.owner(&g, [11.99, 11.99, 11.99]), 11);
        assert_eq!(c.owner(&g, [3.99, 6.0, 5.99]), 2);
        for r in 0..12 {
            let (lo, hi) = c.block(&g.coords(r));
            let mid = std::array::from_fn(|d| 0.5 * (lo[d] + hi[d]));
            assert_eq!(c.owner(&g, mid), r);
        }
    }

    #[test]
    fn narrow_blocks_are_refused_with_the_numbers() {
        let b = ParticleBox::new([0.0; 3], [10.0; 3], [true; 3]).unwrap();
        let c = Cuts::uniform(&b, &[4, 1, 1]);
        let e = c.check_width(&b, &[4, 1, 1], 3.0, "test").unwrap_err();
        assert!(e.to_string().contains("2.5") && e.to_string().contains("along x"), "{e}");
        assert!(c.check_width(&b, &[4, 1, 1], 2.5, "test").is_ok());
        assert!(auto_grid(4, &b, 3.0, "test").is_ok_and(|g| g.dims().iter().all(|&n| n <= 3)));
        assert!(auto_grid(64, &b, 3.0, "test").is_err());
    }
}
