//! A crate that depends on phalanx alone builds and runs: it derives `Pod` through
//! `phalanx::bytemuck` and uses `phalanx::ndarray` (with its `rayon` feature) for a parallel update
//! of a distributed array, with no bytemuck or ndarray dependency of its own
//! (`tests/reexport-crate/src/main.rs`). Built offline against this repository's `Cargo.lock`, into
//! its own target directory, with whatever MPI the environment selects (as the user's would be).

mod common;

use std::process::Command;
use std::time::Duration;

#[test]
fn a_crate_depending_on_phalanx_alone_uses_its_reexports() {
    let root = common::root();
    let dir = std::env::temp_dir().join(format!("phalanx-reexport-crate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).expect("create the crate's directory");
    let manifest = format!(
        "[package]\nname = \"phalanx-reexport-crate\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
         [dependencies]\nphalanx = {{ path = {:?} }}\n\n[workspace]\n",
        root.to_str().expect("a UTF-8 path")
    );
    assert!(!manifest.contains("bytemuck") && !manifest.contains("ndarray"));
    std::fs::write(dir.join("Cargo.toml"), manifest).expect("write Cargo.toml");
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).expect("copy Cargo.lock");
    std::fs::copy(root.join("tests/reexport-crate/src/main.rs"), dir.join("src/main.rs")).expect("copy main.rs");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), Into::into).join("reexport-crate");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--offline", "--quiet"]).current_dir(&dir).env("CARGO_TARGET_DIR", &target);
    let o = common::run(&mut build, Duration::from_secs(900));
    assert!(
        o.status.success(),
        "cargo build of a crate depending on phalanx alone failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let exe = target.join("debug/phalanx-reexport-crate");
    let mut run = common::launcher(2, &[]);
    run.arg(&exe);
    let o = common::run(&mut run, Duration::from_secs(120));
    let out = String::from_utf8_lossy(&o.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(o.status.success(), "{exe:?} at 2 ranks: {:?}\n{out}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("reexport crate: 2 samples, sum "), "unexpected output:\n{out}");
}
