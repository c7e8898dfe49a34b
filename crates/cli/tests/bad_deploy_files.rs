//! Bad deploy files: each gives its exact `file:line:column: field: message`, exit 1, and no
//! request to Hippo or Bindle (a mock server that answers every request with 500 must see none).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use wiremock::{matchers::any, Mock, MockServer, ResponseTemplate};

const HEAD: &str = "apiVersion: hippo-gitops/v1\nkind: App\nmetadata:\n  name: weather\n";

struct Case {
    name: &'static str,
    /// (relative path, content) written under a fresh directory.
    files: Vec<(&'static str, String)>,
    /// Extra setup in the directory (symlinks, app dirs).
    setup: fn(&Path),
    /// Expected diagnostic lines, `{dir}` standing for the directory.
    expected: Vec<&'static str>,
    /// Pass `--root {dir}`.
    root: bool,
}

fn none(_: &Path) {}

fn spin_app(dir: &Path, name: &str, version: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("spin.toml"),
        format!("spin_manifest_version = \"1\"\nname = \"{name}\"\nversion = \"{version}\"\ntrigger = {{ type = \"http\", base = \"/\" }}\n[[component]]\nid = \"c\"\nsource = \"c.wasm\"\n[component.trigger]\nroute = \"/...\"\n"),
    )
    .unwrap();
    std::fs::write(dir.join("c.wasm"), b"\0asm\x01\0\0\0").unwrap();
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "yaml syntax error",
            files: vec![("a.yaml", format!("{HEAD}spec:\n  revisions: [ {{version: 1.0.0\n"))],
            setup: none,
            expected: vec!["{dir}/a.yaml:7:1: YAML syntax error: did not find expected ',' or '}'"],
            root: false,
        },
        Case {
            name: "unknown field, and the document's other problems still reported",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  channels:\n    - name: prod\n      rnage: \"^1\"\n      range: \"^^1\"\n"),
            )],
            setup: none,
            expected: vec![
                "{dir}/a.yaml:8:7: spec.channels[0].rnage: unknown field `rnage`, expected one of `name`, `range`, `revision`, `promote`, `domain`, `env`, `allowEmpty`, `rollback`",
                "{dir}/a.yaml:9:14: spec.channels[0].range: invalid node-semver range \"^^1\": ",
            ],
            root: false,
        },
        Case {
            name: "wrong type",
            files: vec![("a.yaml", format!("{HEAD}spec:\n  prune: \"yes\"\n"))],
            setup: none,
            expected: vec!["{dir}/a.yaml:6:10: spec.prune: invalid type: string \"yes\", expected a boolean"],
            root: false,
        },
        Case {
            name: "invalid app name",
            files: vec![(
                "a.yaml",
                "apiVersion: hippo-gitops/v1\nkind: App\nmetadata:\n  name: weather.app\nspec:\n  storageId: weather\n".into(),
            )],
            setup: none,
            expected: vec!["{dir}/a.yaml:4:9: metadata.name: \"weather.app\" is not a valid Hippo app name (letters, digits, '-' and '_', 1 to 128 characters)"],
            root: false,
        },
        Case {
            name: "storageId with a dot",
            files: vec![("a.yaml", format!("{HEAD}spec:\n  storageId: weather.v2\n"))],
            setup: none,
            expected: vec!["{dir}/a.yaml:6:14: spec.storageId: \"weather.v2\" is not a valid storageId (letters, digits, '-', '_' and '/', 1 to 200 characters; Hippo's revision registration rejects '.')"],
            root: false,
        },
        Case {
            name: "semver crate range syntax instead of node-semver",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  channels:\n    - name: prod\n      range: \">=1.0.0, <2.0.0\"\n"),
            )],
            setup: none,
            expected: vec!["{dir}/a.yaml:8:14: spec.channels[0].range: invalid node-semver range \">=1.0.0, <2.0.0\": comparators are separated by spaces, not commas (write \">=1.0.0 <2.0.0\")"],
            root: false,
        },
        Case {
            name: "invalid version",
            files: vec![("a.yaml", format!("{HEAD}spec:\n  revisions:\n    - version: \"1.0\"\n"))],
            setup: none,
            expected: vec!["{dir}/a.yaml:7:16: spec.revisions[0].version: invalid semantic version \"1.0\": "],
            root: false,
        },
        Case {
            name: "both range and revision, and neither",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  revisions:\n    - version: 1.0.0\n  channels:\n    - name: a\n      range: \"*\"\n      revision: 1.0.0\n    - name: b\n"),
            )],
            setup: none,
            expected: vec![
                "{dir}/a.yaml:9:7: spec.channels[0]: set exactly one of `range`, `revision` or `promote`",
                "{dir}/a.yaml:12:7: spec.channels[1]: set exactly one of `range`, `revision` or `promote`",
            ],
            root: false,
        },
        Case {
            name: "promote beside range or revision (and no cycle reported for them)",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  revisions:\n    - version: 1.0.0\n  channels:\n    - name: a\n      range: \"*\"\n      promote:\n        from: b\n        after: 1m\n    - name: b\n      revision: 1.0.0\n      promote:\n        from: a\n        after: 1m\n"),
            )],
            setup: none,
            expected: vec![
                "{dir}/a.yaml:9:7: spec.channels[0]: set exactly one of `range`, `revision` or `promote`",
                "{dir}/a.yaml:14:7: spec.channels[1]: set exactly one of `range`, `revision` or `promote`",
            ],
            root: false,
        },
        Case {
            name: "discover beside version, neither, a duplicate range and an invalid one",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  revisions:\n    - version: 1.0.0\n      discover: \">=1.0.0\"\n    - discover: \">=1.0.0\"\n    - {{}}\n    - discover: ^1.0.0\n    - discover: \">=1.0.0\"\n    - discover: \">=1.0.0, <2.0.0\"\n"),
            )],
            setup: none,
            expected: vec![
                "{dir}/a.yaml:7:7: spec.revisions[0]: set exactly one of `version`, `path` or `discover`",
                "{dir}/a.yaml:10:7: spec.revisions[2]: set exactly one of `version`, `path` or `discover`",
                "{dir}/a.yaml:12:17: spec.revisions[4].discover: discover range \">=1.0.0\" is listed twice (also at spec.revisions[1].discover)",
                "{dir}/a.yaml:13:17: spec.revisions[5].discover: invalid node-semver range \">=1.0.0, <2.0.0\": comparators are separated by spaces, not commas (write \">=1.0.0 <2.0.0\")",
            ],
            root: false,
        },
        Case {
            name: "rollback with a pinned revision",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  revisions:\n    - version: 1.0.0\n  channels:\n    - name: a\n      revision: 1.0.0\n      rollback: true\n    - name: b\n      revision: 1.0.0\n      rollback: false\n"),
            )],
            setup: none,
            expected: vec!["{dir}/a.yaml:11:17: spec.channels[0].rollback: `rollback` goes only with `range` or `promote`: a pinned revision is never moved, so there is nothing to roll back"],
            root: false,
        },
        Case {
            name: "rollback and expectStatus of the wrong type",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  channels:\n    - name: a\n      range: \"*\"\n      rollback: \"yes\"\n    - name: b\n      promote:\n        from: a\n        after: 1m\n        check:\n          url: https://{{domain}}/\n          expectStatus: \"200\"\n"),
            )],
            setup: none,
            expected: vec![
                "{dir}/a.yaml:9:17: spec.channels[0].rollback: invalid type: string \"yes\", expected a boolean",
                "{dir}/a.yaml:16:25: spec.channels[1].promote.check.expectStatus: invalid type: string \"200\", expected an integer",
            ],
            root: false,
        },
        Case {
            name: "promote from itself and from a channel that does not exist",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  channels:\n    - name: canary\n      promote:\n        from: canary\n        after: 1m\n    - name: production\n      promote:\n        from: canry\n        after: 1m\n"),
            )],
            setup: none,
            expected: vec![
                "{dir}/a.yaml:9:15: spec.channels[0].promote.from: channel \"canary\" promotes from itself; name another channel of app \"weather\"",
                "{dir}/a.yaml:13:15: spec.channels[1].promote.from: \"canry\" is not a channel of app \"weather\"",
            ],
            root: false,
        },
        Case {
            name: "promotion cycles, each reported once at its first channel, names in order",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  channels:\n    - name: a\n      promote:\n        from: b\n        after: 1m\n    - name: b\n      promote:\n        from: a\n        after: 1m\n    - name: f\n      promote:\n        from: d\n        after: 1m\n    - name: c\n      promote:\n        from: d\n        after: 1m\n    - name: d\n      promote:\n        from: e\n        after: 1m\n    - name: e\n      promote:\n        from: c\n        after: 1m\n"),
            )],
            setup: none,
            expected: vec![
                "{dir}/a.yaml:9:15: spec.channels[0].promote.from: promotions form a cycle: a → b → a (each promotes from the next); one of them must follow a `range` or a `revision`",
                "{dir}/a.yaml:21:15: spec.channels[3].promote.from: promotions form a cycle: c → d → e → c (each promotes from the next); one of them must follow a `range` or a `revision`",
            ],
            root: false,
        },
        Case {
            name: "promote durations: not a duration, and a zero interval",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  channels:\n    - name: canary\n      range: \"*\"\n    - name: production\n      promote:\n        from: canary\n        after: 10d\n        check:\n          url: https://{{domain}}/health\n          interval: 0s\n    - name: eu\n      promote:\n        from: canary\n        after: 0s\n        check:\n          url: https://{{domain}}/health\n          interval: soon\n"),
            )],
            setup: none,
            expected: vec![
                "{dir}/a.yaml:12:16: spec.channels[1].promote.after: invalid duration \"10d\": use ms, s, m or h",
                "{dir}/a.yaml:15:21: spec.channels[1].promote.check.interval: must be more than 0s (the time between two tries of the probe)",
                "{dir}/a.yaml:22:21: spec.channels[2].promote.check.interval: invalid duration \"soon\"",
            ],
            root: false,
        },
        Case {
            name: "promote without after, check without url",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  channels:\n    - name: canary\n      range: \"*\"\n    - name: production\n      promote:\n        from: canary\n        check:\n          interval: 15s\n"),
            )],
            setup: none,
            expected: vec![
                "{dir}/a.yaml:11:9: spec.channels[1].promote: missing field `after`",
                "{dir}/a.yaml:13:11: spec.channels[1].promote.check: missing field `url`",
            ],
            root: false,
        },
        Case {
            name: "probe URLs and statuses",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  channels:\n    - name: canary\n      range: \"*\"\n    - name: production\n      promote:\n        from: canary\n        after: 1m\n        check:\n          url: ftp://{{domain}}/health\n          expectStatus: 700\n    - name: eu\n      promote:\n        from: canary\n        after: 1m\n        check:\n          url: https://{{domain}}:{{port}}/health\n          expectStatus: 99\n    - name: us\n      promote:\n        from: canary\n        after: 1m\n        check:\n          url: health\n"),
            )],
            setup: none,
            expected: vec![
                "{dir}/a.yaml:14:16: spec.channels[1].promote.check.url: \"ftp://{domain}/health\" is not an http or https URL (the scheme is \"ftp\")",
                "{dir}/a.yaml:15:25: spec.channels[1].promote.check.expectStatus: 700 is not an HTTP status code (100 to 599)",
                "{dir}/a.yaml:21:16: spec.channels[2].promote.check.url: \"https://{domain}:{port}/health\" has `{port}`: the only placeholder is `{domain}` (the `from` channel's domain)",
                "{dir}/a.yaml:22:25: spec.channels[2].promote.check.expectStatus: 99 is not an HTTP status code (100 to 599)",
                "{dir}/a.yaml:28:16: spec.channels[3].promote.check.url: \"health\" is not a URL: relative URL without a base",
            ],
            root: false,
        },
        Case {
            name: "unknown fields in promote and check",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  channels:\n    - name: canary\n      range: \"*\"\n    - name: production\n      promote:\n        from: canary\n        after: 1m\n        wait: 5m\n        check:\n          url: https://{{domain}}/\n          status: 200\n"),
            )],
            setup: none,
            expected: vec![
                "{dir}/a.yaml:13:9: spec.channels[1].promote.wait: unknown field `wait`, expected one of `from`, `after`, `check`",
                "{dir}/a.yaml:16:11: spec.channels[1].promote.check.status: unknown field `status`, expected one of `url`, `expectStatus`, `interval`",
            ],
            root: false,
        },
        Case {
            name: "duplicate app across files",
            files: vec![
                ("a.yaml", format!("{HEAD}spec: {{}}\n")),
                ("b.yaml", format!("# the same app again\n{HEAD}spec: {{}}\n")),
            ],
            setup: none,
            expected: vec!["{dir}/b.yaml:5:9: metadata.name: app \"weather\" is already defined at {dir}/a.yaml:4"],
            root: false,
        },
        Case {
            name: "duplicate channel",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  channels:\n    - name: prod\n      range: \"*\"\n    - name: prod\n      range: \"^1\"\n"),
            )],
            setup: none,
            expected: vec!["{dir}/a.yaml:9:13: spec.channels[1].name: channel \"prod\" is listed twice in app \"weather\""],
            root: false,
        },
        Case {
            name: "duplicate domain across apps in one file",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  channels:\n    - name: prod\n      range: \"*\"\n      domain: w.example.com\n---\napiVersion: hippo-gitops/v1\nkind: App\nmetadata:\n  name: other\nspec:\n  channels:\n    - name: prod\n      range: \"*\"\n      domain: w.example.com\n"),
            )],
            setup: none,
            expected: vec!["{dir}/a.yaml:19:15: spec.channels[0].domain: domain \"w.example.com\" is already used at {dir}/a.yaml:9"],
            root: false,
        },
        Case {
            name: "invalid domain",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  channels:\n    - name: prod\n      range: \"*\"\n      domain: Weather.Example.com\n"),
            )],
            setup: none,
            expected: vec!["{dir}/a.yaml:9:15: spec.channels[0].domain: \"Weather.Example.com\" is not a valid domain (lowercase labels of letters, digits and single '-', and a top-level domain of 2+ letters)"],
            root: false,
        },
        Case {
            name: "pinned revision not listed",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  revisions:\n    - version: 1.0.0\n  channels:\n    - name: canary\n      revision: 1.1.0\n"),
            )],
            setup: none,
            expected: vec!["{dir}/a.yaml:10:17: spec.channels[0].revision: revision 1.1.0 is not listed in spec.revisions"],
            root: false,
        },
        Case {
            name: "path that does not exist",
            files: vec![("a.yaml", format!("{HEAD}spec:\n  revisions:\n    - path: apps/nope\n"))],
            setup: none,
            expected: vec!["{dir}/a.yaml:7:13: spec.revisions[0].path: {dir}/apps/nope does not exist"],
            root: false,
        },
        Case {
            name: "path that is neither a Spin app nor a bindle",
            files: vec![
                ("a.yaml", format!("{HEAD}spec:\n  revisions:\n    - path: apps/empty\n")),
                ("apps/empty/README", "nothing here".into()),
            ],
            setup: none,
            expected: vec!["{dir}/a.yaml:7:13: spec.revisions[0].path: {dir}/apps/empty is neither a Spin app (spin.toml) nor a standalone bindle (invoice.toml)"],
            root: false,
        },
        Case {
            name: "path escaping the root through ..",
            files: vec![("repo/a.yaml", format!("{HEAD}spec:\n  revisions:\n    - path: ../outside\n"))],
            setup: |d| spin_app(&d.join("outside"), "weather", "1.0.0"),
            expected: vec!["{dir}/repo/a.yaml:7:13: spec.revisions[0].path: {dir}/outside is outside the repository root {dir}/repo"],
            root: true,
        },
        Case {
            name: "path escaping the root through a symlink",
            files: vec![("repo/a.yaml", format!("{HEAD}spec:\n  revisions:\n    - path: apps/link\n"))],
            setup: |d| {
                spin_app(&d.join("outside"), "weather", "1.0.0");
                std::fs::create_dir_all(d.join("repo/apps")).unwrap();
                std::os::unix::fs::symlink(d.join("outside"), d.join("repo/apps/link")).unwrap();
            },
            expected: vec!["{dir}/repo/a.yaml:7:13: spec.revisions[0].path: {dir}/repo/apps/link resolves through a symlink to {dir}/outside, outside the repository root {dir}/repo"],
            root: true,
        },
        Case {
            name: "bindle name differs from storageId",
            files: vec![("a.yaml", format!("{HEAD}spec:\n  revisions:\n    - path: app\n"))],
            setup: |d| spin_app(&d.join("app"), "forecast", "1.0.0"),
            expected: vec!["{dir}/a.yaml:7:13: spec.revisions[0].path: the bindle at {dir}/app is named \"forecast\", but this app's storageId is \"weather\"; they must be equal"],
            root: false,
        },
        Case {
            name: "wrong apiVersion and kind",
            files: vec![(
                "a.yaml",
                "apiVersion: hippo-gitops/v2\nkind: Channel\nmetadata:\n  name: weather\nspec: {}\n".into(),
            )],
            setup: none,
            expected: vec![
                "{dir}/a.yaml:1:13: apiVersion: unsupported apiVersion \"hippo-gitops/v2\"; expected \"hippo-gitops/v1\"",
                "{dir}/a.yaml:2:7: kind: unknown kind \"Channel\"; expected \"App\"",
            ],
            root: false,
        },
        Case {
            name: "empty range",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  channels:\n    - name: prod\n      range: \"\"\n"),
            )],
            setup: none,
            expected: vec!["{dir}/a.yaml:8:14: spec.channels[0].range: must not be empty (Hippo rejects an empty range rule)"],
            root: false,
        },
        Case {
            name: "names that make Hippo's default domain invalid",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  channels:\n    - name: prod-\n      range: \"*\"\n"),
            )],
            setup: none,
            expected: vec!["{dir}/a.yaml:7:13: spec.channels[0].name: Hippo derives a default domain from the app and channel names, and these names make it invalid (a name starting or ending with '-' or '_', or with '--'); set `domain`"],
            root: false,
        },
        Case {
            name: "same version pushed with different content from two apps",
            files: vec![(
                "a.yaml",
                format!("{HEAD}spec:\n  revisions:\n    - path: one\n---\napiVersion: hippo-gitops/v1\nkind: App\nmetadata:\n  name: weather-staging\nspec:\n  storageId: weather\n  revisions:\n    - path: two\n"),
            )],
            setup: |d| {
                spin_app(&d.join("one"), "weather", "1.0.0");
                spin_app(&d.join("two"), "weather", "1.0.0");
                std::fs::write(d.join("two/c.wasm"), b"\0asm\x01\0\0\0different").unwrap();
            },
            expected: vec!["{dir}/a.yaml:16:13: spec.revisions[0].path: weather/1.0.0 is also built at {dir}/a.yaml:7 with different content; bump the version of one of them"],
            root: false,
        },
    ]
}

fn write_case(dir: &Path, case: &Case) {
    for (rel, content) in &case.files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    (case.setup)(dir);
}

fn run(args: &[&str], env: &[(&str, String)], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hippo-gitops"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("HIPPO_TOKEN")
        .env_remove("HIPPO_PASSWORD")
        .current_dir(cwd)
        .output()
        .expect("runs the binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_deploy_file_is_reported_exactly_and_nothing_is_contacted() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    let cases = cases();
    assert!(cases.len() >= 12);
    for case in &cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir: PathBuf = tmp.path().canonicalize().unwrap();
        write_case(&dir, case);
        let target = if case.files[0].0.starts_with("repo/") {
            dir.join("repo")
        } else {
            dir.clone()
        };
        let target_s = target.to_string_lossy().into_owned();
        let mut base_args = vec!["-f", target_s.as_str()];
        if case.root {
            base_args.extend(["--root", target_s.as_str()]);
        }
        let dir_s = dir.to_string_lossy().into_owned();
        let expected: Vec<String> = case
            .expected
            .iter()
            .map(|e| e.replace("{dir}", &dir_s))
            .collect();

        let env = [
            ("HIPPO_URL", server.uri()),
            ("HIPPO_USERNAME", "admin".to_string()),
            ("HIPPO_PASSWORD", "password".to_string()),
            ("BINDLE_SERVER_URL", format!("{}/v1", server.uri())),
            (
                "HIPPO_GITOPS_STATE_DIR",
                dir.join(".state").to_string_lossy().into_owned(),
            ),
        ];
        for command in [vec!["validate"], vec!["plan"], vec!["reconcile", "--once"]] {
            let mut args = command.clone();
            args.extend(base_args.iter().copied());
            let (code, stdout, stderr) = run(&args, &env, &dir);
            assert_eq!(
                code, 1,
                "{}: {command:?} exit code\nstderr:\n{stderr}",
                case.name
            );
            assert!(
                stdout.is_empty(),
                "{}: {command:?} printed on stdout: {stdout}",
                case.name
            );
            let lines: Vec<&str> = stderr
                .lines()
                .filter(|l| !l.starts_with("error: "))
                .collect();
            assert_eq!(
                lines.len(),
                expected.len(),
                "{}: {command:?}: expected\n{}\ngot\n{stderr}",
                case.name,
                expected.join("\n")
            );
            for (line, want) in lines.iter().zip(&expected) {
                // A trailing ": " in the table means "the library's own wording follows".
                let ok = if want.ends_with(": ") {
                    line.starts_with(want.as_str())
                } else {
                    line == want
                };
                assert!(
                    ok,
                    "{}: {command:?}\nexpected: {want}\n     got: {line}",
                    case.name
                );
            }
            assert!(
                stderr.contains("nothing was contacted or changed"),
                "{}: {stderr}",
                case.name
            );
        }
        assert!(
            !dir.join(".state").exists(),
            "{}: no state (signing key) is written for a bad deploy file",
            case.name
        );
    }
    // `expect(0)` is verified when the server drops; check explicitly for a clear message.
    assert_eq!(
        server.received_requests().await.unwrap_or_default().len(),
        0
    );
}

#[test]
fn the_example_deploy_specs_validate() {
    let root = &hippo_gitops_testkit::repo_root();
    let (code, stdout, stderr) = run(
        &["validate", "-f", "deploy-specs/", "--root", "."],
        &[],
        root,
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        "valid: 2 app(s), 3 revision(s), 3 channel(s)"
    );
}
