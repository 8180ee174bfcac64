//! MPI tests of the run-time metrics: outputs parse, numbers add up (phase times within the wall
//! time, bytes equal to what the halo plan says), and an injected delay shows as imbalance.

mod harness;

use std::time::{Duration, Instant};

use harness::Case;
use phalanx::comm::{Comm, ThreadConfig};
use phalanx::kernels::heat::HeatSolver;
use phalanx::runtime::PinPolicy;
use phalanx::services::metrics::{Metrics, Phase, PHASES};

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("phalanx-metrics-{}-{name}", std::process::id()))
}

fn outputs_parse_and_add_up(world: &Comm) {
    let t = world.start_threads(ThreadConfig::new().threads(1).pin(PinPolicy::None)).unwrap();
    let mut solver = HeatSolver::new(world, 2, 60, t.pool()).unwrap();
    let mut m = Metrics::new(true);
    let steps = 25;
    for k in 0..steps {
        solver.step_timed(t.pool(), k % 2 == 0, 3, Some(&mut m)).unwrap();
    }
    // What the halo plan moves, per rank, per exchange.
    let (sent, received, _) = solver.field().halo_volume();
    let all_sent: u64 = world.allreduce(sent as u64, phalanx::comm::Op::Sum).unwrap();
    let all_recv: u64 = world.allreduce(received as u64, phalanx::comm::Op::Sum).unwrap();
    let report = m.report(world).unwrap();
    let trace = tmp("trace.json");
    m.write_trace(world, &trace).unwrap();
    let Some(r) = report else {
        assert_ne!(world.rank(), 0);
        return;
    };
    assert_eq!(r.ranks, world.size() as usize);
    // Phase times within each rank's wall time; every step timed.
    for (rank, pr) in r.per_rank.iter().enumerate() {
        let busy: f64 = pr.phases.iter().map(|p| p.seconds).sum();
        assert!(busy <= pr.wall + 1e-6, "rank {rank}: phases {busy} s > wall {} s", pr.wall);
        assert!(pr.phases[Phase::Compute as usize].count >= steps as u64);
        assert_eq!(pr.phases[Phase::HaloPost as usize].count, steps as u64);
    }
    assert_eq!(r.phases[Phase::HaloPost as usize].bytes, all_sent * 8 * steps as u64);
    assert_eq!(r.phases[Phase::HaloWait as usize].bytes, all_recv * 8 * steps as u64);
    for p in &r.phases {
        assert!(p.min <= p.mean + 1e-12 && p.mean <= p.max + 1e-12, "{p:?}");
    }
    // JSON parses and carries the same numbers.
    let json = tmp("m.json");
    r.write_json(&json).unwrap();
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(j["ranks"], world.size());
    assert_eq!(j["phases"]["halo_post"]["bytes"].as_u64().unwrap(), all_sent * 8 * steps as u64);
    assert_eq!(j["per_rank"].as_array().unwrap().len(), world.size() as usize);
    for p in PHASES {
        assert!(j["phases"][p.name()]["max_seconds"].as_f64().unwrap() <= j["wall_seconds"].as_f64().unwrap() + 1e-6);
    }
    // Prometheus text format: comments, then `name{labels} value` lines with numeric values.
    let prom = tmp("heat.prom");
    r.write_prometheus_with(&prom, &[("job", "test"), ("run", "42")], &[("step", steps as f64)]).unwrap();
    let text = std::fs::read_to_string(&prom).unwrap();
    let mut samples = 0;
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        value.parse::<f64>().unwrap_or_else(|_| panic!("value in {line:?}"));
        let (name, labels) = series.split_once('{').expect("labels");
        assert!(
            name.starts_with("phalanx_") && labels.ends_with('}') && labels.contains("job=\"test\",run=\"42\""),
            "{line}"
        );
        samples += 1;
    }
    assert!(samples > 20);
    let bytes_line =
        text.lines().find(|l| l.starts_with("phalanx_phase_bytes_total") && l.contains("phase=\"halo_wait\"")).unwrap();
    assert_eq!(bytes_line.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap() as u64, all_recv * 8 * steps as u64);
    assert!(text.contains("phalanx_step{job=\"test\",run=\"42\"} 25"));
    let leftover =
        prom.with_file_name(format!(".{}.{}.tmp", prom.file_name().unwrap().to_string_lossy(), std::process::id()));
    assert!(!leftover.exists(), "the temporary file was renamed into place, not left behind");
    // The trace: one process per rank, a main-thread track, worker tracks, complete events.
    let tr: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let events = tr["traceEvents"].as_array().unwrap();
    for rank in 0..world.size() {
        assert!(events.iter().any(|e| e["ph"] == "X" && e["pid"] == rank && e["tid"] == 0), "rank {rank} main track");
        assert!(
            events.iter().any(|e| e["ph"] == "X" && e["pid"] == rank && e["tid"] == 1 && e["name"] == "compute"),
            "rank {rank} worker track"
        );
    }
    for f in [json, prom, trace] {
        let _ = std::fs::remove_file(f);
    }
}

/// Tracing enabled on rank 0 only: write_trace is an error on every rank (before, the other ranks
/// returned their error while rank 0 waited in the barrier).
fn trace_off_on_some_ranks(world: &Comm) {
    let m = Metrics::new(world.rank() == 0);
    let e = m.write_trace(world, &tmp("half-trace.json")).unwrap_err();
    let want = if world.rank() == 0 && world.size() > 1 { "failed: write_trace" } else { "tracing was not enabled" };
    assert!(e.to_string().contains(want), "{e}");
    world.barrier().unwrap();
}

fn injected_delay_shows(world: &Comm) {
    let mut m = Metrics::new(false);
    for _ in 0..5 {
        m.time(Phase::Compute, 0, || {
            let spin = Instant::now();
            while spin.elapsed() < Duration::from_millis(2) {}
            if world.rank() == 1 {
                std::thread::sleep(Duration::from_millis(20)); // the injected delay
            }
        });
        m.time(Phase::Collective, 8, || world.barrier().unwrap());
    }
    if let Some(r) = m.report(world).unwrap() {
        if world.size() == 1 {
            assert!((r.imbalance - 1.0).abs() < 1e-9);
            assert_eq!(r.slowest_rank, 0);
        } else {
            assert_eq!(r.slowest_rank, 1, "{r}");
            assert_eq!(r.phases[Phase::Compute as usize].max_rank, 1);
            assert!(r.imbalance > 1.5, "imbalance {} should show the delayed rank", r.imbalance);
            // The others waited for it at the barrier.
            let waits: Vec<f64> = r.per_rank.iter().map(|p| p.phases[Phase::Collective as usize].seconds).collect();
            assert!(waits[0] > waits[1], "{waits:?}");
            let j = r.to_json();
            assert_eq!(j["slowest_rank"], 1);
        }
    }
}

fn main() {
    harness::main(
        "mpi_metrics",
        &[
            Case::new("outputs_parse_and_add_up", &[1, 3], outputs_parse_and_add_up),
            Case::new("injected_delay_shows", &[1, 3], injected_delay_shows),
            Case::new("trace_off_on_some_ranks", &[2, 3], trace_off_on_some_ranks),
        ],
    );
}
