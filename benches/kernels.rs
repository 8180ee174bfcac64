// criterion_group! generates an undocumented public function; this file is a benchmark, not API.
#![allow(missing_docs)]

//! criterion benchmarks of the simulation kernels, single process: `cargo bench --bench kernels`.
//! Throughput is reported in cell updates (heat), pairwise interactions (nbody) and bytes of
//! ghosts filled (halo pack/unpack, through an MPI singleton).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use phalanx::kernels::heat::{sweep_grid, sweep_grid_blocked};
use phalanx::kernels::nbody::{accumulate_forces, Bodies};

fn heat(c: &mut Criterion) {
    let mut g = c.benchmark_group("heat_sweep");
    g.sample_size(20);
    for (dims, n) in [(2usize, 1024usize), (2, 4000), (3, 160)] {
        let cells = (n + 2).pow(dims as u32);
        let u: Vec<f64> = (0..cells).map(|i| (i % 97) as f64 * 0.01).collect();
        let mut out = vec![0.0; cells];
        g.throughput(Throughput::Elements(n.pow(dims as u32) as u64));
        // One thread: the per-core figure docs/PERFORMANCE.md compares with the copy roofline.
        // Two threads on the 2-D 4000^2 grid: how the memory-bound sweep shares a node's memory
        // bandwidth (an input of benches/perfmodel.py).
        for threads in [1, 2] {
            if threads == 2 && (dims, n) != (2, 4000) {
                continue;
            }
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
            g.bench_with_input(BenchmarkId::new(format!("{dims}d_{threads}thread"), n), &n, |b, &n| {
                b.iter(|| pool.install(|| sweep_grid(&u, &mut out, dims, n)))
            });
        }
    }
    g.finish();
    // Temporal blocking: K steps in one pass over the 2-D 4000^2 grid (throughput counts all K).
    // Two K, so that the performance model can fit the rate at any K (benches/perfmodel.py).
    let mut g = c.benchmark_group("heat_blocked");
    g.sample_size(10);
    let n = 4000usize;
    let mut u: Vec<f64> = (0..(n + 2).pow(2)).map(|i| (i % 97) as f64 * 0.01).collect();
    let mut out = u.clone();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
    for k in [2usize, 8] {
        g.throughput(Throughput::Elements((k * n * n) as u64));
        g.bench_with_input(BenchmarkId::new(format!("2d_1thread_k{k}"), n), &n, |b, &n| {
            b.iter(|| sweep_grid_blocked(&mut u, &mut out, 2, n, k, &pool))
        });
    }
    // The same in 3-D at 256^3, the size of the 3-D rows of the temporal-blocking table.
    let n = 256usize;
    let mut u: Vec<f64> = (0..(n + 2).pow(3)).map(|i| (i % 97) as f64 * 0.01).collect();
    let mut out = u.clone();
    for k in [2usize, 8] {
        g.throughput(Throughput::Elements((k * n * n * n) as u64));
        g.bench_with_input(BenchmarkId::new(format!("3d_1thread_k{k}"), n), &n, |b, &n| {
            b.iter(|| sweep_grid_blocked(&mut u, &mut out, 3, n, k, &pool))
        });
    }
    g.finish();
}

fn nbody(c: &mut Criterion) {
    let mut g = c.benchmark_group("nbody_forces");
    for n in [1024usize, 4096] {
        let b = Bodies::cluster(n, 0..n);
        let mut src = Vec::with_capacity(4 * n);
        for a in [&b.x, &b.y, &b.z, &b.m] {
            src.extend_from_slice(a);
        }
        let (mut ax, mut ay, mut az) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        g.throughput(Throughput::Elements((n * n) as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |bench, _| {
            bench.iter(|| accumulate_forces([&b.x, &b.y, &b.z], &src, 1e-4, [&mut ax, &mut ay, &mut az]))
        });
    }
    g.finish();
}

/// Halo pack, message and unpack on one process: a periodic grid whose only neighbour is itself,
/// so `DistArray::exchange` packs every face, sends it to its own rank (MPI started as a singleton,
/// no `mpirun` needed) and unpacks it. Throughput in bytes of ghosts filled.
fn halo(c: &mut Criterion) {
    use ndarray::{Ix2, Ix3};
    use phalanx::decomp::{Decomposition, DistArray};
    let rt = phalanx::init().expect("MPI singleton");
    let world = rt.world();
    let mut g = c.benchmark_group("halo_pack_unpack");
    g.sample_size(20);
    let dc = Decomposition::builder(&world, &[4096, 4096]).periodic(&[true, true]).build().expect("2-D");
    let mut a = DistArray::<f64, Ix2>::new(&dc, 1.0).expect("array");
    g.throughput(Throughput::Bytes(8 * a.halo_volume().1 as u64));
    g.bench_function("2d_4096", |b| b.iter(|| a.exchange().expect("exchange")));
    let dc = Decomposition::builder(&world, &[256, 256, 256]).periodic(&[true; 3]).build().expect("3-D");
    let mut a = DistArray::<f64, Ix3>::new(&dc, 1.0).expect("array");
    g.throughput(Throughput::Bytes(8 * a.halo_volume().1 as u64));
    g.bench_function("3d_256", |b| b.iter(|| a.exchange().expect("exchange")));
    g.finish();
}

criterion_group!(benches, heat, nbody, halo);
criterion_main!(benches);
