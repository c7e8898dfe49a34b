//! Response items (HIPPO-API.md §5.1), built from the state.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::http::{culture_cmp, SortKey};
use super::model::{
    App, Certificate, Channel, ChannelRevisionSelectionStrategy, Revision, RevisionComponent,
};
use super::store::Store;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppChannelListItem {
    pub id: Uuid,
    pub name: String,
    pub active_revision_number: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppItem {
    pub id: Uuid,
    pub name: String,
    pub storage_id: String,
    pub description: Option<String>,
    pub channels: Vec<AppChannelListItem>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppSummaryDto {
    pub id: Uuid,
    pub name: String,
    pub storage_id: String,
    pub channels: Vec<AppChannelListItem>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionItem {
    pub id: Uuid,
    pub app_id: Uuid,
    pub revision_number: String,
    pub components: Vec<RevisionComponent>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateItem {
    pub id: Uuid,
    pub name: String,
    pub public_key: String,
    pub private_key: String,
    pub channels: Vec<ChannelItem>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentVariableItem {
    pub channel_id: Uuid,
    pub key: String,
    pub value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelItem {
    pub id: Uuid,
    pub app_id: Uuid,
    pub name: String,
    pub domain: String,
    pub revision_selection_strategy: ChannelRevisionSelectionStrategy,
    pub active_revision: Option<RevisionItem>,
    pub last_publish_at: Option<DateTime<Utc>>,
    pub range_rule: Option<String>,
    pub certificate: Option<Box<CertificateItem>>,
    pub environment_variables: Vec<EnvironmentVariableItem>,
    pub app_summary: Option<AppSummaryDto>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelJobStatusItem {
    pub channel_id: Uuid,
    pub status: &'static str,
}

pub fn revision_item(r: &Revision, with_type: bool) -> RevisionItem {
    RevisionItem {
        id: r.id,
        app_id: r.app_id,
        revision_number: r.revision_number.clone(),
        components: r.components.clone(),
        // Only the channel detail query fills it, from the first component.
        kind: if with_type {
            r.components.first().and_then(|c| c.kind.clone())
        } else {
            None
        },
    }
}

fn app_channels(state: &Store, app_id: Uuid) -> Vec<AppChannelListItem> {
    state
        .channels_of_app(app_id)
        .map(|c| AppChannelListItem {
            id: c.id,
            name: c.name.clone(),
            active_revision_number: c
                .active_revision_id
                .and_then(|id| state.revision(id))
                .map(|r| r.revision_number.clone()),
        })
        .collect()
}

/// The description of the app's "latest" revision: highest revision number as a string.
fn latest_description(state: &Store, app_id: Uuid) -> Option<String> {
    let mut latest: Option<&Revision> = None;
    for r in state.revisions_of_app(app_id) {
        if latest.is_none_or(|l| culture_cmp(&r.revision_number, &l.revision_number).is_gt()) {
            latest = Some(r);
        }
    }
    latest.and_then(|r| r.description.clone())
}

pub fn app_item(state: &Store, app: &App) -> AppItem {
    AppItem {
        id: app.id,
        name: app.name.clone(),
        storage_id: app.storage_id.clone(),
        description: latest_description(state, app.id),
        channels: app_channels(state, app.id),
    }
}

pub const APP_ITEM_PROPERTIES: &[&str] = &["Id", "Name", "StorageId", "Description", "Channels"];

pub fn app_sort_key(item: &AppItem, property: &str) -> Option<SortKey> {
    Some(match property {
        "Id" => SortKey::Id(item.id),
        "Name" => SortKey::Text(item.name.clone()),
        "StorageId" => SortKey::Text(item.storage_id.clone()),
        "Description" => item
            .description
            .clone()
            .map_or(SortKey::Null, SortKey::Text),
        "Channels" => SortKey::Opaque,
        _ => return None,
    })
}

pub fn certificate_item(state: &Store, c: &Certificate, with_channels: bool) -> CertificateItem {
    CertificateItem {
        id: c.id,
        name: c.name.clone(),
        public_key: c.public_key.clone(),
        private_key: c.private_key.clone(),
        channels: if with_channels {
            state
                .channels_with_certificate(c.id)
                .map(|ch| channel_item(state, ch, false, false))
                .collect()
        } else {
            Vec::new()
        },
    }
}

pub const CERTIFICATE_ITEM_PROPERTIES: &[&str] =
    &["Id", "Name", "PublicKey", "PrivateKey", "Channels"];

pub fn certificate_sort_key(item: &CertificateItem, property: &str) -> Option<SortKey> {
    Some(match property {
        "Id" => SortKey::Id(item.id),
        "Name" => SortKey::Text(item.name.clone()),
        "PublicKey" => SortKey::Text(item.public_key.clone()),
        "PrivateKey" => SortKey::Text(item.private_key.clone()),
        "Channels" => SortKey::Opaque,
        _ => return None,
    })
}

/// `detail`: the `GET /api/channels/{id}` shape (app summary, revision type).
/// `with_certificate`: false inside a certificate's own channel list.
pub fn channel_item(
    state: &Store,
    ch: &Channel,
    detail: bool,
    with_certificate: bool,
) -> ChannelItem {
    ChannelItem {
        id: ch.id,
        app_id: ch.app_id,
        name: ch.name.clone(),
        domain: ch.domain.clone(),
        revision_selection_strategy: ch.revision_selection_strategy,
        active_revision: ch
            .active_revision_id
            .and_then(|id| state.revision(id))
            .map(|r| revision_item(r, detail)),
        last_publish_at: ch.last_publish_at,
        range_rule: ch.range_rule.clone(),
        certificate: if with_certificate {
            ch.certificate_id
                .and_then(|id| state.certificate(id))
                .map(|c| Box::new(certificate_item(state, c, false)))
        } else {
            None
        },
        environment_variables: state
            .env_of_channel(ch.id)
            .map(|e| EnvironmentVariableItem {
                channel_id: e.channel_id,
                key: e.key.clone(),
                value: e.value.clone(),
            })
            .collect(),
        app_summary: if detail {
            state.app(ch.app_id).map(|a| AppSummaryDto {
                id: a.id,
                name: a.name.clone(),
                storage_id: a.storage_id.clone(),
                channels: app_channels(state, a.id),
            })
        } else {
            None
        },
    }
}

pub const CHANNEL_ITEM_PROPERTIES: &[&str] = &[
    "Id",
    "AppId",
    "Name",
    "Domain",
    "RevisionSelectionStrategy",
    "ActiveRevision",
    "LastPublishAt",
    "RangeRule",
    "Certificate",
    "EnvironmentVariables",
    "AppSummary",
];

pub fn channel_sort_key(item: &ChannelItem, property: &str) -> Option<SortKey> {
    let opaque_if = |present: bool| {
        if present {
            SortKey::Opaque
        } else {
            SortKey::Null
        }
    };
    Some(match property {
        "Id" => SortKey::Id(item.id),
        "AppId" => SortKey::Id(item.app_id),
        "Name" => SortKey::Text(item.name.clone()),
        "Domain" => SortKey::Text(item.domain.clone()),
        "RevisionSelectionStrategy" => SortKey::Int(match item.revision_selection_strategy {
            ChannelRevisionSelectionStrategy::UseRangeRule => 0,
            ChannelRevisionSelectionStrategy::UseSpecifiedRevision => 1,
        }),
        "ActiveRevision" => opaque_if(item.active_revision.is_some()),
        "LastPublishAt" => item.last_publish_at.map_or(SortKey::Null, SortKey::Time),
        "RangeRule" => item.range_rule.clone().map_or(SortKey::Null, SortKey::Text),
        "Certificate" => opaque_if(item.certificate.is_some()),
        "EnvironmentVariables" => SortKey::Opaque,
        "AppSummary" => SortKey::Null,
        _ => return None,
    })
}
