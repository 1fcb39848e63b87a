//! Model references: `name` (the latest ready version), `name:7` (version 7) and
//! `name@alias`, with the name and alias rules behind them. The registry's REST and gRPC
//! APIs, the scoring worker and the CLI all parse references here, so they accept and
//! refuse exactly the same strings.

use std::fmt;

/// Why a string is not a model reference, a model name or an alias.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReferenceError(String);

impl ReferenceError {
    /// Every reference error is the caller's: `INVALID_ARGUMENT` / 400.
    pub fn code(&self) -> crate::ErrorCode {
        crate::ErrorCode::InvalidArgument
    }
}

/// Which version of a model a reference selects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VersionSelector {
    /// The latest ready version.
    Latest,
    /// One version number (from 1).
    Version(i64),
    /// A named alias (`champion`).
    Alias(String),
}

/// A parsed, validated model reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelRef {
    /// Model name: `[a-z0-9][a-z0-9._-]{0,127}`.
    pub name: String,
    /// Which version.
    pub selector: VersionSelector,
}

impl ModelRef {
    /// Parses `name`, `name:VERSION` (decimal digits, from 1) or `name@ALIAS`.
    pub fn parse(reference: &str) -> Result<Self, ReferenceError> {
        let bad = |why: &str| {
            ReferenceError(format!(
                "invalid model reference {reference:?}: {why} (expected name, name:VERSION or name@ALIAS)"
            ))
        };
        if reference.is_empty() {
            return Err(ReferenceError("empty model reference (expected name, name:VERSION or name@ALIAS)".into()));
        }
        let (name, selector) = if let Some((name, alias)) = reference.split_once('@') {
            if !is_valid_alias(alias) {
                return Err(bad("invalid alias (it must match [a-z][a-z0-9_-]{0,63})"));
            }
            (name, VersionSelector::Alias(alias.to_string()))
        } else if let Some((name, version)) = reference.split_once(':') {
            (
                name,
                VersionSelector::Version(
                    parse_version(version).map_err(|_| bad("not a version number (an integer from 1)"))?,
                ),
            )
        } else {
            (reference, VersionSelector::Latest)
        };
        if !is_valid_name(name) {
            return Err(bad("invalid model name (it must match [a-z0-9][a-z0-9._-]{0,127})"));
        }
        Ok(Self { name: name.to_string(), selector })
    }

    /// A reference to one version.
    pub fn pinned(name: impl Into<String>, version: i64) -> Self {
        Self { name: name.into(), selector: VersionSelector::Version(version) }
    }

    /// The model's name.
    pub fn model_name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.selector {
            VersionSelector::Latest => write!(f, "{}", self.name),
            VersionSelector::Version(v) => write!(f, "{}:{v}", self.name),
            VersionSelector::Alias(a) => write!(f, "{}@{a}", self.name),
        }
    }
}

impl std::str::FromStr for ModelRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A version number as written in a reference or a URL path: decimal digits only (no
/// sign, no spaces), from 1.
pub fn parse_version(text: &str) -> Result<i64, ReferenceError> {
    text.parse::<i64>()
        .ok()
        .filter(|v| *v >= 1 && !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| ReferenceError(format!("'{text}' is not a version number (1, 2, …)")))
}

/// `[a-z0-9][a-z0-9._-]{0,127}`
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    matches!(bytes.first(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.len() <= 128
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

/// `[a-z][a-z0-9_-]{0,63}`
pub fn is_valid_alias(alias: &str) -> bool {
    let bytes = alias.as_bytes();
    matches!(bytes.first(), Some(b) if b.is_ascii_lowercase())
        && bytes.len() <= 64
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

/// The name rule as a checked value, with the message the APIs answer.
pub fn validate_name(name: &str) -> Result<(), ReferenceError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(ReferenceError(format!(
            "invalid model name '{name}': use 1-128 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        )))
    }
}

/// The alias rule as a checked value, with the message the APIs answer.
pub fn validate_alias(alias: &str) -> Result<(), ReferenceError> {
    if is_valid_alias(alias) {
        Ok(())
    } else {
        Err(ReferenceError(format!(
            "invalid alias '{alias}': use 1-64 characters of a-z, 0-9, '_', '-', starting with a letter"
        )))
    }
}

/// The grammar as a table: each string and what it parses to (`None`: refused). The
/// unit test below checks the parser against it, and the end-to-end tests send every
/// entry to the REST API and to a Flight worker, so both transports keep one grammar.
#[doc(hidden)]
pub const GRAMMAR_CASES: &[(&str, Option<&str>)] = &[
    ("fraud", Some("fraud")),
    ("fraud:7", Some("fraud:7")),
    ("fraud.v2:12", Some("fraud.v2:12")),
    ("a-b_c@champion", Some("a-b_c@champion")),
    ("9lives@x-1_y", Some("9lives@x-1_y")),
    ("fraud:007", Some("fraud:7")),
    ("", None),
    ("Fraud", None),
    ("-x", None),
    (".x", None),
    ("../x", None),
    ("a/b", None),
    ("x:0", None),
    ("x:-1", None),
    ("x:+3", None),
    ("x: 3", None),
    ("x:", None),
    ("x:a", None),
    ("x:1:2", None),
    ("x:99999999999999999999", None),
    (":3", None),
    ("x@", None),
    ("@a", None),
    ("x@1a", None),
    ("x@A", None),
    ("x@a:3", None),
    ("x:3@a", None),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar_table() {
        for (text, want) in GRAMMAR_CASES {
            let got = ModelRef::parse(text).map(|r| r.to_string()).ok();
            assert_eq!(got.as_deref(), *want, "{text:?}");
        }
        assert!(ModelRef::parse(&"a".repeat(128)).is_ok());
        assert!(ModelRef::parse(&"a".repeat(129)).is_err());
        assert!(ModelRef::parse(&format!("a@{}", "b".repeat(64))).is_ok());
        assert!(ModelRef::parse(&format!("a@{}", "b".repeat(65))).is_err());
    }

    /// Each refusal names what is wrong, in the words the APIs have always used.
    #[test]
    fn refusals_say_why() {
        let why = |r: &str| ModelRef::parse(r).unwrap_err().to_string();
        assert!(why("Fraud").contains("invalid model name"), "{}", why("Fraud"));
        assert!(why("fraud:zero").contains("not a version number"), "{}", why("fraud:zero"));
        assert!(why("fraud@Champion").contains("invalid alias"), "{}", why("fraud@Champion"));
    }

    #[test]
    fn selectors() {
        assert_eq!(ModelRef::parse("fraud").unwrap().selector, VersionSelector::Latest);
        assert_eq!(ModelRef::parse("fraud:7").unwrap(), ModelRef::pinned("fraud", 7));
        assert_eq!(ModelRef::parse("f@champion").unwrap().selector, VersionSelector::Alias("champion".into()));
    }
}
