//! Model references: `name` (latest version), `name:7` (version 7), `name@alias`.

use std::fmt;

use crate::error::{Result, ScoreError};

/// Which version of a model a reference selects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VersionSelector {
    /// The latest ready version.
    Latest,
    /// One version number (from 1).
    Version(u64),
    /// A named alias (`champion`).
    Alias(String),
}

/// A parsed, validated model reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelRef {
    /// Model name: `[a-z0-9][a-z0-9._-]{0,127}`.
    pub name: String,
    /// Version selector.
    pub selector: VersionSelector,
}

/// `[a-z0-9][a-z0-9._-]{0,127}`
pub fn valid_model_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

/// `[a-z][a-z0-9_-]{0,63}`
pub fn valid_alias(alias: &str) -> bool {
    let bytes = alias.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_lowercase()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

impl ModelRef {
    /// Parse `name`, `name:7` or `name@alias`; anything else is `INVALID_ARGUMENT`.
    pub fn parse(reference: &str) -> Result<Self> {
        let bad = |why: &str| {
            ScoreError::InvalidArgument(format!(
                "invalid model reference {reference:?}: {why} (expected name, name:VERSION or name@ALIAS)"
            ))
        };
        if reference.is_empty() {
            return Err(ScoreError::InvalidArgument("the score command has no model reference (field `model`)".into()));
        }
        let (name, selector) = if let Some((name, alias)) = reference.split_once('@') {
            if !valid_alias(alias) {
                return Err(bad("alias must match [a-z][a-z0-9_-]{0,63}"));
            }
            (name, VersionSelector::Alias(alias.to_string()))
        } else if let Some((name, version)) = reference.split_once(':') {
            let v: u64 = version
                .parse()
                .ok()
                .filter(|v| *v >= 1 && version.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| bad("version must be an integer from 1"))?;
            (name, VersionSelector::Version(v))
        } else {
            (reference, VersionSelector::Latest)
        };
        if !valid_model_name(name) {
            return Err(bad("name must match [a-z0-9][a-z0-9._-]{0,127}"));
        }
        Ok(ModelRef { name: name.to_string(), selector })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(ModelRef::parse("fraud").unwrap().selector, VersionSelector::Latest);
        assert_eq!(ModelRef::parse("fraud:7").unwrap().selector, VersionSelector::Version(7));
        assert_eq!(
            ModelRef::parse("fraud.v2@champion").unwrap(),
            ModelRef { name: "fraud.v2".into(), selector: VersionSelector::Alias("champion".into()) }
        );
        assert_eq!(ModelRef::parse("a-b_c:12").unwrap().to_string(), "a-b_c:12");
    }

    #[test]
    fn refuses_bad_references() {
        for bad in ["", "Fraud", "../x", "a/b", "x:0", "x:-1", "x:+3", "x:", "x@", "x@1a", "@a", ":3", ".x", "x:1:2"] {
            let err = ModelRef::parse(bad).unwrap_err();
            assert!(matches!(err, ScoreError::InvalidArgument(_)), "{bad}: {err:?}");
        }
        assert!(ModelRef::parse(&"a".repeat(129)).is_err());
        assert!(ModelRef::parse(&"a".repeat(128)).is_ok());
    }
}
