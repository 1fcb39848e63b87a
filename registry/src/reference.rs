//! Model references (`name`, `name:7`, `name@alias`) and the name rules behind them.

use std::fmt;

use crate::error::{RegistryError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// The latest ready version.
    Latest(String),
    Version(String, i64),
    Alias(String, String),
}

impl ModelRef {
    pub fn parse(s: &str) -> Result<Self> {
        if let Some((name, version)) = s.split_once(':') {
            validate_name(name)?;
            let v: i64 =
                version.parse().ok().filter(|v| *v >= 1).ok_or_else(|| {
                    RegistryError::BadRequest(format!("'{version}' is not a version number (1, 2, …)"))
                })?;
            Ok(Self::Version(name.to_string(), v))
        } else if let Some((name, alias)) = s.split_once('@') {
            validate_name(name)?;
            validate_alias(alias)?;
            Ok(Self::Alias(name.to_string(), alias.to_string()))
        } else {
            validate_name(s)?;
            Ok(Self::Latest(s.to_string()))
        }
    }

    pub fn model_name(&self) -> &str {
        match self {
            Self::Latest(n) | Self::Version(n, _) | Self::Alias(n, _) => n,
        }
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latest(n) => write!(f, "{n}"),
            Self::Version(n, v) => write!(f, "{n}:{v}"),
            Self::Alias(n, a) => write!(f, "{n}@{a}"),
        }
    }
}

/// `[a-z0-9][a-z0-9._-]{0,127}`
pub fn validate_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::BadRequest(format!(
            "invalid model name '{name}': use 1-128 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        )))
    }
}

/// `[a-z][a-z0-9_-]{0,63}`
pub fn validate_alias(alias: &str) -> Result<()> {
    let mut chars = alias.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && alias.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::BadRequest(format!(
            "invalid alias '{alias}': use 1-64 characters of a-z, 0-9, '_', '-', starting with a letter"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(ModelRef::parse("fraud").ok(), Some(ModelRef::Latest("fraud".into())));
        assert_eq!(ModelRef::parse("fraud.v2:7").ok(), Some(ModelRef::Version("fraud.v2".into(), 7)));
        assert_eq!(ModelRef::parse("fraud@champion").ok(), Some(ModelRef::Alias("fraud".into(), "champion".into())));
    }

    #[test]
    fn rejects_bad_references() {
        for bad in ["", "Fraud", "-x", "x:0", "x:-1", "x:a", "x@", "x@1a", "x@A", &"a".repeat(129)] {
            assert!(ModelRef::parse(bad).is_err(), "{bad} should be rejected");
        }
        assert!(ModelRef::parse(&"a".repeat(128)).is_ok());
    }
}
