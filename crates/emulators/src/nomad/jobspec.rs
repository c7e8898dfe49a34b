//! Decoding, canonicalisation and validation of submitted jobs, and the comparisons the
//! scheduler needs (NOMAD-API.md §1.3; defaults as in `samples/hippo/hippo_job_read.json`).
//!
//! Nomad decodes the register body into Go structs: keys match field names
//! case-insensitively, unknown keys are dropped, a value of the wrong JSON type is a 400. The
//! API layer then canonicalises (fills every default) before the server stores the job, so
//! `GET /v1/job/:id` returns many more fields than were sent. Both steps are reproduced here
//! for the objects the emulator models field by field (job, group, task, service, check,
//! network, port, resources and the policy blocks); driver `Config`, constraints, templates
//! and the like are kept as sent.

use serde_json::{json, Map, Value};

/// The JSON type a Go field accepts.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    StrList,
    StrMap,
    /// Kept as sent (`map[string]interface{}`, or a struct the emulator does not model).
    Any,
    Obj(&'static Level),
    ObjList(&'static Level),
}

struct Level {
    go_name: &'static str,
    fields: &'static [(&'static str, Kind)],
}

use Kind::*;

static REGISTER_REQUEST: Level = Level {
    go_name: "JobRegisterRequest",
    fields: &[
        ("Job", Obj(&JOB)),
        ("EnforceIndex", Bool),
        ("JobModifyIndex", Int),
        ("PolicyOverride", Bool),
        ("PreserveCounts", Bool),
        ("PreserveResources", Bool),
        ("EvalPriority", Int),
        ("Submission", Any),
        ("Region", Str),
        ("Namespace", Str),
        ("SecretID", Str),
    ],
};

static JOB: Level = Level {
    go_name: "Job",
    fields: &[
        ("Region", Str),
        ("Namespace", Str),
        ("ID", Str),
        ("ParentID", Str),
        ("Name", Str),
        ("Type", Str),
        ("Priority", Int),
        ("AllAtOnce", Bool),
        ("Datacenters", StrList),
        ("NodePool", Str),
        ("Constraints", Any),
        ("Affinities", Any),
        ("Spreads", Any),
        ("TaskGroups", ObjList(&GROUP)),
        ("Update", Obj(&UPDATE)),
        ("Multiregion", Any),
        ("Periodic", Any),
        ("ParameterizedJob", Any),
        ("Dispatched", Bool),
        ("DispatchIdempotencyToken", Str),
        ("Payload", Any),
        ("Reschedule", Obj(&RESCHEDULE)),
        ("Migrate", Obj(&MIGRATE)),
        ("Meta", StrMap),
        ("ConsulToken", Str),
        ("ConsulNamespace", Str),
        ("VaultToken", Str),
        ("VaultNamespace", Str),
        ("NomadTokenID", Str),
        ("Status", Str),
        ("StatusDescription", Str),
        ("Stable", Bool),
        ("Version", Int),
        ("SubmitTime", Int),
        ("CreateIndex", Int),
        ("ModifyIndex", Int),
        ("JobModifyIndex", Int),
        ("Stop", Bool),
        ("UI", Any),
        ("VersionTag", Any),
    ],
};

static GROUP: Level = Level {
    go_name: "TaskGroup",
    fields: &[
        ("Name", Str),
        ("Count", Int),
        ("Constraints", Any),
        ("Affinities", Any),
        ("Tasks", ObjList(&TASK)),
        ("Spreads", Any),
        ("Volumes", Any),
        ("RestartPolicy", Obj(&RESTART)),
        ("Disconnect", Any),
        ("ReschedulePolicy", Obj(&RESCHEDULE)),
        ("EphemeralDisk", Obj(&EPHEMERAL_DISK)),
        ("Update", Obj(&UPDATE)),
        ("Migrate", Obj(&MIGRATE)),
        ("Networks", ObjList(&NETWORK)),
        ("Meta", StrMap),
        ("Services", ObjList(&SERVICE)),
        ("ShutdownDelay", Int),
        ("StopAfterClientDisconnect", Int),
        ("MaxClientDisconnect", Int),
        ("PreventRescheduleOnLost", Bool),
        ("Scaling", Any),
        ("Consul", Obj(&CONSUL)),
    ],
};

static TASK: Level = Level {
    go_name: "Task",
    fields: &[
        ("Name", Str),
        ("Driver", Str),
        ("User", Str),
        ("Lifecycle", Any),
        ("Config", Any),
        ("Constraints", Any),
        ("Affinities", Any),
        ("Env", StrMap),
        ("Services", ObjList(&SERVICE)),
        ("Resources", Obj(&RESOURCES)),
        ("RestartPolicy", Obj(&RESTART)),
        ("Meta", StrMap),
        ("KillTimeout", Int),
        ("LogConfig", Obj(&LOG_CONFIG)),
        ("Artifacts", Any),
        ("Vault", Any),
        ("Consul", Any),
        ("Templates", Any),
        ("DispatchPayload", Any),
        ("VolumeMounts", Any),
        ("CSIPluginConfig", Any),
        ("Leader", Bool),
        ("ShutdownDelay", Int),
        ("KillSignal", Str),
        ("Kind", Str),
        ("ScalingPolicies", Any),
        ("Identity", Any),
        ("Identities", Any),
        ("Actions", Any),
        ("Schedule", Any),
    ],
};

static SERVICE: Level = Level {
    go_name: "Service",
    fields: &[
        ("Name", Str),
        ("Tags", StrList),
        ("CanaryTags", StrList),
        ("EnableTagOverride", Bool),
        ("PortLabel", Str),
        ("AddressMode", Str),
        ("Address", Str),
        ("Checks", ObjList(&CHECK)),
        ("CheckRestart", Any),
        ("Connect", Any),
        ("Meta", StrMap),
        ("CanaryMeta", StrMap),
        ("TaggedAddresses", StrMap),
        ("TaskName", Str),
        ("OnUpdate", Str),
        ("Identity", Any),
        ("Provider", Str),
        ("Cluster", Str),
        ("Weights", Any),
        ("Kind", Str),
    ],
};

static CHECK: Level = Level {
    go_name: "ServiceCheck",
    fields: &[
        ("Name", Str),
        ("Type", Str),
        ("Command", Str),
        ("Args", StrList),
        ("Path", Str),
        ("Protocol", Str),
        ("PortLabel", Str),
        ("Expose", Bool),
        ("AddressMode", Str),
        ("Interval", Int),
        ("Timeout", Int),
        ("InitialStatus", Str),
        ("TLSServerName", Str),
        ("TLSSkipVerify", Bool),
        ("Header", Any),
        ("Method", Str),
        ("Body", Str),
        ("CheckRestart", Any),
        ("GRPCService", Str),
        ("GRPCUseTLS", Bool),
        ("TaskName", Str),
        ("SuccessBeforePassing", Int),
        ("FailuresBeforeCritical", Int),
        ("FailuresBeforeWarning", Int),
        ("OnUpdate", Str),
    ],
};

static NETWORK: Level = Level {
    go_name: "NetworkResource",
    fields: &[
        ("Mode", Str),
        ("Device", Str),
        ("CIDR", Str),
        ("IP", Str),
        ("Hostname", Str),
        ("DNS", Any),
        ("ReservedPorts", ObjList(&PORT)),
        ("DynamicPorts", ObjList(&PORT)),
        ("MBits", Int),
        ("CNI", Any),
    ],
};

static PORT: Level = Level {
    go_name: "Port",
    fields: &[
        ("Label", Str),
        ("Value", Int),
        ("To", Int),
        ("HostNetwork", Str),
        ("IgnoreCollision", Bool),
    ],
};

static RESOURCES: Level = Level {
    go_name: "Resources",
    fields: &[
        ("CPU", Int),
        ("Cores", Int),
        ("MemoryMB", Int),
        ("MemoryMaxMB", Int),
        ("DiskMB", Int),
        ("IOPS", Int),
        ("SecretsMB", Int),
        ("Networks", Any),
        ("Devices", Any),
        ("NUMA", Any),
    ],
};

static LOG_CONFIG: Level = Level {
    go_name: "LogConfig",
    fields: &[
        ("MaxFiles", Int),
        ("MaxFileSizeMB", Int),
        ("Disabled", Bool),
        ("Enabled", Any),
    ],
};

static RESTART: Level = Level {
    go_name: "RestartPolicy",
    fields: &[
        ("Attempts", Int),
        ("Interval", Int),
        ("Delay", Int),
        ("Mode", Str),
        ("RenderTemplates", Bool),
    ],
};

static RESCHEDULE: Level = Level {
    go_name: "ReschedulePolicy",
    fields: &[
        ("Attempts", Int),
        ("Interval", Int),
        ("Delay", Int),
        ("DelayFunction", Str),
        ("MaxDelay", Int),
        ("Unlimited", Bool),
    ],
};

static UPDATE: Level = Level {
    go_name: "UpdateStrategy",
    fields: &[
        ("Stagger", Int),
        ("MaxParallel", Int),
        ("HealthCheck", Str),
        ("MinHealthyTime", Int),
        ("HealthyDeadline", Int),
        ("ProgressDeadline", Int),
        ("Canary", Int),
        ("AutoRevert", Bool),
        ("AutoPromote", Bool),
    ],
};

static MIGRATE: Level = Level {
    go_name: "MigrateStrategy",
    fields: &[
        ("MaxParallel", Int),
        ("HealthCheck", Str),
        ("MinHealthyTime", Int),
        ("HealthyDeadline", Int),
    ],
};

static EPHEMERAL_DISK: Level = Level {
    go_name: "EphemeralDisk",
    fields: &[("Sticky", Bool), ("Migrate", Bool), ("SizeMB", Int)],
};

static CONSUL: Level = Level {
    go_name: "Consul",
    fields: &[("Namespace", Str), ("Cluster", Str), ("Partition", Str)],
};

const SECOND: i64 = 1_000_000_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;

/// Why a register body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    /// 400: the body does not decode (Go's `json:` message).
    Decode(String),
    /// 400 with this exact text (checks the HTTP handler makes).
    BadRequest(String),
    /// 500: `Job.Validate` failed; rendered as a go-multierror list.
    Invalid(Vec<String>),
}

impl SpecError {
    pub fn status_and_text(&self) -> (u16, String) {
        match self {
            SpecError::Decode(m) | SpecError::BadRequest(m) => (400, m.clone()),
            SpecError::Invalid(errs) => (500, multierror(errs)),
        }
    }
}

/// go-multierror's `ListFormatFunc`.
pub fn multierror(errs: &[String]) -> String {
    let points: Vec<String> = errs.iter().map(|e| format!("* {e}")).collect();
    if errs.len() == 1 {
        format!("1 error occurred:\n\t{}\n\n", points[0])
    } else {
        format!(
            "{} errors occurred:\n\t{}\n\n",
            errs.len(),
            points.join("\n\t")
        )
    }
}

/// A decoded `JobRegisterRequest`, job canonicalised.
#[derive(Debug, Clone)]
pub struct RegisterRequest {
    pub job: Value,
    pub enforce_index: bool,
    pub job_modify_index: u64,
    pub preserve_counts: bool,
    pub eval_priority: i64,
}

/// Decodes and canonicalises a register body. `url_job_id` is the `:job_id` of
/// `/v1/job/:job_id` (None for `/v1/jobs`); `query_ns` the `?namespace=` parameter.
pub fn decode_register(
    body: &Value,
    url_job_id: Option<&str>,
    query_ns: Option<&str>,
    region: &str,
) -> Result<RegisterRequest, SpecError> {
    let req = normalize(body, &REGISTER_REQUEST, "JobRegisterRequest")?;
    let Some(job) = req.get("Job").and_then(Value::as_object) else {
        return Err(SpecError::BadRequest("Job must be specified".into()));
    };
    let Some(id) = job.get("ID").and_then(Value::as_str) else {
        return Err(SpecError::BadRequest("Job ID hasn't been provided".into()));
    };
    if let Some(url_id) = url_job_id {
        if url_id != id {
            return Err(SpecError::BadRequest("Job ID does not match name".into()));
        }
    }
    let eval_priority = req.get("EvalPriority").and_then(Value::as_i64).unwrap_or(0);
    if eval_priority != 0 && !(1..=100).contains(&eval_priority) {
        return Err(SpecError::BadRequest(
            "Eval priority must be between 1 and 100 inclusively".into(),
        ));
    }
    // `namespaceForJob`: ?namespace= > Job.Namespace > default (a body `Namespace` is the
    // WriteRequest's and only matters through the query in the HTTP agent).
    let ns = query_ns
        .filter(|n| !n.is_empty())
        .or_else(|| {
            job.get("Namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
        })
        .unwrap_or("default");
    let job = canonicalize_job(job, ns, region);
    let errs = validate(&job);
    if !errs.is_empty() {
        return Err(SpecError::Invalid(errs));
    }
    Ok(RegisterRequest {
        job,
        enforce_index: req
            .get("EnforceIndex")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        job_modify_index: req
            .get("JobModifyIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        preserve_counts: req
            .get("PreserveCounts")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        eval_priority,
    })
}

/// Go's `encoding/json` into the struct described by `level`: case-insensitive keys, unknown
/// keys dropped, `null` treated as absent, type mismatches refused.
fn normalize(input: &Value, level: &Level, path: &str) -> Result<Map<String, Value>, SpecError> {
    let Some(obj) = input.as_object() else {
        return Err(type_error(input, path, level.go_name));
    };
    let mut out = Map::new();
    for (key, value) in obj {
        let Some((name, kind)) = level
            .fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(key))
        else {
            continue;
        };
        if value.is_null() {
            continue;
        }
        let field_path = format!("{path}.{name}");
        let ok = match kind {
            Str => value.is_string().then(|| value.clone()),
            Int => (value.is_i64() || value.is_u64()).then(|| value.clone()),
            Bool => value.is_boolean().then(|| value.clone()),
            StrList => value
                .as_array()
                .filter(|a| a.iter().all(|v| v.is_string()))
                .map(|_| value.clone()),
            StrMap => value
                .as_object()
                .filter(|m| m.values().all(|v| v.is_string() || v.is_null()))
                .map(|_| value.clone()),
            Any => Some(value.clone()),
            Obj(sub) => Some(Value::Object(normalize(value, sub, &field_path)?)),
            ObjList(sub) => match value.as_array() {
                Some(items) => Some(Value::Array(
                    items
                        .iter()
                        .filter(|v| !v.is_null())
                        .map(|v| normalize(v, sub, &field_path).map(Value::Object))
                        .collect::<Result<_, _>>()?,
                )),
                None => None,
            },
        };
        match ok {
            Some(v) => {
                out.insert(name.to_string(), v);
            }
            None => return Err(type_error(value, &field_path, go_type(kind))),
        }
    }
    Ok(out)
}

fn go_type(kind: &Kind) -> &'static str {
    match kind {
        Str => "string",
        Int => "int",
        Bool => "bool",
        StrList => "[]string",
        StrMap => "map[string]string",
        Any => "interface {}",
        Obj(l) => l.go_name,
        ObjList(l) => l.go_name,
    }
}

fn type_error(value: &Value, path: &str, go_type: &str) -> SpecError {
    let json_kind = match value {
        Value::Null => "null".to_string(),
        Value::Bool(_) => "bool".to_string(),
        Value::Number(n) if n.is_f64() => format!("number {n}"),
        Value::Number(_) => "number".to_string(),
        Value::String(_) => "string".to_string(),
        Value::Array(_) => "array".to_string(),
        Value::Object(_) => "object".to_string(),
    };
    SpecError::Decode(format!(
        "json: cannot unmarshal {json_kind} into Go struct field {path} of type {go_type}"
    ))
}

/// Starts from `defaults` and overlays what was sent.
fn overlay(defaults: Value, given: Option<&Value>) -> Value {
    let mut out = defaults;
    if let (Some(o), Some(Value::Object(g))) = (out.as_object_mut(), given) {
        for (k, v) in g {
            o.insert(k.clone(), v.clone());
        }
    }
    out
}

fn service_type(job_type: &str) -> bool {
    job_type == "service"
}

/// Fills every default Nomad fills (`api.Job.Canonicalize` + `ApiJobToStructJob`).
fn canonicalize_job(job: &Map<String, Value>, ns: &str, region: &str) -> Value {
    let g = |k: &str| job.get(k);
    let id = g("ID")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let job_type = g("Type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .unwrap_or("service")
        .to_string();
    let name = g("Name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or(&id)
        .to_string();
    let region = g("Region")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        .unwrap_or(region);
    let datacenters = match g("Datacenters").and_then(Value::as_array) {
        Some(d) if !d.is_empty() => Value::Array(d.clone()),
        _ => json!(["*"]),
    };
    // The server keeps only Stagger and MaxParallel of the job-level update block.
    let job_update = g("Update");
    let update = json!({
        "AutoPromote": false, "AutoRevert": false, "Canary": 0, "HealthCheck": "",
        "HealthyDeadline": 0,
        "MaxParallel": job_update.and_then(|u| u.get("MaxParallel")).cloned().unwrap_or(json!(1)),
        "MinHealthyTime": 0, "ProgressDeadline": 0,
        "Stagger": job_update.and_then(|u| u.get("Stagger")).cloned().unwrap_or(json!(30 * SECOND)),
    });
    let ctx = JobCtx {
        id: &id,
        job_type: &job_type,
        update: job_update,
        migrate: g("Migrate"),
        reschedule: g("Reschedule"),
    };
    let groups: Vec<Value> = g("TaskGroups")
        .and_then(Value::as_array)
        .map(|gs| gs.iter().map(|tg| canonicalize_group(tg, &ctx)).collect())
        .unwrap_or_default();

    let mut out = json!({
        "Affinities": null,
        "AllAtOnce": false,
        "Constraints": null,
        "ConsulNamespace": "",
        "CreateIndex": 0,
        "Datacenters": datacenters,
        "DispatchIdempotencyToken": "",
        "Dispatched": false,
        "ID": id,
        "JobModifyIndex": 0,
        "Meta": null,
        "ModifyIndex": 0,
        "Multiregion": null,
        "Name": name,
        "Namespace": ns,
        "NodePool": "default",
        "NomadTokenID": "",
        "ParameterizedJob": null,
        "ParentID": "",
        "Payload": null,
        "Periodic": null,
        "Priority": 50,
        "Region": region,
        "Spreads": null,
        "Stable": false,
        "Status": "pending",
        "StatusDescription": "",
        "Stop": false,
        "SubmitTime": 0,
        "TaskGroups": groups,
        "Type": job_type,
        "Update": update,
        "VaultNamespace": "",
        "Version": 0,
    });
    let handled = [
        "ID",
        "Name",
        "Namespace",
        "Region",
        "Type",
        "Datacenters",
        "Update",
        "TaskGroups",
        // Merged into the groups; the server's Job has no such fields.
        "Migrate",
        "Reschedule",
        // Secrets, never returned.
        "ConsulToken",
        "VaultToken",
        // Set by the server.
        "Status",
        "StatusDescription",
        "Stable",
        "Version",
        "SubmitTime",
        "CreateIndex",
        "ModifyIndex",
        "JobModifyIndex",
    ];
    if let Some(o) = out.as_object_mut() {
        for (k, v) in job {
            if !handled.contains(&k.as_str()) {
                o.insert(k.clone(), v.clone());
            }
        }
        if o.get("NodePool").and_then(Value::as_str) == Some("") {
            o.insert("NodePool".into(), json!("default"));
        }
    }
    out
}

struct JobCtx<'a> {
    id: &'a str,
    job_type: &'a str,
    update: Option<&'a Value>,
    migrate: Option<&'a Value>,
    reschedule: Option<&'a Value>,
}

fn canonicalize_group(tg: &Value, ctx: &JobCtx) -> Value {
    let g = |k: &str| tg.get(k);
    let name = g("Name").and_then(Value::as_str).unwrap_or_default();
    let service = service_type(ctx.job_type);
    let batch = matches!(ctx.job_type, "batch" | "sysbatch");

    let restart_default = if batch {
        json!({"Attempts": 3, "Delay": 15 * SECOND, "Interval": 24 * HOUR, "Mode": "fail", "RenderTemplates": false})
    } else {
        json!({"Attempts": 2, "Delay": 15 * SECOND, "Interval": 30 * MINUTE, "Mode": "fail", "RenderTemplates": false})
    };
    let restart = overlay(restart_default, g("RestartPolicy"));

    let reschedule = match ctx.job_type {
        "service" => overlay(
            overlay(
                json!({"Attempts": 0, "Delay": 30 * SECOND, "DelayFunction": "exponential",
                       "Interval": 0, "MaxDelay": HOUR, "Unlimited": true}),
                ctx.reschedule,
            ),
            g("ReschedulePolicy"),
        ),
        "batch" => overlay(
            overlay(
                json!({"Attempts": 1, "Delay": 5 * SECOND, "DelayFunction": "constant",
                       "Interval": 24 * HOUR, "MaxDelay": 0, "Unlimited": false}),
                ctx.reschedule,
            ),
            g("ReschedulePolicy"),
        ),
        _ => g("ReschedulePolicy").cloned().unwrap_or(Value::Null),
    };
    let update = if service {
        overlay(
            overlay(
                json!({"AutoPromote": false, "AutoRevert": false, "Canary": 0,
                       "HealthCheck": "checks", "HealthyDeadline": 5 * MINUTE, "MaxParallel": 1,
                       "MinHealthyTime": 10 * SECOND, "ProgressDeadline": 10 * MINUTE,
                       "Stagger": 30 * SECOND}),
                ctx.update,
            ),
            g("Update"),
        )
    } else {
        g("Update").cloned().unwrap_or(Value::Null)
    };
    let migrate = if service {
        overlay(
            overlay(
                json!({"HealthCheck": "checks", "HealthyDeadline": 5 * MINUTE, "MaxParallel": 1,
                       "MinHealthyTime": 10 * SECOND}),
                ctx.migrate,
            ),
            g("Migrate"),
        )
    } else {
        g("Migrate").cloned().unwrap_or(Value::Null)
    };
    let networks = g("Networks")
        .and_then(Value::as_array)
        .map(|ns| Value::Array(ns.iter().map(canonicalize_network).collect()))
        .unwrap_or(Value::Null);
    let svc_default_name = format!("{}-{}", ctx.id, name);
    let services = canonicalize_services(g("Services"), &svc_default_name);
    let tasks: Vec<Value> = g("Tasks")
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .map(|t| canonicalize_task(t, &restart, &svc_default_name))
                .collect()
        })
        .unwrap_or_default();

    let mut out = json!({
        "Affinities": null,
        "Constraints": null,
        "Consul": overlay(json!({"Cluster": "default", "Namespace": "", "Partition": ""}), g("Consul")),
        "Count": g("Count").cloned().unwrap_or(json!(1)),
        "Disconnect": null,
        "EphemeralDisk": overlay(json!({"Migrate": false, "SizeMB": 300, "Sticky": false}), g("EphemeralDisk")),
        "MaxClientDisconnect": null,
        "Meta": null,
        "Migrate": migrate,
        "Name": name,
        "Networks": networks,
        "ReschedulePolicy": reschedule,
        "RestartPolicy": restart,
        "Scaling": null,
        "Services": services,
        "ShutdownDelay": null,
        "Spreads": null,
        "StopAfterClientDisconnect": null,
        "Tasks": tasks,
        "Update": update,
        "Volumes": null,
    });
    let handled = [
        "Name",
        "Count",
        "Consul",
        "EphemeralDisk",
        "Migrate",
        "Networks",
        "ReschedulePolicy",
        "RestartPolicy",
        "Services",
        "Tasks",
        "Update",
    ];
    copy_rest(&mut out, tg, &handled);
    out
}

fn canonicalize_network(n: &Value) -> Value {
    let ports = |k: &str| {
        n.get(k)
            .and_then(Value::as_array)
            .map(|ps| {
                Value::Array(
                    ps.iter()
                        .map(|p| {
                            overlay(
                                json!({"HostNetwork": "default", "Label": "", "To": 0, "Value": 0}),
                                Some(p),
                            )
                        })
                        .collect(),
                )
            })
            .unwrap_or(Value::Null)
    };
    let mut out = overlay(
        json!({"CIDR": "", "DNS": null, "Device": "", "Hostname": "", "IP": "", "MBits": 0,
               "Mode": ""}),
        Some(n),
    );
    out["DynamicPorts"] = ports("DynamicPorts");
    out["ReservedPorts"] = ports("ReservedPorts");
    out
}

fn canonicalize_services(services: Option<&Value>, default_name: &str) -> Value {
    let Some(list) = services.and_then(Value::as_array) else {
        return Value::Null;
    };
    Value::Array(
        list.iter()
            .map(|s| {
                let name = s
                    .get("Name")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .unwrap_or(default_name)
                    .to_string();
                let on_update = s
                    .get("OnUpdate")
                    .and_then(Value::as_str)
                    .filter(|o| !o.is_empty())
                    .unwrap_or("require_healthy")
                    .to_string();
                let checks = s.get("Checks").and_then(Value::as_array).map(|cs| {
                    Value::Array(
                        cs.iter()
                            .map(|c| canonicalize_check(c, &name, &on_update))
                            .collect(),
                    )
                });
                let mut out = overlay(
                    json!({
                        "Address": "", "AddressMode": "auto", "CanaryMeta": null,
                        "CanaryTags": null, "Cluster": "default", "Connect": null,
                        "EnableTagOverride": false, "Identity": null, "Meta": null,
                        "PortLabel": "", "Provider": "consul", "TaggedAddresses": null,
                        "Tags": null, "TaskName": "",
                    }),
                    Some(s),
                );
                out["Name"] = json!(name);
                out["OnUpdate"] = json!(on_update);
                out["Checks"] = checks.unwrap_or(Value::Null);
                for k in ["Provider", "AddressMode", "Cluster"] {
                    if out[k].as_str() == Some("") {
                        out[k] = match k {
                            "Provider" => json!("consul"),
                            "AddressMode" => json!("auto"),
                            _ => json!("default"),
                        };
                    }
                }
                out
            })
            .collect(),
    )
}

fn canonicalize_check(c: &Value, service: &str, on_update: &str) -> Value {
    let mut out = overlay(
        json!({
            "AddressMode": "", "Args": null, "CheckRestart": null, "Command": "",
            "Expose": false, "FailuresBeforeCritical": 0, "FailuresBeforeWarning": 0,
            "GRPCService": "", "GRPCUseTLS": false, "Header": null, "InitialStatus": "",
            "Interval": 0, "Method": "", "Name": "", "OnUpdate": on_update, "Path": "",
            "PortLabel": "", "Protocol": "", "SuccessBeforePassing": 0, "TLSServerName": "",
            "TLSSkipVerify": false, "TaskName": "", "Timeout": 0, "Type": "",
        }),
        Some(c),
    );
    if out["Name"].as_str() == Some("") {
        out["Name"] = json!(format!("service: {service:?} check"));
    }
    out
}

fn canonicalize_task(t: &Value, group_restart: &Value, group_service_name: &str) -> Value {
    let g = |k: &str| t.get(k);
    let name = g("Name").and_then(Value::as_str).unwrap_or_default();
    let mut out = json!({
        "Affinities": null,
        "Artifacts": null,
        "CSIPluginConfig": null,
        "Config": null,
        "Constraints": null,
        "DispatchPayload": null,
        "Driver": "",
        "Env": null,
        "KillSignal": "",
        "KillTimeout": 5 * SECOND,
        "Kind": "",
        "Leader": false,
        "Lifecycle": null,
        "LogConfig": overlay(json!({"Disabled": false, "MaxFileSizeMB": 10, "MaxFiles": 10}), g("LogConfig")),
        "Meta": null,
        "Name": name,
        "Resources": overlay(
            json!({"CPU": 100, "Cores": 0, "Devices": null, "DiskMB": 0, "IOPS": 0,
                   "MemoryMB": 300, "MemoryMaxMB": 0, "Networks": null}),
            g("Resources"),
        ),
        "RestartPolicy": overlay(group_restart.clone(), g("RestartPolicy")),
        "ScalingPolicies": null,
        "Services": canonicalize_services(g("Services"), &format!("{group_service_name}-{name}")),
        "ShutdownDelay": 0,
        "Templates": null,
        "User": "",
        "Vault": null,
        "VolumeMounts": null,
    });
    copy_rest(
        &mut out,
        t,
        &[
            "LogConfig",
            "Resources",
            "RestartPolicy",
            "Services",
            "Name",
        ],
    );
    out
}

/// Copies the sent fields not in `handled` over the defaults.
fn copy_rest(out: &mut Value, given: &Value, handled: &[&str]) {
    if let (Some(o), Some(g)) = (out.as_object_mut(), given.as_object()) {
        for (k, v) in g {
            if !handled.contains(&k.as_str()) {
                o.insert(k.clone(), v.clone());
            }
        }
    }
}

/// A subset of `Job.Validate` (errors that reach HTTP as 500 multierror text).
fn validate(job: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    let id = job["ID"].as_str().unwrap_or_default();
    if id.is_empty() {
        errs.push("Missing job ID".to_string());
    } else if id.contains(' ') {
        errs.push("Job ID contains a space".to_string());
    } else if id.contains('\0') {
        errs.push("Job ID contains a null character".to_string());
    }
    if job["Name"].as_str().unwrap_or_default().is_empty() {
        errs.push("Missing job name".to_string());
    }
    let job_type = job["Type"].as_str().unwrap_or_default();
    if !matches!(job_type, "service" | "batch" | "system" | "sysbatch") {
        errs.push(format!("Invalid job type: {job_type:?}"));
    }
    let priority = job["Priority"].as_i64().unwrap_or(0);
    if !(1..=100).contains(&priority) {
        errs.push("Job priority must be between [1, 100]".to_string());
    }
    match job["Datacenters"].as_array() {
        Some(dcs) if !dcs.is_empty() => {
            if dcs.iter().any(|d| d.as_str() == Some("")) {
                errs.push("Job datacenter must be non-empty string".to_string());
            }
        }
        _ => errs.push("Missing job datacenters".to_string()),
    }
    let groups = job["TaskGroups"].as_array().cloned().unwrap_or_default();
    if groups.is_empty() {
        errs.push("Missing job task groups".to_string());
    }
    let mut seen: Vec<&str> = Vec::new();
    for (i, tg) in groups.iter().enumerate() {
        let name = tg["Name"].as_str().unwrap_or_default();
        if name.is_empty() {
            errs.push(format!("Job task group {} missing name", i + 1));
            continue;
        }
        if let Some(first) = seen.iter().position(|n| *n == name) {
            errs.push(format!(
                "Job task group {} redefines '{}' from group {}",
                i + 1,
                name,
                first + 1
            ));
        }
        seen.push(name);
        let prefix = format!("Task group {name} validation failed:");
        if tg["Count"].as_i64().unwrap_or(0) < 0 {
            errs.push(format!("{prefix} Task group count can't be negative"));
        }
        let tasks = tg["Tasks"].as_array().cloned().unwrap_or_default();
        if tasks.is_empty() {
            errs.push(format!("{prefix} Missing tasks for task group"));
        }
        let mut task_names: Vec<String> = Vec::new();
        for (j, task) in tasks.iter().enumerate() {
            let tname = task["Name"].as_str().unwrap_or_default();
            if tname.is_empty() {
                errs.push(format!("{prefix} Task {} missing name", j + 1));
            } else if task_names.iter().any(|n| n == tname) {
                errs.push(format!(
                    "{prefix} Task {} redefines '{}' from task {}",
                    j + 1,
                    tname,
                    task_names.iter().position(|n| n == tname).unwrap_or(0) + 1
                ));
            }
            task_names.push(tname.to_string());
            if task["Driver"].as_str().unwrap_or_default().is_empty() {
                errs.push(format!(
                    "{prefix} Task {tname} validation failed: Missing task driver"
                ));
            }
        }
        for port in tg["Networks"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|n| n["DynamicPorts"].as_array().into_iter().flatten())
        {
            if port["Label"].as_str().unwrap_or_default().is_empty() {
                errs.push(format!("{prefix} Port label must be set"));
            }
        }
    }
    errs
}

/// Server-managed fields, ignored when deciding whether a spec changed (`Job.SpecChanged`).
const SERVER_FIELDS: &[&str] = &[
    "Status",
    "StatusDescription",
    "Stable",
    "Version",
    "SubmitTime",
    "CreateIndex",
    "ModifyIndex",
    "JobModifyIndex",
];

/// `Job.SpecChanged`: would registering `new` create a new version of `old`?
pub fn spec_changed(old: &Value, new: &Value) -> bool {
    strip(old, SERVER_FIELDS) != strip(new, SERVER_FIELDS)
}

fn strip(v: &Value, keys: &[&str]) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for k in keys {
            o.remove(*k);
        }
    }
    v
}

/// Group fields an in-place update can change (the scheduler's `tasksUpdated` ignores them).
const INPLACE_GROUP_FIELDS: &[&str] = &[
    "Count",
    "Services",
    "Update",
    "Migrate",
    "ReschedulePolicy",
    "RestartPolicy",
    "Scaling",
    "Spreads",
    "Affinities",
    "Constraints",
    "StopAfterClientDisconnect",
    "MaxClientDisconnect",
    "Disconnect",
    "ShutdownDelay",
    "PreventRescheduleOnLost",
    "Tasks",
];

const INPLACE_TASK_FIELDS: &[&str] = &[
    "Services",
    "KillTimeout",
    "KillSignal",
    "ShutdownDelay",
    "RestartPolicy",
    "Affinities",
    "Constraints",
    "ScalingPolicies",
    "Leader",
    "Kind",
];

/// Does moving an allocation of `group` from `old` to `new` need a new allocation (a
/// destructive update), or can it be updated in place? Service tags and checks, counts and
/// the policy blocks are in place; driver, config, env, resources, networks and meta are not.
pub fn destructive_change(old: &Value, new: &Value, group: &str) -> bool {
    if old["Meta"] != new["Meta"] {
        return true;
    }
    let find = |job: &Value| {
        job["TaskGroups"]
            .as_array()
            .and_then(|gs| gs.iter().find(|g| g["Name"] == group))
            .cloned()
    };
    let (Some(og), Some(ng)) = (find(old), find(new)) else {
        return true;
    };
    if strip(&og, INPLACE_GROUP_FIELDS) != strip(&ng, INPLACE_GROUP_FIELDS) {
        return true;
    }
    let tasks = |g: &Value| -> Vec<Value> {
        g["Tasks"]
            .as_array()
            .map(|ts| ts.iter().map(|t| strip(t, INPLACE_TASK_FIELDS)).collect())
            .unwrap_or_default()
    };
    tasks(&og) != tasks(&ng)
}

/// Does one of the job's `Datacenters` (globs since Nomad 1.5) match the node's?
pub fn datacenter_matches(job: &Value, node_dc: &str) -> bool {
    job["Datacenters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|pattern| glob(pattern, node_dc))
}

fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hippo_request() -> Value {
        let text = include_str!("testdata/hippo_job_register_request.json");
        serde_json::from_str(text).expect("sample parses")
    }

    fn hippo_read() -> Value {
        let text = include_str!("testdata/hippo_job_read.json");
        serde_json::from_str(text).expect("sample parses")
    }

    #[test]
    fn canonical_hippo_job_matches_the_sample_read() {
        let req = decode_register(
            &hippo_request(),
            Some("3fa85f64-5717-4562-b3fc-2c963f66afa6"),
            None,
            "global",
        )
        .expect("valid");
        let mut want = hippo_read();
        // Server-side fields the sample has values for.
        for k in SERVER_FIELDS {
            want[*k] = req.job[*k].clone();
        }
        assert_eq!(req.job, want);
    }

    #[test]
    fn keys_are_case_insensitive_and_unknown_ones_dropped() {
        let body = json!({"job": {"id": "x", "datacenters": ["dc1"], "Bogus": 1,
            "taskgroups": [{"name": "g", "tasks": [{"name": "t", "driver": "exec"}]}]}});
        let req = decode_register(&body, None, None, "global").expect("valid");
        assert_eq!(req.job["ID"], "x");
        assert_eq!(req.job["Name"], "x");
        assert!(req.job.get("Bogus").is_none());
        assert_eq!(req.job["TaskGroups"][0]["Count"], 1);
        assert_eq!(
            req.job["TaskGroups"][0]["Tasks"][0]["KillTimeout"],
            5 * SECOND
        );
    }

    #[test]
    fn refusals() {
        let bad_type = json!({"Job": {"ID": "x", "Priority": "high"}});
        assert!(matches!(
            decode_register(&bad_type, None, None, "global"),
            Err(SpecError::Decode(m)) if m.contains("Job.Priority of type int")
        ));
        assert_eq!(
            decode_register(&json!({"Job": {"ID": "x"}}), Some("y"), None, "global")
                .unwrap_err()
                .status_and_text(),
            (400, "Job ID does not match name".to_string())
        );
        let (code, text) = decode_register(&json!({"Job": {"ID": "x"}}), None, None, "global")
            .unwrap_err()
            .status_and_text();
        assert_eq!(code, 500);
        assert_eq!(text, "1 error occurred:\n\t* Missing job task groups\n\n");
    }

    #[test]
    fn change_detection() {
        let a = decode_register(&hippo_request(), None, None, "global")
            .expect("valid")
            .job;
        let mut tags = a.clone();
        tags["TaskGroups"][0]["Services"][0]["Tags"] = json!(["x"]);
        assert!(spec_changed(&a, &tags));
        assert!(!destructive_change(
            &a,
            &tags,
            "3fa85f64-5717-4562-b3fc-2c963f66afa6"
        ));
        let mut env = a.clone();
        env["TaskGroups"][0]["Tasks"][0]["Env"]["X"] = json!("1");
        assert!(destructive_change(
            &a,
            &env,
            "3fa85f64-5717-4562-b3fc-2c963f66afa6"
        ));
        let mut status = a.clone();
        status["Status"] = json!("running");
        assert!(!spec_changed(&a, &status));
        assert!(datacenter_matches(&a, "dc1"));
        assert!(!datacenter_matches(&a, "dc2"));
        assert!(glob("dc*", "dc2") && glob("*", "x") && !glob("eu-*", "dc1"));
    }
}
