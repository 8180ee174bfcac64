//! The example programs as a user runs them: through mpirun, with their command-line contract
//! (`--help`, `--json` as the last line, `--check`, `--png`, exit codes).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::example;

/// Runs a command with the Open MPI root settings (test harness only), killing it after `limit`.
fn run(mut cmd: Command, limit: Duration) -> Output {
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    common::run(&mut cmd, limit)
}

fn mpirun(n: usize, exe: &PathBuf, args: &[&str]) -> Output {
    let mut c = common::launcher(n, &[]);
    c.arg(exe).args(args);
    run(c, Duration::from_secs(120))
}

#[test]
fn heat_json_check_and_png() {
    let png = std::env::temp_dir().join(format!("phalanx-heat-{}.png", std::process::id()));
    let out = mpirun(
        3,
        &example("heat"),
        &["--n", "33", "--steps", "10", "--threads", "1", "--check", "--json", "--png", png.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "heat failed: {}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().expect("output");
    let j: serde_json::Value = serde_json::from_str(last).expect("the last line is JSON");
    for key in ["example", "ranks", "threads", "dims", "n", "steps", "seconds", "mlups", "field_hash"] {
        assert!(!j[key].is_null(), "missing {key} in {last}");
    }
    assert_eq!(j["example"], "heat");
    assert_eq!(j["ranks"], 3);
    assert_eq!(j["check"], true);
    let want = phalanx::decomp::field_hash_of(&phalanx::kernels::heat::serial_reference(2, 33, 10));
    assert_eq!(j["field_hash"], format!("{want:032x}"));
    let bytes = std::fs::read(&png).expect("the PNG was written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let _ = std::fs::remove_file(&png);
}

/// Temporal blocking from the command line: the same field as the serial run; a block deeper than a
/// rank's share of the grid is a clear error, a zero block a usage error.
#[test]
fn heat_time_block() {
    let heat = example("heat");
    let out =
        mpirun(2, &heat, &["--n", "33", "--steps", "10", "--threads", "2", "--time-block", "4", "--check", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "heat failed: {}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("4 steps per exchange"), "{stdout}");
    let j: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!((j["check"].as_bool(), j["time_block"].as_u64(), j["steps"].as_u64()), (Some(true), Some(4), Some(10)));
    let want = phalanx::decomp::field_hash_of(&phalanx::kernels::heat::serial_reference(2, 33, 10));
    assert_eq!(j["field_hash"], format!("{want:032x}"));

    let out = mpirun(2, &heat, &["--n", "33", "--steps", "10", "--time-block", "0"]);
    assert_eq!(out.status.code(), Some(2), "--time-block 0 is a usage error");
    let out = mpirun(2, &heat, &["--n", "33", "--steps", "10", "--time-block", "40"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("time block of 40 steps"), "{err}");
}

#[test]
fn heat_help_and_bad_arguments() {
    let out = run(
        {
            let mut c = Command::new(example("heat"));
            c.arg("--help");
            c
        },
        Duration::from_secs(30),
    );
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in
        ["--dims", "--n", "--steps", "--threads", "--pin", "--overlap", "--time-block", "--check", "--png", "--json"]
    {
        assert!(help.contains(opt), "--help does not mention {opt}");
    }
    let out = run(
        {
            let mut c = Command::new(example("heat"));
            c.args(["--dims", "5"]);
            c
        },
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "bad arguments exit with 2");
}

#[test]
fn nbody_json_and_check() {
    let out = mpirun(2, &example("nbody"), &["--bodies", "150", "--steps", "3", "--threads", "1", "--check", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "nbody failed: {}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("output")).expect("the last line is JSON");
    for key in ["example", "ranks", "threads", "bodies", "steps", "seconds", "interactions_per_s", "energy_drift"] {
        assert!(!j[key].is_null(), "missing {key}");
    }
    assert_eq!(j["check"]["passed"], true);
    assert!(j["energy_drift"].as_f64().unwrap() < 1e-8);
    // The fast kernel: within the same 1e-12 of the serial IEEE loop, and says which kernel ran.
    let args = ["--bodies", "150", "--steps", "3", "--threads", "1", "--check", "--json", "--precision", "fast"];
    let out = mpirun(2, &example("nbody"), &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nbody --precision fast failed: {}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("output")).expect("the last line is JSON");
    assert_eq!(j["check"]["passed"], true, "{j}");
    assert_eq!(j["precision"], "fast");
    assert_eq!(j["fast_kernel"].as_str(), phalanx::kernels::nbody::fast_kernel(), "{j}");
    let out = mpirun(1, &example("nbody"), &["--precision", "fastest"]);
    assert_eq!(out.status.code(), Some(2), "an unknown precision is a usage error");
}

/// Checkpoint options as a user meets them: --restart without a directory is a usage error (2); a
/// checkpoint directory that cannot be created is a runtime error (3) naming the path, on every
/// rank's behalf, with no hang; a damaged only generation is an error naming the file.
#[test]
fn checkpoint_options_and_errors() {
    let heat = example("heat");
    let out = mpirun(1, &heat, &["--n", "16", "--steps", "2", "--restart"]);
    assert_eq!(out.status.code(), Some(2), "--restart without --checkpoint-dir");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--checkpoint-dir"));

    let blocker = std::env::temp_dir().join(format!("phalanx-cli-file-{}", std::process::id()));
    std::fs::write(&blocker, b"not a directory").unwrap();
    let dir = blocker.join("ckpt");
    let out = mpirun(
        2,
        &heat,
        &["--n", "16", "--steps", "4", "--checkpoint-every", "2", "--checkpoint-dir", dir.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(blocker.to_str().unwrap()), "the error names the path: {err}");
    let _ = std::fs::remove_file(&blocker);

    let dir = std::env::temp_dir().join(format!("phalanx-cli-ckpt-{}", std::process::id()));
    let ok = mpirun(
        2,
        &heat,
        &["--n", "16", "--steps", "4", "--checkpoint-every", "4", "--checkpoint-dir", dir.to_str().unwrap()],
    );
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let rank_file = dir.join("gen-000000000004").join("rank-000001.bin");
    let mut bytes = std::fs::read(&rank_file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&rank_file, bytes).unwrap();
    let out = mpirun(2, &heat, &["--n", "16", "--steps", "6", "--restart", "--checkpoint-dir", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("rank-000001.bin") && err.contains("checksum") && err.contains("no usable checkpoint"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn json_of(out: &Output, what: &str) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{what} failed: {}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().expect("output")).expect("the last line is JSON")
}

/// md's JSON summary; a checkpoint written on 2 ranks and read on 3 holds the same state (its
/// hash, ordered by atom id); a malformed data file is an error naming the line, on every rank.
#[test]
fn md_json_restart_and_bad_data() {
    let md = example("md");
    let dir = std::env::temp_dir().join(format!("phalanx-md-ckpt-{}", std::process::id()));
    let d = dir.to_str().unwrap();
    let base = ["--cells", "6", "--threads", "1", "--thermo", "10", "--json"];
    let a = json_of(
        &mpirun(2, &md, &[&base[..], &["--steps", "20", "--checkpoint-dir", d, "--checkpoint-every", "20"]].concat()),
        "md on 2 ranks",
    );
    for key in ["atom_steps_per_s", "ranks", "threads", "atoms", "steps", "thermo", "state_hash"] {
        assert!(!a[key].is_null(), "missing {key} in {a}");
    }
    assert_eq!((a["ranks"].as_u64(), a["atoms"].as_u64(), a["steps"].as_u64()), (Some(2), Some(864), Some(20)));
    let th = a["thermo"].as_array().unwrap();
    assert_eq!(th.iter().map(|t| t["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 10, 20]);
    for t in th {
        for k in ["temp", "pe", "etotal", "press"] {
            assert!(t[k].as_f64().is_some_and(f64::is_finite), "{k} in {t}");
        }
    }
    assert!((th[0]["temp"].as_f64().unwrap() - 1.44).abs() < 1e-12, "initial temperature {}", th[0]);
    // The restart does no step: the state read on 3 ranks is the state written on 2.
    let b = json_of(
        &mpirun(3, &md, &[&base[..], &["--steps", "20", "--checkpoint-dir", d, "--restart"]].concat()),
        "md restart",
    );
    assert_eq!((b["ranks"].as_u64(), b["steps_this_run"].as_u64()), (Some(3), Some(0)));
    assert_eq!(b["state_hash"], a["state_hash"], "state after a restart on 3 ranks");
    // And it goes on from there.
    let c = json_of(
        &mpirun(3, &md, &[&base[..], &["--steps", "30", "--checkpoint-dir", d, "--restart"]].concat()),
        "md restart",
    );
    assert_eq!(c["steps_this_run"].as_u64(), Some(10));
    let _ = std::fs::remove_dir_all(&dir);

    let bad = std::env::temp_dir().join(format!("phalanx-md-bad-{}.data", std::process::id()));
    std::fs::write(&bad, "LAMMPS data\n\n1 atoms\n1 atom types\n0 3 xlo xhi\n0 3 ylo yhi\n0 3 zlo zhi\n\nMasses\n\n1 1\n\nAtoms # atomic\n\n1 1 0.5 oops 1\n").unwrap();
    let out = mpirun(2, &md, &["--lammps-data", bad.to_str().unwrap(), "--threads", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    for r in 0..2 {
        assert!(
            err.contains(&format!("rank {r}")) && err.contains(":15: y \"oops\""),
            "rank {r} must report the bad line: {err}"
        );
    }
    let _ = std::fs::remove_file(&bad);
}

/// The wave example (written on DistArray, docs/GUIDE.md): `--check` passes in 2-D and 3-D, its
/// field hash is the same on 1 to 4 ranks, and the check fails (exit 1) on an unstable run.
#[test]
fn wave_check_hash_and_failing_check() {
    let wave = example("wave");
    let json = |out: &Output| -> serde_json::Value {
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.lines().last().expect("output")).expect("the last line is JSON")
    };
    for (dims, n, ranks) in [("2", "32", 3), ("3", "16", 4)] {
        let out = mpirun(ranks, &wave, &["--dims", dims, "--n", n, "--check", "--json"]);
        let j = json(&out);
        assert!(
            out.status.success(),
            "wave --dims {dims} --check failed: {j}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(j["check"]["same_as_one_rank"], true, "{j}");
        let order = j["check"]["order"].as_f64().expect("order");
        assert!((1.8..2.3).contains(&order), "observed order {order} in {j}");
    }
    let hashes: Vec<_> = (1..=4)
        .map(|r| json(&mpirun(r, &wave, &["--n", "20", "--t-end", "0.2", "--json"]))["field_hash"].clone())
        .collect();
    assert!(hashes.iter().all(|h| h == &hashes[0] && h.is_string()), "field hashes on 1-4 ranks: {hashes:?}");
    // Beyond the stability limit (c dt / h about 0.61 in 2-D) the error grows instead of shrinking.
    let out = mpirun(2, &wave, &["--n", "32", "--cfl", "0.9", "--t-end", "2", "--check", "--json"]);
    assert_eq!(out.status.code(), Some(1), "an unstable run must fail --check: {}", json(&out));
}
