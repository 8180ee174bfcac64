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
    let reference = {
        let o = run(
            Command::new("mpirun")
                .args(["-n", "1"])
                .arg(bin.join("heat"))
                .args(heat_args.split(' '))
                .arg("--json")
                .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
            Duration::from_secs(120),
        );
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap();
        v["field_hash"].as_str().unwrap().to_string()
    };
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
    println!("slurm: {passed} passed, 0 failed");
}

fn unsafe_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}
