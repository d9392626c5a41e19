use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Number, Value};

/// Bytes left as they are: RFC 3986 unreserved characters. Everything else,
/// including brackets inside key text and spaces (`%20`), is percent-encoded;
/// only the structural brackets around subscripts stay literal.
const FORM_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Encodes a JSON object as a PHP-style form body, the way PHP's
/// `http_build_query` does, e.g. `a=1&b[c]=2&PHONE[0][VALUE]=..`.
///
/// - Nested objects become `[key]` subscripts and arrays explicit `[0]`,
///   `[1]` subscripts, so lists of maps (`PHONE[0][VALUE]`,
///   `PHONE[0][VALUE_TYPE]`) stay together.
/// - Strings are sent as they are; numbers as decimal text (never exponent
///   notation); booleans as `1` and `0`, as `http_build_query` does. Bitrix24's
///   own yes/no fields expect the strings `"Y"` / `"N"`: pass those as
///   strings, a boolean will not become them.
/// - `null`, an empty object and an empty array become an empty value
///   (`key=`), which Bitrix24 reads as "clear this field". PHP's
///   `http_build_query` would drop them, silently leaving the field as it was.
/// - A top-level array uses its indices as names (`0=a&1=b`); a top-level
///   scalar has no name to go under and encodes as the empty string.
pub fn encode(value: &Value) -> String {
    let mut body = String::new();
    match value {
        Value::Object(map) => {
            for (name, child) in map {
                let prefix = utf8_percent_encode(name, FORM_COMPONENT).to_string();
                encode_under(&mut body, &prefix, child);
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                encode_under(&mut body, &index.to_string(), child);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
    }
    body
}

fn encode_under(body: &mut String, prefix: &str, value: &Value) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let nested = format!("{prefix}[{}]", utf8_percent_encode(key, FORM_COMPONENT));
                encode_under(body, &nested, child);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (index, child) in items.iter().enumerate() {
                encode_under(body, &format!("{prefix}[{index}]"), child);
            }
        }
        Value::Object(_) | Value::Array(_) | Value::Null => push_pair(body, prefix, ""),
        Value::Bool(flag) => push_pair(body, prefix, if *flag { "1" } else { "0" }),
        Value::Number(number) => push_pair(body, prefix, &number_text(number)),
        Value::String(text) => push_pair(
            body,
            prefix,
            &utf8_percent_encode(text, FORM_COMPONENT).to_string(),
        ),
    }
}

fn push_pair(body: &mut String, encoded_key: &str, encoded_value: &str) {
    if !body.is_empty() {
        body.push('&');
    }
    body.push_str(encoded_key);
    body.push('=');
    body.push_str(encoded_value);
}

fn number_text(number: &Number) -> String {
    if let Some(integer) = number.as_i64() {
        return integer.to_string();
    }
    if let Some(integer) = number.as_u64() {
        return integer.to_string();
    }
    // Rust prints f64 without exponent notation: 1e20 -> "100000000000000000000".
    number
        .as_f64()
        .map(|float| float.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn flat_and_nested() {
        assert_eq!(encode(&json!({"a": "1", "b": {"c": "2"}})), "a=1&b[c]=2");
        assert_eq!(encode(&json!({})), "");
    }

    #[test]
    fn lists_of_maps_keep_their_index() {
        let fields = json!({"fields": {"PHONE": [
            {"VALUE": "+7 900", "VALUE_TYPE": "WORK"},
            {"VALUE": "555", "VALUE_TYPE": "HOME"}
        ]}});
        assert_eq!(
            encode(&fields),
            "fields[PHONE][0][VALUE]=%2B7%20900&fields[PHONE][0][VALUE_TYPE]=WORK\
&fields[PHONE][1][VALUE]=555&fields[PHONE][1][VALUE_TYPE]=HOME"
        );
    }

    #[test]
    fn scalars() {
        assert_eq!(
            encode(
                &json!({"f": false, "i": -42, "n": null, "t": true, "u": 18446744073709551615u64})
            ),
            "f=0&i=-42&n=&t=1&u=18446744073709551615"
        );
        assert_eq!(
            encode(&json!({"x": 1.5, "y": 1e20, "z": 3.0})),
            "x=1.5&y=100000000000000000000&z=3"
        );
        assert_eq!(encode(&json!({"e": [], "o": {}})), "e=&o=");
    }

    #[test]
    fn escapes_keys_and_values() {
        assert_eq!(
            encode(&json!({"a b[c]": "x&y=z%", "п": "ё~._-"})),
            "a%20b%5Bc%5D=x%26y%3Dz%25&%D0%BF=%D1%91~._-"
        );
    }

    #[test]
    fn non_object_top_levels() {
        assert_eq!(encode(&json!(["a", "b"])), "0=a&1=b");
        assert_eq!(encode(&json!("lonely")), "");
    }
}
