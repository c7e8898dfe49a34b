//! Webhook authentication: GitHub's `X-Hub-Signature-256`, GitLab's `X-Gitlab-Token`, and the
//! same HMAC for the generic hook. Pure; the HTTP module maps the answers to status codes.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use hippo_gitops_core::secret::Secret;

/// Which receiver a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    GitHub,
    GitLab,
    Generic,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
            Provider::Generic => "generic",
        }
    }
}

/// Why a webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("webhooks are disabled: start the controller with --webhook-secret")]
    Disabled,
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("malformed {0} header")]
    Malformed(&'static str),
    #[error("signature does not match")]
    BadSignature,
}

/// The headers a provider authenticates with.
pub fn signature_header(provider: Provider) -> &'static str {
    match provider {
        Provider::GitHub => "x-hub-signature-256",
        Provider::GitLab => "x-gitlab-token",
        Provider::Generic => "x-signature-256",
    }
}

/// Checks a request's authentication. `header` is the value of [`signature_header`] (for the
/// generic hook, `X-Hub-Signature-256` is accepted too, so GitHub-style senders work as is).
pub fn verify(
    provider: Provider,
    secret: Option<&Secret>,
    header: Option<&str>,
    body: &[u8],
) -> Result<(), WebhookError> {
    let secret = secret.ok_or(WebhookError::Disabled)?;
    let name = signature_header(provider);
    let value = header.ok_or(WebhookError::MissingHeader(name))?;
    match provider {
        Provider::GitLab => {
            if constant_time_eq(value.as_bytes(), secret.expose().as_bytes()) {
                Ok(())
            } else {
                Err(WebhookError::BadSignature)
            }
        }
        Provider::GitHub | Provider::Generic => {
            let hex_sig = value
                .trim()
                .strip_prefix("sha256=")
                .ok_or(WebhookError::Malformed(name))?;
            let sig = hex::decode(hex_sig).map_err(|_| WebhookError::Malformed(name))?;
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
                .expect("HMAC takes a key of any length");
            mac.update(body);
            // `verify_slice` compares in constant time.
            mac.verify_slice(&sig)
                .map_err(|_| WebhookError::BadSignature)
        }
    }
}

/// `sha256=<hex>` of `body` under `secret`: what senders put in the signature header.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The branch a push event is for (`ref: refs/heads/<branch>` in GitHub's and GitLab's push
/// payloads); `None` when the body says nothing about it.
pub fn pushed_branch(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("ref")?
        .as_str()?
        .strip_prefix("refs/heads/")
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new("It's a Secret to Everybody")
    }

    #[test]
    fn github_signature_matches_githubs_documented_example() {
        // docs.github.com "Validating webhook deliveries": this secret and payload give this
        // signature.
        let body = b"Hello, World!";
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign("It's a Secret to Everybody", body), expected);
        assert_eq!(
            verify(Provider::GitHub, Some(&secret()), Some(expected), body),
            Ok(())
        );
    }

    #[test]
    fn bad_or_missing_signatures_are_refused() {
        let body = b"{\"ref\":\"refs/heads/main\"}";
        let good = sign("It's a Secret to Everybody", body);
        let s = Some(&secret());
        assert_eq!(verify(Provider::GitHub, s, Some(&good), body), Ok(()));
        assert_eq!(
            verify(
                Provider::GitHub,
                s,
                Some(&good),
                b"{\"ref\":\"refs/heads/evil\"}"
            ),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify(Provider::GitHub, s, Some(&sign("other", body)), body),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify(Provider::GitHub, s, None, body),
            Err(WebhookError::MissingHeader("x-hub-signature-256"))
        );
        assert_eq!(
            verify(Provider::Generic, s, Some("sha1=abc"), body),
            Err(WebhookError::Malformed("x-signature-256"))
        );
        assert_eq!(
            verify(Provider::Generic, s, Some("sha256=zz"), body),
            Err(WebhookError::Malformed("x-signature-256"))
        );
        assert_eq!(
            verify(Provider::GitHub, None, Some(&good), body),
            Err(WebhookError::Disabled)
        );
    }

    #[test]
    fn gitlab_token_is_compared_whole() {
        let s = Some(&secret());
        assert_eq!(
            verify(Provider::GitLab, s, Some("It's a Secret to Everybody"), b""),
            Ok(())
        );
        assert_eq!(
            verify(Provider::GitLab, s, Some("It's a Secret"), b""),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify(Provider::GitLab, s, Some("It's a Secret to Everybodx"), b""),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn push_payloads_name_their_branch() {
        assert_eq!(
            pushed_branch(br#"{"ref":"refs/heads/main","after":"abc"}"#).as_deref(),
            Some("main")
        );
        assert_eq!(pushed_branch(br#"{"ref":"refs/tags/v1"}"#), None);
        assert_eq!(pushed_branch(b"not json"), None);
    }
}
