//! Shared server state, scheduler plumbing and routing (HIPPO-API.md §2, §7).
//!
//! Each handler takes the state lock only for synchronous sections (`*_tx` functions working
//! on `&mut Store`) and never across an `.await`: Bindle calls happen between lock
//! sections, which also gives Hippo's "row saved, then the event handler failed" orderings.
//! Scheduler calls collected in a section are made right after the lock is released.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::super::state_file::{Persisted, StateFile};
use super::bindle::BindleClient;
use super::http::{empty, json, ApiError, Errors, Req};
use super::model::DesiredStatus;
use super::scheduler::{JobScheduler, ScheduledJob};
use super::store::Store;
use super::{accounts, apps, certificates, channels, revisions, HippoVersion, RecordedRequest};

/// Configuration the handlers need.
pub(super) struct Settings {
    pub platform_domain: String,
    pub version: HippoVersion,
    pub registration_open: bool,
    pub token_lifetime: Duration,
    pub put_starts_no_job: bool,
}

/// Everything the server task shares with the `HippoEmulator` handle.
pub(super) struct Shared {
    pub state: Mutex<Store>,
    pub requests: Mutex<Requests>,
    pub scheduler: Arc<dyn JobScheduler>,
    pub bindle: BindleClient,
    pub settings: Settings,
    /// Closed by `stop` (or the drop).
    pub state_file: Option<StateFile>,
}

/// The requests served, and how many of them are writes (counted as they come, since the
/// bench asks for that number every few milliseconds).
#[derive(Default)]
pub(super) struct Requests {
    pub all: Vec<RecordedRequest>,
    pub writes: usize,
}

impl Requests {
    pub fn push(&mut self, request: RecordedRequest) {
        self.writes += usize::from(request.is_write());
        self.all.push(request);
    }

    pub fn clear(&mut self) {
        self.all.clear();
        self.writes = 0;
    }
}

impl Persisted for Shared {
    fn state_file(&self) -> Option<&StateFile> {
        self.state_file.as_ref()
    }

    fn state_json(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec_pretty(&*self.state())
    }
}

/// Recover from poisoning: a panicked handler must not take the emulator down with it.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn state(&self) -> MutexGuard<'_, Store> {
        lock(&self.state)
    }

    /// The job actions of one request, under this emulator's settings.
    pub(super) fn jobs(&self) -> Jobs {
        Jobs {
            actions: Vec::new(),
            put_starts_no_job: self.settings.put_starts_no_job,
        }
    }

    pub(super) fn run_jobs(&self, jobs: Jobs) {
        for action in jobs.actions {
            match action {
                JobAction::Start(job) => self.scheduler.start_job(job),
                JobAction::Delete(id) => self.scheduler.delete_job(id),
            }
        }
    }
}

enum JobAction {
    Start(ScheduledJob),
    Delete(Uuid),
}

/// Scheduler calls decided inside a lock section; `state.jobs` is updated at the same time.
pub(super) struct Jobs {
    actions: Vec<JobAction>,
    /// [`super::HippoEmulatorConfig::put_starts_no_job`].
    put_starts_no_job: bool,
}

impl Jobs {
    /// `StartJob` for the channel, if it has an active revision ("no active revision" is
    /// logged and skipped by every Hippo handler).
    pub(super) fn start(&mut self, st: &mut Store, channel_id: Uuid) {
        let Some(ch) = st.channel(channel_id) else {
            return;
        };
        let Some(rev) = ch.active_revision_id.and_then(|id| st.revision(id)) else {
            return;
        };
        let Some(app) = st.app(ch.app_id) else {
            return;
        };
        let env: BTreeMap<String, String> = st
            .env_of_channel(channel_id)
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        let job = ScheduledJob {
            channel_id,
            bindle_id: format!("{}/{}", app.storage_id, rev.revision_number),
            env,
            domain: ch.domain.clone(),
        };
        st.jobs.insert(channel_id);
        self.actions.push(JobAction::Start(job));
    }

    pub(super) fn delete(&mut self, st: &mut Store, channel_id: Uuid) {
        st.jobs.remove(&channel_id);
        self.actions.push(JobAction::Delete(channel_id));
    }

    /// `ModifiedEvent<Channel>`: ActiveRevisionChangedEventHandler, then
    /// ChannelStatusModifiedEventHandler (§6.4). With `put_starts_no_job` (Hippo v0.19's
    /// quirk), the first starts nothing and a status never set starts nothing either.
    pub(super) fn channel_modified(&mut self, st: &mut Store, channel_id: Uuid) {
        if !self.put_starts_no_job {
            self.start(st, channel_id);
        }
        match st.channel(channel_id).and_then(|c| c.desired_status) {
            Some(DesiredStatus::Running) => self.start(st, channel_id),
            Some(DesiredStatus::Dead) => self.delete(st, channel_id),
            None => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------

enum Endpoint<'a> {
    Health,
    CreateAccount,
    CreateToken,
    ListApps,
    GetApp(&'a str),
    CreateApp,
    UpdateApp(&'a str),
    DeleteApp(&'a str),
    ListChannels,
    GetChannel(&'a str),
    CreateChannel,
    UpdateChannel(&'a str),
    PatchChannel(&'a str),
    DeleteChannel(&'a str),
    SetDesiredStatus(&'a str),
    ChannelLogs(&'a str),
    ListRevisions,
    RegisterRevision,
    DeleteRevision(&'a str),
    ListCertificates,
    CreateCertificate,
    UpdateCertificate(&'a str),
    DeleteCertificate(&'a str),
    ListStorages,
    ChannelStatuses,
}

/// ASP.NET Core routing: case-insensitive literals, optional trailing slash, 405 for a known
/// path with another method, 404 otherwise.
fn resolve<'a>(method: &Method, path: &'a str) -> Result<Endpoint<'a>, ApiError> {
    use Endpoint::*;
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let segs: Vec<&str> = trimmed.split('/').collect();
    let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    let pick = |options: Vec<(Method, Endpoint<'a>)>| {
        options
            .into_iter()
            .find(|(m, _)| m == method)
            .map(|(_, e)| e)
            .ok_or(ApiError::MethodNotAllowed)
    };
    let id = |i: usize| segs[i];
    let (get, post, put, patch, delete) = (
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    );
    if segs.iter().skip(1).any(|s| s.is_empty()) {
        return Err(ApiError::NoRoute);
    }
    match lower.as_slice() {
        ["healthz"] => pick(vec![(get, Health)]),
        ["api", "accounts"] => pick(vec![(post, CreateAccount)]),
        ["api", "auth-tokens"] => pick(vec![(post, CreateToken)]),
        ["api", "apps"] => pick(vec![(get, ListApps), (post, CreateApp)]),
        ["api", "apps", _] => pick(vec![
            (get, GetApp(id(2))),
            (put, UpdateApp(id(2))),
            (delete, DeleteApp(id(2))),
        ]),
        ["api", "channels"] => pick(vec![(get, ListChannels), (post, CreateChannel)]),
        ["api", "channels", _] => pick(vec![
            (get, GetChannel(id(2))),
            (put, UpdateChannel(id(2))),
            (patch, PatchChannel(id(2))),
            (delete, DeleteChannel(id(2))),
        ]),
        ["api", "channels", _, "desired-status"] => pick(vec![(put, SetDesiredStatus(id(2)))]),
        ["api", "channels", _, "logs"] => pick(vec![(get, ChannelLogs(id(2)))]),
        ["api", "revisions"] => pick(vec![(get, ListRevisions), (post, RegisterRevision)]),
        ["api", "revisions", _] => pick(vec![(delete, DeleteRevision(id(2)))]),
        ["api", "certificates"] => pick(vec![(get, ListCertificates), (post, CreateCertificate)]),
        ["api", "certificates", _] => pick(vec![
            (put, UpdateCertificate(id(2))),
            (delete, DeleteCertificate(id(2))),
        ]),
        ["api", "storages"] => pick(vec![(get, ListStorages)]),
        ["api", "channel-statuses"] => pick(vec![(get, ChannelStatuses)]),
        _ => Err(ApiError::NoRoute),
    }
}

pub(super) async fn handle(s: &Shared, req: &Req) -> Response {
    match route(s, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn route(s: &Shared, req: &Req) -> Result<Response, ApiError> {
    use Endpoint::*;
    let endpoint = resolve(&req.method, &req.path)?;
    // Authorization runs before model binding, so a bad token wins over a bad body.
    if !matches!(endpoint, Health | CreateAccount | CreateToken) {
        accounts::authenticate(s, req)?;
    }
    match endpoint {
        Health => Ok(accounts::health()),
        CreateAccount => accounts::create_account(s, req),
        CreateToken => accounts::create_token(s, req),
        ListApps => apps::list_apps(s, req),
        GetApp(id) => apps::get_app(s, id),
        CreateApp => apps::create_app(s, req).await,
        UpdateApp(id) => apps::update_app(s, req, id),
        DeleteApp(id) => apps::delete_app(s, id),
        ListChannels => channels::list_channels(s, req),
        GetChannel(id) => channels::get_channel(s, id),
        CreateChannel => channels::create_channel(s, req),
        UpdateChannel(id) => channels::update_channel(s, req, id),
        PatchChannel(id) => channels::patch_channel(s, req, id),
        DeleteChannel(id) => channels::delete_channel(s, id),
        SetDesiredStatus(id) => channels::set_desired_status(s, req, id),
        ChannelLogs(id) => channels::channel_logs(s, id),
        ListRevisions => revisions::list_revisions(s, req),
        RegisterRevision => revisions::register_revision(s, req).await,
        DeleteRevision(id) => revisions::delete_revision(s, id),
        ListCertificates => certificates::list_certificates(s, req),
        CreateCertificate => certificates::create_certificate(s, req),
        UpdateCertificate(id) => certificates::update_certificate(s, req, id),
        DeleteCertificate(id) => certificates::delete_certificate(s, id),
        ListStorages => apps::list_storages(s, req).await,
        ChannelStatuses => channels::channel_statuses(s, req),
    }
}

/// A `{id}` route value bound to a `Guid` parameter.
pub(super) fn path_id(raw: &str, name: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        let mut e = Errors::default();
        e.add(name, format!("The value '{raw}' is not valid."));
        ApiError::ModelState(e)
    })
}

/// A created entity's id: the JSON-quoted GUID.
pub(super) fn created(id: Uuid) -> Response {
    json(&id)
}

pub(super) fn no_content() -> Response {
    empty(StatusCode::NO_CONTENT)
}

/// Binds value-type properties (Guid, enums) that Newtonsoft refuses to set to `null`;
/// absent stays `None` (the C# default).
pub(super) fn non_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// PATCH `Field<T>`: absent → `None`, present (even `null`) → `Some(value)`.
pub(super) fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

pub(super) fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing() {
        assert!(matches!(
            resolve(&Method::GET, "/API/Apps/"),
            Ok(Endpoint::ListApps)
        ));
        assert!(matches!(
            resolve(&Method::PUT, "/api/channels/abc/desired-status"),
            Ok(Endpoint::SetDesiredStatus("abc"))
        ));
        assert!(matches!(
            resolve(&Method::PATCH, "/api/apps"),
            Err(ApiError::MethodNotAllowed)
        ));
        assert!(matches!(
            resolve(&Method::GET, "/api/nope"),
            Err(ApiError::NoRoute)
        ));
        assert!(matches!(
            resolve(&Method::GET, "/api//apps"),
            Err(ApiError::NoRoute)
        ));
    }
}
