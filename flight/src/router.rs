//! Which calls are Flight SQL's: the one place the service tells a score command from a
//! Flight SQL one. SQL itself is plugged in as a [`FlightSqlFront`] (`lakescore-sql`), so
//! this crate neither depends on DataFusion nor has a build switch for it.

use arrow::datatypes::SchemaRef;
use arrow_flight::{FlightDescriptor, FlightInfo};
use bytes::Bytes;
use lakescore_engine::error::{Result, ScoreError};
use lakescore_engine::scorer::BatchStream;
use lakescore_engine::source::Credentials;
use prost::Message;

use crate::input::FlightInput;

/// Flight SQL on the worker's port. The service hands it every call whose command (a
/// descriptor's, a ticket's) or action is Flight SQL's, with the caller's credentials.
#[async_trait::async_trait]
pub trait FlightSqlFront: Send + Sync {
    /// The Flight SQL actions it takes (type, description), for `ListActions`.
    fn actions(&self) -> Vec<(&'static str, &'static str)>;
    /// `GetFlightInfo` (and `PollFlightInfo`) of a Flight SQL descriptor.
    async fn flight_info(&self, descriptor: FlightDescriptor, creds: &Credentials) -> Result<FlightInfo>;
    /// `GetSchema` of a Flight SQL command: planned, not run.
    async fn schema(&self, command: &[u8], creds: &Credentials) -> Result<SchemaRef>;
    /// `DoGet` of a Flight SQL ticket: the schema its batches have, and the batches.
    async fn do_get(&self, ticket: &[u8], creds: &Credentials) -> Result<(SchemaRef, BatchStream)>;
    /// `DoPut` of a Flight SQL command (an update, an ingest): the `PutResult`'s metadata.
    async fn do_put(&self, command: &[u8], input: FlightInput, creds: &Credentials) -> Result<Bytes>;
    /// A Flight SQL action: its one result's body, if any.
    async fn do_action(&self, kind: &str, body: &[u8], creds: &Credentials) -> Result<Option<Bytes>>;
    /// `CancelFlightInfo` of a Flight SQL statement: whether it was cancelled.
    fn cancel_info(&self, info: &FlightInfo, creds: &Credentials) -> Result<bool>;
}

/// Where a call goes.
pub(crate) enum Route<'a> {
    /// A score command (or an action of the service's own).
    Score,
    /// Flight SQL.
    Sql(&'a dyn FlightSqlFront),
}

/// The `Any` wrapping every Flight SQL command: only its type is read here.
#[derive(Clone, PartialEq, Message)]
struct AnyType {
    #[prost(string, tag = "1")]
    type_url: String,
}

/// The type URL prefix of Flight SQL's commands.
pub const FLIGHT_SQL_TYPE_PREFIX: &str = "type.googleapis.com/arrow.flight.protocol.sql.";

/// The Flight SQL actions the worker takes (prepared statements); Flight SQL's others are
/// unknown actions here, as they are to the SQL front.
const FLIGHT_SQL_ACTIONS: &[&str] = &[ACTION_CREATE_PREPARED_STATEMENT, ACTION_CLOSE_PREPARED_STATEMENT];

/// Flight SQL's action names (arrow-flight keeps its own private).
pub const ACTION_CREATE_PREPARED_STATEMENT: &str = "CreatePreparedStatement";
/// See [`ACTION_CREATE_PREPARED_STATEMENT`].
pub const ACTION_CLOSE_PREPARED_STATEMENT: &str = "ClosePreparedStatement";

/// Whether `bytes` (a descriptor's command, a ticket) is a Flight SQL command. A score
/// command (protobuf or JSON) never decodes as an `Any` with Flight SQL's type URL.
pub(crate) fn is_flight_sql_command(bytes: &[u8]) -> bool {
    AnyType::decode(bytes).is_ok_and(|any| any.type_url.starts_with(FLIGHT_SQL_TYPE_PREFIX))
}

/// The route of a call whose command is `bytes` (or whose action is `action`).
pub(crate) fn route<'a>(sql: Option<&'a dyn FlightSqlFront>, bytes: &[u8], action: Option<&str>) -> Result<Route<'a>> {
    let is_sql = match action {
        Some(kind) => FLIGHT_SQL_ACTIONS.contains(&kind),
        None => is_flight_sql_command(bytes),
    };
    match (is_sql, sql) {
        (false, _) => Ok(Route::Score),
        (true, Some(front)) => Ok(Route::Sql(front)),
        (true, None) => Err(ScoreError::Unimplemented(
            "Flight SQL is turned off on this worker ([scorer.sql] enabled = false)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_flight_sql_from_score_commands() {
        let any = |type_url: &str| AnyType { type_url: type_url.into() }.encode_to_vec();
        assert!(is_flight_sql_command(&any("type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery")));
        assert!(!is_flight_sql_command(&any("type.googleapis.com/other.Message")));
        let cmd = lakescore_proto::ScoreCommand { model: "m@champion".into(), ..Default::default() };
        assert!(!is_flight_sql_command(&cmd.encode_to_vec()));
        assert!(!is_flight_sql_command(br#"{"model": "m@champion"}"#));
        let err = route(None, &any(&format!("{FLIGHT_SQL_TYPE_PREFIX}CommandGetCatalogs")), None).err();
        assert!(matches!(err, Some(ScoreError::Unimplemented(_))));
        assert!(matches!(route(None, &cmd.encode_to_vec(), None), Ok(Route::Score)));
        assert!(matches!(route(None, b"", Some("warm")), Ok(Route::Score)));
    }
}
