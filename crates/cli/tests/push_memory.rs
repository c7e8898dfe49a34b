//! Pushing a large parcel costs memory that does not grow with its size (issue 13.8): the
//! binary's `reconcile --once` pushes a Spin app with a 64 MiB module and one with a tiny module
//! to the real Bindle server (in this test's process, so only the client is measured), and its
//! peak resident memory (`VmHWM` of the child, read from `/proc/PID/status` while it runs) must
//! stay under the module's size, and within a few MiB of the tiny app's. Before parcels were
//! streamed, the 64 MiB push peaked above 200 MiB (the module read whole, and copied again for
//! each attempt). BENCHMARKS.md has the 200 MB figures.

use hippo_gitops_testkit as common;

use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const MIB: u64 = 1 << 20;

/// Writes `size` bytes of a wasm module (a header, then a custom section of noise, so each
/// module has its own digest) without holding them in memory.
fn write_module(path: &Path, size: u64, seed: u64) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    file.write_all(b"\0asm\x01\0\0\0").unwrap();
    let mut state = seed | 1;
    let mut chunk = vec![0u8; MIB as usize];
    let mut left = size.saturating_sub(8);
    while left > 0 {
        for b in chunk.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        let n = left.min(MIB) as usize;
        file.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    file.flush().unwrap();
}

/// A deploy file and a Spin app of one component whose module is `module_size` bytes.
fn app_with_module(dir: &Path, name: &str, module_size: u64) -> std::path::PathBuf {
    let app = dir.join(name);
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("spin.toml"),
        format!("spin_manifest_version = \"1\"\nname = \"{name}\"\nversion = \"1.0.0\"\ntrigger = {{ type = \"http\", base = \"/\" }}\n[[component]]\nid = \"{name}\"\nsource = \"app.wasm\"\n[component.trigger]\nroute = \"/...\"\n"),
    )
    .unwrap();
    write_module(&app.join("app.wasm"), module_size, module_size);
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &file,
        common::app_doc(
            name,
            &[name],
            "    - name: production\n      range: \"*\"\n",
            false,
        ),
    )
    .unwrap();
    file
}

/// Runs `reconcile --once -f FILE` in `dir` with the bed's environment `env`; answers the
/// child's peak resident memory (`VmHWM`, the last value read before it exited) in bytes.
fn peak_memory_of_reconcile(env: &[(&str, String)], dir: &Path, file: &Path) -> u64 {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hippo-gitops"))
        .args(["reconcile", "--once", "-f"])
        .arg(file)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("HIPPO_TOKEN")
        .env("HIPPO_GITOPS_LOG", "warn")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "reconcile took over 120 s");
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            if let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            {
                peak_kib = peak_kib.max(kib);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "reconcile failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(peak_kib > 0, "never read the child's VmHWM");
    peak_kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushing_a_large_module_costs_no_more_memory_than_a_tiny_one() {
    let bed = common::Bed::start().await;
    let module = 64 * MIB;
    let tiny = app_with_module(bed.path(), "tiny", 1024);
    let large = app_with_module(bed.path(), "large", module);
    let env = bed.env();
    let dir = bed.path().to_path_buf();
    // Off the runtime's threads: the bed's servers run on them.
    let (tiny_peak, large_peak) = tokio::task::spawn_blocking(move || {
        (
            peak_memory_of_reconcile(&env, &dir, &tiny),
            peak_memory_of_reconcile(&env, &dir, &large),
        )
    })
    .await
    .unwrap();
    eprintln!(
        "peak resident memory: tiny module {} MiB, {} MiB module {} MiB",
        tiny_peak / MIB,
        module / MIB,
        large_peak / MIB
    );
    // Both apps were pushed whole.
    let state = bed.hippo.snapshot();
    assert_eq!(state.apps.len(), 2, "{:?}", state.apps);
    assert!(
        large_peak < module,
        "pushing a {} MiB module peaked at {} MiB",
        module / MIB,
        large_peak / MIB
    );
    assert!(
        large_peak < tiny_peak + 16 * MIB,
        "memory grew with the parcel: {} MiB for a tiny module, {} MiB for {} MiB",
        tiny_peak / MIB,
        large_peak / MIB,
        module / MIB
    );
}
