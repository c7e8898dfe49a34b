//! The deploy file's JSON Schema: the committed copy is what `hippo-gitops schema` prints, it
//! accepts every example in `deploy-specs/`, and it refuses the structural cases of the
//! bad-input table (tests/bad_deploy_files.rs). The semantic cases of that table (semver
//! validity, paths on disk, duplicates across documents, root escapes, content conflicts) are
//! beyond what a schema can see; `validate` reports those.

use std::path::Path;

use hippo_gitops_core::spec::schema::{deploy_file_schema, COMMITTED_PATH};
use serde_json::Value;

/// The workspace's root, where deploy-specs/ and the shipped schema are.
fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

struct Schema {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl Schema {
    fn load() -> Schema {
        let value: Value = serde_json::from_str(&deploy_file_schema()).unwrap();
        let mut compiler = boon::Compiler::new();
        compiler.set_default_draft(boon::Draft::V7);
        compiler.add_resource("deploy.schema.json", value).unwrap();
        let mut schemas = boon::Schemas::new();
        let index = compiler
            .compile("deploy.schema.json", &mut schemas)
            .unwrap_or_else(|e| panic!("the schema does not compile: {e:#}"));
        Schema { schemas, index }
    }

    /// Every YAML document of `text`, validated.
    fn check(&self, text: &str) -> Result<(), String> {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let yaml = serde_yaml::Value::deserialize(doc).map_err(|e| e.to_string())?;
            let json: Value = serde_json::to_value(yaml).map_err(|e| e.to_string())?;
            self.schemas
                .validate(&json, self.index)
                .map_err(|e| format!("{e:#}"))?;
        }
        Ok(())
    }
}

use serde::Deserialize;

#[test]
fn the_committed_schema_is_current() {
    let committed = std::fs::read_to_string(root().join(COMMITTED_PATH)).unwrap();
    assert!(
        committed == deploy_file_schema(),
        "{COMMITTED_PATH} is stale: run `cargo run -- schema > {COMMITTED_PATH}`"
    );
}

#[test]
fn every_example_validates_and_points_editors_at_the_schema() {
    let schema = Schema::load();
    let mut seen = 0;
    for entry in std::fs::read_dir(root().join("deploy-specs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        schema
            .check(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            text.starts_with("# yaml-language-server: $schema=hippo-gitops.schema.json\n"),
            "{} lacks the yaml-language-server line",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 2);
}

const HEAD: &str = "apiVersion: hippo-gitops/v1\nkind: App\nmetadata:\n  name: weather\n";

#[test]
fn the_structural_bad_inputs_are_refused() {
    let schema = Schema::load();
    let cases: Vec<(&str, String)> = vec![
        (
            "unknown field",
            format!("{HEAD}spec:\n  channels:\n    - name: prod\n      rnage: \"^1\"\n"),
        ),
        ("wrong type", format!("{HEAD}spec:\n  prune: \"yes\"\n")),
        (
            "invalid app name",
            "apiVersion: hippo-gitops/v1\nkind: App\nmetadata:\n  name: weather.app\nspec:\n  storageId: weather\n".into(),
        ),
        ("storageId with a dot", format!("{HEAD}spec:\n  storageId: weather.v2\n")),
        (
            "both range and revision",
            format!("{HEAD}spec:\n  channels:\n    - name: a\n      range: \"*\"\n      revision: 1.0.0\n"),
        ),
        ("neither range nor revision", format!("{HEAD}spec:\n  channels:\n    - name: a\n")),
        (
            "both version and path",
            format!("{HEAD}spec:\n  revisions:\n    - version: 1.0.0\n      path: apps/x\n"),
        ),
        (
            "wrong apiVersion and kind",
            "apiVersion: v1\nkind: Deployment\nmetadata:\n  name: weather\nspec: {}\n".into(),
        ),
        ("empty range", format!("{HEAD}spec:\n  channels:\n    - name: a\n      range: \"\"\n")),
        (
            "invalid domain",
            format!("{HEAD}spec:\n  channels:\n    - name: a\n      range: \"*\"\n      domain: Weather_Example\n"),
        ),
        (
            "invalid env key",
            format!("{HEAD}spec:\n  channels:\n    - name: a\n      range: \"*\"\n      env:\n        1BAD: x\n"),
        ),
        ("env value that is a mapping", format!("{HEAD}spec:\n  channels:\n    - name: a\n      range: \"*\"\n      env:\n        A: {{b: c}}\n")),
        ("missing spec", HEAD.to_string()),
        (
            "discover beside version",
            format!("{HEAD}spec:\n  revisions:\n    - version: 1.0.0\n      discover: \"*\"\n"),
        ),
        (
            "promote beside range",
            format!("{HEAD}spec:\n  channels:\n    - name: a\n      range: \"*\"\n      promote: {{from: b, after: 1m}}\n"),
        ),
        (
            "rollback with a pinned revision",
            format!("{HEAD}spec:\n  channels:\n    - name: a\n      revision: 1.0.0\n      rollback: true\n"),
        ),
        (
            "rollback that is not a bool",
            format!("{HEAD}spec:\n  channels:\n    - name: a\n      range: \"*\"\n      rollback: \"yes\"\n"),
        ),
        ("promote without after", format!("{HEAD}spec:\n  channels:\n    - name: a\n      promote: {{from: b}}\n")),
        ("promote after that is not a duration", format!("{HEAD}spec:\n  channels:\n    - name: a\n      promote: {{from: b, after: 10d}}\n")),
        (
            "unknown field in promote",
            format!("{HEAD}spec:\n  channels:\n    - name: a\n      promote: {{from: b, after: 1m, wait: 1m}}\n"),
        ),
        (
            "check without url",
            format!("{HEAD}spec:\n  channels:\n    - name: a\n      promote: {{from: b, after: 1m, check: {{interval: 15s}}}}\n"),
        ),
        (
            "check url that is not http",
            format!("{HEAD}spec:\n  channels:\n    - name: a\n      promote: {{from: b, after: 1m, check: {{url: \"ftp://{{domain}}/\"}}}}\n"),
        ),
        (
            "expectStatus out of range",
            format!("{HEAD}spec:\n  channels:\n    - name: a\n      promote: {{from: b, after: 1m, check: {{url: \"https://{{domain}}/\", expectStatus: 700}}}}\n"),
        ),
    ];
    for (name, text) in cases {
        assert!(schema.check(&text).is_err(), "the schema accepts: {name}");
    }
    // What YAML users write for numbers is fine: `PORT: 8080`, `version: 1.0.0`.
    schema
        .check(&format!("{HEAD}spec:\n  storageId: weather\n  revisions:\n    - version: 1.0.0\n  channels:\n    - name: a\n      revision: 1.0.0\n      env:\n        PORT: 8080\n        DEBUG: true\n"))
        .unwrap();
}

#[test]
fn progressive_delivery_fields_are_described() {
    let schema = Schema::load();
    // The deploy-file reference's example (docs/deploy-file.md, "Progressive delivery").
    schema
        .check(&format!("{HEAD}spec:\n  revisions:\n    - version: 1.0.0\n    - discover: \">=1.0.0\"\n    - discover: 0.30\n  channels:\n    - name: canary\n      range: \"*\"\n    - name: production\n      promote:\n        from: canary\n        after: 10m\n        check:\n          url: \"https://{{domain}}/health\"\n          expectStatus: 200\n          interval: 15s\n      rollback: true\n    - name: staging\n      range: \"^1.0\"\n      rollback: true\n    - name: eu\n      promote: {{from: canary, after: 90}}\n    - name: pinned\n      revision: 1.0.0\n      rollback: false\n"))
        .unwrap();
}

const NOTIFICATION: &str =
    "apiVersion: hippo-gitops/v1\nkind: Notification\nmetadata:\n  name: team-alerts\n";

#[test]
fn notification_documents_are_described_too() {
    let schema = Schema::load();
    // The example, beside an app in the same file.
    schema
        .check(&format!("{HEAD}spec: {{}}\n---\n{NOTIFICATION}spec:\n  type: webhook\n  addressFromEnv: ALERTS_URL\n  secretFromEnv: ALERTS_SECRET\n  events: [Ready, Failed, Stalled, Promoted, RolledBack]\n  apps: [\"weather\", \"billing-*\"]\n"))
        .unwrap();
    let cases = [
        ("unknown type", "  type: teams\n  addressFromEnv: U\n"),
        (
            "unknown event",
            "  type: slack\n  addressFromEnv: U\n  events: [Exploded]\n",
        ),
        (
            "an address in Git",
            "  type: slack\n  address: https://hooks.slack.com/x\n",
        ),
        ("no address", "  type: slack\n"),
        (
            "an env name that isn't one",
            "  type: slack\n  addressFromEnv: not-a-name\n",
        ),
    ];
    for (name, spec) in cases {
        let text = format!("{NOTIFICATION}spec:\n{spec}");
        assert!(schema.check(&text).is_err(), "the schema accepts: {name}");
    }
    // An app's fields in a Notification, and the other way round, are refused.
    assert!(schema
        .check(&format!(
            "{NOTIFICATION}spec:\n  type: slack\n  addressFromEnv: U\n  prune: true\n"
        ))
        .is_err());
    assert!(schema
        .check(&format!("{HEAD}spec:\n  addressFromEnv: U\n"))
        .is_err());
}
