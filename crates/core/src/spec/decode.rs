//! Deploy-file documents from YAML nodes: every type error, missing field, duplicate key and
//! unknown field of a document is reported, each at its own line (serde stops at the first).
//! Values that may be written unquoted (versions, ranges, env values) keep their source text.

use std::collections::BTreeMap;

use super::{
    excerpt,
    yaml::{Node, NodeKind, ScalarKind},
    RawAppSpec, RawChannel, RawDocument, RawMetadata, RawProbe, RawPromote, RawRevision,
    ScalarString,
};

/// The fields of each mapping, as written in a deploy file.
pub(super) const DOCUMENT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
pub(super) const METADATA_FIELDS: &[&str] = &["name"];
pub(super) const SPEC_FIELDS: &[&str] = &["storageId", "revisions", "channels", "prune", "suspend"];
pub(super) const REVISION_FIELDS: &[&str] = &["version", "path", "discover"];
pub(super) const CHANNEL_FIELDS: &[&str] = &[
    "name",
    "range",
    "revision",
    "promote",
    "domain",
    "env",
    "allowEmpty",
    "rollback",
];
pub(super) const PROMOTE_FIELDS: &[&str] = &["from", "after", "check"];
pub(super) const CHECK_FIELDS: &[&str] = &["url", "expectStatus", "interval"];

/// A problem found while decoding: where, which field, what.
pub(super) struct Problem {
    pub node_pos: super::Position,
    pub field: String,
    pub message: String,
}

/// Decodes one document; `None` when it has a type error or a missing field (its unknown
/// fields alone do not stop it from being checked further).
pub(super) fn document(root: &Node, problems: &mut Vec<Problem>) -> Option<RawDocument> {
    let mut d = Decoder {
        problems,
        failed: false,
    };
    let raw = d.document(root);
    if d.failed {
        None
    } else {
        raw
    }
}

pub(super) struct Decoder<'a> {
    pub(super) problems: &'a mut Vec<Problem>,
    /// A type error or missing field: the document is not checked further.
    pub(super) failed: bool,
}

/// The fields of one mapping, looked up by name; the rest are reported as unknown.
pub(super) struct Fields<'n> {
    path: String,
    node: &'n Node,
    entries: Vec<(&'n str, &'n Node, &'n Node)>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// How serde words what it found (`invalid type: string "yes", expected a boolean`).
fn found(node: &Node) -> String {
    match &node.kind {
        NodeKind::Seq(_) => "sequence".into(),
        NodeKind::Map(_) => "map".into(),
        NodeKind::Scalar { text, .. } => match node.scalar_kind() {
            Some(ScalarKind::Null) => "unit value".into(),
            Some(ScalarKind::Bool) => format!("boolean `{}`", excerpt::short(text)),
            Some(ScalarKind::Int) => format!("integer `{}`", excerpt::short(text)),
            Some(ScalarKind::Float) => format!("floating point `{}`", excerpt::short(text)),
            _ => format!("string {}", excerpt::quoted(text)),
        },
    }
}

impl Decoder<'_> {
    fn problem(&mut self, node: &Node, field: &str, message: String) {
        self.problems.push(Problem {
            node_pos: node.pos,
            field: field.to_string(),
            message,
        });
    }

    fn type_error(&mut self, node: &Node, field: &str, expected: &str) {
        self.failed = true;
        let message = format!("invalid type: {}, expected {expected}", found(node));
        self.problem(node, field, message);
    }

    /// The mapping at `path`, its keys checked against `known` (unknown and repeated keys are
    /// reported).
    pub(super) fn fields<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        known: &[&str],
    ) -> Option<Fields<'n>> {
        let NodeKind::Map(map) = &node.kind else {
            self.type_error(node, path, "a mapping");
            return None;
        };
        let mut fields = Fields {
            path: path.to_string(),
            node,
            entries: Vec::new(),
        };
        for (key, value) in map {
            let NodeKind::Scalar { text, .. } = &key.kind else {
                self.type_error(key, path, "a string key");
                continue;
            };
            let field = join(path, &excerpt::short(text));
            if let Some((_, first, _)) = fields.entries.iter().find(|(k, ..)| k == text) {
                let message = format!(
                    "duplicate key `{}` (first at line {})",
                    excerpt::short(text),
                    first.pos.line
                );
                self.failed = true;
                self.problem(key, &field, message);
            } else if known.contains(&text.as_str()) {
                fields.entries.push((text, key, value));
            } else {
                let message = super::unknown_field_message(&field, known);
                self.problem(key, &field, message);
            }
        }
        Some(fields)
    }

    /// A present, non-null field's value.
    pub(super) fn get<'n>(&self, fields: &Fields<'n>, name: &str) -> Option<&'n Node> {
        fields
            .entries
            .iter()
            .find(|(k, ..)| *k == name)
            .map(|(_, _, v)| *v)
            .filter(|v| !v.is_null())
    }

    pub(super) fn required<'n>(&mut self, fields: &Fields<'n>, name: &str) -> Option<&'n Node> {
        let present = fields.entries.iter().find(|(k, ..)| *k == name);
        match present {
            Some((_, _, v)) => Some(*v),
            None => {
                self.failed = true;
                let (node, path) = (fields.node, fields.path.clone());
                self.problem(node, &path, format!("missing field `{name}`"));
                None
            }
        }
    }

    pub(super) fn string(&mut self, node: &Node, field: &str) -> Option<String> {
        match (&node.kind, node.scalar_kind()) {
            (NodeKind::Scalar { text, .. }, Some(ScalarKind::Str)) => Some(text.clone()),
            _ => {
                self.type_error(node, field, "a string");
                None
            }
        }
    }

    /// Any scalar but null, as written.
    fn scalar_string(&mut self, node: &Node, field: &str) -> Option<ScalarString> {
        let what = match (&node.kind, node.scalar_kind()) {
            (NodeKind::Scalar { text, .. }, Some(kind)) if kind != ScalarKind::Null => {
                return Some(ScalarString(text.clone()))
            }
            (NodeKind::Seq(_), _) => "a sequence",
            (NodeKind::Map(_), _) => "a mapping",
            _ => "null",
        };
        self.failed = true;
        self.problem(node, field, format!("expected a string, found {what}"));
        None
    }

    pub(super) fn opt_string(&mut self, fields: &Fields, name: &str) -> Option<String> {
        let node = self.get(fields, name)?;
        self.string(node, &join(&fields.path, name))
    }

    fn opt_scalar(&mut self, fields: &Fields, name: &str) -> Option<ScalarString> {
        let node = self.get(fields, name)?;
        self.scalar_string(node, &join(&fields.path, name))
    }

    /// An integer as YAML 1.2 writes it (`200`, `+200`, `0xC8`, `0o310`); absent or null is
    /// `None`.
    fn opt_integer(&mut self, fields: &Fields, name: &str) -> Option<i64> {
        let node = self.get(fields, name)?;
        let field = join(&fields.path, name);
        let text = match (&node.kind, node.scalar_kind()) {
            (NodeKind::Scalar { text, .. }, Some(ScalarKind::Int)) => text,
            _ => {
                self.type_error(node, &field, "an integer");
                return None;
            }
        };
        let (digits, radix) = if let Some(hex) = text.strip_prefix("0x") {
            (hex, 16)
        } else if let Some(octal) = text.strip_prefix("0o") {
            (octal, 8)
        } else {
            (text.as_str(), 10)
        };
        let parsed = i64::from_str_radix(digits, radix).ok();
        if parsed.is_none() {
            self.failed = true;
            let message = format!(
                "invalid value: integer `{}` is out of range",
                excerpt::short(text)
            );
            self.problem(node, &field, message);
        }
        parsed
    }

    /// `true`/`false` (any YAML 1.2 spelling); absent or null is `false`.
    fn opt_bool(&mut self, fields: &Fields, name: &str) -> bool {
        let Some(node) = self.get(fields, name) else {
            return false;
        };
        match (&node.kind, node.scalar_kind()) {
            (NodeKind::Scalar { text, .. }, Some(ScalarKind::Bool)) => {
                text.eq_ignore_ascii_case("true")
            }
            _ => {
                self.type_error(node, &join(&fields.path, name), "a boolean");
                false
            }
        }
    }

    pub(super) fn required_string(&mut self, fields: &Fields, name: &str) -> Option<String> {
        let node = self.required(fields, name)?;
        self.string(node, &join(&fields.path, name))
    }

    fn required_scalar(&mut self, fields: &Fields, name: &str) -> Option<ScalarString> {
        let node = self.required(fields, name)?;
        self.scalar_string(node, &join(&fields.path, name))
    }

    pub(super) fn list<T>(
        &mut self,
        fields: &Fields,
        name: &str,
        mut item: impl FnMut(&mut Self, &Node, &str) -> Option<T>,
    ) -> Vec<T> {
        let path = join(&fields.path, name);
        let Some(node) = self.get(fields, name) else {
            return Vec::new();
        };
        let NodeKind::Seq(items) = &node.kind else {
            self.type_error(node, &path, "a sequence");
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, n)| item(self, n, &format!("{path}[{i}]")))
            .collect()
    }

    fn document(&mut self, root: &Node) -> Option<RawDocument> {
        let f = self.fields(root, "", DOCUMENT_FIELDS)?;
        let api_version = self.required_string(&f, "apiVersion");
        let kind = self.required_string(&f, "kind");
        let metadata = self.required(&f, "metadata").and_then(|m| {
            let mf = self.fields(m, "metadata", METADATA_FIELDS)?;
            Some(RawMetadata {
                name: self.required_string(&mf, "name")?,
            })
        });
        let spec = self.required(&f, "spec").and_then(|s| self.spec(s));
        Some(RawDocument {
            api_version: api_version?,
            kind: kind?,
            metadata: metadata?,
            spec: spec?,
        })
    }

    fn spec(&mut self, node: &Node) -> Option<RawAppSpec> {
        let f = self.fields(node, "spec", SPEC_FIELDS)?;
        let storage_id = self.opt_string(&f, "storageId");
        let revisions = self.list(&f, "revisions", |d, n, path| {
            let rf = d.fields(n, path, REVISION_FIELDS)?;
            Some(RawRevision {
                version: d.opt_scalar(&rf, "version"),
                path: d.opt_string(&rf, "path"),
                discover: d.opt_scalar(&rf, "discover"),
            })
        });
        let channels = self.list(&f, "channels", |d, n, path| d.channel(n, path));
        Some(RawAppSpec {
            storage_id,
            revisions,
            channels,
            prune: self.opt_bool(&f, "prune"),
            suspend: self.opt_bool(&f, "suspend"),
        })
    }

    fn channel(&mut self, node: &Node, path: &str) -> Option<RawChannel> {
        let f = self.fields(node, path, CHANNEL_FIELDS)?;
        let name = self.required_string(&f, "name");
        let range = self.opt_scalar(&f, "range");
        let revision = self.opt_scalar(&f, "revision");
        let domain = self.opt_string(&f, "domain");
        let promote = self
            .get(&f, "promote")
            .and_then(|n| self.promote(n, &join(path, "promote")));
        let allow_empty = self.opt_bool(&f, "allowEmpty");
        let rollback = self.opt_bool(&f, "rollback");
        let env = self.get(&f, "env").and_then(|n| {
            let epath = join(path, "env");
            let NodeKind::Map(entries) = &n.kind else {
                self.type_error(n, &epath, "a mapping");
                return None;
            };
            let mut env = BTreeMap::new();
            let mut lines = BTreeMap::new();
            for (k, v) in entries {
                let NodeKind::Scalar { text: key, .. } = &k.kind else {
                    self.type_error(k, &epath, "a string key");
                    continue;
                };
                let field = join(&epath, &excerpt::short(key));
                if let Some(first) = lines.get(key) {
                    self.failed = true;
                    let message = format!(
                        "duplicate key `{}` (first at line {first})",
                        excerpt::short(key)
                    );
                    self.problem(k, &field, message);
                    continue;
                }
                lines.insert(key.clone(), k.pos.line);
                if let Some(value) = self.scalar_string(v, &field) {
                    env.insert(key.clone(), value);
                }
            }
            Some(env)
        });
        Some(RawChannel {
            name: name?,
            range,
            revision,
            promote,
            domain,
            env,
            allow_empty,
            rollback,
        })
    }

    fn promote(&mut self, node: &Node, path: &str) -> Option<RawPromote> {
        let f = self.fields(node, path, PROMOTE_FIELDS)?;
        let from = self.required_string(&f, "from");
        let after = self.required_scalar(&f, "after");
        let check = self.get(&f, "check").and_then(|n| {
            let cf = self.fields(n, &join(path, "check"), CHECK_FIELDS)?;
            let url = self.required_string(&cf, "url");
            let expect_status = self.opt_integer(&cf, "expectStatus");
            let interval = self.opt_scalar(&cf, "interval");
            Some(RawProbe {
                url: url?,
                expect_status,
                interval,
            })
        });
        Some(RawPromote {
            from: from?,
            after: after?,
            check,
        })
    }
}
