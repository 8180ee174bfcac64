//! A user's program: the README's first example, with the MPI library it runs with.
use phalanx::prelude::*;

fn main() -> phalanx::Result<()> {
    let rt = phalanx::init()?;
    let world = rt.world();
    let total = world.allreduce((world.rank() + 1) as f64, Op::Sum)?;
    if world.rank() == 0 {
        let lib = phalanx::runtime::library_version();
        println!("sum over {} ranks = {total}", world.size());
        println!("library: {}", lib.lines().next().unwrap_or(""));
        println!("built against: {}", phalanx::runtime::built_against());
    }
    Ok(())
}
