//! Local bindles: what a `path:` revision in a deploy file turns into.
//!
//! Two layouts are accepted:
//! - a Spin app directory (`spin.toml`, manifest v1, plus its built wasm and assets), expanded
//!   into a bindle the way `spin bindle push` does: one parcel per module, one per asset, and a
//!   generated `spin.toml` manifest parcel that Hippo reads;
//! - a standalone bindle directory (`invoice.toml` + `parcels/<sha256>.dat`), as written by
//!   `bindle` / `spin bindle prepare`.
//!
//! Reading is local and synchronous; nothing here talks to a server. Parcel bytes stay on disk
//! until upload, so large apps don't sit in memory.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Read,
    path::{Path, PathBuf},
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
    /// Reads the parcel's bytes.
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
    if let Some(root) = root {
        // The manifest or invoice is read (and its parse errors quoted) before any parcel.
        for name in ["spin.toml", "invoice.toml"] {
            let path = dir.join(name);
            if let Ok(real) = path.canonicalize() {
                if !real.starts_with(root) {
                    return Err(PackageError::invalid(
                        &path,
                        format!(
                            "resolves through a symlink to {}, outside the repository root {}; not read",
                            real.display(),
                            root.display()
                        ),
                    ));
                }
            }
        }
    }
    let packed = load(dir)?;
    Ok(Loaded {
        outside_root: root.and_then(|r| parcels_outside_root(&packed, r)),
        local: std::sync::Arc::new(LocalBindle::from(&packed)),
    })
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
        let stamp = input_stamp(dir, self.settle).ok().flatten();
        if let Some(stamp) = stamp {
            let entries = self.entries.lock().expect("pack cache");
            if let Some((s, loaded)) = entries.get(&key) {
                if *s == stamp {
                    return Ok(loaded.clone());
                }
            }
        }
        self.packs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let loaded = pack_for_spec(dir, root);
        let mut entries = self.entries.lock().expect("pack cache");
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

    /// Forgets the directories not in `keep` (apps removed from the deploy files).
    pub fn retain(&self, keep: &BTreeSet<PathBuf>) {
        self.entries
            .lock()
            .expect("pack cache")
            .retain(|(dir, _), _| keep.contains(dir));
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("pack cache").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A digest of everything packing `dir` reads, by file metadata rather than content; `None`
/// when a file changed too recently to be judged by its metadata.
fn input_stamp(dir: &Path, settle: std::time::Duration) -> Result<Option<[u8; 32]>, PackageError> {
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    let mut files: Vec<PathBuf> = Vec::new();
    let spin = dir.join("spin.toml");
    if spin.is_file() {
        let text = fs::read(&spin).map_err(PackageError::io(&spin))?;
        h.update(&text);
        let manifest: SpinManifest =
            toml::from_slice(&text).map_err(|e| PackageError::invalid(&spin, e.to_string()))?;
        for component in &manifest.component {
            if let toml::Value::String(source) = &component.source {
                files.push(dir.join(source));
            }
            files.extend(
                collect_assets(dir, component, &spin)?
                    .into_iter()
                    .map(|a| a.path),
            );
        }
    } else {
        let invoice_path = dir.join("invoice.toml");
        let text = fs::read(&invoice_path).map_err(PackageError::io(&invoice_path))?;
        h.update(&text);
        let invoice: Invoice = toml::from_slice(&text)
            .map_err(|e| PackageError::invalid(&invoice_path, e.to_string()))?;
        for parcel in invoice.parcel.iter().flatten() {
            files.push(
                dir.join("parcels")
                    .join(format!("{}.dat", parcel.label.sha256)),
            );
        }
    }
    // Whole seconds, rounded so that a file changed within `settle` is never trusted.
    let settled_before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.saturating_sub(settle)).as_secs() as i64)
        .unwrap_or(0);
    for path in files {
        let m = fs::metadata(&path).map_err(PackageError::io(&path))?;
        if !settle.is_zero() && (m.ctime() >= settled_before || m.mtime() >= settled_before) {
            return Ok(None);
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
    }
    Ok(Some(h.finalize().into()))
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

/// Reads the app or bindle at `dir`.
pub fn load(dir: &Path) -> Result<PackedBindle, PackageError> {
    if !dir.exists() {
        return Err(PackageError::NotFound(dir.to_path_buf()));
    }
    if dir.join("spin.toml").is_file() {
        load_spin_app(dir)
    } else if dir.join("invoice.toml").is_file() {
        load_standalone(dir)
    } else {
        Err(PackageError::UnknownLayout(dir.to_path_buf()))
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

#[derive(Deserialize)]
struct SpinManifest {
    spin_manifest_version: Option<toml::Value>,
    spin_version: Option<toml::Value>,
    name: String,
    version: String,
    description: Option<String>,
    authors: Option<Vec<String>>,
    trigger: toml::Value,
    variables: Option<toml::Value>,
    #[serde(default)]
    component: Vec<SpinComponent>,
}

#[derive(Deserialize)]
struct SpinComponent {
    id: String,
    source: toml::Value,
    description: Option<String>,
    #[serde(default)]
    files: Vec<FileMount>,
    #[serde(default)]
    exclude_files: Vec<String>,
    allowed_http_hosts: Option<Vec<String>>,
    key_value_stores: Option<Vec<String>>,
    environment: Option<BTreeMap<String, String>>,
    trigger: Option<toml::Value>,
    config: Option<toml::Value>,
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

fn load_spin_app(dir: &Path) -> Result<PackedBindle, PackageError> {
    let manifest_path = dir.join("spin.toml");
    let text = fs::read_to_string(&manifest_path).map_err(PackageError::io(&manifest_path))?;
    check_manifest_version(&manifest_path, &text)?;
    let manifest: SpinManifest = toml::from_str(&text)
        .map_err(|e| PackageError::invalid(&manifest_path, format!("invalid spin.toml: {e}")))?;
    let schema = manifest
        .spin_manifest_version
        .as_ref()
        .or(manifest.spin_version.as_ref());
    let is_v1 = match schema {
        Some(toml::Value::String(s)) => s == "1",
        Some(toml::Value::Integer(1)) => true,
        _ => false,
    };
    if !is_v1 {
        return Err(PackageError::invalid(
            &manifest_path,
            "only spin manifest version 1 (`spin_manifest_version = \"1\"`) can run on Hippo",
        ));
    }
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
    let mut parcel_list: Vec<Parcel> = Vec::new();
    let mut groups = Vec::new();
    let mut components = Vec::new();
    let mut seen = BTreeSet::new();
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
        let (wasm_sha, wasm_size) = sha256_file(&wasm_path)?;
        if seen.insert(wasm_sha.clone()) {
            parcel_list.push(Parcel {
                label: Label {
                    sha256: wasm_sha.clone(),
                    media_type: "application/wasm".into(),
                    name: source.clone(),
                    size: wasm_size,
                    annotations: None,
                    feature: None,
                    origin: None,
                },
                conditions: Some(Condition {
                    member_of: None,
                    requires: None,
                }),
            });
            parcels.insert(wasm_sha.clone(), ParcelSource::File(wasm_path));
        }

        let group = format!("files-{}", component.id);
        let assets = collect_assets(dir, component, &manifest_path)?;
        let has_files = !assets.is_empty();
        for asset in assets {
            let (sha, size) = sha256_file(&asset.path)?;
            // The same bytes can be mounted by several components: one parcel, many groups.
            if let Some(existing) = parcel_list.iter_mut().find(|p| p.label.sha256 == sha) {
                let cond = existing.conditions.get_or_insert(Condition {
                    member_of: None,
                    requires: None,
                });
                let groups = cond.member_of.get_or_insert_with(Vec::new);
                if !groups.contains(&group) {
                    groups.push(group.clone());
                }
                continue;
            }
            parcel_list.push(Parcel {
                label: Label {
                    sha256: sha.clone(),
                    media_type: mime_guess::from_path(&asset.path)
                        .first_or_octet_stream()
                        .to_string(),
                    name: asset.name,
                    size,
                    annotations: None,
                    feature: None,
                    origin: None,
                },
                conditions: Some(Condition {
                    member_of: Some(vec![group.clone()]),
                    requires: None,
                }),
            });
            seen.insert(sha.clone());
            parcels.insert(sha, ParcelSource::File(asset.path));
        }
        groups.push(Group {
            name: group.clone(),
            required: None,
            satisfied_by: None,
        });
        components.push(bindle_component(
            component,
            &wasm_sha,
            has_files.then_some(&group),
        ));
    }

    // The manifest Hippo reads: Spin's bindle schema (camelCase, sources as parcel digests).
    let mut doc = toml::value::Table::new();
    doc.insert("trigger".into(), manifest.trigger.clone());
    if let Some(vars) = &manifest.variables {
        doc.insert("variables".into(), vars.clone());
    }
    doc.insert("component".into(), toml::Value::Array(components));
    let manifest_bytes = toml::to_string(&toml::Value::Table(doc))
        .map_err(|e| PackageError::invalid(&manifest_path, format!("rendering manifest: {e}")))?
        .into_bytes();
    let manifest_sha = format!("{:x}", Sha256::digest(&manifest_bytes));
    parcel_list.insert(
        0,
        Parcel {
            label: Label {
                sha256: manifest_sha.clone(),
                media_type: SPIN_MANIFEST_MEDIA_TYPE.into(),
                name: "spin.toml".into(),
                size: manifest_bytes.len() as u64,
                annotations: None,
                feature: None,
                origin: None,
            },
            conditions: None,
        },
    );
    parcels.insert(manifest_sha, ParcelSource::Bytes(manifest_bytes));

    let mut invoice = Invoice::new(BindleSpec {
        id: id.clone(),
        description: manifest.description.clone(),
        authors: manifest.authors.clone(),
    });
    invoice.parcel = Some(parcel_list);
    invoice.group = Some(groups);
    Ok(PackedBindle {
        id,
        invoice,
        parcels,
        dir: dir.to_path_buf(),
    })
}

/// A Spin v2 manifest (`spin_manifest_version = 2`) has no top-level `name`: say which version
/// it is before its fields are read as v1's.
fn check_manifest_version(manifest_path: &Path, text: &str) -> Result<(), PackageError> {
    let Ok(toml::Value::Table(table)) = toml::from_str::<toml::Value>(text) else {
        return Ok(()); // The syntax error is reported when the manifest is read.
    };
    let version = match table.get("spin_manifest_version") {
        Some(toml::Value::Integer(n)) => n.to_string(),
        Some(toml::Value::String(s)) => s.clone(),
        _ => return Ok(()),
    };
    if version == "1" {
        return Ok(());
    }
    Err(PackageError::invalid(
        manifest_path,
        format!(
            "manifest version {} is not supported (Hippo runs Spin manifest v1)",
            crate::spec::excerpt::short(&version)
        ),
    ))
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
    if let Some(h) = &c.allowed_http_hosts {
        t.insert("allowedHttpHosts".into(), h.clone().into());
    }
    if let Some(k) = &c.key_value_stores {
        t.insert("keyValueStores".into(), k.clone().into());
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

fn collect_assets(
    dir: &Path,
    component: &SpinComponent,
    manifest_path: &Path,
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
    for mount in &component.files {
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
                for path in glob_files(dir, pattern).map_err(|e| match e {
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
                let root = dir.join(source);
                if !root.is_dir() {
                    return Err(PackageError::invalid(
                        manifest_path,
                        format!(
                            "component {}: files source {} is not a directory",
                            component.id,
                            root.display()
                        ),
                    ));
                }
                let dest = destination.trim_start_matches('/');
                for path in walk_files(&root)? {
                    let rel_to_root = relative(&path, &root);
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

/// Every regular file below `root`, sorted; symlink loops end (each directory is entered once).
fn walk_files(root: &Path) -> Result<Vec<PathBuf>, PackageError> {
    let entries =
        crate::walk::entries(root, |_| true).map_err(|e| PackageError::io(&e.dir)(e.source))?;
    Ok(entries.into_iter().filter(|p| p.is_file()).collect())
}

enum GlobError {
    Pattern(glob::PatternError),
    Walk(PackageError),
}

/// The paths below `dir` matching `pattern` (as `glob::glob` would find them, `*` within one
/// path component), found by walking the pattern's literal leading directories with
/// [`crate::walk`], so that symlink loops end.
fn glob_files(dir: &Path, pattern: &str) -> Result<Vec<PathBuf>, GlobError> {
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
    let entries = crate::walk::entries(&base, |_| true)
        .map_err(|e| GlobError::Walk(PackageError::io(&e.dir)(e.source)))?;
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
        assert_eq!(
            names,
            ["spin.toml", "hello.wasm", "a/b.txt", "static/index.html"]
        );
        let manifest = b.invoice.parcel.as_ref().unwrap()[0].clone();
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
            err.ends_with("manifest version 2 is not supported (Hippo runs Spin manifest v1)"),
            "{err}"
        );
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
