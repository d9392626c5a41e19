//! PHP-style `application/x-www-form-urlencoded` bodies, the format Bitrix24
//! uses for events and webhooks (`data[FIELDS][ID]=1`, `PHONE[0][VALUE]=..`):
//! [`parse`] turns a body into a [`serde_json::Value`] tree the way PHP fills
//! `$_POST`, and [`encode`] turns a tree into a body the way PHP's
//! `http_build_query` does.
//!
//! # Parsing rules (PHP's, with the differences listed)
//! - Pairs are split on `&`; empty pairs are skipped; a pair without `=` has
//!   the empty string as its value. `+` is a space; `%XX` is a byte; a `%`
//!   not followed by two hex digits stays literal (as in PHP). The decoded
//!   bytes must be UTF-8, otherwise [`FormError::InvalidUtf8Key`] /
//!   [`FormError::InvalidUtf8Value`].
//! - `a[b][c]=v` nests maps; `a[]=v` appends with PHP's next index (one more
//!   than the largest integer key so far); keys that look like canonical
//!   integers (`0`, `17`, `-3`, but not `01` or `-0`) are integer keys, as in
//!   PHP arrays. After `]`, anything up to the next `[` is ignored, and so
//!   is an unclosed `[` after a subscript (`a[b][c=1` sets `a[b]`); an
//!   unclosed `[` straight after the name stays part of the name.
//! - A map whose keys are exactly the integers `0..n-1`, sent in any order,
//!   becomes a JSON array with each value at its key's index: PHP code reads
//!   `$a[2]` by key, not by position (`json_encode` would print such a map
//!   as an object unless the order is `0..n-1`). Any other map becomes a JSON
//!   object in insertion order. [`item`] reads an index from either shape,
//!   for trees that came as JSON bodies.
//! - Conflicts follow PHP: the later pair wins. `a=1&a[b]=2` gives
//!   `{"a":{"b":"2"}}` and `a[b]=2&a=1` gives `{"a":"1"}`; a repeated key
//!   keeps its first position and takes the last value.
//! - Differences from PHP: the top-level name is kept byte for byte (PHP
//!   strips leading spaces and rewrites `.` and ` ` to `_`, a register_globals
//!   relic), and an empty name (`=x`, `[a]=x`) is an error instead of being
//!   dropped silently. Limits ([`Limits`]) are errors, never silent truncation.
//! - All leaves are JSON strings.
//!
//! # Encoding rules
//! See [`encode`]. Trees made only of non-empty maps, non-empty lists and
//! strings survive `encode` then `parse` unchanged, provided no map key is
//! empty, contains `[` or `]`, or is a lone space (PHP reads `[ ]` as `[]`),
//! and no map has exactly the keys `"0".."n-1"` in any order (they read as
//! a list).

mod encode;
mod error;
mod parse;
mod php_array;

pub use encode::encode;
pub use error::FormError;
pub use parse::{parse, parse_str};

use serde_json::Value;

/// The element at `index` of a list, or under the key `"index"` of an
/// object (a JSON body may send `{"0": "crm", "2": "DEAL_1"}`): PHP reads
/// `$a[2]` by key either way. `Null` when there is none.
pub fn item(tree: &Value, index: usize) -> &Value {
    static NULL: Value = Value::Null;
    match tree {
        Value::Array(items) => items.get(index).unwrap_or(&NULL),
        Value::Object(map) => map.get(&index.to_string()).unwrap_or(&NULL),
        _ => &NULL,
    }
}

/// Bounds on what [`parse`] accepts, so a hostile body cannot exhaust memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest body accepted, in bytes.
    pub max_bytes: usize,
    /// Most bracket subscripts after a name: `a[b][c]` has depth 2.
    pub max_depth: usize,
    /// Most `key=value` pairs (PHP's `max_input_vars`).
    pub max_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            max_depth: 8,
            max_keys: 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn item_reads_an_index_from_a_list_or_a_keyed_object() {
        let list = json!(["crm", "CCrmDocumentDeal", "DEAL_1"]);
        let keyed = json!({"2": "DEAL_1", "0": "crm"});
        assert_eq!(super::item(&list, 2), "DEAL_1");
        assert_eq!(super::item(&keyed, 2), "DEAL_1");
        assert!(super::item(&keyed, 1).is_null());
        assert!(super::item(&json!("DEAL_1"), 0).is_null());
    }
}
