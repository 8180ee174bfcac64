//! The VTK output as a user meets it: ParaView (Debian's `pvpython`, under `xvfb-run`) opens the
//! files heat and md wrote at 3 ranks, and a full disk is an error on every rank that leaves no
//! `.pvti` behind. ParaView is installed by `ci/setup --viz` (about 550 MB, not in every CI run):
//! without it the ParaView test prints SKIPPED and the reason.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::example;

fn run(mut cmd: Command, limit: Duration) -> Output {
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    common::run(&mut cmd, limit)
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what} failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

/// ParaView opens the `.pvti` and `.pvtp` written at 3 ranks: extents, point and cell counts, array
/// names and ranges as written, and a rendered picture that is not one colour.
#[test]
fn paraview_opens_heat_and_md_output() {
    if !have("pvpython") || !have("xvfb-run") {
        println!("SKIPPED: paraview_opens_heat_and_md_output: pvpython or xvfb-run is not installed (ci/setup --viz)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("phalanx-viz-{}", std::process::id()));
    let d = dir.to_str().unwrap();
    let n = 41;
    // Both examples at 3 ranks, writing steps 0, 10 and 20 into the same directory.
    for (name, size) in [("heat", ["--n", &n.to_string()]), ("md", ["--cells", "8"])] {
        let mut cmd = common::launcher(3, &[]);
        cmd.arg(example(name)).args(size).args([
            "--steps",
            "20",
            "--threads",
            "1",
            "--output",
            d,
            "--output-every",
            "10",
        ]);
        ok(&run(cmd, Duration::from_secs(120)), &format!("{name} --output"));
    }
    let script = common::root().join("tests/data/paraview/check.py");
    let png = dir.join("u.png");
    let mut pv = Command::new("xvfb-run");
    pv.args(["-a", "pvpython"])
        .arg(&script)
        .arg(dir.join("u_00000020.pvti"))
        .arg(dir.join("atoms_00000020.pvtp"))
        .arg(&png);
    let out = ok(&run(pv, Duration::from_secs(300)), "pvpython");
    let line = out.lines().rev().find(|l| l.starts_with('{')).expect("a JSON line from the script");
    let j: serde_json::Value = serde_json::from_str(line).unwrap();
    println!("ParaView saw: {j}");

    let img = &j["image"];
    assert_eq!(img["extent"], serde_json::json!([0, n, 0, n, 0, 0]), "{img}");
    assert_eq!(
        (img["cells"].as_u64(), img["points"].as_u64()),
        (Some(n * n), Some((n + 1) * (n + 1))),
        "no gaps, no overlap: {img}"
    );
    let reference = phalanx::kernels::heat::serial_reference(2, n as usize, 20);
    let (lo, hi) = reference.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    // Axis order: cell (x, y) of ParaView is the array's [y][x]: the hot row is y = 0.
    let probe = img["probe"].as_array().expect("probed cells");
    let at = |i: usize, j: usize| reference[i * n as usize + j];
    assert_eq!(probe[0].as_f64().unwrap(), at(0, n as usize / 2), "ParaView's cell (x = n/2, y = 0)");
    assert_eq!(probe[1].as_f64().unwrap(), at(n as usize / 2, 0), "ParaView's cell (x = 0, y = n/2)");
    let range = img["arrays"]["u"].as_array().expect("an array named u");
    assert!(
        (range[0].as_f64().unwrap() - lo).abs() < 1e-12 && (range[1].as_f64().unwrap() - hi).abs() < 1e-12,
        "{range:?} vs {lo}..{hi}"
    );

    let pts = &j["particles"];
    assert_eq!(pts["points"].as_u64(), Some(4 * 8 * 8 * 8), "{pts}");
    assert_eq!(pts["arrays"]["id"], serde_json::json!([[1.0, 2048.0]]), "{pts}");
    let v = pts["arrays"]["velocity"].as_array().expect("velocity");
    assert_eq!(v.len(), 3);
    assert!(v.iter().all(|c| c[0].as_f64().unwrap() < 0.0 && c[1].as_f64().unwrap() > 0.0), "{v:?}");
    let side = 8.0 * (4.0f64 / 0.8442).cbrt();
    let b: Vec<f64> = pts["bounds"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert!(b.chunks(2).all(|c| c[0] >= 0.0 && c[1] < side && c[1] > 0.8 * side), "bounds {b:?} in a box of {side}");

    let pic = &j["png"];
    assert!(Path::new(&png).exists());
    let span = (0..3).map(|k| pic["max"][k].as_i64().unwrap() - pic["min"][k].as_i64().unwrap()).max().unwrap();
    assert!(pic["distinct_colours"].as_u64().unwrap() > 20 && span > 100, "a picture of the field, not a blank: {pic}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A full disk (a 256 KiB tmpfs in a private mount namespace) while heat writes its output: exit
/// code 3, an error on every rank, and no `.pvti` that looks complete.
#[test]
fn a_full_disk_is_an_error_on_every_rank() {
    let probe = Command::new("unshare").args(["-m", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!("SKIPPED: a_full_disk_is_an_error_on_every_rank: unshare -m is not allowed here (needs root)");
        return;
    }
    let mnt = std::env::temp_dir().join(format!("phalanx-full-{}", std::process::id()));
    std::fs::create_dir_all(&mnt).unwrap();
    let launcher = common::launcher_args(2, &[]);
    let heat = example("heat");
    // Everything inside the namespace: mount, run, then list what is left on the small disk.
    let script = format!(
        "mount -t tmpfs -o size=256k phalanx-full {m} || exit 99; {l} {h} --n 200 --steps 4 --threads 1 --output {m}/out --output-every 2; \
         echo \"exit=$?\"; echo listing; find {m} -name '*.pvti'",
        m = mnt.display(),
        l = launcher.join(" "),
        h = heat.display()
    );
    let mut c = Command::new("unshare");
    c.args(["-m", "sh", "-c", &script]);
    let out = run(c, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("exit=3"), "heat must fail with exit code 3: {stdout}\n{stderr}");
    for r in 0..2 {
        assert!(stderr.contains(&format!("rank {r} of 2:")), "rank {r} must report the failure: {stderr}");
    }
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let listing = stdout.split("listing").nth(1).unwrap_or("");
    assert!(!listing.contains(".pvti"), "no .pvti may be left: {listing}");
    let _ = std::fs::remove_dir(&mnt);
}

/// heat's series continues across a restart on another rank count from an earlier checkpoint:
/// the entries up to the restart stay, the later ones are written again (by the new rank count),
/// new ones follow, all with their physical times.
#[test]
fn heat_series_continues_across_a_restart() {
    let dir = std::env::temp_dir().join(format!("phalanx-viz-restart-{}", std::process::id()));
    let d = dir.to_str().unwrap();
    let heat = example("heat");
    let base = [
        "--n",
        "30",
        "--threads",
        "1",
        "--output",
        d,
        "--output-every",
        "10",
        "--checkpoint-dir",
        d,
        "--checkpoint-every",
        "10",
    ];
    let mut a = common::launcher(2, &[]);
    a.arg(&heat).args(base).args(["--steps", "20"]);
    ok(&run(a, Duration::from_secs(120)), "heat on 2 ranks");
    // Back to the checkpoint of step 10: step 20 is computed (and written) again.
    let gens: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    let newest = gens.iter().filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("gen-")).max().unwrap();
    assert!(newest.to_string_lossy().ends_with("20"), "{newest:?}");
    std::fs::remove_dir_all(newest).unwrap();
    let mut b = common::launcher(3, &[]);
    b.arg(&heat).args(base).args(["--steps", "30", "--restart"]);
    let out = ok(&run(b, Duration::from_secs(120)), "heat restarted on 3 ranks");
    assert!(out.contains("restart: step 10"), "{out}");
    let pvd = std::fs::read_to_string(dir.join("u.pvd")).unwrap();
    let files: Vec<&str> = pvd.lines().filter_map(|l| l.split("file=\"").nth(1)?.split('"').next()).collect();
    assert_eq!(files, ["u_00000000.pvti", "u_00000010.pvti", "u_00000020.pvti", "u_00000030.pvti"], "{pvd}");
    let times: Vec<f64> =
        pvd.lines().filter_map(|l| l.split("timestep=\"").nth(1)?.split('"').next()?.parse().ok()).collect();
    let dt = phalanx::kernels::heat::default_r(2) / 31.0 / 31.0;
    for (k, t) in times.iter().enumerate() {
        assert!((t - 10.0 * k as f64 * dt).abs() < 1e-15, "time of entry {k}: {t} ({pvd})");
    }
    let pieces =
        |step: u32| std::fs::read_to_string(dir.join(format!("u_{step:08}.pvti"))).unwrap().matches("<Piece ").count();
    assert_eq!((pieces(10), pieces(20), pieces(30)), (2, 3, 3), "step 20 rewritten by the 3-rank run");
    let _ = std::fs::remove_dir_all(&dir);
}
