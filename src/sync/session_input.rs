//! Session starts as clients send them, validated: the HTTP body of `PUT /sessions/{id}`
//! and the MQTT announcement on `accounts/{account}/baby_stations/{client}` share one parser,
//! so both paths accept the same two shapes and refuse the same mistakes.
//!
//! - legacy: `{"id","host_connection_id","name","started_at":"RFC 3339 time"}`
//! - current: `{"session_id","client_id"?,"connection_id","name","started_at_millis"}`

use serde_json::{Map, Value};

use crate::topics::is_valid_id;

/// Longest session name accepted, in characters.
pub(crate) const MAX_NAME_CHARS: usize = 200;

/// A field that is missing or wrong; HTTP answers 400 naming it, MQTT counts a drop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub(crate) struct FieldError {
    /// The field (or `body`).
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> FieldError {
    FieldError {
        field,
        message: message.into(),
    }
}

/// A validated start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedStart {
    /// The session.
    pub session_id: String,
    /// The baby station, when given.
    pub client_id: Option<String>,
    /// The baby station's connection.
    pub connection_id: String,
    /// Display name (trimmed).
    pub name: String,
    /// Start time, Unix milliseconds.
    pub started_at_millis: i64,
}

/// What an MQTT baby-station message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Announcement {
    /// A session started.
    Start(ParsedStart),
    /// A session ended: `{"session_id", "ended_at_millis"}`.
    End {
        /// The session.
        session_id: String,
        /// When.
        ended_at_millis: i64,
    },
    /// An empty retained payload: the announcement was withdrawn (no session change).
    Withdrawn,
}

fn id_field(obj: &Map<String, Value>, field: &'static str) -> Result<Option<String>, FieldError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if is_valid_id(s) => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(bad(
            field,
            "must be 1-128 of A-Z a-z 0-9 - _ . : @ (it becomes part of a topic)",
        )),
        Some(_) => Err(bad(field, "must be a string")),
    }
}

fn required_id(obj: &Map<String, Value>, field: &'static str) -> Result<String, FieldError> {
    id_field(obj, field)?.ok_or_else(|| bad(field, "is required"))
}

/// Parses a session start in either shape. `max_name_chars` bounds the name.
pub(crate) fn parse_start(body: &[u8], max_name_chars: usize) -> Result<ParsedStart, FieldError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad("body", format!("invalid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| bad("body", "must be a JSON object"))?;
    parse_start_object(obj, max_name_chars)
}

fn parse_start_object(
    obj: &Map<String, Value>,
    max_name_chars: usize,
) -> Result<ParsedStart, FieldError> {
    let legacy = obj.contains_key("id") && !obj.contains_key("session_id");
    let (session_id, connection_id, started_at_millis) = if legacy {
        let started_at = match obj.get("started_at") {
            None | Some(Value::Null) => return Err(bad("started_at", "is required")),
            Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|e| bad("started_at", format!("not an RFC 3339 time: {e}")))?
                .timestamp_millis(),
            Some(_) => return Err(bad("started_at", "must be an RFC 3339 time string")),
        };
        if started_at <= 0 {
            return Err(bad("started_at", "must be after 1970-01-01T00:00:00Z"));
        }
        (
            required_id(obj, "id")?,
            required_id(obj, "host_connection_id")?,
            started_at,
        )
    } else {
        let started = match obj.get("started_at_millis") {
            None | Some(Value::Null) => return Err(bad("started_at_millis", "is required")),
            Some(v) => v
                .as_i64()
                .ok_or_else(|| bad("started_at_millis", "must be a whole number"))?,
        };
        if started <= 0 {
            return Err(bad("started_at_millis", "must be positive"));
        }
        (
            required_id(obj, "session_id")?,
            required_id(obj, "connection_id")?,
            started,
        )
    };
    let client_id = id_field(obj, "client_id")?;
    let name = match obj.get("name") {
        None | Some(Value::Null) => return Err(bad("name", "is required")),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(_) => return Err(bad("name", "must be a string")),
    };
    if name.is_empty() {
        return Err(bad("name", "must not be empty"));
    }
    if name.chars().count() > max_name_chars {
        return Err(bad(
            "name",
            format!("must be at most {max_name_chars} characters"),
        ));
    }
    Ok(ParsedStart {
        session_id,
        client_id,
        connection_id,
        name,
        started_at_millis,
    })
}

/// Parses a message on `accounts/{account}/baby_stations/{client}`.
pub(crate) fn parse_announcement(
    payload: &[u8],
    max_name_chars: usize,
) -> Result<Announcement, FieldError> {
    if payload.is_empty() {
        return Ok(Announcement::Withdrawn);
    }
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| bad("body", format!("invalid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| bad("body", "must be a JSON object"))?;
    if let Some(ended) = obj.get("ended_at_millis") {
        let ended_at_millis = ended
            .as_i64()
            .filter(|v| *v > 0)
            .ok_or_else(|| bad("ended_at_millis", "must be a positive whole number"))?;
        let session_id = match id_field(obj, "session_id")? {
            Some(id) => id,
            None => required_id(obj, "id")?,
        };
        return Ok(Announcement::End {
            session_id,
            ended_at_millis,
        });
    }
    parse_start_object(obj, max_name_chars).map(Announcement::Start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: &str) -> &'static str {
        parse_start(body.as_bytes(), MAX_NAME_CHARS)
            .unwrap_err()
            .field
    }

    #[test]
    fn the_current_shape_parses() {
        let p = parse_start(
            br#"{"session_id":"s1","client_id":"baby","connection_id":"k1","name":" Nursery ","started_at_millis":1700000000000}"#,
            MAX_NAME_CHARS,
        )
        .unwrap();
        assert_eq!(p.session_id, "s1");
        assert_eq!(p.client_id.as_deref(), Some("baby"));
        assert_eq!(p.connection_id, "k1");
        assert_eq!(p.name, "Nursery");
        assert_eq!(p.started_at_millis, 1_700_000_000_000);
    }

    #[test]
    fn the_legacy_shape_parses_its_rfc3339_time() {
        let p = parse_start(
            br#"{"id":"s1","host_connection_id":"k1","name":"Nursery","started_at":"2026-11-22T20:00:00.250+01:00"}"#,
            MAX_NAME_CHARS,
        )
        .unwrap();
        assert_eq!(p.session_id, "s1");
        assert_eq!(p.client_id, None);
        assert_eq!(p.connection_id, "k1");
        assert_eq!(p.started_at_millis, 1_795_374_000_250);
    }

    #[test]
    fn every_mistake_names_its_field() {
        assert_eq!(field("{"), "body");
        assert_eq!(field("[1]"), "body");
        assert_eq!(
            field(r#"{"session_id":"s","connection_id":"k","name":"n"}"#),
            "started_at_millis"
        );
        assert_eq!(
            field(r#"{"session_id":"s","connection_id":"k","name":"n","started_at_millis":0}"#),
            "started_at_millis"
        );
        assert_eq!(
            field(r#"{"session_id":"s","connection_id":"k","name":"n","started_at_millis":-5}"#),
            "started_at_millis"
        );
        assert_eq!(
            field(r#"{"session_id":"s","connection_id":"k","name":"n","started_at_millis":"x"}"#),
            "started_at_millis"
        );
        assert_eq!(
            field(r#"{"id":"s","host_connection_id":"k","name":"n"}"#),
            "started_at"
        );
        assert_eq!(
            field(r#"{"id":"s","host_connection_id":"k","name":"n","started_at":"yesterday"}"#),
            "started_at"
        );
        assert_eq!(
            field(
                r#"{"id":"s","host_connection_id":"k","name":"n","started_at":"1969-01-01T00:00:00Z"}"#
            ),
            "started_at"
        );
        assert_eq!(
            field(r#"{"session_id":"s","connection_id":"k","name":"  ","started_at_millis":1}"#),
            "name"
        );
        assert_eq!(
            field(r#"{"session_id":"s","connection_id":"k","started_at_millis":1}"#),
            "name"
        );
        let long = format!(
            r#"{{"session_id":"s","connection_id":"k","name":"{}","started_at_millis":1}}"#,
            "x".repeat(201)
        );
        assert_eq!(field(&long), "name");
        assert_eq!(
            field(r#"{"session_id":"a/b","connection_id":"k","name":"n","started_at_millis":1}"#),
            "session_id"
        );
        assert_eq!(
            field(r#"{"session_id":"s","connection_id":"k#","name":"n","started_at_millis":1}"#),
            "connection_id"
        );
        assert_eq!(
            field(
                r#"{"session_id":"s","client_id":"+","connection_id":"k","name":"n","started_at_millis":1}"#
            ),
            "client_id"
        );
        assert_eq!(
            field(r#"{"id":"s","name":"n","started_at":"2026-01-01T00:00:00Z"}"#),
            "host_connection_id"
        );
    }

    #[test]
    fn announcements_start_end_or_withdraw() {
        assert_eq!(parse_announcement(b"", 10), Ok(Announcement::Withdrawn));
        assert_eq!(
            parse_announcement(br#"{"session_id":"s1","ended_at_millis":9}"#, 10),
            Ok(Announcement::End {
                session_id: "s1".into(),
                ended_at_millis: 9
            })
        );
        assert!(matches!(
            parse_announcement(
                br#"{"session_id":"s1","connection_id":"k","name":"n","started_at_millis":3}"#,
                10
            ),
            Ok(Announcement::Start(_))
        ));
        assert_eq!(
            parse_announcement(br#"{"session_id":"s1","ended_at_millis":0}"#, 10)
                .unwrap_err()
                .field,
            "ended_at_millis"
        );
    }
}
