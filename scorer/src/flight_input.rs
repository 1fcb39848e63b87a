//! A client's stream of Flight data (DoPut, DoExchange) decoded into its schema and record
//! batches. Whatever is wrong with the bytes is the client's doing and becomes
//! `INVALID_ARGUMENT`, including a panic inside the Arrow IPC reader: it does not check
//! every part of a malformed message (the `arrow_to_tensor` fuzz target found arrow-ipc 59
//! panicking on a dictionary batch whose buffer offset lies past the message body, and in
//! its schema conversion).
//!
//! Compressed bodies (`LZ4_FRAME`, `ZSTD`, as pyarrow's `IpcWriteOptions(compression=…)`
//! sends them) are accepted. What a batch will take once decompressed is checked against the
//! worker's batch limit *before* anything is decompressed, from the sizes each buffer
//! declares; and because an LZ4 frame can expand to more than it declares (the IPC reader
//! would keep reading), every LZ4 buffer is first run through a decoder capped at its
//! declared size, into no memory.

use std::panic::AssertUnwindSafe;

use arrow::datatypes::SchemaRef;
use arrow::ipc::{CompressionType, MessageHeader};
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

/// For a compressed record or dictionary batch: the bytes its buffers declare once
/// decompressed must fit `max_bytes`, and no LZ4 buffer may expand past what it declares.
/// Messages that do not parse are left to the IPC reader, which reports them.
fn check_compressed(data: &FlightData, max_bytes: usize) -> Result<(), FlightError> {
    let Ok(message) = arrow::ipc::root_as_message(&data.data_header) else {
        return Ok(());
    };
    let batch = match message.header_type() {
        MessageHeader::RecordBatch => message.header_as_record_batch(),
        MessageHeader::DictionaryBatch => message.header_as_dictionary_batch().and_then(|d| d.data()),
        _ => None,
    };
    let Some(batch) = batch else { return Ok(()) };
    let Some(compression) = batch.compression() else { return Ok(()) };
    let lz4 = compression.codec() == CompressionType::LZ4_FRAME;
    let body = &data.data_body;
    let mut total: u64 = 0;
    for buffer in batch.buffers().iter().flatten() {
        let (Ok(start), Ok(len)) = (usize::try_from(buffer.offset()), usize::try_from(buffer.length())) else {
            return Ok(());
        };
        let Some(bytes) = start.checked_add(len).and_then(|end| body.get(start..end)) else {
            return Ok(());
        };
        let Some((prefix, compressed)) = bytes.split_first_chunk::<8>() else {
            continue; // empty buffer
        };
        let declared = i64::from_le_bytes(*prefix);
        let size = match declared {
            -1 => compressed.len() as u64, // stored uncompressed
            d if d >= 0 => d as u64,
            d => return Err(refused(format!("a compressed buffer declares a negative length ({d})"))),
        };
        total = total.saturating_add(size);
        if total > max_bytes as u64 {
            return Err(ScoreError::ResourceExhausted(format!(
                "a compressed batch declares at least {total} bytes once decompressed, over the worker's limit of \
                 {max_bytes} bytes"
            ))
            .into());
        }
        if lz4 && declared > 0 {
            use std::io::Read;
            let mut capped = lz4_flex::frame::FrameDecoder::new(compressed).take(size + 1);
            let actual = std::io::copy(&mut capped, &mut std::io::sink())
                .map_err(|e| refused(format!("an LZ4 buffer does not decompress: {e}")))?;
            if actual != size {
                return Err(refused(format!(
                    "an LZ4 buffer declares {size} bytes but decompresses to {}{actual}",
                    if actual > size { "more than " } else { "" }
                )));
            }
        }
    }
    Ok(())
}

fn refused(message: String) -> FlightError {
    ScoreError::InvalidArgument(format!("invalid Flight stream: {message}")).into()
}

impl FlightInput {
    /// Decodes `messages`; messages without an IPC header (a bare descriptor) are skipped. A
    /// compressed batch that would take more than `max_batch_bytes` once decompressed is
    /// refused with `RESOURCE_EXHAUSTED` before it is decompressed.
    pub fn new<S>(messages: S, max_batch_bytes: usize) -> Self
    where
        S: Stream<Item = Result<FlightData, FlightError>> + Send + 'static,
    {
        let with_headers = messages
            .try_filter(|d| futures::future::ready(!d.data_header.is_empty()))
            .and_then(move |d| futures::future::ready(check_compressed(&d, max_batch_bytes).map(|()| d)));
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float32Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::ipc::writer::IpcWriteOptions;
    use arrow_flight::encode::FlightDataEncoderBuilder;

    use super::*;

    fn batch(rows: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("f0", DataType::Float32, false)]));
        let values = Float32Array::from_iter_values((0..rows).map(|i| (i % 7) as f32));
        RecordBatch::try_new(schema, vec![Arc::new(values)]).unwrap()
    }

    async fn messages(codec: Option<CompressionType>, rows: usize) -> Vec<FlightData> {
        let options = IpcWriteOptions::default().try_with_compression(codec).unwrap();
        FlightDataEncoderBuilder::new()
            .with_options(options)
            .build(futures::stream::iter([Ok(batch(rows))]))
            .try_collect()
            .await
            .unwrap()
    }

    async fn decode(messages: Vec<FlightData>, max_bytes: usize) -> Result<Vec<RecordBatch>> {
        let mut input = FlightInput::new(futures::stream::iter(messages.into_iter().map(Ok)), max_bytes);
        input.schema().await?.expect("schema");
        input.batches().try_collect().await
    }

    /// Rewrites the declared decompressed length of the batch's data buffer.
    fn declare(messages: &mut [FlightData], declared: i64) {
        let data = messages.last_mut().unwrap();
        let message = arrow::ipc::root_as_message(&data.data_header).unwrap();
        let buffers = message.header_as_record_batch().unwrap().buffers().unwrap();
        let values = buffers.iter().find(|b| b.length() > 0).unwrap();
        let mut body = data.data_body.to_vec();
        let at = values.offset() as usize;
        body[at..at + 8].copy_from_slice(&declared.to_le_bytes());
        data.data_body = body.into();
    }

    #[tokio::test]
    async fn compressed_batches_decode_like_plain_ones() {
        let plain = decode(messages(None, 10_000).await, 1 << 20).await.unwrap();
        for codec in [CompressionType::LZ4_FRAME, CompressionType::ZSTD] {
            let sent = messages(Some(codec), 10_000).await;
            let body: usize = sent.iter().map(|m| m.data_body.len()).sum();
            assert!(body < 40_000 / 4, "{codec:?} did not compress: {body} bytes");
            assert_eq!(decode(sent, 1 << 20).await.unwrap(), plain, "{codec:?}");
        }
    }

    #[tokio::test]
    async fn declared_sizes_are_checked_before_decompressing() {
        for codec in [CompressionType::LZ4_FRAME, CompressionType::ZSTD] {
            // 40,000 bytes of floats against a 16 KiB limit, refused from the declared size.
            let err = decode(messages(Some(codec), 10_000).await, 16 << 10).await.unwrap_err();
            assert!(matches!(err, ScoreError::ResourceExhausted(ref m) if m.contains("once decompressed")), "{err}");
            // A buffer that claims a petabyte is refused without allocating it.
            let mut bomb = messages(Some(codec), 10_000).await;
            declare(&mut bomb, 1 << 50);
            let err = decode(bomb, 512 << 20).await.unwrap_err();
            assert!(matches!(err, ScoreError::ResourceExhausted(_)), "{err}");
            let mut negative = messages(Some(codec), 10_000).await;
            declare(&mut negative, -7);
            let err = decode(negative, 512 << 20).await.unwrap_err();
            assert!(matches!(err, ScoreError::InvalidArgument(ref m) if m.contains("negative")), "{err}");
        }
        // An LZ4 frame that expands past what it declares is refused before the IPC reader
        // (which would read it to the end) sees it; ZSTD's decoder is bounded by the declared size.
        for codec in [CompressionType::LZ4_FRAME, CompressionType::ZSTD] {
            let mut lying = messages(Some(codec), 10_000).await;
            declare(&mut lying, 64);
            let err = decode(lying, 512 << 20).await.unwrap_err();
            assert!(matches!(err, ScoreError::InvalidArgument(_)), "{codec:?}: {err}");
            if codec == CompressionType::LZ4_FRAME {
                assert!(err.to_string().contains("declares 64 bytes but decompresses to more"), "{err}");
            }
        }
    }
}
