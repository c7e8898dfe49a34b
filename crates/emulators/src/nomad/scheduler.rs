//! The Hippo emulator's [`JobScheduler`] backed by this emulator: what Hippo v0.20's
//! `NomadJobService` sends to Nomad (HIPPO-API.md §7.2, NOMAD-API.md §5,
//! `samples/hippo/hippo_job_register_request.json`).

use std::sync::Arc;

use serde_json::{json, Value};
use uuid::Uuid;

use super::super::state_file::Persisted;
use super::jobspec::decode_register;
use super::{sched, Shared};
use crate::hippo::{JobScheduler, ScheduledJob};

/// Hippo's Nomad settings (`Nomad:Driver`, `Nomad:Datacenters`, `ConnectionStrings:Bindle`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HippoJobSettings {
    /// The Bindle base URL given to `spin` as `BINDLE_URL`, e.g. `http://127.0.0.1:8080/v1`.
    pub bindle_url: String,
    /// `Nomad:Driver` (Hippo's default on Linux: `exec`).
    pub driver: String,
    /// `Nomad:Datacenters` (Hippo's default: `["dc1"]`). Empty (the default here) = the
    /// emulator's datacenter, so that the jobs can be placed.
    pub datacenters: Vec<String>,
}

impl Default for HippoJobSettings {
    fn default() -> Self {
        HippoJobSettings {
            bindle_url: "http://127.0.0.1:8080/v1".to_string(),
            driver: "exec".to_string(),
            datacenters: Vec::new(),
        }
    }
}

impl HippoJobSettings {
    /// The `JobRegisterRequest` Hippo posts to `/v1/job/<channel id>` for `job`: one group
    /// and one service named by the channel, a dynamic `http` port, Traefik tags, the `spin`
    /// task with `spin up --listen ${NOMAD_ADDR_http} --bindle <id>`. The channel's own
    /// environment variables are **not** in the task's `Env`: Hippo collects them and never
    /// uses them (HIPPO-API.md §6.6). Service provider `nomad` (no Consul check).
    pub fn register_request(&self, job: &ScheduledJob) -> Value {
        let id = job.channel_id.to_string();
        json!({
            "Job": {
                "ID": id,
                "Name": id,
                "Datacenters": self.datacenters,
                "Type": "service",
                "TaskGroups": [{
                    "Name": id,
                    "Networks": [{"DynamicPorts": [{"Label": "http"}]}],
                    "Services": [{
                        "Name": id,
                        "PortLabel": "http",
                        "Provider": "nomad",
                        "Tags": [
                            "traefik.enable=true",
                            format!("traefik.http.routers.{id}.rule=Host(`{}`)", job.domain),
                        ],
                    }],
                    "Tasks": [{
                        "Name": "spin",
                        "Driver": self.driver,
                        "Env": {
                            "RUST_LOG": "warn,spin=debug",
                            "BINDLE_URL": self.bindle_url,
                            "SPIN_LOG_DIR": "local/log",
                        },
                        "Config": {
                            "command": "spin",
                            "args": ["up", "--listen", "${NOMAD_ADDR_http}", "--bindle", job.bindle_id],
                        },
                    }],
                }],
            }
        })
    }
}

/// Registers and deregisters jobs directly in the emulator's state (no HTTP).
pub(super) struct HippoScheduler {
    shared: Arc<Shared>,
    settings: HippoJobSettings,
}

impl HippoScheduler {
    pub fn new(shared: Arc<Shared>, mut settings: HippoJobSettings) -> Self {
        if settings.datacenters.is_empty() {
            settings.datacenters = vec![shared.settings.datacenter.clone()];
        }
        HippoScheduler { shared, settings }
    }
}

impl JobScheduler for HippoScheduler {
    fn start_job(&self, job: ScheduledJob) {
        let body = self.settings.register_request(&job);
        let id = job.channel_id.to_string();
        let req = match decode_register(&body, Some(&id), None, &self.shared.settings.region) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(job = %id, error = ?e, "nomad emulator: Hippo's job was refused");
                return;
            }
        };
        if let Err(e) = self.shared.mutate(|st, cfg| sched::register(st, cfg, req)) {
            tracing::warn!(job = %id, error = ?e, "nomad emulator: registering Hippo's job");
        }
        self.shared.persist_soon();
    }

    fn delete_job(&self, channel_id: Uuid) {
        let id = channel_id.to_string();
        // Hippo's DeleteJob: `DELETE /v1/job/<id>` without purge. Nomad answers 404 for an
        // unknown job, which Hippo would surface as an error; here it is only logged.
        if let Err(e) = self
            .shared
            .mutate(|st, cfg| sched::deregister(st, cfg, "default", &id, false))
        {
            tracing::info!(job = %id, error = ?e, "nomad emulator: Hippo deleted an unknown job");
        }
        self.shared.persist_soon();
    }
}
