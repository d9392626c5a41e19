//! `batch`: up to 50 commands `name: "method?query"` run in order, each with
//! its own result, error, total, next and time; `$result[name][path]`
//! references earlier results; `halt` stops at the first error.

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::exec;
use crate::methods::Output;
use crate::params::{Params, as_flag, parse_query, scalar_text};
use crate::shared::{Shared, Webhook};

pub const MAX_COMMANDS: usize = 50;

/// The sections of a batch answer that `$result`-style references can read.
#[derive(Debug, Default)]
pub struct Sections {
    pub result: Vec<(String, Value)>,
    pub result_error: Vec<(String, Value)>,
    pub result_total: Vec<(String, Value)>,
    pub result_next: Vec<(String, Value)>,
    pub result_time: Vec<(String, Value)>,
}

impl Sections {
    fn section(&self, name: &str) -> Option<&[(String, Value)]> {
        Some(match name {
            "result" => &self.result,
            "result_error" => &self.result_error,
            "result_total" => &self.result_total,
            "result_next" => &self.result_next,
            "result_time" => &self.result_time,
            _ => return None,
        })
    }

    fn lookup(&self, section: &str, path: &[String]) -> Option<Value> {
        let (first, rest) = path.split_first()?;
        let mut current = self
            .section(section)?
            .iter()
            .find(|(k, _)| k == first)?
            .1
            .clone();
        for segment in rest {
            current = match current {
                Value::Object(map) => map.get(segment)?.clone(),
                Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?.clone(),
                _ => return None,
            };
        }
        Some(current)
    }
}

/// Finds `$result[a][b]` (or `$result_total[...]`, ...) at `at`; returns the
/// section, the path and the length of the reference text.
fn reference_at(text: &str, at: usize) -> Option<(String, Vec<String>, usize)> {
    let rest = &text[at..];
    let body = rest.strip_prefix('$')?;
    let name_len = body.find('[')?;
    let section = &body[..name_len];
    if !matches!(
        section,
        "result" | "result_error" | "result_total" | "result_next" | "result_time"
    ) {
        return None;
    }
    let mut path = Vec::new();
    let mut cursor = 1 + name_len;
    while rest[cursor..].starts_with('[') {
        let close = rest[cursor..].find(']')?;
        path.push(rest[cursor + 1..cursor + close].to_string());
        cursor += close + 1;
    }
    (!path.is_empty()).then(|| (section.to_string(), path, cursor))
}

/// Replaces references in one string value. A value that is exactly one
/// reference takes the referenced value whole (arrays stay arrays).
pub fn substitute_text(text: &str, sections: &Sections) -> Value {
    if let Some((section, path, len)) = reference_at(text, 0) {
        if len == text.len() {
            if let Some(value) = sections.lookup(&section, &path) {
                return value;
            }
        }
    }
    let mut out = String::new();
    let mut i = 0;
    while i < text.len() {
        if text[i..].starts_with('$') {
            if let Some((section, path, len)) = reference_at(text, i) {
                match sections.lookup(&section, &path) {
                    Some(value) => out.push_str(&scalar_text(&value)),
                    None => out.push_str(&text[i..i + len]),
                }
                i += len;
                continue;
            }
        }
        let ch = text[i..].chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    Value::String(out)
}

pub fn substitute(value: Value, sections: &Sections) -> Value {
    match value {
        Value::String(text) if text.contains('$') => substitute_text(&text, sections),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| substitute(v, sections)).collect())
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, substitute(v, sections)))
                .collect(),
        ),
        other => other,
    }
}

/// PHP arrays with keys 0..n in order serialise as lists; others as objects;
/// an empty one as `[]`.
fn php_array(entries: Vec<(String, Value)>) -> Value {
    let is_list = entries
        .iter()
        .enumerate()
        .all(|(i, (k, _))| k == &i.to_string());
    if is_list {
        Value::Array(entries.into_iter().map(|(_, v)| v).collect())
    } else {
        Value::Object(entries.into_iter().collect::<Map<String, Value>>())
    }
}

/// The commands of a batch in order, from a JSON object/array or PHP form.
pub fn commands(params: &Params) -> Result<Vec<(String, String)>, ApiError> {
    let cmd = params.get("cmd").cloned().unwrap_or(Value::Null);
    let list: Vec<(String, String)> = match cmd {
        Value::Object(map) => map.into_iter().map(|(k, v)| (k, scalar_text(&v))).collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), scalar_text(v)))
            .collect(),
        _ => Vec::new(),
    };
    if list.is_empty() {
        return Err(ApiError::invalid_arg("Parameter 'cmd' is empty"));
    }
    if list.len() > MAX_COMMANDS {
        return Err(ApiError::new(
            http::StatusCode::BAD_REQUEST,
            "ERROR_BATCH_LENGTH_EXCEEDED",
            "Max batch length exceeded",
        ));
    }
    Ok(list)
}

/// Runs a whole batch (already admitted by the rate limit as one request).
/// `drop_response` is set when a command's fault plan says its answer is
/// lost: the batch runs, and the HTTP answer carrying it never arrives.
pub async fn run(
    shared: &Shared,
    webhook: &Webhook,
    params: &Params,
    drop_response: &mut bool,
) -> Result<Output, ApiError> {
    let halt = params.get("halt").is_some_and(as_flag);
    let mut sections = Sections::default();
    for (name, command) in commands(params)? {
        let (method_part, query) = command.split_once('?').unwrap_or((command.as_str(), ""));
        let method = exec::method_name(method_part);
        let outcome = if method == "batch" {
            Err(ApiError::new(
                http::StatusCode::METHOD_NOT_ALLOWED,
                "ERROR_BATCH_METHOD_NOT_ALLOWED",
                "Method is not allowed for batch usage",
            ))
        } else {
            match parse_query(query) {
                Ok(parsed) => {
                    let resolved = substitute(Value::Object(parsed), &sections);
                    let inner = Params(resolved.as_object().cloned().unwrap_or_default());
                    let plan = shared.faults.plan(&method);
                    *drop_response |= plan.drop_response;
                    let (result, time) =
                        exec::run_single(shared, webhook, &method, inner, &plan).await;
                    result.map(|output| (output, time))
                }
                Err(err) => Err(err),
            }
        };
        match outcome {
            Ok((output, time)) => {
                sections.result.push((name.clone(), output.result));
                if let Some(total) = output.total {
                    sections.result_total.push((name.clone(), json!(total)));
                }
                if let Some(next) = output.next {
                    sections.result_next.push((name.clone(), json!(next)));
                }
                sections.result_time.push((name, time));
            }
            Err(err) => {
                sections.result_error.push((name, err.body()));
                if halt {
                    break;
                }
            }
        }
    }
    Ok(Output::value(json!({
        "result": php_array(sections.result),
        "result_error": php_array(sections.result_error),
        "result_total": php_array(sections.result_total),
        "result_next": php_array(sections.result_next),
        "result_time": php_array(sections.result_time),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sections() -> Sections {
        Sections {
            result: vec![
                (
                    "add".into(),
                    json!({"item": {"id": 42, "contactIds": [3, 4]}}),
                ),
                ("list".into(), json!([{"ID": "7"}])),
            ],
            result_total: vec![("list".into(), json!(1))],
            ..Sections::default()
        }
    }

    #[test]
    fn whole_value_reference_keeps_type() {
        let s = sections();
        assert_eq!(substitute_text("$result[add][item][id]", &s), json!(42));
        assert_eq!(
            substitute_text("$result[add][item][contactIds]", &s),
            json!([3, 4])
        );
        assert_eq!(substitute_text("$result[list][0][ID]", &s), json!("7"));
        assert_eq!(substitute_text("$result_total[list]", &s), json!(1));
    }

    #[test]
    fn embedded_references_are_interpolated_and_unknown_kept() {
        let s = sections();
        assert_eq!(
            substitute_text("Deal $result[add][item][id] done", &s),
            json!("Deal 42 done")
        );
        assert_eq!(
            substitute_text("$result[missing][id]", &s),
            json!("$result[missing][id]")
        );
        assert_eq!(substitute_text("cost $5", &s), json!("cost $5"));
        let nested = substitute(
            json!({"fields": {"COMMENT": "id=$result[add][item][id]", "N": 1}}),
            &s,
        );
        assert_eq!(nested, json!({"fields": {"COMMENT": "id=42", "N": 1}}));
    }

    #[test]
    fn commands_keep_order_and_enforce_the_limit() {
        let params = Params(
            json!({"cmd": ["a.b?x=1", "c.d"]})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert_eq!(
            commands(&params).unwrap(),
            vec![("0".into(), "a.b?x=1".into()), ("1".into(), "c.d".into())]
        );
        let many: Map<String, Value> = (0..51).map(|i| (format!("c{i}"), json!("scope"))).collect();
        let err = commands(&Params(json!({"cmd": many}).as_object().unwrap().clone())).unwrap_err();
        assert_eq!(err.code, "ERROR_BATCH_LENGTH_EXCEEDED");
        assert_eq!(err.status, http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn php_arrays_become_lists_only_when_sequential() {
        assert_eq!(php_array(vec![]), json!([]));
        assert_eq!(
            php_array(vec![("0".into(), json!(1)), ("1".into(), json!(2))]),
            json!([1, 2])
        );
        assert_eq!(
            php_array(vec![("0".into(), json!(1)), ("2".into(), json!(2))]),
            json!({"0": 1, "2": 2})
        );
    }
}
