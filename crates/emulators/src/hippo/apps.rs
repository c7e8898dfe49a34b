//! `/api/apps` (with InitialRevisionImport) and `/api/storages` (§4, §6.3).

use chrono::Utc;
use serde::Deserialize;
use uuid::Uuid;

use axum::response::Response;

use super::http::{culture_cmp, json, page, sort_by, ApiError, Errors, PageQuery, Req};
use super::model::{App, Revision};
use super::revisions::update_revision_details;
use super::routes::{created, no_content, non_null, path_id, Jobs, Shared};
use super::store::Store;
use super::validate::{self, required};
use super::views;

pub(super) fn list_apps(s: &Shared, req: &Req) -> Result<Response, ApiError> {
    let q = PageQuery::from_req(req)?;
    let (mut items, total) = {
        let st = s.state();
        let all: Vec<views::AppItem> = st.apps().iter().map(|a| views::app_item(&st, a)).collect();
        // §13: totalItems counts every app, even with a searchText.
        let total = all.len() as i64;
        let filtered = all
            .into_iter()
            .filter(|a| a.name.contains(&q.search_text))
            .collect::<Vec<_>>();
        (filtered, total)
    };
    sort_by(
        &mut items,
        &q.sort_by,
        q.ascending,
        views::app_sort_key,
        views::APP_ITEM_PROPERTIES,
    )?;
    Ok(json(&page(items, total, q.page_index, q.page_size)))
}

pub(super) fn get_app(s: &Shared, raw_id: &str) -> Result<Response, ApiError> {
    let id = path_id(raw_id, "id")?;
    let st = s.state();
    let app = st.app(id).ok_or(ApiError::not_found("App", id))?;
    Ok(json(&views::app_item(&st, app)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateAppCommand {
    name: Option<String>,
    storage_id: Option<String>,
}

pub(super) async fn create_app(s: &Shared, req: &Req) -> Result<Response, ApiError> {
    let cmd: CreateAppCommand = req.json()?;
    let mut model = Errors::default();
    let name = required(&mut model, "Name", cmd.name);
    let storage_id = required(&mut model, "StorageId", cmd.storage_id);
    model.check_model()?;

    let mut errors = Errors::default();
    validate::app_name(&mut errors, &s.state(), &name);
    validate::max_length(&mut errors, "StorageId", &storage_id, 200);
    validate::matches(
        &mut errors,
        "StorageId",
        validate::is_app_storage_id(&storage_id),
    );
    if !s
        .bindle
        .storage_exists(&storage_id)
        .await
        .map_err(ApiError::internal)?
    {
        errors.add("StorageId", "Storage ID not found in bindle server");
    }
    errors.check()?;

    let app_id = Uuid::new_v4();
    {
        let mut st = s.state();
        // Re-checked: another request may have taken the name during the Bindle call.
        let mut errors = Errors::default();
        validate::app_name(&mut errors, &st, &name);
        errors.check()?;
        st.insert_app(App {
            id: app_id,
            name,
            storage_id: storage_id.clone(),
            created: Utc::now(),
        });
    }

    // InitialRevisionImport (CreatedEvent<App>): runs after the app row is saved, so a
    // failure here answers 500 with the app in place.
    let versions = s
        .bindle
        .versions_of(&storage_id)
        .await
        .map_err(ApiError::internal)?;
    let imported: Vec<(Uuid, String)> = {
        let mut st = s.state();
        if st.app(app_id).is_none() {
            Vec::new()
        } else {
            versions
                .into_iter()
                .map(|number| {
                    let id = Uuid::new_v4();
                    st.insert_revision(Revision::new(id, app_id, &number));
                    (id, number)
                })
                .collect()
        }
    };
    for (revision_id, number) in imported {
        update_revision_details(s, revision_id, &storage_id, &number).await?;
    }
    Ok(created(app_id))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateAppCommand {
    #[serde(default, deserialize_with = "non_null")]
    id: Option<Uuid>,
    name: Option<String>,
}

pub(super) fn update_app(s: &Shared, req: &Req, raw_id: &str) -> Result<Response, ApiError> {
    let id = path_id(raw_id, "id")?;
    let cmd: UpdateAppCommand = req.json()?;
    let mut model = Errors::default();
    let name = required(&mut model, "Name", cmd.name);
    model.check_model()?;
    if cmd.id.unwrap_or_default() != id {
        return Err(ApiError::BadRequestEmpty);
    }
    let mut st = s.state();
    let mut errors = Errors::default();
    validate::app_name(&mut errors, &st, &name);
    errors.check()?;
    st.rename_app(id, name)
        .ok_or(ApiError::not_found("App", id))?;
    Ok(no_content())
}

pub(super) fn delete_app(s: &Shared, raw_id: &str) -> Result<Response, ApiError> {
    let id = path_id(raw_id, "id")?;
    let mut jobs = s.jobs();
    let result = delete_app_tx(&mut s.state(), &mut jobs, id);
    s.run_jobs(jobs);
    result.map(|()| no_content())
}

fn delete_app_tx(st: &mut Store, jobs: &mut Jobs, id: Uuid) -> Result<(), ApiError> {
    st.app(id).ok_or(ApiError::not_found("App", id))?;
    let channel_ids = st.remove_app(id);
    for channel_id in channel_ids {
        jobs.delete(st, channel_id);
    }
    Ok(())
}

pub(super) async fn list_storages(s: &Shared, req: &Req) -> Result<Response, ApiError> {
    let search = req.query("searchText").unwrap_or("").to_string();
    let page_index = req.query_i32("pageIndex", 0)?;
    let page_size = req.query_i32("pageSize", 50)?;
    let ascending = req.query_bool("IsSortedAscending", true)?;
    let mut names = s
        .bindle
        .storage_names(&search)
        .await
        .map_err(ApiError::internal)?;
    names.sort_by(|a, b| {
        let order = culture_cmp(a, b);
        if ascending {
            order
        } else {
            order.reverse()
        }
    });
    let total = names.len() as i64;
    Ok(json(&page(names, total, page_index, page_size)))
}
