//! Request parsing and the response shapes ASP.NET Core and Hippo's exception filter produce
//! (HIPPO-API.md §2, §2.1, §4.1).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

const JSON: &str = "application/json; charset=utf-8";
const PROBLEM_JSON: &str = "application/problem+json; charset=utf-8";
const TYPE_400: &str = "https://tools.ietf.org/html/rfc7231#section-6.5.1";
const TYPE_403: &str = "https://tools.ietf.org/html/rfc7231#section-6.5.3";
const TYPE_404: &str = "https://tools.ietf.org/html/rfc7231#section-6.5.4";
const TYPE_415: &str = "https://tools.ietf.org/html/rfc7231#section-6.5.13";
const TYPE_500: &str = "https://tools.ietf.org/html/rfc7231#section-6.6.1";

/// Validation errors keyed by property name, as in `ValidationProblemDetails.errors`.
#[derive(Debug, Default)]
pub struct Errors(BTreeMap<String, Vec<String>>);

impl Errors {
    pub fn add(&mut self, key: &str, message: impl Into<String>) {
        self.0
            .entry(key.to_string())
            .or_default()
            .push(message.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// FluentValidation failures (`ValidationException`, thrown by the MediatR pipeline).
    pub fn check(self) -> Result<(), ApiError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self))
        }
    }

    /// Model binding / DataAnnotations failures (`[ApiController]` automatic 400).
    pub fn check_model(self) -> Result<(), ApiError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(ApiError::ModelState(self))
        }
    }
}

/// Every non-2xx answer the emulator gives.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// JwtBearer challenge: 401, empty body.
    #[error("unauthorized")]
    Unauthorized { expired: Option<DateTime<Utc>> },
    /// `BadRequest()`: route id and body id differ.
    #[error("bad request")]
    BadRequestEmpty,
    /// `NotFound()` from `POST /api/revisions` when no app has that storage id.
    #[error("not found")]
    NotFoundEmpty,
    #[error("validation failed: {0:?}")]
    Validation(Errors),
    #[error("model binding failed: {0:?}")]
    ModelState(Errors),
    /// `NotFoundException(name, key)`.
    #[error("Entity \"{entity}\" ({key}) was not found.")]
    NotFound { entity: &'static str, key: Uuid },
    /// `NotFoundException(message)`.
    #[error("{0}")]
    NotFoundMessage(String),
    #[error("login failed: {0}")]
    LoginFailed(&'static str),
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("no route")]
    NoRoute,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Any other exception in Hippo; the message is only logged.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn not_found(entity: &'static str, key: Uuid) -> Self {
        ApiError::NotFound { entity, key }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }
}

pub fn empty(status: StatusCode) -> Response {
    status.into_response()
}

fn with_content_type(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => with_content_type(StatusCode::OK, JSON, body),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

fn problem(status: StatusCode, body: Value) -> Response {
    with_content_type(status, PROBLEM_JSON, body.to_string().into_bytes())
}

/// ASP.NET Core's `traceId` on automatic 400s (W3C trace-context format).
fn trace_id() -> String {
    format!(
        "00-{}-{}-00",
        Uuid::new_v4().simple(),
        &Uuid::new_v4().simple().to_string()[..16]
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Unauthorized { expired } => {
                let challenge = match expired {
                    Some(at) => format!(
                        "Bearer error=\"invalid_token\", error_description=\"The token expired at '{}'\"",
                        at.format("%m/%d/%Y %H:%M:%S")
                    ),
                    None => "Bearer".to_string(),
                };
                let mut resp = empty(StatusCode::UNAUTHORIZED);
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                resp
            }
            ApiError::BadRequestEmpty => empty(StatusCode::BAD_REQUEST),
            ApiError::NotFoundEmpty | ApiError::NoRoute => empty(StatusCode::NOT_FOUND),
            ApiError::MethodNotAllowed => empty(StatusCode::METHOD_NOT_ALLOWED),
            ApiError::Validation(errors) => problem(
                StatusCode::BAD_REQUEST,
                json!({
                    "type": TYPE_400,
                    "title": "One or more validation errors occurred.",
                    "status": 400,
                    "errors": errors.0,
                }),
            ),
            ApiError::ModelState(errors) => problem(
                StatusCode::BAD_REQUEST,
                json!({
                    "type": TYPE_400,
                    "title": "One or more validation errors occurred.",
                    "status": 400,
                    "traceId": trace_id(),
                    "errors": errors.0,
                }),
            ),
            e @ (ApiError::NotFound { .. } | ApiError::NotFoundMessage(_)) => problem(
                StatusCode::NOT_FOUND,
                json!({
                    "type": TYPE_404,
                    "title": "The specified resource was not found.",
                    "status": 404,
                    "detail": e.to_string(),
                }),
            ),
            ApiError::LoginFailed(reason) => problem(
                StatusCode::BAD_REQUEST,
                json!({"type": TYPE_400, "title": "Login failed.", "status": 400, "detail": reason}),
            ),
            ApiError::Forbidden(reason) => problem(
                StatusCode::FORBIDDEN,
                json!({"type": TYPE_403, "title": "Forbidden", "status": 403, "detail": reason}),
            ),
            ApiError::UnsupportedMediaType => problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({"type": TYPE_415, "title": "Unsupported Media Type", "status": 415, "traceId": trace_id()}),
            ),
            ApiError::Internal(message) => {
                tracing::warn!(%message, "hippo emulator: answering 500");
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({
                        "type": TYPE_500,
                        "title": "An error occurred while processing your request.",
                        "status": 500,
                    }),
                )
            }
        }
    }
}

/// One incoming request, fully buffered.
pub struct Req {
    pub method: Method,
    pub path: String,
    pub raw_query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    query: Vec<(String, String)>,
}

impl Req {
    pub fn new(
        method: Method,
        path: String,
        raw_query: Option<String>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Self {
        let query = raw_query
            .as_deref()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        Req {
            method,
            path,
            raw_query,
            headers,
            body,
            query,
        }
    }

    /// Query values bind case-insensitively in ASP.NET Core.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn query_i32(&self, name: &str, default: i32) -> Result<i32, ApiError> {
        match self.query(name) {
            None | Some("") => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| invalid_value(name, v)),
        }
    }

    pub fn query_bool(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        match self.query(name).map(str::trim) {
            None | Some("") => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(invalid_value(name, v)),
        }
    }

    pub fn query_uuid(&self, name: &str) -> Result<Option<Uuid>, ApiError> {
        match self.query(name) {
            None | Some("") => Ok(None),
            Some(v) => Uuid::parse_str(v.trim())
                .map(Some)
                .map_err(|_| invalid_value(name, v)),
        }
    }

    pub fn accepts_json(&self) -> bool {
        self.headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("json"))
    }

    /// `[FromBody]` binding with Newtonsoft: content type check, non-empty body, then JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let content_type = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !is_json_media_type(content_type) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let body_required = || {
            let mut e = Errors::default();
            e.add("", "A non-empty request body is required.");
            ApiError::ModelState(e)
        };
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Err(body_required());
        }
        let mut value: Value = serde_json::from_slice(&self.body).map_err(|e| {
            let mut errors = Errors::default();
            errors.add("", e.to_string());
            ApiError::ModelState(errors)
        })?;
        if value.is_null() {
            return Err(body_required());
        }
        camel_case_keys(&mut value);
        serde_path_to_error::deserialize(value).map_err(|e| {
            let mut errors = Errors::default();
            let path = e.path().to_string();
            let key = if path == "." { String::new() } else { path };
            errors.add(&key, e.inner().to_string());
            ApiError::ModelState(errors)
        })
    }
}

fn invalid_value(name: &str, value: &str) -> ApiError {
    let mut e = Errors::default();
    e.add(name, format!("The value '{value}' is not valid."));
    ApiError::ModelState(e)
}

/// The media types Hippo's JSON input formatter accepts.
fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    (kind == "application" || kind == "text") && (sub == "json" || sub.ends_with("+json"))
}

/// Newtonsoft matches property names case-insensitively; requests almost always differ from
/// the camelCase contract only in the first letter (PascalCase), so fold that.
fn camel_case_keys(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (k, mut v) in entries {
                camel_case_keys(&mut v);
                let mut chars = k.chars();
                let key = match chars.next() {
                    Some(c) => c.to_lowercase().chain(chars).collect(),
                    None => k,
                };
                map.insert(key, v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(camel_case_keys),
        _ => {}
    }
}

/// Hippo's `SearchFilter` query parameters (HIPPO-API.md §4.1).
pub struct PageQuery {
    pub search_text: String,
    pub page_index: i32,
    pub page_size: i32,
    pub sort_by: String,
    pub ascending: bool,
}

impl PageQuery {
    pub fn from_req(req: &Req) -> Result<Self, ApiError> {
        Ok(PageQuery {
            search_text: req.query("searchText").unwrap_or("").to_string(),
            page_index: req.query_i32("pageIndex", 0)?,
            page_size: req.query_i32("pageSize", 50)?,
            sort_by: req.query("sortBy").unwrap_or("Name").to_string(),
            ascending: req.query_bool("IsSortedAscending", true)?,
        })
    }
}

/// `Page<T>`; `isLastPage = totalItems == pageIndex*pageSize + items.Count`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total_items: i64,
    pub page_index: i32,
    pub page_size: i32,
    pub is_last_page: bool,
}

/// `Skip(pageIndex*pageSize).Take(pageSize)` over `items`, reporting `total_items`.
pub fn page<T>(items: Vec<T>, total_items: i64, page_index: i32, page_size: i32) -> Page<T> {
    let offset = i64::from(page_index) * i64::from(page_size);
    let skip = usize::try_from(offset.max(0)).unwrap_or(usize::MAX);
    let take = usize::try_from(page_size.max(0)).unwrap_or(0);
    let items: Vec<T> = items.into_iter().skip(skip).take(take).collect();
    let is_last_page = total_items == offset + items.len() as i64;
    Page {
        items,
        total_items,
        page_index,
        page_size,
        is_last_page,
    }
}

/// The value of a C# property as `Comparer<object>.Default` sees it.
#[derive(Debug, Clone)]
pub enum SortKey {
    Null,
    Text(String),
    Int(i64),
    Id(Uuid),
    Time(DateTime<Utc>),
    /// A list or object: not `IComparable`, so comparing two of them throws.
    Opaque,
}

struct NotComparable;

fn compare_keys(a: &SortKey, b: &SortKey) -> Result<Ordering, NotComparable> {
    use SortKey::*;
    Ok(match (a, b) {
        (Null, Null) => Ordering::Equal,
        (Null, _) => Ordering::Less,
        (_, Null) => Ordering::Greater,
        (Text(x), Text(y)) => culture_cmp(x, y),
        (Int(x), Int(y)) => x.cmp(y),
        (Id(x), Id(y)) => x.cmp(y),
        (Time(x), Time(y)) => x.cmp(y),
        _ => return Err(NotComparable),
    })
}

/// An approximation of .NET's culture-aware string order: case-insensitive first, then
/// lowercase before uppercase.
pub fn culture_cmp(a: &str, b: &str) -> Ordering {
    let folded = a.to_lowercase().cmp(&b.to_lowercase());
    if folded != Ordering::Equal {
        return folded;
    }
    for (x, y) in a.chars().zip(b.chars()) {
        if x != y {
            return if x.is_lowercase() {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
    }
    a.len().cmp(&b.len())
}

/// `SortBy(sortBy, isSortedAscending)`: reflection over the item type's properties. An
/// unknown property or non-comparable values throw, i.e. 500.
pub fn sort_by<T>(
    items: &mut Vec<T>,
    sort_by: &str,
    ascending: bool,
    key: impl Fn(&T, &str) -> Option<SortKey>,
    properties: &[&str],
) -> Result<(), ApiError> {
    if !properties.contains(&sort_by) {
        return Err(ApiError::Internal("Sort field does it exist".to_string()));
    }
    let keys: Vec<SortKey> = items
        .iter()
        .map(|i| key(i, sort_by).unwrap_or(SortKey::Null))
        .collect();
    let mut order: Vec<usize> = (0..items.len()).collect();
    let mut failed = false;
    // Stable in both directions, like OrderBy/OrderByDescending.
    order.sort_by(|&i, &j| {
        let (a, b) = if ascending {
            (&keys[i], &keys[j])
        } else {
            (&keys[j], &keys[i])
        };
        compare_keys(a, b).unwrap_or_else(|NotComparable| {
            failed = true;
            Ordering::Equal
        })
    });
    if failed {
        return Err(ApiError::Internal(
            "Failed to compare two elements in the array.".to_string(),
        ));
    }
    let mut slots: Vec<Option<T>> = items.drain(..).map(Some).collect();
    items.extend(order.into_iter().filter_map(|i| slots[i].take()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_reports_last_page() {
        let p = page((0..5).collect(), 5, 1, 2);
        assert_eq!(p.items, vec![2, 3]);
        assert!(!p.is_last_page);
        let p = page((0..5).collect(), 5, 2, 2);
        assert_eq!(p.items, vec![4]);
        assert!(p.is_last_page);
        let p = page((0..5).collect::<Vec<i32>>(), 5, 0, i32::MAX);
        assert!(p.is_last_page);
    }

    #[test]
    fn sorting_is_stable_and_checks_the_property() {
        let mut v = vec![("b", 1), ("A", 2), ("a", 3), ("c", 4)];
        let key = |i: &(&str, i32), p: &str| match p {
            "Name" => Some(SortKey::Text(i.0.to_string())),
            _ => None,
        };
        sort_by(&mut v, "Name", true, key, &["Name"]).unwrap();
        assert_eq!(v, vec![("a", 3), ("A", 2), ("b", 1), ("c", 4)]);
        sort_by(&mut v, "Name", false, key, &["Name"]).unwrap();
        assert_eq!(v, vec![("c", 4), ("b", 1), ("A", 2), ("a", 3)]);
        assert!(sort_by(&mut v, "name", true, key, &["Name"]).is_err());
    }

    #[test]
    fn json_media_types() {
        assert!(is_json_media_type("application/json; charset=utf-8"));
        assert!(is_json_media_type("application/json-patch+json"));
        assert!(is_json_media_type("text/json"));
        assert!(!is_json_media_type("text/plain"));
        assert!(!is_json_media_type(""));
    }
}
