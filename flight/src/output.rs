//! What DoGet and DoExchange send: scored batches as Flight data.
//!
//! The service's own routes ([`crate::service::FlightServer`]) send them below tonic's
//! codec, as the HTTP/2 body's own frames: each message's small parts (the gRPC prefix, the
//! FlightData fields' tags, the IPC header) are copied together, and every large buffer of a
//! batch goes out as it is, referenced rather than copied. Through tonic's codec the same
//! batch is copied twice more: the IPC encoder writes the body into one growing `Vec`, and
//! prost copies that into tonic's frame buffer. A profile of DoExchange on a linear model
//! put those copies at a quarter of the worker's CPU. Only the kernel's copy into the socket
//! is left.
//!
//! A schema with dictionary columns takes arrow-flight's encoder instead, which sends them
//! as their values (as clients of this service have always received them).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::{IpcWriteOptions, StreamEncoder};
use arrow::ipc::MessageHeader;
use arrow_flight::encode::{FlightDataEncoderBuilder, GRPC_TARGET_MAX_FLIGHT_SIZE_BYTES};
use arrow_flight::error::FlightError;
use arrow_flight::{FlightData, SchemaAsIpc};
use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tonic::Status;

use lakescore_engine::error::{Result, ScoreError};
use lakescore_engine::scorer::{batch_bytes, run_ahead, BatchStream};

/// Flight messages (up to arrow-flight's 2 MiB each) encoded ahead of the response.
const RESULT_MESSAGES_AHEAD: usize = 4;

/// Buffers smaller than this are copied in with the message's other small parts: each
/// piece of a body becomes its own HTTP/2 DATA frame, and a frame costs a header and a
/// vector in the socket write.
const SEND_WITHOUT_COPY_FROM: usize = 8 * 1024;

/// The answer of a DoGet or DoExchange: the result schema (sent even when no batch
/// follows), the IPC options of the result (its compression) and the scored batches.
pub(crate) struct Results {
    pub schema: SchemaRef,
    pub options: IpcWriteOptions,
    pub batches: BatchStream,
}

/// One gRPC message, in the pieces it is sent as.
pub(crate) type GrpcMessage = Vec<Bytes>;

impl Results {
    /// The results as FlightData messages, through arrow-flight's encoder (for the
    /// `FlightService` trait, whose callers take messages).
    ///
    /// Decoding, scoring and encoding run ahead of the response body ([`run_ahead`], up to
    /// [`RESULT_MESSAGES_AHEAD`] messages): the transport polls a body only when the client's
    /// window has room, so driven from the body the pipeline would stall while each batch is
    /// sent.
    pub(crate) fn into_flight_data(self) -> BoxStream<'static, Result<FlightData, Status>> {
        let encoded = FlightDataEncoderBuilder::new()
            .with_options(self.options)
            .with_schema(self.schema)
            // Split here by the rows' own bytes instead (`message_sized`): arrow-flight counts
            // every column's whole buffer, and the columns a batch passes through from its IPC
            // input share one, so it cut a 65,536-row batch of 20 columns into 50 messages.
            .with_max_flight_data_size(usize::MAX)
            .build(message_sized(self.batches).map_err(FlightError::from))
            .map_err(|e| Status::from(ScoreError::from(e)))
            .boxed();
        run_ahead(encoded, RESULT_MESSAGES_AHEAD)
    }

    /// The results as gRPC messages for the response body: batch buffers referenced, not
    /// copied, unless the schema has dictionaries. A message over `max_message_bytes` fails
    /// the call as tonic's encoder fails it.
    pub(crate) fn into_grpc_messages(
        self,
        max_message_bytes: usize,
    ) -> BoxStream<'static, Result<GrpcMessage, Status>> {
        // The gRPC prefix holds a message's length in 32 bits.
        let max_message_bytes = max_message_bytes.min(u32::MAX as usize);
        let checked = move |message: GrpcMessage| {
            let len = message.iter().map(Bytes::len).sum::<usize>() - GRPC_PREFIX;
            if len > max_message_bytes {
                return Err(Status::out_of_range(format!(
                    "Error, encoded message length too large: found {len} bytes, the limit is: {max_message_bytes} bytes"
                )));
            }
            Ok(message)
        };
        if has_dictionaries(&self.schema) {
            let messages = self.into_flight_data().map(move |data| checked(vec![grpc_message(&data?)]));
            return messages.boxed();
        }
        let first = FlightData::from(SchemaAsIpc::new(&self.schema, &self.options));
        let encoder = match StreamEncoder::try_new_with_options(&self.schema, self.options) {
            Ok(encoder) => encoder,
            Err(e) => return stream::iter([Err(Status::from(ScoreError::from(e)))]).boxed(),
        };
        // Ends after the first error, which the response sends as its status.
        let batches = message_sized(self.batches).scan(Some(encoder), move |encoder, batch| {
            let messages =
                encoder.as_mut().map(|e| batch.and_then(|batch| batch_messages(e, &batch)).map_err(Status::from));
            if matches!(messages, Some(Err(_))) {
                *encoder = None;
            }
            futures::future::ready(messages)
        });
        let messages = stream::iter([Ok(vec![vec![grpc_message(&first)]])])
            .chain(batches)
            .map_ok(move |messages| stream::iter(messages.into_iter().map(checked)))
            .try_flatten()
            .boxed();
        run_ahead(messages, RESULT_MESSAGES_AHEAD)
    }
}

/// What `schema` is on the wire: dictionary-encoded fields as their values, as every result
/// stream sends them (see the module docs). Every schema the worker announces (FlightInfo,
/// GetSchema, `describe`, prepared statements) goes through it, so that what a client is told
/// is what it receives.
pub fn flight_schema(schema: &Schema) -> SchemaRef {
    if !has_dictionaries(schema) {
        return Arc::new(schema.clone());
    }
    fn hydrated_field(f: &Field) -> Field {
        f.clone().with_data_type(hydrated(f.data_type()))
    }
    fn hydrated(t: &DataType) -> DataType {
        match t {
            DataType::Dictionary(_, values) => hydrated(values),
            DataType::List(f) => DataType::List(Arc::new(hydrated_field(f))),
            DataType::LargeList(f) => DataType::LargeList(Arc::new(hydrated_field(f))),
            DataType::FixedSizeList(f, n) => DataType::FixedSizeList(Arc::new(hydrated_field(f)), *n),
            DataType::Map(f, sorted) => DataType::Map(Arc::new(hydrated_field(f)), *sorted),
            DataType::Struct(fields) => DataType::Struct(fields.iter().map(|f| hydrated_field(f)).collect()),
            other => other.clone(),
        }
    }
    let fields: Vec<Field> = schema.fields().iter().map(|f| hydrated_field(f)).collect();
    Arc::new(Schema::new(fields).with_metadata(schema.metadata().clone()))
}

fn has_dictionaries(schema: &arrow::datatypes::Schema) -> bool {
    fn nested(t: &DataType) -> bool {
        match t {
            DataType::Dictionary(..) => true,
            DataType::List(f)
            | DataType::LargeList(f)
            | DataType::ListView(f)
            | DataType::LargeListView(f)
            | DataType::FixedSizeList(f, _)
            | DataType::Map(f, _) => nested(f.data_type()),
            DataType::Struct(fields) => fields.iter().any(|f| nested(f.data_type())),
            DataType::Union(fields, _) => fields.iter().any(|(_, f)| nested(f.data_type())),
            DataType::RunEndEncoded(ends, values) => nested(ends.data_type()) || nested(values.data_type()),
            _ => false,
        }
    }
    schema.fields().iter().any(|f| nested(f.data_type()))
}

/// Batches cut into slices of at most [`GRPC_TARGET_MAX_FLIGHT_SIZE_BYTES`] of row data (one
/// row at least), so that a message stays under the 4 MiB that gRPC clients accept by default.
pub(crate) fn message_sized(batches: BatchStream) -> BatchStream {
    batches
        .flat_map(|batch| {
            let parts = match batch {
                Ok(batch) => {
                    let (rows, bytes) = (batch.num_rows(), batch_bytes(&batch));
                    let parts = bytes.div_ceil(GRPC_TARGET_MAX_FLIGHT_SIZE_BYTES).clamp(1, rows.max(1));
                    let per_part = rows.div_ceil(parts).max(1);
                    (0..rows.max(1))
                        .step_by(per_part)
                        .map(|offset| Ok(batch.slice(offset, per_part.min(rows - offset))))
                        .collect()
                }
                Err(e) => vec![Err(e)],
            };
            stream::iter(parts)
        })
        .boxed()
}

/// The gRPC length prefix: a compression flag and the message's length.
pub(crate) const GRPC_PREFIX: usize = 5;

/// FlightData's `data_body` field (1000), length-delimited: its protobuf key.
pub(crate) const DATA_BODY_KEY: u64 = (1000 << 3) | 2;

/// Writes the gRPC prefix of an uncompressed message of `len` bytes.
fn put_grpc_prefix(out: &mut BytesMut, len: usize) {
    out.put_u8(0);
    out.put_u32(len as u32);
}

/// A protobuf message as one gRPC message, copied into one buffer (small messages, and the
/// dictionary fallback).
pub(crate) fn grpc_message(data: &impl Message) -> Bytes {
    let len = data.encoded_len();
    let mut out = BytesMut::with_capacity(GRPC_PREFIX + len);
    put_grpc_prefix(&mut out, len);
    // `encode` fails only when the buffer has too little room, and it has exactly enough.
    let _ = data.encode(&mut out);
    out.freeze()
}

/// The FlightData messages of one batch, as `encoder` writes its IPC stream: each IPC
/// message (its flatbuffer header, then its body) as a FlightData with `data_header` and
/// `data_body`, the body's large buffers referenced. The stream's schema message is left
/// out: the response sent it first.
fn batch_messages(encoder: &mut StreamEncoder, batch: &RecordBatch) -> Result<Vec<GrpcMessage>> {
    // Empty buffers (a zero-row batch's) are nothing to send.
    let mut pieces = Pieces(encoder.encode(batch)?.into_iter().filter(|b| !b.is_empty()).collect());
    let mut messages = Vec::new();
    while !pieces.0.is_empty() {
        let prefix = pieces.take_bytes(8)?;
        let (marker, len) = prefix.split_at(4);
        let header_len = i32::from_le_bytes([len[0], len[1], len[2], len[3]]);
        if marker != [0xff; 4] || header_len < 0 {
            return Err(ScoreError::internal(format!("the IPC encoder wrote an unexpected message prefix {prefix:?}")));
        }
        if header_len == 0 {
            break; // end of stream
        }
        let header = pieces.take_bytes(header_len as usize)?;
        let message = arrow::ipc::root_as_message(&header)
            .map_err(|e| ScoreError::internal(format!("the IPC encoder wrote an unreadable header: {e}")))?;
        let body_len = usize::try_from(message.bodyLength())
            .map_err(|_| ScoreError::internal("the IPC encoder wrote a negative body length"))?;
        let kind = message.header_type();
        let body = pieces.take(body_len)?;
        if kind != MessageHeader::Schema {
            messages.push(flight_message(&header, body, body_len));
        }
    }
    Ok(messages)
}

/// A FlightData of `header` and `body` (`body_len` bytes in all) as gRPC message pieces,
/// written as prost writes FlightData: `data_header` (field 2), then `data_body` (field 1000).
fn flight_message(header: &[u8], body: Vec<Buffer>, body_len: usize) -> GrpcMessage {
    const DATA_HEADER_KEY: u64 = (2 << 3) | 2;
    let field_len = |key: u64, len: usize| {
        if len == 0 {
            0
        } else {
            prost::encoding::encoded_len_varint(key) + prost::encoding::encoded_len_varint(len as u64) + len
        }
    };
    let message_len = field_len(DATA_HEADER_KEY, header.len()) + field_len(DATA_BODY_KEY, body_len);
    let mut small = BytesMut::with_capacity(GRPC_PREFIX + 16 + header.len());
    put_grpc_prefix(&mut small, message_len);
    if !header.is_empty() {
        prost::encoding::encode_varint(DATA_HEADER_KEY, &mut small);
        prost::encoding::encode_varint(header.len() as u64, &mut small);
        small.put_slice(header);
    }
    if body_len > 0 {
        prost::encoding::encode_varint(DATA_BODY_KEY, &mut small);
        prost::encoding::encode_varint(body_len as u64, &mut small);
    }
    let mut pieces = Vec::new();
    for buffer in body {
        if buffer.len() < SEND_WITHOUT_COPY_FROM {
            small.put_slice(buffer.as_slice());
        } else {
            if !small.is_empty() {
                pieces.push(small.split().freeze());
            }
            pieces.push(Bytes::from_owner(ArrowBytes(buffer)));
        }
    }
    if !small.is_empty() {
        pieces.push(small.freeze());
    }
    pieces
}

/// An Arrow buffer lent to `Bytes` (which keeps it alive until the transport has sent it).
pub(crate) struct ArrowBytes(pub Buffer);

impl AsRef<[u8]> for ArrowBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// The pieces of an IPC stream as the encoder returned them, read by length.
struct Pieces(VecDeque<Buffer>);

impl Pieces {
    /// The next `len` bytes, as the pieces (or slices of them) that hold them.
    fn take(&mut self, mut len: usize) -> Result<Vec<Buffer>> {
        let mut out = Vec::new();
        while len > 0 {
            let piece = self
                .0
                .pop_front()
                .ok_or_else(|| ScoreError::internal("the IPC encoder wrote a message shorter than it declares"))?;
            if piece.len() > len {
                self.0.push_front(piece.slice(len));
                out.push(piece.slice_with_length(0, len));
                break;
            }
            len -= piece.len();
            out.push(piece);
        }
        Ok(out)
    }

    /// The next `len` bytes, copied together (message prefixes and headers).
    fn take_bytes(&mut self, len: usize) -> Result<Vec<u8>> {
        Ok(self.take(len)?.iter().map(Buffer::as_slice).collect::<Vec<_>>().concat())
    }
}

/// The HTTP response of a call answered below tonic's codec: an error before any message
/// as a trailers-only response (as tonic answers it), else the messages, then the status.
pub(crate) fn grpc_response(
    messages: Result<BoxStream<'static, Result<GrpcMessage, Status>>, Status>,
) -> http::Response<tonic::body::Body> {
    let messages = match messages {
        Ok(messages) => messages,
        Err(status) => return status.into_http(),
    };
    let body = ResponseBody { messages, pieces: VecDeque::new(), done: false };
    let mut response = http::Response::new(tonic::body::Body::new(body));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    response
}

/// A gRPC response body: each message's pieces as DATA frames, then the status as trailers.
struct ResponseBody {
    messages: BoxStream<'static, Result<GrpcMessage, Status>>,
    pieces: VecDeque<Bytes>,
    done: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        loop {
            if let Some(piece) = self.pieces.pop_front() {
                return Poll::Ready(Some(Ok(http_body::Frame::data(piece))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            let status = match std::task::ready!(self.messages.poll_next_unpin(cx)) {
                Some(Ok(message)) => {
                    self.pieces.extend(message);
                    continue;
                }
                Some(Err(status)) => status,
                None => Status::ok(""),
            };
            self.done = true;
            let mut trailers = http::HeaderMap::new();
            if let Err(e) = status.add_header(&mut trailers) {
                // The status's own message did not make a header: send that failure.
                let _ = Status::internal(e.message().to_string()).add_header(&mut trailers);
            }
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pieces.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float32Array, Int64Array, ListArray, StringArray, StringViewArray, StructArray};
    use arrow::datatypes::{Field, Int32Type, Schema};
    use arrow::ipc::CompressionType;
    use futures::TryStreamExt;

    use super::*;

    fn results(batch: &RecordBatch, options: IpcWriteOptions) -> Results {
        Results { schema: batch.schema(), options, batches: stream::iter([Ok(batch.clone())]).boxed() }
    }

    /// gRPC messages read back as FlightData, as a client reads them.
    pub(crate) fn read_messages(messages: &[GrpcMessage]) -> Vec<FlightData> {
        messages
            .iter()
            .map(|pieces| {
                let bytes: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
                assert_eq!(bytes[0], 0, "not compressed");
                let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
                assert_eq!(len, bytes.len() - GRPC_PREFIX, "the prefix gives the message's length");
                FlightData::decode(&bytes[GRPC_PREFIX..]).unwrap()
            })
            .collect()
    }

    async fn decoded(data: Vec<FlightData>) -> Vec<RecordBatch> {
        let data = stream::iter(data.into_iter().map(Ok));
        arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(data).try_collect().await.unwrap()
    }

    /// A batch of what results hold: floats, nullable ints, strings (both layouts), lists
    /// and structs, 70,000 rows (several messages).
    fn mixed_batch() -> RecordBatch {
        let rows = 70_000;
        let floats = Float32Array::from_iter_values((0..rows).map(|i| i as f32 * 0.5));
        let ints = Int64Array::from_iter((0..rows).map(|i| (i % 7 != 0).then_some(i as i64 * 3)));
        let strings = StringArray::from_iter_values((0..rows).map(|i| format!("label-{}", i % 13)));
        let views = StringViewArray::from_iter_values((0..rows).map(|i| format!("{i:0>30}")));
        let lists = ListArray::from_iter_primitive::<Int32Type, _, _>(
            (0..rows).map(|i| (i % 5 != 0).then(|| (0..(i % 4)).map(Some).collect::<Vec<_>>())),
        );
        let probabilities: ArrayRef =
            Arc::new(Float32Array::from_iter_values((0..rows).map(|i| (i % 10) as f32 / 10.0)));
        let structs = StructArray::from(vec![(Arc::new(Field::new("p", DataType::Float32, false)), probabilities)]);
        RecordBatch::try_from_iter([
            ("f", Arc::new(floats) as ArrayRef),
            ("i", Arc::new(ints) as ArrayRef),
            ("s", Arc::new(strings) as ArrayRef),
            ("v", Arc::new(views) as ArrayRef),
            ("l", Arc::new(lists) as ArrayRef),
            ("probabilities", Arc::new(structs) as ArrayRef),
        ])
        .unwrap()
    }

    #[tokio::test]
    async fn results_sent_below_tonic_are_the_messages_arrow_flight_sends() {
        let batch = mixed_batch();
        for compression in [None, Some(CompressionType::LZ4_FRAME), Some(CompressionType::ZSTD)] {
            let options = IpcWriteOptions::default().try_with_compression(compression).unwrap();
            let expected: Vec<FlightData> =
                results(&batch, options.clone()).into_flight_data().try_collect().await.unwrap();
            let messages: Vec<GrpcMessage> =
                results(&batch, options).into_grpc_messages(usize::MAX).try_collect().await.unwrap();
            let sent = read_messages(&messages);
            assert!(sent.len() > 2, "a schema and several batch messages ({})", sent.len());
            assert_eq!(sent.len(), expected.len(), "{compression:?}");
            for (got, want) in sent.iter().zip(&expected) {
                // The header as the IPC stream pads it (with its 8-byte prefix, to 64 bytes).
                let (header, padding) = got.data_header.split_at(want.data_header.len());
                assert_eq!(header, want.data_header, "{compression:?}");
                assert!(padding.len() < 64 && padding.iter().all(|b| *b == 0));
                if compression.is_none() {
                    assert_eq!(got.data_body, want.data_body);
                }
            }
            let back = decoded(sent).await;
            assert_eq!(arrow::compute::concat_batches(&batch.schema(), &back).unwrap(), batch, "{compression:?}");
        }
    }

    #[tokio::test]
    async fn large_buffers_are_sent_as_they_are() {
        let batch = mixed_batch().slice(1000, 20_000);
        let floats = batch.column(0).to_data().buffers()[0].clone();
        let messages: Vec<GrpcMessage> =
            results(&batch, IpcWriteOptions::default()).into_grpc_messages(usize::MAX).try_collect().await.unwrap();
        // The float column's bytes are sent from the column's own memory (in two messages:
        // the string views' data buffers, sent whole with each, make the batch large).
        let pieces: Vec<&Bytes> = messages.iter().flatten().collect();
        assert!(messages.len() > 2, "{} messages", messages.len());
        assert!(
            pieces.iter().any(|p| p.as_ptr() == floats.as_ptr() && p.len() >= SEND_WITHOUT_COPY_FROM),
            "the float column was copied"
        );
        // Small parts travel together: of two pieces in a row, one at least is large.
        for message in &messages {
            assert!(message
                .windows(2)
                .all(|w| w[0].len() >= SEND_WITHOUT_COPY_FROM || w[1].len() >= SEND_WITHOUT_COPY_FROM));
        }
    }

    #[tokio::test]
    async fn dictionaries_and_empty_results_and_message_limits() {
        // Dictionary columns go through arrow-flight's encoder, sent as their values.
        let dict: arrow::array::DictionaryArray<Int32Type> = (0..5000).map(|i| ["a", "b", "c"][i % 3]).collect();
        let batch = RecordBatch::try_from_iter([("d", Arc::new(dict) as ArrayRef)]).unwrap();
        let messages: Vec<GrpcMessage> =
            results(&batch, IpcWriteOptions::default()).into_grpc_messages(usize::MAX).try_collect().await.unwrap();
        let back = decoded(read_messages(&messages)).await;
        assert_eq!(back[0].schema().field(0).data_type(), &DataType::Utf8);
        assert_eq!(back[0].num_rows(), 5000);

        // No batch: the schema alone.
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Float32, true)]));
        let empty =
            Results { schema: schema.clone(), options: IpcWriteOptions::default(), batches: stream::empty().boxed() };
        let messages: Vec<GrpcMessage> = empty.into_grpc_messages(usize::MAX).try_collect().await.unwrap();
        let sent = read_messages(&messages);
        assert_eq!(sent.len(), 1);
        let read =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(stream::iter(sent.into_iter().map(Ok)));
        let mut read = read;
        assert!(read.try_next().await.unwrap().is_none());
        assert_eq!(read.schema().map(|s| s.as_ref().clone()), Some(schema.as_ref().clone()));

        // Zero-row batches, whose empty buffers the encoder lists too, of every layout.
        let zero_rows = mixed_batch().slice(0, 0);
        let messages: Vec<GrpcMessage> =
            results(&zero_rows, IpcWriteOptions::default()).into_grpc_messages(usize::MAX).try_collect().await.unwrap();
        let back = decoded(read_messages(&messages)).await;
        assert_eq!(back, vec![zero_rows]);

        // A message over the limit fails the call, as tonic's encoder does.
        let batch = mixed_batch();
        let err = results(&batch, IpcWriteOptions::default())
            .into_grpc_messages(100_000)
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    }

    async fn frames(response: http::Response<tonic::body::Body>) -> Vec<http_body::Frame<Bytes>> {
        let mut body = response.into_body();
        let mut frames = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut body), cx)).await {
            frames.push(frame.unwrap());
        }
        frames
    }

    #[tokio::test]
    async fn responses_end_with_the_status_in_trailers() {
        // An error before any message: a trailers-only response, as tonic sends it.
        let response = grpc_response(Err(Status::not_found("no such model")));
        assert_eq!(response.headers()["grpc-status"], "5");
        assert!(frames(response).await.is_empty());

        // Messages, then OK.
        let batch = mixed_batch().slice(0, 100);
        let ok = grpc_response(Ok(results(&batch, IpcWriteOptions::default()).into_grpc_messages(usize::MAX)));
        assert_eq!(ok.headers()[http::header::CONTENT_TYPE], "application/grpc");
        let sent = frames(ok).await;
        let (last, data) = sent.split_last().unwrap();
        assert_eq!(last.trailers_ref().unwrap()["grpc-status"], "0");
        let bytes: Vec<u8> = data.iter().flat_map(|f| f.data_ref().unwrap().to_vec()).collect();
        assert!(bytes.len() > 1000);

        // A failure mid-stream: what was encoded, then the error's status; nothing after it.
        let failing = Results {
            schema: batch.schema(),
            options: IpcWriteOptions::default(),
            batches: stream::iter([
                Ok(batch.clone()),
                Err(ScoreError::InvalidArgument("row 7 is bad".into())),
                Ok(batch.clone()),
            ])
            .boxed(),
        };
        let messages: Vec<Result<GrpcMessage, Status>> = failing.into_grpc_messages(usize::MAX).collect().await;
        let one_batch: Vec<GrpcMessage> =
            results(&batch, IpcWriteOptions::default()).into_grpc_messages(usize::MAX).try_collect().await.unwrap();
        assert_eq!(messages.len(), one_batch.len() + 1, "the schema, one batch, the error: the stream ends there");
        let (error, sent) = messages.split_last().unwrap();
        assert!(sent.iter().all(Result::is_ok));
        assert_eq!(error.as_ref().unwrap_err().code(), tonic::Code::InvalidArgument);
        let failing = Results {
            schema: batch.schema(),
            options: IpcWriteOptions::default(),
            batches: stream::iter([Ok(batch.clone()), Err(ScoreError::InvalidArgument("row 7 is bad".into()))]).boxed(),
        };
        let sent = frames(grpc_response(Ok(failing.into_grpc_messages(usize::MAX)))).await;
        let trailers = sent.last().unwrap().trailers_ref().unwrap();
        assert_eq!(trailers["grpc-status"], "3");
        assert!(
            trailers["grpc-message"].to_str().unwrap().contains("row%207%20is%20bad")
                || trailers["grpc-message"].to_str().unwrap().contains("row 7 is bad")
        );
    }

    /// A 65,536-row batch of 20 float32 columns (5 MiB of rows) as a Flight input delivers
    /// it: decoded from one IPC message, all columns slices of one buffer.
    async fn decoded_batch() -> RecordBatch {
        let fields: Vec<Field> = (0..20).map(|i| Field::new(format!("f{i}"), DataType::Float32, false)).collect();
        let schema = Arc::new(Schema::new(fields));
        let columns = (0..20)
            .map(|c| Arc::new(Float32Array::from_iter_values((0..65_536).map(|r| (r * 20 + c) as f32))) as ArrayRef)
            .collect();
        let batch = RecordBatch::try_new(schema, columns).unwrap();
        let sent =
            FlightDataEncoderBuilder::new().with_max_flight_data_size(usize::MAX).build(stream::iter([Ok(batch)]));
        let decoded: Vec<RecordBatch> =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(sent).try_collect().await.unwrap();
        decoded.into_iter().next().unwrap()
    }

    #[tokio::test]
    async fn results_are_cut_into_messages_by_the_bytes_of_their_rows() {
        let batch = decoded_batch().await;
        let whole_buffer = batch.column(0).get_buffer_memory_size();
        assert!(whole_buffer >= 20 * 65_536 * 4, "the columns share the message's buffer ({whole_buffer} bytes)");

        // 5 MiB of rows: three messages of at most 2 MiB, not one per column's buffer.
        let parts: Vec<RecordBatch> =
            message_sized(stream::iter([Ok(batch.clone())]).boxed()).try_collect().await.unwrap();
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| batch_bytes(p) <= GRPC_TARGET_MAX_FLIGHT_SIZE_BYTES));
        assert_eq!(arrow::compute::concat_batches(&batch.schema(), &parts).unwrap(), batch);

        // The encoded stream, both ways: the schema, then those three record batch messages.
        let sent: Vec<FlightData> =
            results(&batch, IpcWriteOptions::default()).into_flight_data().try_collect().await.unwrap();
        assert_eq!(sent.len(), 4);
        let sent: Vec<GrpcMessage> =
            results(&batch, IpcWriteOptions::default()).into_grpc_messages(usize::MAX).try_collect().await.unwrap();
        assert_eq!(sent.len(), 4);

        // String views, which arrow cannot size per slice, are cut by their buffers' lengths.
        let strings = StringViewArray::from_iter_values((0..100_000).map(|i| format!("{i:0>40}")));
        let views = RecordBatch::try_from_iter([("s", Arc::new(strings) as ArrayRef)]).unwrap();
        let parts: Vec<RecordBatch> =
            message_sized(stream::iter([Ok(views.clone())]).boxed()).try_collect().await.unwrap();
        assert_eq!(parts.len(), 3, "{} bytes", batch_bytes(&views));
        assert_eq!(arrow::compute::concat_batches(&views.schema(), &parts).unwrap(), views);

        // An empty batch still goes through, as one message.
        let empty = RecordBatch::new_empty(parts[0].schema());
        let parts: Vec<RecordBatch> = message_sized(stream::iter([Ok(empty)]).boxed()).try_collect().await.unwrap();
        assert_eq!(parts.iter().map(RecordBatch::num_rows).collect::<Vec<_>>(), vec![0]);
    }
}
