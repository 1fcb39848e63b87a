//! The types the store reads and writes: the wire types shared through `lakescore_core`,
//! and the two that never leave the registry (what a new version row needs, and what a
//! caller may do with a model by ownership or grant).

use std::collections::BTreeMap;

pub use lakescore_core::wire::{
    AuditEntry, Grant, Model, ModelVersion, Page, Permission, Signature, Tags, VersionStatus,
};

/// What a new version row needs; the version number is assigned by [`Store::insert_version`].
///
/// [`Store::insert_version`]: super::Store::insert_version
pub struct NewVersion<'a> {
    pub sha256: &'a str,
    pub size: i64,
    pub created_by: &'a str,
    pub description: &'a str,
    pub tags: &'a Tags,
    pub signature: &'a Signature,
    pub backends: &'a BTreeMap<String, String>,
}

/// What a caller may do with one model by ownership or grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    None,
    Read,
    Write,
    Owner,
}
