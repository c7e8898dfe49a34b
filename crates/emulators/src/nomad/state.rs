//! The emulator's state store: tables of jobs, allocations, deployments, evaluations and
//! variables under one Raft-like index (NOMAD-API.md §1.1 "Blocking queries").
//!
//! Every change takes the next index and stamps it on the tables it touched, the way Nomad's
//! FSM stamps `index` table entries; blocking queries compare against those table indexes.
//! Work that has to happen later (allocation start, health, lock expiry) is queued as
//! [`Timer`]s and spawned by the caller once the state lock is released.
//!
//! Allocations, deployments and evaluations are also indexed by job and allocations by
//! deployment ([`Links`]), so that a write touches only the job it is about: rows come and go
//! only through `State`'s methods, which keep the index with the tables.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Deref;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Per-table "last modified at" indexes (Nomad's `index` table).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tables {
    pub jobs: u64,
    pub job_summary: u64,
    pub allocs: u64,
    pub deployment: u64,
    pub evals: u64,
    pub variables: u64,
}

/// The whole persisted state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// The last index handed out.
    pub index: u64,
    pub tables: Tables,
    /// The single emulated client node.
    pub node_id: String,
    /// namespace -> job ID -> job.
    pub jobs: BTreeMap<String, BTreeMap<String, JobRecord>>,
    pub allocs: Rows<Alloc>,
    pub deployments: Rows<Deployment>,
    pub evals: Rows<Eval>,
    /// namespace -> path -> variable.
    pub variables: BTreeMap<String, BTreeMap<String, Variable>>,
    /// Job ID -> the reason its allocations fail (`NomadEmulator::fail_allocations`).
    pub failing: BTreeMap<String, String>,
    /// Job ID or bindle (`<storageId>/<version>`) -> why its allocations are marked unhealthy
    /// when their deployment would judge them (`NomadEmulator::make_unhealthy`).
    #[serde(default)]
    pub unhealthy: BTreeMap<String, String>,
    /// Lock TTL timers; not persisted: like a new Nomad leader, a restarted emulator gives
    /// every held lock a fresh 2×TTL (`restoreLockTTLTimers`).
    #[serde(skip)]
    pub lock_timers: HashMap<(String, String), LockTimer>,
    /// Timers to spawn once the lock is released.
    #[serde(skip)]
    pub timers: Vec<Timer>,
    /// Derived from the tables (not persisted; [`State::relink`] rebuilds it after a load).
    #[serde(skip)]
    links: Links,
}

/// A table keyed by ID, read through `Deref`. Rows are added and removed only by `State`'s
/// methods, which keep [`Links`] in step; a row's namespace, job and deployment are changed
/// only by them too.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rows<T>(BTreeMap<String, T>);

impl<T> Default for Rows<T> {
    fn default() -> Self {
        Rows(BTreeMap::new())
    }
}

impl<T> Deref for Rows<T> {
    type Target = BTreeMap<String, T>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<T> Rows<T> {
    pub fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        self.0.get_mut(id)
    }
}

/// Where each job's rows are, and each deployment's allocations.
#[derive(Clone, Debug, Default, PartialEq)]
struct Links {
    /// Job ID -> namespace -> its rows. The job comes first because the test knobs name a
    /// job in every namespace.
    jobs: HashMap<String, BTreeMap<String, JobRows>>,
    /// Deployment ID -> its allocations (allocations without a deployment are not listed).
    deployment_allocs: HashMap<String, BTreeSet<String>>,
}

/// The IDs of one job's rows, ordered as the tables are (by ID).
#[derive(Clone, Debug, Default, PartialEq)]
struct JobRows {
    allocs: BTreeSet<String>,
    deployments: BTreeSet<String>,
    evals: BTreeSet<String>,
}

impl Links {
    fn of(&self, ns: &str, id: &str) -> Option<&JobRows> {
        self.jobs.get(id)?.get(ns)
    }

    fn of_mut(&mut self, ns: &str, id: &str) -> &mut JobRows {
        self.jobs
            .entry(id.to_string())
            .or_default()
            .entry(ns.to_string())
            .or_default()
    }

    fn link_deployment_alloc(&mut self, deployment_id: &str, alloc_id: &str) {
        if !deployment_id.is_empty() {
            self.deployment_allocs
                .entry(deployment_id.to_string())
                .or_default()
                .insert(alloc_id.to_string());
        }
    }

    fn unlink_deployment_alloc(&mut self, deployment_id: &str, alloc_id: &str) {
        if let Some(set) = self.deployment_allocs.get_mut(deployment_id) {
            set.remove(alloc_id);
            if set.is_empty() {
                self.deployment_allocs.remove(deployment_id);
            }
        }
    }
}

/// A job and the versions Nomad keeps of it (`JobTrackedVersions` = 6).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRecord {
    /// The full, canonical Job object as `GET /v1/job/:id` returns it.
    pub job: Value,
    /// Older and current versions, oldest first.
    pub versions: Vec<Value>,
    pub summary: Summary,
}

pub const TRACKED_VERSIONS: usize = 6;

/// `JobSummary`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    pub groups: BTreeMap<String, GroupSummary>,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupSummary {
    pub queued: u64,
    pub complete: u64,
    pub failed: u64,
    pub running: u64,
    pub starting: u64,
    pub lost: u64,
    pub unknown: u64,
}

/// One allocation on the emulated node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Alloc {
    pub id: String,
    pub eval_id: String,
    pub namespace: String,
    pub job_id: String,
    pub job_type: String,
    pub job_version: u64,
    pub task_group: String,
    /// The `[n]` of the name.
    pub slot: u32,
    pub desired_status: String,
    pub desired_description: String,
    pub client_status: String,
    pub client_description: String,
    pub task_states: BTreeMap<String, TaskState>,
    pub deployment_id: String,
    pub deployment_status: Option<AllocHealth>,
    pub next_allocation: String,
    pub previous_allocation: String,
    pub create_index: u64,
    pub modify_index: u64,
    pub create_time: i64,
    pub modify_time: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AllocHealth {
    pub healthy: Option<bool>,
    pub timestamp: String,
    pub modify_index: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskState {
    pub state: String,
    pub failed: bool,
    pub restarts: u64,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub events: Vec<TaskEvent>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskEvent {
    pub kind: String,
    pub time: i64,
    pub display_message: String,
    pub message: String,
    pub details: BTreeMap<String, String>,
    pub driver_error: String,
    pub fails_task: bool,
}

impl TaskEvent {
    pub fn new(kind: &str, display: &str, time: i64) -> Self {
        TaskEvent {
            kind: kind.to_string(),
            time,
            display_message: display.to_string(),
            message: String::new(),
            details: BTreeMap::new(),
            driver_error: String::new(),
            fails_task: false,
        }
    }
}

/// One deployment (one per job version of a service job).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Deployment {
    pub id: String,
    pub namespace: String,
    pub job_id: String,
    pub job_version: u64,
    pub job_modify_index: u64,
    pub job_create_index: u64,
    pub groups: BTreeMap<String, DeploymentGroup>,
    pub status: String,
    pub status_description: String,
    pub create_index: u64,
    pub modify_index: u64,
    pub create_time: i64,
    pub modify_time: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeploymentGroup {
    pub desired_total: u64,
    pub placed_allocs: u64,
    pub healthy_allocs: u64,
    pub unhealthy_allocs: u64,
    pub progress_deadline_ns: i64,
    pub require_progress_by: String,
}

/// One evaluation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Eval {
    pub id: String,
    pub namespace: String,
    pub priority: i64,
    pub job_type: String,
    pub triggered_by: String,
    pub job_id: String,
    pub job_modify_index: u64,
    pub deployment_id: String,
    pub status: String,
    pub status_description: String,
    pub blocked_eval: String,
    pub previous_eval: String,
    pub failed_tg_allocs: Option<Value>,
    pub queued_allocations: BTreeMap<String, u64>,
    pub snapshot_index: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub create_time: i64,
    pub modify_time: i64,
}

/// A Nomad variable.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Variable {
    pub namespace: String,
    pub path: String,
    pub items: BTreeMap<String, String>,
    pub lock: Option<VarLock>,
    pub create_index: u64,
    pub create_time: i64,
    pub modify_index: u64,
    pub modify_time: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VarLock {
    pub id: String,
    pub ttl: Duration,
    pub lock_delay: Duration,
}

/// The server-side timer of a held lock.
#[derive(Clone, Debug)]
pub struct LockTimer {
    pub lock_id: String,
    /// Bumped by every renewal: a timer task that finds another generation is stale.
    pub generation: u64,
    /// The 2×TTL ran out: renewals fail; the lock is freed after LockDelay.
    pub expired: bool,
}

/// Deferred work, spawned as a tokio task after the state lock is released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Timer {
    /// pending -> running (or failed) after `alloc_start_delay`.
    AllocStart { alloc_id: String },
    /// `DeploymentStatus.Healthy = true` after `healthy_delay`, if still in `deployment_id`.
    AllocHealthy {
        alloc_id: String,
        deployment_id: String,
    },
    /// 2×TTL after acquire or the last renewal.
    LockTtl {
        namespace: String,
        path: String,
        lock_id: String,
        generation: u64,
        after: Duration,
    },
    /// LockDelay after expiry: free the lock.
    LockDelay {
        namespace: String,
        path: String,
        lock_id: String,
        after: Duration,
    },
}

impl State {
    /// Takes the next index (one Raft apply).
    pub fn bump(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    pub fn job(&self, ns: &str, id: &str) -> Option<&JobRecord> {
        self.jobs.get(ns)?.get(id)
    }

    pub fn job_mut(&mut self, ns: &str, id: &str) -> Option<&mut JobRecord> {
        self.jobs.get_mut(ns)?.get_mut(id)
    }

    /// All jobs, ordered by namespace then ID.
    pub fn all_jobs(&self) -> impl Iterator<Item = &JobRecord> {
        self.jobs.values().flat_map(|m| m.values())
    }

    /// The job's allocations, by ID.
    pub fn allocs_of<'a>(&'a self, ns: &str, id: &str) -> impl Iterator<Item = &'a Alloc> + 'a {
        let ids = self.links.of(ns, id).map(|r| &r.allocs);
        ids.into_iter().flatten().filter_map(|a| self.allocs.get(a))
    }

    /// The job's deployments, by ID.
    pub fn deployments_of<'a>(
        &'a self,
        ns: &str,
        id: &str,
    ) -> impl Iterator<Item = &'a Deployment> + 'a {
        let ids = self.links.of(ns, id).map(|r| &r.deployments);
        ids.into_iter()
            .flatten()
            .filter_map(|d| self.deployments.get(d))
    }

    /// The job's evaluations, by ID.
    pub fn evals_of<'a>(&'a self, ns: &str, id: &str) -> impl Iterator<Item = &'a Eval> + 'a {
        let ids = self.links.of(ns, id).map(|r| &r.evals);
        ids.into_iter().flatten().filter_map(|e| self.evals.get(e))
    }

    /// The allocations of every job with this ID, by namespace, then ID.
    pub fn allocs_of_any_namespace<'a>(&'a self, id: &str) -> impl Iterator<Item = &'a Alloc> + 'a {
        let namespaces = self.links.jobs.get(id);
        namespaces
            .into_iter()
            .flat_map(|m| m.values())
            .flat_map(|r| r.allocs.iter())
            .filter_map(|a| self.allocs.get(a))
    }

    /// The allocations placed for a deployment, by ID.
    pub fn allocs_in_deployment<'a>(
        &'a self,
        deployment_id: &str,
    ) -> impl Iterator<Item = &'a Alloc> + 'a {
        let ids = self.links.deployment_allocs.get(deployment_id);
        ids.into_iter().flatten().filter_map(|a| self.allocs.get(a))
    }

    pub fn insert_alloc(&mut self, alloc: Alloc) {
        let links = self.links.of_mut(&alloc.namespace, &alloc.job_id);
        links.allocs.insert(alloc.id.clone());
        self.links
            .link_deployment_alloc(&alloc.deployment_id, &alloc.id);
        self.allocs.0.insert(alloc.id.clone(), alloc);
    }

    pub fn insert_deployment(&mut self, deployment: Deployment) {
        let links = self.links.of_mut(&deployment.namespace, &deployment.job_id);
        links.deployments.insert(deployment.id.clone());
        self.deployments.0.insert(deployment.id.clone(), deployment);
    }

    pub fn insert_eval(&mut self, eval: Eval) {
        let links = self.links.of_mut(&eval.namespace, &eval.job_id);
        links.evals.insert(eval.id.clone());
        self.evals.0.insert(eval.id.clone(), eval);
    }

    /// Moves an allocation into another deployment (`""`: none); answers it.
    pub fn set_alloc_deployment(
        &mut self,
        alloc_id: &str,
        deployment_id: &str,
    ) -> Option<&mut Alloc> {
        let a = self.allocs.0.get_mut(alloc_id)?;
        if a.deployment_id != deployment_id {
            self.links
                .unlink_deployment_alloc(&a.deployment_id, alloc_id);
            self.links.link_deployment_alloc(deployment_id, alloc_id);
            a.deployment_id = deployment_id.to_string();
        }
        Some(a)
    }

    /// Drops the job's allocations, deployments and evaluations (not the job itself).
    pub fn remove_job_rows(&mut self, ns: &str, id: &str) {
        let Some(namespaces) = self.links.jobs.get_mut(id) else {
            return;
        };
        let Some(rows) = namespaces.remove(ns) else {
            return;
        };
        if namespaces.is_empty() {
            self.links.jobs.remove(id);
        }
        for alloc_id in &rows.allocs {
            if let Some(a) = self.allocs.0.remove(alloc_id) {
                self.links
                    .unlink_deployment_alloc(&a.deployment_id, alloc_id);
            }
        }
        for d in &rows.deployments {
            self.deployments.0.remove(d);
        }
        for e in &rows.evals {
            self.evals.0.remove(e);
        }
    }

    /// Builds the index from the tables (after loading a state file).
    pub fn relink(&mut self) {
        let mut links = Links::default();
        for a in self.allocs.values() {
            links
                .of_mut(&a.namespace, &a.job_id)
                .allocs
                .insert(a.id.clone());
            links.link_deployment_alloc(&a.deployment_id, &a.id);
        }
        for d in self.deployments.values() {
            links
                .of_mut(&d.namespace, &d.job_id)
                .deployments
                .insert(d.id.clone());
        }
        for e in self.evals.values() {
            links
                .of_mut(&e.namespace, &e.job_id)
                .evals
                .insert(e.id.clone());
        }
        self.links = links;
    }

    /// The index matches the tables (what [`State::relink`] would build).
    #[cfg(test)]
    pub fn links_consistent(&self) -> bool {
        let mut rebuilt = self.clone();
        rebuilt.relink();
        rebuilt.links == self.links
    }

    pub fn var(&self, ns: &str, path: &str) -> Option<&Variable> {
        self.variables.get(ns)?.get(path)
    }
}

// ---------------------------------------------------------------------------------------
// Rendering: the JSON Nomad returns for each object.
// ---------------------------------------------------------------------------------------

impl Summary {
    pub fn render(&self, ns: &str, job_id: &str) -> Value {
        let groups: serde_json::Map<String, Value> = self
            .groups
            .iter()
            .map(|(name, g)| {
                (
                    name.clone(),
                    json!({
                        "Complete": g.complete, "Failed": g.failed, "Lost": g.lost,
                        "Queued": g.queued, "Running": g.running, "Starting": g.starting,
                        "Unknown": g.unknown,
                    }),
                )
            })
            .collect();
        json!({
            "Children": {"Dead": 0, "Pending": 0, "Running": 0},
            "CreateIndex": self.create_index,
            "JobID": job_id,
            "ModifyIndex": self.modify_index,
            "Namespace": ns,
            "Summary": groups,
        })
    }
}

impl JobRecord {
    pub fn ns(&self) -> &str {
        self.job["Namespace"].as_str().unwrap_or("default")
    }

    pub fn id(&self) -> &str {
        self.job["ID"].as_str().unwrap_or_default()
    }

    pub fn version(&self) -> u64 {
        self.job["Version"].as_u64().unwrap_or(0)
    }

    pub fn modify_index(&self) -> u64 {
        self.job["ModifyIndex"].as_u64().unwrap_or(0)
    }

    pub fn spec_of_version(&self, version: u64) -> Option<&Value> {
        self.versions
            .iter()
            .find(|v| v["Version"].as_u64() == Some(version))
    }

    /// `JobListStub` (no `Version`, no task groups).
    pub fn stub(&self, with_meta: bool) -> Value {
        let j = &self.job;
        let mut stub = json!({
            "CreateIndex": j["CreateIndex"],
            "Datacenters": j["Datacenters"],
            "ID": j["ID"],
            "JobModifyIndex": j["JobModifyIndex"],
            "JobSummary": self.summary.render(self.ns(), self.id()),
            "ModifyIndex": j["ModifyIndex"],
            "Multiregion": j["Multiregion"],
            "Name": j["Name"],
            "Namespace": j["Namespace"],
            "NodePool": j["NodePool"],
            "ParameterizedJob": !j["ParameterizedJob"].is_null(),
            "ParentID": j["ParentID"],
            "Periodic": !j["Periodic"].is_null(),
            "Priority": j["Priority"],
            "Status": j["Status"],
            "StatusDescription": j["StatusDescription"],
            "Stop": j["Stop"],
            "SubmitTime": j["SubmitTime"],
            "Type": j["Type"],
        });
        // `Meta map[string]string json:",omitempty"` on the stub.
        if with_meta {
            if let Some(meta) = j["Meta"].as_object().filter(|m| !m.is_empty()) {
                stub["Meta"] = Value::Object(meta.clone());
            }
        }
        stub
    }
}

impl Alloc {
    pub fn name(&self) -> String {
        format!("{}.{}[{}]", self.job_id, self.task_group, self.slot)
    }

    /// Nomad's `Allocation.TerminalStatus`.
    pub fn is_terminal(&self) -> bool {
        matches!(self.desired_status.as_str(), "stop" | "evict")
            || matches!(self.client_status.as_str(), "complete" | "failed" | "lost")
    }

    /// `AllocListStub`.
    pub fn stub(&self, node_id: &str, task_states: bool) -> Value {
        json!({
            "ClientDescription": self.client_description,
            "ClientStatus": self.client_status,
            "CreateIndex": self.create_index,
            "CreateTime": self.create_time,
            "DeploymentStatus": self.deployment_status.as_ref().map(|h| json!({
                "Canary": false,
                "Healthy": h.healthy,
                "ModifyIndex": h.modify_index,
                "Timestamp": h.timestamp,
            })),
            "DesiredDescription": self.desired_description,
            "DesiredStatus": self.desired_status,
            "DesiredTransition": {"ForceReschedule": null, "Migrate": null, "Reschedule": null},
            "EvalID": self.eval_id,
            "FollowupEvalID": "",
            "ID": self.id,
            "JobID": self.job_id,
            "JobType": self.job_type,
            "JobVersion": self.job_version,
            "ModifyIndex": self.modify_index,
            "ModifyTime": self.modify_time,
            "Name": self.name(),
            "Namespace": self.namespace,
            "NextAllocation": self.next_allocation,
            "NodeID": node_id,
            "NodeName": super::NODE_NAME,
            "PreemptedAllocations": null,
            "PreemptedByAllocation": "",
            "RescheduleTracker": null,
            "TaskGroup": self.task_group,
            "TaskStates": if task_states { self.render_task_states() } else { Value::Null },
        })
    }

    /// The full `Allocation` (`GET /v1/allocation/:id`): the stub plus the job it runs.
    pub fn full(&self, node_id: &str, job: Option<&Value>) -> Value {
        let mut v = self.stub(node_id, true);
        v["Job"] = job.cloned().unwrap_or(Value::Null);
        v["DeploymentID"] = json!(self.deployment_id);
        v["PreviousAllocation"] = json!(self.previous_allocation);
        v["AllocModifyIndex"] = json!(self.modify_index);
        v
    }

    fn render_task_states(&self) -> Value {
        let states: serde_json::Map<String, Value> = self
            .task_states
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    json!({
                        "Events": s.events.iter().map(TaskEvent::render).collect::<Vec<_>>(),
                        "Failed": s.failed,
                        "FinishedAt": s.finished_at,
                        "LastRestart": null,
                        "Restarts": s.restarts,
                        "StartedAt": s.started_at,
                        "State": s.state,
                        "TaskHandle": null,
                    }),
                )
            })
            .collect();
        Value::Object(states)
    }
}

impl TaskEvent {
    fn render(&self) -> Value {
        json!({
            "Details": self.details,
            "DiskLimit": 0,
            "DisplayMessage": self.display_message,
            "DownloadError": "",
            "DriverError": self.driver_error,
            "DriverMessage": "",
            "ExitCode": 0,
            "FailedSibling": "",
            "FailsTask": self.fails_task,
            "GenericSource": "",
            "KillError": "",
            "KillReason": "",
            "KillTimeout": 0,
            "Message": self.message,
            "RestartReason": "",
            "SetupError": "",
            "Signal": 0,
            "StartDelay": 0,
            "TaskSignal": "",
            "TaskSignalReason": "",
            "Time": self.time,
            "Type": self.kind,
            "ValidationError": "",
            "VaultError": "",
        })
    }
}

impl Deployment {
    pub fn is_active(&self) -> bool {
        matches!(
            self.status.as_str(),
            "running" | "paused" | "pending" | "blocked" | "unblocking" | "initializing"
        )
    }

    pub fn render(&self) -> Value {
        let groups: serde_json::Map<String, Value> = self
            .groups
            .iter()
            .map(|(name, g)| {
                (
                    name.clone(),
                    json!({
                        "AutoPromote": false,
                        "AutoRevert": false,
                        "DesiredCanaries": 0,
                        "DesiredTotal": g.desired_total,
                        "HealthyAllocs": g.healthy_allocs,
                        "PlacedAllocs": g.placed_allocs,
                        "PlacedCanaries": null,
                        "ProgressDeadline": g.progress_deadline_ns,
                        "Promoted": false,
                        "RequireProgressBy": g.require_progress_by,
                        "UnhealthyAllocs": g.unhealthy_allocs,
                    }),
                )
            })
            .collect();
        json!({
            "CreateIndex": self.create_index,
            "CreateTime": self.create_time,
            "EvalPriority": 50,
            "ID": self.id,
            "IsMultiregion": false,
            "JobCreateIndex": self.job_create_index,
            "JobID": self.job_id,
            "JobModifyIndex": self.job_modify_index,
            "JobSpecModifyIndex": self.job_modify_index,
            "JobVersion": self.job_version,
            "ModifyIndex": self.modify_index,
            "ModifyTime": self.modify_time,
            "Namespace": self.namespace,
            "Status": self.status,
            "StatusDescription": self.status_description,
            "TaskGroups": groups,
        })
    }
}

impl Eval {
    pub fn render(&self) -> Value {
        json!({
            "BlockedEval": self.blocked_eval,
            "CreateIndex": self.create_index,
            "CreateTime": self.create_time,
            "DeploymentID": self.deployment_id,
            "FailedTGAllocs": self.failed_tg_allocs,
            "ID": self.id,
            "JobID": self.job_id,
            "JobModifyIndex": self.job_modify_index,
            "ModifyIndex": self.modify_index,
            "ModifyTime": self.modify_time,
            "Namespace": self.namespace,
            "NextEval": "",
            "NodeID": "",
            "NodeModifyIndex": 0,
            "PreviousEval": self.previous_eval,
            "Priority": self.priority,
            "QueuedAllocations": self.queued_allocations,
            "SnapshotIndex": self.snapshot_index,
            "Status": self.status,
            "StatusDescription": self.status_description,
            "TriggeredBy": self.triggered_by,
            "Type": self.job_type,
            "Wait": 0,
            "WaitUntil": null,
        })
    }
}

impl VarLock {
    /// Durations are Go duration strings on output (NOMAD-API.md §2.1).
    pub fn render(&self) -> Value {
        json!({
            "TTL": super::duration::format_go(self.ttl),
            "LockDelay": super::duration::format_go(self.lock_delay),
            "ID": self.id,
        })
    }
}

impl Variable {
    /// `VariableMetadata` (list entries, renew responses).
    pub fn metadata(&self) -> Value {
        json!({
            "CreateIndex": self.create_index,
            "CreateTime": self.create_time,
            "Lock": self.lock.as_ref().map(VarLock::render),
            "ModifyIndex": self.modify_index,
            "ModifyTime": self.modify_time,
            "Namespace": self.namespace,
            "Path": self.path,
        })
    }

    /// `VariableDecrypted` with the given items (`null` when `None`).
    pub fn with_items(&self, items: Option<&BTreeMap<String, String>>) -> Value {
        let mut v = self.metadata();
        v["Items"] = json!(items);
        v
    }

    /// The 409 body for a conflict: the variable without its lock (only the holder may
    /// learn the lock ID).
    pub fn conflict(&self) -> Value {
        let mut v = self.with_items(Some(&self.items));
        v["Lock"] = Value::Null;
        v
    }

    /// The "plausible zero value" conflict Nomad returns when there is nothing to show.
    pub fn zero_conflict(ns: &str, path: &str) -> Value {
        json!({
            "CreateIndex": 0, "CreateTime": 0, "Items": null, "Lock": null,
            "ModifyIndex": 0, "ModifyTime": 0, "Namespace": ns, "Path": path,
        })
    }
}
