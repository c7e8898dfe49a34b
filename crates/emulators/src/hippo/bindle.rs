//! The few Bindle server calls Hippo makes (BINDLE.md): query `_q`, invoice `_i/<id>`, parcel
//! `_i/<id>@<sha>`. JSON is requested (`Accept: application/json`); no signature checks, as in
//! Hippo's `Deislabs.Bindle` client.

use std::time::Duration;

use serde::Deserialize;

use super::model::RevisionComponent;

/// Media type of the Spin manifest parcel (BINDLE.md §4).
const SPIN_MANIFEST_MEDIA_TYPE: &str = "application/vnd.fermyon.spin+toml";
/// Bounds every Bindle call; Hippo would otherwise hang the API request too.
const TIMEOUT: Duration = Duration::from_secs(10);
/// `limit` is a u8 on the Bindle server.
const PAGE: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum BindleError {
    #[error("bindle request {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("bindle request {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("bindle response from {url} could not be parsed: {message}")]
    Parse { url: String, message: String },
}

#[derive(Clone)]
pub struct BindleClient {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Matches {
    #[serde(default)]
    more: bool,
    #[serde(default)]
    invoices: Vec<InvoiceLite>,
}

#[derive(Deserialize)]
struct InvoiceLite {
    bindle: BindleSpecLite,
    #[serde(default)]
    parcel: Option<Vec<ParcelLite>>,
}

#[derive(Deserialize)]
struct BindleSpecLite {
    name: String,
    version: String,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
struct ParcelLite {
    label: LabelLite,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LabelLite {
    sha256: String,
    media_type: String,
}

/// What `UpdateRevisionDetails` stores on a revision.
#[derive(Debug, Clone, Default)]
pub struct RevisionDetails {
    pub description: Option<String>,
    /// `None` when the invoice has no spin.toml parcel (details left empty).
    pub components: Option<Vec<RevisionComponent>>,
}

/// The camelCase manifest parcel, reduced to what Hippo reads.
#[derive(Deserialize)]
struct SpinToml {
    trigger: Option<TriggerToml>,
    #[serde(default)]
    component: Vec<ComponentToml>,
}

#[derive(Deserialize)]
struct TriggerToml {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct ComponentToml {
    id: Option<String>,
    source: Option<toml::Value>,
    trigger: Option<ComponentTriggerToml>,
}

#[derive(Deserialize)]
struct ComponentTriggerToml {
    route: Option<String>,
    channel: Option<String>,
}

impl BindleClient {
    pub fn new(base: &str) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .build()?;
        Ok(BindleClient {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    async fn get(&self, url: &str) -> Result<Option<Vec<u8>>, BindleError> {
        let resp = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|source| BindleError::Http {
                url: url.to_string(),
                source,
            })?;
        let status = resp.status();
        // 403 is a yanked bindle; Hippo's client treats both as "no such invoice".
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::FORBIDDEN {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(BindleError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        let bytes = resp.bytes().await.map_err(|source| BindleError::Http {
            url: url.to_string(),
            source,
        })?;
        Ok(Some(bytes.to_vec()))
    }

    async fn query_page(&self, q: &str, offset: u64, limit: u64) -> Result<Matches, BindleError> {
        // Built in a block: the serializer is not `Send` and must not live across `.await`.
        let query = {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("q", q);
            // Hippo's storage check sends only `q` and `l`.
            if offset > 0 {
                query.append_pair("o", &offset.to_string());
            }
            query.append_pair("l", &limit.to_string()).finish()
        };
        let url = format!("{}/_q?{query}", self.base);
        let body = self.get(&url).await?.ok_or_else(|| BindleError::Status {
            url: url.clone(),
            status: 404,
        })?;
        serde_json::from_slice(&body).map_err(|e| BindleError::Parse {
            url,
            message: e.to_string(),
        })
    }

    /// `QueryAvailableStorages(storageId)` as used by the CreateApp validator: only the first
    /// 50 matches are looked at (HIPPO-API.md §13).
    pub async fn storage_exists(&self, storage_id: &str) -> Result<bool, BindleError> {
        let page = self.query_page(storage_id, 0, 50).await?;
        Ok(page.invoices.iter().any(|i| i.bindle.name == storage_id))
    }

    /// Every (name, version) whose name contains `q` (the server does substring matching),
    /// paging through the whole result set.
    async fn query_all(&self, q: &str) -> Result<Vec<(String, String)>, BindleError> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let page = self.query_page(q, offset, PAGE).await?;
            let n = page.invoices.len() as u64;
            out.extend(
                page.invoices
                    .into_iter()
                    .map(|i| (i.bindle.name, i.bindle.version)),
            );
            if !page.more || n == 0 {
                return Ok(out);
            }
            offset += n;
        }
    }

    /// Every version of the bindle named exactly `storage_id` (InitialRevisionImport).
    pub async fn versions_of(&self, storage_id: &str) -> Result<Vec<String>, BindleError> {
        Ok(self
            .query_all(storage_id)
            .await?
            .into_iter()
            .filter(|(name, _)| name == storage_id)
            .map(|(_, version)| version)
            .collect())
    }

    /// Distinct bindle names containing `search` (GET /api/storages).
    pub async fn storage_names(&self, search: &str) -> Result<Vec<String>, BindleError> {
        let mut names: Vec<String> = Vec::new();
        for (name, _) in self.query_all(search).await? {
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// `UpdateRevisionDetails`: `Ok(None)` when the invoice does not exist.
    pub async fn revision_details(
        &self,
        storage_id: &str,
        revision_number: &str,
    ) -> Result<Option<RevisionDetails>, BindleError> {
        let id = format!("{storage_id}/{revision_number}");
        let url = format!("{}/_i/{id}", self.base);
        let Some(body) = self.get(&url).await? else {
            return Ok(None);
        };
        let invoice: InvoiceLite =
            serde_json::from_slice(&body).map_err(|e| BindleError::Parse {
                url: url.clone(),
                message: e.to_string(),
            })?;
        let manifest = invoice
            .parcel
            .iter()
            .flatten()
            .find(|p| p.label.media_type == SPIN_MANIFEST_MEDIA_TYPE);
        let mut details = RevisionDetails {
            description: invoice.bindle.description,
            components: None,
        };
        let Some(manifest) = manifest else {
            return Ok(Some(details));
        };
        let parcel_url = format!("{}/_i/{id}@{}", self.base, manifest.label.sha256);
        let parcel = self
            .get(&parcel_url)
            .await?
            .ok_or_else(|| BindleError::Status {
                url: parcel_url.clone(),
                status: 404,
            })?;
        details.components =
            Some(
                parse_manifest(&parcel).map_err(|message| BindleError::Parse {
                    url: parcel_url,
                    message,
                })?,
            );
        Ok(Some(details))
    }
}

fn parse_manifest(bytes: &[u8]) -> Result<Vec<RevisionComponent>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    let manifest: SpinToml = toml::from_str(text).map_err(|e| e.to_string())?;
    let kind = manifest.trigger.and_then(|t| t.kind);
    Ok(manifest
        .component
        .into_iter()
        .map(|c| RevisionComponent {
            id: uuid::Uuid::new_v4(),
            // The bindle manifest holds the parcel sha as a string; anything else is shown
            // the way a TOML value prints.
            source: match c.source {
                Some(toml::Value::String(s)) => s,
                Some(other) => other.to_string(),
                None => String::new(),
            },
            name: c.id.unwrap_or_default(),
            route: c.trigger.as_ref().and_then(|t| t.route.clone()),
            channel: c.trigger.and_then(|t| t.channel),
            kind: kind.clone(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_bindle_manifest_parcel() {
        let toml = r#"
            trigger = { type = "http", base = "/" }
            [[component]]
            id = "hello"
            source = "abc123"
            files = "files-hello"
            [component.trigger]
            route = "/hello/..."
            [[component]]
            id = "other"
            source = "def456"
        "#;
        let comps = parse_manifest(toml.as_bytes()).unwrap();
        assert_eq!(comps.len(), 2);
        assert_eq!(comps[0].name, "hello");
        assert_eq!(comps[0].source, "abc123");
        assert_eq!(comps[0].route.as_deref(), Some("/hello/..."));
        assert_eq!(comps[0].kind.as_deref(), Some("http"));
        assert_eq!(comps[1].route, None);
    }
}
