use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// A successful answer: `{"result": .., "next": .., "total": .., "time": ..}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub result: Value,
    /// For list methods: the `start` of the next page, absent on the last.
    pub next: Option<u64>,
    /// For list methods: how many records match in all.
    pub total: Option<u64>,
    /// The portal's timing block, as sent.
    pub time: Option<Value>,
}

impl Response {
    /// `time.operating_reset_at`: when part of the method's time budget is
    /// released.
    pub fn operating_reset_at(&self) -> Option<SystemTime> {
        self.time.as_ref().and_then(operating_reset_at)
    }
}

/// What a portal's answer body says, independent of transport.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    Success(Response),
    Failure {
        code: String,
        description: String,
        time: Option<Value>,
    },
    /// Not a Bitrix24 answer (HTML error page, empty body, other JSON).
    Foreign,
}

pub(crate) fn read_answer(body: &[u8]) -> Answer {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(body) else {
        return Answer::Foreign;
    };
    let time = object.remove("time");
    if let Some(code) = object.get("error") {
        let code = match code {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let description = object
            .get("error_description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        return Answer::Failure {
            code,
            description,
            time,
        };
    }
    let Some(result) = object.remove("result") else {
        return Answer::Foreign;
    };
    Answer::Success(Response {
        result,
        next: object.get("next").and_then(as_count),
        total: object.get("total").and_then(as_count),
        time,
    })
}

/// Bitrix24 sends counts as numbers or as numeric strings.
pub(crate) fn as_count(value: &Value) -> Option<u64> {
    match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.parse().ok(),
        _ => None,
    }
}

pub(crate) fn operating_reset_at(time: &Value) -> Option<SystemTime> {
    let seconds = match time.get("operating_reset_at")? {
        Value::Number(number) => number.as_f64()?,
        Value::String(text) => text.parse().ok()?,
        _ => return None,
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn answer(value: Value) -> Answer {
        read_answer(value.to_string().as_bytes())
    }

    #[test]
    fn success_with_paging_fields() {
        let Answer::Success(response) = answer(json!({
            "result": [{"ID": "1"}], "next": 50, "total": "120",
            "time": {"operating": 0.5, "operating_reset_at": 1700000000}
        })) else {
            panic!("expected success")
        };
        assert_eq!(response.result, json!([{"ID": "1"}]));
        assert_eq!(response.next, Some(50));
        assert_eq!(response.total, Some(120));
        assert_eq!(
            response.operating_reset_at(),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
    }

    #[test]
    fn failure_keeps_code_and_description() {
        assert_eq!(
            answer(
                json!({"error": "expired_token", "error_description": "The access token provided has expired."})
            ),
            Answer::Failure {
                code: "expired_token".into(),
                description: "The access token provided has expired.".into(),
                time: None
            }
        );
    }

    #[test]
    fn foreign_bodies() {
        assert_eq!(
            read_answer(b"<html>502 Bad Gateway</html>"),
            Answer::Foreign
        );
        assert_eq!(read_answer(b""), Answer::Foreign);
        assert_eq!(answer(json!({"status": "ok"})), Answer::Foreign);
        assert_eq!(answer(json!([1, 2])), Answer::Foreign);
    }

    #[test]
    fn null_and_false_results_are_results() {
        assert!(matches!(
            answer(json!({"result": false})),
            Answer::Success(_)
        ));
        assert!(matches!(
            answer(json!({"result": null})),
            Answer::Success(_)
        ));
    }
}
