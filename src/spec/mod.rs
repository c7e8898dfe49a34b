//! The deploy file (contract version 1): parse, validate, and resolve local bindles.
//!
//! Every problem in every file is collected into one [`Diagnostics`] list, each naming
//! `file:line:column: field: message`; nothing downstream runs unless the list is empty.
//! See `docs/deploy-file.md` for the user-facing reference.

pub mod locate;
pub mod schema;
mod validate;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;

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

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
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
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// When set, every `path:` must resolve (after symlinks) inside this directory.
    pub root: Option<PathBuf>,
    /// The controller's: local bindles packed by an earlier load, reused while unchanged.
    pub pack_cache: Option<std::sync::Arc<crate::package::PackCache>>,
}

/// The validated desired state of every app named in the deploy files.
#[derive(Debug, Clone, Default)]
pub struct DesiredState {
    pub apps: Vec<AppSpec>,
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

/// How a channel picks its active revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// A node-semver range, sent to Hippo exactly as written (`UseRangeRule`).
    Range(String),
    /// One pinned revision number (`UseSpecifiedRevision`).
    Revision(String),
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
}

// ---------------------------------------------------------------------------------------------
// Raw, as written. Unknown fields are not denied by serde (that would abort the document and
// hide its other problems); they are collected with `serde_ignored` and reported instead.

/// One deploy file document: an app, its revisions and its channels (hippo-gitops/v1).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Metadata")]
struct RawMetadata {
    /// The Hippo app name (unique across the deploy files).
    name: String,
}

/// What the app should have in Hippo, Bindle and Nomad.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
/// pushed) or `path` (a Spin app or standalone bindle directory, pushed).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Revision")]
struct RawRevision {
    /// A bindle version already on the Bindle server (semver).
    version: Option<ScalarString>,
    /// A Spin app directory (with spin.toml) or a standalone bindle directory (with
    /// invoice.toml), relative to this file.
    path: Option<String>,
}

/// A channel: exactly one of `range` or `revision`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Channel")]
struct RawChannel {
    /// The channel name (unique within the app).
    name: String,
    /// A node-semver range; Hippo runs the newest registered revision that matches.
    range: Option<ScalarString>,
    /// Pin one revision (a version listed in `revisions` or already in Hippo).
    revision: Option<ScalarString>,
    /// The channel's domain; Hippo assigns one when left out.
    domain: Option<String>,
    /// The full set of environment variables; keys not listed are removed.
    env: Option<BTreeMap<String, ScalarString>>,
    /// Allow a rule that selects no revision to leave the channel with none (Hippo then removes
    /// its job). Without it, such a change is refused and the channel keeps its revision.
    #[serde(default, rename = "allowEmpty")]
    allow_empty: bool,
}

/// A string that may be written as a YAML number or bool (`PORT: 8080`, `revision: 1.0`
/// is still caught by the semver check).
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

impl<'de> Deserialize<'de> for ScalarString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(s) => Ok(ScalarString(s)),
            serde_yaml::Value::Number(n) => Ok(ScalarString(n.to_string())),
            serde_yaml::Value::Bool(b) => Ok(ScalarString(b.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "expected a string, found {}",
                match other {
                    serde_yaml::Value::Null => "null",
                    serde_yaml::Value::Sequence(_) => "a sequence",
                    serde_yaml::Value::Mapping(_) => "a mapping",
                    _ => "a tagged value",
                }
            ))),
        }
    }
}

/// A parsed document with the index used to place later errors.
pub(crate) struct ParsedDocument {
    file: PathBuf,
    positions: locate::PositionIndex,
    raw: RawDocument,
}

impl ParsedDocument {
    fn diag(&self, field: &str, message: impl Into<String>) -> Diagnostic {
        let pos = self.positions.of(field);
        Diagnostic {
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            field: field.to_string(),
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

/// Expands `-f` arguments: files as given, directories to every `*.yaml`/`*.yml` below them in
/// sorted order (hidden directories such as `.git` are skipped).
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Diagnostics> {
    let found = gather_files(paths);
    if found.missing.is_empty() && found.unreadable.is_empty() {
        Ok(found.files)
    } else {
        Err(Diagnostics([found.missing, found.unreadable].concat()))
    }
}

/// The deploy files below the `-f` arguments, with what is missing kept apart from what could
/// not be read (an I/O error such as `EMFILE`: not an empty directory).
struct Gathered {
    files: Vec<PathBuf>,
    /// Paths that don't exist, and directories without deploy files.
    missing: Vec<Diagnostic>,
    /// Paths that exist but could not be read.
    unreadable: Vec<Diagnostic>,
}

fn gather_files(paths: &[PathBuf]) -> Gathered {
    let mut found = Gathered {
        files: Vec::new(),
        missing: Vec::new(),
        unreadable: Vec::new(),
    };
    for path in paths {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                let mut files = Vec::new();
                walk_yaml(path, &mut files, &mut found.unreadable);
                files.sort();
                if files.is_empty() && found.unreadable.is_empty() {
                    found.missing.push(file_problem(
                        path,
                        "no *.yaml or *.yml files in this directory",
                    ));
                }
                found.files.extend(files);
            }
            Ok(m) if m.is_file() => found.files.push(path.clone()),
            Ok(_) => found
                .missing
                .push(file_problem(path, "not a regular file or directory")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => found
                .missing
                .push(file_problem(path, "no such file or directory")),
            Err(e) if is_read_failure(&e) => found
                .unreadable
                .push(file_problem(path, &format!("cannot read: {e}"))),
            Err(e) => found
                .missing
                .push(file_problem(path, &format!("cannot read: {e}"))),
        }
    }
    found
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

fn walk_yaml(dir: &Path, out: &mut Vec<PathBuf>, unreadable: &mut Vec<Diagnostic>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // Only a failure to read counts: a directory that vanished meanwhile has no files.
        Err(e) if is_read_failure(&e) => {
            unreadable.push(file_problem(dir, &format!("cannot read: {e}")));
            return;
        }
        Err(_) => return,
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                unreadable.push(file_problem(dir, &format!("cannot read: {e}")));
                continue;
            }
        };
        let path = entry.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if path.is_dir() {
            if !hidden {
                walk_yaml(&path, out, unreadable);
            }
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
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

/// Loads and validates deploy files (`-f` arguments). Local bindles are read and hashed here,
/// so a missing wasm file is reported like any other field error.
pub fn load(paths: &[PathBuf], options: &LoadOptions) -> Result<DesiredState, Diagnostics> {
    let files = collect_files(paths)?;
    let mut problems = Vec::new();
    let mut docs = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => parse_documents(file, &text, &mut docs, &mut problems),
            Err(e) => problems.push(file_problem(file, &format!("cannot read: {e}"))),
        }
    }
    let state = validate::validate(docs, options, &mut problems);
    if problems.is_empty() {
        Ok(state)
    } else {
        Err(Diagnostics(problems))
    }
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
    let found = gather_files(paths);
    let unreadable = |unreadable| PartialLoad {
        unreadable,
        ..PartialLoad::default()
    };
    if !found.unreadable.is_empty() {
        return unreadable(found.unreadable);
    }
    for p in found.missing {
        rejected.entry(p.file.clone()).or_default().push(p);
    }
    let files = found.files;
    loop {
        let mut problems = Vec::new();
        let mut docs = Vec::new();
        let remaining: Vec<&PathBuf> = files
            .iter()
            .filter(|f| !rejected.contains_key(*f))
            .collect();
        for file in &remaining {
            match std::fs::read_to_string(file) {
                Ok(text) => parse_documents(file, &text, &mut docs, &mut problems),
                // Removed since the walk: like a file that was never there.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) if is_read_failure(&e) => {
                    return unreadable(vec![file_problem(file, &format!("cannot read: {e}"))])
                }
                // Not UTF-8, a symlink loop: a problem of this file.
                Err(e) => problems.push(file_problem(file, &format!("cannot read: {e}"))),
            }
        }
        let state = validate::validate(docs, options, &mut problems);
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
                rejected.entry(f.clone()).or_default();
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
/// `problems`.
pub(crate) fn parse_documents(
    file: &Path,
    text: &str,
    docs: &mut Vec<ParsedDocument>,
    problems: &mut Vec<Diagnostic>,
) {
    let indexes = locate::index_documents(text);
    let mut last_error: Option<String> = None;
    // After a syntax error serde_yaml's iterator can repeat the same error forever, so stop
    // one document past what the parser could index, and on a repeated error.
    for (i, de) in serde_yaml::Deserializer::from_str(text)
        .enumerate()
        .take(indexes.len() + 1)
    {
        let positions = indexes.get(i).cloned().unwrap_or_default();
        let mut unknown = Vec::new();
        let mut on_unknown = |path: serde_ignored::Path| unknown.push(ignored_path(&path));
        let result = serde_path_to_error::deserialize::<_, RawDocument>(
            serde_ignored::Deserializer::new(de, &mut on_unknown),
        );
        match result {
            Ok(raw) => {
                for path in unknown {
                    let pos = positions.key_of(&path);
                    problems.push(Diagnostic {
                        file: file.to_path_buf(),
                        line: pos.line,
                        column: pos.column,
                        message: unknown_field_message(&path),
                        field: path,
                    });
                }
                docs.push(ParsedDocument {
                    file: file.to_path_buf(),
                    positions,
                    raw,
                });
            }
            Err(e) => {
                let mut field = clean_path(&e.path().to_string());
                let inner = e.into_inner();
                let syntax = is_syntax_error(&inner);
                if syntax {
                    field.clear();
                }
                let text = inner.to_string();
                if positions.is_empty() && inner.location().is_none() {
                    // `---` with nothing after it, or a comment-only file.
                    continue;
                }
                if last_error.as_deref() == Some(text.as_str()) {
                    break;
                }
                let (line, column) = match inner.location() {
                    Some(loc) => (loc.line(), loc.column()),
                    None => {
                        let p = positions.key_of(&field);
                        (p.line, p.column)
                    }
                };
                problems.push(Diagnostic {
                    file: file.to_path_buf(),
                    line,
                    column,
                    message: if syntax {
                        format!("YAML syntax error: {}", strip_location(&text))
                    } else {
                        clean_message(&text, &field)
                    },
                    field,
                });
                if syntax {
                    break;
                }
                last_error = Some(text);
            }
        }
    }
}

/// `spec.channels[1].rnage` from serde_ignored's path.
fn ignored_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => {
            let p = ignored_path(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

fn unknown_field_message(path: &str) -> String {
    let (parent, name) = path.rsplit_once('.').unwrap_or(("", path));
    // Drop list indices: `spec.channels[1]` → `spec.channels`.
    let shape: String = parent
        .split('[')
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part
            } else {
                part.split_once(']').map_or("", |(_, rest)| rest)
            }
        })
        .collect();
    let expected: &[&str] = match shape.as_str() {
        "" => &["apiVersion", "kind", "metadata", "spec"],
        "metadata" => &["name"],
        "spec" => &["storageId", "revisions", "channels", "prune"],
        "spec.revisions" => &["version", "path"],
        "spec.channels" => &["name", "range", "revision", "domain", "env"],
        _ => &[],
    };
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

/// serde_yaml prefixes messages with the path and ends them with the position; both are
/// reported in their own columns.
fn clean_message(msg: &str, field: &str) -> String {
    let msg = strip_location(msg);
    let prefix = format!("{field}: ");
    msg.strip_prefix(&prefix).map(str::to_string).unwrap_or(msg)
}

fn is_syntax_error(e: &serde_yaml::Error) -> bool {
    let s = e.to_string();
    s.contains("while scanning") || s.contains("while parsing") || s.contains("did not find")
}

/// serde_path_to_error writes `.` for the root and `?` for unknown positions.
fn clean_path(p: &str) -> String {
    if p == "." {
        return String::new();
    }
    p.split('.')
        .filter(|s| *s != "?")
        .collect::<Vec<_>>()
        .join(".")
}

/// The position is reported in its own columns; drop serde_yaml's " at line X column Y".
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
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
