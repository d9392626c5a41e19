//! Property tests: encode → parse keeps string trees, and parse never panics.

use b24_phpform::{Limits, encode, parse, parse_str};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Map keys that survive a round trip: not empty, no brackets, not a lone
/// space (PHP reads `[ ]` as `[]`), and not a canonical integer (a map with
/// keys 0..n-1 turns into a list, as in PHP).
fn map_key() -> impl Strategy<Value = String> {
    "[^\\[\\]]{1,8}"
        .prop_filter("a lone space subscript means append", |key| key != " ")
        .prop_filter("canonical integer keys change shape", |key| {
            key.parse::<i64>().map_or(true, |n| n.to_string() != *key)
        })
}

fn string_tree() -> impl Strategy<Value = Value> {
    let leaf = any::<String>().prop_map(Value::String);
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..5).prop_map(Value::Array),
            prop::collection::btree_map(map_key(), inner, 1..5)
                .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn top_level() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(map_key(), string_tree(), 0..6)
        .prop_map(|map| Value::Object(map.into_iter().collect()))
}

proptest! {
    #[test]
    fn encode_then_parse_gives_the_same_tree(tree in top_level()) {
        let body = encode(&tree);
        let limits = Limits { max_bytes: usize::MAX, max_depth: 16, max_keys: usize::MAX };
        prop_assert_eq!(parse_str(&body, &limits).unwrap(), tree);
    }

    #[test]
    fn encoded_bodies_are_plain_ascii(tree in top_level()) {
        let body = encode(&tree);
        prop_assert!(body.bytes().all(|b| b.is_ascii_graphic()), "{}", body);
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let limits = Limits { max_bytes: 400, max_depth: 3, max_keys: 20 };
        if let Ok(value) = parse(&body, &limits) {
            prop_assert!(value.is_object());
        }
    }

    #[test]
    fn parse_never_panics_on_form_like_text(
        body in "([a-c0-9\\[\\]%+=&]|%[0-9A-Fa-f]{2}|\\[\\]){0,64}"
    ) {
        if let Ok(value) = parse_str(&body, &Limits::default()) {
            prop_assert!(value.is_object());
        }
    }
}
