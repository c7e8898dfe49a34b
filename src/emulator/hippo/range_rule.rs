//! Hippo's `RevisionRangeRule` (HIPPO-API.md §6.2): pick a channel's active revision.
//!
//! Hippo uses the NuGet `SemanticVersioning` library (node-semver semantics); here
//! `nodejs-semver` evaluates the ranges. Versions are checked strictly first, because
//! `nodejs-semver` also accepts loose forms (`01.0.0`, `1.0.0.0`) that Hippo skips.

use nodejs_semver::{Range, Version};

use super::model::Revision;

/// Why a rule could not be evaluated. In Hippo each of these is an unhandled exception,
/// i.e. a 500 for the request that triggered the evaluation.
#[derive(Debug, thiserror::Error)]
pub enum RangeRuleError {
    #[error("invalid range {0:?}")]
    InvalidRange(String),
    #[error("prerelease rule {0:?} must look like P:<range>-<name>-*")]
    InvalidPrereleaseRule(String),
    /// `ToDictionary` over the candidates' revision numbers throws on duplicates.
    #[error("duplicate revision number {0:?} among the candidates")]
    DuplicateRevisionNumber(String),
}

enum Rule {
    Npm(Range),
    Prerelease { range: Range, name: String },
}

fn parse_range(text: &str) -> Result<Range, RangeRuleError> {
    Range::parse(text).map_err(|_| RangeRuleError::InvalidRange(text.to_string()))
}

fn parse(rule: &str) -> Result<Rule, RangeRuleError> {
    let is_prerelease = rule.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("P:"));
    if !is_prerelease {
        return Ok(Rule::Npm(parse_range(rule)?));
    }
    let bad = || RangeRuleError::InvalidPrereleaseRule(rule.to_string());
    // Form `P:<range>-<name>-*`: the range ends at the first '-'.
    let body = rule
        .strip_suffix("-*")
        .and_then(|r| r.get(2..))
        .ok_or_else(bad)?;
    let (range, name) = body.split_once('-').ok_or_else(bad)?;
    if range.is_empty() || name.is_empty() {
        return Err(bad());
    }
    Ok(Rule::Prerelease {
        range: parse_range(range)?,
        name: name.to_string(),
    })
}

/// Parses a version the way Hippo's library does in strict mode; anything else never matches.
pub fn strict_version(text: &str) -> Option<Version> {
    let t = text.trim();
    let t = t.strip_prefix(['v', '=']).unwrap_or(t);
    let (rest, build) = match t.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (t, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let idents_ok = |s: &str| {
        s.split('.')
            .all(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    };
    let parts: Vec<&str> = core.split('.').collect();
    let core_ok = parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars().all(|c| c.is_ascii_digit())
                && (p.len() == 1 || !p.starts_with('0'))
        });
    if !core_ok || !pre.is_none_or(idents_ok) || !build.is_none_or(idents_ok) {
        return None;
    }
    Version::parse(t).ok()
}

/// Evaluates `rule` against `candidates` (in insertion order) and returns the index of the
/// selected revision, if any.
pub fn select(rule: &str, candidates: &[&Revision]) -> Result<Option<usize>, RangeRuleError> {
    match parse(rule)? {
        Rule::Npm(range) => {
            let mut seen = std::collections::HashSet::new();
            for c in candidates {
                if !seen.insert(c.revision_number.as_str()) {
                    return Err(RangeRuleError::DuplicateRevisionNumber(
                        c.revision_number.clone(),
                    ));
                }
            }
            // LINQ `Max` keeps the first of equal maxima (build metadata does not order).
            let mut best: Option<(usize, Version)> = None;
            for (i, c) in candidates.iter().enumerate() {
                let Some(v) = strict_version(&c.revision_number) else {
                    continue;
                };
                if range.satisfies(&v) && best.as_ref().is_none_or(|(_, b)| v > *b) {
                    best = Some((i, v));
                }
            }
            Ok(best.map(|(i, _)| i))
        }
        Rule::Prerelease { range, name } => {
            // Revision numbers `<version>-<name>-<timestamp>`; greatest timestamp wins, the
            // first one among equal timestamps (stable descending sort).
            let mut best: Option<(usize, &str)> = None;
            for (i, c) in candidates.iter().enumerate() {
                let Some((version, user, timestamp)) = split_prerelease(&c.revision_number) else {
                    continue;
                };
                let satisfied = strict_version(version).is_some_and(|v| range.satisfies(&v));
                if user == name && satisfied && best.is_none_or(|(_, t)| timestamp > t) {
                    best = Some((i, timestamp));
                }
            }
            Ok(best.map(|(i, _)| i))
        }
    }
}

fn split_prerelease(revision: &str) -> Option<(&str, &str, &str)> {
    let (version, prerelease) = revision.split_once('-')?;
    let (user, timestamp) = prerelease.rsplit_once('-')?;
    if version.is_empty() || user.is_empty() {
        return None;
    }
    Some((version, user, timestamp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use uuid::Uuid;

    fn revs(numbers: &[&str]) -> Vec<Revision> {
        numbers
            .iter()
            .map(|n| Revision {
                id: Uuid::new_v4(),
                app_id: Uuid::nil(),
                revision_number: n.to_string(),
                description: None,
                components: vec![],
                created: Utc::now(),
            })
            .collect()
    }

    fn pick(rule: &str, numbers: &[&str]) -> Result<Option<String>, RangeRuleError> {
        let r = revs(numbers);
        let refs: Vec<&Revision> = r.iter().collect();
        Ok(select(rule, &refs)?.map(|i| numbers[i].to_string()))
    }

    #[test]
    fn npm_ranges_pick_the_highest_satisfying_version() {
        let all = ["1.0.0", "1.2.0", "2.0.0", "2.1.0-beta", "not-semver"];
        assert_eq!(pick("*", &all).unwrap().as_deref(), Some("2.0.0"));
        assert_eq!(pick("^1", &all).unwrap().as_deref(), Some("1.2.0"));
        assert_eq!(pick("~1.0.0", &all).unwrap().as_deref(), Some("1.0.0"));
        assert_eq!(
            pick(">=2.1.0-alpha", &all).unwrap().as_deref(),
            Some("2.1.0-beta")
        );
        assert_eq!(pick("3.x", &all).unwrap(), None);
        assert_eq!(pick("*", &["01.0.0", "1.0.0.0"]).unwrap(), None);
    }

    #[test]
    fn build_metadata_is_ignored_and_the_first_wins() {
        let all = ["1.0.0+qaaaaaaa", "1.0.0+qbbbbbbb"];
        assert_eq!(
            pick("1.0.0+qbbbbbbb", &all).unwrap().as_deref(),
            Some("1.0.0+qaaaaaaa")
        );
    }

    #[test]
    fn duplicates_and_bad_ranges_fail() {
        assert!(matches!(
            pick("*", &["1.0.0", "1.0.0"]),
            Err(RangeRuleError::DuplicateRevisionNumber(_))
        ));
        assert!(matches!(
            pick("garbage!!", &["1.0.0"]),
            Err(RangeRuleError::InvalidRange(_))
        ));
    }

    #[test]
    fn prerelease_rules() {
        let all = [
            "1.0.0-alice-20220101",
            "1.0.0-alice-20220301",
            "1.0.0-bob-20220401",
            "2.0.0-alice-20220501",
        ];
        assert_eq!(
            pick("P:^1-alice-*", &all).unwrap().as_deref(),
            Some("1.0.0-alice-20220301")
        );
        assert_eq!(
            pick("p:*-alice-*", &all).unwrap().as_deref(),
            Some("2.0.0-alice-20220501")
        );
        assert!(pick("P:^1-alice", &all).is_err());
        assert!(pick("P:-alice-*", &all).is_err());
    }
}
