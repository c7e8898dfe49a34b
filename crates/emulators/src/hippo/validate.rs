//! Hippo's request validation (HIPPO-API.md §4.3): DataAnnotations `[Required]` during model
//! binding, then the FluentValidation validators with their default or custom messages.

use uuid::Uuid;

use super::http::{ApiError, Errors};
use super::model::ChannelRevisionSelectionStrategy;
use super::store::Store;

/// `[Required]` on a string: missing, empty or whitespace fails model binding.
pub fn required(errors: &mut Errors, property: &str, value: Option<String>) -> String {
    match value {
        Some(v) if !v.trim().is_empty() => v,
        _ => {
            errors.add(property, format!("The {property} field is required."));
            String::new()
        }
    }
}

/// FluentValidation's display name: `StorageId` → `Storage Id`.
fn display_name(property: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in property.chars() {
        if c.is_uppercase() && prev_lower {
            out.push(' ');
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        out.push(c);
    }
    out
}

/// .NET string length is in UTF-16 code units.
fn length(value: &str) -> usize {
    value.encode_utf16().count()
}

pub fn max_length(errors: &mut Errors, property: &str, value: &str, max: usize) {
    let n = length(value);
    if n > max {
        errors.add(
            property,
            format!(
                "The length of '{}' must be {max} characters or fewer. You entered {n} characters.",
                display_name(property)
            ),
        );
    }
}

pub fn min_length(errors: &mut Errors, property: &str, value: &str, min: usize) {
    let n = length(value);
    if n < min {
        errors.add(
            property,
            format!(
                "The length of '{}' must be at least {min} characters. You entered {n} characters.",
                display_name(property)
            ),
        );
    }
}

pub fn matches(errors: &mut Errors, property: &str, ok: bool) {
    if !ok {
        errors.add(
            property,
            format!("'{}' is not in the correct format.", display_name(property)),
        );
    }
}

fn only(value: &str, extra: &[char]) -> bool {
    value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

/// `^[a-zA-Z0-9-_]*$` (app, channel, certificate and user names).
pub fn is_name(value: &str) -> bool {
    only(value, &['-', '_'])
}

/// `^[a-zA-Z0-9-_./]*$` (CreateApp storageId).
pub fn is_app_storage_id(value: &str) -> bool {
    only(value, &['-', '_', '.', '/'])
}

/// `^[a-zA-Z0-9-_/]*$` (RegisterRevision appStorageId: no '.').
pub fn is_revision_storage_id(value: &str) -> bool {
    only(value, &['-', '_', '/'])
}

/// `^([a-z0-9]+(-[a-z0-9]+)*\.)+[a-z]{2,}$`
pub fn is_domain(value: &str) -> bool {
    let labels: Vec<&str> = value.split('.').collect();
    let Some((tld, rest)) = labels.split_last() else {
        return false;
    };
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.split('-').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            })
    };
    !rest.is_empty()
        && rest.iter().all(label_ok)
        && tld.len() >= 2
        && tld.chars().all(|c| c.is_ascii_lowercase())
}

/// CreateApp / UpdateApp `name`, including uniqueness over all apps (UpdateApp compares
/// against itself too).
pub fn app_name(errors: &mut Errors, state: &Store, name: &str) {
    max_length(errors, "Name", name, 128);
    matches(errors, "Name", is_name(name));
    if state.app_name_taken(name) {
        errors.add("Name", "The specified name already exists.");
    }
}

/// The channel fields CreateChannel and UpdateChannel validate.
pub struct ChannelFields<'a> {
    pub app_id: Uuid,
    /// `Some` for an update: that channel is excluded from the uniqueness checks.
    pub existing: Option<Uuid>,
    pub name: &'a str,
    pub domain: Option<&'a str>,
    pub range_rule: Option<&'a str>,
}

pub fn channel(errors: &mut Errors, state: &Store, f: &ChannelFields<'_>) {
    // Names are unique within the app, domains across all channels.
    let others = || {
        state
            .channels_of_app(f.app_id)
            .filter(move |c| Some(c.id) != f.existing)
    };
    // Only reachable without model binding (range re-evaluation sends UpdateChannelCommand).
    if f.name.trim().is_empty() {
        errors.add("Name", "Name is required.");
    }
    max_length(errors, "Name", f.name, 64);
    matches(errors, "Name", is_name(f.name));
    if others().any(|c| c.name == f.name) {
        errors.add(
            "Name",
            "A channel with the same name already exists for this app.",
        );
    }
    if let Some(domain) = f.domain {
        if domain.is_empty() {
            let message = if f.existing.is_some() {
                "Domain is required."
            } else {
                "Domain cannot be an empty string."
            };
            errors.add("Domain", message);
        }
        matches(errors, "Domain", is_domain(domain));
        if state.domain_taken(domain, f.existing) {
            errors.add("Domain", "The specified domain already exists.");
        }
    }
    if f.range_rule == Some("") {
        errors.add("RangeRule", "Range rule cannot be an empty string.");
    }
}

/// CreateChannel: `UseRangeRule` requires no `activeRevisionId`, `UseSpecifiedRevision` one.
pub fn strategy_matches(
    errors: &mut Errors,
    strategy: ChannelRevisionSelectionStrategy,
    active_revision_id: Option<Uuid>,
) {
    let ok = match strategy {
        ChannelRevisionSelectionStrategy::UseRangeRule => active_revision_id.is_none(),
        ChannelRevisionSelectionStrategy::UseSpecifiedRevision => active_revision_id.is_some(),
    };
    if !ok {
        errors.add(
            "RevisionSelectionStrategy",
            "ActiveRevisionId and the specified ChannelRevisionSelectionStrategy do not match up.",
        );
    }
}

/// UpdateChannel's name-uniqueness rule loads the channel and throws NotFound when missing.
pub fn update_channel(
    state: &Store,
    id: Uuid,
    name: &str,
    domain: &str,
    range_rule: Option<&str>,
) -> Result<(), ApiError> {
    let channel = state
        .channel(id)
        .ok_or(ApiError::not_found("Channel", id))?;
    let mut errors = Errors::default();
    self::channel(
        &mut errors,
        state,
        &ChannelFields {
            app_id: channel.app_id,
            existing: Some(id),
            name,
            domain: Some(domain),
            range_rule,
        },
    );
    errors.check()
}

pub fn certificate_name(errors: &mut Errors, state: &Store, name: &str, existing: Option<Uuid>) {
    max_length(errors, "Name", name, 64);
    matches(errors, "Name", is_name(name));
    if state
        .certificates()
        .iter()
        .any(|c| c.name == name && Some(c.id) != existing)
    {
        errors.add("Name", "The specified name already exists.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_regex() {
        assert!(is_domain("spin-deploy.myapp.hippofactory.io"));
        assert!(is_domain("a1.io"));
        assert!(!is_domain("io"));
        assert!(!is_domain("a--b.io"));
        assert!(!is_domain("-a.io"));
        assert!(!is_domain("a-.hippofactory.io"));
        assert!(!is_domain("Upper.io"));
        assert!(!is_domain("a.i"));
        assert!(!is_domain("a.i0"));
        assert!(!is_domain(""));
    }

    #[test]
    fn display_names() {
        assert_eq!(display_name("StorageId"), "Storage Id");
        assert_eq!(display_name("AppStorageId"), "App Storage Id");
        assert_eq!(display_name("Name"), "Name");
    }
}
