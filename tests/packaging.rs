//! Deployment packaging: the Helm chart (`charts/hippo-gitops/`), the Nomad job
//! (`charts/nomad/hippo-gitops.nomad.hcl`), the `Dockerfile` and the GitHub Actions example.
//!
//! - The chart's `values.yaml` validates against its `values.schema.json` (JSON Schema draft-07,
//!   checked with `boon`), and the schema refuses a table of bad values documents.
//! - With `helm` on PATH, `helm template` renders Kubernetes YAML for the default values (every
//!   document has a kind, an apiVersion and a name; no Secret, and no secret as a plain-text
//!   variable); with `credentials.createSecret` the secret never appears in plain text; helm
//!   refuses values the schema refuses. Without helm that test says it was skipped and returns.
//! - The Nomad job parses as HCL (`hcl-rs`) and has a service job, a group, a docker task, the
//!   health checks and the Nomad Variable template.
//! - Every environment variable that the chart or the Nomad job sets for hippo-gitops is one the
//!   binary reads (`reconcile --help` lists it), so a renamed variable can't go unnoticed.
//! - The Dockerfile is multi-stage, builds `--release --locked` and runs as a non-root user.
//!
//! Nothing here needs a network, a container engine, a cluster or Nomad.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{json, Value};

const CHART: &str = "charts/hippo-gitops";
const NOMAD_JOB: &str = "charts/nomad/hippo-gitops.nomad.hcl";
const IMAGE: &str = "ghcr.io/hippo-gitops/hippo-gitops";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A YAML document as JSON (what Helm validates values as).
fn yaml(text: &str, what: &str) -> Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"))
}

fn default_values() -> Value {
    yaml(&read(&format!("{CHART}/values.yaml")), "values.yaml")
}

/// The chart's values schema, compiled.
struct ValuesSchema {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl ValuesSchema {
    fn load() -> Self {
        let text = read(&format!("{CHART}/values.schema.json"));
        let schema: Value = serde_json::from_str(&text).expect("values.schema.json is JSON");
        assert_eq!(
            schema["$schema"], "http://json-schema.org/draft-07/schema#",
            "values.schema.json declares JSON Schema draft-07"
        );
        let location = root().join(CHART).join("values.schema.json");
        let location = location.to_str().expect("a UTF-8 path");
        let mut compiler = boon::Compiler::new();
        compiler.set_default_draft(boon::Draft::V7);
        compiler
            .add_resource(location, schema)
            .expect("values.schema.json is added");
        let mut schemas = boon::Schemas::new();
        let index = compiler
            .compile(location, &mut schemas)
            .unwrap_or_else(|e| panic!("values.schema.json does not compile: {e:#}"));
        ValuesSchema { schemas, index }
    }

    fn validate(&self, values: &Value) -> Result<(), String> {
        self.schemas
            .validate(values, self.index)
            .map_err(|e| format!("{e:#}"))
    }
}

/// Sets the value at a JSON pointer, creating the last key (and missing parent objects).
fn set(doc: &mut Value, pointer: &str, value: Value) {
    let mut node = doc;
    let keys: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for key in &keys[..keys.len() - 1] {
        node = node
            .as_object_mut()
            .unwrap_or_else(|| panic!("{pointer}: not an object at {key}"))
            .entry(key.to_string())
            .or_insert_with(|| json!({}));
    }
    node.as_object_mut()
        .unwrap_or_else(|| panic!("{pointer}: parent is not an object"))
        .insert(keys[keys.len() - 1].to_string(), value);
}

fn with(changes: &[(&str, Value)]) -> Value {
    let mut values = default_values();
    for (pointer, value) in changes {
        set(&mut values, pointer, value.clone());
    }
    values
}

#[test]
fn chart_metadata_and_image_follow_the_crate_version() {
    let chart = yaml(&read(&format!("{CHART}/Chart.yaml")), "Chart.yaml");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "hippo-gitops");
    assert_eq!(
        chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml's appVersion (the default image tag) is the crate's version"
    );
    let values = default_values();
    assert_eq!(values["image"]["repository"], IMAGE);
    assert_eq!(
        values["image"]["tag"], "",
        "the tag defaults to the appVersion"
    );
    for file in [
        "templates/_helpers.tpl",
        "templates/NOTES.txt",
        "templates/deployment.yaml",
        "templates/service.yaml",
        "templates/serviceaccount.yaml",
        "templates/servicemonitor.yaml",
        "README.md",
    ] {
        assert!(
            root().join(CHART).join(file).is_file(),
            "{CHART}/{file} exists"
        );
    }
    let nomad = read(NOMAD_JOB);
    assert!(
        nomad.contains(&format!("\"{IMAGE}:{}\"", env!("CARGO_PKG_VERSION"))),
        "the Nomad job's default image is {IMAGE}:{}",
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn default_values_validate_against_the_schema() {
    let schema = ValuesSchema::load();
    let values = default_values();
    if let Err(e) = schema.validate(&values) {
        panic!("values.yaml does not validate against values.schema.json:\n{e}");
    }
    // The documented alternatives validate too.
    for (what, changes) in [
        (
            "ssh auth with a Secret",
            vec![
                ("/git/auth/method", json!("ssh")),
                ("/git/auth/existingSecret", json!("deploy-key")),
                ("/git/url", json!("git@github.com:org/deploy.git")),
            ],
        ),
        (
            "2 replicas with leader election",
            vec![
                ("/replicaCount", json!(2)),
                ("/updateStrategy", json!({"type": "RollingUpdate"})),
            ],
        ),
        (
            "a chart-made Secret",
            vec![
                ("/credentials/createSecret", json!(true)),
                ("/credentials/existingSecret", json!("")),
                (
                    "/credentials/secretData",
                    json!({"HIPPO_URL": "https://hippo.example.com"}),
                ),
            ],
        ),
        (
            "the Git URL in values, none in the Secret",
            vec![
                ("/git/url", json!("https://github.com/org/deploy.git")),
                ("/credentials/keys/gitUrl", json!("")),
            ],
        ),
        (
            "a ServiceMonitor",
            vec![("/serviceMonitor/enabled", json!(true))],
        ),
        ("as a subchart", vec![("/global", json!({"x": 1}))]),
    ] {
        if let Err(e) = schema.validate(&with(&changes)) {
            panic!("{what}: should validate, but:\n{e}");
        }
    }
}

#[test]
fn the_schema_refuses_bad_values() {
    let schema = ValuesSchema::load();
    let cases: Vec<(&str, Vec<(&str, Value)>)> = vec![
        ("a misspelt top-level key", vec![("/replicas", json!(2))]),
        ("a misspelt nested key", vec![("/git/brnach", json!("dev"))]),
        (
            "replicaCount as a string",
            vec![("/replicaCount", json!("1"))],
        ),
        (
            "a negative replicaCount",
            vec![("/replicaCount", json!(-1))],
        ),
        (
            "several replicas without leader election",
            vec![
                ("/replicaCount", json!(3)),
                ("/controller/leaderElection", json!(false)),
            ],
        ),
        (
            "no credentials Secret at all",
            vec![("/credentials/existingSecret", json!(""))],
        ),
        (
            "a required Secret key left out",
            vec![("/credentials/keys/hippoUrl", json!(""))],
        ),
        (
            "no repository: neither git.url nor a Secret key",
            vec![("/credentials/keys/gitUrl", json!(""))],
        ),
        (
            "ssh auth without a Secret",
            vec![("/git/auth/method", json!("ssh"))],
        ),
        (
            "an unknown auth method",
            vec![("/git/auth/method", json!("token"))],
        ),
        (
            "a duration without a unit we know",
            vec![("/git/interval", json!("1 minute"))],
        ),
        (
            "a bad log format",
            vec![("/controller/logFormat", json!("xml"))],
        ),
        ("a port out of range", vec![("/service/port", json!(70000))]),
        (
            "secretData that is not strings",
            vec![("/credentials/secretData", json!({"HIPPO_URL": 1}))],
        ),
        (
            "an image digest that is not one",
            vec![("/image/digest", json!("latest"))],
        ),
        (
            "createSecret as a string",
            vec![("/credentials/createSecret", json!("yes"))],
        ),
    ];
    for (what, changes) in cases {
        assert!(
            schema.validate(&with(&changes)).is_err(),
            "the schema accepted {what}: {changes:?}"
        );
    }
}

#[test]
fn default_values_hold_no_secret() {
    let values = default_values();
    assert_eq!(
        values["credentials"]["createSecret"], false,
        "the chart creates no Secret by default"
    );
    assert_eq!(values["credentials"]["secretData"], json!({}));
    assert!(
        !values["credentials"]["existingSecret"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "credentials come from an existing Secret by default"
    );
    assert_eq!(values["replicaCount"], 1);
    assert_eq!(values["serviceMonitor"]["enabled"], false);
    let text = read(&format!("{CHART}/values.yaml"));
    assert!(
        text.contains("WARNING: createSecret"),
        "values.yaml warns about createSecret"
    );
}

/// Every variable `hippo-gitops reconcile` reads from the environment, from its `--help`.
fn env_vars_the_binary_reads() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_hippo-gitops"))
        .args(["reconcile", "--help"])
        .env("COLUMNS", "200")
        .output()
        .expect("runs hippo-gitops reconcile --help");
    assert!(out.status.success(), "reconcile --help exits 0");
    let help = String::from_utf8_lossy(&out.stdout);
    let vars: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    assert!(
        vars.contains("HIPPO_URL") && vars.contains("HIPPO_GITOPS_GIT_URL"),
        "reconcile --help lists its environment variables: {vars:?}"
    );
    vars
}

/// The variables of ours (HIPPO_*, BINDLE_*, NOMAD_* but Nomad's own runtime ones) that `names`
/// has and the binary doesn't read.
fn unknown_vars<'a>(
    names: impl IntoIterator<Item = &'a str>,
    known: &BTreeSet<String>,
) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| n.starts_with("HIPPO_") || n.starts_with("BINDLE_") || n.starts_with("NOMAD_"))
        // Set by Nomad for the task, not read by hippo-gitops.
        .filter(|n| {
            !matches!(
                *n,
                "NOMAD_ALLOC_DIR" | "NOMAD_TASK_DIR" | "NOMAD_SECRETS_DIR"
            )
        })
        .filter(|n| !known.contains(*n))
        .map(str::to_string)
        .collect()
}

#[test]
fn chart_and_nomad_job_set_only_variables_the_binary_reads() {
    let known = env_vars_the_binary_reads();

    // The chart: `- name: X` entries of the container's env, and the Secret keys' defaults.
    let deployment = read(&format!("{CHART}/templates/deployment.yaml"));
    let mut chart_vars: Vec<&str> = deployment
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- name: "))
        .filter(|n| n.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    let helpers = read(&format!("{CHART}/templates/_helpers.tpl"));
    assert!(helpers.contains("secretKeyRef"));
    // Variables from Secrets: `(list "NAME" ...)` in the template.
    chart_vars.extend(
        deployment
            .split("(list \"")
            .skip(1)
            .filter_map(|s| s.split('"').next()),
    );
    assert!(
        chart_vars.contains(&"HIPPO_PASSWORD") && chart_vars.contains(&"BINDLE_SIGNING_KEY"),
        "found the chart's variables: {chart_vars:?}"
    );
    let unknown = unknown_vars(chart_vars.iter().copied(), &known);
    assert!(
        unknown.is_empty(),
        "the chart sets variables hippo-gitops does not read: {unknown:?}"
    );

    // The Nomad job: its env block's keys and the template's KEY= lines.
    let job = nomad_job();
    let task = nomad_task(&job);
    let env = block(task, "env", None);
    let mut nomad_vars: Vec<String> = env.attributes().map(|a| a.key().to_string()).collect();
    for template in task.blocks().filter(|b| b.identifier() == "template") {
        let data = template_text(attribute(template.body(), "data"));
        for line in data.lines() {
            // `{{ with .item }}KEY=...`: the text after the leading actions.
            let mut line = line.trim();
            while let Some(rest) = line.strip_prefix("{{") {
                line = rest.split_once("}}").map_or("", |(_, after)| after);
            }
            if let Some((key, _)) = line.split_once('=') {
                if !key.is_empty() && key.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                    nomad_vars.push(key.to_string());
                }
            }
        }
    }
    for expected in [
        "HIPPO_URL",
        "HIPPO_PASSWORD",
        "BINDLE_SERVER_URL",
        "NOMAD_ADDR",
    ] {
        assert!(
            nomad_vars.iter().any(|v| v == expected),
            "the Nomad job sets {expected}: {nomad_vars:?}"
        );
    }
    let unknown = unknown_vars(nomad_vars.iter().map(String::as_str), &known);
    assert!(
        unknown.is_empty(),
        "the Nomad job sets variables hippo-gitops does not read: {unknown:?}"
    );
}

// ---- helm template ----

/// Runs `helm ARGS`; None when helm is not installed.
fn helm(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("helm").args(args).output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("running helm: {e}"),
    }
}

/// `helm template` with a values file; the rendered documents, or helm's stderr.
fn helm_template(values: &Value) -> Result<(String, Vec<Value>), String> {
    let dir = tempfile::tempdir().expect("a temp dir");
    let values_file = dir.path().join("values.yaml");
    std::fs::write(&values_file, serde_yaml::to_string(values).expect("YAML")).expect("writes");
    let chart = root().join(CHART);
    let out = helm(&[
        "template",
        "packaging-test",
        chart.to_str().expect("UTF-8"),
        "--namespace",
        "packaging-ns",
        "-f",
        values_file.to_str().expect("UTF-8"),
    ])
    .expect("helm was found a moment ago");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(doc)
            .unwrap_or_else(|e| panic!("helm template printed invalid YAML: {e}\n{text}"));
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok((text, docs))
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

#[test]
fn helm_template_renders_kubernetes_yaml() {
    if helm(&["version", "--short"]).is_none() {
        println!("skipped: helm is not installed (helm template checks of {CHART} not run)");
        return;
    }
    let (text, docs) = helm_template(&default_values())
        .unwrap_or_else(|e| panic!("helm template fails with the default values:\n{e}"));

    let mut kinds = BTreeSet::new();
    for doc in &docs {
        let kind = doc["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("no kind: {doc}"));
        let api = doc["apiVersion"]
            .as_str()
            .unwrap_or_else(|| panic!("no apiVersion: {doc}"));
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        assert!(
            !name.is_empty() && name.len() <= 63,
            "{kind}: a name: {name:?}"
        );
        assert!(
            name.contains("packaging-test"),
            "{kind} {name}: named after the release"
        );
        assert_eq!(
            doc["metadata"]["namespace"], "packaging-ns",
            "{kind} {name}"
        );
        let expected_api = match kind {
            "Deployment" => "apps/v1",
            "Service" | "ServiceAccount" => "v1",
            other => panic!("unexpected {other} with the default values"),
        };
        assert_eq!(api, expected_api, "{kind}'s apiVersion");
        kinds.insert(kind.to_string());
    }
    assert_eq!(
        kinds,
        BTreeSet::from(["Deployment".into(), "Service".into(), "ServiceAccount".into()]),
        "the default values render a Deployment, a Service and a ServiceAccount (no Secret, no ServiceMonitor)"
    );
    assert!(!text.contains("stringData"), "no plain-text Secret data");

    // The Deployment.
    let deployment = find(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"],
        format!("{IMAGE}:{}", env!("CARGO_PKG_VERSION"))
    );
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args.first(), Some(&"reconcile"));
    assert!(
        args.windows(2).any(|w| w == ["--listen", "0.0.0.0:9090"]),
        "--listen 0.0.0.0:9090: {args:?}"
    );
    assert!(!args.contains(&"--once"), "runs as a controller");
    assert_eq!(container["ports"][0]["containerPort"], 9090);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    assert_eq!(container["resources"]["requests"]["memory"], "50Mi");

    let env = container["env"].as_array().expect("env");
    let var = |name: &str| env.iter().find(|e| e["name"] == name);
    for secret in [
        "HIPPO_URL",
        "HIPPO_PASSWORD",
        "HIPPO_TOKEN",
        "BINDLE_PASSWORD",
        "BINDLE_TOKEN",
        "NOMAD_TOKEN",
        "HIPPO_GITOPS_WEBHOOK_SECRET",
        "HIPPO_GITOPS_GIT_URL",
    ] {
        let e = var(secret).unwrap_or_else(|| panic!("{secret} is set"));
        assert!(e.get("value").is_none(), "{secret} has no plain value");
        assert!(
            e["valueFrom"]["secretKeyRef"]["name"].is_string(),
            "{secret} comes from a Secret: {e}"
        );
    }
    // The state dir and the signing key are mounted where the variables say.
    let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
    let mount_of = |path: &str| {
        mounts
            .iter()
            .find(|m| path.starts_with(m["mountPath"].as_str().unwrap_or("-")))
            .and_then(|m| m["name"].as_str())
            .unwrap_or_else(|| panic!("nothing is mounted at {path}"))
    };
    let volume = |name: &str| {
        pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
            .clone()
    };
    let state_dir = var("HIPPO_GITOPS_STATE_DIR").expect("HIPPO_GITOPS_STATE_DIR")["value"]
        .as_str()
        .expect("a path")
        .to_string();
    assert!(volume(mount_of(&state_dir))["emptyDir"].is_object());
    let key = var("BINDLE_SIGNING_KEY").expect("BINDLE_SIGNING_KEY")["value"]
        .as_str()
        .expect("a path")
        .to_string();
    assert!(volume(mount_of(&key))["secret"]["secretName"].is_string());

    let service = find(&docs, "Service");
    assert_eq!(service["spec"]["ports"][0]["port"], 9090);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");

    // With a chart-made Secret, the secret never appears in plain text.
    let sentinel = "plain-text-sentinel-3f9c1e";
    let (text, docs) = helm_template(&with(&[
        ("/credentials/createSecret", json!(true)),
        ("/credentials/existingSecret", json!("")),
        (
            "/credentials/secretData",
            json!({"HIPPO_URL": "https://hippo.example.com", "HIPPO_PASSWORD": sentinel}),
        ),
        ("/serviceMonitor/enabled", json!(true)),
        ("/ingress/enabled", json!(true)),
        ("/git/auth/method", json!("ssh")),
        ("/git/auth/existingSecret", json!("deploy-key")),
    ]))
    .unwrap_or_else(|e| panic!("helm template fails with createSecret:\n{e}"));
    assert!(
        !text.contains(sentinel),
        "the password appears in plain text"
    );
    let secret = find(&docs, "Secret");
    assert!(secret.get("stringData").is_none());
    assert!(secret["data"]["HIPPO_PASSWORD"].is_string());
    find(&docs, "ServiceMonitor");
    find(&docs, "Ingress");

    // helm refuses what the schema refuses.
    let refused = helm_template(&with(&[
        ("/replicaCount", json!(2)),
        ("/controller/leaderElection", json!(false)),
    ]));
    assert!(
        refused.is_err(),
        "helm template accepted 2 replicas without leader election"
    );
}

// ---- the Nomad job ----

fn nomad_job() -> hcl::Body {
    hcl::parse(&read(NOMAD_JOB)).unwrap_or_else(|e| panic!("{NOMAD_JOB} is not valid HCL: {e}"))
}

fn block<'a>(body: &'a hcl::Body, identifier: &str, label: Option<&str>) -> &'a hcl::Body {
    body.blocks()
        .find(|b| {
            b.identifier() == identifier
                && label.is_none_or(|l| b.labels().first().map(|x| x.as_str()) == Some(l))
        })
        .map(|b| b.body())
        .unwrap_or_else(|| panic!("no {identifier} {label:?} block"))
}

fn attribute<'a>(body: &'a hcl::Body, key: &str) -> &'a hcl::Expression {
    body.attributes()
        .find(|a| a.key() == key)
        .map(|a| a.expr())
        .unwrap_or_else(|| panic!("no attribute {key}"))
}

/// A string or template expression's text.
fn template_text(expr: &hcl::Expression) -> String {
    match expr {
        hcl::Expression::String(s) => s.clone(),
        hcl::Expression::TemplateExpr(t) => t.to_string(),
        other => panic!("not a string: {other:?}"),
    }
}

fn nomad_task(job: &hcl::Body) -> &hcl::Body {
    let job = block(job, "job", Some("hippo-gitops"));
    let group = block(job, "group", None);
    block(group, "task", None)
}

#[test]
fn nomad_job_runs_the_controller_with_health_checks() {
    let file = nomad_job();
    let variables: BTreeSet<&str> = file
        .blocks()
        .filter(|b| b.identifier() == "variable")
        .filter_map(|b| b.labels().first().map(|l| l.as_str()))
        .collect();
    for v in ["image", "count", "git_url"] {
        assert!(
            variables.contains(v),
            "variable {v:?} is declared: {variables:?}"
        );
    }

    let job = block(&file, "job", Some("hippo-gitops"));
    assert_eq!(template_text(attribute(job, "type")), "service");
    let group = block(job, "group", None);
    assert!(
        matches!(attribute(group, "count"), hcl::Expression::Traversal(_)),
        "count comes from var.count"
    );
    for stanza in ["restart", "update", "network"] {
        block(group, stanza, None);
    }
    assert_eq!(
        template_text(attribute(block(group, "update", None), "health_check")),
        "checks"
    );

    // The service and its HTTP checks (in the group, or in the task).
    let task = nomad_task(&file);
    let service = group
        .blocks()
        .chain(task.blocks())
        .find(|b| b.identifier() == "service")
        .expect("a service block")
        .body();
    let paths: BTreeSet<String> = service
        .blocks()
        .filter(|b| b.identifier() == "check")
        .filter(|c| template_text(attribute(c.body(), "type")) == "http")
        .map(|c| template_text(attribute(c.body(), "path")))
        .collect();
    assert!(
        paths.contains("/healthz"),
        "an http check on /healthz: {paths:?}"
    );
    assert!(
        paths.contains("/readyz"),
        "an http check on /readyz: {paths:?}"
    );

    // The docker task.
    assert_eq!(template_text(attribute(task, "driver")), "docker");
    let config = block(task, "config", None);
    attribute(config, "image");
    let args = match attribute(config, "args") {
        hcl::Expression::Array(a) => a.iter().map(template_text).collect::<Vec<_>>(),
        other => panic!("args: {other:?}"),
    };
    assert_eq!(args.first().map(String::as_str), Some("reconcile"));
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--listen" && w[1] == "0.0.0.0:9090"),
        "--listen 0.0.0.0:9090: {args:?}"
    );
    assert!(!args.iter().any(|a| a == "--once"), "runs as a controller");
    attribute(task, "kill_timeout");
    block(task, "identity", None);

    // Settings from a Nomad Variable, through a template rendered as environment variables.
    let env_template = task
        .blocks()
        .filter(|b| b.identifier() == "template")
        .find(|t| {
            t.body()
                .attributes()
                .any(|a| a.key() == "env" && matches!(a.expr(), hcl::Expression::Bool(true)))
        })
        .expect("a template with env = true");
    let data = template_text(attribute(env_template.body(), "data"));
    assert!(
        data.contains("nomadVar"),
        "the env template reads a Nomad Variable"
    );
    assert!(data.contains("HIPPO_URL="), "and sets HIPPO_URL");
    let text = read(NOMAD_JOB);
    assert!(
        text.contains("# vault {") && text.contains("{{ with secret "),
        "a commented Vault alternative"
    );
}

// ---- the Dockerfile ----

#[test]
fn dockerfile_is_multi_stage_and_runs_as_non_root() {
    let text = read("Dockerfile");
    let instructions: Vec<(String, String)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (word, rest) = l.split_once(char::is_whitespace)?;
            Some((word.to_ascii_uppercase(), rest.trim().to_string()))
        })
        .collect();
    let froms: Vec<&str> = instructions
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, r)| r.as_str())
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(
        froms[0].to_lowercase().contains(" as "),
        "the first stage is named: {froms:?}"
    );
    assert!(
        text.contains("--release") && text.contains("--locked"),
        "builds --release --locked"
    );

    // The final stage: git and CA certificates, a non-root USER, the entrypoint.
    let last_from = instructions
        .iter()
        .rposition(|(i, _)| i == "FROM")
        .expect("a FROM");
    let last = &instructions[last_from..];
    let last_text = text
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage)
        .expect("a final stage");
    assert!(
        last_text.contains(" git") && last_text.contains("ca-certificates"),
        "the final image has git and CA certificates"
    );
    let user = last
        .iter()
        .rfind(|(i, _)| i == "USER")
        .map(|(_, u)| u.as_str())
        .expect("the final stage sets USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        !matches!(uid, "" | "0" | "root"),
        "USER is not root: {user:?}"
    );
    assert_eq!(uid, "10001", "the uid the chart's securityContext uses");
    assert!(
        last.iter()
            .any(|(i, r)| i == "ENTRYPOINT" && r == "[\"hippo-gitops\"]"),
        "ENTRYPOINT [\"hippo-gitops\"]"
    );
    assert!(
        last.iter().any(|(i, r)| i == "EXPOSE" && r == "9090"),
        "EXPOSE 9090"
    );

    // The builder is at least the crate's rust-version.
    let cargo_toml = read("Cargo.toml");
    let rust_version = cargo_toml
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("Cargo.toml has a rust-version");
    let builder = instructions
        .iter()
        .find(|(i, r)| i == "ARG" && r.starts_with("RUST_VERSION="))
        .map(|(_, r)| r.trim_start_matches("RUST_VERSION=").to_string())
        .expect("ARG RUST_VERSION=");
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    assert!(
        parse(&builder) >= parse(&rust_version),
        "the builder's Rust {builder} is at least the crate's rust-version {rust_version}"
    );

    let ignore = read(".dockerignore");
    let ignored: Vec<&str> = ignore.lines().map(str::trim).collect();
    for pattern in ["target/", ".hippo-gitops/", ".git"] {
        assert!(
            ignored.contains(&pattern),
            ".dockerignore leaves out {pattern}"
        );
    }
}

// ---- the GitHub Actions example ----

#[test]
fn github_actions_example_validates_plans_and_reconciles() {
    let path = Path::new("examples/github-actions/hippo-gitops.yml");
    let text = read(path.to_str().expect("UTF-8"));
    let workflow = yaml(&text, "the workflow");
    // YAML 1.1 readers take `on` for a boolean; serde_yaml keeps the key "on".
    let on = &workflow["on"];
    assert!(on.get("pull_request").is_some(), "runs on pull requests");
    assert_eq!(
        on["push"]["branches"],
        json!(["main"]),
        "and on pushes to main"
    );

    let runs: Vec<String> = workflow["jobs"]
        .as_object()
        .expect("jobs")
        .values()
        .flat_map(|job| job["steps"].as_array().cloned().unwrap_or_default())
        .filter_map(|step| step["run"].as_str().map(str::to_string))
        .collect();
    let has = |needle: &str| runs.iter().any(|r| r.contains(needle));
    assert!(has("hippo-gitops validate -f"), "validates");
    assert!(
        has("hippo-gitops plan -f") && has("--output markdown"),
        "plans as Markdown"
    );
    assert!(
        has("\"$code\" != 2"),
        "plan's exit code 2 (changes pending) is not a failure"
    );
    assert!(
        has("hippo-gitops reconcile --once -f"),
        "reconciles once on main"
    );
    assert!(
        text.contains("sticky-pull-request-comment") || text.contains("github-script"),
        "posts the plan as a PR comment"
    );
    assert!(
        text.contains("${{ secrets.HIPPO_URL }}"),
        "credentials from repository secrets"
    );
}
