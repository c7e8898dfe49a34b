//! Deployment packaging, checked with the tools its users run it with: the Helm chart
//! (`charts/hippo-gitops/`), the Nomad job (`charts/nomad/hippo-gitops.nomad.hcl`), the
//! `Dockerfile`, the GitHub Actions workflows (`examples/github-actions/`) and the shell scripts.
//!
//! - Helm v4: `helm lint --strict` and `helm template` for the default values and for every
//!   `ci/*-values.yaml` of the chart; every rendered manifest piped to `kubernetes-validate
//!   --strict` for Kubernetes 1.31 and 1.34. Then the rendered objects must fit together: the
//!   probes and the Service reach the port `--listen` binds; the ServiceMonitor selects the
//!   Service; every Secret/ConfigMap key a pod reads is made by the chart or named in the values;
//!   every variable set is one the binary (or the git it runs) reads; more than one replica only
//!   with leader election. The same values validate against `values.schema.json` (boon, as
//!   helm does), which refuses a table of bad values, and helm refuses them too.
//! - The Nomad job parses as HCL (`hcl-rs`), runs the controller with health checks, sets only
//!   variables the binary reads, and every Nomad Variable item it reads is in docs/controller.md.
//! - actionlint (with its shellcheck integration) over every workflow, hadolint on the
//!   Dockerfile, shellcheck on `.ci/run` and every shell script: zero findings.
//! - The example alert rules of docs/controller.md: `promtool check rules`, and `promtool test
//!   rules` with `crates/cli/tests/fixtures/alerts/`; the controller's `/metrics` text through `promtool
//!   check metrics`.
//!
//! The tools are installed at pinned versions by `.ci/tools.sh` (`.ci/run` sources it). A test
//! whose tool is not on PATH fails, saying how to install it: nothing here is skipped. No
//! network, container engine, cluster or Nomad is needed.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::{json, Value};

use hippo_gitops_testkit::alert_rules;

const CHART: &str = "charts/hippo-gitops";
const NOMAD_JOB: &str = "charts/nomad/hippo-gitops.nomad.hcl";
const WORKFLOWS: &str = "examples/github-actions";
const IMAGE: &str = "ghcr.io/hippo-gitops/hippo-gitops";

fn root() -> PathBuf {
    hippo_gitops_testkit::repo_root()
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

// ---- the tools ----

/// TOOL's path on PATH. A test that needs a tool that is missing fails: it is never skipped.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not on PATH. The packaging tests run the real tool: install the pinned \
                 versions with `. .ci/tools.sh` (bash, in the repository root; .ci/run does it) \
                 and run the tests from that shell"
            )
        })
}

/// Runs TOOL ARGS in the repository root, with INPUT on its stdin.
fn run(name: &str, args: &[&str], input: Option<&str>) -> Output {
    let mut child = Command::new(tool(name))
        .args(args)
        .current_dir(root())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    // A thread writes the input, so a tool that prints much before it has read all can't block.
    let writer = input.map(|input| {
        let mut stdin = child.stdin.take().expect("a piped stdin");
        let input = input.to_owned();
        std::thread::spawn(move || stdin.write_all(input.as_bytes()))
    });
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {name}: {e}"));
    if let Some(writer) = writer {
        writer
            .join()
            .expect("the writer thread")
            .unwrap_or_else(|e| panic!("writing to {name}'s stdin: {e}"));
    }
    out
}

/// What a tool printed, stdout then stderr.
fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
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

/// Helm's merge of a values file over the defaults: maps merge key by key, anything else
/// replaces.
fn merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                merge(base.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (base, overlay) => *base = overlay.clone(),
    }
}

/// One way to install the chart: the defaults, or a values file of the chart's `ci/` directory
/// (Helm's convention for test values) over them.
struct ValuesCase {
    name: String,
    file: Option<PathBuf>,
    values: Value,
}

fn values_cases() -> Vec<ValuesCase> {
    let dir = root().join(CHART).join("ci");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    files.sort();
    let mut cases = vec![ValuesCase {
        name: "the default values".into(),
        file: None,
        values: default_values(),
    }];
    for file in files {
        let name = format!("ci/{}", file.file_name().expect("a name").to_string_lossy());
        let text = std::fs::read_to_string(&file).expect("reads a values file");
        let mut values = default_values();
        merge(&mut values, &yaml(&text, &name));
        cases.push(ValuesCase {
            name,
            file: Some(file),
            values,
        });
    }
    for needed in [
        "ci/created-secret-values.yaml",
        "ci/leader-election-values.yaml",
        "ci/single-instance-values.yaml",
        "ci/ssh-auth-values.yaml",
        "ci/https-auth-values.yaml",
    ] {
        assert!(
            cases.iter().any(|c| c.name == needed),
            "{CHART}/{needed} exists (the checks below rely on what it turns on)"
        );
    }
    cases
}

fn case<'a>(cases: &'a [ValuesCase], name: &str) -> &'a ValuesCase {
    cases
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no values case {name}"))
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
fn every_values_case_validates_against_the_schema() {
    let schema = ValuesSchema::load();
    for case in values_cases() {
        if let Err(e) = schema.validate(&case.values) {
            panic!(
                "{} does not validate against values.schema.json:\n{e}",
                case.name
            );
        }
    }
    // As a subchart, helm adds `global`.
    if let Err(e) = schema.validate(&with(&[("/global", json!({"x": 1}))])) {
        panic!("as a subchart: should validate, but:\n{e}");
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
            "several replicas without NOMAD_ADDR from the Secret",
            vec![
                ("/replicaCount", json!(2)),
                ("/credentials/keys/nomadAddr", json!("")),
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
    // Help text wraps, even between `[env:` and the name: read it as one line.
    let help = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
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

/// Variables the chart and the Nomad job may set that hippo-gitops does not read itself, and
/// who does.
const READ_BY_GIT_OR_THE_SYSTEM: [(&str, &str); 6] = [
    (
        "GIT_SSH_COMMAND",
        "git (the controller's Git source runs it) runs ssh with it",
    ),
    (
        "GIT_CONFIG_COUNT",
        "git: the number of config entries that follow",
    ),
    (
        "GIT_CONFIG_KEY_0",
        "git: a config entry's key (the credential helper)",
    ),
    ("GIT_CONFIG_VALUE_0", "git: that entry's value"),
    ("HOME", "git and ssh find their configuration under it"),
    ("TMPDIR", "the temp dir of the binary and of git"),
];

/// The names that neither the binary nor git and the system read.
fn unknown_vars<'a>(
    names: impl IntoIterator<Item = &'a str>,
    known: &BTreeSet<String>,
) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| !known.contains(*n))
        .filter(|n| !READ_BY_GIT_OR_THE_SYSTEM.iter().any(|(v, _)| v == n))
        .map(str::to_string)
        .collect()
}

#[test]
fn nomad_job_sets_only_variables_the_binary_reads() {
    let known = env_vars_the_binary_reads();
    // Its env block's keys and the env template's KEY= lines.
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
                if !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                {
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
        "GIT_CONFIG_VALUE_0",
    ] {
        assert!(
            nomad_vars.iter().any(|v| v == expected),
            "the Nomad job sets {expected}: {nomad_vars:?}"
        );
    }
    let unknown = unknown_vars(nomad_vars.iter().map(String::as_str), &known);
    assert!(
        unknown.is_empty(),
        "the Nomad job sets variables that neither hippo-gitops nor git reads: {unknown:?}"
    );
}

// ---- helm ----

/// The chart as `helm template` renders it.
struct Rendered {
    text: String,
    docs: Vec<Value>,
}

/// `helm template` of the chart with these values files (in order); helm's error otherwise.
fn helm_template(values_files: &[&Path]) -> Result<Rendered, String> {
    let chart = root().join(CHART);
    let mut args = vec![
        "template",
        "packaging-test",
        chart.to_str().expect("UTF-8"),
        "--namespace",
        "packaging-ns",
    ];
    for file in values_files {
        args.extend(["-f", file.to_str().expect("UTF-8")]);
    }
    let out = run("helm", &args, None);
    if !out.status.success() {
        return Err(printed(&out));
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
    Ok(Rendered { text, docs })
}

fn render(case: &ValuesCase) -> Rendered {
    let files: Vec<&Path> = case.file.as_deref().into_iter().collect();
    helm_template(&files).unwrap_or_else(|e| panic!("helm template fails with {}:\n{e}", case.name))
}

/// `helm template` with a case's values and then CHANGES (a values file of their own).
fn render_with(case: &ValuesCase, changes: &[(&str, Value)]) -> Result<Rendered, String> {
    let mut overlay = json!({});
    for (pointer, value) in changes {
        set(&mut overlay, pointer, value.clone());
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let overlay_file = dir.path().join("changes.yaml");
    std::fs::write(
        &overlay_file,
        serde_yaml::to_string(&overlay).expect("YAML"),
    )
    .expect("writes");
    let mut files: Vec<&Path> = case.file.as_deref().into_iter().collect();
    files.push(&overlay_file);
    helm_template(&files)
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

fn the<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} rendered");
    found[0]
}

fn str_list(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn helm_lint_passes_for_every_values_case() {
    let chart = root().join(CHART);
    for case in values_cases() {
        let mut args = vec!["lint", "--strict", chart.to_str().expect("UTF-8")];
        if let Some(file) = &case.file {
            args.extend(["-f", file.to_str().expect("UTF-8")]);
        }
        let out = run("helm", &args, None);
        let report = printed(&out);
        assert!(
            out.status.success() && report.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm lint --strict with {}:\n{report}",
            case.name
        );
        assert!(
            !report.contains("[WARNING]") && !report.contains("[ERROR]"),
            "helm lint with {}:\n{report}",
            case.name
        );
    }
}

/// The Kubernetes versions every rendered manifest is validated against (kubernetes-validate
/// ships the schemas of each).
const KUBERNETES_VERSIONS: [&str; 2] = ["1.31.0", "1.34.0"];
/// Custom resources kubernetes-validate has no schema for: the checks of
/// `rendered_objects_fit_together` cover them.
const CUSTOM_KINDS: [&str; 1] = ["ServiceMonitor"];

/// `helm template | kubernetes-validate --strict -k VERSION -`: every object passes, and only
/// the custom kinds go unchecked.
fn kubernetes_validate(what: &str, rendered: &Rendered) {
    for version in KUBERNETES_VERSIONS {
        let out = run(
            "kubernetes-validate",
            &["--strict", "--kubernetes-version", version, "-"],
            Some(&rendered.text),
        );
        let report = printed(&out);
        assert!(
            out.status.success(),
            "{what}: kubernetes-validate --strict for Kubernetes {version} refuses the rendered chart:\n{report}"
        );
        let minor = version.rsplit_once('.').expect("x.y.z").0;
        for doc in &rendered.docs {
            let kind = doc["kind"].as_str().expect("a kind");
            let name = doc["metadata"]["name"].as_str().expect("a name");
            let seen = if CUSTOM_KINDS.contains(&kind) {
                format!("Couldn't find schema for kind {kind} ")
            } else {
                format!(
                    "passed for resource {}/{name} against version {minor}",
                    kind.to_lowercase()
                )
            };
            assert!(
                report.contains(&seen),
                "{what}: kubernetes-validate {version} did not say {seen:?}:\n{report}"
            );
        }
        for line in report.lines().filter(|l| !l.starts_with("INFO")) {
            assert!(
                CUSTOM_KINDS
                    .iter()
                    .any(|k| line.contains(&format!("Couldn't find schema for kind {k} "))),
                "{what}: kubernetes-validate {version}: {line}"
            );
        }
    }
}

#[test]
fn every_rendered_manifest_validates_against_kubernetes() {
    for case in values_cases() {
        kubernetes_validate(&case.name, &render(&case));
    }
}

#[test]
fn kubernetes_validate_refuses_an_unknown_field() {
    // The pipe and strict mode work: a misspelt field in the Deployment is refused.
    let cases = values_cases();
    let rendered = render(&cases[0]);
    let mut text = String::new();
    for mut doc in rendered.docs {
        if doc["kind"] == "Deployment" {
            set(&mut doc, "/spec/revisionHistoryLimt", json!(5));
        }
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(&doc).expect("YAML"));
    }
    for version in KUBERNETES_VERSIONS {
        let out = run(
            "kubernetes-validate",
            &["--strict", "--kubernetes-version", version, "-"],
            Some(&text),
        );
        let report = printed(&out);
        assert!(
            !out.status.success() && report.contains("'revisionHistoryLimt' was unexpected"),
            "kubernetes-validate {version} accepted a misspelt field:\n{report}"
        );
    }
}

/// Every string the values hold (Secret, ConfigMap and key names among them).
fn value_strings(values: &Value, into: &mut BTreeSet<String>) {
    match values {
        Value::String(s) => {
            into.insert(s.clone());
        }
        Value::Array(items) => items.iter().for_each(|v| value_strings(v, into)),
        Value::Object(map) => map.values().for_each(|v| value_strings(v, into)),
        _ => {}
    }
}

/// A Secret's or ConfigMap's key that a pod reads.
struct KeyRef<'a> {
    kind: &'static str,
    name: &'a str,
    key: Option<&'a str>,
    optional: bool,
    from: String,
}

/// The Secret and ConfigMap keys the pod spec reads: env, envFrom and volumes.
fn key_refs(pod: &Value) -> Vec<KeyRef<'_>> {
    let mut refs = Vec::new();
    let optional = |v: &Value| v["optional"].as_bool().unwrap_or(false);
    for container in pod["containers"].as_array().into_iter().flatten() {
        for env in container["env"].as_array().into_iter().flatten() {
            let from = format!("env {}", env["name"]);
            for (field, kind) in [("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")] {
                let r = &env["valueFrom"][field];
                if r.is_object() {
                    refs.push(KeyRef {
                        kind,
                        name: r["name"].as_str().expect("a name"),
                        key: Some(r["key"].as_str().expect("a key")),
                        optional: optional(r),
                        from: from.clone(),
                    });
                }
            }
        }
        for env_from in container["envFrom"].as_array().into_iter().flatten() {
            for (field, kind) in [("secretRef", "Secret"), ("configMapRef", "ConfigMap")] {
                let r = &env_from[field];
                if r.is_object() {
                    refs.push(KeyRef {
                        kind,
                        name: r["name"].as_str().expect("a name"),
                        key: None,
                        optional: optional(r),
                        from: "envFrom".into(),
                    });
                }
            }
        }
    }
    for volume in pod["volumes"].as_array().into_iter().flatten() {
        let from = format!("volume {}", volume["name"]);
        for (field, name_field, kind) in [
            ("secret", "secretName", "Secret"),
            ("configMap", "name", "ConfigMap"),
        ] {
            let v = &volume[field];
            if !v.is_object() {
                continue;
            }
            let name = v[name_field].as_str().expect("a name");
            let items = v["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                refs.push(KeyRef {
                    kind,
                    name,
                    key: None,
                    optional: optional(v),
                    from: from.clone(),
                });
            }
            for item in v["items"].as_array().into_iter().flatten() {
                refs.push(KeyRef {
                    kind,
                    name,
                    key: Some(item["key"].as_str().expect("a key")),
                    optional: optional(v),
                    from: from.clone(),
                });
            }
        }
        assert!(
            volume.get("projected").is_none(),
            "{from}: a projected volume; teach key_refs its sources"
        );
    }
    refs
}

/// The port a probe or a Service's targetPort names, as a number of the container's.
fn container_port(container: &Value, port: &Value) -> u64 {
    match port {
        Value::Number(n) => n.as_u64().expect("a port number"),
        Value::String(name) => container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == *name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("the container has no port named {name}")),
        other => panic!("not a port: {other}"),
    }
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels[k] == *v))
}

/// The checks that need the objects together, for one values case.
fn check_objects_fit_together(case: &ValuesCase, docs: &[Value], known_env: &BTreeSet<String>) {
    let what = &case.name;
    let deployment = the(docs, "Deployment");
    let template = &deployment["spec"]["template"];
    let pod = &template["spec"];
    let container = pod["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "hippo-gitops"))
        .unwrap_or_else(|| panic!("{what}: no hippo-gitops container"));
    let args = str_list(&container["args"]);
    let env = container["env"].as_array().cloned().unwrap_or_default();
    let env_var = |name: &str| env.iter().find(|e| e["name"] == name);

    // The address the controller listens on: --listen, else HIPPO_GITOPS_LISTEN, else the
    // binary's default (loopback, which no probe reaches).
    let listen = args
        .windows(2)
        .find(|w| w[0] == "--listen")
        .map(|w| w[1].to_string())
        .or_else(|| {
            env_var("HIPPO_GITOPS_LISTEN").and_then(|e| e["value"].as_str().map(String::from))
        })
        .unwrap_or_else(|| "127.0.0.1:9090".into());
    let (host, port) = listen.rsplit_once(':').expect("HOST:PORT");
    let port: u64 = port.parse().expect("a port number");
    assert!(
        !matches!(host, "127.0.0.1" | "localhost" | "[::1]"),
        "{what}: --listen {listen} is not reachable from outside the pod"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{what}: {probe}'s path");
        assert_eq!(
            container_port(container, &get["port"]),
            port,
            "{what}: {probe} hits the port --listen {listen} binds"
        );
    }

    // The Service reaches the pods on that port.
    let service = the(docs, "Service");
    assert!(
        labels_match(
            &service["spec"]["selector"],
            &template["metadata"]["labels"]
        ),
        "{what}: the Service selects the pods"
    );
    let service_ports = service["spec"]["ports"].as_array().expect("ports");
    for p in service_ports {
        assert_eq!(
            container_port(container, &p["targetPort"]),
            port,
            "{what}: the Service's port {} reaches --listen {listen}",
            p["name"]
        );
    }

    // The ServiceMonitor selects the Service, on a port it has.
    if let Some(monitor) = find(docs, "ServiceMonitor") {
        let namespaces = match monitor["spec"]["namespaceSelector"]["matchNames"].as_array() {
            Some(names) => names.iter().filter_map(Value::as_str).collect(),
            None => vec![monitor["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()],
        };
        assert!(
            namespaces.contains(
                &service["metadata"]["namespace"]
                    .as_str()
                    .expect("a namespace")
            ),
            "{what}: the ServiceMonitor looks in the Service's namespace: {namespaces:?}"
        );
        let selector = &monitor["spec"]["selector"];
        assert!(
            selector.get("matchExpressions").is_none(),
            "{what}: teach this test matchExpressions"
        );
        assert!(
            labels_match(&selector["matchLabels"], &service["metadata"]["labels"]),
            "{what}: the ServiceMonitor's selector {selector} selects the Service's labels {}",
            service["metadata"]["labels"]
        );
        for endpoint in monitor["spec"]["endpoints"].as_array().expect("endpoints") {
            assert!(
                service_ports.iter().any(|p| p["name"] == endpoint["port"]),
                "{what}: the ServiceMonitor scrapes port {} of the Service",
                endpoint["port"]
            );
            assert_eq!(endpoint["path"], "/metrics", "{what}");
        }
    }

    // The Ingress routes to the Service's port.
    if let Some(ingress) = find(docs, "Ingress") {
        for rule in ingress["spec"]["rules"].as_array().expect("rules") {
            for path in rule["http"]["paths"].as_array().expect("paths") {
                let backend = &path["backend"]["service"];
                assert_eq!(backend["name"], service["metadata"]["name"], "{what}");
                assert!(
                    service_ports
                        .iter()
                        .any(|p| p["name"] == backend["port"]["name"]),
                    "{what}: the Ingress routes to a port of the Service"
                );
            }
        }
    }

    // Every Secret/ConfigMap key the pod reads: a required key of an object the chart makes
    // is in it; an object the chart doesn't make, and its keys, are named in the values.
    let mut named = BTreeSet::new();
    value_strings(&case.values, &mut named);
    for r in key_refs(pod) {
        let made = docs
            .iter()
            .find(|d| d["kind"] == r.kind && d["metadata"]["name"] == r.name);
        match (made, r.key) {
            (Some(object), Some(key)) => {
                let has = ["data", "stringData", "binaryData"]
                    .iter()
                    .any(|field| object[field].get(key).is_some());
                assert!(
                    has || r.optional,
                    "{what}: {} reads key {key} of {} {}, which the chart makes without it",
                    r.from,
                    r.kind,
                    r.name
                );
            }
            (Some(_), None) => {}
            (None, key) => {
                assert!(
                    named.contains(r.name),
                    "{what}: {} reads {} {}, which the chart doesn't make and the values don't name",
                    r.from,
                    r.kind,
                    r.name
                );
                if let Some(key) = key {
                    assert!(
                        named.contains(key),
                        "{what}: {} reads key {key} of {} {}, a key the values don't name",
                        r.from,
                        r.kind,
                        r.name
                    );
                }
            }
        }
    }

    // Every variable set is one the binary (or git) reads, or one the values name for the
    // Notification documents (their addressFromEnv and secretFromEnv).
    let for_notifications: Vec<&str> = case.values["notifications"]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect();
    let names: Vec<&str> = env
        .iter()
        .filter_map(|e| e["name"].as_str())
        .filter(|n| !for_notifications.contains(n))
        .collect();
    let unknown = unknown_vars(names.iter().copied(), known_env);
    assert!(
        unknown.is_empty(),
        "{what}: the chart sets variables that neither hippo-gitops nor git reads: {unknown:?}"
    );

    // More than one replica only with leader election: not turned off, and NOMAD_ADDR set
    // (without it there is no election), from a Secret key that must exist.
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
    if replicas > 1 {
        assert!(
            !args.contains(&"--no-leader-election"),
            "{what}: {replicas} replicas with --no-leader-election"
        );
        let nomad_addr = env_var("NOMAD_ADDR")
            .unwrap_or_else(|| panic!("{what}: {replicas} replicas without NOMAD_ADDR"));
        let from_secret = &nomad_addr["valueFrom"]["secretKeyRef"];
        assert!(
            nomad_addr["value"].is_string()
                || (from_secret.is_object() && from_secret["optional"] == false),
            "{what}: {replicas} replicas with a NOMAD_ADDR that may be missing: {nomad_addr}"
        );
    }
}

#[test]
fn rendered_objects_fit_together() {
    let known_env = env_vars_the_binary_reads();
    let cases = values_cases();
    let mut kinds = BTreeSet::new();
    let mut max_replicas = 0;
    for case in &cases {
        let rendered = render(case);
        check_objects_fit_together(case, &rendered.docs, &known_env);
        for doc in &rendered.docs {
            kinds.insert(doc["kind"].as_str().unwrap_or_default().to_string());
        }
        max_replicas = max_replicas.max(
            the(&rendered.docs, "Deployment")["spec"]["replicas"]
                .as_u64()
                .unwrap_or(1),
        );
    }
    // Together the cases render every kind the chart has, and more than one replica.
    for kind in [
        "Deployment",
        "Service",
        "ServiceAccount",
        "Secret",
        "ServiceMonitor",
        "Ingress",
    ] {
        assert!(kinds.contains(kind), "no values case renders a {kind}");
    }
    assert!(max_replicas > 1, "no values case runs several replicas");
}

#[test]
fn the_fit_checks_catch_a_broken_chart() {
    // Each check above can fail: objects broken as a template mistake would break them.
    let known_env = env_vars_the_binary_reads();
    let cases = values_cases();
    let breakages: [(&str, &str, &str, &str, &str, Value); 7] = [
        (
            "a probe on another port",
            "livenessProbe hits the port",
            "ci/created-secret-values.yaml",
            "Deployment",
            "/spec/template/spec/containers/0/livenessProbe/httpGet/port",
            json!(8080),
        ),
        (
            "a ServiceMonitor selecting other labels",
            "selects the Service",
            "ci/created-secret-values.yaml",
            "ServiceMonitor",
            "/spec/selector/matchLabels",
            json!({"app.kubernetes.io/name": "other"}),
        ),
        (
            "a key the chart-made Secret lacks",
            "which the chart makes without it",
            "ci/created-secret-values.yaml",
            "Deployment",
            "/spec/template/spec/containers/0/env/0",
            json!({"name": "HIPPO_URL", "valueFrom": {"secretKeyRef": {"name": "packaging-test-hippo-gitops", "key": "HIPPO_ULR"}}}),
        ),
        (
            "a Secret the values don't name",
            "the values don't name",
            "ci/created-secret-values.yaml",
            "Deployment",
            "/spec/template/spec/volumes/0",
            json!({"name": "state", "secret": {"secretName": "hard-coded"}}),
        ),
        (
            "a variable nobody reads",
            "neither hippo-gitops nor git reads",
            "ci/created-secret-values.yaml",
            "Deployment",
            "/spec/template/spec/containers/0/env/0",
            json!({"name": "HIPPO_GITOPS_GIT_REPO", "value": "x"}),
        ),
        (
            "two replicas with leader election turned off",
            "with --no-leader-election",
            "ci/leader-election-values.yaml",
            "Deployment",
            "/spec/template/spec/containers/0/args",
            json!([
                "reconcile",
                "--listen",
                "0.0.0.0:9090",
                "--no-leader-election"
            ]),
        ),
        (
            "two replicas where NOMAD_ADDR may be missing",
            "NOMAD_ADDR that may be missing",
            "ci/created-secret-values.yaml",
            "Deployment",
            "/spec/replicas",
            json!(2),
        ),
    ];
    for (what, expected, case_name, kind, pointer, value) in breakages {
        let base = case(&cases, case_name);
        let mut docs = render(base).docs;
        let doc = docs
            .iter_mut()
            .find(|d| d["kind"] == kind)
            .expect("rendered");
        *doc.pointer_mut(pointer)
            .unwrap_or_else(|| panic!("{what}: nothing at {pointer}")) = value;
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_objects_fit_together(base, &docs, &known_env);
        }));
        let message = match caught {
            Ok(()) => panic!("the checks missed {what}"),
            Err(payload) => payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        };
        assert!(
            message.contains(expected),
            "{what}: caught, but by another check: {message}"
        );
    }
}

#[test]
fn helm_renders_the_default_values_as_documented() {
    let cases = values_cases();
    let Rendered { text, docs } = render(&cases[0]);
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
    let deployment = the(&docs, "Deployment");
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
    // The controller's intervals, as values.yaml documents them.
    assert_eq!(
        var("HIPPO_GITOPS_INTERVAL").expect("interval")["value"],
        "60s"
    );
    assert_eq!(
        var("HIPPO_GITOPS_DISCOVER_INTERVAL").expect("discover interval")["value"],
        "60s"
    );
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

    let service = the(&docs, "Service");
    assert_eq!(service["spec"]["ports"][0]["port"], 9090);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");

    // With a chart-made Secret, the secret never appears in plain text.
    let made = case(&cases, "ci/created-secret-values.yaml");
    let sentinel = made.values["credentials"]["secretData"]["HIPPO_PASSWORD"]
        .as_str()
        .expect("a sentinel password");
    let Rendered { text, docs } = render(made);
    assert!(
        !text.contains(sentinel),
        "the password appears in plain text"
    );
    let secret = the(&docs, "Secret");
    assert!(secret.get("stringData").is_none());
    assert!(secret["data"]["HIPPO_PASSWORD"].is_string());
}

#[test]
fn helm_refuses_what_would_not_run() {
    let cases = values_cases();
    let default = &cases[0];
    for (what, base, changes) in [
        (
            "2 replicas without leader election",
            default,
            vec![
                ("/replicaCount", json!(2)),
                ("/controller/leaderElection", json!(false)),
            ],
        ),
        (
            "2 replicas without NOMAD_ADDR",
            default,
            vec![
                ("/replicaCount", json!(2)),
                ("/credentials/keys/nomadAddr", json!("")),
            ],
        ),
        (
            "a chart-made Secret without HIPPO_URL",
            case(&cases, "ci/created-secret-values.yaml"),
            vec![("/credentials/keys/hippoUrl", json!("HIPPO_ADDRESS"))],
        ),
        (
            "a chart-made Secret without the signing key",
            case(&cases, "ci/created-secret-values.yaml"),
            vec![("/bindle/signingKey/key", json!("other.toml"))],
        ),
        (
            "ssh auth without its Secret",
            default,
            vec![("/git/auth/method", json!("ssh"))],
        ),
    ] {
        if let Ok(rendered) = render_with(base, &changes) {
            panic!("helm template accepted {what}:\n{}", rendered.text);
        }
    }
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

/// The `run:` scripts of every step of every job of a workflow.
fn run_scripts(workflow: &Value) -> Vec<String> {
    workflow["jobs"]
        .as_object()
        .expect("jobs")
        .values()
        .flat_map(|job| job["steps"].as_array().cloned().unwrap_or_default())
        .filter_map(|step| step["run"].as_str().map(str::to_string))
        .collect()
}

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

    let runs = run_scripts(&workflow);
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

// ---- the Nomad Variable ----

/// The default of the job file's `variable "NAME"`.
fn nomad_variable_default(file: &hcl::Body, name: &str) -> String {
    let variable = file
        .blocks()
        .find(|b| {
            b.identifier() == "variable" && b.labels().first().map(|l| l.as_str()) == Some(name)
        })
        .unwrap_or_else(|| panic!("no variable {name:?}"));
    template_text(attribute(variable.body(), "default"))
}

#[test]
fn nomad_variable_path_and_items_are_documented() {
    let file = nomad_job();
    let task = nomad_task(&file);
    let mut paths = BTreeSet::new();
    let mut items = BTreeSet::new();
    for template in task.blocks().filter(|b| b.identifier() == "template") {
        let data = template_text(attribute(template.body(), "data"));
        for rest in data.split("nomadVar \"").skip(1) {
            let path = rest.split('"').next().expect("a quoted path");
            // `${var.NAME}`: the job variable's default.
            let path = match path
                .strip_prefix("${var.")
                .and_then(|p| p.strip_suffix('}'))
            {
                Some(var) => nomad_variable_default(&file, var),
                None => path.to_string(),
            };
            paths.insert(path);
        }
        // The items: `.item` inside the `with nomadVar` block (`.Value` is an item's value).
        if data.contains("nomadVar") {
            for rest in data.split("{{ with .").skip(1) {
                let item: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                items.insert(item);
            }
        }
    }
    assert_eq!(
        paths,
        BTreeSet::from(["nomad/jobs/hippo-gitops".to_string()]),
        "the job reads one Nomad Variable"
    );
    for item in [
        "hippo_url",
        "bindle_server_url",
        "bindle_signing_key",
        "git_ssh_key",
    ] {
        assert!(items.contains(item), "found item {item}: {items:?}");
    }
    let docs = read("docs/controller.md");
    let section = docs
        .split("\n## ")
        .find(|s| s.starts_with("On Nomad"))
        .expect("docs/controller.md has a section \"On Nomad\"");
    for path in &paths {
        assert!(
            section.contains(&format!("`{path}`")),
            "docs/controller.md's \"On Nomad\" names the variable path `{path}`"
        );
    }
    let undocumented: Vec<&String> = items
        .iter()
        .filter(|item| !section.contains(&format!("`{item}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "docs/controller.md's \"On Nomad\" section does not document the Nomad Variable items {undocumented:?}"
    );
}

// ---- actionlint, hadolint, shellcheck ----

/// The files under DIR (relative to the repository root) whose names end with one of EXTS.
fn files_in(dir: &str, exts: &[&str]) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| exts.iter().any(|ext| name.ends_with(ext)))
        .map(|name| format!("{dir}/{name}"))
        .collect();
    files.sort();
    files
}

#[test]
fn actionlint_finds_nothing_in_the_workflows() {
    let workflows = files_in(WORKFLOWS, &[".yml", ".yaml"]);
    for expected in ["hippo-gitops.yml", "release.yml"] {
        assert!(
            workflows.contains(&format!("{WORKFLOWS}/{expected}")),
            "{WORKFLOWS}/{expected} exists: {workflows:?}"
        );
    }
    // shellcheck named explicitly: actionlint quietly drops its check of `run:` scripts when
    // it finds none.
    let shellcheck = tool("shellcheck");
    let mut args = vec![
        "-verbose",
        "-no-color",
        "-shellcheck",
        shellcheck.to_str().expect("UTF-8"),
    ];
    args.extend(workflows.iter().map(String::as_str));
    let out = run("actionlint", &args, None);
    let findings = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "actionlint:\n{findings}{log}"
    );
    assert!(
        !log.contains("Rule \"shellcheck\" was disabled"),
        "actionlint ran without shellcheck:\n{log}"
    );
    for workflow in &workflows {
        assert!(
            log.contains(&format!("Linting {workflow}")),
            "actionlint linted {workflow}:\n{log}"
        );
    }
}

#[test]
fn actionlint_checks_run_scripts_with_shellcheck() {
    // What the test above relies on: a script error in a `run:` step is a finding.
    let dir = tempfile::tempdir().expect("a temp dir");
    let workflow = dir.path().join("w.yml");
    std::fs::write(
        &workflow,
        "on: push\njobs:\n  j:\n    runs-on: ubuntu-latest\n    steps:\n      - run: rm -rf $DIR/*\n",
    )
    .expect("writes");
    let shellcheck = tool("shellcheck");
    let out = run(
        "actionlint",
        &[
            "-no-color",
            "-shellcheck",
            shellcheck.to_str().expect("UTF-8"),
            workflow.to_str().expect("UTF-8"),
        ],
        None,
    );
    let report = printed(&out);
    assert!(
        !out.status.success() && report.contains("shellcheck reported issue"),
        "actionlint did not report the unquoted variable:\n{report}"
    );
}

#[test]
fn hadolint_finds_nothing_in_the_dockerfile() {
    let out = run("hadolint", &["--no-color", "Dockerfile"], None);
    let report = printed(&out);
    assert!(
        out.status.success() && report.trim().is_empty(),
        "hadolint Dockerfile:\n{report}"
    );
    // A rule is ignored only inline, with the reason in the comment lines just above it.
    let text = read("Dockerfile");
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("hadolint ignore=") {
            let reason = lines[..i]
                .iter()
                .rev()
                .take_while(|l| l.starts_with('#'))
                .count();
            assert!(
                reason >= 1,
                "Dockerfile:{}: `{line}` has no reason beside it",
                i + 1
            );
        }
    }
    assert!(
        !root().join(".hadolint.yaml").exists() && !root().join(".hadolint.yml").exists(),
        "no hadolint config file: rules are ignored inline, with their reasons"
    );
}

/// Every shell script of the repository: `*.sh` and `*.bash`, and files that start with a
/// shell's `#!` line (like `.ci/run`), outside target/ and .git.
fn shell_scripts() -> Vec<String> {
    fn walk(dir: &Path, rel: &str, into: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("reads a directory") {
            let entry = entry.expect("a directory entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let file_type = entry.file_type().expect("a file type");
            if file_type.is_dir() {
                if !matches!(
                    name.as_str(),
                    "target" | ".git" | ".hippo-gitops" | "node_modules"
                ) {
                    walk(&path, &rel, into);
                }
            } else if file_type.is_file() {
                let shebang = || {
                    let mut head = [0u8; 64];
                    let n = std::fs::File::open(&path)
                        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
                        .unwrap_or(0);
                    let first = String::from_utf8_lossy(&head[..n]);
                    let first = first.lines().next().unwrap_or_default();
                    first.starts_with("#!")
                        && ["sh", "bash", "dash"].iter().any(|sh| {
                            first.ends_with(&format!("/{sh}")) || first.ends_with(&format!(" {sh}"))
                        })
                };
                if name.ends_with(".sh") || name.ends_with(".bash") || shebang() {
                    into.push(rel);
                }
            }
        }
    }
    let mut scripts = Vec::new();
    walk(&root(), "", &mut scripts);
    scripts.sort();
    scripts
}

#[test]
fn shellcheck_finds_nothing_in_the_shell_scripts() {
    let scripts = shell_scripts();
    for expected in [".ci/run", ".ci/tools.sh"] {
        assert!(
            scripts.iter().any(|s| s == expected),
            "{expected} is found as a shell script: {scripts:?}"
        );
    }
    // -x follows `. .ci/tools.sh` from .ci/run (paths are relative to the repository root).
    let mut args = vec!["-x", "--color=never"];
    args.extend(scripts.iter().map(String::as_str));
    let out = run("shellcheck", &args, None);
    let report = printed(&out);
    assert!(
        out.status.success() && report.trim().is_empty(),
        "shellcheck {scripts:?}:\n{report}"
    );
}

// ---- the release workflow ----

#[test]
fn release_workflow_publishes_checksummed_binaries_for_linux_and_macos() {
    let text = read(&format!("{WORKFLOWS}/release.yml"));
    let workflow = yaml(&text, "the release workflow");
    let tags = str_list(&workflow["on"]["push"]["tags"]);
    assert!(!tags.is_empty(), "runs on a pushed tag: {}", workflow["on"]);
    assert!(
        workflow["on"]["push"].get("branches").is_none(),
        "and not on branch pushes"
    );
    let jobs = workflow["jobs"].as_object().expect("jobs");
    // Every target from the build matrix, and the runner each one builds on.
    let targets: BTreeSet<String> = jobs
        .values()
        .flat_map(|job| {
            job["strategy"]["matrix"]["include"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|entry| entry["target"].as_str().map(str::to_string))
        .collect();
    for target in [
        "x86_64-unknown-linux-musl",
        "aarch64-unknown-linux-musl",
        "x86_64-apple-darwin",
        "aarch64-apple-darwin",
    ] {
        assert!(targets.contains(target), "builds {target}: {targets:?}");
    }
    let runs = run_scripts(&workflow).join("\n");
    assert!(
        runs.contains("--locked") && runs.contains("--release"),
        "builds --release --locked"
    );
    assert!(
        runs.contains("sha256sum") || runs.contains("shasum -a 256"),
        "writes SHA-256 checksums"
    );
    assert!(
        runs.contains("gh release"),
        "publishes a GitHub release with gh"
    );
    let writes: BTreeMap<&str, &Value> = jobs
        .iter()
        .filter(|(_, job)| job["permissions"]["contents"] == "write")
        .map(|(name, job)| (name.as_str(), job))
        .collect();
    assert_eq!(
        writes.len(),
        1,
        "exactly one job (the one that publishes) may write the repository's contents"
    );
}

// ---- promtool: the example alert rules and the metrics they read ----

/// `rules` written to `rules.yml` in a temp dir, beside a copy of the `promtool test rules`
/// cases (which name that file). Answers the dir (removed on drop) and the two files.
fn alert_rules_with_cases(rules: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let rules_file = dir.path().join("rules.yml");
    std::fs::write(&rules_file, rules).expect("writes");
    let cases = dir.path().join("controller-alerts.test.yml");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/alerts/controller-alerts.test.yml"),
        &cases,
    )
    .expect("copies");
    (dir, rules_file, cases)
}

#[test]
fn the_documented_alert_rules_pass_promtool_check_and_their_tests() {
    let (_dir, rules, cases) = alert_rules_with_cases(&alert_rules::documented());
    let out = run(
        "promtool",
        &["check", "rules", rules.to_str().expect("UTF-8")],
        None,
    );
    assert!(
        out.status.success() && printed(&out).contains("SUCCESS: 4 rules found"),
        "promtool check rules:\n{}",
        printed(&out)
    );
    let out = run(
        "promtool",
        &["test", "rules", cases.to_str().expect("UTF-8")],
        None,
    );
    assert!(
        out.status.success(),
        "promtool test rules:\n{}",
        printed(&out)
    );
}

#[test]
fn promtool_test_rules_fails_an_alert_that_does_not_fire_as_expected() {
    // What the test above relies on: a rule whose `for` restarts with every change of reason
    // (no `max by (app)`) fails the cases.
    let documented = alert_rules::documented();
    let aggregated = "max by (app) (hippo_gitops_app_condition{condition!~\"Ready|Suspended\"})";
    assert!(documented.contains(aggregated), "{documented}");
    let broken = documented.replace(
        aggregated,
        "hippo_gitops_app_condition{condition!~\"Ready|Suspended\"}",
    );
    let (_dir, _, cases) = alert_rules_with_cases(&broken);
    let out = run(
        "promtool",
        &["test", "rules", cases.to_str().expect("UTF-8")],
        None,
    );
    assert!(!out.status.success(), "{}", printed(&out));
    assert!(
        printed(&out).contains("alertname: HippoGitopsAppNotReady, time: 16m"),
        "{}",
        printed(&out)
    );
}

#[test]
fn the_metrics_exposition_passes_promtool_check_metrics() {
    use hippo_gitops_controller::{
        metrics::Metrics, AppliedChanges, DaemonAppStatus, Role, StatusView,
    };
    use hippo_gitops_core::{
        stats::RequestStats,
        status::{Condition, ConditionType},
    };
    let condition = |kind, reason: &str| Condition {
        kind,
        status: true,
        reason: reason.into(),
        message: String::new(),
    };
    let mut weather =
        DaemonAppStatus::unreconciled("weather", condition(ConditionType::Ready, "UpToDate"));
    weather.last_applied = Some(AppliedChanges {
        id: "c1".into(),
        at: chrono::Utc::now(),
        changes: vec!["created app weather".into()],
    });
    let view = StatusView {
        apps: vec![
            weather,
            // A name that needs escaping.
            DaemonAppStatus::unreconciled(
                "odd\"name\\",
                condition(ConditionType::Stalled, "BindleConflict"),
            ),
        ],
        ..Default::default()
    };
    let mut metrics = Metrics::default();
    metrics.observe_cycle(0.2, "nomad");
    metrics.count_result("converged");
    let stats = RequestStats::default();
    stats.record("nomad", "GET", 200);
    let text = metrics.render(&view, Role::Leader, &stats, 1);
    for name in [
        "hippo_gitops_app_condition{",
        "hippo_gitops_app_last_change_timestamp_seconds{",
    ] {
        assert!(text.contains(name), "{text}");
    }
    let out = run("promtool", &["check", "metrics"], Some(&text));
    assert!(
        out.status.success() && printed(&out).trim().is_empty(),
        "promtool check metrics:\n{}\n{text}",
        printed(&out)
    );
}
