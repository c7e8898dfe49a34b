//! Semantic checks on parsed deploy files. Pure apart from reading local app directories.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Component, Path, PathBuf},
};

use super::{
    excerpt::{quoted, short},
    AppSpec, ChannelSpec, DesiredState, Diagnostic, DiscoverSpec, LoadOptions, Origin,
    ParsedDocument, ProbeSpec, PromoteSpec, RawChannel, RawPromote, RevisionSource, RevisionSpec,
    ScalarString, Selector, API_VERSION, DEFAULT_ROOT_HINT,
};
use crate::{duration::parse_duration, package, range_rule};

/// `^[a-zA-Z0-9_-]{1,max}$`
pub(super) fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `^[a-zA-Z0-9_/-]{1,200}$`: Hippo's revision registration rejects `.` even where app creation
/// accepts it, so the stricter rule wins.
fn is_storage_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '/')
}

/// The DNS limit on one label of a domain name.
const MAX_LABEL: usize = 63;

/// Hippo's domain rule: `^([a-z0-9]+(-[a-z0-9]+)*\.)+[a-z]{2,}$`.
pub(crate) fn is_domain(s: &str) -> bool {
    let labels: Vec<&str> = s.split('.').collect();
    if labels.len() < 2 {
        return false;
    }
    let (tld, rest) = labels.split_last().expect("at least two labels");
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && !l.contains("--")
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    tld.len() >= 2
        && tld.chars().all(|c| c.is_ascii_lowercase())
        && rest.iter().all(|l| label_ok(l))
}

pub(super) fn is_env_key(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a range the way Hippo evaluates it (the one parser, [`crate::range_rule`]):
/// node-semver syntax, or Hippo's own prerelease form `P:<range>-<name>-*`.
pub(crate) fn check_range(range: &str) -> Result<(), String> {
    if range.trim().is_empty() {
        return Err("must not be empty (Hippo rejects an empty range rule)".into());
    }
    if let Some(inner) = range_rule::range_part(range).filter(|r| r.contains(',')) {
        // The `semver` crate's requirement syntax; Hippo's node-semver parser does not take it.
        return Err(format!(
            "invalid node-semver range {}: comparators are separated by spaces, not commas (write \">=1.0.0 <2.0.0\")",
            quoted(inner)
        ));
    }
    // The error quotes the whole range: only an excerpt of it is shown.
    range_rule::RangeRule::parse(range)
        .map(|_| ())
        .map_err(|e| match e {
            range_rule::RangeRuleError::InvalidRange { range, message } => format!(
                "invalid node-semver range {}: {}",
                quoted(&range),
                super::excerpt::short(&message)
            ),
            other => other.to_string(),
        })
}

fn check_version(v: &str) -> Result<semver::Version, String> {
    semver::Version::parse(v).map_err(|e| {
        format!(
            "invalid semantic version {}: {}",
            quoted(v),
            super::excerpt::short(&e.to_string())
        )
    })
}

/// The domain Hippo v0.19 assigns when none is given: it must pass Hippo's own domain rule, or
/// registering a revision that moves the channel fails with a 400 (HIPPO-API.md §13).
fn default_domain_label(name: &str) -> String {
    name.replace('_', "-").to_lowercase()
}

pub(super) fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

pub(super) fn validate(
    docs: Vec<ParsedDocument>,
    options: &LoadOptions,
    problems: &mut Vec<Diagnostic>,
) -> DesiredState {
    let mut apps = Vec::new();
    let mut app_names: HashMap<String, Origin> = HashMap::new();
    let mut domains: HashMap<String, Origin> = HashMap::new();
    // (storageId, version) → parcel digests, to catch two files pushing different content.
    let mut pushed: HashMap<(String, String), (package::ParcelSet, Origin)> = HashMap::new();

    for doc in &docs {
        let raw = &doc.raw;
        let before = problems.len();
        if raw.api_version != API_VERSION {
            problems.push(doc.diag(
                "apiVersion",
                format!(
                    "unsupported apiVersion {}; expected {API_VERSION:?}",
                    quoted(&raw.api_version)
                ),
            ));
        }
        if raw.kind != "App" {
            problems.push(doc.diag(
                "kind",
                format!("unknown kind {}; expected \"App\"", quoted(&raw.kind)),
            ));
        }
        let name = raw.metadata.name.clone();
        let here = |field: &str| Origin {
            file: doc.file.clone(),
            line: doc.positions.of(field).line,
        };
        if !is_name(&name, 128) {
            problems.push(doc.diag(
                "metadata.name",
                format!("{} is not a valid Hippo app name (letters, digits, '-' and '_', 1 to 128 characters)", quoted(&name)),
            ));
        } else if let Some(prev) = app_names.get(&name) {
            problems.push(doc.diag(
                "metadata.name",
                format!("app {name:?} is already defined at {prev}"),
            ));
        } else {
            app_names.insert(name.clone(), here("metadata.name"));
        }
        let storage_id = raw.spec.storage_id.clone().unwrap_or_else(|| name.clone());
        if !is_storage_id(&storage_id) {
            problems.push(doc.diag(
                if raw.spec.storage_id.is_some() { "spec.storageId" } else { "metadata.name" },
                format!("{} is not a valid storageId (letters, digits, '-', '_' and '/', 1 to 200 characters; Hippo's revision registration rejects '.')", quoted(&storage_id)),
            ));
        }

        // Revisions
        let mut revisions: Vec<(semver::Version, RevisionSpec)> = Vec::new();
        let mut versions_seen: HashMap<String, String> = HashMap::new();
        let mut discover: Vec<DiscoverSpec> = Vec::new();
        let mut discover_seen: HashMap<String, String> = HashMap::new();
        for (i, rev) in raw.spec.revisions.iter().enumerate() {
            let field = format!("spec.revisions[{i}]");
            let spec = match (&rev.version, &rev.path, &rev.discover) {
                (None, None, Some(range)) => {
                    let dfield = format!("{field}.discover");
                    if let Err(msg) = check_range(&range.0) {
                        problems.push(doc.diag(&dfield, msg));
                    } else if let Some(prev) = discover_seen.get(&range.0) {
                        problems.push(doc.diag(
                            &dfield,
                            format!(
                                "discover range {} is listed twice (also at {prev})",
                                quoted(&range.0)
                            ),
                        ));
                    } else {
                        discover_seen.insert(range.0.clone(), dfield.clone());
                        discover.push(DiscoverSpec {
                            range: range.0.clone(),
                            origin: here(&dfield),
                        });
                    }
                    continue;
                }
                (Some(v), None, None) => match check_version(&v.0) {
                    Ok(parsed) => (
                        parsed,
                        RevisionSpec {
                            version: v.0.clone(),
                            source: RevisionSource::Existing,
                        },
                        format!("{field}.version"),
                    ),
                    Err(msg) => {
                        problems.push(doc.diag(&format!("{field}.version"), msg));
                        continue;
                    }
                },
                (None, Some(p), None) => {
                    let pfield = format!("{field}.path");
                    // Against the deploy file's own absolute directory: `..` is never dropped,
                    // whatever the working directory.
                    let resolved = lexically_normal(&doc.base.join(p));
                    let hint = if options.root.is_none() {
                        DEFAULT_ROOT_HINT
                    } else {
                        ""
                    };
                    if let Some(root) = &doc.root {
                        if let Err(msg) = check_inside_root(&resolved, root) {
                            problems.push(doc.diag(&pfield, msg + hint));
                            continue;
                        }
                    }
                    let loaded = package::load_for_spec(
                        &resolved,
                        doc.root.as_deref(),
                        options.pack_cache.as_deref(),
                    );
                    let bindle = match loaded {
                        Ok(package::Loaded {
                            outside_root: Some(msg),
                            ..
                        }) => {
                            problems.push(doc.diag(&pfield, msg + hint));
                            continue;
                        }
                        Ok(l) => l.local,
                        Err(e @ package::PackageError::OutsideRoot { .. }) => {
                            problems.push(doc.diag(&pfield, e.to_string() + hint));
                            continue;
                        }
                        Err(e) => {
                            problems.push(doc.diag(&pfield, e.to_string()));
                            continue;
                        }
                    };
                    if bindle.id.name() != storage_id {
                        problems.push(doc.diag(
                            &pfield,
                            format!(
                                "the bindle at {} is named {}, but this app's storageId is {}; they must be equal",
                                resolved.display(),
                                quoted(bindle.id.name()),
                                quoted(&storage_id)
                            ),
                        ));
                        continue;
                    }
                    let version = bindle.id.version_string();
                    let parsed = match check_version(&version) {
                        Ok(v) => v,
                        Err(msg) => {
                            problems.push(doc.diag(&pfield, msg));
                            continue;
                        }
                    };
                    let key = (storage_id.clone(), version.clone());
                    let shas = bindle.parcels;
                    match pushed.get(&key) {
                        Some((other, at)) if *other != shas => {
                            problems.push(doc.diag(
                                &pfield,
                                format!("{storage_id}/{version} is also built at {at} with different content; bump the version of one of them"),
                            ));
                            continue;
                        }
                        Some(_) => {}
                        None => {
                            pushed.insert(key, (shas, here(&pfield)));
                        }
                    }
                    (
                        parsed,
                        RevisionSpec {
                            version,
                            source: RevisionSource::Local(bindle),
                        },
                        pfield,
                    )
                }
                _ => {
                    problems.push(
                        doc.diag(&field, "set exactly one of `version`, `path` or `discover`"),
                    );
                    continue;
                }
            };
            let (parsed, spec, vfield) = spec;
            if let Some(prev) = versions_seen.get(&spec.version) {
                problems.push(doc.diag(
                    &vfield,
                    format!("revision {} is listed twice (also at {prev})", spec.version),
                ));
                continue;
            }
            versions_seen.insert(spec.version.clone(), vfield);
            revisions.push((parsed, spec));
        }
        revisions.sort_by(|a, b| a.0.cmp(&b.0));

        // Channels
        let mut channels = Vec::new();
        let mut channel_names: HashMap<String, String> = HashMap::new();
        for (i, ch) in raw.spec.channels.iter().enumerate() {
            let field = format!("spec.channels[{i}]");
            let mut ok = true;
            if !is_name(&ch.name, 64) {
                problems.push(doc.diag(
                    &format!("{field}.name"),
                    format!("{} is not a valid channel name (letters, digits, '-' and '_', 1 to 64 characters)", quoted(&ch.name)),
                ));
                ok = false;
            } else if channel_names.contains_key(&ch.name) {
                problems.push(doc.diag(
                    &format!("{field}.name"),
                    format!(
                        "channel {} is listed twice in app {}",
                        quoted(&ch.name),
                        quoted(&name)
                    ),
                ));
                ok = false;
            } else {
                channel_names.insert(ch.name.clone(), field.clone());
            }
            let selector = match (&ch.range, &ch.revision, &ch.promote) {
                (Some(r), None, None) => match check_range(&r.0) {
                    Ok(()) => Some(Selector::Range(r.0.clone())),
                    Err(msg) => {
                        problems.push(doc.diag(&format!("{field}.range"), msg));
                        None
                    }
                },
                (None, Some(v), None) => {
                    let rfield = format!("{field}.revision");
                    if ch.rollback {
                        problems.push(doc.diag(
                            &format!("{field}.rollback"),
                            "`rollback` goes only with `range` or `promote`: a pinned revision is never moved, so there is nothing to roll back",
                        ));
                        ok = false;
                    }
                    if let Err(msg) = check_version(&v.0) {
                        problems.push(doc.diag(&rfield, msg));
                        None
                    } else if !revisions.iter().any(|(_, r)| r.version == v.0) {
                        problems.push(doc.diag(
                            &rfield,
                            format!("revision {} is not listed in spec.revisions", v.0),
                        ));
                        None
                    } else {
                        Some(Selector::Revision(v.0.clone()))
                    }
                }
                (None, None, Some(p)) => {
                    check_promote(doc, &format!("{field}.promote"), p, problems)
                        .map(|p| Selector::Promote(Box::new(p)))
                }
                _ => {
                    problems.push(doc.diag(
                        &field,
                        "set exactly one of `range`, `revision` or `promote`",
                    ));
                    None
                }
            };
            if let Some(domain) = &ch.domain {
                let dfield = format!("{field}.domain");
                if domain.len() > 253 || domain.split('.').any(|l| l.len() > MAX_LABEL) {
                    problems.push(doc.diag(
                        &dfield,
                        format!("{} is not a valid domain: a label is longer than {MAX_LABEL} characters, or the name than 253 (the DNS limits)", quoted(domain)),
                    ));
                    ok = false;
                } else if !is_domain(domain) {
                    problems.push(doc.diag(
                        &dfield,
                        format!("{} is not a valid domain (lowercase labels of letters, digits and single '-', and a top-level domain of 2+ letters)", quoted(domain)),
                    ));
                    ok = false;
                } else if let Some(prev) = domains.get(domain) {
                    problems.push(doc.diag(
                        &dfield,
                        format!("domain {} is already used at {prev}", quoted(domain)),
                    ));
                    ok = false;
                } else {
                    domains.insert(domain.clone(), here(&dfield));
                }
            } else if ok && is_name(&name, 128) {
                let default = format!(
                    "{}.{}.example.io",
                    default_domain_label(&ch.name),
                    default_domain_label(&name)
                );
                if !is_domain(&default) {
                    problems.push(doc.diag(
                        &format!("{field}.name"),
                        "Hippo derives a default domain from the app and channel names, and these names make it invalid (a name starting or ending with '-' or '_', or with '--'); set `domain`",
                    ));
                    ok = false;
                }
            }
            let mut env = BTreeMap::new();
            for (k, v) in ch.env.iter().flatten() {
                if !is_env_key(k) {
                    problems.push(doc.diag(
                        &format!("{field}.env.{k}"),
                        format!("{} is not a valid environment variable name", quoted(k)),
                    ));
                    ok = false;
                }
                env.insert(k.clone(), v.0.clone());
            }
            if let (true, Some(selector)) = (ok, selector) {
                channels.push(ChannelSpec {
                    name: ch.name.clone(),
                    selector,
                    domain: ch.domain.clone(),
                    env,
                    allow_empty: ch.allow_empty,
                    rollback: ch.rollback,
                });
            }
        }
        check_promote_sources(doc, &name, &raw.spec.channels, problems);

        if problems.len() == before {
            // Built by pushing: a controller keeps these for every app, so not with room to grow.
            // (`collect` reuses the versions' larger buffer: shrunk too.)
            let mut revisions: Vec<RevisionSpec> = revisions.into_iter().map(|(_, r)| r).collect();
            revisions.shrink_to_fit();
            let mut channels = channels;
            channels.shrink_to_fit();
            apps.push(std::sync::Arc::new(AppSpec {
                name,
                storage_id,
                revisions,
                discover,
                channels,
                prune: raw.spec.prune,
                suspend: raw.spec.suspend,
                origin: here("metadata.name"),
            }));
        }
    }
    DesiredState {
        apps,
        ..Default::default()
    }
}

/// The host `{domain}` stands for while a probe URL is checked.
const DOMAIN_PLACEHOLDER_HOST: &str = "domain.example";

/// `promote:` at `field`, as written; `from` is checked against the other channels by
/// [`check_promote_sources`].
fn check_promote(
    doc: &ParsedDocument,
    field: &str,
    raw: &RawPromote,
    problems: &mut Vec<Diagnostic>,
) -> Option<PromoteSpec> {
    let before = problems.len();
    let duration = |name: &str, text: &ScalarString, problems: &mut Vec<Diagnostic>| {
        parse_duration(&text.0)
            .map_err(|msg| problems.push(doc.diag(&format!("{field}.{name}"), msg)))
            .ok()
    };
    let after = duration("after", &raw.after, problems);
    let check = raw.check.as_ref().map(|c| {
        let interval = match &c.interval {
            None => Some(DEFAULT_PROBE_INTERVAL),
            Some(text) => duration("check.interval", text, problems),
        };
        if interval.is_some_and(|i| i.is_zero()) {
            problems.push(doc.diag(
                &format!("{field}.check.interval"),
                "must be more than 0s (the time between two tries of the probe)",
            ));
        }
        if let Err(msg) = check_probe_url(&c.url) {
            problems.push(doc.diag(&format!("{field}.check.url"), msg));
        }
        let expect_status = c.expect_status.unwrap_or(200);
        let status = u16::try_from(expect_status)
            .ok()
            .filter(|s| (100..=599).contains(s));
        if status.is_none() {
            problems.push(doc.diag(
                &format!("{field}.check.expectStatus"),
                format!("{expect_status} is not an HTTP status code (100 to 599)"),
            ));
        }
        ProbeSpec {
            url: c.url.clone(),
            expect_status: status.unwrap_or_default(),
            interval: interval.unwrap_or_default(),
        }
    });
    // Only whole: what is left out above is never used.
    (problems.len() == before).then(|| PromoteSpec {
        from: raw.from.clone(),
        after: after.unwrap_or_default(),
        check,
    })
}

/// `promote.check.interval` when left out.
const DEFAULT_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);

/// An http or https URL once `{domain}` is replaced with a host; no other `{...}`.
fn check_probe_url(url: &str) -> Result<(), String> {
    let without = url.replace("{domain}", "");
    if let Some(start) = without.find(['{', '}']) {
        let rest = &without[start..];
        let placeholder = match (rest.starts_with('{'), rest.find('}')) {
            (true, Some(end)) => &rest[..=end],
            _ => &rest[..1],
        };
        return Err(format!(
            "{} has `{}`: the only placeholder is `{{domain}}` (the `from` channel's domain)",
            quoted(url),
            short(placeholder)
        ));
    }
    let parsed = url::Url::parse(&url.replace("{domain}", DOMAIN_PLACEHOLDER_HOST))
        .map_err(|e| format!("{} is not a URL: {e}", quoted(url)))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{} is not an http or https URL (the scheme is {})",
            quoted(url),
            quoted(parsed.scheme())
        ));
    }
    Ok(())
}

/// Every `promote.from` names another channel of the app, and no promotions form a cycle.
fn check_promote_sources(
    doc: &ParsedDocument,
    app: &str,
    channels: &[RawChannel],
    out: &mut Vec<Diagnostic>,
) {
    // Reported in line order.
    let mut problems = Vec::new();
    let from_field = |i: usize| format!("spec.channels[{i}].promote.from");
    // Channel name → (its index, the channel it promotes from), for the first of each name.
    let mut edges: HashMap<&str, (usize, &str)> = HashMap::new();
    for (i, ch) in channels.iter().enumerate() {
        // With `range` or `revision` too, the channel is already reported.
        let Some(p) = ch
            .promote
            .as_ref()
            .filter(|_| ch.range.is_none() && ch.revision.is_none())
        else {
            continue;
        };
        let wrong = if p.from == ch.name {
            format!(
                "channel {} promotes from itself; name another channel of app {}",
                quoted(&ch.name),
                quoted(app)
            )
        } else if !channels.iter().any(|c| c.name == p.from) {
            format!(
                "{} is not a channel of app {}",
                quoted(&p.from),
                quoted(app)
            )
        } else {
            edges.entry(&ch.name).or_insert((i, &p.from));
            continue;
        };
        problems.push(doc.diag(&from_field(i), wrong));
    }
    // Each channel promotes from at most one other: follow `from` from each channel in file
    // order; a walk that comes back onto itself has found a cycle, reported once, at its
    // member listed first.
    let mut done: HashSet<&str> = HashSet::new();
    for ch in channels {
        let mut path: Vec<&str> = Vec::new();
        let mut at = ch.name.as_str();
        while !done.contains(at) {
            if let Some(start) = path.iter().position(|n| *n == at) {
                let cycle = &path[start..];
                let first = (0..cycle.len())
                    .min_by_key(|k| edges[cycle[*k]].0)
                    .expect("a cycle has members");
                let mut names: Vec<&str> = cycle[first..]
                    .iter()
                    .chain(&cycle[..first])
                    .copied()
                    .collect();
                names.push(names[0]);
                problems.push(doc.diag(
                    &from_field(edges[names[0]].0),
                    format!(
                        "promotions form a cycle: {} (each promotes from the next); one of them must follow a `range` or a `revision`",
                        names.join(" → ")
                    ),
                ));
                break;
            }
            path.push(at);
            match edges.get(at) {
                Some((_, from)) => at = from,
                None => break,
            }
        }
        done.extend(path);
    }
    problems.sort_by_key(|d| (d.line, d.column));
    out.append(&mut problems);
}

fn check_inside_root(resolved: &Path, root: &Path) -> Result<(), String> {
    let absolute = if resolved.is_absolute() {
        resolved.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| lexically_normal(&d.join(resolved)))
            .unwrap_or_else(|_| resolved.to_path_buf())
    };
    if !absolute.starts_with(root) {
        return Err(format!(
            "{} is outside the repository root {}",
            resolved.display(),
            root.display()
        ));
    }
    if let Ok(real) = resolved.canonicalize() {
        if !real.starts_with(root) {
            return Err(format!(
                "{} resolves through a symlink to {}, outside the repository root {}",
                resolved.display(),
                real.display(),
                root.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::spec::{load, ProbeSpec};

    fn load_app(spec: &str) -> Result<AppSpec, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        let text =
            format!("apiVersion: hippo-gitops/v1\nkind: App\nmetadata:\n  name: weather\n{spec}");
        std::fs::write(&file, text).unwrap();
        load(&[file], &LoadOptions::default())
            .map(|mut state| std::sync::Arc::unwrap_or_clone(state.apps.remove(0)))
            .map_err(|d| {
                d.0.iter()
                    .map(|p| format!("{}:{}: {}", p.line, p.field, p.message))
                    .collect()
            })
    }

    #[test]
    fn discover_promote_and_rollback_come_out_with_their_defaults() {
        let app = load_app(
            "spec:
  revisions:
    - version: 1.0.0
    - discover: \">=1.0.0\"
    - discover: 0.30
  channels:
    - name: canary
      range: \"*\"
      rollback: true
    - name: production
      promote:
        from: canary
        after: 10m
        check:
          url: \"https://{domain}/health\"
    - name: staging
      promote:
        from: production
        after: 0s
        check:
          url: http://status.example.com/{domain}?full=1
          expectStatus: 0xCC
          interval: 500ms
      rollback: true
    - name: eu
      promote:
        from: canary
        after: 90
    - name: pinned
      revision: 1.0.0
      rollback: false
",
        )
        .unwrap();
        assert_eq!(app.revisions.len(), 1);
        let discover: Vec<(&str, usize)> = app
            .discover
            .iter()
            .map(|d| (d.range.as_str(), d.origin.line))
            .collect();
        // As written (`0.30`, never `0.3`), in file order, each at its line.
        assert_eq!(discover, [(">=1.0.0", 8), ("0.30", 9)]);
        let by_name = |n: &str| app.channels.iter().find(|c| c.name == n).unwrap();
        let promote = |n: &str| match &by_name(n).selector {
            Selector::Promote(p) => (**p).clone(),
            other => panic!("{n}: {other:?}"),
        };
        assert_eq!(by_name("canary").selector, Selector::Range("*".into()));
        assert!(by_name("canary").rollback);
        assert_eq!(
            promote("production"),
            PromoteSpec {
                from: "canary".into(),
                after: Duration::from_secs(600),
                check: Some(ProbeSpec {
                    url: "https://{domain}/health".into(),
                    expect_status: 200,
                    interval: Duration::from_secs(15),
                }),
            }
        );
        assert!(!by_name("production").rollback);
        assert_eq!(
            promote("staging"),
            PromoteSpec {
                from: "production".into(),
                after: Duration::ZERO,
                check: Some(ProbeSpec {
                    url: "http://status.example.com/{domain}?full=1".into(),
                    expect_status: 204,
                    interval: Duration::from_millis(500),
                }),
            }
        );
        assert!(by_name("staging").rollback);
        assert_eq!(
            promote("eu"),
            PromoteSpec {
                from: "canary".into(),
                after: Duration::from_secs(90),
                check: None,
            }
        );
        assert!(!by_name("pinned").rollback);
    }

    #[test]
    fn an_app_without_the_new_fields_discovers_nothing_and_rolls_nothing_back() {
        let app = load_app("spec:\n  channels:\n    - name: a\n      range: \"*\"\n").unwrap();
        assert!(app.discover.is_empty());
        assert!(!app.channels[0].rollback);
    }

    #[test]
    fn a_cycle_behind_a_chain_and_a_promotion_from_a_bad_channel() {
        // `tail` leads into the cycle without being part of it; `x` follows a channel that is
        // itself in error, which is not a cycle.
        let problems = load_app(
            "spec:
  channels:
    - name: tail
      promote: {from: b, after: 1m}
    - name: b
      promote: {from: c, after: 1m}
    - name: c
      promote: {from: b, after: 1m}
    - name: x
      promote: {from: y, after: 1m}
    - name: y
      promote: {from: nope, after: 1m}
",
        )
        .unwrap_err();
        assert_eq!(
            problems,
            [
                "10:spec.channels[1].promote.from: promotions form a cycle: b → c → b (each promotes from the next); one of them must follow a `range` or a `revision`",
                "16:spec.channels[4].promote.from: \"nope\" is not a channel of app \"weather\"",
            ]
        );
    }

    #[test]
    fn probe_urls() {
        for ok in [
            "https://{domain}/health",
            "http://{domain}:8080/",
            "HTTPS://api.{domain}/x?y={domain}",
            "https://status.example.com/",
        ] {
            assert_eq!(check_probe_url(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("https://{host}/", "has `{host}`"),
            ("https://{domain}/{", "has `{`"),
            ("https://{domain}/}", "has `}`"),
            ("https://{Domain}/", "has `{Domain}`"),
            ("file:///etc/passwd", "not an http or https URL"),
            ("{domain}/health", "not a URL"),
            ("https://", "not a URL"),
        ] {
            let err = check_probe_url(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn names_domains_and_ranges() {
        assert!(is_name("weather_app-1", 128));
        assert!(!is_name("weather.app", 128));
        assert!(!is_name("", 128));
        assert!(is_storage_id("team/weather"));
        assert!(!is_storage_id("weather.v2"));
        assert!(is_domain("weather.example.com"));
        assert!(is_domain("a-b.c1.io"));
        assert!(!is_domain("Weather.example.com"));
        assert!(!is_domain("-a.example.com"));
        assert!(!is_domain("localhost"));
        assert!(!is_domain("a.b.c0"));
        for ok in [
            "*",
            "1.x",
            "^1.2",
            "~1.2.3",
            ">=1.0.0 <2.0.0",
            "1.2.3 - 2.3.4",
            "^1 || ^2",
            "P:^1.0-beta-*",
            "P:^1.0-my-feature-*",
            "p:*-a-b-c-*",
        ] {
            assert!(check_range(ok).is_ok(), "{ok}");
        }
        for bad in ["", ">=1.0.0, <2.0.0", "^^1", "banana", "P:^1.0-beta"] {
            assert!(check_range(bad).is_err(), "{bad}");
        }
        assert!(is_env_key("RUST_LOG"));
        assert!(!is_env_key("1X"));
        assert!(!is_env_key("A-B"));
    }
}
