//! A client's stream of Flight data (DoPut, DoExchange) decoded into its schema and record
//! batches. Whatever is wrong with the bytes is the client's doing and becomes
//! `INVALID_ARGUMENT`, including a panic inside the Arrow IPC reader: it does not check
//! every part of a malformed message (the `arrow_to_tensor` fuzz target found arrow-ipc 59
//! panicking on a dictionary batch whose buffer offset lies past the message body, and in
//! its schema conversion).
//!
//! The service's own routes read DoPut and DoExchange requests below tonic's codec
//! ([`flight_data_request`]): each FlightData's IPC body is copied once, from the HTTP/2
//! frames into a 64-byte-aligned buffer that the IPC reader then uses as it is. Through
//! tonic, the frames are first copied into tonic's decode buffer, where a body starts at
//! whatever offset the message had, and arrow-flight copies every body not 64-byte aligned
//! again.
//!
//! Compressed bodies (`LZ4_FRAME`, `ZSTD`, as pyarrow's `IpcWriteOptions(compression=…)`
//! sends them) are accepted. What a batch will take once decompressed is checked against the
//! worker's batch limit *before* anything is decompressed, from the sizes each buffer
//! declares; and because an LZ4 frame can expand to more than it declares (the IPC reader
//! would keep reading), every LZ4 buffer is first run through a decoder capped at its
//! declared size, into no memory.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use arrow::datatypes::SchemaRef;
use arrow::ipc::{CompressionType, MessageHeader};
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::FlightData;
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::codec::Codec;
use tonic::{Request, Status, Streaming};

use crate::output::{ArrowBytes, DATA_BODY_KEY, GRPC_PREFIX};
use lakescore_engine::error::{Result, ScoreError};
use lakescore_engine::scorer::BatchStream;

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

/// A client's FlightData messages, as a DoPut or DoExchange receives them.
pub(crate) type FlightDataStream = BoxStream<'static, Result<FlightData, Status>>;

/// Refuses a request whose messages are compressed (`grpc-encoding`), as tonic's generated
/// servers refuse them when no compression is enabled (this service enables none).
fn refuse_compressed(headers: &http::HeaderMap) -> Result<(), Status> {
    let Some(encoding) = headers.get("grpc-encoding").filter(|e| e.as_bytes() != b"identity") else {
        return Ok(());
    };
    let mut status = Status::unimplemented(format!(
        "Content is compressed with `{}` which isn't supported",
        String::from_utf8_lossy(encoding.as_bytes())
    ));
    status.metadata_mut().insert("grpc-accept-encoding", tonic::metadata::MetadataValue::from_static("identity"));
    Err(status)
}

/// A gRPC request decoded as tonic's generated servers decode it (same message limit), for
/// the calls whose input is small (DoGet's ticket).
pub(crate) fn grpc_request<M, B>(
    request: http::Request<B>,
    max_message_bytes: usize,
) -> Result<Request<Streaming<M>>, Status>
where
    M: prost::Message + Default + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    refuse_compressed(request.headers())?;
    let decoder = tonic_prost::ProstCodec::<M, M>::default().decoder();
    Ok(Request::from_http(request.map(|body| Streaming::new_request(decoder, body, None, Some(max_message_bytes)))))
}

/// A DoPut or DoExchange request read below tonic's codec: its FlightData messages, each
/// IPC body copied once from the HTTP/2 frames into a 64-byte-aligned buffer. Errors are
/// tonic's: a message over `max_message_bytes` is `OUT_OF_RANGE`, a compressed one or a
/// stream cut inside a message `INTERNAL`; the stream ends after its first error.
pub(crate) fn flight_data_request<B>(
    request: http::Request<B>,
    max_message_bytes: usize,
) -> Result<Request<FlightDataStream>, Status>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    refuse_compressed(request.headers())?;
    Ok(Request::from_http(request.map(|body| {
        let reader = MessageReader {
            body: Box::pin(body),
            receiving: Receiving::default(),
            ready: VecDeque::new(),
            max_message_bytes,
            ended: false,
        };
        stream::unfold(reader, |mut reader| async move {
            if reader.ended && reader.ready.is_empty() {
                return None;
            }
            let next = reader.next().await;
            if next.is_err() {
                reader.ended = true;
                reader.ready.clear();
            }
            Some((next.transpose()?, reader))
        })
        .boxed()
    })))
}

/// How much of a frame goes to a message's head before it is scanned for the body again.
const HEAD_STEP_BYTES: usize = 4096;

/// What an IPC body buffer starts with before it grows as the frames arrive: a client
/// declares a body's length before sending it, so that is no reason to allocate it all.
const BODY_INITIAL_BYTES: usize = 16 << 20;

struct MessageReader<B> {
    body: Pin<Box<B>>,
    receiving: Receiving,
    /// Messages complete and not yet yielded (a frame can finish several).
    ready: VecDeque<FlightData>,
    max_message_bytes: usize,
    ended: bool,
}

impl<B> MessageReader<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<tonic::codegen::StdError>,
{
    async fn next(&mut self) -> Result<Option<FlightData>, Status> {
        loop {
            if let Some(message) = self.ready.pop_front() {
                return Ok(Some(message));
            }
            if self.ended {
                if !self.receiving.is_empty() {
                    return Err(Status::internal("Unexpected EOF decoding stream."));
                }
                return Ok(None);
            }
            match std::future::poll_fn(|cx| self.body.as_mut().poll_frame(cx)).await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.receive(&data)?;
                    }
                }
                Some(Err(e)) => return Err(Status::from_error(e.into())),
                None => self.ended = true,
            }
        }
    }

    /// Copies a frame's bytes to where they belong, completing messages as it goes.
    fn receive(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            let taken = match &mut self.receiving {
                Receiving::Prefix(prefix) => {
                    let n = (GRPC_PREFIX - prefix.len()).min(data.len());
                    prefix.extend_from_slice(&data[..n]);
                    if prefix.len() == GRPC_PREFIX {
                        let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
                        if prefix[0] != 0 {
                            return Err(Status::internal(
                                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
                            ));
                        }
                        if length > self.max_message_bytes {
                            return Err(Status::out_of_range(format!(
                                "Error, decoded message length too large: found {length} bytes, the limit is: {} bytes",
                                self.max_message_bytes
                            )));
                        }
                        self.receiving = Receiving::Message(MessageParts::new(length));
                    }
                    n
                }
                Receiving::Message(parts) => parts.receive(data)?,
            };
            data = &data[taken..];
            if let Receiving::Message(parts) = &self.receiving {
                if parts.remaining == 0 {
                    let Receiving::Message(parts) = std::mem::take(&mut self.receiving) else { unreachable!() };
                    self.ready.push_back(parts.finish()?);
                }
            }
        }
        Ok(())
    }
}

/// Where the reader is in the client's stream.
enum Receiving {
    /// Reading a message's length prefix.
    Prefix(Vec<u8>),
    Message(MessageParts),
}

impl Default for Receiving {
    fn default() -> Self {
        Receiving::Prefix(Vec::with_capacity(GRPC_PREFIX))
    }
}

impl Receiving {
    fn is_empty(&self) -> bool {
        matches!(self, Receiving::Prefix(p) if p.is_empty())
    }
}

/// One FlightData message as it arrives, in owned copies (never the frames themselves,
/// whose buffers would be kept alive with them): the fields before `data_body`, the body in
/// an aligned buffer, and whatever follows it.
struct MessageParts {
    /// Bytes of the message still to come.
    remaining: usize,
    head: BytesMut,
    /// Where in `head` the field being scanned for the body starts.
    scanned: usize,
    body: Option<Body>,
    tail: BytesMut,
}

struct Body {
    buffer: arrow::buffer::MutableBuffer,
    len: usize,
}

impl MessageParts {
    fn new(length: usize) -> Self {
        Self { remaining: length, head: BytesMut::new(), scanned: 0, body: None, tail: BytesMut::new() }
    }

    /// Takes what of `data` belongs to this message; returns how many bytes that was.
    fn receive(&mut self, data: &[u8]) -> Result<usize, Status> {
        let taken = self.remaining.min(data.len());
        self.remaining -= taken;
        let mut data = &data[..taken];
        // The fields before the body go to `head` a few KiB at a time, so that the start of
        // the body, in the same frame, is not copied twice.
        while self.body.is_none() && !data.is_empty() {
            let step = data.len().min(HEAD_STEP_BYTES);
            self.head.extend_from_slice(&data[..step]);
            data = &data[step..];
            if let Some((key_start, body_start, len)) = self.find_body()? {
                if len > self.head.len() - body_start + data.len() + self.remaining {
                    return Err(decode_error("data_body is longer than its message"));
                }
                let received = self.head.split_off(body_start);
                self.head.truncate(key_start);
                let mut buffer = arrow::buffer::MutableBuffer::with_capacity(len.min(BODY_INITIAL_BYTES));
                let in_body = len.min(received.len());
                buffer.extend_from_slice(&received[..in_body]);
                self.tail.extend_from_slice(&received[in_body..]);
                self.body = Some(Body { buffer, len });
            }
        }
        if let Some(body) = &mut self.body {
            let in_body = (body.len - body.buffer.len()).min(data.len());
            body.buffer.extend_from_slice(&data[..in_body]);
            data = &data[in_body..];
        }
        self.tail.extend_from_slice(data);
        Ok(taken)
    }

    /// Scans `head`'s fields for `data_body`'s key: `(where its key starts, where its bytes
    /// start, its length)`, or `None` while the fields received do not reach it yet.
    fn find_body(&mut self) -> Result<Option<(usize, usize, usize)>, Status> {
        loop {
            let start = self.scanned;
            let mut at = start;
            let Some(key) = varint(&self.head, &mut at)? else { return Ok(None) };
            let skip = match key & 7 {
                0 => match varint(&self.head, &mut at)? {
                    Some(_) => 0,
                    None => return Ok(None),
                },
                1 => 8,
                5 => 4,
                2 => {
                    let Some(len) = varint(&self.head, &mut at)? else { return Ok(None) };
                    let len = usize::try_from(len).map_err(|_| decode_error("a field length overflows"))?;
                    if key == DATA_BODY_KEY {
                        return Ok(Some((start, at, len)));
                    }
                    len
                }
                wire => return Err(decode_error(&format!("invalid wire type {wire}"))),
            };
            match at.checked_add(skip) {
                Some(end) if end <= self.head.len() => self.scanned = end,
                Some(_) => return Ok(None),
                None => return Err(decode_error("a field length overflows")),
            }
        }
    }

    /// The message, decoded: its fields other than the body by prost, the body as the
    /// aligned buffer (unless a later `data_body` field replaced it, as protobuf says).
    fn finish(self) -> Result<FlightData, Status> {
        let mut rest = self.head;
        rest.extend_from_slice(&self.tail);
        let mut data = FlightData::decode(rest.freeze()).map_err(|e| decode_error(&e.to_string()))?;
        if let Some(body) = self.body.filter(|_| data.data_body.is_empty()) {
            data.data_body = Bytes::from_owner(ArrowBytes(body.buffer.into()));
        }
        Ok(data)
    }
}

fn decode_error(message: &str) -> Status {
    Status::internal(format!("failed to decode a FlightData message: {message}"))
}

/// A protobuf varint from `bytes` at `*at` (moved past it); `None` when it is not all there.
fn varint(bytes: &[u8], at: &mut usize) -> Result<Option<u64>, Status> {
    let mut value = 0u64;
    for i in 0..10 {
        let Some(byte) = bytes.get(*at + i) else { return Ok(None) };
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *at += i + 1;
            return Ok(Some(value));
        }
    }
    Err(decode_error("a varint runs past 10 bytes"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float32Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::ipc::writer::IpcWriteOptions;
    use arrow_flight::encode::FlightDataEncoderBuilder;

    use super::*;

    /// A request body that delivers `frames` (an error for `None`), as HTTP/2 DATA frames.
    struct Frames(VecDeque<Option<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|frame| {
                frame.map(http_body::Frame::data).ok_or_else(|| std::io::Error::other("stream reset by the peer"))
            }))
        }
    }

    /// `messages` as a gRPC request body, cut into frames of the given sizes (in turn).
    fn framed(messages: &[FlightData], sizes: &[usize]) -> Frames {
        let bytes: Vec<u8> = messages.iter().flat_map(|m| crate::output::grpc_message(m).to_vec()).collect();
        let mut frames = VecDeque::new();
        let (mut at, mut i) = (0, 0);
        while at < bytes.len() {
            let end = (at + sizes[i % sizes.len()]).min(bytes.len());
            frames.push_back(Some(Bytes::copy_from_slice(&bytes[at..end])));
            (at, i) = (end, i + 1);
        }
        Frames(frames)
    }

    async fn read(body: Frames, max_message_bytes: usize) -> Result<Vec<FlightData>, Status> {
        let request = flight_data_request(http::Request::new(body), max_message_bytes)?;
        request.into_inner().try_collect().await
    }

    #[tokio::test]
    async fn requests_read_below_tonic_give_tonic_s_messages_with_aligned_bodies() {
        let sent = messages(None, 50_000).await;
        assert!(sent.iter().any(|m| m.data_body.len() >= 200_000));
        // Frames of odd sizes, so that prefixes, fields and bodies straddle them.
        for sizes in [&[1usize, 2, 3][..], &[16_384], &[7, 100_003, 5], &[1 << 30]] {
            let got = read(framed(&sent, sizes), usize::MAX).await.unwrap();
            assert_eq!(got, sent, "frames of {sizes:?}");
            for m in got.iter().filter(|m| !m.data_body.is_empty()) {
                assert_eq!(m.data_body.as_ptr() as usize % 64, 0, "an IPC body is aligned for the reader");
            }
            let mut input = FlightInput::new(futures::stream::iter(got.into_iter().map(Ok)), 1 << 30);
            input.schema().await.unwrap().expect("schema");
            let batches: Vec<RecordBatch> = input.batches().try_collect().await.unwrap();
            assert_eq!(batches, vec![batch(50_000)]);
        }
    }

    #[tokio::test]
    async fn fields_around_the_body_decode_as_protobuf_says() {
        let sent = messages(None, 5_000).await;
        let batch_message = sent.last().unwrap().clone();
        // app_metadata after the body, and a descriptor before it.
        let mut data = batch_message.clone();
        data.app_metadata = Bytes::from_static(b"after");
        data.flight_descriptor = Some(arrow_flight::FlightDescriptor::new_cmd(vec![7u8; 300]));
        let mut encoded = BytesMut::new();
        data.encode(&mut encoded).unwrap();
        // prost writes fields in number order, so app_metadata (3) came before data_body:
        // append one more app_metadata field after the body (the last one wins).
        prost::encoding::bytes::encode(3, &Bytes::from_static(b"last"), &mut encoded);
        let mut framed_bytes = BytesMut::new();
        framed_bytes.extend_from_slice(&[0]);
        framed_bytes.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        framed_bytes.extend_from_slice(&encoded);
        let framed_bytes = framed_bytes.freeze();
        for size in [1, 13, 4096, 1 << 20] {
            let frames = framed_bytes.chunks(size).map(|c| Some(Bytes::copy_from_slice(c))).collect();
            let got = read(Frames(frames), usize::MAX).await.unwrap();
            let want = FlightData::decode(encoded.clone().freeze()).unwrap();
            assert_eq!(got, vec![want.clone()], "frames of {size}");
            assert_eq!(got[0].app_metadata, Bytes::from_static(b"last"));
            assert_eq!(got[0].data_body, batch_message.data_body);
        }
        // A second data_body replaces the first, as protobuf says.
        let mut twice = BytesMut::new();
        batch_message.encode(&mut twice).unwrap();
        prost::encoding::bytes::encode(1000, &Bytes::from_static(b"second"), &mut twice);
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(twice.len() as u32).to_be_bytes());
        framed.extend_from_slice(&twice);
        let got = read(Frames(VecDeque::from([Some(framed.into())])), usize::MAX).await.unwrap();
        assert_eq!(got[0].data_body, Bytes::from_static(b"second"));
        // A body longer than its message.
        let mut short = BytesMut::new();
        prost::encoding::encode_varint(DATA_BODY_KEY, &mut short);
        prost::encoding::encode_varint(1_000, &mut short);
        short.extend_from_slice(&[1; 10]);
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(short.len() as u32).to_be_bytes());
        framed.extend_from_slice(&short);
        let err = read(Frames(VecDeque::from([Some(framed.into())])), usize::MAX).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal, "{err}");
    }

    #[tokio::test]
    async fn bad_request_streams_get_tonic_s_statuses() {
        let sent = messages(None, 1_000).await;
        // A message over the limit, refused from its prefix: the body is not read on (it
        // would fail here).
        let prefix = crate::output::grpc_message(&sent[1]).slice(..GRPC_PREFIX);
        let over = Frames(VecDeque::from([Some(prefix), None]));
        let err = read(over, 1_000).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
        // A stream cut inside a message.
        let mut cut = framed(&sent, &[100]);
        cut.0.pop_back();
        let err = read(cut, usize::MAX).await.unwrap_err();
        assert!(err.code() == tonic::Code::Internal && err.message().contains("EOF"), "{err}");
        // A message flagged compressed, when the call declared no encoding.
        let mut compressed = framed(&sent, &[1 << 20]);
        let first = compressed.0[0].take().unwrap();
        compressed.0[0] = Some([&[1u8][..], &first[1..]].concat().into());
        let err = read(compressed, usize::MAX).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal, "{err}");
        // A body that fails (a reset stream) between two messages ends with its error, not
        // with a clean end or an EOF.
        let whole = crate::output::grpc_message(&sent[0]);
        let reset = Frames(VecDeque::from([Some(whole), None]));
        let err = read(reset, usize::MAX).await.unwrap_err();
        assert!(err.message().contains("reset by the peer"), "{err}");
        // Garbage where a FlightData should be.
        let garbage = Frames(VecDeque::from([Some(Bytes::from_static(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]))]));
        let err = read(garbage, usize::MAX).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal, "{err}");
        // A compressed call is refused before its body is read.
        let mut request = http::Request::new(framed(&sent, &[1 << 20]));
        request.headers_mut().insert("grpc-encoding", http::HeaderValue::from_static("gzip"));
        let Err(err) = flight_data_request(request, usize::MAX) else { panic!("a gzip call was taken") };
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");
    }

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
