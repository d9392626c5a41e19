//! Exit codes every binary shares, and the one line a failure prints.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the program ran and failed (a portal, the network, the disk) |
//! | 2 | usage or configuration error: nothing was done; fix the command or the file |
//!
//! A binary may define more codes above 2 (nodesync: 3 and 4) and lists
//! them in its `--help`.

use std::process::ExitCode;

use crate::ConfigError;
use crate::chain::anyhow_chain;

pub const OK: u8 = 0;
pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 2;

/// A wrong combination of arguments that clap cannot see (`replay` with
/// both an id and `--failed`); exits with [`USAGE`] like clap's own errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// [`USAGE`] when the error (or a cause) is a configuration or usage
/// error, [`FAILURE`] otherwise.
pub fn code_of(error: &anyhow::Error) -> u8 {
    let usage = error
        .chain()
        .any(|e| e.is::<ConfigError>() || e.is::<UsageError>());
    if usage { USAGE } else { FAILURE }
}

/// Prints `PROGRAM: error: cause: cause` on stderr (each cause once) and
/// returns the exit code for it.
pub fn report(program: &str, error: &anyhow::Error) -> ExitCode {
    eprintln!("{program}: {}", anyhow_chain(error));
    ExitCode::from(code_of(error))
}

/// `main`'s last line: success, or [`report`].
pub fn finish(program: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(OK),
        Err(error) => report(program, &error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn configuration_and_usage_errors_exit_2_others_1() {
        let config: anyhow::Result<()> = Err(ConfigError::message("bad")).context("cannot start");
        assert_eq!(code_of(&config.unwrap_err()), USAGE);
        let usage = anyhow::Error::new(UsageError("give an id or --failed".into()));
        assert_eq!(code_of(&usage), USAGE);
        assert_eq!(code_of(&anyhow::anyhow!("portal down")), FAILURE);
    }
}
