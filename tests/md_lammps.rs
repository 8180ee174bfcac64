//! The md example against LAMMPS: from the data file LAMMPS wrote for the classic LJ benchmark
//! (tests/data/lj: `in.lj.create`), the thermo at steps 0, 50 and 100 matches LAMMPS's log of the
//! same run (`in.lj.run`, neighbour list rebuilt whenever needed) to at least 6 significant digits
//! (12 seen). LAMMPS is not needed: its data file and log are committed. Release build, 2 ranks.

mod common;

use std::process::Command;
use std::time::Duration;

/// LAMMPS's thermo rows (step, temp, pe, etotal, press) from its log.
fn lammps_thermo(log: &str) -> Vec<[f64; 5]> {
    let mut rows = Vec::new();
    let mut on = false;
    for l in log.lines() {
        if l.trim_start().starts_with("Step ") {
            on = true;
            continue;
        }
        if l.starts_with("Loop time") {
            on = false;
        }
        if on {
            let v: Vec<f64> = l.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            if v.len() == 5 {
                rows.push([v[0], v[1], v[2], v[3], v[4]]);
            }
        }
    }
    rows
}

#[test]
fn md_matches_lammps_thermo() {
    let root = common::root();
    let data = root.join("tests/data/lj");
    let want = lammps_thermo(&std::fs::read_to_string(data.join("log.lammps")).unwrap());
    assert_eq!(want.iter().map(|r| r[0]).collect::<Vec<_>>(), vec![0.0, 50.0, 100.0], "the committed log");
    // A release build beside this test's own profile directory.
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().and_then(|d| d.parent()).and_then(|d| d.parent()).unwrap().to_path_buf();
    let ok = Command::new(env!("CARGO"))
        .args(["build", "-q", "--release", "--example", "md"])
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cargo build --release --example md failed");
    let md = target.join("release/examples/md");
    let mut c = common::launcher(2, &[]);
    c.arg(&md).args(["--lammps-data", data.join("lj-32000.data").to_str().unwrap(), "--threads", "1", "--json"]);
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    let out = common::run(&mut c, Duration::from_secs(300));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "md failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let got = j["thermo"].as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{j}");
    let mut worst: f64 = 0.0;
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g["step"].as_f64(), Some(w[0]));
        for (k, name) in ["temp", "pe", "etotal", "press"].iter().enumerate() {
            let (a, b) = (g[name].as_f64().unwrap(), w[k + 1]);
            let rel = ((a - b) / b).abs();
            worst = worst.max(rel);
            assert!(rel < 1e-6, "step {}: {name} {a} (phalanx) vs {b} (LAMMPS): relative difference {rel:e}", w[0]);
        }
    }
    println!("md vs LAMMPS: largest relative difference {worst:.2e} over steps 0, 50, 100");
}
