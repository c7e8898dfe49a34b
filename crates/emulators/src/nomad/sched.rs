//! Job registration, deregistration and the scheduler's reconciliation on the single emulated
//! node: allocations, deployments, evaluations, job status and summary (NOMAD-API.md §1.3).
//!
//! Everything here runs under the state lock on `&mut State` and never blocks; delayed work
//! (allocation start, health) is queued as [`Timer`]s.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{SecondsFormat, TimeZone, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::http::ApiError;
use super::jobspec::{datacenter_matches, destructive_change, spec_changed, RegisterRequest};
use super::state::{
    Alloc, AllocHealth, Deployment, DeploymentGroup, Eval, GroupSummary, JobRecord, State, Summary,
    TaskEvent, TaskState, Timer, TRACKED_VERSIONS,
};
use super::Settings;

/// Nomad's scheduler descriptions (`scheduler/reconcile.go`).
const ALLOC_NOT_NEEDED: &str = "alloc not needed due to job update";
const ALLOC_UPDATING: &str = "alloc is being updated due to job update";
const ALLOC_RESCHEDULED: &str = "alloc was rescheduled because it failed";

/// What a register or deregister answers.
#[derive(Debug, Clone)]
pub struct WriteResult {
    pub eval_id: String,
    pub eval_create_index: u64,
    pub job_modify_index: u64,
    pub index: u64,
}

pub fn now_ns() -> i64 {
    Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

pub fn rfc3339(ns: i64) -> String {
    Utc.timestamp_nanos(ns)
        .to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn new_id() -> String {
    Uuid::new_v4().to_string()
}

/// `POST /v1/job/:id` (and the Hippo scheduler's StartJob).
pub fn register(
    st: &mut State,
    cfg: &Settings,
    req: RegisterRequest,
) -> Result<WriteResult, ApiError> {
    let eval_priority = req.eval_priority;
    let mut job = req.job;
    let ns = job["Namespace"].as_str().unwrap_or("default").to_string();
    let id = job["ID"].as_str().unwrap_or_default().to_string();
    // A fresh Nomad has only the default namespace.
    if ns != "default" {
        return Err(ApiError::text(
            500,
            format!("job {id:?} is in nonexistent namespace {ns:?}"),
        ));
    }
    let existing = st.job(&ns, &id);
    if req.enforce_index {
        let want = req.job_modify_index;
        let prefix = format!("Enforcing job modify index {want}");
        match existing {
            None if want != 0 => {
                return Err(ApiError::text(500, format!("{prefix}: job does not exist")))
            }
            Some(_) if want == 0 => {
                return Err(ApiError::text(500, format!("{prefix}: job already exists")))
            }
            Some(e) => {
                let have = e.job["JobModifyIndex"].as_u64().unwrap_or(0);
                if have != want {
                    return Err(ApiError::text(
                        500,
                        format!("{prefix}: job exists with conflicting job modify index: {have}"),
                    ));
                }
            }
            None => {}
        }
    }
    if req.preserve_counts {
        if let Some(e) = existing {
            preserve_counts(&e.job, &mut job);
        }
    }
    let changed = existing.is_none_or(|e| spec_changed(&e.job, &job));
    let now = now_ns();
    let idx = st.bump();
    if changed {
        upsert_version(st, &ns, &id, job, idx, now);
    }
    let (job_modify_index, priority, job_type) = match st.job(&ns, &id) {
        Some(r) => (
            r.job["JobModifyIndex"].as_u64().unwrap_or(idx),
            if eval_priority != 0 {
                eval_priority
            } else {
                r.job["Priority"].as_i64().unwrap_or(50)
            },
            r.job["Type"].as_str().unwrap_or("service").to_string(),
        ),
        None => (idx, 50, "service".to_string()),
    };
    let eval_id = create_eval(
        st,
        &ns,
        &id,
        "job-register",
        job_modify_index,
        priority,
        &job_type,
        idx,
        now,
    );
    process_eval(st, cfg, &ns, &id, &eval_id);
    Ok(WriteResult {
        eval_id,
        eval_create_index: idx,
        job_modify_index,
        index: idx,
    })
}

/// `PreserveCounts`: keep the running count of groups that already exist.
fn preserve_counts(old: &Value, new: &mut Value) {
    let counts: BTreeMap<String, Value> = old["TaskGroups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| Some((g["Name"].as_str()?.to_string(), g["Count"].clone())))
        .collect();
    for g in new["TaskGroups"].as_array_mut().into_iter().flatten() {
        if let Some(c) = g["Name"].as_str().and_then(|n| counts.get(n)) {
            g["Count"] = c.clone();
        }
    }
}

/// Stores `job` as the job's next version (Nomad's `upsertJobImpl`).
fn upsert_version(st: &mut State, ns: &str, id: &str, mut job: Value, idx: u64, now: i64) {
    let existing = st.job(ns, id);
    let (create_index, version, status) = match existing {
        Some(e) => (
            e.job["CreateIndex"].as_u64().unwrap_or(idx),
            e.version() + 1,
            e.job["Status"].clone(),
        ),
        None => (idx, 0, json!("pending")),
    };
    job["CreateIndex"] = json!(create_index);
    job["ModifyIndex"] = json!(idx);
    job["JobModifyIndex"] = json!(idx);
    job["Version"] = json!(version);
    job["Stable"] = json!(false);
    job["Status"] = status;
    job["SubmitTime"] = json!(now);
    st.tables.jobs = idx;
    match st.job_mut(ns, id) {
        Some(rec) => {
            rec.versions.push(job.clone());
            let excess = rec.versions.len().saturating_sub(TRACKED_VERSIONS);
            rec.versions.drain(..excess);
            rec.job = job;
        }
        None => {
            st.tables.job_summary = idx;
            st.jobs.entry(ns.to_string()).or_default().insert(
                id.to_string(),
                JobRecord {
                    versions: vec![job.clone()],
                    job,
                    summary: Summary {
                        groups: BTreeMap::new(),
                        create_index: idx,
                        modify_index: idx,
                    },
                },
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn create_eval(
    st: &mut State,
    ns: &str,
    id: &str,
    triggered_by: &str,
    job_modify_index: u64,
    priority: i64,
    job_type: &str,
    idx: u64,
    now: i64,
) -> String {
    let eval_id = new_id();
    st.insert_eval(Eval {
        id: eval_id.clone(),
        namespace: ns.to_string(),
        priority,
        job_type: job_type.to_string(),
        triggered_by: triggered_by.to_string(),
        job_id: id.to_string(),
        job_modify_index,
        deployment_id: String::new(),
        status: "pending".to_string(),
        status_description: String::new(),
        blocked_eval: String::new(),
        previous_eval: String::new(),
        failed_tg_allocs: None,
        queued_allocations: BTreeMap::new(),
        snapshot_index: idx,
        create_index: idx,
        modify_index: idx,
        create_time: now,
        modify_time: now,
    });
    st.tables.evals = idx;
    eval_id
}

/// `DELETE /v1/job/:id[?purge=true]` (and the Hippo scheduler's DeleteJob, without purge).
pub fn deregister(
    st: &mut State,
    cfg: &Settings,
    ns: &str,
    id: &str,
    purge: bool,
) -> Result<WriteResult, ApiError> {
    let Some(rec) = st.job(ns, id) else {
        return Err(ApiError::text(404, "job not found"));
    };
    let priority = rec.job["Priority"].as_i64().unwrap_or(50);
    let job_type = rec.job["Type"].as_str().unwrap_or("service").to_string();
    let already_stopped = rec.job["Stop"].as_bool().unwrap_or(false);
    let stopped_job = {
        let mut j = rec.job.clone();
        j["Stop"] = json!(true);
        j
    };
    let now = now_ns();
    let idx = st.bump();
    if purge {
        remove_job(st, ns, id, idx);
    } else if !already_stopped {
        // Stopping is a new version of the job with `Stop: true` (`nomad job history`).
        upsert_version(st, ns, id, stopped_job, idx, now);
    }
    let eval_id = create_eval(
        st,
        ns,
        id,
        "job-deregister",
        idx,
        priority,
        &job_type,
        idx,
        now,
    );
    process_eval(st, cfg, ns, id, &eval_id);
    Ok(WriteResult {
        eval_id,
        eval_create_index: idx,
        job_modify_index: idx,
        index: idx,
    })
}

/// Drops a job with its allocations, deployments and evaluations (a purge followed by
/// garbage collection).
pub fn remove_job(st: &mut State, ns: &str, id: &str, idx: u64) {
    if let Some(m) = st.jobs.get_mut(ns) {
        m.remove(id);
        if m.is_empty() {
            st.jobs.remove(ns);
        }
    }
    st.remove_job_rows(ns, id);
    st.tables.jobs = idx;
    st.tables.job_summary = idx;
    st.tables.allocs = idx;
    st.tables.deployment = idx;
    st.tables.evals = idx;
}

/// `NomadEmulator::lose_job`: every job with this ID vanishes, without a trace of a request.
pub fn lose(st: &mut State, job_id: &str) {
    // Where the job is, and where allocations of it are left without it.
    let namespaces: BTreeSet<String> = st
        .jobs
        .iter()
        .filter(|(_, m)| m.contains_key(job_id))
        .map(|(ns, _)| ns.clone())
        .chain(
            st.allocs_of_any_namespace(job_id)
                .map(|a| a.namespace.clone()),
        )
        .collect();
    if namespaces.is_empty() {
        return;
    }
    let idx = st.bump();
    for ns in namespaces {
        remove_job(st, &ns, job_id, idx);
    }
}

/// The scheduler processing one evaluation: reconciles the job's allocations with its
/// current version on the single node, then completes the evaluation.
fn process_eval(st: &mut State, cfg: &Settings, ns: &str, id: &str, eval_id: &str) {
    let idx = st.bump();
    let now = now_ns();
    let mut queued: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed_tg: Option<Value> = None;
    let mut deployment_id = String::new();

    if let Some(rec) = st.job(ns, id).cloned() {
        let job = &rec.job;
        let version = rec.version();
        let stopped = job["Stop"].as_bool().unwrap_or(false);
        let is_service = job["Type"].as_str() == Some("service");
        let placeable = datacenter_matches(job, &cfg.datacenter);

        // Deployments of older versions (or of a stopped job) are cancelled.
        let active: Vec<String> = st
            .deployments_of(ns, id)
            .filter(|d| d.is_active())
            .map(|d| d.id.clone())
            .collect();
        for dep_id in &active {
            let Some(d) = st.deployments.get_mut(dep_id) else {
                continue;
            };
            if stopped || d.job_version != version {
                d.status = "cancelled".to_string();
                d.status_description = if stopped {
                    "Cancelled because job is stopped"
                } else {
                    "Cancelled due to newer version of job"
                }
                .to_string();
                d.modify_index = idx;
                d.modify_time = now;
                st.tables.deployment = idx;
            }
        }

        let live: Vec<String> = st
            .allocs_of(ns, id)
            .filter(|a| a.desired_status == "run" && a.next_allocation.is_empty())
            .map(|a| a.id.clone())
            .collect();

        if stopped || !placeable {
            for alloc_id in &live {
                stop_alloc(st, alloc_id, ALLOC_NOT_NEEDED, idx, now);
            }
            if !stopped {
                // No node in the job's datacenters: nothing can be placed.
                let mut metrics = serde_json::Map::new();
                for g in groups(job) {
                    let count = g["Count"].as_u64().unwrap_or(0);
                    let name = g["Name"].as_str().unwrap_or_default().to_string();
                    if count > 0 {
                        queued.insert(name.clone(), count);
                        metrics.insert(name, placement_failure(&cfg.datacenter));
                    }
                }
                if !metrics.is_empty() {
                    failed_tg = Some(Value::Object(metrics));
                }
            }
        } else {
            deployment_id = reconcile_groups(st, &rec, &live, is_service, idx, now);
        }
    }

    let blocked_id = failed_tg.as_ref().map(|_| new_id());
    if let Some(e) = st.evals.get_mut(eval_id) {
        e.status = "complete".to_string();
        e.deployment_id = deployment_id;
        e.queued_allocations = queued.clone();
        e.failed_tg_allocs = failed_tg;
        e.blocked_eval = blocked_id.clone().unwrap_or_default();
        e.modify_index = idx;
        e.modify_time = now;
    }
    // Older blocked evaluations are superseded by this one.
    let blocked: Vec<String> = st
        .evals_of(ns, id)
        .filter(|e| e.status == "blocked")
        .map(|e| e.id.clone())
        .collect();
    for eval in &blocked {
        let Some(e) = st.evals.get_mut(eval) else {
            continue;
        };
        e.status = "canceled".to_string();
        e.status_description = "evaluation superseded by a newer evaluation".to_string();
        e.modify_index = idx;
        e.modify_time = now;
    }
    if let (Some(blocked), Some(parent)) = (blocked_id, st.evals.get(eval_id).cloned()) {
        let mut b = parent;
        b.id = blocked.clone();
        b.status = "blocked".to_string();
        b.status_description = "created to place remaining allocations".to_string();
        b.triggered_by = "queued-allocs".to_string();
        b.previous_eval = eval_id.to_string();
        b.blocked_eval = String::new();
        b.failed_tg_allocs = None;
        b.queued_allocations = queued;
        b.create_index = idx;
        st.insert_eval(b);
    }
    st.tables.evals = idx;
    refresh(st, ns, id, idx, now);
}

fn groups(job: &Value) -> Vec<Value> {
    job["TaskGroups"].as_array().cloned().unwrap_or_default()
}

/// The `AllocMetric` of a group that found no node.
fn placement_failure(node_dc: &str) -> Value {
    json!({
        "AllocationTime": 0, "ClassExhausted": null, "ClassFiltered": null,
        "CoalescedFailures": 0, "ConstraintFiltered": null, "DimensionExhausted": null,
        "NodesAvailable": {node_dc: 1}, "NodesEvaluated": 0, "NodesExhausted": 0,
        "NodesFiltered": 0, "NodesInPool": 1, "QuotaExhausted": null,
        "ResourcesExhausted": null, "ScoreMetaData": null, "Scores": null,
    })
}

/// Places, updates in place and stops allocations so that each group runs `Count`
/// allocations of the current version. Returns the active deployment's ID, if any.
fn reconcile_groups(
    st: &mut State,
    rec: &JobRecord,
    live: &[String],
    is_service: bool,
    idx: u64,
    now: i64,
) -> String {
    let job = &rec.job;
    let ns = rec.ns().to_string();
    let id = rec.id().to_string();
    let version = rec.version();
    let mut placements: Vec<(String, u32, String)> = Vec::new(); // (group, slot, previous)
    let mut inplace: Vec<String> = Vec::new();
    let mut stops: Vec<(String, &'static str)> = Vec::new();
    let mut desired: BTreeMap<String, u64> = BTreeMap::new();

    let job_groups = groups(job);
    for g in &job_groups {
        let name = g["Name"].as_str().unwrap_or_default().to_string();
        let count = g["Count"].as_u64().unwrap_or(0);
        desired.insert(name.clone(), count);
        let mut mine: Vec<&Alloc> = live
            .iter()
            .filter_map(|a| st.allocs.get(a))
            .filter(|a| a.task_group == name)
            .collect();
        mine.sort_by_key(|a| (a.slot, a.create_index));
        let mut used: BTreeSet<u32> = BTreeSet::new();
        for a in mine {
            if u64::from(a.slot) >= count || used.contains(&a.slot) {
                stops.push((a.id.clone(), ALLOC_NOT_NEEDED));
                continue;
            }
            used.insert(a.slot);
            if a.job_version == version {
                // Failed allocations of this version wait for heal_allocations (no reschedule
                // attempts are emulated while the failure lasts).
                continue;
            }
            let destructive = a.client_status == "failed"
                || rec
                    .spec_of_version(a.job_version)
                    .is_none_or(|old| destructive_change(old, job, &name));
            if destructive {
                stops.push((a.id.clone(), ALLOC_UPDATING));
                placements.push((name.clone(), a.slot, String::new()));
            } else {
                inplace.push(a.id.clone());
            }
        }
        for slot in 0..count as u32 {
            if !used.contains(&slot) {
                placements.push((name.clone(), slot, String::new()));
            }
        }
    }
    // Allocations of groups the job no longer has.
    for a in live.iter().filter_map(|a| st.allocs.get(a)) {
        if !desired.contains_key(&a.task_group) {
            stops.push((a.id.clone(), ALLOC_NOT_NEEDED));
        }
    }

    for (alloc_id, why) in &stops {
        stop_alloc(st, alloc_id, why, idx, now);
    }

    // One deployment per version of a service job, created when the version first places
    // or updates allocations.
    let existing = st
        .deployments_of(&ns, &id)
        .find(|d| d.job_version == version)
        .map(|d| (d.id.clone(), d.is_active()));
    let deployment_id = match existing {
        Some((d, true)) => d,
        Some((_, false)) => String::new(),
        None if is_service && (!placements.is_empty() || !inplace.is_empty()) => {
            create_deployment(st, rec, &desired, &job_groups, idx, now)
        }
        None => String::new(),
    };

    for alloc_id in &inplace {
        let Some(a) = st.set_alloc_deployment(alloc_id, &deployment_id) else {
            continue;
        };
        a.job_version = version;
        a.deployment_status = None;
        a.modify_index = idx;
        a.modify_time = now;
        if a.client_status == "running" && !deployment_id.is_empty() {
            st.timers.push(Timer::AllocHealthy {
                alloc_id: alloc_id.clone(),
                deployment_id: deployment_id.clone(),
            });
        }
        st.tables.allocs = idx;
    }

    let eval_id = st
        .evals_of(&ns, &id)
        .max_by_key(|e| e.create_index)
        .map(|e| e.id.clone())
        .unwrap_or_default();
    for (group, slot, previous) in placements {
        let tasks: Vec<String> = job_groups
            .iter()
            .find(|g| g["Name"].as_str() == Some(group.as_str()))
            .and_then(|g| g["Tasks"].as_array())
            .map(|ts| {
                ts.iter()
                    .filter_map(|t| t["Name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        place(
            st,
            PlaceArgs {
                ns: &ns,
                job,
                group: &group,
                tasks: &tasks,
                slot,
                eval_id: &eval_id,
                deployment_id: &deployment_id,
                previous: &previous,
                idx,
                now,
            },
        );
    }
    deployment_id
}

fn create_deployment(
    st: &mut State,
    rec: &JobRecord,
    desired: &BTreeMap<String, u64>,
    job_groups: &[Value],
    idx: u64,
    now: i64,
) -> String {
    let id = new_id();
    let groups = desired
        .iter()
        .map(|(name, total)| {
            let deadline = job_groups
                .iter()
                .find(|g| g["Name"].as_str() == Some(name.as_str()))
                .and_then(|g| g["Update"]["ProgressDeadline"].as_i64())
                .unwrap_or(600_000_000_000);
            (
                name.clone(),
                DeploymentGroup {
                    desired_total: *total,
                    placed_allocs: 0,
                    healthy_allocs: 0,
                    unhealthy_allocs: 0,
                    progress_deadline_ns: deadline,
                    require_progress_by: rfc3339(now + deadline),
                },
            )
        })
        .collect();
    st.insert_deployment(Deployment {
        id: id.clone(),
        namespace: rec.ns().to_string(),
        job_id: rec.id().to_string(),
        job_version: rec.version(),
        job_modify_index: rec.job["JobModifyIndex"].as_u64().unwrap_or(0),
        job_create_index: rec.job["CreateIndex"].as_u64().unwrap_or(0),
        groups,
        status: "running".to_string(),
        status_description: "Deployment is running".to_string(),
        create_index: idx,
        modify_index: idx,
        create_time: now,
        modify_time: now,
    });
    st.tables.deployment = idx;
    id
}

struct PlaceArgs<'a> {
    ns: &'a str,
    job: &'a Value,
    group: &'a str,
    tasks: &'a [String],
    slot: u32,
    eval_id: &'a str,
    deployment_id: &'a str,
    previous: &'a str,
    idx: u64,
    now: i64,
}

/// A new pending allocation (the client has received it).
fn place(st: &mut State, p: PlaceArgs) -> String {
    let id = new_id();
    let task_states = p
        .tasks
        .iter()
        .map(|t| {
            (
                t.clone(),
                TaskState {
                    state: "pending".to_string(),
                    failed: false,
                    restarts: 0,
                    started_at: None,
                    finished_at: None,
                    events: vec![TaskEvent::new("Received", "Task received by client", p.now)],
                },
            )
        })
        .collect();
    st.insert_alloc(Alloc {
        id: id.clone(),
        eval_id: p.eval_id.to_string(),
        namespace: p.ns.to_string(),
        job_id: p.job["ID"].as_str().unwrap_or_default().to_string(),
        job_type: p.job["Type"].as_str().unwrap_or("service").to_string(),
        job_version: p.job["Version"].as_u64().unwrap_or(0),
        task_group: p.group.to_string(),
        slot: p.slot,
        desired_status: "run".to_string(),
        desired_description: String::new(),
        client_status: "pending".to_string(),
        client_description: "No tasks have started".to_string(),
        task_states,
        deployment_id: p.deployment_id.to_string(),
        deployment_status: None,
        next_allocation: String::new(),
        previous_allocation: p.previous.to_string(),
        create_index: p.idx,
        modify_index: p.idx,
        create_time: p.now,
        modify_time: p.now,
    });
    st.tables.allocs = p.idx;
    st.timers.push(Timer::AllocStart {
        alloc_id: id.clone(),
    });
    id
}

/// The server tells the client to stop the allocation; the emulated client complies at once.
fn stop_alloc(st: &mut State, alloc_id: &str, why: &str, idx: u64, now: i64) {
    let Some(a) = st.allocs.get_mut(alloc_id) else {
        return;
    };
    a.desired_status = "stop".to_string();
    a.desired_description = why.to_string();
    if matches!(a.client_status.as_str(), "pending" | "running") {
        let was_running = a.client_status == "running";
        a.client_status = "complete".to_string();
        a.client_description = "All tasks have completed".to_string();
        for ts in a.task_states.values_mut() {
            ts.events.push(TaskEvent::new(
                "Killing",
                "Sent interrupt. Waiting 5s before force killing",
                now,
            ));
            if was_running {
                let mut t = TaskEvent::new("Terminated", "Exit Code: 0", now);
                t.details = BTreeMap::from([
                    ("exit_code".to_string(), "0".to_string()),
                    ("oom_killed".to_string(), "false".to_string()),
                    ("signal".to_string(), "0".to_string()),
                ]);
                ts.events.push(t);
            }
            ts.events
                .push(TaskEvent::new("Killed", "Task successfully killed", now));
            ts.state = "dead".to_string();
            ts.finished_at = Some(rfc3339(now));
        }
    }
    a.modify_index = idx;
    a.modify_time = now;
    st.tables.allocs = idx;
}

/// The emulated client failed the allocation's tasks: driver failure with `reason`.
fn fail_alloc(st: &mut State, alloc_id: &str, reason: &str, idx: u64, now: i64) {
    let active_deployment = st
        .allocs
        .get(alloc_id)
        .and_then(|a| st.deployments.get(&a.deployment_id))
        .is_some_and(Deployment::is_active);
    let Some(a) = st.allocs.get_mut(alloc_id) else {
        return;
    };
    let was_pending = a.client_status == "pending";
    a.client_status = "failed".to_string();
    a.client_description = "Failed tasks".to_string();
    for ts in a.task_states.values_mut() {
        if was_pending {
            ts.events.push(setup_event(now));
        }
        let mut e = TaskEvent::new("Driver Failure", reason, now);
        e.driver_error = reason.to_string();
        e.fails_task = true;
        ts.events.push(e);
        ts.state = "dead".to_string();
        ts.failed = true;
        ts.finished_at = Some(rfc3339(now));
    }
    // Health is only judged while the allocation's deployment runs; a finished deployment
    // keeps the verdict it had (Nomad's health watcher stops with the deployment).
    if active_deployment {
        a.deployment_status = Some(AllocHealth {
            healthy: Some(false),
            timestamp: rfc3339(now),
            modify_index: idx,
        });
    }
    a.modify_index = idx;
    a.modify_time = now;
    st.tables.allocs = idx;
}

fn setup_event(now: i64) -> TaskEvent {
    let mut e = TaskEvent::new("Task Setup", "Building Task Directory", now);
    e.message = "Building Task Directory".to_string();
    e.details = BTreeMap::from([("message".to_string(), "Building Task Directory".to_string())]);
    e
}

/// Runs a due timer.
pub fn on_timer(st: &mut State, timer: &Timer) {
    match timer {
        Timer::AllocStart { alloc_id } => alloc_start(st, alloc_id),
        Timer::AllocHealthy {
            alloc_id,
            deployment_id,
        } => alloc_healthy(st, alloc_id, deployment_id),
        Timer::LockTtl { .. } | Timer::LockDelay { .. } => super::vars::on_timer(st, timer),
    }
}

/// pending -> running (or failed, while the job's allocations are made to fail).
fn alloc_start(st: &mut State, alloc_id: &str) {
    let Some(a) = st.allocs.get(alloc_id) else {
        return;
    };
    if a.client_status != "pending" || a.desired_status != "run" {
        return;
    }
    let (ns, job_id, deployment_id) = (
        a.namespace.clone(),
        a.job_id.clone(),
        a.deployment_id.clone(),
    );
    let idx = st.bump();
    let now = now_ns();
    if let Some(reason) = st.failing.get(&job_id).cloned() {
        fail_alloc(st, alloc_id, &reason, idx, now);
    } else {
        let Some(a) = st.allocs.get_mut(alloc_id) else {
            return;
        };
        a.client_status = "running".to_string();
        a.client_description = "Tasks are running".to_string();
        for ts in a.task_states.values_mut() {
            ts.events.push(setup_event(now));
            ts.events
                .push(TaskEvent::new("Started", "Task started by client", now));
            ts.state = "running".to_string();
            ts.started_at = Some(rfc3339(now));
        }
        a.modify_index = idx;
        a.modify_time = now;
        st.tables.allocs = idx;
        if st
            .deployments
            .get(&deployment_id)
            .is_some_and(Deployment::is_active)
        {
            st.timers.push(Timer::AllocHealthy {
                alloc_id: alloc_id.to_string(),
                deployment_id,
            });
        }
    }
    refresh(st, &ns, &job_id, idx, now);
}

/// The deployment watcher marks a running allocation healthy.
fn alloc_healthy(st: &mut State, alloc_id: &str, deployment_id: &str) {
    let ok = st.allocs.get(alloc_id).is_some_and(|a| {
        a.deployment_id == deployment_id
            && a.deployment_status.is_none()
            && a.client_status == "running"
            && a.desired_status == "run"
    }) && st
        .deployments
        .get(deployment_id)
        .is_some_and(Deployment::is_active);
    if !ok {
        return;
    }
    let unhealthy = unhealthy_reason(st, alloc_id);
    let idx = st.bump();
    let now = now_ns();
    let Some(a) = st.allocs.get_mut(alloc_id) else {
        return;
    };
    if let Some(reason) = &unhealthy {
        // The health tracker's verdict: the task keeps running, the event says why.
        for ts in a.task_states.values_mut() {
            ts.events
                .push(TaskEvent::new("Alloc Unhealthy", reason, now));
        }
    }
    a.deployment_status = Some(AllocHealth {
        healthy: Some(unhealthy.is_none()),
        timestamp: rfc3339(now),
        modify_index: idx,
    });
    a.modify_index = idx;
    a.modify_time = now;
    let (ns, job_id) = (a.namespace.clone(), a.job_id.clone());
    st.tables.allocs = idx;
    refresh(st, &ns, &job_id, idx, now);
}

/// Why the allocation is to be marked unhealthy (`NomadEmulator::make_unhealthy`), keyed by
/// its job's ID or the bindle its job runs.
fn unhealthy_reason(st: &State, alloc_id: &str) -> Option<String> {
    if st.unhealthy.is_empty() {
        return None;
    }
    let a = st.allocs.get(alloc_id)?;
    if let Some(reason) = st.unhealthy.get(&a.job_id) {
        return Some(reason.clone());
    }
    let rec = st.job(&a.namespace, &a.job_id)?;
    let bindle = job_bindle(&rec.job)?;
    st.unhealthy.get(&bindle).cloned()
}

/// The `--bindle` argument of a Hippo job's task.
fn job_bindle(job: &Value) -> Option<String> {
    let args = job["TaskGroups"][0]["Tasks"][0]["Config"]["args"].as_array()?;
    let i = args.iter().position(|a| a == "--bindle")?;
    args.get(i + 1)?.as_str().map(String::from)
}

/// `NomadEmulator::fail_allocations`.
pub fn fail(st: &mut State, job_id: &str, reason: &str) {
    st.failing.insert(job_id.to_string(), reason.to_string());
    let victims: Vec<(String, String)> = st
        .allocs_of_any_namespace(job_id)
        .filter(|a| {
            a.desired_status == "run" && matches!(a.client_status.as_str(), "pending" | "running")
        })
        .map(|a| (a.id.clone(), a.namespace.clone()))
        .collect();
    if victims.is_empty() {
        return;
    }
    let idx = st.bump();
    let now = now_ns();
    let mut namespaces = BTreeSet::new();
    for (alloc_id, ns) in victims {
        fail_alloc(st, &alloc_id, reason, idx, now);
        namespaces.insert(ns);
    }
    for ns in namespaces {
        refresh(st, &ns, job_id, idx, now);
    }
}

/// `NomadEmulator::heal_allocations`: the cause is gone; failed allocations of the current
/// version are rescheduled (what Nomad's reschedule policy does once placements succeed).
pub fn heal(st: &mut State, job_id: &str) {
    st.failing.remove(job_id);
    let failed: Vec<String> = st
        .allocs_of_any_namespace(job_id)
        .filter(|a| {
            a.desired_status == "run"
                && a.client_status == "failed"
                && a.next_allocation.is_empty()
                && st.job(&a.namespace, &a.job_id).is_some_and(|r| {
                    r.version() == a.job_version && !r.job["Stop"].as_bool().unwrap_or(false)
                })
        })
        .map(|a| a.id.clone())
        .collect();
    if failed.is_empty() {
        return;
    }
    let idx = st.bump();
    let now = now_ns();
    let mut namespaces = BTreeSet::new();
    for old_id in failed {
        let Some(old) = st.allocs.get(&old_id).cloned() else {
            continue;
        };
        let Some(rec) = st.job(&old.namespace, &old.job_id).cloned() else {
            continue;
        };
        // Replacements join the version's deployment only while it still runs.
        let deployment_id = st
            .deployments
            .get(&old.deployment_id)
            .filter(|d| d.is_active())
            .map(|d| d.id.clone())
            .unwrap_or_default();
        let tasks: Vec<String> = old.task_states.keys().cloned().collect();
        let new_id = place(
            st,
            PlaceArgs {
                ns: &old.namespace,
                job: &rec.job,
                group: &old.task_group,
                tasks: &tasks,
                slot: old.slot,
                eval_id: &old.eval_id,
                deployment_id: &deployment_id,
                previous: &old_id,
                idx,
                now,
            },
        );
        if let Some(a) = st.allocs.get_mut(&old_id) {
            a.desired_status = "stop".to_string();
            a.desired_description = ALLOC_RESCHEDULED.to_string();
            a.next_allocation = new_id;
            a.modify_index = idx;
            a.modify_time = now;
        }
        namespaces.insert(old.namespace);
    }
    for ns in namespaces {
        refresh(st, &ns, job_id, idx, now);
    }
}

/// After allocation changes: deployment progress, job stability, status and summary.
fn refresh(st: &mut State, ns: &str, id: &str, idx: u64, now: i64) {
    refresh_deployments(st, ns, id, idx, now);
    refresh_job(st, ns, id, idx);
}

fn refresh_deployments(st: &mut State, ns: &str, id: &str, idx: u64, now: i64) {
    let active: Vec<String> = st
        .deployments_of(ns, id)
        .filter(|d| d.is_active())
        .map(|d| d.id.clone())
        .collect();
    for dep_id in active {
        let mut counts: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
        for a in st.allocs_in_deployment(&dep_id) {
            let c = counts.entry(a.task_group.clone()).or_default();
            c.0 += 1;
            match a.deployment_status.as_ref().and_then(|h| h.healthy) {
                Some(true) => c.1 += 1,
                Some(false) => c.2 += 1,
                None => {}
            }
        }
        let Some(d) = st.deployments.get_mut(&dep_id) else {
            continue;
        };
        let before = d.clone();
        for (name, g) in d.groups.iter_mut() {
            let (placed, healthy, unhealthy) = counts.get(name).copied().unwrap_or_default();
            g.placed_allocs = placed;
            g.healthy_allocs = healthy;
            g.unhealthy_allocs = unhealthy;
        }
        let mut succeeded = false;
        if d.groups.values().any(|g| g.unhealthy_allocs > 0) {
            d.status = "failed".to_string();
            d.status_description = "Failed due to unhealthy allocations".to_string();
        } else if d
            .groups
            .values()
            .all(|g| g.healthy_allocs >= g.desired_total)
        {
            d.status = "successful".to_string();
            d.status_description = "Deployment completed successfully".to_string();
            succeeded = true;
        }
        if *d != before {
            d.modify_index = idx;
            d.modify_time = now;
            st.tables.deployment = idx;
        }
        if succeeded {
            let version = d.job_version;
            mark_stable(st, ns, id, version, idx);
        }
    }
}

/// A successful deployment makes its job version stable.
fn mark_stable(st: &mut State, ns: &str, id: &str, version: u64, idx: u64) {
    let Some(rec) = st.job_mut(ns, id) else {
        return;
    };
    for v in rec
        .versions
        .iter_mut()
        .filter(|v| v["Version"].as_u64() == Some(version))
    {
        v["Stable"] = json!(true);
    }
    if rec.version() == version && rec.job["Stable"] != json!(true) {
        rec.job["Stable"] = json!(true);
        rec.job["ModifyIndex"] = json!(idx);
        st.tables.jobs = idx;
    }
}

/// Nomad's `getJobStatus` and the job summary.
fn refresh_job(st: &mut State, ns: &str, id: &str, idx: u64) {
    let Some(rec) = st.job(ns, id) else {
        return;
    };
    let stopped = rec.job["Stop"].as_bool().unwrap_or(false);
    let desired: u64 = groups(&rec.job)
        .iter()
        .map(|g| g["Count"].as_u64().unwrap_or(0))
        .sum();
    let allocs: Vec<&Alloc> = st.allocs_of(ns, id).collect();
    let status = if allocs.iter().any(|a| !a.is_terminal()) {
        "running"
    } else if stopped || desired == 0 {
        "dead"
    } else {
        // Failed allocations await a reschedule, blocked evaluations a node: pending.
        "pending"
    };

    let mut summary: BTreeMap<String, GroupSummary> = groups(&rec.job)
        .iter()
        .filter_map(|g| g["Name"].as_str())
        .map(|n| (n.to_string(), GroupSummary::default()))
        .collect();
    for a in &allocs {
        let g = summary.entry(a.task_group.clone()).or_default();
        match a.client_status.as_str() {
            "pending" => g.starting += 1,
            "running" => g.running += 1,
            "complete" => g.complete += 1,
            "failed" => g.failed += 1,
            "lost" => g.lost += 1,
            _ => g.unknown += 1,
        }
    }
    for e in st.evals_of(ns, id).filter(|e| e.status == "blocked") {
        for (g, n) in &e.queued_allocations {
            summary.entry(g.clone()).or_default().queued += n;
        }
    }

    let Some(rec) = st.job_mut(ns, id) else {
        return;
    };
    let mut jobs_changed = false;
    if rec.job["Status"].as_str() != Some(status) {
        rec.job["Status"] = json!(status);
        rec.job["ModifyIndex"] = json!(idx);
        jobs_changed = true;
    }
    let mut summary_changed = false;
    if rec.summary.groups != summary {
        rec.summary.groups = summary;
        rec.summary.modify_index = idx;
        summary_changed = true;
    }
    if jobs_changed {
        st.tables.jobs = idx;
    }
    if summary_changed {
        st.tables.job_summary = idx;
    }
}

/// Resume after loading a state file: allocations that were starting start, running ones in
/// a running deployment get their health verdict, held locks get a fresh TTL.
pub fn resume(st: &mut State) {
    let mut timers = Vec::new();
    for a in st.allocs.values() {
        if a.desired_status != "run" {
            continue;
        }
        if a.client_status == "pending" {
            timers.push(Timer::AllocStart {
                alloc_id: a.id.clone(),
            });
        } else if a.client_status == "running"
            && a.deployment_status.is_none()
            && st
                .deployments
                .get(&a.deployment_id)
                .is_some_and(Deployment::is_active)
        {
            timers.push(Timer::AllocHealthy {
                alloc_id: a.id.clone(),
                deployment_id: a.deployment_id.clone(),
            });
        }
    }
    st.timers.extend(timers);
    super::vars::resume(st);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::jobspec::decode_register;
    use super::*;

    const SAMPLE: &str = include_str!("testdata/hippo_job_register_request.json");
    const SAMPLE_ID: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";

    fn settings() -> Settings {
        Settings {
            region: "global".into(),
            datacenter: "dc1".into(),
            alloc_start_delay: Duration::ZERO,
            healthy_delay: Duration::ZERO,
            min_lock_ttl: Duration::from_secs(10),
        }
    }

    /// Hippo's job for `id`, running `bindle` (another bindle is a destructive change).
    fn request(id: &str, bindle: &str, count: u64) -> RegisterRequest {
        let text = SAMPLE
            .replace(SAMPLE_ID, id)
            .replace("contoso/weather/1.4.0", bindle);
        let mut body: Value = serde_json::from_str(&text).expect("the sample is JSON");
        body["Job"]["TaskGroups"][0]["Count"] = json!(count);
        decode_register(&body, Some(id), None, "global").expect("the sample is valid")
    }

    /// Starts every queued allocation and judges its health, as the timers would.
    fn run_timers(st: &mut State) {
        loop {
            let timers = std::mem::take(&mut st.timers);
            if timers.is_empty() {
                return;
            }
            for t in &timers {
                on_timer(st, t);
            }
        }
    }

    fn check(st: &State, after: &str) {
        assert!(st.links_consistent(), "index out of step after {after}");
    }

    fn live(st: &State, id: &str) -> usize {
        st.allocs_of("default", id)
            .filter(|a| a.desired_status == "run")
            .count()
    }

    /// The per-job index agrees with the tables after every kind of write, and finds what a
    /// scan of all rows would.
    #[test]
    fn the_job_index_follows_every_write() {
        let cfg = settings();
        let mut st = State::default();
        for id in ["a", "b", "c"] {
            register(&mut st, &cfg, request(id, "x/1.0.0", 1)).expect("registered");
        }
        check(&st, "registering");
        run_timers(&mut st);
        check(&st, "the allocations started");
        assert_eq!(st.deployments_of("default", "a").count(), 1);
        assert_eq!(
            st.deployments_of("default", "a")
                .map(|d| d.status.as_str())
                .collect::<Vec<_>>(),
            ["successful"]
        );

        // A destructive update: a new allocation and deployment; the old allocation stops.
        register(&mut st, &cfg, request("a", "x/2.0.0", 1)).expect("updated");
        run_timers(&mut st);
        check(&st, "a destructive update");
        assert_eq!(st.allocs_of("default", "a").count(), 2);
        assert_eq!(live(&st, "a"), 1);
        assert_eq!(st.deployments_of("default", "a").count(), 2);

        // A count change: the allocation moves in place into the new deployment.
        register(&mut st, &cfg, request("b", "x/1.0.0", 2)).expect("scaled");
        check(&st, "an in-place update");
        let newest = st
            .deployments_of("default", "b")
            .max_by_key(|d| d.create_index)
            .map(|d| d.id.clone())
            .unwrap_or_default();
        assert_eq!(st.allocs_in_deployment(&newest).count(), 2);
        run_timers(&mut st);
        register(&mut st, &cfg, request("b", "x/1.0.0", 1)).expect("scaled down");
        run_timers(&mut st);
        check(&st, "scaling down");
        assert_eq!(live(&st, "b"), 1);

        fail(&mut st, "c", "boom");
        check(&st, "failing allocations");
        heal(&mut st, "c");
        run_timers(&mut st);
        check(&st, "healing");
        assert_eq!(live(&st, "c"), 1);

        deregister(&mut st, &cfg, "default", "c", false).expect("stopped");
        check(&st, "a stop");
        deregister(&mut st, &cfg, "default", "b", true).expect("purged");
        check(&st, "a purge");
        lose(&mut st, "a");
        check(&st, "losing a job");
        assert!(st.allocs.values().all(|al| al.job_id == "c"));
        // A purge keeps only its own evaluation.
        assert!(st.evals.values().all(|e| e.job_id != "a"));
        assert_eq!(st.evals_of("default", "b").count(), 1);
        assert!(st.deployments.values().all(|d| d.job_id == "c"));
        assert_eq!(st.evals_of("default", "c").count(), 2);

        // Loaded from a state file, the index is rebuilt.
        let saved = serde_json::to_vec(&st).expect("serialisable");
        let mut loaded: State = serde_json::from_slice(&saved).expect("loadable");
        loaded.relink();
        assert!(loaded.links_consistent());
        assert_eq!(
            loaded.allocs_of("default", "c").count(),
            st.allocs_of("default", "c").count()
        );
    }
}
