//! `/api/channels`, desired status, logs and `/api/channel-statuses` (§5.2-§5.4, §6).

use axum::response::Response;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::http::{json, page, sort_by, ApiError, Errors, Page, PageQuery, Req};
use super::model::{Channel, ChannelRevisionSelectionStrategy, DesiredStatus, EnvVar, Revision};
use super::range_rule;
use super::routes::{created, no_content, non_null, path_id, present, Jobs, Settings, Shared};
use super::store::Store;
use super::validate::{self, required, ChannelFields};
use super::views::{self, ChannelJobStatusItem};
use super::HippoVersion;

pub(super) fn list_channels(s: &Shared, req: &Req) -> Result<Response, ApiError> {
    let q = PageQuery::from_req(req)?;
    let mut items: Vec<views::ChannelItem> = {
        let st = s.state();
        st.channels()
            .iter()
            .filter(|c| c.name.contains(&q.search_text))
            .map(|c| views::channel_item(&st, c, false, true))
            .collect()
    };
    sort_by(
        &mut items,
        &q.sort_by,
        q.ascending,
        views::channel_sort_key,
        views::CHANNEL_ITEM_PROPERTIES,
    )?;
    let total = items.len() as i64;
    Ok(json(&page(items, total, q.page_index, q.page_size)))
}

pub(super) fn get_channel(s: &Shared, raw_id: &str) -> Result<Response, ApiError> {
    let id = path_id(raw_id, "id")?;
    let st = s.state();
    let ch = st.channel(id).ok_or(ApiError::not_found("Channel", id))?;
    Ok(json(&views::channel_item(&st, ch, true, true)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateChannelCommand {
    #[serde(default, deserialize_with = "non_null")]
    app_id: Option<Uuid>,
    name: Option<String>,
    domain: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    revision_selection_strategy: Option<ChannelRevisionSelectionStrategy>,
    range_rule: Option<String>,
    active_revision_id: Option<Uuid>,
    certificate_id: Option<Uuid>,
}

pub(super) fn create_channel(s: &Shared, req: &Req) -> Result<Response, ApiError> {
    let cmd: CreateChannelCommand = req.json()?;
    let mut model = Errors::default();
    let name = required(&mut model, "Name", cmd.name.clone());
    model.check_model()?;
    let mut jobs = s.jobs();
    let result = create_channel_tx(&mut s.state(), &mut jobs, &s.settings, cmd, name);
    s.run_jobs(jobs);
    result.map(created)
}

/// The channel domain Hippo makes up when none is given (§6.5).
fn default_domain(settings: &Settings, app: &str, channel: &str, first: bool) -> String {
    let platform = &settings.platform_domain;
    let domain = match settings.version {
        HippoVersion::V0_19 => format!("{channel}.{app}.{platform}"),
        HippoVersion::V0_20 if first => format!("{app}.{platform}"),
        HippoVersion::V0_20 => format!("{channel}-{app}.{platform}"),
    };
    domain.replace('_', "-").to_lowercase()
}

fn create_channel_tx(
    st: &mut Store,
    jobs: &mut Jobs,
    settings: &Settings,
    cmd: CreateChannelCommand,
    name: String,
) -> Result<Uuid, ApiError> {
    let app_id = cmd.app_id.unwrap_or_default();
    let strategy = cmd.revision_selection_strategy.unwrap_or_default();
    let mut errors = Errors::default();
    validate::channel(
        &mut errors,
        st,
        &ChannelFields {
            app_id,
            existing: None,
            name: &name,
            domain: cmd.domain.as_deref(),
            range_rule: cmd.range_rule.as_deref(),
        },
    );
    validate::strategy_matches(&mut errors, strategy, cmd.active_revision_id);
    errors.check()?;

    let app = st.app(app_id).ok_or(ApiError::not_found("App", app_id))?;
    let first = st.channels_of_app(app_id).next().is_none();
    let domain = cmd
        .domain
        .unwrap_or_else(|| default_domain(settings, &app.name, &name, first));
    if let Some(cert) = cmd.certificate_id {
        st.certificate(cert)
            .ok_or(ApiError::not_found("Certificate", cert))?;
    }
    let range_rule = match (strategy, cmd.range_rule) {
        (ChannelRevisionSelectionStrategy::UseRangeRule, None) => Some("*".to_string()),
        (_, rule) => rule,
    };
    let active_revision_id = match (strategy, cmd.active_revision_id) {
        (ChannelRevisionSelectionStrategy::UseRangeRule, None) => {
            let candidates: Vec<&Revision> = st.revisions_of_app(app_id).collect();
            let rule = range_rule.as_deref().unwrap_or("*");
            range_rule::select(rule, &candidates)
                .map_err(ApiError::internal)?
                .map(|i| candidates[i].id)
        }
        (ChannelRevisionSelectionStrategy::UseSpecifiedRevision, Some(rev)) => Some(
            st.revision(rev)
                .ok_or(ApiError::not_found("Revision", rev))?
                .id,
        ),
        _ => None,
    };
    let now = Utc::now();
    let id = Uuid::new_v4();
    let port_id = i32::try_from(st.channels().len()).unwrap_or(i32::MAX);
    st.insert_channel(Channel {
        id,
        app_id,
        name,
        domain,
        revision_selection_strategy: strategy,
        range_rule,
        active_revision_id,
        last_publish_at: active_revision_id.map(|_| now),
        desired_status: None,
        certificate_id: cmd.certificate_id,
        port_id,
        created: now,
    });
    // ChannelCreatedEventHandler.
    jobs.start(st, id);
    Ok(id)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateChannelCommand {
    #[serde(default, deserialize_with = "non_null")]
    id: Option<Uuid>,
    name: Option<String>,
    domain: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    revision_selection_strategy: Option<ChannelRevisionSelectionStrategy>,
    range_rule: Option<String>,
    active_revision_id: Option<Uuid>,
    /// Accepted and ignored by Hippo's handler.
    #[serde(default, rename = "lastPublishDate")]
    _last_publish_date: Option<serde::de::IgnoredAny>,
    certificate_id: Option<Uuid>,
}

/// Foreign keys Hippo's database enforces: a dangling id fails SaveChanges (500).
pub(super) fn check_references(
    st: &Store,
    revision: Option<Uuid>,
    certificate: Option<Uuid>,
) -> Result<(), ApiError> {
    if let Some(r) = revision.filter(|r| st.revision(*r).is_none()) {
        return Err(ApiError::Internal(format!(
            "FOREIGN KEY constraint failed: revision {r}"
        )));
    }
    if let Some(c) = certificate.filter(|c| st.certificate(*c).is_none()) {
        return Err(ApiError::Internal(format!(
            "FOREIGN KEY constraint failed: certificate {c}"
        )));
    }
    Ok(())
}

pub(super) fn update_channel(s: &Shared, req: &Req, raw_id: &str) -> Result<Response, ApiError> {
    let id = path_id(raw_id, "id")?;
    let cmd: UpdateChannelCommand = req.json()?;
    let mut model = Errors::default();
    let name = required(&mut model, "Name", cmd.name.clone());
    let domain = required(&mut model, "Domain", cmd.domain.clone());
    model.check_model()?;
    if cmd.id.unwrap_or_default() != id {
        return Err(ApiError::BadRequestEmpty);
    }
    let mut jobs = s.jobs();
    let result = update_channel_tx(&mut s.state(), &mut jobs, id, cmd, name, domain);
    s.run_jobs(jobs);
    result.map(|()| no_content())
}

fn update_channel_tx(
    st: &mut Store,
    jobs: &mut Jobs,
    id: Uuid,
    cmd: UpdateChannelCommand,
    name: String,
    domain: String,
) -> Result<(), ApiError> {
    validate::update_channel(st, id, &name, &domain, cmd.range_rule.as_deref())?;
    check_references(st, cmd.active_revision_id, cmd.certificate_id)?;
    let strategy = cmd.revision_selection_strategy.unwrap_or_default();
    st.update_channel(id, |ch| {
        ch.name = name;
        ch.domain = domain;
        ch.revision_selection_strategy = strategy;
        ch.range_rule = match (strategy, cmd.range_rule) {
            (ChannelRevisionSelectionStrategy::UseRangeRule, None) => Some("*".to_string()),
            (_, rule) => rule,
        };
        ch.active_revision_id = cmd.active_revision_id;
        ch.certificate_id = cmd.certificate_id;
    })
    .ok_or(ApiError::not_found("Channel", id))?;
    jobs.channel_modified(st, id);
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvVarDto {
    key: Option<String>,
    value: Option<String>,
}

/// Raw values; absent = unchanged, `null` = set to null (§5.4).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PatchChannelCommand {
    /// Overwritten from the route by Hippo.
    #[serde(default, deserialize_with = "non_null", rename = "channelId")]
    _channel_id: Option<Uuid>,
    #[serde(default, deserialize_with = "present")]
    environment_variables: Option<Option<Vec<EnvVarDto>>>,
    #[serde(default, deserialize_with = "present")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    domain: Option<Option<String>>,
    #[serde(default, deserialize_with = "non_null")]
    revision_selection_strategy: Option<ChannelRevisionSelectionStrategy>,
    #[serde(default, deserialize_with = "present")]
    range_rule: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    active_revision_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "present")]
    certificate_id: Option<Option<Uuid>>,
}

pub(super) fn patch_channel(s: &Shared, req: &Req, raw_id: &str) -> Result<Response, ApiError> {
    let id = path_id(raw_id, "id")?;
    let cmd: PatchChannelCommand = req.json()?;
    let mut jobs = s.jobs();
    let result = patch_channel_tx(&mut s.state(), &mut jobs, id, cmd);
    s.run_jobs(jobs);
    result.map(|()| no_content())
}

fn patch_channel_tx(
    st: &mut Store,
    jobs: &mut Jobs,
    id: Uuid,
    cmd: PatchChannelCommand,
) -> Result<(), ApiError> {
    st.channel(id).ok_or(ApiError::not_found("Channel", id))?;
    // No validators for PATCH in v0.19; the database still rejects NULL names/domains and
    // dangling foreign keys, failing SaveChanges (500) before anything is stored.
    if matches!(cmd.name, Some(None)) || matches!(cmd.domain, Some(None)) {
        return Err(ApiError::Internal(
            "NOT NULL constraint failed: Channels".to_string(),
        ));
    }
    check_references(
        st,
        cmd.active_revision_id.flatten(),
        cmd.certificate_id.flatten(),
    )?;

    let mut env_events = 0usize;
    if let Some(list) = cmd.environment_variables {
        env_events = replace_env(st, id, list.unwrap_or_default());
    }
    st.update_channel(id, |ch| {
        if let Some(Some(name)) = cmd.name {
            ch.name = name;
        }
        if let Some(Some(domain)) = cmd.domain {
            ch.domain = domain;
        }
        if let Some(strategy) = cmd.revision_selection_strategy {
            ch.revision_selection_strategy = strategy;
        }
        if let Some(rule) = cmd.range_rule.clone() {
            ch.range_rule = rule;
        }
        if let Some(rev) = cmd.active_revision_id {
            ch.active_revision_id = rev;
        }
        if let Some(cert) = cmd.certificate_id {
            ch.certificate_id = cert;
        }
        if cmd.revision_selection_strategy == Some(ChannelRevisionSelectionStrategy::UseRangeRule)
            && matches!(cmd.range_rule, Some(None))
        {
            ch.range_rule = Some("*".to_string());
        }
    })
    .ok_or(ApiError::not_found("Channel", id))?;
    // No ModifiedEvent<Channel>: only env var created/deleted events restart the job.
    for _ in 0..env_events {
        jobs.start(st, id);
    }
    Ok(())
}

/// Replaces the channel's variables by key; returns the number of created + deleted
/// variables (each is an event whose handler calls StartJob; modifications are silent).
fn replace_env(st: &mut Store, channel_id: Uuid, list: Vec<EnvVarDto>) -> usize {
    let mut kept: Vec<Uuid> = Vec::new();
    let mut created = 0;
    for dto in list {
        let key = dto.key.unwrap_or_default();
        let value = dto.value.unwrap_or_default();
        let existing = st
            .env_of_channel(channel_id)
            .find(|e| e.key == key)
            .map(|e| e.id);
        match existing {
            Some(id) => {
                st.set_env_value(id, value);
                kept.push(id);
            }
            None => {
                let id = Uuid::new_v4();
                st.insert_env(EnvVar {
                    id,
                    channel_id,
                    key,
                    value,
                });
                kept.push(id);
                created += 1;
            }
        }
    }
    let dropped: Vec<Uuid> = st
        .env_of_channel(channel_id)
        .filter(|e| !kept.contains(&e.id))
        .map(|e| e.id)
        .collect();
    for id in &dropped {
        st.remove_env(*id);
    }
    created + dropped.len()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateDesiredStatusCommand {
    #[serde(default, deserialize_with = "non_null")]
    channel_id: Option<Uuid>,
    /// Absent binds to Hippo's enum value 0: neither Running nor Dead.
    #[serde(default, deserialize_with = "non_null")]
    desired_status: Option<DesiredStatus>,
}

pub(super) fn set_desired_status(
    s: &Shared,
    req: &Req,
    raw_id: &str,
) -> Result<Response, ApiError> {
    let id = path_id(raw_id, "channelId")?;
    let cmd: UpdateDesiredStatusCommand = req.json()?;
    if cmd.channel_id.unwrap_or_default() != id {
        return Err(ApiError::BadRequestEmpty);
    }
    let mut jobs = s.jobs();
    let result = set_desired_status_tx(&mut s.state(), &mut jobs, id, cmd.desired_status);
    s.run_jobs(jobs);
    result.map(|()| no_content())
}

fn set_desired_status_tx(
    st: &mut Store,
    jobs: &mut Jobs,
    id: Uuid,
    status: Option<DesiredStatus>,
) -> Result<(), ApiError> {
    st.update_channel(id, |ch| ch.desired_status = status)
        .ok_or(ApiError::not_found("Channel", id))?;
    jobs.channel_modified(st, id);
    Ok(())
}

pub(super) fn delete_channel(s: &Shared, raw_id: &str) -> Result<Response, ApiError> {
    let id = path_id(raw_id, "id")?;
    let mut jobs = s.jobs();
    let result = delete_channel_tx(&mut s.state(), &mut jobs, id);
    s.run_jobs(jobs);
    result.map(|()| no_content())
}

fn delete_channel_tx(st: &mut Store, jobs: &mut Jobs, id: Uuid) -> Result<(), ApiError> {
    st.remove_channel(id)
        .ok_or(ApiError::not_found("Channel", id))?;
    // ChannelDeletedEventHandler.
    jobs.delete(st, id);
    Ok(())
}

pub(super) fn channel_logs(s: &Shared, raw_id: &str) -> Result<Response, ApiError> {
    #[derive(Serialize)]
    struct GetChannelLogsVm {
        logs: Vec<String>,
    }
    let id = path_id(raw_id, "id")?;
    s.state()
        .channel(id)
        .ok_or(ApiError::not_found("Channel", id))?;
    // The emulator runs nothing, so there is never an allocation to read logs from.
    Ok(json(&GetChannelLogsVm { logs: Vec::new() }))
}

pub(super) fn channel_statuses(s: &Shared, req: &Req) -> Result<Response, ApiError> {
    let page_index = req.query_i32("pageIndex", 0)?;
    let page_size = req.query_i32("pageSize", i32::MAX)?;
    let channel_id = req.query_uuid("channelId")?;
    let st = s.state();
    let status = |id: Uuid| {
        if st.jobs.contains(&id) {
            "Running"
        } else {
            "Dead"
        }
    };
    let result = match channel_id {
        // One item; Hippo echoes the request's paging values.
        Some(id) => Page {
            items: vec![ChannelJobStatusItem {
                channel_id: id,
                status: status(id),
            }],
            total_items: 1,
            page_index,
            page_size,
            is_last_page: i64::from(page_index) * i64::from(page_size) == 0,
        },
        None => {
            let items: Vec<ChannelJobStatusItem> = st
                .channels()
                .iter()
                .map(|c| ChannelJobStatusItem {
                    channel_id: c.id,
                    status: status(c.id),
                })
                .collect();
            // totalItems is the number of jobs, not channels (§4.2).
            page(items, st.jobs.len() as i64, page_index, page_size)
        }
    };
    Ok(json(&result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use super::super::HippoVersion;

    fn settings(version: HippoVersion) -> Settings {
        Settings {
            platform_domain: "hippofactory.io".into(),
            version,
            registration_open: true,
            token_lifetime: Duration::from_secs(60),
            put_starts_no_job: false,
        }
    }

    #[test]
    fn default_domains() {
        let v19 = settings(HippoVersion::V0_19);
        let v20 = settings(HippoVersion::V0_20);
        assert_eq!(
            default_domain(&v19, "My_App", "spin_deploy", true),
            "spin-deploy.my-app.hippofactory.io"
        );
        assert_eq!(
            default_domain(&v20, "My_App", "prod", true),
            "my-app.hippofactory.io"
        );
        assert_eq!(
            default_domain(&v20, "My_App", "prod", false),
            "prod-my-app.hippofactory.io"
        );
    }
}
