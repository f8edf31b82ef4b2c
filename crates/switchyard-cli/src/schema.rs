//! `switchyard schema`: `check OLD NEW` compares two JSON Schemas (exit 0 compatible, 1
//! incompatible, 2 unreadable input); `export` writes the node's AsyncAPI document, or with
//! `--lang python` its messages as Python dataclasses (from the node, or from a document file
//! with `--from`).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};
use serde_json::Value;
use switchyard_contracts::{Mode, check_compatibility, python};

use crate::CliError;
use crate::client::Client;

/// What `switchyard schema` does.
#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Checks whether NEW is compatible with OLD (JSON Schema files). Prints a report; exits 0
    /// when compatible, 1 when not, 2 when a file cannot be read or is not JSON.
    Check {
        /// The schema in use (a JSON Schema file).
        old: PathBuf,
        /// The proposed schema.
        new: PathBuf,
        /// backward: new readers read old data; forward: old readers read new data; full: both.
        #[arg(long, default_value = "backward", value_parser = parse_mode)]
        mode: Mode,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Writes the node's AsyncAPI 3.0 document (`GET /v1/asyncapi.json`), or with `--lang
    /// python` its message types as Python dataclasses for the `switchyard` package.
    Export {
        /// Write to this file instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        out: Option<PathBuf>,
        /// What to write: the AsyncAPI document, or Python code.
        #[arg(long, value_enum, default_value_t = Lang::Asyncapi)]
        lang: Lang,
        /// Read the AsyncAPI document from this file (one `switchyard schema export` wrote)
        /// instead of asking the node.
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
    },
}

/// What `switchyard schema export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// The AsyncAPI 3.0 document (JSON).
    Asyncapi,
    /// One `@dataclass` per message (with `TOPIC`, `VERSION`, `KIND`) and its nested types.
    Python,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
        .map_err(|e: switchyard_contracts::ParseModeError| e.to_string())
}

fn read_schema(path: &Path) -> Result<Value, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("{} is not JSON: {e}", path.display())))
}

/// `switchyard schema check`.
pub fn check(
    old: &Path,
    new: &Path,
    mode: Mode,
    json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let verdict = check_compatibility(&read_schema(old)?, &read_schema(new)?, mode);
    if json {
        let v = serde_json::to_value(&verdict).map_err(|e| CliError::Failure(e.to_string()))?;
        writeln!(out, "{v}")?;
    } else {
        write!(out, "{verdict}")?;
    }
    if verdict.is_compatible() {
        Ok(())
    } else {
        Err(CliError::Failure(format!(
            "{} is not {mode} compatible with {}",
            new.display(),
            old.display()
        )))
    }
}

/// `switchyard schema export`: the document from `from` (a file) or the node `client()`
/// connects to, written as `lang` to `to` or `out`.
pub async fn export(
    client: impl FnOnce() -> Result<Client, CliError>,
    from: Option<&Path>,
    lang: Lang,
    to: Option<&Path>,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let doc = match from {
        Some(path) => read_schema(path)?,
        None => client()?.get_json("v1/asyncapi.json").await?,
    };
    let text = match lang {
        Lang::Asyncapi => {
            serde_json::to_string_pretty(&doc).map_err(|e| CliError::Failure(e.to_string()))?
        }
        Lang::Python => python::from_asyncapi(&doc)
            .map_err(|e| CliError::Failure(format!("no Python code: {e}")))?
            .trim_end()
            .to_owned(),
    };
    match to {
        Some(path) => std::fs::write(path, text + "\n").map_err(|e| write_error(path, &e))?,
        None => writeln!(out, "{text}")?,
    }
    Ok(())
}

/// Why `path` could not be written, naming it, and its directory when that is what is
/// missing (the error of `write` alone names neither).
fn write_error(path: &Path, e: &std::io::Error) -> CliError {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if e.kind() == std::io::ErrorKind::NotFound && !dir.is_dir() {
        return CliError::Failure(format!(
            "cannot write output {}: directory {} does not exist",
            path.display(),
            dir.display()
        ));
    }
    CliError::Failure(format!("cannot write output {}: {e}", path.display()))
}
