use thiserror::Error;

/// Why a form body was rejected. Messages name the offending key (shortened)
/// but never a value: values carry tokens and secrets.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FormError {
    #[error("form body is {size} bytes, more than the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("form body has more than {limit} key=value pairs")]
    TooManyKeys { limit: usize },
    #[error("form key `{key}` is nested deeper than the limit of {limit}")]
    TooDeep { key: String, limit: usize },
    #[error("form key `{key}` is not valid UTF-8 after percent-decoding")]
    InvalidUtf8Key { key: String },
    #[error("the value of form key `{key}` is not valid UTF-8 after percent-decoding")]
    InvalidUtf8Value { key: String },
    #[error("form key `{key}` has an empty name")]
    EmptyName { key: String },
    #[error("form key `{key}` appends to a list whose next index is past the integer range")]
    IndexOverflow { key: String },
}

/// Longest key quoted in an error message, in characters.
const MAX_KEY_IN_MESSAGE: usize = 120;

/// A key as it may appear in an error message: shortened so that a huge key
/// cannot flood logs.
pub(crate) fn key_for_message(key: &str) -> String {
    if key.chars().count() <= MAX_KEY_IN_MESSAGE {
        return key.to_owned();
    }
    let mut shown: String = key.chars().take(MAX_KEY_IN_MESSAGE).collect();
    shown.push('…');
    shown
}
