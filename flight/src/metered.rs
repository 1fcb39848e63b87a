//! Flight calls as Prometheus counts them: calls by method and gRPC code, their duration
//! (to the end of the response stream, so a DoExchange counts its whole life), and the
//! bytes received and sent. Measured on the HTTP bodies below tonic, where every call
//! passes, whichever way it is answered.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use metrics::Counter;

/// The label of a gRPC path: the Flight method's name, anything else `other` (labels stay
/// bounded whatever paths clients send).
pub(crate) fn method_label(path: &str) -> &'static str {
    const METHODS: [&str; 10] = [
        "Handshake",
        "ListFlights",
        "GetFlightInfo",
        "PollFlightInfo",
        "GetSchema",
        "DoGet",
        "DoPut",
        "DoExchange",
        "DoAction",
        "ListActions",
    ];
    let method = path.strip_prefix("/arrow.flight.protocol.FlightService/").unwrap_or("");
    METHODS.iter().find(|m| **m == method).copied().unwrap_or("other")
}

/// Bytes a call's request body brought in.
pub(crate) fn received_bytes(method: &'static str) -> Counter {
    metrics::counter!("lakescore_flight_received_bytes_total", "method" => method)
}

/// The gRPC code's name, as `grpc-status` carries it.
fn code_label(status: Option<&http::HeaderValue>) -> String {
    let code = status.and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok()).unwrap_or(0);
    format!("{:?}", tonic::Code::from_i32(code))
}

pin_project_lite::pin_project! {
    /// A response body that records its call when it ends (trailers, or the end of a
    /// trailers-only answer) or is dropped unfinished (the client went away: `Cancelled`).
    pub(crate) struct MeteredBody<B> {
        #[pin]
        inner: B,
        method: &'static str,
        started: Instant,
        sent: Counter,
        // `grpc-status` of a trailers-only answer (an error before any message).
        header_status: Option<http::HeaderValue>,
        recorded: bool,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.recorded {
                // A trailers-only answer may be sent without its (empty) body being read.
                let code = match this.header_status.as_ref() {
                    Some(status) => code_label(Some(status)),
                    None => "Cancelled".into(),
                };
                record(this.method, code, *this.started);
            }
        }
    }
}

impl<B> MeteredBody<B> {
    pub(crate) fn wrap(response: http::Response<B>, method: &'static str, started: Instant) -> http::Response<Self> {
        let header_status = response.headers().get("grpc-status").cloned();
        let sent = metrics::counter!("lakescore_flight_sent_bytes_total", "method" => method);
        response.map(|inner| MeteredBody { inner, method, started, sent, header_status, recorded: false })
    }
}

fn record(method: &'static str, code: String, started: Instant) {
    metrics::counter!("lakescore_flight_calls_total", "method" => method, "code" => code).increment(1);
    metrics::histogram!("lakescore_flight_call_duration_seconds", "method" => method)
        .record(started.elapsed().as_secs_f64());
}

impl<B: http_body::Body> http_body::Body for MeteredBody<B>
where
    B::Data: bytes::Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if !*this.recorded {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.sent.increment(bytes::Buf::remaining(data) as u64);
                    } else if let Some(trailers) = frame.trailers_ref() {
                        *this.recorded = true;
                        record(this.method, code_label(trailers.get("grpc-status")), *this.started);
                    }
                }
                Poll::Ready(None) => {
                    *this.recorded = true;
                    record(this.method, code_label(this.header_status.as_ref()), *this.started);
                }
                Poll::Ready(Some(Err(_))) => {
                    *this.recorded = true;
                    record(this.method, "Internal".into(), *this.started);
                }
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
