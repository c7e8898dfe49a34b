//! Hippo v0.19–v0.20 wire types (HIPPO-API.md §5). Only the fields the controller uses are
//! read; in particular a channel's certificate is read as its id only, so private keys that
//! Hippo returns in `certificate` never enter this process's data.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `Page<T>` of every list endpoint (§4.1).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    #[serde(default = "Vec::new")]
    pub items: Vec<T>,
    #[serde(default)]
    pub total_items: i64,
    #[serde(default)]
    pub page_index: i64,
    #[serde(default)]
    pub page_size: i64,
    #[serde(default)]
    pub is_last_page: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    pub id: Uuid,
    pub name: String,
    pub storage_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    UseRangeRule,
    UseSpecifiedRevision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DesiredStatus {
    Running,
    Dead,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    pub id: Uuid,
    pub app_id: Uuid,
    pub revision_number: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRef {
    pub id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Channel {
    pub id: Uuid,
    pub app_id: Uuid,
    pub name: String,
    #[serde(default)]
    pub domain: Option<String>,
    pub revision_selection_strategy: Strategy,
    #[serde(default)]
    pub active_revision: Option<Revision>,
    #[serde(default)]
    pub last_publish_at: Option<String>,
    #[serde(default)]
    pub range_rule: Option<String>,
    #[serde(default)]
    pub certificate: Option<CertificateRef>,
    #[serde(default)]
    pub environment_variables: Vec<EnvVar>,
}

/// `POST /api/apps`
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateApp<'a> {
    pub name: &'a str,
    pub storage_id: &'a str,
}

/// `POST /api/channels` (§5.2). Nulls are sent explicitly.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateChannel {
    pub app_id: Uuid,
    pub name: String,
    pub domain: Option<String>,
    pub revision_selection_strategy: Strategy,
    pub range_rule: Option<String>,
    pub active_revision_id: Option<Uuid>,
    pub certificate_id: Option<Uuid>,
}

/// `PUT /api/channels/{id}` (§5.3): every field is overwritten, so all are sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateChannel {
    pub id: Uuid,
    pub name: String,
    pub domain: String,
    pub revision_selection_strategy: Strategy,
    pub range_rule: Option<String>,
    pub active_revision_id: Option<Uuid>,
    /// Accepted and ignored by Hippo; sent back as read. A non-nullable `DateTime` on
    /// Hippo's side: omitted rather than sent as `null`, which would fail model binding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_publish_date: Option<String>,
    pub certificate_id: Option<Uuid>,
}

/// `PATCH /api/channels/{id}` with only the environment: raw values, and the list replaces
/// the whole set (§5.4).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PatchChannelEnv {
    pub environment_variables: Vec<EnvVar>,
}

/// `POST /api/revisions`
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRevision<'a> {
    pub app_storage_id: &'a str,
    pub revision_number: &'a str,
}

/// `PUT /api/channels/{id}/desired-status`
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateDesiredStatus {
    pub channel_id: Uuid,
    pub desired_status: DesiredStatus,
}

/// `POST /api/auth-tokens`
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateToken<'a> {
    pub user_name: &'a str,
    pub password: &'a str,
}

#[derive(Clone, Deserialize)]
pub struct TokenInfo {
    pub token: Option<String>,
    pub expiration: Option<String>,
}

/// 400 bodies: `ValidationProblemDetails` or a plain `ProblemDetails` (§2.1).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProblemDetails {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub errors: std::collections::BTreeMap<String, Vec<String>>,
}
