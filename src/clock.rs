//! The wall clock, for recording times (never a decider input). Imports nothing of Cradle's.

/// Unix milliseconds now: the recording time, never a decider input.
pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
