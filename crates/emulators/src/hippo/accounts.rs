//! `/healthz`, `/api/accounts`, `/api/auth-tokens` and bearer-token checks (§2, §3).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::http::{json, ApiError, Errors, Req};
use super::model::{Account, IssuedToken};
use super::routes::{sha256_hex, Shared};
use super::validate::{self, required};

pub(super) fn health() -> Response {
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct HealthInfo {
        service_name: &'static str,
        description: &'static str,
        status: &'static str,
        subservices: Vec<()>,
    }
    json(&HealthInfo {
        service_name: "Hippo",
        description: "",
        status: "Healthy",
        subservices: Vec::new(),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Credentials {
    user_name: Option<String>,
    password: Option<String>,
}

fn credentials(req: &Req) -> Result<(String, String), ApiError> {
    let cmd: Credentials = req.json()?;
    let mut model = Errors::default();
    let user = required(&mut model, "UserName", cmd.user_name);
    let password = required(&mut model, "Password", cmd.password);
    model.check_model()?;
    Ok((user, password))
}

pub(super) fn create_account(s: &Shared, req: &Req) -> Result<Response, ApiError> {
    let (user, password) = credentials(req)?;
    let id = {
        let mut st = s.state();
        let mut errors = Errors::default();
        validate::max_length(&mut errors, "UserName", &user, 64);
        validate::matches(&mut errors, "UserName", validate::is_name(&user));
        if st
            .accounts
            .iter()
            .any(|a| a.user_name.eq_ignore_ascii_case(&user))
        {
            errors.add("UserName", "The specified username already exists.");
        }
        validate::min_length(&mut errors, "Password", &password, 6);
        errors.check()?;
        if !s.settings.registration_open {
            return Err(ApiError::Forbidden("registration closed"));
        }
        let id = Uuid::new_v4().to_string();
        st.accounts.push(Account {
            id: id.clone(),
            user_name: user,
            password_sha256: sha256_hex(&password),
            is_administrator: false,
        });
        id
    };
    // A `string` result: text/plain unless the client asks for JSON (§2).
    if req.accepts_json() {
        return Ok(json(&id));
    }
    let mut resp = (StatusCode::OK, id).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}

/// A JWT-shaped opaque token: clients that peek at `exp` see the real expiry, but the
/// emulator only accepts tokens it issued (looked up in the state).
fn new_token(account: &Account, expires_at: DateTime<Utc>) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = serde_json::json!({
        "sub": account.id,
        "unique_name": account.id,
        "jti": Uuid::new_v4(),
        "exp": expires_at.timestamp(),
        "iss": "hippo-emulator",
    });
    let signature = b64.encode(Sha256::digest(Uuid::new_v4().as_bytes()));
    format!("{header}.{}.{signature}", b64.encode(payload.to_string()))
}

pub(super) fn create_token(s: &Shared, req: &Req) -> Result<Response, ApiError> {
    #[derive(Serialize)]
    struct TokenInfo {
        token: String,
        expiration: String,
    }
    let (user, password) = credentials(req)?;
    let mut st = s.state();
    let account = st
        .accounts
        .iter()
        .find(|a| a.user_name.eq_ignore_ascii_case(&user))
        .ok_or(ApiError::LoginFailed("Account does not exist."))?
        .clone();
    if account.password_sha256 != sha256_hex(&password) {
        return Err(ApiError::LoginFailed("Credentials are not valid."));
    }
    let now = Utc::now();
    let lifetime = chrono::Duration::from_std(s.settings.token_lifetime)
        .unwrap_or_else(|_| chrono::Duration::days(36_500));
    let expires_at = now
        .checked_add_signed(lifetime)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let token = new_token(&account, expires_at);
    st.tokens.retain(|t| t.expires_at > now);
    st.tokens.push(IssuedToken {
        token: token.clone(),
        account_id: account.id,
        expires_at,
    });
    // A JWT's `exp` has whole seconds; the reported value never exceeds the real expiry.
    Ok(json(&TokenInfo {
        token,
        expiration: expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
    }))
}

pub(super) fn authenticate(s: &Shared, req: &Req) -> Result<(), ApiError> {
    let token = req
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("Bearer").then(|| rest.trim())
        })
        .ok_or(ApiError::Unauthorized { expired: None })?;
    let st = s.state();
    let issued = st
        .tokens
        .iter()
        .find(|t| t.token == token)
        .ok_or(ApiError::Unauthorized { expired: None })?;
    if issued.expires_at <= Utc::now() {
        return Err(ApiError::Unauthorized {
            expired: Some(issued.expires_at),
        });
    }
    if !st.accounts.iter().any(|a| a.id == issued.account_id) {
        return Err(ApiError::Unauthorized { expired: None });
    }
    Ok(())
}
