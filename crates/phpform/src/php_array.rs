//! A minimal model of a PHP array (ordered map with integer or string keys),
//! enough to reproduce how PHP builds `$_POST` and how `json_encode` prints it.

use std::collections::HashMap;

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum PhpKey {
    Int(i64),
    Str(String),
}

impl PhpKey {
    /// PHP turns string keys that are canonical decimal integers into integer
    /// keys (`"7"` → 7, but `"07"`, `"-0"`, `"+7"` and `" 7"` stay strings).
    pub(crate) fn from_text(text: &str) -> Self {
        match canonical_int(text) {
            Some(number) => PhpKey::Int(number),
            None => PhpKey::Str(text.to_owned()),
        }
    }

    fn into_json_key(self) -> String {
        match self {
            PhpKey::Int(number) => number.to_string(),
            PhpKey::Str(text) => text,
        }
    }
}

fn canonical_int(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    if text == "-0" {
        return None;
    }
    text.parse().ok()
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PhpValue {
    Str(String),
    Array(PhpArray),
}

/// Insertion-ordered map, with PHP's "next free index" for `[]` appends.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PhpArray {
    entries: Vec<(PhpKey, PhpValue)>,
    positions: HashMap<PhpKey, usize>,
    /// `None` until an integer key is inserted (PHP 8.3 semantics: after
    /// `a[-5]`, `a[]` gets -4; with no integer key it gets 0).
    next_free: Option<i64>,
}

/// An append could not be given an index: the largest integer key is already
/// `i64::MAX` (PHP refuses the insert too).
#[derive(Debug)]
pub(crate) struct NoFreeIndex;

impl PhpArray {
    pub(crate) fn next_index(&self) -> Result<PhpKey, NoFreeIndex> {
        match self.next_free {
            None => Ok(PhpKey::Int(0)),
            Some(i64::MAX) if self.positions.contains_key(&PhpKey::Int(i64::MAX)) => {
                Err(NoFreeIndex)
            }
            Some(next) => Ok(PhpKey::Int(next)),
        }
    }

    /// Stores `value` under `key`: an existing key keeps its position and
    /// takes the new value, as in PHP.
    pub(crate) fn set(&mut self, key: PhpKey, value: PhpValue) {
        let slot = self.slot(key);
        self.entries[slot].1 = value;
    }

    /// The array stored under `key`, created empty if the key is missing and
    /// replacing a string there (PHP overwrites a scalar with an array).
    pub(crate) fn child_array(&mut self, key: PhpKey) -> &mut PhpArray {
        let slot = self.slot(key);
        let value = &mut self.entries[slot].1;
        if !matches!(value, PhpValue::Array(_)) {
            *value = PhpValue::Array(PhpArray::default());
        }
        match value {
            PhpValue::Array(array) => array,
            PhpValue::Str(_) => unreachable!("replaced by an array just above"),
        }
    }

    fn slot(&mut self, key: PhpKey) -> usize {
        if let Some(&slot) = self.positions.get(&key) {
            return slot;
        }
        if let PhpKey::Int(number) = key {
            let after = number.saturating_add(1);
            if self.next_free.is_none_or(|next| after > next) {
                self.next_free = Some(after);
            }
        }
        let slot = self.entries.len();
        self.positions.insert(key.clone(), slot);
        // Placeholder replaced by the caller straight away.
        self.entries.push((key, PhpValue::Str(String::new())));
        slot
    }

    /// The top level of a form body: always an object, even when the names
    /// happen to be `0..n-1`.
    pub(crate) fn into_json_object(self) -> Value {
        Value::Object(self.into_object_map())
    }

    fn into_object_map(self) -> Map<String, Value> {
        let mut object = Map::new();
        for (key, value) in self.entries {
            object.insert(key.into_json_key(), value.into_json());
        }
        object
    }

    /// A list when the keys are exactly the integers `0..n-1`, in any order,
    /// with each value at its key's index: PHP code reads `$a[2]` by key,
    /// so `a[2]=x&a[1]=y&a[0]=z` must give `a[2] == "x"`, not the third pair
    /// sent. (PHP's `json_encode` would print such an array as an object;
    /// the readers of these trees index, they do not iterate.) Otherwise an
    /// object in insertion order.
    pub(crate) fn into_json(self) -> Value {
        let count = self.entries.len();
        let is_list = count > 0
            && (0..count as i64).all(|index| self.positions.contains_key(&PhpKey::Int(index)));
        if is_list {
            let mut items: Vec<(i64, Value)> = self
                .entries
                .into_iter()
                .map(|(key, value)| match key {
                    PhpKey::Int(index) => (index, value.into_json()),
                    PhpKey::Str(_) => unreachable!("every key is one of 0..n-1"),
                })
                .collect();
            items.sort_by_key(|(index, _)| *index);
            return Value::Array(items.into_iter().map(|(_, value)| value).collect());
        }
        Value::Object(self.into_object_map())
    }
}

impl PhpValue {
    fn into_json(self) -> Value {
        match self {
            PhpValue::Str(text) => Value::String(text),
            PhpValue::Array(array) => array.into_json(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_integers_become_integer_keys() {
        assert_eq!(PhpKey::from_text("0"), PhpKey::Int(0));
        assert_eq!(PhpKey::from_text("42"), PhpKey::Int(42));
        assert_eq!(PhpKey::from_text("-3"), PhpKey::Int(-3));
        for text in [
            "",
            "-",
            "-0",
            "01",
            "+1",
            " 1",
            "1 ",
            "1.0",
            "9223372036854775808",
        ] {
            assert_eq!(
                PhpKey::from_text(text),
                PhpKey::Str(text.into()),
                "{text:?}"
            );
        }
        assert_eq!(
            PhpKey::from_text("9223372036854775807"),
            PhpKey::Int(i64::MAX)
        );
    }

    #[test]
    fn next_index_follows_the_largest_integer_key() {
        let mut array = PhpArray::default();
        assert_eq!(array.next_index().unwrap(), PhpKey::Int(0));
        array.set(PhpKey::Int(-5), PhpValue::Str("x".into()));
        assert_eq!(array.next_index().unwrap(), PhpKey::Int(-4));
        array.set(PhpKey::Int(7), PhpValue::Str("x".into()));
        array.set(PhpKey::Int(3), PhpValue::Str("x".into()));
        assert_eq!(array.next_index().unwrap(), PhpKey::Int(8));
        array.set(PhpKey::Str("name".into()), PhpValue::Str("x".into()));
        assert_eq!(array.next_index().unwrap(), PhpKey::Int(8));
        array.set(PhpKey::Int(i64::MAX), PhpValue::Str("x".into()));
        assert!(array.next_index().is_err());
    }

    #[test]
    fn empty_array_prints_as_an_empty_object() {
        // PHP prints `[]` for an empty array; with form bodies an empty array
        // only arises as the top level, which must stay an object.
        assert_eq!(PhpArray::default().into_json(), Value::Object(Map::new()));
    }
}
