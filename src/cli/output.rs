//! What the binary prints: answers on standard output, errors on standard
//! error.
//!
//! Answers go through [`outln!`] and [`out!`], which return the error of a
//! closed stdout (`sketchd query … | head`) instead of panicking as
//! `println!` does; [`exit_code`] then ends the command quietly with status
//! 0. An error is printed once, as `error: ` and its chain of causes, each
//! cause only if the text so far does not already say it, plus a hint
//! where the command line can fix it.

use std::fmt;
use std::io::Write;
use std::process::ExitCode;

use sketchd::client::{ClientError, CollectorError};

/// `println!` to stdout that returns its error (use it with `?`).
macro_rules! outln {
    () => {
        $crate::cli::output::write(format_args!("\n"))?
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

/// `print!` to stdout that returns its error (use it with `?`).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write(format_args!($($arg)*))?
    };
}

/// Writes to stdout.
pub fn write(args: fmt::Arguments<'_>) -> std::io::Result<()> {
    std::io::stdout().lock().write_fmt(args)
}

/// Prints `result`'s error, if any, and gives the exit status.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    let Err(error) = result else {
        return ExitCode::SUCCESS;
    };
    if closed_stdout(&error) {
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {}", message(&error));
    ExitCode::FAILURE
}

/// Whether `error` is a write to a stdout whose reader has gone.
fn closed_stdout(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes, each said once, and a hint.
pub fn message(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    if let Some(hint) = hint(error) {
        if !text.contains(hint) {
            text.push_str(" (");
            text.push_str(hint);
            text.push(')');
        }
    }
    text
}

/// What the command line can do about `error`, if anything.
fn hint(error: &anyhow::Error) -> Option<&'static str> {
    for cause in error.chain() {
        if let Some(CollectorError::Unreachable { .. }) = cause.downcast_ref::<CollectorError>() {
            return Some("to wait for a server that is starting, pass --wait-for-server 30s");
        }
        let Some(ClientError::Status(status)) = cause.downcast_ref::<ClientError>() else {
            continue;
        };
        return match status.code() {
            tonic::Code::Unauthenticated if status.message().contains("missing") => Some(
                "this server requires a bearer token: pass --token-file FILE or set SKETCHD_TOKEN",
            ),
            tonic::Code::Unauthenticated => {
                Some("the server does not know this token: check --token-file or SKETCHD_TOKEN")
            }
            tonic::Code::PermissionDenied => {
                Some("use a token whose role covers this (see [[auth.tokens]] on the server)")
            }
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_said_is_not_said_again() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(inner).context("cannot read x.toml: no such file");
        assert_eq!(message(&error), "cannot read x.toml: no such file");
        let error = anyhow::anyhow!("inner").context("outer");
        assert_eq!(message(&error), "outer: inner");
    }

    #[test]
    fn a_missing_token_gets_the_flags() {
        let status = tonic::Status::unauthenticated("missing \"authorization\" metadata");
        let error = anyhow::Error::new(ClientError::Status(status));
        assert!(message(&error).ends_with("pass --token-file FILE or set SKETCHD_TOKEN)"));
    }

    #[test]
    fn a_closed_stdout_is_success() {
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert_eq!(
            exit_code(Err(anyhow::Error::new(pipe).context("printing"))),
            ExitCode::SUCCESS
        );
    }
}
