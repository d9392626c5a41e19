//! List queries: filter keys with operator prefixes (`>=ID`, `!stageId`,
//! `%title`, `@id`), ordering, and pages of 50 with `next` / `total`
//! (or none of them with `start=-1`).

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::params::{as_f64, as_list, scalar_text};

pub const PAGE_SIZE: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    NotEq,
    Gt,
    Ge,
    Lt,
    Le,
    /// Substring, case-insensitive (`%`).
    Contains,
    NotContains,
    /// SQL LIKE with `%` wildcards in the value (`=%`, `%=`).
    Like,
    NotLike,
    In,
    NotIn,
}

/// Longest prefixes first, so `!=%` is not read as `!`.
const PREFIXES: [(&str, Op); 15] = [
    ("!=%", Op::NotLike),
    ("!%=", Op::NotLike),
    ("!@", Op::NotIn),
    ("!%", Op::NotContains),
    ("!=", Op::NotEq),
    (">=", Op::Ge),
    ("<=", Op::Le),
    ("=%", Op::Like),
    ("%=", Op::Like),
    ("!", Op::NotEq),
    (">", Op::Gt),
    ("<", Op::Lt),
    ("%", Op::Contains),
    ("@", Op::In),
    ("=", Op::Eq),
];

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The record key (camelCase) the condition applies to.
    pub field: String,
    pub op: Op,
    pub value: Value,
}

/// Splits `>=ID` into the operator and the field name.
pub fn split_key(key: &str) -> (Op, &str) {
    for (prefix, op) in PREFIXES {
        if let Some(rest) = key.strip_prefix(prefix) {
            return (op, rest);
        }
    }
    (Op::Eq, key)
}

/// Parses a filter; `resolve` maps a field name to a record key, and an
/// unknown name is returned as the error (the caller words it per API).
pub fn parse_filter(
    filter: &Map<String, Value>,
    resolve: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Condition>, String> {
    let mut conditions = Vec::new();
    for (key, value) in filter {
        if key.eq_ignore_ascii_case("logic") {
            continue;
        }
        let (op, name) = split_key(key);
        let field = resolve(name).ok_or_else(|| name.to_string())?;
        conditions.push(Condition {
            field,
            op,
            value: value.clone(),
        });
    }
    Ok(conditions)
}

fn compare(left: &Value, right: &Value) -> Option<Ordering> {
    if left.is_null() {
        return None;
    }
    match (as_f64(left), as_f64(right)) {
        (Some(a), Some(b)) => a.partial_cmp(&b),
        _ => Some(scalar_text(left).cmp(&scalar_text(right))),
    }
}

fn equals(left: &Value, right: &Value) -> bool {
    let right_empty = matches!(right, Value::Null)
        || matches!(right, Value::String(s) if s.is_empty())
        || right == &Value::Bool(false);
    if left.is_null() {
        return right_empty;
    }
    compare(left, right) == Some(Ordering::Equal)
}

fn like(text: &str, pattern: &str) -> bool {
    let text = text.to_lowercase();
    let pattern = pattern.to_lowercase();
    let parts: Vec<&str> = pattern.split('%').collect();
    if parts.len() == 1 {
        return text == pattern;
    }
    let mut rest = text.as_str();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(pos) = rest.find(part) else {
                return false;
            };
            rest = &rest[pos + part.len()..];
        }
    }
    true
}

fn scalar_matches(stored: &Value, op: Op, wanted: &Value) -> bool {
    let candidates = as_list(wanted);
    match op {
        Op::Eq | Op::In => {
            candidates.iter().any(|c| equals(stored, c))
                || (candidates.is_empty() && op == Op::Eq && stored.is_null())
        }
        Op::NotEq | Op::NotIn => !candidates.iter().any(|c| equals(stored, c)),
        Op::Gt => compare(stored, wanted) == Some(Ordering::Greater),
        Op::Ge => matches!(
            compare(stored, wanted),
            Some(Ordering::Greater | Ordering::Equal)
        ),
        Op::Lt => compare(stored, wanted) == Some(Ordering::Less),
        Op::Le => matches!(
            compare(stored, wanted),
            Some(Ordering::Less | Ordering::Equal)
        ),
        Op::Contains => {
            !stored.is_null()
                && scalar_text(stored)
                    .to_lowercase()
                    .contains(&scalar_text(wanted).to_lowercase())
        }
        Op::NotContains => {
            stored.is_null()
                || !scalar_text(stored)
                    .to_lowercase()
                    .contains(&scalar_text(wanted).to_lowercase())
        }
        Op::Like => !stored.is_null() && like(&scalar_text(stored), &scalar_text(wanted)),
        Op::NotLike => stored.is_null() || !like(&scalar_text(stored), &scalar_text(wanted)),
    }
}

/// Whether a stored record satisfies every condition. A multiple field
/// matches when any of its values does (and negations when none does).
pub fn matches(record: &Map<String, Value>, conditions: &[Condition]) -> bool {
    conditions.iter().all(|c| {
        let stored = record.get(&c.field).unwrap_or(&Value::Null);
        match stored {
            Value::Array(values) => {
                let negated = matches!(c.op, Op::NotEq | Op::NotIn | Op::NotContains | Op::NotLike);
                if negated {
                    values.iter().all(|v| scalar_matches(v, c.op, &c.value))
                } else {
                    values.iter().any(|v| scalar_matches(v, c.op, &c.value))
                }
            }
            single => scalar_matches(single, c.op, &c.value),
        }
    })
}

/// Parses `{"ID": "DESC", "title": "asc"}`; `resolve` as in [`parse_filter`].
pub fn parse_order(
    order: &Map<String, Value>,
    resolve: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, bool)>, String> {
    order
        .iter()
        .map(|(key, dir)| {
            let field = resolve(key).ok_or_else(|| key.clone())?;
            let descending = scalar_text(dir).eq_ignore_ascii_case("desc");
            Ok((field, descending))
        })
        .collect()
}

/// Sorts records; ties keep id order, as the database's primary key does.
pub fn sort(records: &mut [&Map<String, Value>], order: &[(String, bool)]) {
    records.sort_by(|a, b| {
        for (field, descending) in order {
            let left = a.get(field).unwrap_or(&Value::Null);
            let right = b.get(field).unwrap_or(&Value::Null);
            let ord = match (left.is_null(), right.is_null()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
                _ => compare(left, right).unwrap_or(Ordering::Equal),
            };
            let ord = if *descending { ord.reverse() } else { ord };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        Ordering::Equal
    });
}

/// One page of a list: the index range, and `next` / `total` to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub from: usize,
    pub to: usize,
    pub next: Option<usize>,
    pub total: Option<usize>,
}

/// `start` < 0 is Bitrix24's fast mode: the first 50, no count, no `next`.
pub fn page(len: usize, start: i64) -> Page {
    if start < 0 {
        return Page {
            from: 0,
            to: len.min(PAGE_SIZE),
            next: None,
            total: None,
        };
    }
    let from = (start as usize).min(len);
    let to = (from + PAGE_SIZE).min(len);
    let next = (to < len).then_some(to);
    Page {
        from,
        to,
        next,
        total: Some(len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn identity(name: &str) -> Option<String> {
        Some(name.to_string())
    }

    fn run(filter: Value, record: Value) -> bool {
        let conditions = parse_filter(filter.as_object().unwrap(), &identity).unwrap();
        matches(&rec(record), &conditions)
    }

    #[test]
    fn prefixes_are_read_longest_first() {
        assert_eq!(split_key(">=id"), (Op::Ge, "id"));
        assert_eq!(split_key("!=%title"), (Op::NotLike, "title"));
        assert_eq!(split_key("!stageId"), (Op::NotEq, "stageId"));
        assert_eq!(split_key("=originId"), (Op::Eq, "originId"));
        assert_eq!(split_key("title"), (Op::Eq, "title"));
    }

    #[test]
    fn comparisons_are_numeric_when_both_sides_are_numbers() {
        let deal = json!({"id": 12, "stageId": "C5:NEW", "originId": "77", "title": "Big Deal"});
        assert!(
            run(json!({">id": "9"}), deal.clone()),
            "12 > 9 numerically, not as text"
        );
        assert!(!run(json!({"<=id": 11}), deal.clone()));
        assert!(run(
            json!({"stageId": "C5:NEW", "=originId": 77}),
            deal.clone()
        ));
        assert!(run(json!({"!stageId": "C5:WON"}), deal.clone()));
        assert!(run(json!({"%title": "big"}), deal.clone()));
        assert!(run(json!({"=%title": "Big%"}), deal.clone()));
        assert!(!run(json!({"=%title": "%Small"}), deal.clone()));
        assert!(run(json!({"@id": [1, 12]}), deal.clone()));
        assert!(run(json!({"!@id": ["13"]}), deal.clone()));
        assert!(run(json!({"stageId": ["C5:WON", "C5:NEW"]}), deal));
    }

    #[test]
    fn empty_filter_value_matches_missing_field() {
        assert!(run(
            json!({"originatorId": ""}),
            json!({"originatorId": null})
        ));
        assert!(!run(
            json!({"originatorId": "crm"}),
            json!({"originatorId": null})
        ));
    }

    #[test]
    fn multiple_fields_match_any_value() {
        assert!(run(json!({"contactIds": 5}), json!({"contactIds": [4, 5]})));
        assert!(!run(
            json!({"!contactIds": 5}),
            json!({"contactIds": [4, 5]})
        ));
    }

    #[test]
    fn unknown_fields_are_reported() {
        let resolve = |name: &str| (name == "id").then(|| "id".to_string());
        let err = parse_filter(json!({">bogus": 1}).as_object().unwrap(), &resolve).unwrap_err();
        assert_eq!(err, "bogus");
    }

    #[test]
    fn ordering_sorts_by_each_key_in_turn() {
        let a = rec(json!({"id": 1, "stageId": "B"}));
        let b = rec(json!({"id": 2, "stageId": "A"}));
        let c = rec(json!({"id": 3, "stageId": "B"}));
        let mut list = vec![&a, &b, &c];
        let order = parse_order(
            json!({"stageId": "ASC", "id": "desc"}).as_object().unwrap(),
            &identity,
        )
        .unwrap();
        sort(&mut list, &order);
        let ids: Vec<_> = list.iter().map(|r| r["id"].clone()).collect();
        assert_eq!(ids, vec![json!(2), json!(3), json!(1)]);
    }

    #[test]
    fn pages_of_fifty_with_next_and_total() {
        assert_eq!(
            page(120, 0),
            Page {
                from: 0,
                to: 50,
                next: Some(50),
                total: Some(120)
            }
        );
        assert_eq!(
            page(120, 100),
            Page {
                from: 100,
                to: 120,
                next: None,
                total: Some(120)
            }
        );
        assert_eq!(
            page(120, 500),
            Page {
                from: 120,
                to: 120,
                next: None,
                total: Some(120)
            }
        );
        assert_eq!(
            page(120, -1),
            Page {
                from: 0,
                to: 50,
                next: None,
                total: None
            }
        );
    }
}
