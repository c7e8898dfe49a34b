//! Where the desired state comes from: deploy files on disk (watched for changes), or a Git
//! repository kept up to date in a local clone (the `git` command, so users' credential
//! helpers, SSH config and proxies work as they do for them).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use hippo_gitops_core::{
    package::{LocalBindle, PackCache},
    spec::{self, DesiredState, Diagnostic, LoadOptions},
};

use super::Trigger;

/// A Git source.
#[derive(Debug, Clone)]
pub struct GitConfig {
    pub url: String,
    pub branch: String,
    /// Deploy files inside the repository (a file or directory).
    pub path: PathBuf,
    /// How often to fetch.
    pub interval: Duration,
    /// Where clones live (one per URL and branch).
    pub dir: PathBuf,
    /// Limit for each `git` command.
    pub timeout: Duration,
    /// Deploy files larger than this are refused unread.
    pub max_file_size: u64,
}

/// Where the deploy files are.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    Files {
        paths: Vec<PathBuf>,
        /// The root, `--allow-outside-root` and the size limit (its `pack_cache` is not used).
        options: LoadOptions,
    },
    Git(GitConfig),
}

/// The desired state as loaded.
#[derive(Debug, Default)]
pub struct Loaded {
    pub desired: DesiredState,
    /// Files left out for their problems.
    pub rejected: BTreeMap<PathBuf, Vec<Diagnostic>>,
    /// The commit the files were read at (Git source).
    pub commit: Option<String>,
    /// The deploy files' metadata, taken just before they were read ([`spec::files_stamp`]):
    /// while it and every local bindle stay the same, a reload reads nothing again
    /// ([`unchanged`]). `None`: not to be trusted.
    pub stamp: Option<[u8; 32]>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("git {command}: {message}")]
    Git { command: String, message: String },
    #[error("git {command} did not finish within {timeout:?}")]
    GitTimeout { command: String, timeout: Duration },
    #[error("running git: {0} (is git installed?)")]
    Spawn(std::io::Error),
    #[error("loading the deploy files: {0}")]
    Load(String),
    /// An I/O error reading the deploy files (not a problem in them): what could be read is not
    /// the whole source, so it must not replace the desired state.
    #[error("reading the deploy files: {}", .0.join("; "))]
    Unreadable(Vec<String>),
}

/// Loads the deploy files of a Files source, off the async threads (local bindles are hashed).
pub async fn load_files(
    paths: Vec<PathBuf>,
    options: LoadOptions,
    pack_cache: Arc<PackCache>,
) -> Result<Loaded, SourceError> {
    let options = LoadOptions {
        pack_cache: Some(pack_cache),
        ..options
    };
    let (stamp, partial) = tokio::task::spawn_blocking(move || {
        // Before the files are read: a write during the load moves the stamp, never the
        // other way round.
        let stamp = spec::files_stamp(&paths, &options, PackCache::SETTLE);
        (stamp, spec::load_partial(&paths, &options))
    })
    .await
    .map_err(|e| SourceError::Load(e.to_string()))?;
    if !partial.unreadable.is_empty() {
        return Err(SourceError::Unreadable(
            partial.unreadable.iter().map(|d| d.to_string()).collect(),
        ));
    }
    Ok(Loaded {
        desired: partial.state,
        rejected: partial.rejected,
        commit: None,
        stamp,
    })
}

/// Whether loading `paths` again would read what the load stamped `last` read: the deploy
/// files' metadata is the same, and so is every local bindle in `bindles`
/// ([`PackCache::unchanged`]). Reads metadata (and each bindle's manifest) only, off the async
/// threads. A rescan on every interval then costs what listing the files costs, not a parse
/// of every one of them beside the desired state already held.
pub async fn unchanged(
    paths: Vec<PathBuf>,
    options: LoadOptions,
    last: [u8; 32],
    pack_cache: Arc<PackCache>,
    bindles: Vec<Arc<LocalBindle>>,
) -> bool {
    tokio::task::spawn_blocking(move || {
        spec::files_stamp(&paths, &options, PackCache::SETTLE) == Some(last)
            && pack_cache.unchanged(&bindles)
    })
    .await
    .unwrap_or(false)
}

/// A URL safe to print: the password or token in it replaced.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() || !u.username().is_empty() => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            } else {
                // `https://<token>@host`: the user name is the secret.
                let _ = u.set_username("***");
            }
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// A local clone of one branch.
pub struct GitRepo {
    config: GitConfig,
    checkout: PathBuf,
    /// The commit checked out.
    head: Option<String>,
}

impl GitRepo {
    pub fn new(config: GitConfig) -> Self {
        let key = hex::encode(Sha256::digest(format!("{}\n{}", config.url, config.branch)));
        let checkout = config.dir.join(&key[..16]);
        GitRepo {
            config,
            checkout,
            head: None,
        }
    }

    /// Where the last applied commit is recorded, beside the clone.
    pub fn applied_file(&self) -> PathBuf {
        self.checkout.with_extension("applied")
    }

    /// The commit recorded as applied by an earlier run.
    pub fn recorded_applied(&self) -> Option<String> {
        std::fs::read_to_string(self.applied_file())
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// Records `sha` as applied (temporary file, then rename; owner-only like every state file).
    pub fn record_applied(&self, sha: &str) -> std::io::Result<()> {
        hippo_gitops_core::private_file::replace(
            &self.applied_file(),
            format!("{sha}\n").as_bytes(),
        )
    }

    /// Owns everything it needs, so the future is `Send` whatever the borrows around it.
    fn git(
        &self,
        cwd: Option<&Path>,
        args: &[&str],
    ) -> impl std::future::Future<Output = Result<String, SourceError>> + Send + 'static {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let cwd = cwd.map(Path::to_path_buf);
        let url = self.config.url.clone();
        let timeout = self.config.timeout;
        async move {
            run_git(timeout, cwd, args).await.map_err(|e| match e {
                SourceError::Git { command, message } => SourceError::Git {
                    command,
                    message: redact_in(&url, &message),
                },
                other => other,
            })
        }
    }

    /// Clones on first use, fetches the branch, and checks out its newest commit. Answers the
    /// commit now checked out.
    pub async fn sync(&mut self) -> Result<String, SourceError> {
        let dir = self.checkout.to_string_lossy().into_owned();
        if !self.checkout.join(".git").is_dir() {
            std::fs::create_dir_all(&self.config.dir).map_err(|e| SourceError::Git {
                command: "clone".into(),
                message: format!("creating {}: {e}", self.config.dir.display()),
            })?;
            // A half-made clone from an interrupted run.
            let _ = std::fs::remove_dir_all(&self.checkout);
            self.git(
                None,
                &[
                    "clone",
                    "--quiet",
                    "--no-tags",
                    "--single-branch",
                    "--no-checkout",
                    "--branch",
                    &self.config.branch,
                    "--",
                    &self.config.url,
                    &dir,
                ],
            )
            .await?;
        } else {
            let refspec = format!(
                "+refs/heads/{0}:refs/remotes/origin/{0}",
                self.config.branch
            );
            self.git(
                Some(&self.checkout),
                &["fetch", "--quiet", "--no-tags", "origin", &refspec],
            )
            .await?;
        }
        let remote = format!("refs/remotes/origin/{}", self.config.branch);
        let sha = self
            .git(Some(&self.checkout), &["rev-parse", "--verify", &remote])
            .await?;
        if self.head.as_deref() != Some(sha.as_str()) {
            self.git(
                Some(&self.checkout),
                &["checkout", "--quiet", "--force", "--detach", &sha],
            )
            .await?;
            self.git(Some(&self.checkout), &["clean", "-ffdxq"]).await?;
            self.head = Some(sha.clone());
        }
        Ok(sha)
    }

    /// The commit checked out, once [`GitRepo::sync`] has run.
    pub fn head(&self) -> Option<&str> {
        self.head.as_deref()
    }

    /// The deploy files in the clone, and how to load them: `path:`s must stay inside it.
    pub fn files(&self) -> (Vec<PathBuf>, LoadOptions) {
        let options = LoadOptions {
            root: Some(self.checkout.clone()),
            max_file_size: self.config.max_file_size,
            ..LoadOptions::default()
        };
        (vec![self.checkout.join(&self.config.path)], options)
    }

    /// Loads the deploy files at the checked-out commit.
    pub async fn load(&self, pack_cache: Arc<PackCache>) -> Result<Loaded, SourceError> {
        let (paths, options) = self.files();
        let mut loaded = load_files(paths, options, pack_cache).await?;
        loaded.commit = self.head.clone();
        Ok(loaded)
    }
}

/// Git may echo the URL, credentials included, in its messages.
fn redact_in(url: &str, text: &str) -> String {
    let mut out = text.replace(url, &redact_url(url));
    if let Ok(u) = url::Url::parse(url) {
        for secret in [u.password().unwrap_or_default(), u.username()] {
            if secret.len() >= 4 {
                out = out.replace(secret, "***");
            }
        }
    }
    out
}

/// Runs `git` with owned arguments (the future must be `Send` for any lifetime).
async fn run_git(
    timeout: Duration,
    cwd: Option<PathBuf>,
    args: Vec<String>,
) -> Result<String, SourceError> {
    let command = args.first().cloned().unwrap_or_default();
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(&args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| SourceError::GitTimeout {
            command: command.clone(),
            timeout,
        })?
        .map_err(SourceError::Spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(SourceError::Git {
            command,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Watches deploy files and directories; each relevant change sends [`Trigger::FileChanged`].
/// Files are watched through their directory, because editors replace a file by renaming a
/// new one over it, which ends a watch on the file itself.
pub fn watch(
    paths: &[PathBuf],
    events: mpsc::Sender<Trigger>,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    use notify::{RecursiveMode, Watcher};
    let files: Vec<PathBuf> = paths
        .iter()
        .filter(|p| !p.is_dir())
        .map(|p| absolute(p))
        .collect();
    let dirs: Vec<PathBuf> = paths
        .iter()
        .filter(|p| p.is_dir())
        .map(|p| absolute(p))
        .collect();
    let relevant_files = files.clone();
    let relevant_dirs = dirs.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        let relevant = event.paths.iter().any(|p| {
            relevant_files.iter().any(|f| f == p)
                || relevant_dirs
                    .iter()
                    .any(|d| p.starts_with(d) && !hidden_below(d, p))
        });
        if relevant {
            // Full channel: a trigger is already pending, which is all that's needed.
            let _ = events.try_send(Trigger::FileChanged);
        }
    })?;
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::Recursive)?;
    }
    for file in &files {
        let parent = file.parent().unwrap_or(Path::new("."));
        watcher.watch(parent, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Editors' swap files and `.git` below a watched directory are not deploy files.
fn hidden_below(dir: &Path, p: &Path) -> bool {
    p.strip_prefix(dir).is_ok_and(|rest| {
        rest.components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_when_printed() {
        assert_eq!(
            redact_url("https://ci:s3cret@git.example.com/org/repo.git"),
            "https://ci:***@git.example.com/org/repo.git"
        );
        assert_eq!(
            redact_url("https://ghp_token123@github.com/org/repo.git"),
            "https://***@github.com/org/repo.git"
        );
        assert_eq!(
            redact_url("file:///srv/git/deploy.git"),
            "file:///srv/git/deploy.git"
        );
        assert_eq!(
            redact_url("git@github.com:org/repo.git"),
            "git@github.com:org/repo.git"
        );
    }

    #[test]
    fn hidden_paths_below_a_watched_dir_are_ignored() {
        let d = Path::new("/repo/deploy");
        assert!(hidden_below(d, Path::new("/repo/deploy/.weather.yaml.swp")));
        assert!(hidden_below(d, Path::new("/repo/deploy/.git/index")));
        assert!(!hidden_below(
            d,
            Path::new("/repo/deploy/apps/weather.yaml")
        ));
    }
}
