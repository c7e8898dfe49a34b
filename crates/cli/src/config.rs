//! Connection settings: Hippo credentials (SIP 001's rules), Bindle auth, the signing key.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
};

use bindle::signature::{KeyEntry, KeyRing, SecretKeyEntry, SecretKeyFile, SignatureRole};
use chrono::{DateTime, Utc};

use hippo_gitops_core::{bindles::BindleAuth, hippo::Credentials, secret::Secret};

/// Configuration problems. Shown as they are; none carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is required (flag {1} or environment variable {2})")]
    Missing(&'static str, &'static str, &'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Credentials(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

/// Hippo settings as given on the command line or in the environment.
#[derive(Debug, Clone, Default)]
pub struct HippoSettings {
    pub url: Option<String>,
    pub token: Option<Secret>,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// What `spin login` saves (`$XDG_CONFIG_HOME/fermyon/config.json`).
#[derive(serde::Deserialize)]
struct SpinConfig {
    url: Option<String>,
    token: Option<String>,
    expiration: Option<String>,
}

/// Where `spin login` keeps its config file.
pub fn spin_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("fermyon").join("config.json"))
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

/// Resolves the Hippo URL and credentials:
/// - a token, or a username with a password, not both;
/// - a username without a password: prompt on a terminal, fail otherwise;
/// - nothing at all: the token `spin login` saved, if it is for this URL and not expired.
pub fn hippo_credentials(
    settings: &HippoSettings,
    spin_config: Option<&Path>,
    prompt: &dyn Fn(&str) -> std::io::Result<String>,
    interactive: bool,
) -> Result<(String, Credentials), ConfigError> {
    let url = settings
        .url
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or(ConfigError::Missing(
            "the Hippo URL",
            "--hippo-url",
            "HIPPO_URL",
        ))?;
    match (&settings.token, &settings.username, &settings.password) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(ConfigError::Conflict(
            "give either a Hippo token (--hippo-token/HIPPO_TOKEN) or a username and password, not both".into(),
        )),
        (Some(token), None, None) => Ok((url, Credentials::Token(token.clone()))),
        (None, Some(username), Some(password)) => Ok((
            url,
            Credentials::Login {
                username: username.clone(),
                password: password.clone(),
            },
        )),
        (None, None, Some(_)) => Err(ConfigError::Conflict(
            "a Hippo password was given without a username (--hippo-username/HIPPO_USERNAME)".into(),
        )),
        (None, Some(username), None) => {
            if !interactive {
                return Err(ConfigError::Credentials(format!(
                    "no password for Hippo user {username:?}: set HIPPO_PASSWORD (or --hippo-password); there is no terminal to ask for it"
                )));
            }
            let password = prompt(&format!("Hippo password for {username}: ")).map_err(|e| {
                ConfigError::Credentials(format!("reading the password: {e}"))
            })?;
            Ok((
                url,
                Credentials::Login {
                    username: username.clone(),
                    password: Secret::new(password),
                },
            ))
        }
        (None, None, None) => {
            let none = || {
                ConfigError::Credentials(
                    "no Hippo credentials: set HIPPO_TOKEN, or HIPPO_USERNAME and HIPPO_PASSWORD, or run `spin login`".into(),
                )
            };
            let path = spin_config.ok_or_else(none)?;
            let Ok(text) = std::fs::read_to_string(path) else {
                return Err(none());
            };
            let saved: SpinConfig = serde_json::from_str(&text).map_err(|e| ConfigError::File {
                path: path.to_path_buf(),
                message: format!("not a spin login config: {e}"),
            })?;
            let (Some(saved_url), Some(token)) = (saved.url, saved.token) else {
                return Err(none());
            };
            if !same_url(&saved_url, &url) {
                return Err(ConfigError::Credentials(format!(
                    "no Hippo credentials for {url}: the token saved by `spin login` ({}) is for {saved_url}",
                    path.display()
                )));
            }
            let expires = saved
                .expiration
                .as_deref()
                .and_then(|e| DateTime::parse_from_rfc3339(e).ok())
                .map(|d| d.with_timezone(&Utc));
            match expires {
                Some(at) if at <= Utc::now() => Err(ConfigError::Credentials(format!(
                    "the token saved by `spin login` expired at {at}; run `spin login` again or set HIPPO_USERNAME and HIPPO_PASSWORD"
                ))),
                _ => Ok((url, Credentials::Token(Secret::new(token)))),
            }
        }
    }
}

/// Asks for a password on the terminal without echo.
pub fn prompt_password(prompt: &str) -> std::io::Result<String> {
    rpassword::prompt_password(prompt)
}

/// Whether a password can be asked for.
pub fn can_prompt() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Bindle authentication from `BINDLE_USERNAME`/`BINDLE_PASSWORD` or `BINDLE_TOKEN`.
pub fn bindle_auth(
    username: Option<String>,
    password: Option<Secret>,
    token: Option<Secret>,
) -> Result<BindleAuth, ConfigError> {
    match (username, password, token) {
        (None, None, None) => Ok(BindleAuth::None),
        (None, None, Some(t)) => Ok(BindleAuth::Token(t)),
        (Some(username), Some(password), None) => Ok(BindleAuth::Basic { username, password }),
        (Some(_), None, None) | (None, Some(_), None) => Err(ConfigError::Conflict(
            "Bindle basic auth needs both BINDLE_USERNAME and BINDLE_PASSWORD".into(),
        )),
        _ => Err(ConfigError::Conflict(
            "give either BINDLE_TOKEN or BINDLE_USERNAME/BINDLE_PASSWORD, not both".into(),
        )),
    }
}

/// The default state directory: `$XDG_STATE_HOME/hippo-gitops`, else
/// `~/.local/state/hippo-gitops`, else `.hippo-gitops`.
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("state")))
        .map(|d| d.join("hippo-gitops"))
        .unwrap_or_else(|| PathBuf::from(".hippo-gitops"))
}

/// A signing key and whether it was just created.
pub struct SigningKey {
    pub key: SecretKeyEntry,
    pub path: PathBuf,
    pub created: bool,
}

/// Loads the creator key from `explicit` (a `bindle keys create` secret-key file), or from
/// `<state_dir>/signing-key.toml`, creating that one on first use.
pub fn signing_key(explicit: Option<&Path>, state_dir: &Path) -> Result<SigningKey, ConfigError> {
    if let Some(path) = explicit {
        return Ok(SigningKey {
            key: load_creator_key(path)?,
            path: path.to_path_buf(),
            created: false,
        });
    }
    let path = state_dir.join("signing-key.toml");
    if path.exists() {
        return Ok(SigningKey {
            key: load_creator_key(&path)?,
            path,
            created: false,
        });
    }
    let file_err = |message: String| ConfigError::File {
        path: path.clone(),
        message,
    };
    std::fs::create_dir_all(state_dir)
        .map_err(|e| file_err(format!("creating the state dir: {e}")))?;
    let key = SecretKeyEntry::new("hippo-gitops", vec![SignatureRole::Creator]);
    let mut file = SecretKeyFile::default();
    file.key.push(key.clone());
    let text = toml::to_string(&file).map_err(|e| file_err(e.to_string()))?;
    write_private(&path, text.as_bytes()).map_err(|e| file_err(format!("writing: {e}")))?;
    Ok(SigningKey {
        key,
        path,
        created: true,
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

fn load_creator_key(path: &Path) -> Result<SecretKeyEntry, ConfigError> {
    let err = |message: String| ConfigError::File {
        path: path.to_path_buf(),
        message,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| err(format!("reading the signing key: {e}")))?;
    let file: SecretKeyFile =
        toml::from_str(&text).map_err(|e| err(format!("not a bindle secret-key file: {e}")))?;
    file.key
        .into_iter()
        .find(|k| k.roles.contains(&SignatureRole::Creator))
        .ok_or_else(|| {
            err("has no key with the creator role (create one with `bindle keys create`)".into())
        })
}

/// The keyring entry (TOML) that a Bindle server needs to trust `key`.
pub fn keyring_entry(key: &SecretKeyEntry) -> Result<String, ConfigError> {
    let entry = KeyEntry::try_from(key).map_err(|e| ConfigError::Credentials(e.to_string()))?;
    let mut ring = KeyRing::default();
    ring.add_entry(entry);
    toml::to_string(&ring).map_err(|e| ConfigError::Credentials(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_prompt(_: &str) -> std::io::Result<String> {
        panic!("must not prompt")
    }

    fn settings(token: Option<&str>, user: Option<&str>, pass: Option<&str>) -> HippoSettings {
        HippoSettings {
            url: Some("http://hippo.test".into()),
            token: token.map(Secret::new),
            username: user.map(String::from),
            password: pass.map(Secret::new),
        }
    }

    #[test]
    fn token_and_login_rules() {
        assert!(matches!(
            hippo_credentials(
                &settings(Some("t"), Some("u"), None),
                None,
                &no_prompt,
                false
            ),
            Err(ConfigError::Conflict(_))
        ));
        assert!(matches!(
            hippo_credentials(&settings(Some("t"), None, None), None, &no_prompt, false),
            Ok((_, Credentials::Token(_)))
        ));
        assert!(matches!(
            hippo_credentials(
                &settings(None, Some("u"), Some("p")),
                None,
                &no_prompt,
                false
            ),
            Ok((_, Credentials::Login { .. }))
        ));
        let err = hippo_credentials(&settings(None, Some("u"), None), None, &no_prompt, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("HIPPO_PASSWORD") && err.contains("terminal"),
            "{err}"
        );
        let (_, creds) = hippo_credentials(
            &settings(None, Some("u"), None),
            None,
            &|_| Ok("typed".into()),
            true,
        )
        .unwrap();
        assert!(
            matches!(creds, Credentials::Login { password, .. } if password.expose() == "typed")
        );
        assert!(matches!(
            hippo_credentials(&HippoSettings::default(), None, &no_prompt, false),
            Err(ConfigError::Missing(..))
        ));
    }

    #[test]
    fn spin_login_token_is_used_only_for_the_same_url_and_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let write = |url: &str, exp: &str| {
            std::fs::write(
                &path,
                format!(r#"{{"url":"{url}","token":"tok-3141","expiration":"{exp}","danger_accept_invalid_certs":false}}"#),
            )
            .unwrap()
        };
        let s = settings(None, None, None);
        write("http://hippo.test/", "2999-01-01T00:00:00Z");
        let (_, creds) = hippo_credentials(&s, Some(&path), &no_prompt, false).unwrap();
        assert!(matches!(creds, Credentials::Token(t) if t.expose() == "tok-3141"));
        write("http://other.test", "2999-01-01T00:00:00Z");
        let err = hippo_credentials(&s, Some(&path), &no_prompt, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is for http://other.test"), "{err}");
        write("http://hippo.test", "2001-01-01T00:00:00Z");
        let err = hippo_credentials(&s, Some(&path), &no_prompt, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expired"), "{err}");
        assert!(!err.contains("tok-3141"), "no token in messages: {err}");
    }

    #[test]
    fn signing_key_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = signing_key(None, dir.path()).unwrap();
        assert!(a.created);
        let b = signing_key(None, dir.path()).unwrap();
        assert!(!b.created);
        assert_eq!(a.key.keypair, b.key.keypair);
        let entry = keyring_entry(&a.key).unwrap();
        assert!(
            entry.contains("creator") && entry.contains("[[key]]"),
            "{entry}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&a.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
