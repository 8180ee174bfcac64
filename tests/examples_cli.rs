//! The example programs as a user runs them: through mpirun, with their command-line contract
//! (`--help`, `--json` as the last line, `--check`, `--png`, exit codes).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `target/<profile>/examples/NAME`: built by a full `cargo test`, or here when the test runs alone.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join("examples").join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO")).args(["build", "--example", name]).status().expect("run cargo");
        assert!(status.success(), "cargo build --example {name} failed");
    }
    assert!(path.exists(), "{} is missing after building it", path.display());
    path
}

/// Runs a command with the Open MPI root settings (test harness only), killing it after `limit`.
fn run(mut cmd: Command, limit: Duration) -> Output {
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1").stdin(Stdio::null());
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn mpirun(n: usize, exe: &PathBuf, args: &[&str]) -> Output {
    let mut c = Command::new("mpirun");
    c.args(["-n", &n.to_string(), "--oversubscribe", "--bind-to", "none"]).arg(exe).args(args);
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
    for opt in ["--dims", "--n", "--steps", "--threads", "--pin", "--overlap", "--check", "--png", "--json"] {
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
}
