//! Method parameters: the query string and the body (JSON or PHP-style form)
//! merged into one JSON object, plus lenient accessors, because Bitrix24 reads
//! `ID` and `id`, `5` and `"5"` alike.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// Limits applied to form bodies and batch command queries.
fn form_limits() -> b24_phpform::Limits {
    b24_phpform::Limits {
        max_bytes: 64 * 1024 * 1024,
        max_depth: 16,
        max_keys: 100_000,
    }
}

/// Parses a PHP-style query (`a[b][]=v`) into a JSON object.
pub fn parse_query(query: &str) -> Result<Map<String, Value>, ApiError> {
    if query.is_empty() {
        return Ok(Map::new());
    }
    match b24_phpform::parse_str(query, &form_limits()) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Ok(Map::new()),
        Err(err) => Err(ApiError::invalid_arg(format!("Invalid request: {err}"))),
    }
}

/// Parses a request body by its content type; an empty body is no parameters.
pub fn parse_body(content_type: &str, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let is_json = content_type.to_ascii_lowercase().contains("json")
        || (!content_type.contains("form") && body.first() == Some(&b'{'));
    if is_json {
        return match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Ok(Map::new()),
            Err(_) => Err(ApiError::invalid_arg(
                "Invalid request: malformed JSON body",
            )),
        };
    }
    match b24_phpform::parse(body, &form_limits()) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Ok(Map::new()),
        Err(err) => Err(ApiError::invalid_arg(format!("Invalid request: {err}"))),
    }
}

/// Case-insensitive lookup of a key in a JSON object.
pub fn get_ci<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// Reads an integer the way PHP does: numbers and numeric strings.
pub fn as_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse::<i64>().ok().or_else(|| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.fract() == 0.0)
                .map(|f| f as i64)
        }),
        Value::Bool(b) => Some(i64::from(*b)),
        _ => None,
    }
}

pub fn as_f64(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

/// A JSON number as PHP prints it: whole values without a fraction
/// (`19000`, not `19000.0`), so typed clients can read ids and counts.
pub fn number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        Value::from(value as i64)
    } else {
        Value::from(value)
    }
}

/// PHP truthiness for flags such as `halt` or `useOriginalUfNames`.
pub fn as_flag(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => {
            let s = s.trim();
            !(s.is_empty() || s == "0" || s.eq_ignore_ascii_case("N") || s == "false")
        }
        _ => false,
    }
}

/// A scalar rendered as PHP would print it into a string.
pub fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(true) => "1".into(),
        Value::Bool(false) | Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Lists may arrive as JSON arrays or as PHP arrays with numeric keys.
pub fn as_list(value: &Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items.clone(),
        Value::Object(map) => map.values().cloned().collect(),
        Value::Null => Vec::new(),
        other => vec![other.clone()],
    }
}

/// Typed access to one call's parameters.
#[derive(Debug, Clone, Default)]
pub struct Params(pub Map<String, Value>);

impl Params {
    pub fn get(&self, key: &str) -> Option<&Value> {
        get_ci(&self.0, key)
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(as_i64)
    }

    pub fn text(&self, key: &str) -> Option<String> {
        self.get(key).map(scalar_text)
    }

    pub fn object(&self, key: &str) -> Map<String, Value> {
        match self.get(key) {
            Some(Value::Object(map)) => map.clone(),
            _ => Map::new(),
        }
    }

    pub fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(as_flag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lenient_accessors_read_php_style_values() {
        let map = json!({"ID": "15", "halt": "0", "Start": 50})
            .as_object()
            .unwrap()
            .clone();
        let params = Params(map);
        assert_eq!(params.int("id"), Some(15));
        assert!(!params.flag("halt"));
        assert_eq!(params.int("start"), Some(50));
        assert_eq!(
            as_list(&json!({"0": "a", "1": "b"})),
            vec![json!("a"), json!("b")]
        );
    }

    #[test]
    fn json_bodies_are_detected() {
        let parsed = parse_body("application/json", br#"{"a": 1}"#).unwrap();
        assert_eq!(parsed.get("a"), Some(&json!(1)));
        assert!(parse_body("application/json", b"{").is_err());
        assert!(parse_body("", b"  ").unwrap().is_empty());
    }
}
