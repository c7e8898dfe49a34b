//! Local bindles: what a `path:` revision in a deploy file turns into.
//!
//! Two layouts are accepted:
//! - a Spin app directory (`spin.toml`, manifest v1, plus its built wasm and assets), expanded
//!   into a bindle the way `spin bindle push` does: one parcel per module, one per asset path,
//!   and a generated `spin.<sha>.toml` manifest parcel (Spin's bindle schema) that Hippo and
//!   `spin up --bindle` find by its media type;
//! - a standalone bindle directory (`invoice.toml` + `parcels/<sha256>.dat`), as written by
//!   `bindle` / `spin bindle prepare`.
//!
//! Reading is local and synchronous; nothing here talks to a server. Parcel bytes stay on disk
//! until upload, so large apps don't sit in memory.

use crate::sync::MutexExt;
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Read,
    path::{Path, PathBuf},
    sync::Arc,
};

use bindle::{BindleSpec, Condition, Group, Id, Invoice, Label, Parcel};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Media type Hippo looks for to read a revision's components.
pub const SPIN_MANIFEST_MEDIA_TYPE: &str = "application/vnd.fermyon.spin+toml";

/// Errors reading a local app or bindle. The message is shown against the `path` field.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{0} does not exist")]
    NotFound(PathBuf),
    #[error("{0} is neither a Spin app (spin.toml) nor a standalone bindle (invoice.toml)")]
    UnknownLayout(PathBuf),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{}: resolves to {}, outside the repository root {}; not read", .path.display(), .real.display(), .root.display())]
    OutsideRoot {
        path: PathBuf,
        real: PathBuf,
        root: PathBuf,
    },
}

impl PackageError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackageError + '_ {
        move |source| PackageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    fn invalid(path: &Path, message: impl Into<String>) -> PackageError {
        PackageError::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Where a parcel's bytes come from at upload time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParcelSource {
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl ParcelSource {
    /// Reads the parcel's bytes, whole: for tests only (a push streams file parcels).
    #[cfg(test)]
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            ParcelSource::File(p) => fs::read(p),
            ParcelSource::Bytes(b) => Ok(b.clone()),
        }
    }
}

/// A bindle built from a local directory, ready to push: an unsigned invoice with its final
/// parcel list, and where each parcel's bytes are.
#[derive(Debug, Clone)]
pub struct PackedBindle {
    pub id: Id,
    pub invoice: Invoice,
    /// sha256 → where to read the bytes.
    pub parcels: BTreeMap<String, ParcelSource>,
    /// The directory it was read from.
    pub dir: PathBuf,
}

impl PackedBindle {
    /// The set of parcel digests, for tests to compare (the code compares [`ParcelSet`]s).
    #[cfg(test)]
    pub fn parcel_shas(&self) -> BTreeSet<String> {
        self.parcels.keys().cloned().collect()
    }

    /// The parcel digests as one [`ParcelSet`].
    pub fn parcel_set(&self) -> ParcelSet {
        ParcelSet::of(self.parcels.keys().map(String::as_str))
    }

    /// Total size of all parcels, in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.invoice
            .parcel
            .iter()
            .flatten()
            .map(|p| p.label.size)
            .sum()
    }

    /// The bindle name (the Hippo storage id).
    pub fn name(&self) -> &str {
        self.id.name()
    }

    /// The bindle version as written.
    pub fn version(&self) -> String {
        self.id.version_string()
    }
}

/// What the desired state keeps of a local bindle: what it is (its id and its parcels' digest)
/// and where it is. Packed, a bindle is kilobytes (its invoice and parcel list), and a
/// controller keeps one for every revision of every app, for as long as it runs; the parcels'
/// bytes stay on disk anyway, so the bindle is packed again from its directory to be pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalBindle {
    pub id: Id,
    pub parcels: ParcelSet,
    pub parcel_count: usize,
    pub total_bytes: u64,
    /// The directory it was read from.
    pub dir: PathBuf,
}

impl LocalBindle {
    /// Whether `set` is this bindle's set of parcel digests.
    pub fn same_parcels(&self, set: &ParcelSet) -> bool {
        self.parcels == *set
    }

    /// Packs the bindle again from its directory, to push it; refused when what is there now
    /// is not what was loaded (edited since: the next load picks the new content up).
    pub fn pack(&self) -> Result<PackedBindle, PackageError> {
        let packed = load(&self.dir)?;
        if packed.id != self.id || packed.parcel_set() != self.parcels {
            return Err(PackageError::invalid(
                &self.dir,
                format!(
                    "changed on disk since it was loaded as {} (it is {} now); it is pushed once the deploy files are loaded again",
                    self.id,
                    packed.id
                ),
            ));
        }
        Ok(packed)
    }
}

impl From<&PackedBindle> for LocalBindle {
    fn from(b: &PackedBindle) -> Self {
        LocalBindle {
            id: b.id.clone(),
            parcels: b.parcel_set(),
            parcel_count: b.parcels.len(),
            total_bytes: b.total_bytes(),
            dir: b.dir.clone(),
        }
    }
}

/// A local bindle as the desired state needs it, with the root check made while it was packed.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Shared with the desired state: the cache keeps no copy of its own.
    pub local: std::sync::Arc<LocalBindle>,
    /// With a repository root: why a parcel resolves outside it (through a symlink), if one does.
    pub outside_root: Option<String>,
}

/// Reads the bindle at `dir` for the desired state, through `cache` when given.
pub fn load_for_spec(
    dir: &Path,
    root: Option<&Path>,
    cache: Option<&PackCache>,
) -> Result<Loaded, PackageError> {
    match cache {
        Some(cache) => cache.load(dir, root),
        None => pack_for_spec(dir, root),
    }
}

fn pack_for_spec(dir: &Path, root: Option<&Path>) -> Result<Loaded, PackageError> {
    if root.is_some() {
        // Every file packing reads is checked against the root before any is read (a module
        // could be `/proc/kmsg`, an asset directory a symlink to `/`).
        input_files(dir, root)?;
    }
    let packed = load(dir)?;
    Ok(Loaded {
        outside_root: root.and_then(|r| parcels_outside_root(&packed, r)),
        local: std::sync::Arc::new(LocalBindle::from(&packed)),
    })
}

/// Why `path` may not be read: it resolves outside `root`.
fn outside(path: &Path, real: &Path, root: &Path) -> PackageError {
    PackageError::OutsideRoot {
        path: path.to_path_buf(),
        real: real.to_path_buf(),
        root: root.to_path_buf(),
    }
}

/// Refuses `path` when it resolves outside `root` (a path that does not resolve is left to
/// whoever reads it, to say it is missing).
fn confined(path: &Path, root: Option<&Path>) -> Result<(), PackageError> {
    match (root, path.canonicalize()) {
        (Some(root), Ok(real)) if !real.starts_with(root) => Err(outside(path, &real, root)),
        _ => Ok(()),
    }
}

/// What packing `dir` reads: the manifest or invoice (its text) and every other file (modules,
/// the assets the globs find, parcels). With `root`, each is checked against it before it is
/// read, and asset directories resolving outside it are not walked but refused.
fn input_files(dir: &Path, root: Option<&Path>) -> Result<(Vec<u8>, Vec<PathBuf>), PackageError> {
    let mut files: Vec<PathBuf> = Vec::new();
    let text = match layout(dir)? {
        Layout::Spin => {
            let spin = dir.join("spin.toml");
            confined(&spin, root)?;
            let text = fs::read(&spin).map_err(PackageError::io(&spin))?;
            let manifest = read_spin_manifest(&spin)?;
            for component in &manifest.component {
                if let toml::Value::String(source) = &component.source {
                    files.push(dir.join(source));
                }
                files.extend(
                    collect_assets(dir, component, &spin, root)?
                        .into_iter()
                        .map(|a| a.path),
                );
            }
            text
        }
        Layout::Standalone => {
            let invoice_path = dir.join("invoice.toml");
            confined(&invoice_path, root)?;
            let text = fs::read(&invoice_path).map_err(PackageError::io(&invoice_path))?;
            let invoice: Invoice = toml::from_slice(&text).map_err(|e| {
                PackageError::invalid(&invoice_path, format!("invalid invoice: {e}"))
            })?;
            for parcel in invoice.parcel.iter().flatten() {
                files.push(
                    dir.join("parcels")
                        .join(format!("{}.dat", parcel.label.sha256)),
                );
            }
            text
        }
    };
    for file in &files {
        confined(file, root)?;
    }
    Ok((text, files))
}

/// Why a parcel of `bindle` resolves (through a symlink) outside `root`, if one does.
pub fn parcels_outside_root(bindle: &PackedBindle, root: &Path) -> Option<String> {
    bindle.parcels.values().find_map(|src| match src {
        ParcelSource::File(p) => match p.canonicalize() {
            Ok(real) if !real.starts_with(root) => Some(format!(
                "{} resolves through a symlink to {}, outside the repository root {}",
                p.display(),
                real.display(),
                root.display()
            )),
            _ => None,
        },
        ParcelSource::Bytes(_) => None,
    })
}

/// Local bindles packed before, by directory, for the controller: it loads every deploy file
/// again on each change, and packing hashes every parcel (100 apps with a 5 MB module each take
/// 0.4 s). An entry is used again while every file packing reads (the manifest or invoice, each
/// module and asset the globs find) has the same size, modification and change times and inode:
/// the change time moves on every write and no tool sets it. Files changed in the last
/// [`PackCache::SETTLE`] are not trusted that way (timestamps are coarser than writes can be
/// apart), so a bindle still being written is packed afresh each time.
#[derive(Debug)]
pub struct PackCache {
    entries: std::sync::Mutex<BTreeMap<PackKey, ([u8; 32], Loaded)>>,
    settle: std::time::Duration,
    packs: std::sync::atomic::AtomicUsize,
}

/// A bindle directory and the repository root it was checked against.
type PackKey = (PathBuf, Option<PathBuf>);

impl Default for PackCache {
    fn default() -> Self {
        PackCache::with_settle(PackCache::SETTLE)
    }
}

impl PackCache {
    pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

    /// A cache that trusts metadata of files changed more than `settle` ago.
    pub fn with_settle(settle: std::time::Duration) -> Self {
        PackCache {
            entries: Default::default(),
            settle,
            packs: Default::default(),
        }
    }

    /// How many times a bindle was packed (read and hashed) rather than reused.
    pub fn packs(&self) -> usize {
        self.packs.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn load(&self, dir: &Path, root: Option<&Path>) -> Result<Loaded, PackageError> {
        let key = (dir.to_path_buf(), root.map(Path::to_path_buf));
        // No stamp (unreadable, or too fresh to trust): pack afresh, keep nothing.
        let stamp = input_stamp(dir, self.settle, root).ok().flatten();
        if let Some(stamp) = stamp {
            let entries = self.entries.locked();
            if let Some((s, loaded)) = entries.get(&key) {
                if *s == stamp {
                    return Ok(loaded.clone());
                }
            }
        }
        self.packs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let loaded = pack_for_spec(dir, root);
        let mut entries = self.entries.locked();
        match (&loaded, stamp) {
            (Ok(l), Some(stamp)) => {
                entries.insert(key, (stamp, l.clone()));
            }
            _ => {
                entries.remove(&key);
            }
        }
        loaded
    }

    /// Whether each of `bindles` is what its directory holds now, judged as [`PackCache::load`]
    /// judges it (by metadata, never by content) but without packing anything: false when one
    /// has no entry (it was packed while too recently changed to be trusted, or its entry was
    /// replaced by a later load) or its files' metadata moved.
    pub fn unchanged<'a>(&self, bindles: impl IntoIterator<Item = &'a Arc<LocalBindle>>) -> bool {
        bindles.into_iter().all(|bindle| {
            let entry = {
                let entries = self.entries.locked();
                entries
                    .range((bindle.dir.clone(), None)..)
                    .take_while(|((dir, _), _)| *dir == bindle.dir)
                    .find(|(_, (_, loaded))| Arc::ptr_eq(&loaded.local, bindle))
                    .map(|((_, root), (stamp, _))| (root.clone(), *stamp))
            };
            entry.is_some_and(|(root, stamp)| {
                matches!(input_stamp(&bindle.dir, self.settle, root.as_deref()), Ok(Some(now)) if now == stamp)
            })
        })
    }

    /// Forgets the directories not in `keep` (apps removed from the deploy files).
    pub fn retain(&self, keep: &BTreeSet<PathBuf>) {
        self.entries
            .locked()
            .retain(|(dir, _), _| keep.contains(dir));
    }

    pub fn len(&self) -> usize {
        self.entries.locked().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A digest of everything packing `dir` reads, by file metadata rather than content; `None`
/// when a file changed too recently to be judged by its metadata.
fn input_stamp(
    dir: &Path,
    settle: std::time::Duration,
    root: Option<&Path>,
) -> Result<Option<[u8; 32]>, PackageError> {
    let mut h = Sha256::new();
    let (text, files) = input_files(dir, root)?;
    h.update(&text);
    let stamp = MetadataStamp::new(settle);
    for path in files {
        let m = fs::metadata(&path).map_err(PackageError::io(&path))?;
        if !stamp.add(&mut h, &path, &m) {
            return Ok(None);
        }
    }
    Ok(Some(h.finalize().into()))
}

/// Files judged unchanged by their metadata (size, modification and change times, inode and
/// device), as [`PackCache`] and the controller's rescan of the deploy files judge them: the
/// change time moves on every write and no tool sets it. A file changed within `settle` is
/// never judged that way, since timestamps are coarser than writes can be apart.
pub struct MetadataStamp {
    settle: std::time::Duration,
    /// Whole seconds since the epoch, rounded so that a file changed within `settle` is
    /// never trusted.
    settled_before: i64,
}

impl MetadataStamp {
    pub fn new(settle: std::time::Duration) -> Self {
        let settled_before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| (d.saturating_sub(settle)).as_secs() as i64)
            .unwrap_or(0);
        MetadataStamp {
            settle,
            settled_before,
        }
    }

    /// Adds `path` and its metadata `m` to `h`; false when the file changed too recently for
    /// its metadata to be trusted (nothing is added then).
    pub fn add(&self, h: &mut Sha256, path: &Path, m: &fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        if !self.settle.is_zero()
            && (m.ctime() >= self.settled_before || m.mtime() >= self.settled_before)
        {
            return false;
        }
        h.update(path.as_os_str().as_encoded_bytes());
        for n in [
            m.len() as i64,
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        ] {
            h.update(n.to_le_bytes());
        }
        h.update(m.ino().to_le_bytes());
        h.update(m.dev().to_le_bytes());
        true
    }
}

/// A set of parcel digests, kept as one SHA-256 of the sorted set: whether two bindles carry
/// the same parcels is all that is ever asked of it, and a controller keeps one for every
/// version of every app (on the server's side too).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParcelSet([u8; 32]);

impl ParcelSet {
    pub fn of<'a>(shas: impl IntoIterator<Item = &'a str>) -> Self {
        let mut sorted: Vec<&str> = shas.into_iter().collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut h = Sha256::new();
        for sha in sorted {
            h.update(sha.as_bytes());
            h.update(b"\n");
        }
        ParcelSet(h.finalize().into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for ParcelSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParcelSet({})", hex::encode(&self.0[..6]))
    }
}

/// The two kinds of local bindle directory.
enum Layout {
    Spin,
    Standalone,
}

fn layout(dir: &Path) -> Result<Layout, PackageError> {
    if !dir.exists() {
        Err(PackageError::NotFound(dir.to_path_buf()))
    } else if dir.join("spin.toml").is_file() {
        Ok(Layout::Spin)
    } else if dir.join("invoice.toml").is_file() {
        Ok(Layout::Standalone)
    } else {
        Err(PackageError::UnknownLayout(dir.to_path_buf()))
    }
}

/// Reads the app or bindle at `dir`.
pub fn load(dir: &Path) -> Result<PackedBindle, PackageError> {
    match layout(dir)? {
        Layout::Spin => load_spin_app(dir),
        Layout::Standalone => load_standalone(dir),
    }
}

fn sha256_file(path: &Path) -> Result<(String, u64), PackageError> {
    let mut file = fs::File::open(path).map_err(PackageError::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(PackageError::io(path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((format!("{:x}", hasher.finalize()), size))
}

// ---------------------------------------------------------------------------------------------
// Standalone bindle

fn load_standalone(dir: &Path) -> Result<PackedBindle, PackageError> {
    let invoice_path = dir.join("invoice.toml");
    let text = fs::read_to_string(&invoice_path).map_err(PackageError::io(&invoice_path))?;
    let mut invoice: Invoice = toml::from_str(&text)
        .map_err(|e| PackageError::invalid(&invoice_path, format!("invalid invoice: {e}")))?;
    // Signatures by keys the target server may not know would get the push rejected; the
    // controller signs as creator itself. The signature covers only the parcel list, which is
    // kept as is.
    invoice.signature = None;
    invoice.yanked = None;
    invoice.yanked_signature = None;
    let mut parcels = BTreeMap::new();
    for parcel in invoice.parcel.iter().flatten() {
        let sha = &parcel.label.sha256;
        let path = dir.join("parcels").join(format!("{sha}.dat"));
        if !path.is_file() {
            return Err(PackageError::invalid(
                &invoice_path,
                format!(
                    "parcel {} ({sha}) is listed but parcels/{sha}.dat is missing",
                    parcel.label.name
                ),
            ));
        }
        let (actual, size) = sha256_file(&path)?;
        if &actual != sha || size != parcel.label.size {
            return Err(PackageError::invalid(
                &path,
                format!(
                    "does not match the invoice (sha256 {actual}, {size} bytes; invoice says {sha}, {} bytes)",
                    parcel.label.size
                ),
            ));
        }
        parcels.insert(sha.clone(), ParcelSource::File(path));
    }
    Ok(PackedBindle {
        id: invoice.bindle.id.clone(),
        invoice,
        parcels,
        dir: dir.to_path_buf(),
    })
}

// ---------------------------------------------------------------------------------------------
// Spin app (manifest v1)

/// The top level of a local `spin.toml`, manifest v1: every key any Spin version from v0.3 to
/// v1.5 reads (crates/loader/src/local/config.rs at those tags). An unknown key is refused with
/// its line rather than dropped: Spin would refuse it too, and a dropped key (a store, a
/// database, a model) makes the app fail only once it runs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpinManifest {
    #[allow(dead_code)]
    spin_manifest_version: Option<toml::Value>,
    #[allow(dead_code)]
    spin_version: Option<toml::Value>,
    name: String,
    version: String,
    description: Option<String>,
    authors: Option<Vec<String>>,
    trigger: toml::Value,
    /// Only read by `spin up` locally; not part of the bindle manifest.
    #[allow(dead_code)]
    namespace: Option<String>,
    /// Application configuration in Spin v0.3–v0.4 (renamed `variables` in v0.5).
    config: Option<toml::Value>,
    variables: Option<toml::Value>,
    component: Vec<SpinComponent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpinComponent {
    id: String,
    source: toml::Value,
    description: Option<String>,
    /// `Some` whenever the component declares `files`, even empty: the bindle manifest then
    /// names its files group, as `spin bindle push` writes it.
    files: Option<Vec<FileMount>>,
    #[serde(default)]
    exclude_files: Vec<String>,
    allowed_http_hosts: Option<Vec<String>>,
    /// Spin v0.9.
    key_value_stores: Option<Vec<String>>,
    /// Spin v1.3.
    sqlite_databases: Option<Vec<String>>,
    /// Spin v1.5.
    ai_models: Option<Vec<String>>,
    environment: Option<BTreeMap<String, String>>,
    trigger: Option<toml::Value>,
    config: Option<toml::Value>,
    /// `spin build`'s settings: not part of the bindle manifest.
    #[allow(dead_code)]
    build: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FileMount {
    Pattern(String),
    Placement { source: String, destination: String },
}

struct Asset {
    /// Path inside the component's file system (the parcel name).
    name: String,
    path: PathBuf,
}

/// The annotation `spin bindle push` puts on the manifest parcel (the loader deletes the
/// copied file once read).
const SPIN_DELETE_ON_WRITE: &str = "fermyon:spin:delete_on_write";

/// Reads the manifest version first, so that a manifest of another version is named as such
/// instead of failing on the first key v1 lacks.
fn read_spin_manifest(manifest_path: &Path) -> Result<SpinManifest, PackageError> {
    let text = fs::read_to_string(manifest_path).map_err(PackageError::io(manifest_path))?;
    let invalid = |message: String| PackageError::invalid(manifest_path, message);
    let raw: toml::Value =
        toml::from_str(&text).map_err(|e| invalid(format!("invalid spin.toml: {e}")))?;
    let version = raw
        .get("spin_manifest_version")
        .or_else(|| raw.get("spin_version"));
    match version {
        Some(toml::Value::String(s)) if s == "1" => {}
        Some(toml::Value::Integer(1)) => {}
        Some(other) => {
            return Err(invalid(format!(
                "manifest version {} is not supported (Hippo runs Spin manifest v1)",
                other.as_str().map(String::from).unwrap_or_else(|| other.to_string())
            )))
        }
        None => {
            return Err(invalid(
                "no `spin_manifest_version`: only Spin manifest v1 (`spin_manifest_version = \"1\"`) can run on Hippo".into(),
            ))
        }
    }
    let manifest: SpinManifest =
        toml::from_str(&text).map_err(|e| invalid(format!("invalid spin.toml: {e}")))?;
    if manifest.config.is_some() && manifest.variables.is_some() {
        return Err(invalid(
            "`config` (Spin v0.3–v0.4) and `variables` (Spin v0.5 on) are the same setting under two names: keep the one your Spin version reads".into(),
        ));
    }
    Ok(manifest)
}

/// A parcel of a local file: its name in the bindle, digest, size and media type.
fn file_parcel(
    path: &Path,
    name: String,
    media_type: String,
    member_of: Option<Vec<String>>,
) -> Result<Parcel, PackageError> {
    let (sha256, size) = sha256_file(path)?;
    Ok(Parcel {
        label: Label {
            sha256,
            media_type,
            name,
            size,
            annotations: None,
            feature: None,
            origin: None,
        },
        conditions: Some(Condition {
            member_of,
            requires: None,
        }),
    })
}

/// Spin's `can_consolidate_asset_parcels`: one parcel for two mounts only when everything about
/// them is the same, name included (the same image at two paths is two parcels).
fn same_asset_parcel(a: &Parcel, b: &Parcel) -> bool {
    a.label.name == b.label.name
        && a.label.sha256 == b.label.sha256
        && a.label.size == b.label.size
        && a.label.media_type == b.label.media_type
}

/// Expands a Spin app the way `spin bindle push` does (crates/publish/src/expander.rs, Spin
/// v0.6–v1.5): the manifest parcel first, then one parcel per module (consecutive duplicates
/// dropped: only a module's content is used), then one parcel per asset **per path**, each a
/// member of its component's `files-<id>` group; two asset parcels are merged only when name,
/// digest, size and media type are all equal. `spin up --bindle` writes every parcel at its
/// own name, so two equal files at two paths must be two parcels.
fn load_spin_app(dir: &Path) -> Result<PackedBindle, PackageError> {
    let manifest_path = dir.join("spin.toml");
    let manifest = read_spin_manifest(&manifest_path)?;
    let id = Id::try_from(format!("{}/{}", manifest.name, manifest.version)).map_err(|e| {
        PackageError::invalid(
            &manifest_path,
            format!("name/version is not a valid bindle id: {e}"),
        )
    })?;
    if manifest.component.is_empty() {
        return Err(PackageError::invalid(
            &manifest_path,
            "has no [[component]]",
        ));
    }

    let mut parcels: BTreeMap<String, ParcelSource> = BTreeMap::new();
    let mut wasm_parcels: Vec<Parcel> = Vec::new();
    let mut asset_parcels: Vec<Parcel> = Vec::new();
    let mut groups = Vec::new();
    let mut components = Vec::new();
    for component in &manifest.component {
        let source = match &component.source {
            toml::Value::String(s) => s.clone(),
            _ => {
                return Err(PackageError::invalid(
                    &manifest_path,
                    format!(
                        "component {}: only local `source` files are supported (a URL source would need network access at deploy time)",
                        component.id
                    ),
                ))
            }
        };
        let wasm_path = dir.join(&source);
        if !wasm_path.is_file() {
            return Err(PackageError::invalid(
                &manifest_path,
                format!(
                    "component {}: source {} not found (build the app first)",
                    component.id,
                    wasm_path.display()
                ),
            ));
        }
        let wasm = file_parcel(&wasm_path, source, "application/wasm".into(), None)?;
        let wasm_sha = wasm.label.sha256.clone();
        if wasm_parcels.last().map(|p| &p.label.sha256) != Some(&wasm_sha) {
            wasm_parcels.push(wasm);
        }
        parcels.insert(wasm_sha.clone(), ParcelSource::File(wasm_path));

        let group = format!("files-{}", component.id);
        for asset in collect_assets(dir, component, &manifest_path, None)? {
            let media_type = mime_guess::from_path(&asset.path)
                .first_or_octet_stream()
                .to_string();
            let parcel = file_parcel(
                &asset.path,
                asset.name,
                media_type,
                Some(vec![group.clone()]),
            )?;
            parcels
                .entry(parcel.label.sha256.clone())
                .or_insert(ParcelSource::File(asset.path));
            match asset_parcels
                .iter_mut()
                .find(|p| same_asset_parcel(p, &parcel))
            {
                Some(existing) => {
                    let member_of = existing
                        .conditions
                        .get_or_insert(Condition {
                            member_of: None,
                            requires: None,
                        })
                        .member_of
                        .get_or_insert_with(Vec::new);
                    if !member_of.contains(&group) {
                        member_of.push(group.clone());
                    }
                }
                None => asset_parcels.push(parcel),
            }
        }
        groups.push(Group {
            name: group.clone(),
            required: None,
            satisfied_by: None,
        });
        components.push(bindle_component(
            component,
            &wasm_sha,
            component.files.is_some().then_some(&group),
        ));
    }

    // The manifest Hippo reads: Spin's bindle schema (camelCase, sources as parcel digests).
    let mut doc = toml::value::Table::new();
    doc.insert("trigger".into(), manifest.trigger.clone());
    if let Some(config) = &manifest.config {
        doc.insert("config".into(), config.clone());
    }
    if let Some(vars) = &manifest.variables {
        doc.insert("variables".into(), vars.clone());
    }
    doc.insert("component".into(), toml::Value::Array(components));
    let manifest_bytes = toml::to_string(&toml::Value::Table(doc))
        .map_err(|e| PackageError::invalid(&manifest_path, format!("rendering manifest: {e}")))?
        .into_bytes();
    let manifest_sha = format!("{:x}", Sha256::digest(&manifest_bytes));
    let manifest_parcel = Parcel {
        label: Label {
            sha256: manifest_sha.clone(),
            media_type: SPIN_MANIFEST_MEDIA_TYPE.into(),
            name: format!("spin.{manifest_sha}.toml"),
            size: manifest_bytes.len() as u64,
            annotations: Some(BTreeMap::from([(
                SPIN_DELETE_ON_WRITE.to_string(),
                ".".to_string(),
            )])),
            feature: None,
            origin: None,
        },
        conditions: None,
    };
    parcels.insert(manifest_sha, ParcelSource::Bytes(manifest_bytes));

    let mut invoice = Invoice::new(BindleSpec {
        id: id.clone(),
        description: manifest.description.clone(),
        authors: manifest.authors.clone(),
    });
    let mut parcel_list = vec![manifest_parcel];
    parcel_list.extend(wasm_parcels);
    parcel_list.extend(asset_parcels);
    invoice.parcel = Some(parcel_list);
    invoice.group = Some(groups);
    Ok(PackedBindle {
        id,
        invoice,
        parcels,
        dir: dir.to_path_buf(),
    })
}

fn bindle_component(
    c: &SpinComponent,
    wasm_sha: &str,
    files_group: Option<&String>,
) -> toml::Value {
    let mut t = toml::value::Table::new();
    t.insert("source".into(), wasm_sha.into());
    t.insert("id".into(), c.id.clone().into());
    if let Some(d) = &c.description {
        t.insert("description".into(), d.clone().into());
    }
    if let Some(g) = files_group {
        t.insert("files".into(), g.clone().into());
    }
    let lists = [
        ("allowedHttpHosts", &c.allowed_http_hosts),
        ("keyValueStores", &c.key_value_stores),
        ("sqliteDatabases", &c.sqlite_databases),
        ("aiModels", &c.ai_models),
    ];
    for (key, list) in lists {
        if let Some(list) = list {
            t.insert(key.into(), list.clone().into());
        }
    }
    if let Some(env) = &c.environment {
        let table: toml::value::Table = env
            .iter()
            .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
            .collect();
        t.insert("environment".into(), toml::Value::Table(table));
    }
    if let Some(trigger) = &c.trigger {
        t.insert("trigger".into(), trigger.clone());
    }
    if let Some(config) = &c.config {
        t.insert("config".into(), config.clone());
    }
    toml::Value::Table(t)
}

/// A component's assets, by their name in the bindle. With `root`, a directory resolving
/// outside it is refused rather than walked.
fn collect_assets(
    dir: &Path,
    component: &SpinComponent,
    manifest_path: &Path,
    root: Option<&Path>,
) -> Result<Vec<Asset>, PackageError> {
    let excludes = component
        .exclude_files
        .iter()
        .map(|p| glob::Pattern::new(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            PackageError::invalid(
                manifest_path,
                format!("component {}: bad exclude_files pattern: {e}", component.id),
            )
        })?;
    let mut out: BTreeMap<String, PathBuf> = BTreeMap::new();
    for mount in component.files.iter().flatten() {
        match mount {
            FileMount::Pattern(pattern) => {
                let bad_pattern = |e: glob::PatternError| {
                    PackageError::invalid(
                        manifest_path,
                        format!(
                            "component {}: bad files pattern {pattern:?}: {e}",
                            component.id
                        ),
                    )
                };
                for path in glob_files(dir, pattern, root).map_err(|e| match e {
                    GlobError::Pattern(e) => bad_pattern(e),
                    GlobError::Walk(e) => e,
                })? {
                    if !path.is_file() {
                        continue;
                    }
                    let rel = relative(&path, dir);
                    if !excludes.iter().any(|p| p.matches(&rel)) {
                        out.insert(rel, path);
                    }
                }
            }
            FileMount::Placement {
                source,
                destination,
            } => {
                let source_dir = dir.join(source);
                if !source_dir.is_dir() {
                    return Err(PackageError::invalid(
                        manifest_path,
                        format!(
                            "component {}: files source {} is not a directory",
                            component.id,
                            source_dir.display()
                        ),
                    ));
                }
                let dest = destination.trim_start_matches('/');
                for path in walk_files(&source_dir, root)? {
                    let rel_to_root = relative(&path, &source_dir);
                    let rel_to_app = relative(&path, dir);
                    if excludes.iter().any(|p| p.matches(&rel_to_app)) {
                        continue;
                    }
                    let name = if dest.is_empty() {
                        rel_to_root
                    } else {
                        format!("{}/{rel_to_root}", dest.trim_end_matches('/'))
                    };
                    out.insert(name, path);
                }
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|(name, path)| Asset { name, path })
        .collect())
}

fn relative(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Every regular file below `dir`, sorted; symlink loops end (each directory is entered once).
fn walk_files(dir: &Path, root: Option<&Path>) -> Result<Vec<PathBuf>, PackageError> {
    Ok(walk_confined(dir, root)?
        .into_iter()
        .filter(|p| p.is_file())
        .collect())
}

/// [`crate::walk::entries`] below `dir`; with `root`, a directory resolving outside it is an
/// error (it is not entered).
fn walk_confined(dir: &Path, root: Option<&Path>) -> Result<Vec<PathBuf>, PackageError> {
    confined(dir, root)?;
    let mut refused = None;
    let entries = crate::walk::entries(dir, |d| match confined(d, root) {
        Ok(()) => true,
        Err(e) => {
            refused.get_or_insert(e);
            false
        }
    })
    .map_err(|e| PackageError::io(&e.dir)(e.source))?;
    match refused {
        Some(e) => Err(e),
        None => Ok(entries),
    }
}

enum GlobError {
    Pattern(glob::PatternError),
    Walk(PackageError),
}

/// The paths below `dir` matching `pattern` (as `glob::glob` would find them, `*` within one
/// path component), found by walking the pattern's literal leading directories with
/// [`crate::walk`], so that symlink loops end.
fn glob_files(dir: &Path, pattern: &str, root: Option<&Path>) -> Result<Vec<PathBuf>, GlobError> {
    let full = dir.join(pattern);
    let mut base = PathBuf::new();
    let mut rest = Vec::new();
    for c in full.components() {
        let part = c.as_os_str().to_string_lossy();
        if rest.is_empty() && !part.contains(['*', '?', '[']) {
            base.push(c);
        } else {
            rest.push(part.into_owned());
        }
    }
    if rest.is_empty() {
        return Ok(if base.exists() { vec![base] } else { vec![] });
    }
    let matcher = glob::Pattern::new(&rest.join("/")).map_err(GlobError::Pattern)?;
    if !base.is_dir() {
        return Ok(vec![]);
    }
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let entries = walk_confined(&base, root).map_err(GlobError::Walk)?;
    Ok(entries
        .into_iter()
        .filter(|p| {
            p.strip_prefix(&base)
                .is_ok_and(|rel| matcher.matches_path_with(rel, options))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, bytes: &[u8]) {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }

    const SPIN: &str = r#"spin_manifest_version = "1"
name = "hello"
version = "1.2.0"
trigger = { type = "http", base = "/" }
[[component]]
id = "hello"
source = "hello.wasm"
files = ["static/**/*", { source = "assets", destination = "/" }]
exclude_files = ["static/skip.txt"]
[component.trigger]
route = "/..."
"#;

    /// The `SPIN` app with one module, one static page and one mounted asset.
    fn hello_app(dir: &Path) {
        write(dir, "spin.toml", SPIN.as_bytes());
        write(dir, "hello.wasm", b"\0asm\x01\0\0\0");
        write(dir, "static/index.html", b"<h1>hi</h1>");
        write(dir, "assets/a.txt", b"a");
    }

    #[test]
    fn spin_app_becomes_a_bindle_with_manifest_wasm_and_assets() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "spin.toml", SPIN.as_bytes());
        write(dir.path(), "hello.wasm", b"\0asm\x01\0\0\0");
        write(dir.path(), "static/index.html", b"<h1>hi</h1>");
        write(dir.path(), "static/skip.txt", b"skip");
        write(dir.path(), "assets/a/b.txt", b"b");
        let b = load(dir.path()).unwrap();
        assert_eq!(b.id.to_string(), "hello/1.2.0");
        let names: Vec<_> = b
            .invoice
            .parcel
            .iter()
            .flatten()
            .map(|p| p.label.name.as_str())
            .collect();
        let manifest = b.invoice.parcel.as_ref().unwrap()[0].clone();
        assert_eq!(
            names,
            [
                format!("spin.{}.toml", manifest.label.sha256).as_str(),
                "hello.wasm",
                "a/b.txt",
                "static/index.html"
            ]
        );
        assert_eq!(manifest.label.media_type, SPIN_MANIFEST_MEDIA_TYPE);
        let text = String::from_utf8(b.parcels[&manifest.label.sha256].read().unwrap()).unwrap();
        let wasm_sha = format!("{:x}", Sha256::digest(b"\0asm\x01\0\0\0"));
        assert!(text.contains(&format!("source = \"{wasm_sha}\"")), "{text}");
        assert!(text.contains("files = \"files-hello\""), "{text}");
        assert!(text.contains("route = \"/...\""), "{text}");
        assert_eq!(b.parcels.len(), 4);
        assert_eq!(b.total_bytes(), manifest.label.size + 8 + 11 + 1);
    }

    #[test]
    fn a_kept_bindle_is_packed_again_only_while_its_content_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        hello_app(dir.path());
        let packed = load(dir.path()).unwrap();
        let kept = LocalBindle::from(&packed);
        assert_eq!(kept.id, packed.id);
        assert_eq!(kept.parcel_count, packed.parcels.len());
        assert_eq!(kept.total_bytes, packed.total_bytes());
        assert!(kept.same_parcels(&ParcelSet::of(
            packed.parcel_shas().iter().map(String::as_str)
        )));

        let again = kept.pack().unwrap();
        assert_eq!(again.parcel_shas(), packed.parcel_shas());
        assert_eq!(again.invoice.parcel, packed.invoice.parcel);

        // Edited after it was loaded: refused, nothing else is pushed in its name.
        write(dir.path(), "static/index.html", b"<h1>changed</h1>");
        let err = kept.pack().unwrap_err().to_string();
        assert!(err.contains("changed on disk since it was loaded"), "{err}");
        // Gone: refused too.
        fs::remove_file(dir.path().join("hello.wasm")).unwrap();
        assert!(kept.pack().is_err());
    }

    #[test]
    fn the_pack_cache_reuses_a_bindle_until_a_file_packing_reads_changes() {
        let dir = tempfile::tempdir().unwrap();
        hello_app(dir.path());
        // Metadata trusted at once here; the settling rule has its own test below.
        let cache = PackCache::with_settle(std::time::Duration::ZERO);
        let first = cache.load(dir.path(), None).unwrap().local;
        assert_eq!(cache.packs(), 1);
        let again = cache.load(dir.path(), None).unwrap().local;
        assert_eq!((cache.packs(), &again), (1, &first), "reused, nothing read");
        assert!(std::sync::Arc::ptr_eq(&first, &again), "shared, not copied");
        assert_eq!(*first, LocalBindle::from(&load(dir.path()).unwrap()));

        // Each kind of change is noticed, and packs afresh.
        let mut packs = 1;
        let mut expect_repack = |what: &str, cache: &PackCache| {
            let got = cache.load(dir.path(), None).unwrap().local;
            packs += 1;
            assert_eq!(cache.packs(), packs, "{what}");
            assert_eq!(
                *got,
                LocalBindle::from(&load(dir.path()).unwrap()),
                "{what}"
            );
            got
        };
        write(dir.path(), "static/index.html", b"<h1>changed</h1>");
        let changed = expect_repack("an asset's content", &cache);
        assert_ne!(changed.parcels, first.parcels);
        write(dir.path(), "static/new/page.html", b"new");
        let added = expect_repack("a new file the glob finds", &cache);
        assert_eq!(added.parcel_count, changed.parcel_count + 1);
        fs::remove_file(dir.path().join("static/new/page.html")).unwrap();
        expect_repack("a file removed", &cache);
        write(
            dir.path(),
            "spin.toml",
            SPIN.replace("/...", "/x/...").as_bytes(),
        );
        expect_repack("the manifest", &cache);
        write(dir.path(), "static/skip.txt", b"excluded by the manifest");
        let before = cache.packs();
        cache.load(dir.path(), None).unwrap();
        assert_eq!(
            cache.packs(),
            before,
            "a file packing does not read changes nothing"
        );

        // A bindle that cannot be packed is an error every time, never a stale entry.
        fs::remove_file(dir.path().join("hello.wasm")).unwrap();
        assert!(cache.load(dir.path(), None).is_err());
        assert!(cache.load(dir.path(), None).is_err());
        cache.retain(&BTreeSet::new());
        assert!(cache.is_empty());
    }

    #[test]
    fn the_pack_cache_tells_whether_a_bindle_is_unchanged_without_packing_it() {
        let dir = tempfile::tempdir().unwrap();
        hello_app(dir.path());
        let cache = PackCache::with_settle(std::time::Duration::ZERO);
        let first = cache.load(dir.path(), None).unwrap().local;
        assert!(cache.unchanged([&first]));
        // Only the bindle the cache packed: another copy of the same content may be stale.
        let copy = Arc::new(LocalBindle::from(&load(dir.path()).unwrap()));
        assert!(!cache.unchanged([&copy]));

        write(dir.path(), "static/index.html", b"<h1>changed</h1>");
        assert!(!cache.unchanged([&first]), "an asset changed");
        assert_eq!(cache.packs(), 1, "nothing packed to tell");
        let second = cache.load(dir.path(), None).unwrap().local;
        assert!(cache.unchanged([&second]));
        assert!(!cache.unchanged([&second, &first]), "the replaced entry");

        // Packed while too fresh to be judged by metadata: never taken as unchanged.
        let settling = PackCache::default();
        let fresh = settling.load(dir.path(), None).unwrap().local;
        assert!(!settling.unchanged([&fresh]));
    }

    #[test]
    fn files_changed_within_the_settling_time_are_packed_every_time() {
        // Timestamps are coarser than writes can be apart: a file written just now could be
        // written again with the same size and times, so it is not judged by them.
        let dir = tempfile::tempdir().unwrap();
        hello_app(dir.path());
        let cache = PackCache::default();
        cache.load(dir.path(), None).unwrap();
        cache.load(dir.path(), None).unwrap();
        assert_eq!(cache.packs(), 2);
        assert!(cache.is_empty());
    }

    #[test]
    fn parcel_sets_ignore_order_and_repeats_and_tell_contents_apart() {
        assert_eq!(ParcelSet::of(["a", "b"]), ParcelSet::of(["b", "a", "b"]));
        assert_ne!(ParcelSet::of(["a", "b"]), ParcelSet::of(["a"]));
        // The separator keeps "ab" + "c" apart from "a" + "bc".
        assert_ne!(ParcelSet::of(["ab", "c"]), ParcelSet::of(["a", "bc"]));
    }

    #[test]
    fn same_content_gives_same_parcels_and_changed_content_differs() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "spin.toml", SPIN.as_bytes());
        write(dir.path(), "hello.wasm", b"one");
        write(dir.path(), "assets/x.txt", b"x");
        let a = load(dir.path()).unwrap();
        let a2 = load(dir.path()).unwrap();
        assert_eq!(a.parcel_shas(), a2.parcel_shas());
        write(dir.path(), "hello.wasm", b"two");
        let b = load(dir.path()).unwrap();
        assert_ne!(a.parcel_shas(), b.parcel_shas());
    }

    #[test]
    fn missing_wasm_and_v2_manifests_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "spin.toml", SPIN.as_bytes());
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("source") && err.contains("not found"), "{err}");
        write(
            dir.path(),
            "spin.toml",
            SPIN.replace("spin_manifest_version = \"1\"", "spin_manifest_version = 2")
                .as_bytes(),
        );
        write(dir.path(), "hello.wasm", b"x");
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("manifest version 2 is not supported (Hippo runs Spin manifest v1)"),
            "{err}"
        );
        // A v2 manifest has no `name` at the top: the version is named, not the missing key.
        write(
            dir.path(),
            "spin.toml",
            b"spin_manifest_version = 2\n[application]\nname = \"x\"\n",
        );
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("manifest version 2 is not supported"), "{err}");
    }

    fn manifest_text(b: &PackedBindle) -> String {
        let manifest = &b.invoice.parcel.as_ref().unwrap()[0];
        assert_eq!(manifest.label.media_type, SPIN_MANIFEST_MEDIA_TYPE);
        String::from_utf8(b.parcels[&manifest.label.sha256].read().unwrap()).unwrap()
    }

    #[test]
    fn every_asset_path_is_its_own_parcel_even_with_equal_content() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = b"\0asm\x01\0\0\0";
        write(
            dir.path(),
            "spin.toml",
            SPIN.replace("exclude_files = [\"static/skip.txt\"]\n", "")
                .as_bytes(),
        );
        write(dir.path(), "hello.wasm", wasm);
        write(dir.path(), "static/a.txt", b"same");
        write(dir.path(), "static/b.txt", b"same");
        write(dir.path(), "static/empty1", b"");
        write(dir.path(), "static/sub/.gitkeep", b"");
        write(dir.path(), "static/module-copy.wasm", wasm);
        fs::create_dir_all(dir.path().join("assets")).unwrap();
        let b = load(dir.path()).unwrap();
        let parcels = b.invoice.parcel.as_ref().unwrap();
        let names: BTreeSet<&str> = parcels.iter().map(|p| p.label.name.as_str()).collect();
        for path in [
            "hello.wasm",
            "static/a.txt",
            "static/b.txt",
            "static/empty1",
            "static/sub/.gitkeep",
            "static/module-copy.wasm",
        ] {
            assert!(names.contains(path), "{path} missing from {names:?}");
        }
        assert_eq!(parcels.len(), 7, "manifest + module + 5 asset paths");
        let copy = parcels
            .iter()
            .find(|p| p.label.name == "static/module-copy.wasm")
            .unwrap();
        assert_eq!(
            copy.conditions.as_ref().unwrap().member_of,
            Some(vec!["files-hello".to_string()]),
            "an asset equal to the module is an asset of its own"
        );
        // Bytes are stored once per digest: 4 distinct contents + the manifest.
        assert_eq!(b.parcels.len(), 4);
    }

    #[test]
    fn one_path_mounted_by_two_components_is_one_parcel_in_both_groups() {
        let dir = tempfile::tempdir().unwrap();
        let two = format!(
            "{SPIN}[[component]]\nid = \"other\"\nsource = \"hello.wasm\"\nfiles = [\"static/index.html\"]\n[component.trigger]\nroute = \"/other\"\n"
        );
        write(dir.path(), "spin.toml", two.as_bytes());
        write(dir.path(), "hello.wasm", b"\0asm\x01\0\0\0");
        write(dir.path(), "static/index.html", b"<h1>hi</h1>");
        fs::create_dir_all(dir.path().join("assets")).unwrap();
        let b = load(dir.path()).unwrap();
        let parcels = b.invoice.parcel.as_ref().unwrap();
        let index: Vec<&Parcel> = parcels
            .iter()
            .filter(|p| p.label.name == "static/index.html")
            .collect();
        assert_eq!(index.len(), 1);
        assert_eq!(
            index[0].conditions.as_ref().unwrap().member_of,
            Some(vec!["files-hello".to_string(), "files-other".to_string()])
        );
        assert_eq!(
            parcels
                .iter()
                .filter(|p| p.label.name == "hello.wasm")
                .count(),
            1,
            "consecutive equal modules are one parcel"
        );
    }

    #[test]
    fn spin_manifest_keys_of_every_version_reach_the_bindle_manifest() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "hello.wasm", b"\0asm\x01\0\0\0");
        // Spin v0.3–v0.4: application config under `config`.
        let v04 = "spin_version = \"1\"\nname = \"hello\"\nversion = \"1.0.0\"\ntrigger = { type = \"http\", base = \"/\" }\n[config]\ngreeting = { default = \"hi\" }\n[[component]]\nid = \"hello\"\nsource = \"hello.wasm\"\n[component.trigger]\nroute = \"/...\"\n[component.config]\nmessage = \"{{ greeting }}\"\n";
        write(dir.path(), "spin.toml", v04.as_bytes());
        let text = manifest_text(&load(dir.path()).unwrap());
        assert!(
            text.contains("[config.greeting]") || text.contains("[config]"),
            "{text}"
        );
        assert!(text.contains("message = \"{{ greeting }}\""), "{text}");
        assert!(
            !text.contains("files"),
            "no files declared, no group named: {text}"
        );

        // Spin v0.5 on: `variables`; v0.9 key-value stores; v1.3 SQLite; v1.5 AI models.
        let v15 = "spin_manifest_version = \"1\"\nname = \"hello\"\nversion = \"1.0.0\"\ntrigger = { type = \"http\", base = \"/\" }\n[variables]\ntoken = { required = true, secret = true }\n[[component]]\nid = \"hello\"\nsource = \"hello.wasm\"\nfiles = []\nkey_value_stores = [\"default\"]\nsqlite_databases = [\"default\"]\nai_models = [\"llama2-chat\"]\n[component.trigger]\nroute = \"/...\"\n[component.build]\ncommand = \"cargo build\"\n";
        write(dir.path(), "spin.toml", v15.as_bytes());
        let text = manifest_text(&load(dir.path()).unwrap());
        for expected in [
            "keyValueStores = [\"default\"]",
            "sqliteDatabases = [\"default\"]",
            "aiModels = [\"llama2-chat\"]",
            "files = \"files-hello\"",
        ] {
            assert!(text.contains(expected), "{expected} missing: {text}");
        }
        assert!(
            text.contains("[variables.token]") || text.contains("[variables]"),
            "{text}"
        );
        assert!(!text.contains("build"), "build settings stay local: {text}");

        // A key no Spin version has: refused with its line, never dropped.
        write(
            dir.path(),
            "spin.toml",
            v15.replace("ai_models", "ai_modles").as_bytes(),
        );
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("ai_modles") && err.contains("line"), "{err}");
        // `config` and `variables` together fit no Spin version.
        write(
            dir.path(),
            "spin.toml",
            v15.replace(
                "[variables]",
                "[config]\nx = { default = \"1\" }\n[variables]",
            )
            .as_bytes(),
        );
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("same setting under two names"), "{err}");
    }

    #[test]
    fn standalone_bindle_is_checked_against_its_invoice() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"parcel-bytes";
        let sha = format!("{:x}", Sha256::digest(data));
        let invoice = format!(
            "bindleVersion = \"1.0.0\"\n[bindle]\nname = \"inv\"\nversion = \"0.3.0\"\n\n[[parcel]]\n[parcel.label]\nsha256 = \"{sha}\"\nmediaType = \"text/plain\"\nname = \"p.txt\"\nsize = {}\n",
            data.len()
        );
        write(dir.path(), "invoice.toml", invoice.as_bytes());
        write(dir.path(), &format!("parcels/{sha}.dat"), data);
        let b = load(dir.path()).unwrap();
        assert_eq!(b.id.to_string(), "inv/0.3.0");
        assert_eq!(
            b.parcel_shas().into_iter().collect::<Vec<_>>(),
            vec![sha.clone()]
        );
        write(dir.path(), &format!("parcels/{sha}.dat"), b"tampered");
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("does not match the invoice"), "{err}");
    }

    #[test]
    fn unknown_layout_and_missing_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load(dir.path()),
            Err(PackageError::UnknownLayout(_))
        ));
        assert!(matches!(
            load(&dir.path().join("nope")),
            Err(PackageError::NotFound(_))
        ));
    }
}
