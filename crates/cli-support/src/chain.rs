//! An error and its causes on one line, each cause once.
//!
//! `anyhow`'s `{:#}` prints every cause after the message; an error whose
//! message already embeds its cause (`"cannot read x: {source}"`, as many
//! libraries' errors do) then shows it twice:
//! `No such file or directory (os error 2): No such file or directory (os
//! error 2)`. [`Chain`] skips a cause whose text is already printed.
//!
//! Our own error types follow the rule of the Rust API guidelines: a
//! message embeds its cause *or* returns it from `source()`, never both.

use std::error::Error;
use std::fmt;

/// Displays an error and its causes joined by `": "`, skipping any cause
/// whose text the line already contains. Use it wherever an error is shown
/// to a person: `eprintln!("{}", Chain(&*error))`, or in a log field:
/// `warn!(error = %Chain(&error), "…")`.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&join(std::iter::successors(Some(self.0), |e| {
            (*e).source()
        })))
    }
}

/// The line for an `anyhow::Error` (its context messages, then its causes).
pub fn anyhow_chain(error: &anyhow::Error) -> String {
    join(error.chain().map(|e| e as &(dyn Error + 'static)))
}

fn join<'a>(errors: impl Iterator<Item = &'a (dyn Error + 'static)>) -> String {
    let mut line = String::new();
    for error in errors {
        let text = error.to_string();
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read cache.json: {source}")]
    struct Embeds {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the store")]
    struct Wraps(#[source] std::io::Error);

    fn not_found() -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "No such file or directory (os error 2)",
        )
    }

    #[test]
    fn a_cause_the_message_embeds_is_not_repeated() {
        let error = Embeds {
            source: not_found(),
        };
        assert_eq!(
            Chain(&error).to_string(),
            "cannot read cache.json: No such file or directory (os error 2)"
        );
        let wrapped = anyhow::Error::new(error).context("starting b24-edge");
        assert_eq!(
            anyhow_chain(&wrapped),
            "starting b24-edge: cannot read cache.json: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_cause_behind_source_is_printed_once() {
        let error = Wraps(not_found());
        assert_eq!(
            Chain(&error).to_string(),
            "cannot open the store: No such file or directory (os error 2)"
        );
        let wrapped = anyhow::Error::new(error)
            .context("cannot open the store")
            .context("b24-relay serve");
        assert_eq!(
            anyhow_chain(&wrapped),
            "b24-relay serve: cannot open the store: No such file or directory (os error 2)"
        );
    }
}
