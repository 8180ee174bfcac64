//! The batch scripts in examples/slurm/, submitted with `sbatch` to a real single-node Slurm
//! (slurmctld, slurmd and munged from Debian's packages, configured by `ci/slurm` in a temporary
//! directory): each job must complete with exit code 0 and print the expected result (heat: the
//! single-node field hash; nbody: a passed --check). Needs root to start the daemons; otherwise it
//! prints a SKIPPED line naming why. Plain `harness = false` program.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{example, root, run};

fn examples_dir() -> PathBuf {
    example("nbody");
    example("heat").parent().expect("examples dir").to_path_buf()
}

struct Daemons(PathBuf);
impl Drop for Daemons {
    fn drop(&mut self) {
        let _ = Command::new(root().join("ci/slurm")).arg("stop").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() {
    if unsafe_uid() != 0 {
        println!("slurm: SKIPPED: starting slurmctld/slurmd/munged needs root");
        println!("slurm: 0 passed, 0 failed, 1 skipped");
        return;
    }
    let dir = std::env::temp_dir().join(format!("phalanx-slurm-{}", std::process::id()));
    let started = run(Command::new(root().join("ci/slurm")).arg("start").arg(&dir), Duration::from_secs(300));
    let _daemons = Daemons(dir.clone());
    if !started.status.success() {
        println!(
            "slurm: SKIPPED: a single-node Slurm could not be started: {}",
            String::from_utf8_lossy(&started.stderr).trim()
        );
        println!("slurm: 0 passed, 0 failed, 1 skipped");
        return;
    }
    let conf = dir.join("slurm.conf");
    let bin = examples_dir();
    let out = dir.join("jobs");
    std::fs::create_dir_all(&out).unwrap();
    // The single-node reference for the heat problem the jobs run.
    let heat_args = "--n 65 --steps 10";
    let reference = heat_hash(&bin, heat_args);
    let mut passed = 0;
    for script in ["heat-mpi", "heat-hybrid", "nbody-mpi", "nbody-hybrid"] {
        let o = run(
            Command::new("sbatch")
                .args(["--wait", "--parsable", "--export=ALL"])
                .arg(format!("--chdir={}", out.display()))
                .arg(root().join("examples/slurm").join(format!("{script}.sbatch")))
                .env("SLURM_CONF", &conf)
                .env("PHALANX_BIN", &bin)
                .env("HEAT_ARGS", heat_args)
                .env("NBODY_ARGS", "--bodies 150 --steps 3 --check")
                // Open MPI refuses root without these; the test harness sets them, the scripts do not.
                .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
            Duration::from_secs(300),
        );
        let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let state =
            run(Command::new("scontrol").args(["show", "job", &id]).env("SLURM_CONF", &conf), Duration::from_secs(30));
        let state = String::from_utf8_lossy(&state.stdout).to_string();
        let log = std::fs::read_to_string(out.join(format!("{script}-{id}.out"))).unwrap_or_default();
        assert!(o.status.success(), "{script}: sbatch --wait failed ({}):\n{state}\n{log}", o.status);
        assert!(state.contains("JobState=COMPLETED") && state.contains("ExitCode=0:0"), "{script}: {state}");
        let j: serde_json::Value = serde_json::from_str(log.lines().last().unwrap_or(""))
            .unwrap_or_else(|_| panic!("{script}: no JSON in\n{log}"));
        if script.starts_with("heat") {
            assert_eq!(j["field_hash"], reference.as_str(), "{script}");
        } else {
            assert_eq!(j["check"]["passed"], true, "{script}");
        }
        if script.ends_with("hybrid") {
            assert_eq!(j["threads"], 2, "{script}: threads from SLURM_CPUS_PER_TASK");
        }
        println!(
            "slurm: {script}.sbatch as job {id} ... ok (COMPLETED, exit 0, {} ranks x {} threads)",
            j["ranks"], j["threads"]
        );
        passed += 1;
    }
    checkpoint_job(&conf, &bin, &out, &dir.join("checkpoints"));
    passed += 1;
    println!("slurm: {passed} passed, 0 failed");
}

/// The field hash of an uninterrupted single-rank heat run.
fn heat_hash(bin: &std::path::Path, args: &str) -> String {
    let o = run(
        common::launcher(1, &[]).arg(bin.join("heat")).args(args.split(' ')).arg("--json"),
        Duration::from_secs(120),
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap();
    v["field_hash"].as_str().unwrap().to_string()
}

fn job_state(conf: &std::path::Path, id: &str) -> String {
    let o = run(Command::new("scontrol").args(["show", "job", id]).env("SLURM_CONF", conf), Duration::from_secs(30));
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// heat-checkpoint.sbatch: a long job gets Slurm's warning signal (`scancel --batch --signal=USR1`,
/// what `--signal=B:USR1@60` sends before the time limit), writes a checkpoint and completes with
/// exit 0; the same script submitted again continues to the uninterrupted run's field hash.
fn checkpoint_job(conf: &std::path::Path, bin: &std::path::Path, out: &std::path::Path, ck: &std::path::Path) {
    let script = root().join("examples/slurm/heat-checkpoint.sbatch");
    let submit = |args: &str, wait: bool| {
        let mut c = Command::new("sbatch");
        c.args(["--parsable", "--export=ALL"])
            .args(wait.then_some("--wait"))
            .arg(format!("--chdir={}", out.display()))
            .arg(&script)
            .env("SLURM_CONF", conf)
            .env("PHALANX_BIN", bin)
            .env("HEAT_ARGS", args)
            .env("CHECKPOINT_DIR", ck)
            .env("CHECKPOINT_EVERY", "1000")
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        let o = run(&mut c, Duration::from_secs(300));
        assert!(o.status.success(), "sbatch: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let id = submit("--n 65 --steps 1000000000", false);
    let start = std::time::Instant::now();
    while !job_state(conf, &id).contains("JobState=RUNNING") {
        assert!(start.elapsed() < Duration::from_secs(120), "job {id} did not start: {}", job_state(conf, &id));
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(4));
    let o = run(
        Command::new("scancel").args(["--batch", "--signal=USR1", &id]).env("SLURM_CONF", conf),
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "scancel: {}", String::from_utf8_lossy(&o.stderr));
    let signalled = std::time::Instant::now();
    let state = loop {
        let s = job_state(conf, &id);
        if !s.contains("JobState=RUNNING") && !s.contains("JobState=COMPLETING") {
            break s;
        }
        assert!(signalled.elapsed() < Duration::from_secs(120), "job {id} did not stop after SIGUSR1: {s}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(out.join(format!("heat-checkpoint-{id}.out"))).unwrap_or_default();
    assert!(state.contains("JobState=COMPLETED") && state.contains("ExitCode=0:0"), "{state}\n{log}");
    let j = last_json(&log);
    let steps = j["steps"].as_u64().unwrap();
    assert!(j["stopped_by"] == "SIGUSR1" && log.contains(&format!("stopped: checkpoint of step {steps}")), "{log}");
    let more = steps + 10;
    let id2 = submit(&format!("--n 65 --steps {more}"), true);
    let log2 = std::fs::read_to_string(out.join(format!("heat-checkpoint-{id2}.out"))).unwrap_or_default();
    let j2 = last_json(&log2);
    assert_eq!(j2["restarted_from"], steps, "{log2}");
    assert_eq!(j2["field_hash"], heat_hash(bin, &format!("--n 65 --steps {more}")).as_str(), "{log2}");
    println!(
        "slurm: heat-checkpoint.sbatch as jobs {id} and {id2} ... ok (SIGUSR1 after {:.1} s of running: checkpoint of step {steps}, exit 0; resubmitted: continued to step {more} with the uninterrupted hash)",
        signalled.duration_since(start).as_secs_f64()
    );
}

/// The last JSON object line of a job's output. Slurm writes the job's standard output and error
/// to one file, so a line heat prints on standard error at the end ("heat: SIGUSR1 received:
/// stopping after step N") can land after the JSON line (seen once in CI).
fn last_json(log: &str) -> serde_json::Value {
    log.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok().filter(serde_json::Value::is_object))
        .unwrap_or_else(|| panic!("no JSON line in the job's output:\n{log}"))
}

fn unsafe_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}
