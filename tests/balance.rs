//! Dynamic load balancing as a user runs it: heat and md with `--balance-every`, one rank slowed
//! by fault injection (`PHALANX_FAULT=slow:RANK:FACTOR`: its computation takes FACTOR times its
//! own CPU time, as on a throttled core) or a non-uniform system. Imbalance is the CPU time of the
//! compute phase, max / mean over the ranks (honest when ranks share the 2 cores of this machine).
//! No timing budget here: throughput is measured by `benches/regenerate --balance-table`.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::example;

fn run(mut cmd: Command, limit: Duration) -> Output {
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    common::run(&mut cmd, limit)
}

/// `exe args` on `n` ranks, with `vars` (`NAME=VALUE`) in every rank's environment: set here and
/// passed by name, as every launcher takes them.
fn mpirun(n: usize, vars: &[&str], exe: &PathBuf, args: &[&str]) -> Output {
    let names: Vec<&str> = vars.iter().map(|v| v.split('=').next().unwrap()).collect();
    let mut c = common::launcher(n, &names);
    for v in vars {
        let (k, val) = v.split_once('=').unwrap();
        c.env(k, val);
    }
    c.arg(exe).args(args);
    run(c, Duration::from_secs(300))
}

fn json_of(out: &Output, what: &str) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{what} failed: {}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().expect("output")).expect("the last line is JSON")
}

fn f(j: &serde_json::Value, k: &str) -> f64 {
    j["balance"][k].as_f64().unwrap_or_else(|| panic!("no balance.{k} in {j}"))
}

fn sizes(j: &serde_json::Value) -> Vec<Vec<usize>> {
    serde_json::from_value(j["balance"]["block_sizes"].clone()).expect("block_sizes")
}

/// One rank `factor` times slower on `grid`: unbalanced, the imbalance is at least 1.5; balanced,
/// at most 1.2 after the last move, with the same field (bit for bit). The balancer keeps its
/// planes while a check finds at most its threshold 1.1, so the window after the last check can
/// end a little above it on a busy machine (1.104 seen in CI): 1.2 leaves that noise a margin and
/// still fails a balancer that did not move the planes far enough.
fn heat_slow_rank(ranks: usize, grid: &str, factor: &str) {
    let heat = example("heat");
    let slow = format!("PHALANX_FAULT=slow:1:{factor}");
    let base = ["--n", "512", "--steps", "2400", "--threads", "1", "--grid", grid, "--json"];
    // Checked every 1200 steps with a threshold nothing reaches: the planes stay, and the whole
    // run's imbalance is measured. That run only shows that the slowed rank is slow (the premise
    // of what follows); the imbalance is CPU time, and once in CI a burst on this 2-core VM hid it
    // (1.19 where runs give 1.66-1.88), so a premise not met is measured again, up to 3 runs.
    let mut tries = Vec::new();
    let (fixed, before) = loop {
        let fixed = json_of(
            &mpirun(
                ranks,
                &[&slow],
                &heat,
                &[&base[..], &["--balance-every", "1200", "--balance-threshold", "100"]].concat(),
            ),
            "heat unbalanced",
        );
        assert_eq!(fixed["balance"]["rebalances"], 0, "{fixed}");
        let before = f(&fixed, "imbalance_after");
        tries.push(before);
        if before >= 1.5 || tries.len() == 3 {
            break (fixed, before);
        }
        println!("heat {ranks} ranks ({grid}), rank 1 slowed {factor}x: unbalanced imbalance only {before:.3}; measuring again");
    };
    let out = mpirun(ranks, &[&slow], &heat, &[&base[..], &["--balance-every", "200"]].concat());
    let balanced = json_of(&out, "heat balanced");
    let after = f(&balanced, "imbalance_after");
    let moves = balanced["balance"]["rebalances"].as_u64().unwrap();
    println!(
        "heat {ranks} ranks ({grid}), rank 1 slowed {factor}x: imbalance {before:.3} unbalanced, {after:.3} after {moves} moves, blocks {:?}",
        sizes(&balanced)
    );
    assert!(before >= 1.5, "unbalanced imbalance {tries:?} in {} runs: {fixed}", tries.len());
    assert!(moves >= 1 && after <= 1.2, "balanced imbalance {after} after {moves} moves: {balanced}");
    assert!(sizes(&balanced)[0][1] < 512 / ranks, "the slow rank's block must shrink: {balanced}");
    assert_eq!(balanced["field_hash"], fixed["field_hash"]);
    let checks = balanced["balance"]["checks"].as_array().unwrap();
    let first = &checks[0];
    assert!(first["moved"] == true && first["predicted"].as_f64().unwrap() < first["imbalance"].as_f64().unwrap());
    // The metrics report counts the moves.
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("rebalances {moves}: ")));
}

#[test]
fn heat_balances_a_slow_rank_at_2_ranks() {
    heat_slow_rank(2, "2x1", "5");
}

#[test]
fn heat_balances_a_slow_rank_at_4_ranks_on_a_4x1_grid() {
    heat_slow_rank(4, "4x1", "3");
}

/// Blocks never become thinner than the halo (the time block deep), however slow a rank is; the
/// field stays the serial one.
#[test]
fn heat_blocks_stay_as_wide_as_the_halo() {
    let heat = example("heat");
    let j = json_of(
        &mpirun(
            3,
            &["PHALANX_FAULT=slow:1:40"],
            &heat,
            &["--n", "48", "--steps", "120", "--threads", "1", "--grid", "3x1", "--time-block", "6"]
                .iter()
                .chain(&["--balance-every", "12", "--check", "--json"])
                .copied()
                .collect::<Vec<_>>(),
        ),
        "heat --time-block 6",
    );
    let s = sizes(&j);
    assert!(j["balance"]["rebalances"].as_u64().unwrap() >= 1, "{j}");
    assert!(s[0].iter().all(|&x| x >= 6), "a block thinner than the 6-deep halo: {s:?}");
    assert_eq!(s[0][1], 6, "the very slow rank keeps the thinnest block allowed: {s:?}");
    assert_eq!(j["check"], true, "{j}");
}

/// Uneven blocks survive a checkpoint: a restart on as many ranks continues on them, a restart
/// on another rank count reads the same field, and both end where an uninterrupted run ends.
#[test]
fn heat_uneven_blocks_survive_a_restart() {
    let heat = example("heat");
    let dir = std::env::temp_dir().join(format!("phalanx-balance-ckpt-{}", std::process::id()));
    let d = dir.to_str().unwrap();
    // A rank 8 times slower on a 128^2 grid: the first move pays for itself on any machine.
    let slow = ["PHALANX_FAULT=slow:0:8"];
    let base = ["--n", "128", "--threads", "1", "--json", "--balance-every", "20"];
    let ck = ["--checkpoint-dir", d, "--checkpoint-every", "200"];
    let a =
        json_of(&mpirun(2, &slow, &heat, &[&base[..], &["--steps", "200"], &ck].concat()), "heat with a checkpoint");
    let uneven = sizes(&a);
    assert_ne!(uneven[0], vec![64, 64], "the balancer moved the planes: {a}");
    // Same rank count, no step left: the blocks of the checkpoint.
    let b =
        json_of(&mpirun(2, &[], &heat, &[&base[..], &["--steps", "200", "--restart"], &ck].concat()), "restart on 2");
    assert_eq!(b["restarted_from"], 200);
    assert_eq!(sizes(&b), uneven, "{b}");
    assert_eq!(b["field_hash"], a["field_hash"]);
    // Another rank count: even blocks, the same field, and on to step 250 as an uninterrupted run.
    let c =
        json_of(&mpirun(3, &[], &heat, &[&base[..], &["--steps", "250", "--restart"], &ck].concat()), "restart on 3");
    let whole = json_of(&mpirun(2, &[], &heat, &["--n", "128", "--threads", "1", "--json", "--steps", "250"]), "heat");
    assert_eq!(c["restarted_from"], 200);
    assert_eq!(c["field_hash"], whole["field_hash"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A liquid slab in vacuum filling a quarter of the box along x: unbalanced, the ranks with the
/// slab do nearly all the work; balanced, the cut planes split the slab, and the thermo output is
/// the unbalanced run's to summation-order precision.
fn md_slab(ranks: usize, grid: &str) {
    let md = example("md");
    let base = ["--cells", "14", "--slab", "0.25", "--temp", "0.8", "--steps", "300", "--thermo", "50"];
    let base = [&base[..], &["--threads", "1", "--grid", grid, "--json"]].concat();
    let fixed = json_of(&mpirun(ranks, &[], &md, &base), "md unbalanced");
    let balanced = json_of(&mpirun(ranks, &[], &md, &[&base[..], &["--balance-every", "50"]].concat()), "md balanced");
    let (before, after) = (fixed["imbalance"].as_f64().unwrap(), balanced["imbalance"].as_f64().unwrap());
    let moves = balanced["balance"]["rebalances"].as_u64().unwrap();
    println!(
        "md slab {ranks} ranks ({grid}): imbalance {before:.3} unbalanced, {after:.3} after {moves} moves; atom-steps/s {:.3e} -> {:.3e}; planes x {}",
        fixed["atom_steps_per_s"].as_f64().unwrap(),
        balanced["atom_steps_per_s"].as_f64().unwrap(),
        balanced["balance"]["cut_planes"][0]
    );
    assert!(before >= 1.5, "the slab must unbalance the run: {fixed}");
    assert!(moves >= 1 && after < 1.3 && after < before, "imbalance {after} after {moves} moves: {balanced}");
    let (a, b) = (fixed["thermo"].as_array().unwrap(), balanced["thermo"].as_array().unwrap());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        for k in ["temp", "pe", "etotal", "press"] {
            let (x, y) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-9 * x.abs().max(1.0),
                "{k} at step {}: {x} unbalanced, {y} balanced",
                a[0]["step"]
            );
        }
    }
}

#[test]
fn md_balances_a_slab_at_2_ranks() {
    md_slab(2, "2x1x1");
}

#[test]
fn md_balances_a_slab_at_4_ranks() {
    md_slab(4, "2x2x1");
}

/// md's cut planes survive a checkpoint: a restart on as many ranks continues on them.
#[test]
fn md_planes_survive_a_restart() {
    let md = example("md");
    let dir = std::env::temp_dir().join(format!("phalanx-balance-md-ckpt-{}", std::process::id()));
    let d = dir.to_str().unwrap();
    let base = ["--cells", "14", "--slab", "0.25", "--temp", "0.8", "--threads", "1", "--grid", "2x1x1", "--json"];
    let ck = ["--checkpoint-dir", d, "--checkpoint-every", "100", "--balance-every", "50"];
    let a = json_of(&mpirun(2, &[], &md, &[&base[..], &["--steps", "100"], &ck].concat()), "md with a checkpoint");
    let planes = a["balance"]["cut_planes"].clone();
    assert!(a["balance"]["rebalances"].as_u64().unwrap() >= 1, "{a}");
    let b = json_of(&mpirun(2, &[], &md, &[&base[..], &["--steps", "100", "--restart"], &ck].concat()), "md restart");
    assert_eq!(b["balance"]["cut_planes"], planes, "the restart must continue on the balanced planes");
    assert_eq!(b["state_hash"], a["state_hash"]);
    let _ = std::fs::remove_dir_all(&dir);
}
