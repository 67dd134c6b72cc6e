//! The webhooks file (`serve --webhooks FILE`): a JSON list of endpoints, read and checked once at
//! start, so that a mistake stops the server with a message naming the entry and the field
//! instead of surfacing as deliveries that never happen.
//!
//! ```json
//! [{"name": "alerts", "url": "https://bot.example/hook", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
//!   "story_ids": [], "tags": ["breaking"]}]
//! ```
//!
//! Optional per endpoint, for a receiver that is known to be slow or a test that cannot wait
//! minutes: `timeout_secs`, `backoff_min_secs`, `backoff_max_secs` (see [`super::deliver`] for the
//! defaults and why).

use std::{fmt, path::Path, time::Duration};

use base64::Engine as _;
use serde_json::{Map, Value};

use super::deliver::{
    DEFAULT_BACKOFF_MAX, DEFAULT_BACKOFF_MIN, DEFAULT_REQUEST_TIMEOUT, MAX_BACKOFF, MAX_TIMEOUT,
};
use crate::validate;

/// The prefix of a Standard Webhooks secret; the base64 key follows it.
pub const SECRET_PREFIX: &str = "whsec_";

/// The shortest key accepted, in bytes: the Standard Webhooks specification asks for 24 to 64
/// random bytes, and a shorter HMAC key is guessable.
const MIN_KEY_BYTES: usize = 16;

/// The longest key accepted, in bytes (the specification's upper bound).
const MAX_KEY_BYTES: usize = 64;

/// The most endpoints one server delivers to: each is a task, a kept connection and a named
/// consumer (of at most [`crate::consumers::MAX_CONSUMERS`]).
pub const MAX_ENDPOINTS: usize = 100;

/// An endpoint's signing key: the bytes after `whsec_`, base64-decoded. It never appears in
/// Debug output, logs or metrics.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Parses `whsec_<base64>`. The error never repeats the value.
    pub fn parse(value: &str) -> Result<Self, String> {
        let Some(encoded) = value.strip_prefix(SECRET_PREFIX) else {
            return Err(format!(
                "must be {SECRET_PREFIX} followed by a base64 key (the Standard Webhooks form)"
            ));
        };
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| format!("the part after {SECRET_PREFIX} is not standard base64"))?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(format!(
                "the key after {SECRET_PREFIX} is {} bytes; use {MIN_KEY_BYTES} to {MAX_KEY_BYTES} random bytes",
                key.len()
            ));
        }
        Ok(Self(key))
    }

    /// The key, for signing.
    pub(super) fn key(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// One endpoint, as checked.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Its name, which is also the name of the consumer that keeps its position.
    pub name: String,
    /// Where events are POSTed: http or https.
    pub url: url::Url,
    /// The signing key.
    pub secret: Secret,
    /// Only these stories; empty: every story.
    pub story_ids: Vec<String>,
    /// Only stories with one of these tags; empty: any.
    pub tags: Vec<String>,
    /// How long one request may take, connecting included.
    pub timeout: Duration,
    /// The first wait after a failed try.
    pub backoff_min: Duration,
    /// The longest wait between tries.
    pub backoff_max: Duration,
}

/// Why the webhooks file was refused: which entry, which field, what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read or is not a JSON list.
    #[error("--webhooks {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// One entry is wrong.
    #[error("--webhooks {path}: entry {index}{name}: {field}: {reason}")]
    Entry {
        /// The file.
        path: String,
        /// The entry's index in the list, from 0.
        index: usize,
        /// ` ("NAME")` when the entry has a name, else empty.
        name: String,
        /// The field.
        field: String,
        /// What is wrong and what would be right.
        reason: String,
    },
}

/// Reads and checks the webhooks file at `path`.
pub fn load(path: &Path) -> Result<Vec<Endpoint>, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    parse(&shown, &text)
}

/// Checks the text of a webhooks file; `path` names it in errors.
pub fn parse(path: &str, text: &str) -> Result<Vec<Endpoint>, ConfigError> {
    let file = |reason: String| ConfigError::File {
        path: path.to_owned(),
        reason,
    };
    let value: Value =
        serde_json::from_str(text).map_err(|e| file(format!("not valid JSON: {e}")))?;
    let Value::Array(entries) = value else {
        return Err(file(
            "must be a JSON list of endpoints, [{\"name\": ..., \"url\": ..., \"secret\": ...}]"
                .to_owned(),
        ));
    };
    if entries.len() > MAX_ENDPOINTS {
        return Err(file(format!(
            "has {} endpoints; at most {MAX_ENDPOINTS} are allowed",
            entries.len()
        )));
    }
    let mut endpoints: Vec<Endpoint> = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let endpoint = parse_entry(entry).map_err(|(name, field, reason)| ConfigError::Entry {
            path: path.to_owned(),
            index,
            name: name.map(|n| format!(" ({n:?})")).unwrap_or_default(),
            field: field.to_owned(),
            reason,
        })?;
        if let Some(earlier) = endpoints.iter().position(|e| e.name == endpoint.name) {
            return Err(ConfigError::Entry {
                path: path.to_owned(),
                index,
                name: format!(" ({:?})", endpoint.name),
                field: "name".to_owned(),
                reason: format!(
                    "entry {earlier} has the same name; each endpoint has its own consumer, named after it"
                ),
            });
        }
        endpoints.push(endpoint);
    }
    Ok(endpoints)
}

/// An entry's failure: its name when it has a usable one, the field, the reason.
type EntryError = (Option<String>, &'static str, String);

/// The fields an entry may have.
const FIELDS: [&str; 8] = [
    "name",
    "url",
    "secret",
    "story_ids",
    "tags",
    "timeout_secs",
    "backoff_min_secs",
    "backoff_max_secs",
];

fn parse_entry(entry: &Value) -> Result<Endpoint, EntryError> {
    let Value::Object(object) = entry else {
        return Err((None, "entry", "must be a JSON object".to_owned()));
    };
    // The name first, so that every later error can name the entry by it.
    let name = match object.get("name") {
        None => return Err((None, "name", "is required".to_owned())),
        Some(Value::String(name)) => name.clone(),
        Some(_) => return Err((None, "name", "must be a string".to_owned())),
    };
    validate::id("name", &name).map_err(|e| (None, "name", e.description))?;
    let fail = |field: &'static str, reason: String| (Some(name.clone()), field, reason);
    if let Some(unknown) = object.keys().find(|key| !FIELDS.contains(&key.as_str())) {
        return Err(fail(
            "entry",
            format!(
                "unknown field {unknown:?}; the fields are {}",
                FIELDS.join(", ")
            ),
        ));
    }
    let url = match object.get("url") {
        None => return Err(fail("url", "is required".to_owned())),
        Some(Value::String(url)) => url,
        Some(_) => return Err(fail("url", "must be a string".to_owned())),
    };
    let url = check_url(url).map_err(|reason| fail("url", reason))?;
    let secret = match object.get("secret") {
        None => return Err(fail("secret", "is required".to_owned())),
        Some(Value::String(secret)) => secret,
        Some(_) => return Err(fail("secret", "must be a string".to_owned())),
    };
    let secret = Secret::parse(secret).map_err(|reason| fail("secret", reason))?;
    let story_ids = strings(object, "story_ids").map_err(|reason| fail("story_ids", reason))?;
    let tags = strings(object, "tags").map_err(|reason| fail("tags", reason))?;
    validate::filter(&story_ids, &tags).map_err(|e| {
        let field = if e.field.starts_with("tags") {
            "tags"
        } else {
            "story_ids"
        };
        fail(field, e.to_string())
    })?;
    let timeout = seconds(object, "timeout_secs", DEFAULT_REQUEST_TIMEOUT, MAX_TIMEOUT)
        .map_err(|reason| fail("timeout_secs", reason))?;
    let backoff_min = seconds(object, "backoff_min_secs", DEFAULT_BACKOFF_MIN, MAX_BACKOFF)
        .map_err(|reason| fail("backoff_min_secs", reason))?;
    let backoff_max = seconds(object, "backoff_max_secs", DEFAULT_BACKOFF_MAX, MAX_BACKOFF)
        .map_err(|reason| fail("backoff_max_secs", reason))?;
    if backoff_min > backoff_max {
        return Err(fail(
            "backoff_min_secs",
            format!(
                "{} s is more than backoff_max_secs ({} s)",
                backoff_min.as_secs_f64(),
                backoff_max.as_secs_f64()
            ),
        ));
    }
    Ok(Endpoint {
        name,
        url,
        secret,
        story_ids,
        tags,
        timeout,
        backoff_min,
        backoff_max,
    })
}

/// An absolute http(s) URL with a host and no credentials (which would end up in logs; the
/// secret is what proves the sender).
fn check_url(value: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(value).map_err(|e| format!("{value:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "must be an http:// or https:// URL, not {}:",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials (user:password@); the signature proves the sender, and a URL is logged".to_owned());
    }
    if url.fragment().is_some() {
        return Err("must not have a #fragment, which is never sent".to_owned());
    }
    Ok(url)
}

/// An optional list of strings; empty when absent.
fn strings(object: &Map<String, Value>, field: &str) -> Result<Vec<String>, String> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(values)) => values
            .iter()
            .map(|value| match value {
                Value::String(value) => Ok(value.clone()),
                _ => Err("must be a list of strings".to_owned()),
            })
            .collect(),
        Some(_) => Err("must be a list of strings".to_owned()),
    }
}

/// An optional number of seconds, more than 0 and at most `max`; `default` when absent.
fn seconds(
    object: &Map<String, Value>,
    field: &str,
    default: Duration,
    max: Duration,
) -> Result<Duration, String> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(number)) => match number.as_f64() {
            Some(secs) if secs > 0.0 && secs <= max.as_secs_f64() => {
                Ok(Duration::from_secs_f64(secs))
            }
            _ => Err(format!(
                "must be more than 0 and at most {} seconds",
                max.as_secs()
            )),
        },
        Some(_) => Err("must be a number of seconds".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn error(text: &str) -> String {
        parse("hooks.json", text).unwrap_err().to_string()
    }

    #[test]
    fn a_good_entry_is_read_with_the_defaults() {
        let text = format!(
            r#"[{{"name": "alerts", "url": "http://127.0.0.1:9/hook", "secret": "{SECRET}", "tags": ["breaking"]}}]"#
        );
        let endpoints = parse("hooks.json", &text).unwrap();
        assert_eq!(endpoints[0].name, "alerts");
        assert_eq!(endpoints[0].tags, ["breaking"]);
        assert_eq!(endpoints[0].timeout, DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(format!("{:?}", endpoints[0].secret), "Secret(redacted)");
        assert!(!format!("{endpoints:?}").contains("MfKQ9r8"));
    }

    #[test]
    fn each_error_names_the_entry_and_the_field_and_never_the_secret() {
        let bad_url = format!(
            r#"[{{"name": "a", "url": "http://x/", "secret": "{SECRET}"}}, {{"name": "b", "url": "ftp://x/", "secret": "{SECRET}"}}]"#
        );
        let message = error(&bad_url);
        assert!(message.contains(r#"entry 1 ("b"): url"#), "{message}");
        let message =
            error(r#"[{"name": "c", "url": "http://x/", "secret": "whsec_!!notbase64"}]"#);
        assert!(message.contains(r#"entry 0 ("c"): secret"#), "{message}");
        assert!(!message.contains("notbase64"), "{message}");
        let message = error(r#"[{"name": "c", "url": "http://x/", "secret": "hunter2hunter2"}]"#);
        assert!(
            message.contains("secret") && !message.contains("hunter2"),
            "{message}"
        );
        let message = error(&format!(
            r#"[{{"url": "http://x/", "secret": "{SECRET}"}}]"#
        ));
        assert!(message.contains("entry 0: name: is required"), "{message}");
        let message = error(&format!(
            r#"[{{"name": "a", "url": "http://x/", "secret": "{SECRET}"}}, {{"name": "a", "url": "http://y/", "secret": "{SECRET}"}}]"#
        ));
        assert!(message.contains(r#"entry 1 ("a"): name"#), "{message}");
    }
}
