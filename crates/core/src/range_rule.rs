//! Hippo's channel range rule (`RevisionRangeRule`, HIPPO-API.md §6.2): the one parser, used by
//! `validate` (is the rule valid?), `diff` (which revision will Hippo pick?) and the Hippo
//! emulator (which revision does it pick?), so the three can never disagree.
//!
//! Two forms (deislabs/hippo@v0.19.0 `src/Application/Rules/RevisionRangeRule.cs`):
//! - a node-semver range (Hippo uses the NuGet `SemanticVersioning` library; `nodejs-semver`
//!   evaluates it here): the highest strictly parsed version that satisfies it;
//! - `P:<range>-<user>-*` (the `P:` in any case): the body between `P:` and `-*` is split at
//!   its **first** `-` into the range and the user; a revision number is split at its first
//!   `-` into version and rest, the rest at its **last** `-` into user and timestamp; among the
//!   revisions of that exact user whose version satisfies the range, the greatest timestamp
//!   wins, compared as strings (ordinally: Hippo's container runs with invariant globalization),
//!   the first of equal timestamps in candidate order.

use nodejs_semver::{Range, Version};

/// Why a rule is not one Hippo can evaluate (in Hippo: an exception, a 400 on validation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeRuleError {
    /// Not a node-semver range; `range` is the part that failed (for `P:` rules, the range
    /// before the first `-`).
    #[error("invalid node-semver range {range:?}: {message}")]
    InvalidRange { range: String, message: String },
    #[error("a prerelease rule `P:...` must end with `-*`")]
    MissingStar,
    #[error("a prerelease rule must read `P:<range>-<name>-*`, with something before and after the first `-`")]
    InvalidPrerelease,
}

/// A parsed rule.
#[derive(Debug, Clone)]
pub enum RangeRule {
    Npm(Range),
    Prerelease { range: Range, user: String },
}

fn parse_range(text: &str) -> Result<Range, RangeRuleError> {
    Range::parse(text).map_err(|e| RangeRuleError::InvalidRange {
        range: text.to_string(),
        message: e.to_string(),
    })
}

/// Whether `rule` has Hippo's prerelease prefix (`P:`, any case).
pub fn is_prerelease_rule(rule: &str) -> bool {
    rule.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("P:"))
}

/// The version part of a rule: the rule itself, or a `P:` rule's range (text before the
/// body's first `-`). `None` for a malformed `P:` rule.
pub fn range_part(rule: &str) -> Option<&str> {
    if !is_prerelease_rule(rule) {
        return Some(rule);
    }
    let body = rule.strip_suffix("-*")?.get(2..)?;
    body.split_once('-').map(|(range, _)| range)
}

impl RangeRule {
    pub fn parse(rule: &str) -> Result<RangeRule, RangeRuleError> {
        if !is_prerelease_rule(rule) {
            return Ok(RangeRule::Npm(parse_range(rule)?));
        }
        let body = rule
            .strip_suffix("-*")
            .ok_or(RangeRuleError::MissingStar)?
            .get(2..)
            .ok_or(RangeRuleError::InvalidPrerelease)?;
        let (range, user) = body
            .split_once('-')
            .ok_or(RangeRuleError::InvalidPrerelease)?;
        if range.is_empty() || user.is_empty() {
            return Err(RangeRuleError::InvalidPrerelease);
        }
        Ok(RangeRule::Prerelease {
            range: parse_range(range)?,
            user: user.to_string(),
        })
    }

    /// The index (in `numbers`' order) of the revision number Hippo selects, if any.
    pub fn select<'a>(&self, numbers: impl IntoIterator<Item = &'a str>) -> Option<usize> {
        match self {
            RangeRule::Npm(range) => {
                // LINQ's Max keeps the first of equal maxima (build metadata does not order).
                let mut best: Option<(usize, Version)> = None;
                for (i, n) in numbers.into_iter().enumerate() {
                    let Some(v) = strict_version(n) else {
                        continue;
                    };
                    if range.satisfies(&v) && best.as_ref().is_none_or(|(_, b)| v > *b) {
                        best = Some((i, v));
                    }
                }
                best.map(|(i, _)| i)
            }
            RangeRule::Prerelease { range, user } => {
                // A stable descending sort by timestamp: the first of equal timestamps wins.
                let mut best: Option<(usize, &str)> = None;
                for (i, n) in numbers.into_iter().enumerate() {
                    let Some(parts) = PrereleaseNumber::split(n) else {
                        continue;
                    };
                    let satisfied =
                        strict_version(parts.version).is_some_and(|v| range.satisfies(&v));
                    if parts.user == user
                        && satisfied
                        && best.is_none_or(|(_, t)| parts.timestamp > t)
                    {
                        best = Some((i, parts.timestamp));
                    }
                }
                best.map(|(i, _)| i)
            }
        }
    }
}

/// The revision number Hippo selects for `rule` among `numbers`; `None` when nothing matches
/// or the rule is invalid (which `validate` reports before anything runs).
pub fn max_satisfying<'a>(rule: &str, numbers: &[&'a str]) -> Option<&'a str> {
    let rule = RangeRule::parse(rule).ok()?;
    rule.select(numbers.iter().copied()).map(|i| numbers[i])
}

/// A revision number read as Hippo's prerelease rule reads it:
/// `<version>-<user>-<timestamp>`, where the user may contain `-` and the timestamp may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrereleaseNumber<'a> {
    pub version: &'a str,
    pub user: &'a str,
    pub timestamp: &'a str,
}

impl<'a> PrereleaseNumber<'a> {
    pub fn split(number: &'a str) -> Option<PrereleaseNumber<'a>> {
        let (version, rest) = number.split_once('-')?;
        let (user, timestamp) = rest.rsplit_once('-')?;
        if version.is_empty() || user.is_empty() {
            return None;
        }
        Some(PrereleaseNumber {
            version,
            user,
            timestamp,
        })
    }
}

/// Parses a version the way Hippo's library does in strict mode; anything else never matches
/// (`nodejs-semver` alone also accepts loose forms such as `01.0.0` or `1.0.0.0`).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pick<'a>(rule: &str, numbers: &[&'a str]) -> Option<&'a str> {
        max_satisfying(rule, numbers)
    }

    #[test]
    fn npm_ranges_pick_the_highest_strict_version() {
        let all = ["1.0.0", "1.2.0", "2.0.0", "2.1.0-beta", "not-semver"];
        assert_eq!(pick("*", &all), Some("2.0.0"));
        assert_eq!(pick("^1", &all), Some("1.2.0"));
        assert_eq!(pick("~1.0.0", &all), Some("1.0.0"));
        assert_eq!(pick(">=1.0.0 <2.0.0", &all), Some("1.2.0"));
        assert_eq!(pick("1.x || >=2.0.0", &all), Some("2.0.0"));
        assert_eq!(pick(">=2.1.0-alpha", &all), Some("2.1.0-beta"));
        assert_eq!(pick("3.x", &all), None);
        assert_eq!(
            pick("*", &["01.0.0", "1.0.0.0"]),
            None,
            "loose forms never match"
        );
        assert_eq!(
            pick("1.0.0+qbbbbbbb", &["1.0.0+qaaaaaaa", "1.0.0+qbbbbbbb"]),
            Some("1.0.0+qaaaaaaa"),
            "build metadata does not order: the first wins"
        );
    }

    // The cases of Hippo's RevisionRangeRule: users with several dashes, numbers without a
    // timestamp, timestamps with dashes, string order of timestamps.
    #[test]
    fn prerelease_rule_splits_the_rule_at_the_first_dash() {
        let rule = RangeRule::parse("P:^1.0-my-feature-*").unwrap();
        match &rule {
            RangeRule::Prerelease { user, .. } => assert_eq!(user, "my-feature"),
            other => panic!("{other:?}"),
        }
        let all = [
            "1.0.0-my-feature-20220101",
            "1.2.0-my-feature-20220301",
            "1.1.0-my-20220401",
            "1.3.0-my-feature-extra-20220501",
            "2.0.0-my-feature-20220601",
        ];
        assert_eq!(
            pick("P:^1.0-my-feature-*", &all),
            Some("1.2.0-my-feature-20220301")
        );
        assert_eq!(pick("P:^1.0-my-*", &all), Some("1.1.0-my-20220401"));
        assert_eq!(
            pick("P:*-my-feature-extra-*", &all),
            Some("1.3.0-my-feature-extra-20220501")
        );
        assert_eq!(
            pick("p:*-my-feature-*", &all),
            Some("2.0.0-my-feature-20220601")
        );
    }

    #[test]
    fn prerelease_numbers_split_version_at_first_and_timestamp_at_last_dash() {
        assert_eq!(
            PrereleaseNumber::split("1.0.0-alice-bob-42"),
            Some(PrereleaseNumber {
                version: "1.0.0",
                user: "alice-bob",
                timestamp: "42"
            })
        );
        // No timestamp: never matches.
        assert_eq!(PrereleaseNumber::split("1.0.0-alice"), None);
        assert_eq!(pick("P:*-alice-*", &["1.0.0-alice"]), None);
        // A timestamp with dashes: the user takes all but its last part.
        let dashed = ["1.0.0-alice-2022-01-01"];
        assert_eq!(pick("P:*-alice-*", &dashed), None);
        assert_eq!(
            pick("P:*-alice-2022-01-*", &dashed),
            Some("1.0.0-alice-2022-01-01")
        );
        assert_eq!(PrereleaseNumber::split("-alice-1"), None);
    }

    #[test]
    fn prerelease_timestamps_order_as_strings_newest_first() {
        // As strings "9" > "10": Hippo does not compare them as numbers.
        let all = ["1.0.0-alice-10", "1.0.0-alice-9", "1.1.0-bob-99"];
        assert_eq!(pick("P:^1-alice-*", &all), Some("1.0.0-alice-9"));
        // Equal timestamps: the first candidate.
        let tie = ["1.0.0-alice-5", "1.1.0-alice-5"];
        assert_eq!(pick("P:^1-alice-*", &tie), Some("1.0.0-alice-5"));
        // The version must satisfy the range.
        assert_eq!(pick("P:^2-alice-*", &all), None);
    }

    #[test]
    fn malformed_rules_are_errors() {
        assert_eq!(
            RangeRule::parse("P:^1-alice").unwrap_err(),
            RangeRuleError::MissingStar
        );
        assert_eq!(
            RangeRule::parse("P:-alice-*").unwrap_err(),
            RangeRuleError::InvalidPrerelease
        );
        assert_eq!(
            RangeRule::parse("P:^1-*").unwrap_err(),
            RangeRuleError::InvalidPrerelease
        );
        assert!(matches!(
            RangeRule::parse("P:garbage!!-alice-*"),
            Err(RangeRuleError::InvalidRange { range, .. }) if range == "garbage!!"
        ));
        assert!(RangeRule::parse("garbage!!").is_err());
        assert_eq!(range_part("P:^1.0-my-feature-*"), Some("^1.0"));
        assert_eq!(range_part("^2"), Some("^2"));
    }
}
