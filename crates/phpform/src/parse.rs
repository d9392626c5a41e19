use std::borrow::Cow;

use percent_encoding::percent_decode;
use serde_json::Value;

use crate::error::key_for_message;
use crate::php_array::{PhpArray, PhpKey, PhpValue};
use crate::{FormError, Limits};

/// Parses a PHP-style form body into a JSON object whose leaves are strings.
/// See the crate documentation for the rules.
pub fn parse(body: &[u8], limits: &Limits) -> Result<Value, FormError> {
    if body.len() > limits.max_bytes {
        return Err(FormError::TooLarge {
            size: body.len(),
            limit: limits.max_bytes,
        });
    }
    let mut root = PhpArray::default();
    let mut pair_count = 0usize;
    for pair in body.split(|&byte| byte == b'&') {
        if pair.is_empty() {
            continue;
        }
        pair_count += 1;
        if pair_count > limits.max_keys {
            return Err(FormError::TooManyKeys {
                limit: limits.max_keys,
            });
        }
        let (raw_key, raw_value) = match pair.iter().position(|&byte| byte == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &[][..]),
        };
        let key = String::from_utf8(form_decode(raw_key).into_owned()).map_err(|bad| {
            FormError::InvalidUtf8Key {
                key: key_for_message(&String::from_utf8_lossy(bad.as_bytes())),
            }
        })?;
        let value = String::from_utf8(form_decode(raw_value).into_owned()).map_err(|_| {
            FormError::InvalidUtf8Value {
                key: key_for_message(&key),
            }
        })?;
        let path = KeyPath::split(&key);
        if path.name.is_empty() {
            return Err(FormError::EmptyName {
                key: key_for_message(&key),
            });
        }
        if path.subscripts.len() > limits.max_depth {
            return Err(FormError::TooDeep {
                key: key_for_message(&key),
                limit: limits.max_depth,
            });
        }
        insert(&mut root, &path, value).map_err(|_| FormError::IndexOverflow {
            key: key_for_message(&key),
        })?;
    }
    Ok(root.into_json_object())
}

/// [`parse`] for a body already held as text.
pub fn parse_str(body: &str, limits: &Limits) -> Result<Value, FormError> {
    parse(body.as_bytes(), limits)
}

/// `+` is a space, `%XX` a byte; a stray `%` stays literal, as in PHP.
fn form_decode(raw: &[u8]) -> Cow<'_, [u8]> {
    if raw.contains(&b'+') {
        let spaced: Vec<u8> = raw
            .iter()
            .map(|&byte| if byte == b'+' { b' ' } else { byte })
            .collect();
        Cow::Owned(percent_decode(&spaced).collect())
    } else {
        percent_decode(raw).into()
    }
}

#[derive(Debug, PartialEq)]
enum Subscript<'a> {
    /// `[]`: the next free integer index.
    Append,
    Key(&'a str),
}

#[derive(Debug, PartialEq)]
struct KeyPath<'a> {
    name: &'a str,
    subscripts: Vec<Subscript<'a>>,
}

impl<'a> KeyPath<'a> {
    /// Splits `name[a][][b]` the way PHP does: after a `]`, text up to the
    /// next `[` is ignored, and an unclosed `[` ends the key. An unclosed `[`
    /// right after the name is kept as part of the name.
    fn split(key: &'a str) -> Self {
        let Some(open) = key.find('[') else {
            return KeyPath {
                name: key,
                subscripts: Vec::new(),
            };
        };
        if !key[open..].contains(']') {
            return KeyPath {
                name: key,
                subscripts: Vec::new(),
            };
        }
        let name = &key[..open];
        let mut subscripts = Vec::new();
        let mut rest = &key[open..];
        while let Some(inner_and_more) = rest.strip_prefix('[') {
            let Some(close) = inner_and_more.find(']') else {
                break;
            };
            let inner = &inner_and_more[..close];
            // PHP treats `[ ]` like `[]`.
            subscripts.push(if inner.is_empty() || inner == " " {
                Subscript::Append
            } else {
                Subscript::Key(inner)
            });
            rest = &inner_and_more[close + 1..];
        }
        KeyPath { name, subscripts }
    }
}

fn insert(
    root: &mut PhpArray,
    path: &KeyPath<'_>,
    value: String,
) -> Result<(), crate::php_array::NoFreeIndex> {
    let mut array = root;
    let mut key = PhpKey::from_text(path.name);
    for subscript in &path.subscripts {
        array = array.child_array(key);
        key = match subscript {
            Subscript::Append => array.next_index()?,
            Subscript::Key(text) => PhpKey::from_text(text),
        };
    }
    array.set(key, PhpValue::Str(value));
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parsed(body: &str) -> Value {
        parse_str(body, &Limits::default()).unwrap()
    }

    #[test]
    fn flat_pairs() {
        assert_eq!(parsed("a=1&b=two"), json!({"a": "1", "b": "two"}));
        assert_eq!(parsed(""), json!({}));
        assert_eq!(parsed("&&a=1&"), json!({"a": "1"}));
        assert_eq!(parsed("flag"), json!({"flag": ""}));
        assert_eq!(parsed("a=x=y"), json!({"a": "x=y"}));
    }

    #[test]
    fn nested_maps() {
        assert_eq!(
            parsed("data[FIELDS][ID]=662&event=ONCRMDEALUPDATE"),
            json!({"data": {"FIELDS": {"ID": "662"}}, "event": "ONCRMDEALUPDATE"})
        );
    }

    #[test]
    fn appended_lists() {
        assert_eq!(parsed("a[]=x&a[]=y"), json!({"a": ["x", "y"]}));
        assert_eq!(parsed("a[ ]=x"), json!({"a": ["x"]}));
        assert_eq!(parsed("a[5]=x&a[]=y"), json!({"a": {"5": "x", "6": "y"}}));
    }

    #[test]
    fn indexed_lists_and_lists_of_maps() {
        assert_eq!(
            parsed("document_id[0]=crm&document_id[1]=CCrmDocumentDeal&document_id[2]=DEAL_123"),
            json!({"document_id": ["crm", "CCrmDocumentDeal", "DEAL_123"]})
        );
        assert_eq!(
            parsed("PHONE[0][VALUE]=%2B7+900&PHONE[0][VALUE_TYPE]=WORK&PHONE[1][VALUE]=1"),
            json!({"PHONE": [{"VALUE": "+7 900", "VALUE_TYPE": "WORK"}, {"VALUE": "1"}]})
        );
    }

    #[test]
    fn integer_keys_are_indices_whatever_their_order() {
        // PHP keys by index: `$document_id[2]` is the pair named `[2]`.
        assert_eq!(
            parsed("document_id[2]=DEAL_103&document_id[1]=CCrmDocumentDeal&document_id[0]=crm"),
            json!({"document_id": ["crm", "CCrmDocumentDeal", "DEAL_103"]})
        );
        assert_eq!(parsed("a[1]=x&a[0]=y"), json!({"a": ["y", "x"]}));
        assert_eq!(
            parsed("a[1][v]=x&a[0][v]=y&a[1][w]=z"),
            json!({"a": [{"v": "y"}, {"v": "x", "w": "z"}]})
        );
    }

    #[test]
    fn integer_keys_with_gaps_or_other_keys_stay_objects() {
        assert_eq!(parsed("a[0]=x&a[2]=y"), json!({"a": {"0": "x", "2": "y"}}));
        assert_eq!(
            parsed("a[1]=x&a[-1]=y"),
            json!({"a": {"1": "x", "-1": "y"}})
        );
        assert_eq!(parsed("a[1]=x&a[b]=y"), json!({"a": {"1": "x", "b": "y"}}));
        assert_eq!(parsed("a[00]=x"), json!({"a": {"00": "x"}}));
    }

    #[test]
    fn top_level_stays_an_object_even_with_integer_names() {
        assert_eq!(parsed("0=a&1=b"), json!({"0": "a", "1": "b"}));
    }

    #[test]
    fn later_pairs_win_like_php() {
        assert_eq!(parsed("a=1&a=2"), json!({"a": "2"}));
        assert_eq!(parsed("a=1&a[b]=2"), json!({"a": {"b": "2"}}));
        assert_eq!(parsed("a[b]=2&a=1"), json!({"a": "1"}));
        assert_eq!(parsed("a[0]=x&a[1]=y&a[0]=z"), json!({"a": ["z", "y"]}));
    }

    #[test]
    fn decoding() {
        assert_eq!(parsed("q=a+b%20c"), json!({"q": "a b c"}));
        assert_eq!(parsed("%61%5Bb%5D=%D0%BF"), json!({"a": {"b": "п"}}));
        assert_eq!(
            parsed("p=100%&q=%zz&r=%4"),
            json!({"p": "100%", "q": "%zz", "r": "%4"})
        );
        assert_eq!(parsed("a%2Bb=1"), json!({"a+b": "1"}));
    }

    #[test]
    fn odd_brackets_follow_php() {
        assert_eq!(parsed("a[b]c=1"), json!({"a": {"b": "1"}}));
        assert_eq!(parsed("a[b]c[d]=1"), json!({"a": {"b": "1"}}));
        assert_eq!(parsed("a[b][c=1"), json!({"a": {"b": "1"}}));
        assert_eq!(parsed("a[b=1"), json!({"a[b": "1"}));
        assert_eq!(parsed("a]=1"), json!({"a]": "1"}));
        assert_eq!(parsed("a[x]y]=1"), json!({"a": {"x": "1"}}));
    }

    #[test]
    fn rejects_invalid_utf8_naming_the_key_not_the_value() {
        let error = parse_str("token=%FF%FEsecret", &Limits::default()).unwrap_err();
        assert_eq!(
            error,
            FormError::InvalidUtf8Value {
                key: "token".into()
            }
        );
        assert!(!error.to_string().contains("secret"));
        let error = parse(b"na%FFme=1", &Limits::default()).unwrap_err();
        assert!(matches!(error, FormError::InvalidUtf8Key { .. }));
        assert!(error.to_string().contains("na\u{FFFD}me"), "{error}");
    }

    #[test]
    fn rejects_empty_names() {
        for body in ["=x", "[a]=x", "[]=x"] {
            let error = parse_str(body, &Limits::default()).unwrap_err();
            assert!(
                matches!(error, FormError::EmptyName { .. }),
                "{body}: {error}"
            );
        }
    }

    #[test]
    fn enforces_limits() {
        let limits = Limits {
            max_bytes: 20,
            max_depth: 2,
            max_keys: 3,
        };
        assert_eq!(
            parse_str("a=123456789012345678901", &limits),
            Err(FormError::TooLarge {
                size: 23,
                limit: 20
            })
        );
        assert_eq!(
            parse_str("a=1&b=2&c=3&d=4", &limits),
            Err(FormError::TooManyKeys { limit: 3 })
        );
        assert_eq!(
            parse_str("a=1&&&b=2&c=3", &limits).unwrap(),
            json!({"a":"1","b":"2","c":"3"})
        );
        assert_eq!(
            parsed_with("a[b][c]=1", &limits),
            json!({"a": {"b": {"c": "1"}}})
        );
        assert_eq!(
            parse_str("a[b][c][d]=1", &limits),
            Err(FormError::TooDeep {
                key: "a[b][c][d]".into(),
                limit: 2
            })
        );
    }

    fn parsed_with(body: &str, limits: &Limits) -> Value {
        parse_str(body, limits).unwrap()
    }

    #[test]
    fn default_limits() {
        let limits = Limits::default();
        assert_eq!(limits.max_bytes, 1 << 20);
        assert_eq!(limits.max_depth, 8);
        assert_eq!(limits.max_keys, 1000);
    }

    #[test]
    fn overflowing_append_is_an_error() {
        let error = parse_str("a[9223372036854775807]=x&a[]=y", &Limits::default()).unwrap_err();
        assert!(matches!(error, FormError::IndexOverflow { .. }), "{error}");
    }

    #[test]
    fn long_keys_are_shortened_in_messages() {
        let key = "k".repeat(5000);
        let body = format!("{key}[a][b][c][d][e][f][g][h][i]=1");
        let message = parse_str(&body, &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(message.len() < 300, "{}", message.len());
    }

    #[test]
    fn bitrix24_event_body() {
        let body = "event=ONCRMDEALUPDATE&event_handler_id=7&data[FIELDS][ID]=662&ts=1724140800\
&auth[domain]=partner.bitrix24.ru&auth[client_endpoint]=https%3A%2F%2Fpartner.bitrix24.ru%2Frest%2F\
&auth[member_id]=a223c6b3710f85df22e9377d6c4f7553&auth[application_token]=51856fefc120afa4b628cc82d3935cce";
        let value = parsed(body);
        assert_eq!(value["data"]["FIELDS"]["ID"], "662");
        assert_eq!(
            value["auth"]["client_endpoint"],
            "https://partner.bitrix24.ru/rest/"
        );
        assert_eq!(
            value["auth"]["application_token"],
            "51856fefc120afa4b628cc82d3935cce"
        );
    }
}
