//! A program in a crate that depends on phalanx alone (no bytemuck or ndarray of its own): it
//! derives `Pod` through `phalanx::bytemuck`, sends such structs, and updates a distributed array
//! with ndarray's parallel `Zip` through `phalanx::ndarray` (its `rayon` feature on).

use phalanx::bytemuck::{Pod, Zeroable};
use phalanx::ndarray::{s, Ix2, Zip};
use phalanx::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[bytemuck(crate = "phalanx::bytemuck")]
#[repr(C)]
struct Sample {
    value: f64,
    rank: u32,
    _pad: u32,
}

fn main() -> std::process::ExitCode {
    phalanx::run(|rt| {
        let world = rt.world();
        let mine = Sample { value: world.rank() as f64 + 0.5, rank: world.rank() as u32, _pad: 0 };
        let all = world.allgather(mine)?;
        assert_eq!(all.len(), world.size() as usize);
        let decomp = Decomposition::builder(&world, &[64, 64]).ghost_width(1).build()?;
        let mut u = DistArray::<f64, Ix2>::from_fn(&decomp, |g| (g[0] + 2 * g[1]) as f64)?;
        let mut next = DistArray::<f64, Ix2>::new(&decomp, 0.0)?;
        u.set_boundary_ghosts(0.0);
        u.exchange()?;
        let a = u.ghosted();
        Zip::from(next.owned_mut())
            .and(a.slice(s![1..-1, 1..-1]))
            .and(a.slice(s![..-2, 1..-1]))
            .and(a.slice(s![2.., 1..-1]))
            .par_for_each(|n, &c, &up, &down| *n = c + 0.25 * (up + down - 2.0 * c));
        let total = next.sum()?;
        if world.rank() == 0 {
            println!("reexport crate: {} samples, sum {total}", all.len());
        }
        Ok::<(), phalanx::Error>(())
    })
}
