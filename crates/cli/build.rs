//! Records the git revision for `hippo-gitops --version`. A build without `.git` (a source
//! tarball, a Docker context that leaves it out) can pass `HIPPO_GITOPS_GIT_REV` instead.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=HIPPO_GITOPS_GIT_REV");
    // A commit moves the branch ref; a checkout moves HEAD. Git says where they are: in a
    // linked worktree `.git` is a file, HEAD is in the worktree's own git dir and the refs in
    // the common one.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let dirs: Vec<std::path::PathBuf> = Command::new("git")
        .current_dir(&manifest_dir)
        .args([
            "rev-parse",
            "--path-format=absolute",
            "--git-dir",
            "--git-common-dir",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(std::path::PathBuf::from)
                .collect()
        })
        .unwrap_or_else(|| vec![std::path::Path::new(&manifest_dir).join("../../.git")]);
    for git in &dirs {
        for path in ["HEAD", "refs/heads", "packed-refs"] {
            let path = git.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    let rev = std::env::var("HIPPO_GITOPS_GIT_REV")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=HIPPO_GITOPS_GIT_REV={rev}");
}
