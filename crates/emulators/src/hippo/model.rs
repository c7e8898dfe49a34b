//! The emulator's persistent state: what Hippo keeps in its database, plus the set of jobs
//! it asked the scheduler to run (what it would see in Nomad).
//!
//! Every collection is kept in insertion order, because Hippo's unsorted queries (revision
//! list, app channels, range-rule candidates) return rows in that order.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A clone of the whole emulator state, as returned by `HippoEmulator::snapshot` and written
/// to the state file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EmulatorState {
    pub accounts: Vec<Account>,
    pub apps: Vec<App>,
    pub channels: Vec<Channel>,
    pub revisions: Vec<Revision>,
    pub environment_variables: Vec<EnvVar>,
    pub certificates: Vec<Certificate>,
    /// Channel ids whose job was started and not deleted since (`JobScheduler` calls).
    pub jobs: BTreeSet<Uuid>,
    /// Issued bearer tokens; kept so that a restarted emulator still accepts them, as Hippo
    /// does with its signed JWTs.
    pub tokens: Vec<IssuedToken>,
}

/// A user account (ASP.NET Identity user in Hippo).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub id: String,
    pub user_name: String,
    /// Lowercase hex SHA-256 of the password: the state file should not hold passwords.
    pub password_sha256: String,
    pub is_administrator: bool,
}

/// A bearer token handed out by `POST /api/auth-tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedToken {
    pub token: String,
    pub account_id: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    pub id: Uuid,
    pub name: String,
    pub storage_id: String,
    pub created: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ChannelRevisionSelectionStrategy {
    /// Hippo's enum value 0, so also what an omitted property binds to.
    #[default]
    UseRangeRule,
    UseSpecifiedRevision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum DesiredStatus {
    Running,
    Dead,
}

/// Newtonsoft's `StringEnumConverter` reads names case-insensitively and also the numbers.
fn enum_from_json<'de, D, T>(d: D, variants: &[(&str, i64, T)]) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Copy,
{
    use serde::de::Error;
    let value = serde_json::Value::deserialize(d)?;
    let found = match &value {
        serde_json::Value::String(s) => variants
            .iter()
            .find(|(name, n, _)| name.eq_ignore_ascii_case(s.trim()) || s.trim() == n.to_string()),
        serde_json::Value::Number(num) => {
            variants.iter().find(|(_, n, _)| num.as_i64() == Some(*n))
        }
        _ => None,
    };
    found
        .map(|(_, _, v)| *v)
        .ok_or_else(|| D::Error::custom(format!("Error converting value {value} to an enum")))
}

impl<'de> Deserialize<'de> for ChannelRevisionSelectionStrategy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        enum_from_json(
            d,
            &[
                ("UseRangeRule", 0, Self::UseRangeRule),
                ("UseSpecifiedRevision", 1, Self::UseSpecifiedRevision),
            ],
        )
    }
}

impl<'de> Deserialize<'de> for DesiredStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Hippo's values: Running = 2, Dead = 3.
        enum_from_json(d, &[("Running", 2, Self::Running), ("Dead", 3, Self::Dead)])
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Channel {
    pub id: Uuid,
    pub app_id: Uuid,
    pub name: String,
    pub domain: String,
    pub revision_selection_strategy: ChannelRevisionSelectionStrategy,
    pub range_rule: Option<String>,
    pub active_revision_id: Option<Uuid>,
    pub last_publish_at: Option<DateTime<Utc>>,
    /// Unset (Hippo's enum value 0) until `PUT /api/channels/{id}/desired-status`.
    pub desired_status: Option<DesiredStatus>,
    pub certificate_id: Option<Uuid>,
    /// Number of channels when this one was created (unused by scheduling, as in Hippo).
    pub port_id: i32,
    pub created: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    pub id: Uuid,
    pub app_id: Uuid,
    pub revision_number: String,
    /// The bindle's description, filled from the invoice after registration.
    pub description: Option<String>,
    pub components: Vec<RevisionComponent>,
    pub created: DateTime<Utc>,
}

/// One `[[component]]` of the revision's spin.toml manifest parcel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionComponent {
    pub id: Uuid,
    pub source: String,
    pub name: String,
    pub route: Option<String>,
    pub channel: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub id: Uuid,
    pub channel_id: Uuid,
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    pub id: Uuid,
    pub name: String,
    pub public_key: String,
    pub private_key: String,
}

impl Revision {
    /// A freshly registered revision: details are filled in later from the bindle.
    pub fn new(id: Uuid, app_id: Uuid, revision_number: &str) -> Self {
        Revision {
            id,
            app_id,
            revision_number: revision_number.to_string(),
            description: None,
            components: Vec::new(),
            created: Utc::now(),
        }
    }
}
