//! The crate graph is the architecture (ARCHITECTURE.md, "Crates"): these checks keep it so.
//! The compiler enforces what a crate can't name; this test pins which crates may be named.

use std::{path::Path, process::Command};

use serde_json::Value;

/// Every workspace package's direct dependencies, as `cargo metadata` lists them (no
/// resolution, no network).
fn packages() -> Vec<Value> {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .expect("runs cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    meta["packages"].as_array().unwrap().clone()
}

/// `(dependency, optional)` for the normal (not dev, not build) dependencies of `package`.
fn normal_dependencies(packages: &[Value], package: &str) -> Vec<(String, bool)> {
    let p = packages
        .iter()
        .find(|p| p["name"] == package)
        .unwrap_or_else(|| panic!("no package {package}"));
    p["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"].is_null())
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_string(),
                d["optional"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

#[test]
fn the_workspace_has_its_four_crates_and_the_core_depends_on_no_front_end() {
    let packages = packages();
    let names: Vec<&str> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for crate_name in [
        "hippo-gitops-core",
        "hippo-gitops-controller",
        "hippo-gitops-emulators",
        "hippo-gitops",
    ] {
        assert!(names.contains(&crate_name), "{names:?}");
    }

    let core = normal_dependencies(&packages, "hippo-gitops-core");
    for forbidden in [
        "clap",
        "clap_complete",
        "axum",
        "hyper",
        "tracing-subscriber",
        "hippo-gitops-emulators",
        "hippo-gitops-controller",
        "hippo-gitops",
    ] {
        assert!(
            !core.iter().any(|(d, _)| d == forbidden),
            "the core depends on {forbidden}"
        );
    }

    // The daemon and the emulators know the core, never each other or the CLI.
    let controller = normal_dependencies(&packages, "hippo-gitops-controller");
    let emulators = normal_dependencies(&packages, "hippo-gitops-emulators");
    for (deps, forbidden) in [
        (&controller, "hippo-gitops-emulators"),
        (&controller, "hippo-gitops"),
        (&controller, "clap"),
        (&emulators, "hippo-gitops-controller"),
        (&emulators, "hippo-gitops"),
        (&emulators, "clap"),
    ] {
        assert!(!deps.iter().any(|(d, _)| d == forbidden), "{forbidden}");
    }

    // The CLI brings the emulators in only with its `sandbox` feature.
    let cli = normal_dependencies(&packages, "hippo-gitops");
    assert!(
        cli.contains(&("hippo-gitops-emulators".to_string(), true)),
        "{cli:?}"
    );
}

/// The controller takes the core's report as it is: it computes no plan or status of its own.
#[test]
fn the_controller_never_diffs_or_builds_statuses() {
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../controller/src"));
    let mut checked = 0;
    for entry in walk(src) {
        let text = std::fs::read_to_string(&entry).unwrap();
        for call in [
            "diff::diff(",
            "diff_app(",
            "app_statuses(",
            "app_status(",
            "Condition {",
        ] {
            assert!(
                !text.contains(call),
                "{} calls `{call}`: the core's report carries the plan, statuses and conditions",
                entry.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 8, "read {checked} files");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}
