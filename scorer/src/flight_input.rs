//! A client's stream of Flight data (DoPut, DoExchange) decoded into its schema and record
//! batches. Whatever is wrong with the bytes is the client's doing and becomes
//! `INVALID_ARGUMENT`, including a panic inside the Arrow IPC reader: it does not check
//! every part of a malformed message (the `arrow_to_tensor` fuzz target found arrow-ipc 59
//! panicking on a dictionary batch whose buffer offset lies past the message body, and in
//! its schema conversion).

use std::panic::AssertUnwindSafe;

use arrow::datatypes::SchemaRef;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::FlightData;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};

use crate::error::{Result, ScoreError};
use crate::scorer::BatchStream;

/// The decoded input of one Flight call.
pub struct FlightInput {
    decoded: BoxStream<'static, Result<DecodedPayload>>,
}

impl std::fmt::Debug for FlightInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightInput").finish_non_exhaustive()
    }
}

/// An error of the client's input stream. What the IPC decoder finds wrong with the bytes
/// (malformed messages, buffers that do not fit the schema, invalid UTF-8) is
/// `INVALID_ARGUMENT`; transport statuses keep their code.
fn input_error(e: FlightError) -> ScoreError {
    match e {
        FlightError::Arrow(e) => ScoreError::InvalidArgument(format!("invalid Flight stream: {e}")),
        other => ScoreError::from(other),
    }
}

impl FlightInput {
    /// Decodes `messages`; messages without an IPC header (a bare descriptor) are skipped.
    pub fn new<S>(messages: S) -> Self
    where
        S: Stream<Item = Result<FlightData, FlightError>> + Send + 'static,
    {
        let with_headers = messages.try_filter(|d| futures::future::ready(!d.data_header.is_empty()));
        // After a panic the decoder is dropped: the stream ends with the error.
        let decoded = AssertUnwindSafe(FlightDataDecoder::new(with_headers))
            .catch_unwind()
            .map(|item| match item {
                Ok(Ok(d)) => Ok(d.payload),
                Ok(Err(e)) => Err(input_error(e)),
                Err(_) => Err(ScoreError::InvalidArgument(
                    "invalid Flight stream: an Arrow IPC message is malformed (the IPC reader could not decode it)"
                        .into(),
                )),
            })
            .boxed();
        Self { decoded }
    }

    /// Waits for the schema; `None` when the stream ends before one.
    pub async fn schema(&mut self) -> Result<Option<SchemaRef>> {
        while let Some(item) = self.decoded.next().await {
            match item? {
                DecodedPayload::Schema(s) => return Ok(Some(s)),
                DecodedPayload::None => continue,
                DecodedPayload::RecordBatch(_) => {
                    return Err(ScoreError::invalid("a record batch arrived before the schema"))
                }
            }
        }
        Ok(None)
    }

    /// The record batches after the schema; a second schema is an error.
    pub fn batches(self) -> BatchStream {
        self.decoded
            .filter_map(|item| {
                futures::future::ready(match item {
                    Ok(DecodedPayload::RecordBatch(b)) => Some(Ok(b)),
                    Ok(DecodedPayload::None) => None,
                    Ok(DecodedPayload::Schema(_)) => {
                        Some(Err(ScoreError::invalid("the schema changed in the middle of the stream")))
                    }
                    Err(e) => Some(Err(e)),
                })
            })
            .boxed()
    }
}
