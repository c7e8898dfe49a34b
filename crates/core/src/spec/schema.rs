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

/// What the derive can't say: the constant header fields, and "exactly one of" pairs.
fn refine(schema: &mut Value) {
    schema["$id"] =
        json!("https://github.com/hippo-gitops/hippo-gitops/deploy-specs/hippo-gitops.schema.json");
    let props = &mut schema["properties"];
    props["apiVersion"]["const"] = json!("hippo-gitops/v1");
    props["kind"]["const"] = json!("App");
    let defs = &mut schema["definitions"];
    defs["Revision"]["oneOf"] = json!([
        { "required": ["version"], "not": { "required": ["path"] } },
        { "required": ["path"], "not": { "required": ["version"] } },
    ]);
    defs["Channel"]["oneOf"] = json!([
        { "required": ["range"], "not": { "required": ["revision"] } },
        { "required": ["revision"], "not": { "required": ["range"] } },
    ]);
    // The same rules as `validate` (spec/validate.rs), where a pattern can say them.
    defs["Metadata"]["properties"]["name"]["pattern"] = json!("^[A-Za-z0-9_-]{1,128}$");
    defs["AppSpec"]["properties"]["storageId"]["pattern"] = json!("^[A-Za-z0-9_/-]{1,200}$");
    defs["Channel"]["properties"]["name"]["pattern"] = json!("^[A-Za-z0-9_-]{1,64}$");
    defs["Channel"]["properties"]["domain"]["pattern"] =
        json!("^([a-z0-9]+(-[a-z0-9]+)*\\.)+[a-z]{2,}$");
    defs["Channel"]["properties"]["range"]["minLength"] = json!(1);
    defs["Channel"]["properties"]["env"]["propertyNames"] =
        json!({ "pattern": "^[A-Za-z_][A-Za-z0-9_]*$" });
}
