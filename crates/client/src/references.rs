//! `$result[name][FIELD]` references between batch commands, filled in the
//! way Bitrix24 fills them in (after parsing the command's query): a value
//! that is exactly one reference becomes the referenced value, tree and all;
//! a reference inside longer text is replaced by the referenced string or
//! number and left alone otherwise; a missing key stops the walk at the
//! value reached so far.

use std::collections::HashMap;

use serde_json::Value;

const MARK: &str = "$result";

/// A command refers to an earlier command that did not succeed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct UnresolvedReference(pub(crate) String);

/// Fills in references to commands listed in `earlier` (`None`: the command
/// did not succeed). References to other names are left for the portal.
pub(crate) fn substitute_earlier_results(
    params: &Value,
    earlier: &HashMap<String, Option<Value>>,
) -> Result<Value, UnresolvedReference> {
    if earlier.is_empty() {
        return Ok(params.clone());
    }
    Ok(match params {
        Value::String(text) => substitute_in_text(text, earlier)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| substitute_earlier_results(item, earlier))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| Ok((key.clone(), substitute_earlier_results(value, earlier)?)))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

fn substitute_in_text(
    text: &str,
    earlier: &HashMap<String, Option<Value>>,
) -> Result<Value, UnresolvedReference> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        let from_mark = &rest[at..];
        let Some((keys, length)) = parse_reference(from_mark) else {
            out.push_str(MARK);
            rest = &from_mark[MARK.len()..];
            continue;
        };
        let whole = &from_mark[..length];
        rest = &from_mark[length..];
        match earlier.get(keys[0]) {
            None => out.push_str(whole),
            Some(None) => return Err(UnresolvedReference(keys[0].to_owned())),
            Some(Some(result)) => {
                let value = walk(result, &keys[1..]);
                if whole.len() == text.len() {
                    return Ok(value.clone());
                }
                match value {
                    Value::String(referenced) => out.push_str(referenced),
                    Value::Number(number) => out.push_str(&number.to_string()),
                    _ => out.push_str(whole),
                }
            }
        }
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

/// `params` with references to the commands in `names` renamed to
/// `prefix` + name, for a batch that travels inside a larger one (whose
/// command names carry the prefix). Other references are left alone.
pub(crate) fn prefix_references(
    params: &Value,
    names: &std::collections::HashSet<&str>,
    prefix: &str,
) -> Value {
    match params {
        Value::String(text) if text.contains(MARK) => {
            let mut out = String::with_capacity(text.len() + prefix.len());
            let mut rest = text.as_str();
            while let Some(at) = rest.find(MARK) {
                out.push_str(&rest[..at]);
                let from_mark = &rest[at..];
                match parse_reference(from_mark) {
                    Some((keys, _)) if names.contains(keys[0]) => {
                        out.push_str(MARK);
                        out.push('[');
                        out.push_str(prefix);
                        rest = &from_mark[MARK.len() + 1..];
                    }
                    _ => {
                        out.push_str(MARK);
                        rest = &from_mark[MARK.len()..];
                    }
                }
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| prefix_references(item, names, prefix))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), prefix_references(value, names, prefix)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `$result[name][key]..` at the start of `text`: the bracketed keys (the
/// first is the command name) and the length of the reference.
fn parse_reference(text: &str) -> Option<(Vec<&str>, usize)> {
    let mut position = MARK.len();
    let mut keys = Vec::new();
    while text[position..].starts_with('[') {
        let inner_start = position + 1;
        let close = text[inner_start..].find(']')?;
        if close == 0 {
            break;
        }
        keys.push(&text[inner_start..inner_start + close]);
        position = inner_start + close + 1;
    }
    if keys.is_empty() {
        None
    } else {
        Some((keys, position))
    }
}

fn walk<'a>(mut value: &'a Value, keys: &[&str]) -> &'a Value {
    for key in keys {
        let next = match value {
            Value::Object(map) => map.get(*key),
            Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        match next {
            Some(next) => value = next,
            None => break,
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn earlier() -> HashMap<String, Option<Value>> {
        HashMap::from([
            ("contact".to_owned(), Some(json!(41))),
            (
                "deal".to_owned(),
                Some(json!({"item": {"id": 7, "title": "Big deal", "ids": [1, 2]}})),
            ),
            ("failed".to_owned(), None),
        ])
    }

    #[test]
    fn whole_value_references_take_the_referenced_value() {
        let params = json!({"fields": {
            "contactId": "$result[contact]",
            "ids": "$result[deal][item][ids]",
        }});
        assert_eq!(
            substitute_earlier_results(&params, &earlier()).unwrap(),
            json!({"fields": {"contactId": 41, "ids": [1, 2]}})
        );
    }

    #[test]
    fn embedded_references_take_text_of_scalars_only() {
        let params = json!({
            "comment": "Deal $result[deal][item][id] ($result[deal][item][title]) for $result[contact]",
            "odd": "list: $result[deal][item][ids]!",
        });
        assert_eq!(
            substitute_earlier_results(&params, &earlier()).unwrap(),
            json!({
                "comment": "Deal 7 (Big deal) for 41",
                "odd": "list: $result[deal][item][ids]!",
            })
        );
    }

    #[test]
    fn references_to_other_commands_are_left_for_the_portal() {
        let params =
            json!({"id": "$result[same_request][ID]", "price": "$result costs", "x": "$result[]"});
        assert_eq!(
            substitute_earlier_results(&params, &earlier()).unwrap(),
            params
        );
    }

    #[test]
    fn a_missing_key_stops_at_the_value_reached() {
        let params = json!({"v": "$result[deal][item][nope][deeper]"});
        assert_eq!(
            substitute_earlier_results(&params, &earlier()).unwrap(),
            json!({"v": {"id": 7, "title": "Big deal", "ids": [1, 2]}})
        );
    }

    proptest::proptest! {
        #[test]
        fn substitution_never_panics_and_leaves_plain_text_alone(
            text in "(\\$result|\\[|\\]|contact|deal|failed|item|ids|title|[01 ]|é|\\$){0,30}",
            plain in "[^$]{0,40}",
        ) {
            let earlier = earlier();
            let _ = substitute_earlier_results(&Value::String(text), &earlier);
            let plain = Value::String(plain);
            proptest::prop_assert_eq!(substitute_earlier_results(&plain, &earlier), Ok(plain.clone()));
        }
    }

    #[test]
    fn references_to_failed_commands_are_reported() {
        let params = json!({"fields": ["$result[failed][ID]"]});
        assert_eq!(
            substitute_earlier_results(&params, &earlier()),
            Err(UnresolvedReference("failed".into()))
        );
    }

    #[test]
    fn references_inside_a_merged_batch_get_the_prefix() {
        let names = std::collections::HashSet::from(["deal", "rows"]);
        let params = json!({
            "id": "$result[deal][item][id]",
            "text": "deal $result[deal][item][title] and $result[other][x]",
            "list": ["$result[rows]", "$result", "$resultx"],
        });
        assert_eq!(
            prefix_references(&params, &names, "q7_"),
            json!({
                "id": "$result[q7_deal][item][id]",
                "text": "deal $result[q7_deal][item][title] and $result[other][x]",
                "list": ["$result[q7_rows]", "$result", "$resultx"],
            })
        );
    }
}
