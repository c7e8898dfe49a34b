//! Hostile deploy files and directories (issue 13's probe), run through the built binary: each
//! row asserts the exit code, the `file:line` of the message, a time bound (the child is killed
//! after [`TIME_LIMIT`] and the row fails) and a memory bound (the child's peak resident size,
//! `VmHWM` in `/proc/<pid>/status`, read while it runs).

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Generous: every row finishes in well under a second.
const TIME_LIMIT: Duration = Duration::from_secs(20);
/// Peak resident memory any row may use (the 50 MB file included).
const MEMORY_LIMIT_KB: u64 = 200 * 1024;

const HEAD: &str = "apiVersion: hippo-gitops/v1\nkind: App\nmetadata:\n  name: weather\n";

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
    peak_kb: u64,
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the binary in `cwd`, polling its peak memory; kills it after [`TIME_LIMIT`].
fn run(cwd: &Path, args: &[&str]) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hippo-gitops"))
        .args(args)
        .current_dir(cwd)
        .env_remove("HIPPO_TOKEN")
        .env_remove("HIPPO_PASSWORD")
        .env("HIPPO_GITOPS_STATE_DIR", cwd.join(".state"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs the binary");
    let pipe = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = r.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = pipe(Box::new(child.stdout.take().unwrap()));
    let stderr = pipe(Box::new(child.stderr.take().unwrap()));
    let pid = child.id();
    let started = Instant::now();
    let mut peak_kb = 0;
    let code = loop {
        // VmHWM only grows, so the last reading before exit is the closest to the peak.
        if let Some(kb) = vm_hwm_kb(pid) {
            peak_kb = peak_kb.max(kb);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > TIME_LIMIT {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "{args:?} in {}: still running after {TIME_LIMIT:?}",
                cwd.display()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Outcome {
        code,
        elapsed: started.elapsed(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        peak_kb,
    }
}

fn write(path: &Path, content: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn symlink(target: impl AsRef<Path>, link: &Path) {
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, link).unwrap();
}

fn mkfifo(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

/// A Spin app `name`/`version` whose component mounts `files` (a TOML array's contents) and
/// runs `source`.
fn spin_app(dir: &Path, name: &str, version: &str, source: &str, files: &str) {
    write(
        &dir.join("spin.toml"),
        format!("spin_manifest_version = \"1\"\nname = \"{name}\"\nversion = \"{version}\"\ntrigger = {{ type = \"http\", base = \"/\" }}\n[[component]]\nid = \"c\"\nsource = \"{source}\"\nfiles = [{files}]\n[component.trigger]\nroute = \"/...\"\n"),
    );
    write(&dir.join("c.wasm"), b"\0asm\x01\0\0\0");
}

/// A deploy file for app `weather` with one `path:` revision and a channel on it.
fn app_with_path(path: &str) -> String {
    format!("{HEAD}spec:\n  revisions:\n    - path: {path}\n  channels:\n    - name: prod\n      range: \"*\"\n")
}

/// `../` enough times to reach `/` from `dir`, then `rest`.
fn to_root(dir: &Path, rest: &str) -> String {
    let depth = dir.components().count() - 1;
    format!("{}{rest}", "../".repeat(depth))
}

struct Row {
    name: &'static str,
    /// Builds the case under a fresh directory.
    setup: fn(&Path),
    /// Working directory, relative to the case directory.
    cwd: &'static str,
    args: &'static [&'static str],
    code: i32,
    /// Lines (or line starts ending in `: `) stderr must hold, `{dir}` for the directory.
    stderr_has: &'static [&'static str],
    /// Text stderr must hold somewhere.
    stderr_contains: &'static [&'static str],
    /// Text that must appear nowhere in the output.
    never: &'static [&'static str],
    /// Text stdout must hold.
    stdout_has: &'static [&'static str],
}

impl Default for Row {
    fn default() -> Self {
        Row {
            name: "",
            setup: |_| {},
            cwd: "",
            args: &[],
            code: 1,
            stderr_has: &[],
            stderr_contains: &[],
            never: &[],
            stdout_has: &[],
        }
    }
}

const SECRET: &str = "HIPPO_PASSWORD=hunter2-secret";

fn rows() -> Vec<Row> {
    vec![
        // 2. A deploy file that is a symlink to a secrets file, inside a Git repository.
        Row {
            name: "symlinked deploy file outside the repository (no --root)",
            setup: |d| {
                write(&d.join("secret.env"), format!("{SECRET}\n"));
                std::fs::create_dir_all(d.join("repo/.git")).unwrap();
                write(&d.join("repo/deploy/a.yaml"), format!("{HEAD}spec: {{}}\n"));
                symlink(d.join("secret.env"), &d.join("repo/deploy/leak.yaml"));
            },
            args: &["validate", "-f", "repo/deploy"],
            stderr_has: &["repo/deploy/leak.yaml:0:0: resolves through a symlink to {dir}/secret.env, outside the repository root {dir}/repo; not read"],
            never: &["hunter2"],
            ..Default::default()
        },
        Row {
            name: "symlinked deploy file outside --root",
            setup: |d| {
                write(&d.join("secret.env"), format!("{SECRET}\n"));
                symlink(d.join("secret.env"), &d.join("repo/leak.yaml"));
            },
            args: &["validate", "-f", "repo/leak.yaml", "--root", "repo"],
            stderr_has: &["repo/leak.yaml:0:0: resolves through a symlink to {dir}/secret.env, outside the repository root {dir}/repo; not read"],
            never: &["hunter2"],
            ..Default::default()
        },
        Row {
            name: "a symlinked directory outside the root is not walked",
            setup: |d| {
                write(&d.join("outside/other.yaml"), format!("{SECRET}\n"));
                write(&d.join("deploy/a.yaml"), format!("{HEAD}spec: {{}}\n"));
                symlink(d.join("outside"), &d.join("deploy/ext"));
            },
            args: &["validate", "-f", "deploy"],
            code: 0,
            stdout_has: &["valid: 1 app(s)"],
            never: &["hunter2"],
            ..Default::default()
        },
        // 10c. A huge scalar is quoted as an excerpt only.
        Row {
            name: "a 5 MB scalar is quoted as an excerpt",
            setup: |d| {
                let name = "x".repeat(5 * 1024 * 1024);
                write(
                    &d.join("a.yaml"),
                    format!("apiVersion: hippo-gitops/v1\nkind: App\nmetadata:\n  name: {name}\nspec: {{}}\n"),
                );
            },
            args: &["validate", "-f", "a.yaml"],
            stderr_has: &["a.yaml:4:9: metadata.name: \"xxxxxxxx"],
            ..Default::default()
        },
        // 3. `path: ../apps/weather` from a relative -f, with a decoy where the `..` would be dropped.
        Row {
            name: "relative -f . keeps the leading ..",
            setup: relative_paths_setup,
            cwd: "specs",
            args: &["validate", "-f", "."],
            code: 0,
            stdout_has: &["valid: 1 app(s), 1 revision(s)"],
            ..Default::default()
        },
        Row {
            name: "relative -f file keeps the leading ..",
            setup: relative_paths_setup,
            cwd: "specs",
            args: &["validate", "-f", "a.yaml"],
            code: 0,
            stdout_has: &["valid: 1 app(s), 1 revision(s)"],
            ..Default::default()
        },
        Row {
            name: "-f .. from a subdirectory keeps the leading ..",
            setup: relative_paths_setup,
            cwd: "specs/sub",
            args: &["validate", "-f", ".."],
            code: 0,
            stdout_has: &["valid: 1 app(s), 1 revision(s)"],
            ..Default::default()
        },
        Row {
            name: "-f specs from the top",
            setup: relative_paths_setup,
            args: &["validate", "-f", "specs"],
            code: 0,
            stdout_has: &["valid: 1 app(s), 1 revision(s)"],
            ..Default::default()
        },
        Row {
            name: "absolute -f",
            setup: relative_paths_setup,
            cwd: "specs/sub",
            args: &["validate", "-f", "{dir}/specs"],
            code: 0,
            stdout_has: &["valid: 1 app(s), 1 revision(s)"],
            ..Default::default()
        },
        // 5. Hangs.
        Row {
            name: "a FIFO named x.yaml in the deploy directory",
            setup: |d| {
                write(&d.join("deploy/a.yaml"), format!("{HEAD}spec: {{}}\n"));
                mkfifo(&d.join("deploy/x.yaml"));
            },
            args: &["validate", "-f", "deploy"],
            stderr_has: &["deploy/x.yaml:0:0: is not a regular file (a FIFO, socket or device); not read"],
            ..Default::default()
        },
        Row {
            name: "a FIFO given with -f",
            setup: |d| mkfifo(&d.join("x.yaml")),
            args: &["validate", "-f", "x.yaml"],
            stderr_has: &["x.yaml:0:0: is not a regular file (a FIFO, socket or device); not read"],
            ..Default::default()
        },
        Row {
            name: "two symlink loops in a Spin app's files glob",
            setup: |d| looped_app(d, "\"static/**/*\""),
            args: &["validate", "-f", "a.yaml"],
            code: 0,
            stdout_has: &["valid: 1 app(s), 1 revision(s)"],
            ..Default::default()
        },
        Row {
            name: "two symlink loops in a files placement directory",
            setup: |d| looped_app(d, "{ source = \"static\", destination = \"/\" }"),
            args: &["validate", "-f", "a.yaml"],
            code: 0,
            stdout_has: &["valid: 1 app(s), 1 revision(s)"],
            ..Default::default()
        },
        Row {
            name: "two symlink loops in the deploy directory",
            setup: |d| {
                write(&d.join("deploy/a.yaml"), format!("{HEAD}spec: {{}}\n"));
                symlink(".", &d.join("deploy/l1"));
                symlink(".", &d.join("deploy/l2"));
            },
            args: &["validate", "-f", "deploy"],
            code: 0,
            stdout_has: &["valid: 1 app(s)"],
            ..Default::default()
        },
        // 6. One loop: each file once, no false "already defined".
        Row {
            name: "one symlink loop in the deploy directory",
            setup: |d| {
                write(&d.join("deploy/a.yaml"), format!("{HEAD}spec: {{}}\n"));
                symlink(".", &d.join("deploy/loop"));
            },
            args: &["validate", "-f", "deploy"],
            code: 0,
            stdout_has: &["valid: 1 app(s)"],
            never: &["already defined"],
            ..Default::default()
        },
        Row {
            name: "the same file through two -f arguments is read once",
            setup: |d| write(&d.join("a.yaml"), format!("{HEAD}spec: {{}}\n")),
            args: &["validate", "-f", "a.yaml", "-f", "./a.yaml", "-f", "."],
            code: 0,
            stdout_has: &["valid: 1 app(s)"],
            ..Default::default()
        },
        // 7. Quadratic parsing and size.
        Row {
            name: "100k nested [ in an unknown field",
            setup: |d| {
                write(
                    &d.join("a.yaml"),
                    format!("{HEAD}spec:\n  extra: {}\n", "[".repeat(100_000)),
                );
            },
            args: &["validate", "-f", "a.yaml"],
            stderr_has: &["a.yaml:6:"],
            stderr_contains: &["YAML nesting deeper than 64 levels"],
            ..Default::default()
        },
        Row {
            name: "a 50 MB deploy file is refused unread",
            setup: |d| {
                let mut text = format!("{HEAD}spec: {{}}\n# ");
                text.push_str(&"y".repeat(50 * 1024 * 1024));
                write(&d.join("a.yaml"), text);
            },
            args: &["validate", "-f", "a.yaml"],
            stderr_has: &["a.yaml:0:0: is 52428875 bytes, more than the limit of 10485760 bytes (--max-file-size); not read"],
            ..Default::default()
        },
        Row {
            name: "9 MB of tiny items in one flow sequence",
            setup: |d| {
                let items = "1,".repeat(4_500_000);
                write(&d.join("a.yaml"), format!("{HEAD}spec:\n  extra: [{items}]\n"));
            },
            args: &["validate", "-f", "a.yaml"],
            stderr_has: &["a.yaml:6:"],
            stderr_contains: &["more than 250000 YAML nodes"],
            ..Default::default()
        },
        Row {
            name: "--max-file-size lowers the limit",
            setup: |d| write(&d.join("a.yaml"), format!("{HEAD}spec: {{}}\n")),
            args: &["validate", "-f", "a.yaml", "--max-file-size", "32"],
            stderr_has: &["a.yaml:0:0: is 73 bytes, more than the limit of 32 bytes (--max-file-size); not read"],
            ..Default::default()
        },
        Row {
            name: "an alias bomb",
            setup: |d| {
                let mut text = format!("{HEAD}spec:\n  x0: &a0 [\"{}\"]\n", "z".repeat(1000));
                for i in 1..12 {
                    let p = i - 1;
                    text.push_str(&format!(
                        "  x{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
                    ));
                }
                write(&d.join("a.yaml"), text);
            },
            args: &["validate", "-f", "a.yaml"],
            stderr_has: &["a.yaml:"],
            stderr_contains: &["alias bomb"],
            ..Default::default()
        },
        // 9. Files outside the repository are not pushed without --root.
        Row {
            name: "a Spin app's source = ../../etc/passwd",
            setup: |d| {
                let source = to_root(&d.join("app"), "etc/passwd");
                spin_app(&d.join("app"), "weather", "1.0.0", &source, "");
                write(&d.join("a.yaml"), app_with_path("app"));
            },
            args: &["reconcile", "--once", "--sandbox", "--sandbox-dir", "sb", "-f", "a.yaml"],
            stderr_has: &["a.yaml:7:13: spec.revisions[0].path: "],
            stderr_contains: &["resolves to /etc", "outside the repository root {dir}; not read (the root is"],
            ..Default::default()
        },
        Row {
            name: "a Spin app's files = [../../etc/host*]",
            setup: |d| {
                let files = format!("\"{}\"", to_root(&d.join("app"), "etc/host*"));
                spin_app(&d.join("app"), "weather", "1.0.0", "c.wasm", &files);
                write(&d.join("a.yaml"), app_with_path("app"));
            },
            args: &["reconcile", "--once", "--sandbox", "--sandbox-dir", "sb", "-f", "a.yaml"],
            stderr_has: &["a.yaml:7:13: spec.revisions[0].path: "],
            stderr_contains: &["resolves to /etc", "outside the repository root {dir}; not read (the root is"],
            ..Default::default()
        },
        Row {
            name: "a symlink to /etc/passwd in a Spin app",
            setup: passwd_link_app,
            args: &["reconcile", "--once", "--sandbox", "--sandbox-dir", "sb", "-f", "a.yaml"],
            stderr_has: &["a.yaml:7:13: spec.revisions[0].path: {dir}/app/static/pw: resolves to /etc/passwd, outside the repository root {dir}; not read"],
            ..Default::default()
        },
        Row {
            name: "a symlink to / in a Spin app's files directory is not walked",
            setup: |d| {
                spin_app(&d.join("app"), "weather", "1.0.0", "c.wasm", "\"static/**/*\"");
                symlink("/", &d.join("app/static/everything"));
                write(&d.join("a.yaml"), app_with_path("app"));
            },
            args: &["validate", "-f", "a.yaml"],
            stderr_has: &["a.yaml:7:13: spec.revisions[0].path: {dir}/app/static/everything: resolves to /, outside the repository root {dir}; not read"],
            ..Default::default()
        },
        Row {
            name: "--allow-outside-root lets it through",
            setup: passwd_link_app,
            args: &["validate", "-f", "a.yaml", "--allow-outside-root"],
            code: 0,
            stdout_has: &["valid: 1 app(s), 1 revision(s)"],
            ..Default::default()
        },
        // 10a. A key holding a newline and ESC cannot forge a line.
        Row {
            name: "an env key with a newline and ESC",
            setup: |d| {
                write(
                    &d.join("a.yaml"),
                    format!("{HEAD}spec:\n  channels:\n    - name: prod\n      range: \"*\"\n      env:\n        \"A\\nforged.yaml:1:1: all good\\e[31m\": v\n"),
                );
            },
            args: &["validate", "-f", "a.yaml"],
            stderr_has: &["a.yaml:10:"],
            never: &["\nforged.yaml", "\u{1b}"],
            ..Default::default()
        },
        // 11. Diagnostics with their line.
        Row {
            name: "non-UTF-8 input",
            setup: |d| write(&d.join("a.yaml"), b"apiVersion: hippo-gitops/v1\nkind: \xff\n"),
            args: &["validate", "-f", "a.yaml"],
            stderr_has: &["a.yaml:2:7: not valid UTF-8 (byte 0xff)"],
            ..Default::default()
        },
        Row {
            name: "a NUL",
            setup: |d| write(&d.join("a.yaml"), b"apiVersion: hippo-gitops/v1\nkind: A\0pp\n"),
            args: &["validate", "-f", "a.yaml"],
            stderr_has: &["a.yaml:2:8: YAML syntax error: control character U+0000 is not allowed"],
            ..Default::default()
        },
        Row {
            name: "several type errors in one document",
            setup: |d| {
                write(
                    &d.join("a.yaml"),
                    format!("{HEAD}spec:\n  storageId: 5\n  prune: \"yes\"\n  channels:\n    - name: [1]\n      range: \"*\"\n"),
                );
            },
            args: &["validate", "-f", "a.yaml"],
            stderr_has: &[
                "a.yaml:6:14: spec.storageId: invalid type: integer `5`, expected a string",
                "a.yaml:7:10: spec.prune: invalid type: string \"yes\", expected a boolean",
                "a.yaml:9:13: spec.channels[0].name: invalid type: sequence, expected a string",
            ],
            ..Default::default()
        },
        Row {
            name: "empty and comment-only files are skipped",
            setup: |d| {
                write(&d.join("deploy/a.yaml"), format!("{HEAD}spec: {{}}\n"));
                write(&d.join("deploy/empty.yaml"), "");
                write(&d.join("deploy/comment.yaml"), "# nothing yet\n");
                write(&d.join("deploy/dashes.yaml"), "---\n# c\n---\n");
            },
            args: &["validate", "-f", "deploy"],
            code: 0,
            stdout_has: &["valid: 1 app(s)"],
            ..Default::default()
        },
        Row {
            name: "a Spin v2 manifest",
            setup: |d| {
                write(
                    &d.join("app/spin.toml"),
                    "spin_manifest_version = 2\n[application]\nname = \"weather\"\nversion = \"1.0.0\"\n",
                );
                write(&d.join("a.yaml"), app_with_path("app"));
            },
            args: &["validate", "-f", "a.yaml"],
            stderr_has: &["a.yaml:7:13: spec.revisions[0].path: {dir}/app/spin.toml: manifest version 2 is not supported (Hippo runs Spin manifest v1)"],
            ..Default::default()
        },
        Row {
            name: "a 300-character domain label",
            setup: |d| {
                write(
                    &d.join("a.yaml"),
                    format!("{HEAD}spec:\n  channels:\n    - name: prod\n      range: \"*\"\n      domain: {}.example.com\n", "a".repeat(300)),
                );
            },
            args: &["validate", "-f", "a.yaml"],
            stderr_has: &["a.yaml:9:15: spec.channels[0].domain: \"aaaa"],
            stderr_contains: &["a label is longer than 63 characters"],
            ..Default::default()
        },
    ]
}

/// A Spin app mounting `files` from `static/`, which holds two symlink loops.
fn looped_app(d: &Path, files: &str) {
    spin_app(&d.join("app"), "weather", "1.0.0", "c.wasm", files);
    write(&d.join("app/static/index.html"), "<h1>hi</h1>");
    symlink(".", &d.join("app/static/l1"));
    symlink(".", &d.join("app/static/l2"));
    write(&d.join("a.yaml"), app_with_path("app"));
}

/// A Spin app whose `static/pw` is a symlink to `/etc/passwd`.
fn passwd_link_app(d: &Path) {
    spin_app(&d.join("app"), "weather", "1.0.0", "c.wasm", "\"static/*\"");
    symlink("/etc/passwd", &d.join("app/static/pw"));
    write(&d.join("a.yaml"), app_with_path("app"));
}

/// `{dir}/.git`, the app at `{dir}/apps/weather` (1.0.0), the deploy file at `{dir}/specs`
/// naming it as `../apps/weather`, and a decoy at `{dir}/specs/apps/weather` (another bindle
/// name, so resolving there fails validation).
fn relative_paths_setup(d: &Path) {
    std::fs::create_dir_all(d.join(".git")).unwrap();
    spin_app(&d.join("apps/weather"), "weather", "1.0.0", "c.wasm", "");
    spin_app(
        &d.join("specs/apps/weather"),
        "decoy",
        "9.9.9",
        "c.wasm",
        "",
    );
    std::fs::create_dir_all(d.join("specs/sub")).unwrap();
    write(&d.join("specs/a.yaml"), app_with_path("../apps/weather"));
}

#[test]
fn every_hostile_input_row_is_refused_or_read_safely_in_bounded_time_and_memory() {
    let rows = rows();
    let mut failures = Vec::new();
    for row in &rows {
        let tmp = tempfile::tempdir().unwrap();
        let dir: PathBuf = tmp.path().canonicalize().unwrap();
        (row.setup)(&dir);
        let dir_s = dir.to_string_lossy().into_owned();
        let fill = |s: &str| s.replace("{dir}", &dir_s);
        let args: Vec<String> = row.args.iter().map(|a| fill(a)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&dir.join(row.cwd), &args);
        let mut problems = Vec::new();
        if out.code != Some(row.code) {
            problems.push(format!("exit code {:?}, expected {}", out.code, row.code));
        }
        for want in row.stderr_has {
            let want = fill(want);
            if !out.stderr.lines().any(|l| l.starts_with(&want)) {
                problems.push(format!("stderr lacks a line starting {want:?}"));
            }
        }
        for want in row.stderr_contains {
            let want = fill(want);
            if !out.stderr.contains(&want) {
                problems.push(format!("stderr lacks {want:?}"));
            }
        }
        for want in row.stdout_has {
            if !out.stdout.contains(want) {
                problems.push(format!("stdout lacks {want:?}"));
            }
        }
        for never in row.never {
            if out.stderr.contains(never) || out.stdout.contains(never) {
                problems.push(format!("the output holds {never:?}"));
            }
        }
        // No diagnostic quotes more than an excerpt: no line is long.
        if let Some(long) = out.stderr.lines().find(|l| l.chars().count() > 600) {
            problems.push(format!(
                "a stderr line of {} characters",
                long.chars().count()
            ));
        }
        if out.peak_kb > MEMORY_LIMIT_KB {
            problems.push(format!(
                "peak memory {} MiB over {} MiB",
                out.peak_kb / 1024,
                MEMORY_LIMIT_KB / 1024
            ));
        }
        if out.code == Some(1) && args.contains(&"--sandbox") && dir.join("sb").exists() {
            problems.push("a sandbox was started for a refused deploy file".into());
        }
        eprintln!(
            "{}: exit {:?} in {:?}, peak {} MiB",
            row.name,
            out.code,
            out.elapsed,
            out.peak_kb / 1024
        );
        if !problems.is_empty() {
            failures.push(format!(
                "{}:\n  {}\n  stdout: {}\n  stderr: {}",
                row.name,
                problems.join("\n  "),
                out.stdout.chars().take(500).collect::<String>(),
                out.stderr.chars().take(1500).collect::<String>()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Values written unquoted reach Hippo exactly as written, end to end on the sandbox.
#[test]
fn unquoted_numbers_reach_hippo_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    spin_app(&dir.join("app"), "weather", "1.0.0", "c.wasm", "");
    write(
        &dir.join("a.yaml"),
        format!("{HEAD}spec:\n  revisions:\n    - path: app\n  channels:\n    - name: prod\n      range: 1.0.0\n      env:\n        A: 1.10\n        B: 0x1F\n        C: 1e3\n        D: 0o17\n        E: +1\n        F: True\n    - name: old\n      range: 0.30\n"),
    );
    let out = run(
        &dir,
        &[
            "reconcile",
            "--once",
            "--no-wait",
            "--sandbox",
            "--sandbox-dir",
            "sb",
            "-f",
            "a.yaml",
        ],
    );
    assert!(out.peak_kb < MEMORY_LIMIT_KB, "{} KiB", out.peak_kb);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sb/hippo.json")).unwrap())
            .unwrap_or_else(|e| panic!("{e}: {}", out.stderr));
    let mut env: Vec<(String, String)> = state["environmentVariables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["key"].as_str().unwrap().to_string(),
                v["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    env.sort();
    let want: Vec<(String, String)> = [
        ("A", "1.10"),
        ("B", "0x1F"),
        ("C", "1e3"),
        ("D", "0o17"),
        ("E", "+1"),
        ("F", "True"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(env, want, "{}", out.stderr);
    let ranges: Vec<&str> = state["channels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["rangeRule"].as_str())
        .collect();
    assert!(ranges.contains(&"0.30"), "{ranges:?}\n{}", out.stderr);
    assert!(ranges.contains(&"1.0.0"), "{ranges:?}");
}
