//! The deploy file's JSON Schema, generated from the raw serde types (`hippo-gitops schema`),
//! for editors (`# yaml-language-server: $schema=…`) and CI linters. It describes the shape;
//! `validate` still makes the checks a schema can't (semver, files on disk, duplicates).

use serde_json::{json, Value};

use super::RawDocument;

/// Where the committed copy lives, relative to the repository root.
pub const COMMITTED_PATH: &str = "deploy-specs/hippo-gitops.schema.json";

/// The schema (draft-07), pretty-printed with a final newline.
pub fn deploy_file_schema() -> String {
    let mut schema =
        serde_json::to_value(schemars::schema_for!(RawDocument)).expect("a schema serialises");
    refine(&mut schema);
    super::notification::extend_schema(&mut schema);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serialises");
    text.push('\n');
    text
}

/// What the derive can't say: the constant header fields, and "exactly one of" groups.
fn refine(schema: &mut Value) {
    schema["$id"] =
        json!("https://github.com/hippo-gitops/hippo-gitops/deploy-specs/hippo-gitops.schema.json");
    let props = &mut schema["properties"];
    props["apiVersion"]["const"] = json!("hippo-gitops/v1");
    props["kind"]["const"] = json!("App");
    let defs = &mut schema["definitions"];
    defs["Revision"]["oneOf"] = exactly_one(&["version", "path", "discover"]);
    defs["Channel"]["oneOf"] = exactly_one(&["range", "revision", "promote"]);
    // `rollback: true` goes only with `range` or `promote`.
    defs["Channel"]["not"] = json!({
        "required": ["revision", "rollback"],
        "properties": { "rollback": { "const": true } },
    });
    // The same rules as `validate` (spec/validate.rs), where a pattern can say them.
    defs["Metadata"]["properties"]["name"]["pattern"] = json!("^[A-Za-z0-9_-]{1,128}$");
    defs["AppSpec"]["properties"]["storageId"]["pattern"] = json!("^[A-Za-z0-9_/-]{1,200}$");
    defs["Channel"]["properties"]["name"]["pattern"] = json!("^[A-Za-z0-9_-]{1,64}$");
    defs["Channel"]["properties"]["domain"]["pattern"] =
        json!("^([a-z0-9]+(-[a-z0-9]+)*\\.)+[a-z]{2,}$");
    defs["Channel"]["properties"]["range"]["minLength"] = json!(1);
    defs["Channel"]["properties"]["env"]["propertyNames"] =
        json!({ "pattern": "^[A-Za-z_][A-Za-z0-9_]*$" });
    defs["Revision"]["properties"]["discover"]["minLength"] = json!(1);
    // `parse_duration` (src/duration.rs): plain seconds, or a number and ms, s, m or h.
    let duration = json!("^\\s*([0-9]+\\.?[0-9]*|\\.[0-9]+)(ms|s|m|h)?\\s*$");
    defs["Promote"]["properties"]["after"]["pattern"] = duration.clone();
    defs["Probe"]["properties"]["interval"]["pattern"] = duration;
    defs["Probe"]["properties"]["interval"]["default"] = json!("15s");
    let status = &mut defs["Probe"]["properties"]["expectStatus"];
    status["minimum"] = json!(100);
    status["maximum"] = json!(599);
    status["default"] = json!(200);
    defs["Probe"]["properties"]["url"]["pattern"] = json!("^[Hh][Tt][Tt][Pp][Ss]?://");
}

/// `oneOf`: each of `fields` without the others.
fn exactly_one(fields: &[&str]) -> Value {
    fields
        .iter()
        .map(|f| {
            let others: Vec<Value> = fields
                .iter()
                .filter(|o| *o != f)
                .map(|o| json!({ "required": [o] }))
                .collect();
            json!({ "required": [f], "not": { "anyOf": others } })
        })
        .collect()
}
