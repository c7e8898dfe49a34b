//! `kind: Notification` documents: where the controller sends events, configured in Git
//! beside the apps. Decoded and checked like app documents (every problem at its
//! `file:line:column`), and part of the JSON Schema.
//!
//! ```yaml
//! apiVersion: hippo-gitops/v1
//! kind: Notification
//! metadata:
//!   name: team-alerts
//! spec:
//!   type: webhook                  # webhook | slack | github | gitlab
//!   addressFromEnv: ALERTS_URL     # from the controller's environment, never from Git
//!   secretFromEnv: ALERTS_SECRET   # webhook: HMAC key; github/gitlab: API token; slack: none
//!   events: [Ready, Failed]        # default: all
//!   apps: ["weather", "billing-*"] # globs; default: all
//!   repository: org/deploy         # github: owner/repo; gitlab: project id or path
//! ```

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Value};

use super::{
    decode::{Decoder, Problem},
    excerpt::quoted,
    validate::{is_env_key, is_name},
    yaml::{Node, NodeKind},
    Diagnostic, Origin, ParsedDocument, API_VERSION,
};
use crate::events::{Event, EventType};

/// The document kind.
pub const KIND: &str = "Notification";

/// Where notifications go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotificationType {
    /// `POST` of the event as JSON, signed `X-Signature-256: sha256=<hex HMAC of the body>`.
    Webhook,
    /// A Slack incoming webhook (the address is the webhook URL).
    Slack,
    /// GitHub commit statuses (the address is the API root).
    GitHub,
    /// GitLab commit statuses (the address is the API root, `…/api/v4`).
    GitLab,
}

impl NotificationType {
    pub const ALL: [NotificationType; 4] = [
        NotificationType::Webhook,
        NotificationType::Slack,
        NotificationType::GitHub,
        NotificationType::GitLab,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NotificationType::Webhook => "webhook",
            NotificationType::Slack => "slack",
            NotificationType::GitHub => "github",
            NotificationType::GitLab => "gitlab",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Commit statuses: only events with a commit (a Git source) can be sent.
    pub fn needs_commit(self) -> bool {
        matches!(self, NotificationType::GitHub | NotificationType::GitLab)
    }
}

/// One validated Notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationSpec {
    pub name: String,
    pub kind: NotificationType,
    /// The environment variable holding the address (a URL: the receiver, Slack's webhook,
    /// or the GitHub/GitLab API root).
    pub address_from_env: String,
    /// The environment variable holding the HMAC key (webhook) or API token (github, gitlab).
    pub secret_from_env: Option<String>,
    /// The event types sent; all when the document names none.
    pub events: BTreeSet<EventType>,
    /// App name globs; every app when the document names none.
    pub apps: Vec<glob::Pattern>,
    /// GitHub `owner/repo`, GitLab project id or `group/project` path.
    pub repository: Option<String>,
    pub origin: Origin,
}

impl NotificationSpec {
    /// Whether `event` goes to this receiver.
    pub fn wants(&self, event: &Event) -> bool {
        self.events.contains(&event.kind)
            && (self.apps.is_empty()
                || event.app.is_empty()
                || self.apps.iter().any(|p| p.matches(&event.app)))
            && (!self.kind.needs_commit() || event.commit.is_some())
    }
}

/// As written (schema and decoding).
#[derive(Debug, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields, rename = "Notification")]
pub struct RawNotification {
    /// Always `hippo-gitops/v1`.
    api_version: String,
    /// Always `Notification`.
    kind: String,
    metadata: RawNotificationMetadata,
    spec: RawNotificationSpec,
}

/// Identifies the notification.
#[derive(Debug, schemars::JsonSchema)]
#[schemars(deny_unknown_fields, rename = "NotificationMetadata")]
struct RawNotificationMetadata {
    /// Unique among the Notification documents.
    name: String,
}

/// Where events go and which.
#[derive(Debug, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields, rename = "NotificationSpec")]
struct RawNotificationSpec {
    /// `webhook`, `slack`, `github` or `gitlab`.
    r#type: String,
    /// The controller's environment variable that holds the address (never in Git).
    address_from_env: String,
    /// The environment variable that holds the webhook's HMAC key or the GitHub/GitLab token
    /// (not for slack: its URL is the secret).
    secret_from_env: Option<String>,
    /// Event types to send (default: all).
    events: Option<Vec<String>>,
    /// App name globs (default: all apps).
    apps: Option<Vec<String>>,
    /// github: `owner/repo`; gitlab: the project id or path.
    repository: Option<String>,
}

const DOCUMENT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
const METADATA_FIELDS: &[&str] = &["name"];
const SPEC_FIELDS: &[&str] = &[
    "type",
    "addressFromEnv",
    "secretFromEnv",
    "events",
    "apps",
    "repository",
];

/// Whether a document says `kind: Notification` (it is then decoded as one).
pub(super) fn is_notification(root: &Node) -> bool {
    let NodeKind::Map(entries) = &root.kind else {
        return false;
    };
    entries.iter().any(|(k, v)| {
        matches!((&k.kind, &v.kind), (NodeKind::Scalar { text: key, .. }, NodeKind::Scalar { text, .. }) if key == "kind" && text == KIND)
    })
}

/// Decodes one Notification document, reporting every type error and unknown field.
pub(super) fn decode(root: &Node, problems: &mut Vec<Problem>) -> Option<RawNotification> {
    let mut d = Decoder {
        problems,
        failed: false,
    };
    let f = d.fields(root, "", DOCUMENT_FIELDS)?;
    let api_version = d.required_string(&f, "apiVersion");
    let kind = d.required_string(&f, "kind");
    let metadata = d.required(&f, "metadata").and_then(|m| {
        let mf = d.fields(m, "metadata", METADATA_FIELDS)?;
        Some(RawNotificationMetadata {
            name: d.required_string(&mf, "name")?,
        })
    });
    let spec = d.required(&f, "spec").and_then(|s| {
        let sf = d.fields(s, "spec", SPEC_FIELDS)?;
        let strings = |d: &mut Decoder, name| {
            d.get(&sf, name)?;
            Some(d.list(&sf, name, |d, n, path| d.string(n, path)))
        };
        let events = strings(&mut d, "events");
        let apps = strings(&mut d, "apps");
        Some(RawNotificationSpec {
            r#type: d.required_string(&sf, "type")?,
            address_from_env: d.required_string(&sf, "addressFromEnv")?,
            secret_from_env: d.opt_string(&sf, "secretFromEnv"),
            events,
            apps,
            repository: d.opt_string(&sf, "repository"),
        })
    });
    let raw = RawNotification {
        api_version: api_version?,
        kind: kind?,
        metadata: metadata?,
        spec: spec?,
    };
    (!d.failed).then_some(raw)
}

/// Checks the decoded Notifications; problems go to `problems`, each at its line.
pub(super) fn validate(
    docs: Vec<ParsedDocument<RawNotification>>,
    problems: &mut Vec<Diagnostic>,
) -> Vec<NotificationSpec> {
    let mut names: HashMap<String, Origin> = HashMap::new();
    let mut out = Vec::new();
    for doc in &docs {
        let raw = &doc.raw;
        // Documents are routed here by their kind.
        debug_assert_eq!(raw.kind, KIND);
        let spec = &raw.spec;
        let before = problems.len();
        let mut problem = |field: &str, message: String| problems.push(doc.diag(field, message));
        if raw.api_version != API_VERSION {
            problem(
                "apiVersion",
                format!(
                    "unsupported apiVersion {}; expected {API_VERSION:?}",
                    quoted(&raw.api_version)
                ),
            );
        }
        let name = &raw.metadata.name;
        let origin = Origin {
            file: doc.file.clone(),
            line: doc.positions.of("metadata.name").line,
        };
        if !is_name(name, 128) {
            problem(
                "metadata.name",
                format!("{} is not a valid notification name (letters, digits, '-' and '_', 1 to 128 characters)", quoted(name)),
            );
        } else if let Some(prev) = names.get(name) {
            problem(
                "metadata.name",
                format!("notification {name:?} is already defined at {prev}"),
            );
        } else {
            names.insert(name.clone(), origin.clone());
        }
        let kind = NotificationType::parse(&spec.r#type);
        if kind.is_none() {
            problem(
                "spec.type",
                format!(
                    "unknown type {}; expected one of webhook, slack, github, gitlab",
                    quoted(&spec.r#type)
                ),
            );
        }
        let env_name = |problem: &mut dyn FnMut(&str, String), field: &str, value: &str| {
            if !is_env_key(value) {
                problem(
                    field,
                    format!(
                        "{} is not an environment variable name (the value is read from the controller's environment, never written in Git)",
                        quoted(value)
                    ),
                );
            }
        };
        env_name(&mut problem, "spec.addressFromEnv", &spec.address_from_env);
        match (&spec.secret_from_env, kind) {
            (Some(_), Some(NotificationType::Slack)) => {
                problem(
                    "spec.secretFromEnv",
                    "slack takes no secret: its webhook URL (addressFromEnv) is the secret".into(),
                );
            }
            (Some(s), _) => env_name(&mut problem, "spec.secretFromEnv", s),
            (None, Some(t)) if t != NotificationType::Slack => problem(
                "spec",
                format!(
                    "missing field `secretFromEnv`: a {} notification needs {}",
                    t.name(),
                    if t == NotificationType::Webhook {
                        "an HMAC key to sign its requests with"
                    } else {
                        "an API token"
                    }
                ),
            ),
            (None, _) => {}
        }
        let mut events = BTreeSet::new();
        for (i, e) in spec.events.iter().flatten().enumerate() {
            match EventType::parse(e) {
                Some(t) => {
                    events.insert(t);
                }
                None => problem(
                    &format!("spec.events[{i}]"),
                    format!(
                        "unknown event type {}; expected one of {}",
                        quoted(e),
                        EventType::ALL.map(|t| t.name()).join(", ")
                    ),
                ),
            }
        }
        if spec.events.is_none() {
            events.extend(EventType::ALL);
        } else if spec.events.as_ref().is_some_and(|e| e.is_empty()) {
            problem(
                "spec.events",
                "an empty list sends nothing; leave `events` out to send every event type".into(),
            );
        }
        let mut apps = Vec::new();
        for (i, a) in spec.apps.iter().flatten().enumerate() {
            match glob::Pattern::new(a) {
                Ok(p) => apps.push(p),
                Err(e) => problem(
                    &format!("spec.apps[{i}]"),
                    format!("{} is not a valid glob: {}", quoted(a), e.msg),
                ),
            }
        }
        match (kind, &spec.repository) {
            (Some(NotificationType::GitHub), Some(r)) if !is_github_repository(r) => problem(
                "spec.repository",
                format!("{} is not a GitHub repository: write owner/repo", quoted(r)),
            ),
            (Some(NotificationType::GitLab), Some(r)) if !is_gitlab_project(r) => problem(
                "spec.repository",
                format!(
                    "{} is not a GitLab project: write its numeric id or its path (group/project)",
                    quoted(r)
                ),
            ),
            (Some(t), None) if t.needs_commit() => problem(
                "spec",
                format!(
                    "missing field `repository`: a {} notification sets commit statuses in it",
                    t.name()
                ),
            ),
            (Some(t), Some(_)) if !t.needs_commit() => problem(
                "spec.repository",
                format!(
                    "only github and gitlab notifications take a repository, not {}",
                    t.name()
                ),
            ),
            _ => {}
        }
        if let (true, Some(kind)) = (problems.len() == before, kind) {
            out.push(NotificationSpec {
                name: name.clone(),
                kind,
                address_from_env: spec.address_from_env.clone(),
                secret_from_env: spec.secret_from_env.clone(),
                events,
                apps,
                repository: spec.repository.clone(),
                origin,
            });
        }
    }
    out
}

fn repo_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_github_repository(r: &str) -> bool {
    matches!(r.split_once('/'), Some((owner, repo)) if repo_part(owner) && repo_part(repo))
}

fn is_gitlab_project(r: &str) -> bool {
    (!r.is_empty() && r.chars().all(|c| c.is_ascii_digit()))
        || (r.contains('/') && r.split('/').all(repo_part))
}

/// Adds the Notification document to the deploy file schema: the root becomes "an App, or a
/// Notification when `kind` says so".
pub(super) fn extend_schema(schema: &mut Value) {
    let mut notification =
        serde_json::to_value(schemars::schema_for!(RawNotification)).expect("a schema serialises");
    let defs = notification
        .as_object_mut()
        .and_then(|o| o.remove("definitions"));
    let Value::Object(root) = schema else {
        return;
    };
    let mut app = serde_json::Map::new();
    for key in [
        "type",
        "title",
        "description",
        "required",
        "properties",
        "additionalProperties",
        "oneOf",
    ] {
        if let Some(v) = root.remove(key) {
            app.insert(key.into(), v);
        }
    }
    let props = &mut notification["properties"];
    props["apiVersion"]["const"] = json!(API_VERSION);
    props["kind"]["const"] = json!(KIND);
    notification
        .as_object_mut()
        .expect("an object")
        .remove("$schema");
    notification["title"] = json!("hippo-gitops Notification");
    root.insert(
        "title".into(),
        app.get("title").cloned().unwrap_or_default(),
    );
    if let Some(title) = app.get_mut("title") {
        *title = json!("hippo-gitops App");
    }
    let definitions = root
        .entry("definitions")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("definitions is an object");
    if let Some(Value::Object(defs)) = defs {
        definitions.extend(defs);
    }
    definitions.insert("App".into(), Value::Object(app));
    definitions.insert("Notification".into(), notification);
    let spec = &mut definitions
        .get_mut("NotificationSpec")
        .expect("the spec's definition")["properties"];
    spec["type"]["enum"] = json!(NotificationType::ALL.map(|t| t.name()));
    spec["events"]["items"]["enum"] = json!(EventType::ALL.map(|t| t.name()));
    spec["addressFromEnv"]["pattern"] = json!("^[A-Za-z_][A-Za-z0-9_]*$");
    spec["secretFromEnv"]["pattern"] = json!("^[A-Za-z_][A-Za-z0-9_]*$");
    root.insert(
        "if".into(),
        json!({ "properties": { "kind": { "const": KIND } }, "required": ["kind"] }),
    );
    root.insert(
        "then".into(),
        json!({ "$ref": "#/definitions/Notification" }),
    );
    root.insert("else".into(), json!({ "$ref": "#/definitions/App" }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{load, LoadOptions};
    use chrono::Utc;

    fn load_text(text: &str) -> Result<crate::spec::DesiredState, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alerts.yaml");
        std::fs::write(&file, text).unwrap();
        load(&[file], &LoadOptions::default()).map_err(|d| {
            d.0.iter()
                .map(|p| {
                    let s = p.to_string();
                    s[s.find("alerts.yaml:").unwrap()..].to_string()
                })
                .collect()
        })
    }

    const APP: &str =
        "apiVersion: hippo-gitops/v1\nkind: App\nmetadata:\n  name: weather\nspec: {}\n---\n";

    #[test]
    fn a_notification_beside_an_app_is_loaded() {
        let state = load_text(&format!(
            "{APP}apiVersion: hippo-gitops/v1\nkind: Notification\nmetadata:\n  name: team-alerts\nspec:\n  type: webhook\n  addressFromEnv: ALERTS_URL\n  secretFromEnv: ALERTS_SECRET\n  events: [Ready, Failed]\n  apps: [\"weather\", \"billing-*\"]\n"
        ))
        .unwrap();
        assert_eq!(state.apps.len(), 1);
        let n = &state.notifications[0];
        assert_eq!(n.name, "team-alerts");
        assert_eq!(n.kind, NotificationType::Webhook);
        assert_eq!(n.origin.line, 10);
        let e = |app: &str, kind| Event::new(Utc::now(), app, kind, "r", "m");
        assert!(n.wants(&e("weather", EventType::Ready)));
        assert!(n.wants(&e("billing-eu", EventType::Failed)));
        assert!(!n.wants(&e("billing-eu", EventType::Applied)));
        assert!(!n.wants(&e("other", EventType::Ready)));
    }

    #[test]
    fn defaults_send_every_event_of_every_app_and_commit_statuses_need_a_commit() {
        let state = load_text(
            "apiVersion: hippo-gitops/v1\nkind: Notification\nmetadata:\n  name: pr\nspec:\n  type: github\n  addressFromEnv: GITHUB_API\n  secretFromEnv: GITHUB_TOKEN\n  repository: org/deploy\n",
        )
        .unwrap();
        let n = &state.notifications[0];
        assert_eq!(n.events.len(), EventType::ALL.len());
        let e = Event::new(Utc::now(), "any", EventType::Applied, "r", "m");
        assert!(!n.wants(&e));
        assert!(n.wants(&e.at_commit(Some("abc"))));
    }

    #[test]
    fn every_mistake_is_reported_at_its_line() {
        let problems = load_text(
            "apiVersion: hippo-gitops/v1\nkind: Notification\nmetadata:\n  name: bad name\nspec:\n  type: teams\n  addressFromEnv: alerts-url\n  events: [Ready, Exploded]\n  apps: [\"[\"]\n  repository: org/deploy\n  colour: red\n",
        )
        .unwrap_err();
        assert_eq!(
            problems,
            [
                "alerts.yaml:11:3: spec.colour: unknown field `colour`, expected one of `type`, `addressFromEnv`, `secretFromEnv`, `events`, `apps`, `repository`",
                "alerts.yaml:4:9: metadata.name: \"bad name\" is not a valid notification name (letters, digits, '-' and '_', 1 to 128 characters)",
                "alerts.yaml:6:9: spec.type: unknown type \"teams\"; expected one of webhook, slack, github, gitlab",
                "alerts.yaml:7:19: spec.addressFromEnv: \"alerts-url\" is not an environment variable name (the value is read from the controller's environment, never written in Git)",
                "alerts.yaml:8:19: spec.events[1]: unknown event type \"Exploded\"; expected one of Applied, DriftHealed, Ready, Failed, Stalled, CommitApplied, Discovered, Promoted, RolledBack",
                "alerts.yaml:9:10: spec.apps[0]: \"[\" is not a valid glob: invalid range pattern",
            ]
        );
    }

    #[test]
    fn each_type_takes_the_fields_it_needs_and_no_others() {
        let doc = |spec: &str| {
            load_text(&format!(
                "apiVersion: hippo-gitops/v1\nkind: Notification\nmetadata:\n  name: n\nspec:\n  addressFromEnv: URL\n{spec}"
            ))
        };
        let err = |spec: &str| doc(spec).unwrap_err().join("\n");
        assert!(err("  type: slack\n  secretFromEnv: S\n")
            .contains("8:18: spec.secretFromEnv: slack takes no secret"));
        assert!(err("  type: webhook\n").contains(
            "spec: missing field `secretFromEnv`: a webhook notification needs an HMAC key"
        ));
        assert!(err("  type: github\n  secretFromEnv: T\n").contains("missing field `repository`"));
        assert!(
            err("  type: github\n  secretFromEnv: T\n  repository: deploy\n")
                .contains("not a GitHub repository")
        );
        assert!(
            err("  type: webhook\n  secretFromEnv: T\n  repository: a/b\n")
                .contains("only github and gitlab")
        );
        assert!(err("  type: slack\n  events: []\n").contains("an empty list sends nothing"));
        assert!(
            doc("  type: gitlab\n  secretFromEnv: T\n  repository: group/sub/project\n").is_ok()
        );
        assert!(doc("  type: gitlab\n  secretFromEnv: T\n  repository: \"1234\"\n").is_ok());
        assert!(doc("  type: slack\n").is_ok());
        let twice = load_text(
            "apiVersion: hippo-gitops/v1\nkind: Notification\nmetadata:\n  name: n\nspec:\n  type: slack\n  addressFromEnv: U\n---\napiVersion: hippo-gitops/v1\nkind: Notification\nmetadata:\n  name: n\nspec:\n  type: slack\n  addressFromEnv: U\n",
        )
        .unwrap_err();
        assert_eq!(twice.len(), 1);
        assert!(
            twice[0].starts_with(
                "alerts.yaml:12:9: metadata.name: notification \"n\" is already defined at"
            ),
            "{twice:?}"
        );
    }
}
