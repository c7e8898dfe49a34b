//! Our invoice for a Spin app against the one `spin bindle push` writes for the same directory,
//! and what the REAL Bindle server then holds.
//!
//! Spin cannot run here, so the expected invoice is written out by hand from Spin's expander
//! (fermyon/spin v0.6–v1.5 `crates/{publish,bindle}/src/expander.rs`): the manifest parcel
//! first (`spin.<sha>.toml`, media type `application/vnd.fermyon.spin+toml`, annotation
//! `fermyon:spin:delete_on_write = "."`, no conditions); then one `application/wasm` parcel per
//! module, consecutive equal modules merged, `conditions = { memberOf = None }`; then one parcel
//! per asset per component, named by its path in the component's file system, media type from
//! `mime_guess`, `memberOf = ["files-<component>"]`, merged only when name, digest, size and
//! media type are all equal (then the groups are appended); one group per component.

use hippo_gitops_testkit as common;

use std::{collections::BTreeMap, fs, path::Path};

use common::Bed;
use hippo_gitops_core::package;
use sha2::{Digest, Sha256};

fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
}

fn sha(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

const WASM: &[u8] = b"\0asm\x01\0\0\0";
const API_WASM: &[u8] = b"\0asm\x01\0\0\0\0\x04\x03api";

/// Two components; equal files at several paths, empty files, an asset equal to a module, one
/// file mounted by both components, and a placement directory.
fn app(dir: &Path) {
    write(
        dir,
        "spin.toml",
        br#"spin_manifest_version = "1"
name = "dupes"
version = "1.0.0"
trigger = { type = "http", base = "/" }

[[component]]
id = "web"
source = "web.wasm"
files = ["static/**/*", { source = "shared", destination = "/shared" }]
[component.trigger]
route = "/..."

[[component]]
id = "api"
source = "api.wasm"
files = ["static/logo.png"]
[component.trigger]
route = "/api/..."
"#,
    );
    write(dir, "web.wasm", WASM);
    write(dir, "api.wasm", API_WASM);
    write(dir, "static/a.txt", b"same bytes");
    write(dir, "static/b.txt", b"same bytes");
    write(dir, "static/empty.txt", b"");
    write(dir, "static/img/.gitkeep", b"");
    write(dir, "static/logo.png", b"\x89PNG");
    write(dir, "static/web-copy.wasm", WASM);
    write(dir, "shared/a.txt", b"same bytes");
}

/// (name, sha, size, media type, memberOf) for every parcel after the manifest, in order.
type Row = (String, String, u64, String, Option<Vec<String>>);

fn expected_rows() -> Vec<Row> {
    let row = |name: &str, bytes: &[u8], media: &str, groups: Option<&[&str]>| -> Row {
        (
            name.to_string(),
            sha(bytes),
            bytes.len() as u64,
            media.to_string(),
            groups.map(|g| g.iter().map(|s| s.to_string()).collect()),
        )
    };
    vec![
        row("web.wasm", WASM, "application/wasm", None),
        row("api.wasm", API_WASM, "application/wasm", None),
        row(
            "shared/a.txt",
            b"same bytes",
            "text/plain",
            Some(&["files-web"]),
        ),
        row(
            "static/a.txt",
            b"same bytes",
            "text/plain",
            Some(&["files-web"]),
        ),
        row(
            "static/b.txt",
            b"same bytes",
            "text/plain",
            Some(&["files-web"]),
        ),
        row("static/empty.txt", b"", "text/plain", Some(&["files-web"])),
        row(
            "static/img/.gitkeep",
            b"",
            "application/octet-stream",
            Some(&["files-web"]),
        ),
        row(
            "static/logo.png",
            b"\x89PNG",
            "image/png",
            Some(&["files-web", "files-api"]),
        ),
        row(
            "static/web-copy.wasm",
            WASM,
            "application/wasm",
            Some(&["files-web"]),
        ),
    ]
}

fn rows(invoice: &bindle::Invoice) -> Vec<Row> {
    invoice.parcel.as_ref().unwrap()[1..]
        .iter()
        .map(|p| {
            (
                p.label.name.clone(),
                p.label.sha256.clone(),
                p.label.size,
                p.label.media_type.clone(),
                p.conditions.as_ref().and_then(|c| c.member_of.clone()),
            )
        })
        .collect()
}

fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort();
    rows
}

#[test]
fn invoice_matches_what_spin_bindle_push_writes() {
    let dir = tempfile::tempdir().unwrap();
    app(dir.path());
    let packed = package::load(dir.path()).unwrap();
    let parcels = packed.invoice.parcel.as_ref().unwrap();

    let manifest = &parcels[0];
    assert_eq!(manifest.label.media_type, package::SPIN_MANIFEST_MEDIA_TYPE);
    assert_eq!(
        manifest.label.name,
        format!("spin.{}.toml", manifest.label.sha256)
    );
    assert_eq!(
        manifest.label.annotations,
        Some(BTreeMap::from([(
            "fermyon:spin:delete_on_write".to_string(),
            ".".to_string()
        )]))
    );
    assert!(manifest.conditions.is_none());

    // Modules first, in component order; then the assets (Spin's order within one component
    // is the glob's; compared as a set there).
    let ours = rows(&packed.invoice);
    assert_eq!(ours[..2], expected_rows()[..2]);
    assert_eq!(sorted(ours), sorted(expected_rows()));
    for p in &parcels[1..3] {
        let c = p.conditions.as_ref().unwrap();
        assert!(c.member_of.is_none() && c.requires.is_none());
    }

    let groups: Vec<&str> = packed
        .invoice
        .group
        .iter()
        .flatten()
        .map(|g| g.name.as_str())
        .collect();
    assert_eq!(groups, ["files-web", "files-api"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_asset_path_reaches_the_real_bindle_server() {
    let bed = Bed::start().await;
    let dir = tempfile::tempdir().unwrap();
    app(dir.path());
    let packed = package::load(dir.path()).unwrap();
    let (ctx, _) = bed.context();
    let report = ctx.bindle.push(&packed).await.unwrap();
    // Six distinct contents (manifest, two modules, "same bytes", empty, the PNG; the module
    // copy shares web.wasm's bytes), each uploaded once; the empty one carries no bytes and
    // the report counts parcels that carried bytes.
    assert_eq!(report.uploaded_parcels, 5);

    // Read back as any Bindle client would, over HTTP.
    let http = reqwest::Client::new();
    let base = bed.bindle.url();
    let text = http
        .get(format!("{base}/_i/dupes/1.0.0"))
        .header("Accept", "application/toml")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let invoice: bindle::Invoice = toml::from_str(&text).unwrap();
    let names: Vec<String> = rows(&invoice).into_iter().map(|r| r.0).collect();
    for path in [
        "shared/a.txt",
        "static/a.txt",
        "static/b.txt",
        "static/empty.txt",
        "static/img/.gitkeep",
        "static/logo.png",
        "static/web-copy.wasm",
    ] {
        assert!(names.iter().any(|n| n == path), "{path} missing: {names:?}");
    }
    // Every parcel is there to fetch, at every name.
    for p in invoice.parcel.as_ref().unwrap() {
        let resp = http
            .get(format!("{base}/_i/dupes/1.0.0@{}", p.label.sha256))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", p.label.name);
        let bytes = resp.bytes().await.unwrap();
        assert_eq!(bytes.len() as u64, p.label.size, "{}", p.label.name);
    }
    assert_eq!(
        ctx.bindle
            .missing_parcels(&packed.id)
            .await
            .unwrap()
            .map(|m| m.len()),
        Some(0)
    );

    // Pushing the same directory again uploads nothing.
    let again = ctx
        .bindle
        .push(&package::load(dir.path()).unwrap())
        .await
        .unwrap();
    assert!(again.existed);
    assert_eq!(again.uploaded_parcels, 0);
}
