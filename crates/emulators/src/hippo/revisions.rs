//! `/api/revisions`: registration, details, range re-evaluation, deletion (§6.3).

use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use uuid::Uuid;

use super::http::{empty, json, page, ApiError, Errors, Req};
use super::model::{Channel, ChannelRevisionSelectionStrategy, Revision};
use super::range_rule;
use super::routes::{no_content, path_id, Jobs, Shared};
use super::store::Store;
use super::validate::{self, required};
use super::views;

pub(super) fn list_revisions(s: &Shared, req: &Req) -> Result<Response, ApiError> {
    let page_index = req.query_i32("pageIndex", 0)?;
    let page_size = req.query_i32("pageSize", 50)?;
    let st = s.state();
    let items: Vec<views::RevisionItem> = st
        .revisions()
        .iter()
        .map(|r| views::revision_item(r, false))
        .collect();
    let total = items.len() as i64;
    Ok(json(&page(items, total, page_index, page_size)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterRevisionCommand {
    app_storage_id: Option<String>,
    revision_number: Option<String>,
}

pub(super) async fn register_revision(s: &Shared, req: &Req) -> Result<Response, ApiError> {
    let cmd: RegisterRevisionCommand = req.json()?;
    let mut model = Errors::default();
    let storage_id = required(&mut model, "AppStorageId", cmd.app_storage_id);
    let number = required(&mut model, "RevisionNumber", cmd.revision_number);
    model.check_model()?;
    let mut errors = Errors::default();
    validate::max_length(&mut errors, "AppStorageId", &storage_id, 200);
    validate::matches(
        &mut errors,
        "AppStorageId",
        validate::is_revision_storage_id(&storage_id),
    );
    validate::max_length(&mut errors, "RevisionNumber", &number, 128);
    errors.check()?;

    // One revision per app with that storage id; no uniqueness check (§6.3).
    let registered: Vec<(Uuid, Uuid)> = {
        let mut st = s.state();
        let app_ids: Vec<Uuid> = st.apps_with_storage(&storage_id).map(|a| a.id).collect();
        app_ids
            .into_iter()
            .map(|app_id| {
                let id = Uuid::new_v4();
                st.insert_revision(Revision::new(id, app_id, &number));
                (id, app_id)
            })
            .collect()
    };
    if registered.is_empty() {
        return Err(ApiError::NotFoundEmpty);
    }
    // CreatedEvent<Revision> handlers, per revision: UpdateRevisionDetails, then
    // RevisionCreatedEventHandler. The first failure ends the request; rows stay saved.
    for (revision_id, app_id) in registered {
        update_revision_details(s, revision_id, &storage_id, &number).await?;
        let mut jobs = s.jobs();
        let result = revision_created_tx(&mut s.state(), &mut jobs, app_id, &number);
        s.run_jobs(jobs);
        result?;
    }
    Ok(empty(StatusCode::CREATED))
}

/// UpdateRevisionDetails: description and components from the bindle's spin.toml parcel.
pub(super) async fn update_revision_details(
    s: &Shared,
    revision_id: Uuid,
    storage_id: &str,
    number: &str,
) -> Result<(), ApiError> {
    let details = s
        .bindle
        .revision_details(storage_id, number)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFoundMessage(format!("Revision Id: {storage_id}/{number}")))?;
    // Without a manifest parcel Hippo stores nothing, not even the description.
    if let Some(components) = details.components {
        s.state()
            .set_revision_details(revision_id, details.description, components);
    }
    Ok(())
}

/// RevisionCreatedEventHandler: move range-rule channels to the new revision when it is
/// now their best match. Each move is an UpdateChannelCommand (validated, saved, then
/// ModifiedEvent<Channel>), so earlier moves survive a later failure.
fn revision_created_tx(
    st: &mut Store,
    jobs: &mut Jobs,
    app_id: Uuid,
    number: &str,
) -> Result<(), ApiError> {
    let channel_ids: Vec<Uuid> = st
        .channels_of_app(app_id)
        .filter(|c| c.revision_selection_strategy == ChannelRevisionSelectionStrategy::UseRangeRule)
        .map(|c| c.id)
        .collect();
    for id in channel_ids {
        let Some((target, ch)) = best_match(st, app_id, id)? else {
            continue;
        };
        if Some(target.id) == ch.active_revision_id || target.revision_number != number {
            continue;
        }
        let target = target.id;
        let (name, domain, rule) = (ch.name.clone(), ch.domain.clone(), ch.range_rule.clone());
        validate::update_channel(st, id, &name, &domain, rule.as_deref())?;
        st.update_channel(id, |ch| ch.active_revision_id = Some(target));
        jobs.channel_modified(st, id);
    }
    Ok(())
}

/// `RevisionRangeRule.Parse(channel.RangeRule).Match(channel.App.Revisions)`.
fn best_match(
    st: &Store,
    app_id: Uuid,
    channel_id: Uuid,
) -> Result<Option<(&Revision, &Channel)>, ApiError> {
    let Some(ch) = st.channel(channel_id) else {
        return Ok(None);
    };
    let rule = ch
        .range_rule
        .as_deref()
        .ok_or_else(|| ApiError::Internal("Value cannot be null. (Parameter 'rule')".into()))?;
    let candidates: Vec<&Revision> = st.revisions_of_app(app_id).collect();
    let selected = range_rule::select(rule, &candidates).map_err(ApiError::internal)?;
    Ok(selected.map(|i| (candidates[i], ch)))
}

pub(super) fn delete_revision(s: &Shared, raw_id: &str) -> Result<Response, ApiError> {
    let id = path_id(raw_id, "id")?;
    let mut jobs = s.jobs();
    let result = delete_revision_tx(&mut s.state(), &mut jobs, id);
    s.run_jobs(jobs);
    result.map(|()| no_content())
}

fn delete_revision_tx(st: &mut Store, jobs: &mut Jobs, id: Uuid) -> Result<(), ApiError> {
    let app_id = st
        .revision(id)
        .ok_or(ApiError::not_found("Revision", id))?
        .app_id;
    st.remove_revision(id);
    // RevisionDeletedEventHandler: re-evaluate the app's range-rule channels.
    let channel_ids: Vec<Uuid> = st
        .channels_of_app(app_id)
        .filter(|c| c.revision_selection_strategy == ChannelRevisionSelectionStrategy::UseRangeRule)
        .map(|c| c.id)
        .collect();
    for channel_id in channel_ids {
        let Some((target, ch)) = best_match(st, app_id, channel_id)? else {
            continue;
        };
        if Some(target.id) == ch.active_revision_id {
            continue;
        }
        let target = target.id;
        st.update_channel(channel_id, |ch| ch.active_revision_id = Some(target));
        jobs.channel_modified(st, channel_id);
    }
    Ok(())
}
