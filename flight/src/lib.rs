//! lakescore's Arrow Flight transport.
//!
//! Owns the Flight service ([`service::ScorerService`], served by [`service::FlightServer`]
//! and [`serve_service`]), the gRPC codec that decodes input and sends results below tonic
//! ([`input`], [`output`]), and the [`router`] that sends Flight SQL calls to a plugged-in
//! [`router::FlightSqlFront`].
//!
//! A thin layer: it decodes calls and answers them with `lakescore-engine` (scoring) and
//! `lakescore-lake` (storage, jobs). It may not depend on `lakescore-sql` (SQL plugs into it).

#![warn(missing_docs)]

pub mod health;
pub mod input;
mod metered;
pub mod output;
pub mod router;
pub mod server;
pub mod service;

pub use health::WorkerHealth;
pub use router::FlightSqlFront;
pub use server::serve_service;
pub use service::{
    FlightServer, ScorerService, TokenValidator, ACTION_CANCEL_FLIGHT_INFO, ACTION_DESCRIBE, ACTION_SCORE_DATASET,
    ACTION_WARM,
};
