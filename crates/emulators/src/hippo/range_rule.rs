//! Hippo's `RevisionRangeRule` (HIPPO-API.md §6.2): pick a channel's active revision.
//!
//! Hippo uses the NuGet `SemanticVersioning` library (node-semver semantics); here
//! `nodejs-semver` evaluates the ranges. Versions are checked strictly first, because
//! `nodejs-semver` also accepts loose forms (`01.0.0`, `1.0.0.0`) that Hippo skips.

use hippo_gitops_core::range_rule::RangeRule;

use super::model::Revision;

/// Why a rule could not be evaluated. In Hippo each of these is an unhandled exception,
/// i.e. a 500 for the request that triggered the evaluation.
#[derive(Debug, thiserror::Error)]
pub enum RangeRuleError {
    #[error("invalid rule {rule:?}: {source}")]
    Invalid {
        rule: String,
        source: hippo_gitops_core::range_rule::RangeRuleError,
    },
    /// `ToDictionary` over the candidates' revision numbers throws on duplicates.
    #[error("duplicate revision number {0:?} among the candidates")]
    DuplicateRevisionNumber(String),
}

/// Evaluates `rule` against `candidates` (in insertion order) and returns the index of the
/// selected revision, if any.
pub fn select(rule: &str, candidates: &[&Revision]) -> Result<Option<usize>, RangeRuleError> {
    let parsed = RangeRule::parse(rule).map_err(|source| RangeRuleError::Invalid {
        rule: rule.to_string(),
        source,
    })?;
    if let RangeRule::Npm(_) = parsed {
        let mut seen = std::collections::HashSet::new();
        for c in candidates {
            if !seen.insert(c.revision_number.as_str()) {
                return Err(RangeRuleError::DuplicateRevisionNumber(
                    c.revision_number.clone(),
                ));
            }
        }
    }
    Ok(parsed.select(candidates.iter().map(|c| c.revision_number.as_str())))
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
            Err(RangeRuleError::Invalid { .. })
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
