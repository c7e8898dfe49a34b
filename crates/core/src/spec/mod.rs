//! The deploy file (contract version 1): parse, validate, and resolve local bindles.
//!
//! Every problem in every file is collected into one [`Diagnostics`] list, each naming
//! `file:line:column: field: message`; nothing downstream runs unless the list is empty.
//! See `docs/deploy-file.md` for the user-facing reference.

mod decode;
pub mod excerpt;
pub mod locate;
pub mod notification;
pub mod schema;
mod validate;
pub mod yaml;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::package::LocalBindle;
pub use locate::Position;

/// The only `apiVersion` this release reads.
pub const API_VERSION: &str = "hippo-gitops/v1";

/// One problem in a deploy file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field (`spec.channels[0].range`); empty for syntax errors.
    pub field: String,
    pub message: String,
}

/// Diagnostics name input text (file names, keys, values): control characters are escaped so
/// that none can forge a line of output, and each part is bounded.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        excerpt::write_escaped(f, &self.file.to_string_lossy(), 4096)?;
        write!(f, ":{}:{}: ", self.line, self.column)?;
        if !self.field.is_empty() {
            excerpt::write_escaped(f, &self.field, 200)?;
            f.write_str(": ")?;
        }
        excerpt::write_escaped(f, &self.message, 2000)
    }
}

/// All problems found in a set of deploy files.
#[derive(Debug, Clone, Default, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Options for loading deploy files.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Every deploy file and every file a `path:` packs must resolve (after symlinks) inside
    /// this directory. Without it: the Git top level of each `-f` argument (the nearest
    /// directory above it with a `.git`), or the argument's own directory outside Git.
    pub root: Option<PathBuf>,
    /// No confinement at all (`--allow-outside-root`).
    pub allow_outside_root: bool,
    /// Deploy files larger than this are refused unread (`--max-file-size`).
    pub max_file_size: u64,
    /// The controller's: local bindles packed by an earlier load, reused while unchanged.
    pub pack_cache: Option<std::sync::Arc<crate::package::PackCache>>,
}

/// 10 MiB: a deploy file of a thousand apps is well under 1 MiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 10 * 1024 * 1024;

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            root: None,
            allow_outside_root: false,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            pack_cache: None,
        }
    }
}

/// `10MB`, `512KiB`, `1g`, or plain bytes (units are powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("invalid size {s:?}: use bytes, KB, MB or GB")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// The validated desired state of every app named in the deploy files.
#[derive(Debug, Clone, Default)]
pub struct DesiredState {
    /// Shared: the controller keeps every app and hands the ones due to each cycle, and a
    /// cycle's rounds and refreshes take subsets; none of them copies an app.
    pub apps: Vec<Arc<AppSpec>>,
    /// `kind: Notification` documents ([`notification`]).
    pub notifications: Vec<notification::NotificationSpec>,
}

/// Where a definition came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One Hippo app and everything it should have.
#[derive(Debug, Clone)]
pub struct AppSpec {
    pub name: String,
    pub storage_id: String,
    /// Sorted by semantic version, ascending (the order registrations are made in).
    pub revisions: Vec<RevisionSpec>,
    /// `revisions: - discover: <range>`: every complete, unyanked version of `storage_id` on
    /// the Bindle server in one of these node-semver ranges is registered in Hippo, without a
    /// Git change. Empty: nothing is discovered.
    pub discover: Vec<DiscoverSpec>,
    pub channels: Vec<ChannelSpec>,
    pub prune: bool,
    /// Leave the app alone: no writes, shown as `Suspended` (Flux's `suspend`, for incidents).
    pub suspend: bool,
    pub origin: Origin,
}

/// A revision that must exist on Bindle and be registered in Hippo.
#[derive(Debug, Clone)]
pub struct RevisionSpec {
    pub version: String,
    pub source: RevisionSource,
}

/// Whether the controller pushes the bindle or only checks that it exists.
#[derive(Debug, Clone)]
pub enum RevisionSource {
    /// `version:` — already on the Bindle server; checked, never pushed.
    Existing,
    /// `path:` — built from a local directory and pushed.
    /// Shared: the controller hands its apps to every cycle, and a bindle's parcel list and
    /// invoice are most of an app's size.
    Local(std::sync::Arc<LocalBindle>),
}

/// `revisions: - discover: ">=1.0.0"`: versions of the app's bindle to register as they
/// appear on the Bindle server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverSpec {
    /// A node-semver range, as written (checked by the one `P:`/range parser).
    pub range: String,
    pub origin: Origin,
}

/// How a channel picks its active revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// A node-semver range, sent to Hippo exactly as written (`UseRangeRule`).
    Range(String),
    /// One pinned revision number (`UseSpecifiedRevision`).
    Revision(String),
    /// Pinned (`UseSpecifiedRevision`) by the controller to what another channel runs, once
    /// that has proven healthy on Nomad. Boxed: the rare case, and it would make every
    /// channel of every app the controller keeps more than twice as large.
    Promote(Box<PromoteSpec>),
}

/// `promote:` on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromoteSpec {
    /// Another channel of the same app (validated: exists, not itself, no cycle).
    pub from: String,
    /// How long every allocation of `from`'s job for the revision must have been healthy.
    pub after: std::time::Duration,
    pub check: Option<ProbeSpec>,
}

/// `promote.check`: an HTTP probe that must pass on every try during `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// May contain `{domain}`: the `from` channel's domain in Hippo.
    pub url: String,
    /// Default 200.
    pub expect_status: u16,
    /// Default 15s.
    pub interval: std::time::Duration,
}

/// One channel of an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSpec {
    pub name: String,
    pub selector: Selector,
    /// `None`: keep whatever domain Hippo assigned.
    pub domain: Option<String>,
    /// The full set of environment variables; keys not listed are removed.
    pub env: BTreeMap<String, String>,
    /// A rule change that selects no revision may leave the channel with none (its job is
    /// removed); without it such a change is refused (`NoMatchingRevision`).
    pub allow_empty: bool,
    /// `rollback: true` (only with a range or `promote`): a revision this channel moved to
    /// that fails on Nomad is rolled back to the last one that ran healthy in it.
    pub rollback: bool,
}

// ---------------------------------------------------------------------------------------------
// Raw, as written: decoded from YAML nodes by `decode.rs`, which reports every type error and
// unknown field of a document. These types also generate the JSON Schema (`schema.rs`).

/// One deploy file document: an app, its revisions and its channels (hippo-gitops/v1).
#[derive(Debug, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields, title = "hippo-gitops deploy file")]
pub(crate) struct RawDocument {
    /// Always `hippo-gitops/v1`.
    api_version: String,
    /// Always `App`.
    kind: String,
    metadata: RawMetadata,
    spec: RawAppSpec,
}

/// Identifies the app.
#[derive(Debug, schemars::JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Metadata")]
struct RawMetadata {
    /// The Hippo app name (unique across the deploy files).
    name: String,
}

/// What the app should have in Hippo, Bindle and Nomad.
#[derive(Debug, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields, rename = "AppSpec")]
struct RawAppSpec {
    /// The bindle name on the Bindle server that Hippo stores the app under (default:
    /// `metadata.name`).
    storage_id: Option<String>,
    /// Revisions that must exist on Bindle and be registered in Hippo.
    #[serde(default)]
    revisions: Vec<RawRevision>,
    /// The app's channels; each picks its revision by a semver range or pins one.
    #[serde(default)]
    channels: Vec<RawChannel>,
    /// Delete channels of this app that are not listed here.
    #[serde(default)]
    prune: bool,
    /// Leave this app alone (no writes at all) until set back to false.
    #[serde(default)]
    suspend: bool,
}

/// A revision: exactly one of `version` (already on the Bindle server, checked but never
/// pushed), `path` (a Spin app or standalone bindle directory, pushed) or `discover` (every
/// version on the Bindle server in a range).
#[derive(Debug, schemars::JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Revision")]
struct RawRevision {
    /// A bindle version already on the Bindle server (semver).
    version: Option<ScalarString>,
    /// A Spin app directory (with spin.toml) or a standalone bindle directory (with
    /// invoice.toml), relative to this file.
    path: Option<String>,
    /// A node-semver range: every complete, unyanked version of `storageId` on the Bindle
    /// server in it is registered in Hippo as it appears.
    discover: Option<ScalarString>,
}

/// A channel: exactly one of `range`, `revision` or `promote`.
#[derive(Debug, schemars::JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Channel")]
struct RawChannel {
    /// The channel name (unique within the app).
    name: String,
    /// A node-semver range; Hippo runs the newest registered revision that matches.
    range: Option<ScalarString>,
    /// Pin one revision (a version listed in `revisions` or already in Hippo).
    revision: Option<ScalarString>,
    /// Run what another channel of this app runs, once it has proven healthy there.
    promote: Option<RawPromote>,
    /// The channel's domain; Hippo assigns one when left out.
    domain: Option<String>,
    /// The full set of environment variables; keys not listed are removed.
    env: Option<BTreeMap<String, ScalarString>>,
    /// Allow a rule that selects no revision to leave the channel with none (Hippo then removes
    /// its job). Without it, such a change is refused and the channel keeps its revision.
    #[serde(default, rename = "allowEmpty")]
    allow_empty: bool,
    /// Roll back a revision this channel moved to that fails on Nomad, to the last one that
    /// ran healthy in it (only with `range` or `promote`).
    #[serde(default)]
    rollback: bool,
}

/// `promote`: pin the channel to what `from` runs, once that has run healthy for `after`.
#[derive(Debug, schemars::JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Promote")]
struct RawPromote {
    /// Another channel of this app (no cycles).
    from: String,
    /// How long the revision must have run healthy in `from` (`90s`, `10m`, `1h`, or plain
    /// seconds; may be `0s`).
    after: ScalarString,
    /// An HTTP probe that must pass throughout `after`.
    check: Option<RawProbe>,
}

/// `promote.check`: an HTTP probe of the `from` channel.
#[derive(Debug, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields, rename = "Probe")]
struct RawProbe {
    /// An http or https URL; `{domain}` is replaced with the `from` channel's domain.
    url: String,
    /// The status every try must answer with (default 200).
    expect_status: Option<i64>,
    /// The time between two tries (default `15s`; more than 0).
    interval: Option<ScalarString>,
}

/// A value that may be written unquoted as a YAML number or bool (`PORT: 8080`,
/// `range: 0.30`): kept exactly as written, never re-rendered (`1.10` stays `1.10`, `0x1F`
/// stays `0x1F`). `revision: 1.0` is still caught by the semver check.
#[derive(Debug, Clone)]
struct ScalarString(String);

impl schemars::JsonSchema for ScalarString {
    fn schema_name() -> String {
        "ScalarString".into()
    }

    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        use schemars::schema::{InstanceType, SchemaObject, SingleOrVec};
        SchemaObject {
            instance_type: Some(SingleOrVec::Vec(vec![
                InstanceType::String,
                InstanceType::Number,
                InstanceType::Boolean,
            ])),
            ..Default::default()
        }
        .into()
    }
}

/// A parsed document with the index used to place later errors.
pub(crate) struct ParsedDocument<R = RawDocument> {
    file: PathBuf,
    /// The deploy file's own directory, absolute and without symlinks: `path:` is relative to it.
    base: PathBuf,
    /// The directory every file it names must resolve inside (`None`: no confinement).
    root: Option<PathBuf>,
    positions: locate::PositionIndex,
    raw: R,
}

impl ParsedDocument<()> {
    /// The same document's place, holding `raw`.
    fn with<R>(self, raw: R) -> ParsedDocument<R> {
        ParsedDocument {
            file: self.file,
            base: self.base,
            root: self.root,
            positions: self.positions,
            raw,
        }
    }
}

impl<R> ParsedDocument<R> {
    fn diag(&self, field: &str, message: impl Into<String>) -> Diagnostic {
        let pos = self.positions.of(field);
        let message: String = message.into();
        // Messages quote values as excerpts; this bounds what other libraries' messages quote.
        let message = match message.char_indices().nth(1000) {
            Some((i, _)) => format!("{}…", &message[..i]),
            None => message,
        };
        Diagnostic {
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            // A field path holds the document's keys: only an excerpt of a long one.
            field: excerpt::short(field),
            message,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

/// A deploy file to read.
#[derive(Debug, Clone)]
struct DeployFile {
    /// As found (the `-f` argument, or below it): how messages name it.
    shown: PathBuf,
    /// Absolute, without symlinks: each file is read once, by this.
    real: PathBuf,
    root: Option<PathBuf>,
}

/// Said after a confinement message when the root was not given with `--root`.
const DEFAULT_ROOT_HINT: &str =
    " (the root is the deploy files' Git repository, or their directory outside Git; --root sets it, --allow-outside-root lifts the check)";

fn outside_root_message(shown: &Path, real: &Path, root: &Path, options: &LoadOptions) -> String {
    let shown_abs = lexically_absolute(shown);
    let mut message = if shown_abs.starts_with(root) {
        format!(
            "resolves through a symlink to {}, outside the repository root {}; not read",
            real.display(),
            root.display()
        )
    } else {
        format!(
            "is outside the repository root {}; not read",
            root.display()
        )
    };
    if options.root.is_none() {
        message.push_str(DEFAULT_ROOT_HINT);
    }
    message
}

/// `path` made absolute against the working directory, `.` and `..` resolved by name.
fn lexically_absolute(path: &Path) -> PathBuf {
    let joined = std::env::current_dir()
        .map(|d| d.join(path))
        .unwrap_or_else(|_| path.to_path_buf());
    validate::lexically_normal(&joined)
}

/// The root deploy files found through `arg` must stay in: `--root`, else the Git top level
/// above `arg` (a `.git` directory or file; no `git` command needed), else `arg`'s directory.
fn root_for(arg: &Path, options: &LoadOptions) -> Result<Option<PathBuf>, Diagnostic> {
    if options.allow_outside_root {
        return Ok(None);
    }
    if let Some(root) = &options.root {
        return root.canonicalize().map(Some).map_err(|e| Diagnostic {
            file: root.clone(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("--root: {e}"),
        });
    }
    let abs = lexically_absolute(arg);
    let start = if arg.is_dir() {
        abs.as_path()
    } else {
        abs.parent().unwrap_or(Path::new("/"))
    };
    let top = start
        .ancestors()
        .find(|d| d.join(".git").symlink_metadata().is_ok())
        .unwrap_or(start);
    Ok(Some(
        top.canonicalize().unwrap_or_else(|_| top.to_path_buf()),
    ))
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Expands `-f` arguments: files as given, directories to every `*.yaml`/`*.yml` below them in
/// sorted order (hidden directories such as `.git` are skipped; symlinked directories are
/// followed once each, so loops end, and not at all when they resolve outside the root). Each
/// file is listed once, by its real path; files resolving outside the root are refused
/// without being read.
///
/// Failures to read ([`is_read_failure`]: out of file descriptors, an I/O error, no
/// permission) go to `unreadable`: they say nothing about the files, and must never make the
/// source look empty or smaller.
fn collect_files(
    paths: &[PathBuf],
    options: &LoadOptions,
    unreadable: &mut Vec<Diagnostic>,
) -> (Vec<DeployFile>, Vec<Diagnostic>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for arg in paths {
        let root = match root_for(arg, options) {
            Ok(r) => r,
            Err(d) => {
                problems.push(d);
                continue;
            }
        };
        let inside = |p: &Path, real: &Path, problems: &mut Vec<Diagnostic>| match &root {
            Some(root) if !real.starts_with(root) => {
                let message = outside_root_message(p, real, root, options);
                problems.push(file_problem(p, &message));
                false
            }
            _ => true,
        };
        let found = if arg.is_dir() {
            // A directory resolving outside the root is not entered (it may be an app's
            // directory, which `path:` reports on its own).
            let walked = crate::walk::entries(arg, |dir| {
                let hidden = dir
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
                let inside = |real: &Path| root.as_ref().is_none_or(|r| real.starts_with(r));
                !hidden && dir.canonicalize().is_ok_and(|real| inside(&real))
            });
            let found: Vec<PathBuf> = match walked {
                Ok(entries) => entries.into_iter().filter(|p| is_yaml(p)).collect(),
                Err(e) => {
                    let problem =
                        file_problem(&e.dir, &format!("cannot read the directory: {}", e.source));
                    if is_read_failure(&e.source) {
                        unreadable.push(problem);
                    } else {
                        problems.push(problem);
                    }
                    continue;
                }
            };
            if found.is_empty() {
                problems.push(file_problem(
                    arg,
                    "no *.yaml or *.yml files in this directory",
                ));
            }
            found
        } else if arg.symlink_metadata().is_ok() {
            vec![arg.clone()]
        } else {
            problems.push(file_problem(arg, "no such file or directory"));
            continue;
        };
        for shown in found {
            let real = match shown.canonicalize() {
                Ok(r) => r,
                Err(e) => {
                    let problem = file_problem(&shown, &format!("cannot read: {e}"));
                    if is_read_failure(&e) {
                        unreadable.push(problem);
                    } else {
                        problems.push(problem);
                    }
                    continue;
                }
            };
            if !seen.insert(real.clone()) || !inside(&shown, &real, &mut problems) {
                continue;
            }
            out.push(DeployFile {
                shown,
                real,
                root: root.clone(),
            });
        }
    }
    (out, problems)
}

/// Whether an I/O error means the source can't be read right now (out of file descriptors or
/// memory, an I/O error, no permission: an unreadable checkout) rather than something about one
/// path (a symlink loop, not a directory). Such a failure must never be taken for an empty or a
/// smaller source.
pub fn is_read_failure(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        PermissionDenied | OutOfMemory | Interrupted | WouldBlock | TimedOut
    ) || e.raw_os_error().is_some_and(|code| {
        [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOMEM,
            libc::ENOBUFS,
            libc::EIO,
        ]
        .contains(&code)
    })
}

fn file_problem(path: &Path, message: &str) -> Diagnostic {
    Diagnostic {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        field: String::new(),
        message: message.to_string(),
    }
}

/// Reads a deploy file: a regular file (never a FIFO, which would block) of at most
/// `max_size` bytes, in UTF-8.
fn read_deploy_file(file: &DeployFile, max_size: u64) -> Result<String, NotRead> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let problem = |message: String| NotRead::Problem(file_problem(&file.shown, &message));
    let io = |e: std::io::Error| {
        let d = file_problem(&file.shown, &format!("cannot read: {e}"));
        if is_read_failure(&e) {
            NotRead::Failure(d)
        } else {
            NotRead::Problem(d)
        }
    };
    // Non-blocking: opening a FIFO must not wait for a writer; it is refused just below.
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&file.real)
        .map_err(io)?;
    let meta = handle.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(problem(
            "is not a regular file (a FIFO, socket or device); not read".into(),
        ));
    }
    let too_big = |size: u64| {
        problem(format!(
            "is {size} bytes, more than the limit of {max_size} bytes (--max-file-size); not read"
        ))
    };
    if meta.len() > max_size {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    handle
        .take(max_size + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max_size {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        let bad = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let valid = std::str::from_utf8(&bytes[..bad]).expect("valid up to here");
        let pos = yaml::line_col(valid, bad);
        NotRead::Problem(Diagnostic {
            file: file.shown.clone(),
            line: pos.line,
            column: pos.column,
            field: String::new(),
            message: format!("not valid UTF-8 (byte 0x{:02x})", bytes[bad]),
        })
    })
}

/// Why a deploy file was not read.
enum NotRead {
    /// Something about the file (not a regular file, too big, not UTF-8, a symlink loop).
    Problem(Diagnostic),
    /// A failure to read ([`is_read_failure`]), which says nothing about the file.
    Failure(Diagnostic),
}

/// Reads and parses `files`; problems go to `problems`, failures to read to `unreadable`.
fn parse_files(
    files: &[&DeployFile],
    options: &LoadOptions,
    problems: &mut Vec<Diagnostic>,
    unreadable: &mut Vec<Diagnostic>,
) -> Parsed {
    let mut docs = Parsed::default();
    for file in files {
        match read_deploy_file(file, options.max_file_size) {
            Ok(text) => parse_documents(file, &text, &mut docs, problems),
            Err(NotRead::Problem(d)) => problems.push(d),
            Err(NotRead::Failure(d)) => unreadable.push(d),
        }
    }
    docs
}

/// Loads and validates deploy files (`-f` arguments). Local bindles are read and hashed here,
/// so a missing wasm file is reported like any other field error.
pub fn load(paths: &[PathBuf], options: &LoadOptions) -> Result<DesiredState, Diagnostics> {
    let mut unreadable = Vec::new();
    let (files, mut problems) = collect_files(paths, options, &mut unreadable);
    problems.append(&mut unreadable);
    if !problems.is_empty() {
        return Err(Diagnostics(problems));
    }
    match read_pass(&files.iter().collect::<Vec<_>>(), options, &mut problems) {
        Ok(state) if problems.is_empty() => Ok(state),
        Ok(_) => Err(Diagnostics(problems)),
        Err(mut unreadable) => {
            problems.append(&mut unreadable);
            Err(Diagnostics(problems))
        }
    }
}

/// One pass over `files`: parse them, then validate what parsed, problems going to
/// `problems`. `Err`: files that exist but could not be read (an I/O error, not a problem of
/// the files), when what was read is not the whole source and is not validated.
fn read_pass(
    files: &[&DeployFile],
    options: &LoadOptions,
    problems: &mut Vec<Diagnostic>,
) -> Result<DesiredState, Vec<Diagnostic>> {
    let mut unreadable = Vec::new();
    let docs = parse_files(files, options, problems, &mut unreadable);
    if !unreadable.is_empty() {
        return Err(unreadable);
    }
    Ok(validate_parsed(docs, options, problems))
}

/// A digest of the deploy files `paths` names, by metadata ([`crate::package::MetadataStamp`]):
/// which files there are, where they resolve, and each one's size, times and inode. The
/// controller takes it before each load and reads the files again only when it moved. `None`
/// when it can't be trusted: a file changed within `settle`, or one could not be listed or
/// looked at (a full load then says why).
pub fn files_stamp(
    paths: &[PathBuf],
    options: &LoadOptions,
    settle: std::time::Duration,
) -> Option<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let mut unreadable = Vec::new();
    let (files, problems) = collect_files(paths, options, &mut unreadable);
    if !unreadable.is_empty() || !problems.is_empty() {
        return None;
    }
    let stamp = crate::package::MetadataStamp::new(settle);
    let mut h = Sha256::new();
    for file in &files {
        h.update(file.shown.as_os_str().as_encoded_bytes());
        let meta = std::fs::metadata(&file.real).ok()?;
        if !stamp.add(&mut h, &file.real, &meta) {
            return None;
        }
    }
    Some(h.finalize().into())
}

/// What the daemon loads: the apps of every valid file, and the problems of the others, so
/// that one bad file never stops the rest.
#[derive(Debug, Default)]
pub struct PartialLoad {
    pub state: DesiredState,
    /// Files left out, with every problem found in them.
    pub rejected: BTreeMap<PathBuf, Vec<Diagnostic>>,
    /// Paths that exist but could not be read (an I/O error, not a problem of the files). When
    /// there are any, `state` and `rejected` are empty: what was read is not the whole source.
    pub unreadable: Vec<Diagnostic>,
}

/// As [`load`], leaving out the files with problems instead of failing. Problems that involve
/// two files (the same app in both) leave out the file they are reported in.
pub fn load_partial(paths: &[PathBuf], options: &LoadOptions) -> PartialLoad {
    let mut rejected: BTreeMap<PathBuf, Vec<Diagnostic>> = BTreeMap::new();
    let mut unreadable = Vec::new();
    let unread = |unreadable| PartialLoad {
        unreadable,
        ..PartialLoad::default()
    };
    let (files, problems) = collect_files(paths, options, &mut unreadable);
    if !unreadable.is_empty() {
        return unread(unreadable);
    }
    for p in problems {
        rejected.entry(p.file.clone()).or_default().push(p);
    }
    loop {
        let mut problems = Vec::new();
        let remaining: Vec<&DeployFile> = files
            .iter()
            .filter(|f| !rejected.contains_key(&f.shown))
            .collect();
        let state = match read_pass(&remaining, options, &mut problems) {
            Ok(state) => state,
            Err(unreadable) => return unread(unreadable),
        };
        if problems.is_empty() {
            return PartialLoad {
                state,
                rejected,
                unreadable: Vec::new(),
            };
        }
        let before = rejected.len();
        for p in problems {
            rejected.entry(p.file.clone()).or_default().push(p);
        }
        if rejected.len() == before {
            // Problems attributed to no remaining file: leave nothing in rather than loop.
            for f in remaining {
                rejected.entry(f.shown.clone()).or_default();
            }
            return PartialLoad {
                state: DesiredState::default(),
                rejected,
                unreadable: Vec::new(),
            };
        }
    }
}

/// Parses every YAML document of one file; syntax, type and unknown-field errors go to
/// `problems`. Empty documents (a trailing `---`, a comment-only file) are skipped.
fn parse_documents(
    file: &DeployFile,
    text: &str,
    docs: &mut Parsed,
    problems: &mut Vec<Diagnostic>,
) {
    let stream = yaml::parse(text);
    let base = file.real.parent().unwrap_or(Path::new("/")).to_path_buf();
    for (start, root) in &stream.docs {
        let mut found = Vec::new();
        let parsed = |raw| ParsedDocument {
            file: file.shown.clone(),
            base: base.clone(),
            root: file.root.clone(),
            positions: locate::PositionIndex::of_document(*start, root),
            raw,
        };
        if notification::is_notification(root) {
            let raw = notification::decode(root, &mut found);
            docs.notifications.extend(raw.map(|r| parsed(()).with(r)));
        } else {
            let raw = decode::document(root, &mut found);
            docs.apps.extend(raw.map(|r| parsed(()).with(r)));
        }
        found.sort_by_key(|p| (p.node_pos.line, p.node_pos.column));
        for p in found {
            problems.push(Diagnostic {
                file: file.shown.clone(),
                line: p.node_pos.line,
                column: p.node_pos.column,
                field: p.field,
                message: p.message,
            });
        }
    }
    if let Some(e) = stream.error {
        problems.push(Diagnostic {
            file: file.shown.clone(),
            line: e.pos.line,
            column: e.pos.column,
            field: String::new(),
            message: e.message,
        });
    }
}

/// The documents of a set of files, by kind.
#[derive(Default)]
struct Parsed {
    apps: Vec<ParsedDocument>,
    notifications: Vec<ParsedDocument<notification::RawNotification>>,
}

fn validate_parsed(
    docs: Parsed,
    options: &LoadOptions,
    problems: &mut Vec<Diagnostic>,
) -> DesiredState {
    let mut state = validate::validate(docs.apps, options, problems);
    state.notifications = notification::validate(docs.notifications, problems);
    state
}

/// `known`: the fields of the mapping the unknown one sits in.
fn unknown_field_message(path: &str, known: &[&str]) -> String {
    let name = path.rsplit_once('.').map_or(path, |(_, name)| name);
    let expected = known;
    if expected.is_empty() {
        format!("unknown field `{name}`")
    } else {
        format!(
            "unknown field `{name}`, expected one of {}",
            expected
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str =
        "apiVersion: hippo-gitops/v1\nkind: App\nmetadata:\n  name: weather\nspec: {}\n";

    /// The controller's load: a deploy file that is a symlink out of the repository is left out
    /// unread, and what `/status` shows of it holds none of its text.
    #[test]
    fn the_controller_leaves_out_a_symlink_out_of_the_repository_unread() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        std::fs::write(dir.join("secret.env"), "HIPPO_PASSWORD=hunter2\n").unwrap();
        std::fs::create_dir_all(dir.join("repo/.git")).unwrap();
        std::fs::create_dir_all(dir.join("repo/deploy")).unwrap();
        std::fs::write(dir.join("repo/deploy/a.yaml"), APP).unwrap();
        std::os::unix::fs::symlink(dir.join("secret.env"), dir.join("repo/deploy/leak.yaml"))
            .unwrap();
        let partial = load_partial(&[dir.join("repo/deploy")], &LoadOptions::default());
        assert_eq!(partial.state.apps.len(), 1);
        let problems = &partial.rejected[&dir.join("repo/deploy/leak.yaml")];
        let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown.len(), 1);
        assert!(
            shown[0].contains("outside the repository root"),
            "{shown:?}"
        );
        assert!(!shown[0].contains("hunter2"), "{shown:?}");

        // With the clone as the root (the Git source), the same.
        let options = LoadOptions {
            root: Some(dir.join("repo")),
            ..LoadOptions::default()
        };
        let partial = load_partial(&[dir.join("repo/deploy")], &options);
        assert_eq!(partial.state.apps.len(), 1);
        assert_eq!(partial.rejected.len(), 1);
    }

    #[test]
    fn the_files_stamp_moves_with_the_deploy_files_and_is_not_trusted_while_they_are_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        std::fs::write(&a, "# a\n").unwrap();
        std::fs::write(dir.path().join("b.yml"), "# b\n").unwrap();
        let paths = [dir.path().to_path_buf()];
        let options = LoadOptions::default();
        let at_once = std::time::Duration::ZERO;
        let stamp = || files_stamp(&paths, &options, at_once);
        let first = stamp().expect("a stamp");
        assert_eq!(stamp(), Some(first), "nothing moved");

        std::fs::write(dir.path().join("notes.txt"), "not a deploy file").unwrap();
        assert_eq!(stamp(), Some(first), "a file that is not loaded");
        std::fs::write(&a, "# a, edited\n").unwrap();
        let edited = stamp().unwrap();
        assert_ne!(edited, first, "an edit");
        std::fs::write(dir.path().join("c.yaml"), "# c\n").unwrap();
        assert_ne!(stamp().unwrap(), edited, "a new file");
        std::fs::remove_file(dir.path().join("c.yaml")).unwrap();
        assert_eq!(stamp(), Some(edited), "the same files again");

        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(files_stamp(&paths, &options, hour), None, "just written");
        let gone = [dir.path().join("missing")];
        assert_eq!(files_stamp(&gone, &options, at_once), None);
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("10MB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("512kb"), Ok(512 * 1024));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5TB").is_err());
    }
}

#[cfg(test)]
mod read_failure_tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_is_a_read_failure_and_a_symlink_loop_is_not() {
        let fail = |code| is_read_failure(&std::io::Error::from_raw_os_error(code));
        assert!(fail(libc::EMFILE));
        assert!(fail(libc::ENFILE));
        assert!(fail(libc::EACCES));
        assert!(fail(libc::EIO));
        assert!(!fail(libc::ELOOP));
        assert!(!fail(libc::ENOTDIR));
        assert!(!fail(libc::ENOENT));
        assert!(!is_read_failure(&std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8"
        )));
    }

    #[test]
    fn a_symlink_loop_among_the_files_is_that_file_s_problem_not_an_unreadable_source() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("loop.yaml", dir.path().join("loop.yaml")).unwrap();
        let partial = load_partial(&[dir.path().to_path_buf()], &LoadOptions::default());
        assert!(partial.unreadable.is_empty(), "{:?}", partial.unreadable);
    }
}
