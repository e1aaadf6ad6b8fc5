//! `ConfigError`: what is wrong with an operator's file, and exactly where.
//!
//! Every error about a file's content names the file, the line and column (1-based; columns
//! count characters) and the key path (`allow[1].from`), and says what would be valid. Values
//! that could be secrets are never echoed, and neither is the offending source line (it could
//! hold a pasted key). This module does not decide what is valid: the policy and sidecar
//! parsers do, and hand their findings here to be located.

use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::Path;

use serde::de::DeserializeOwned;

/// Largest config file read. A 10,000-rule policy is well under 1 MiB; the cap only stops a
/// mistyped path (a device, a log file) from being read into memory.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A place in an operator's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file as the operator named it (or the name given to a `from_str_named`).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Key path such as `allow[1].from`; `None` when the problem is not under one key.
    pub key: Option<String>,
}

/// Why a config or policy file was refused. Every variant says which file; content errors
/// also say where in it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, no permission, not UTF-8).
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is implausibly large for a config file.
    #[error("{file}: larger than {limit} bytes; is this the right file?")]
    TooLarge { file: String, limit: u64 },
    /// Not TOML, or not the expected shape: unknown key, missing key, wrong type.
    #[error("{at}: {message}")]
    Syntax { at: Location, message: String },
    /// Well-formed, but a value is not acceptable (bad name, unknown zone, duplicate, ...).
    #[error("{at}: {message}")]
    Invalid { at: Location, message: String },
}

/// One file's text plus the name errors should use for it.
pub(crate) struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
    /// Byte offset of each line's start, so locating is a binary search: a 10,000-rule policy
    /// locates every rule, and rescanning the text each time would be quadratic.
    line_starts: Vec<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)?;
        match &self.key {
            Some(key) => write!(f, ": {key}"),
            None => Ok(()),
        }
    }
}

impl ConfigError {
    /// The file the error is about.
    pub fn file(&self) -> &str {
        match self {
            Self::Read { file, .. } | Self::TooLarge { file, .. } => file,
            Self::Syntax { at, .. } | Self::Invalid { at, .. } => &at.file,
        }
    }

    /// Where in the file, for errors about its content.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Self::Read { .. } | Self::TooLarge { .. } => None,
            Self::Syntax { at, .. } | Self::Invalid { at, .. } => Some(at),
        }
    }

    /// 1-based line, for errors about the file's content.
    pub fn line(&self) -> Option<usize> {
        self.location().map(|at| at.line)
    }

    /// 1-based column in characters, for errors about the file's content.
    pub fn column(&self) -> Option<usize> {
        self.location().map(|at| at.column)
    }

    /// The key path the error is about, e.g. `allow[1].from`.
    pub fn key(&self) -> Option<&str> {
        self.location().and_then(|at| at.key.as_deref())
    }
}

/// Reads a whole config file, refusing anything over [`MAX_FILE_BYTES`].
pub(crate) fn read_file(path: &Path) -> Result<String, ConfigError> {
    let file = path.display().to_string();
    let read = |source| ConfigError::Read { file: file.clone(), source };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(read)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::TooLarge { file, limit: MAX_FILE_BYTES });
    }
    Ok(text)
}

impl<'a> Source<'a> {
    pub fn new(name: &'a str, text: &'a str) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Self { name, text, line_starts }
    }

    /// Deserializes the file's raw shape, turning toml's error into a located `Syntax` error.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(self.text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            let raw = e.message().trim();
            // A missing key is reported on its table, so the path is the table's, not a key in it.
            let key = toml_key_at(self.text, offset, raw.starts_with("missing field"));
            ConfigError::Syntax { at: self.locate(offset, key), message: reword(raw) }
        })
    }

    /// An `Invalid` error about the value at `span`.
    pub fn invalid(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid { at: self.locate(span.start, Some(key.into())), message: message.into() }
    }

    /// 1-based line and character column of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        // Line starts are ascending and begin with 0, so the partition point is at least 1.
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line_start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        (line, self.text[line_start..offset].chars().count() + 1)
    }

    fn locate(&self, offset: usize, key: Option<String>) -> Location {
        let (line, column) = self.position(offset);
        Location { file: self.name.to_owned(), line, column, key }
    }
}

/// Operators write keys, not serde fields: say so, and list what is valid.
fn reword(message: &str) -> String {
    let message =
        message.replacen("unknown field", "unknown key", 1).replacen("missing field", "missing key", 1);
    if message.starts_with("unknown key") {
        return message
            .replacen(", expected one of ", "; valid keys here: ", 1)
            .replacen(", expected ", "; valid keys here: ", 1)
            .replacen(", there are no fields", "; this table takes no keys", 1);
    }
    message
}

/// The key path (`allow[1].frm`) of the TOML line holding `offset`, found by replaying the
/// table headers above it. toml's errors carry a span but not the path, and the path is what an
/// operator searches for. Best effort: keys inside inline tables get their enclosing key.
fn toml_key_at(text: &str, offset: usize, table_only: bool) -> Option<String> {
    let mut table: Option<String> = None;
    let mut key: Option<String> = None;
    let mut array_counts = std::collections::HashMap::<String, usize>::new();
    let mut in_multiline_string = false;
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        if start > offset {
            break;
        }
        start += line.len();
        let trimmed = line.trim();
        let quotes = trimmed.matches("\"\"\"").count() + trimmed.matches("'''").count();
        if in_multiline_string {
            in_multiline_string = quotes % 2 == 0;
            continue;
        }
        in_multiline_string = quotes % 2 == 1;
        if let Some(name) = trimmed.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_owned();
            let n = array_counts.entry(name.clone()).or_insert(0);
            table = Some(format!("{name}[{n}]"));
            *n += 1;
            key = None;
        } else if let Some(name) = trimmed.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = Some(name.trim().to_owned());
            key = None;
        } else if let Some((k, _)) = trimmed.split_once('=') {
            let k = k.trim();
            let plain = |c: char| c.is_ascii_alphanumeric() || "_-.\"' ".contains(c);
            if !k.is_empty() && !trimmed.starts_with('#') && k.chars().all(plain) {
                key = Some(k.to_owned());
            }
        }
    }
    match (table, key) {
        (table, _) if table_only => table,
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, k) => k,
        (t, None) => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // fields exist to be deserialized
    struct Shape {
        name: String,
        #[serde(default)]
        item: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        a: String,
        b: Option<u32>,
    }

    fn err(text: &str) -> ConfigError {
        Source::new("x.toml", text).parse::<Shape>().expect_err("input is invalid")
    }

    #[test]
    fn unknown_key_names_table_line_and_valid_keys() {
        let e = err("name = \"n\"\n[[item]]\na = \"1\"\n\n[[item]]\na = \"2\"\nc = 3\n");
        assert_eq!(e.to_string(), "x.toml:7:1: item[1].c: unknown key `c`; valid keys here: `a` or `b`");
        assert_eq!((e.line(), e.column(), e.key()), (Some(7), Some(1), Some("item[1].c")));
    }

    #[test]
    fn missing_key_points_at_its_table() {
        let e = err("name = \"n\"\n[[item]]\nb = 1\n");
        assert_eq!(e.to_string(), "x.toml:2:1: item[0]: missing key `a`");
        let e = err("# nothing\n");
        assert_eq!(e.to_string(), "x.toml:1:1: missing key `name`");
    }

    #[test]
    fn wrong_type_names_the_key_and_column() {
        let e = err("name = \"n\"\n[[item]]\na = \"1\"\nb = \"two\"\n");
        assert_eq!((e.line(), e.column(), e.key()), (Some(4), Some(5), Some("item[0].b")));
    }

    #[test]
    fn multiline_strings_do_not_look_like_headers() {
        let e = err("name = \"\"\"\n[[item]]\n\"\"\"\nbogus = 1\n");
        assert_eq!(e.key(), Some("bogus"));
    }

    #[test]
    fn bad_toml_is_located() {
        let e = err("name = \"n\n");
        assert!(matches!(e, ConfigError::Syntax { .. }));
        assert_eq!(e.line(), Some(1));
    }

    #[test]
    fn columns_count_characters() {
        let src = Source::new("x", "a = \"é\"\nb = 1");
        assert_eq!(src.position(8), (1, 8));
        assert_eq!(src.position(src.text.len()), (2, 6));
        assert_eq!(src.position(6), (1, 6), "inside a character rounds down");
    }

    #[test]
    fn refuses_missing_and_oversized_files() {
        let e = read_file(Path::new("/nonexistent/zt-mesh/x.toml")).expect_err("missing");
        assert!(e.to_string().starts_with("/nonexistent/zt-mesh/x.toml: cannot read:"), "{e}");
        assert_eq!(e.line(), None);
    }
}
