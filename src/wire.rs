//! The gRPC message codec of every `sketchd.v1` service: prost, run over
//! contiguous byte slices, with decode errors that say whose fault they are.
//!
//! tonic hands a codec a whole message in one contiguous buffer, behind
//! the `Buf` trait. prost's generic decoder then advances that buffer
//! through a call for every varint; an ingest batch of 100k rows has about
//! 300k of them (times, org and country codes), which made protobuf
//! decoding ~9 % of the server's CPU at scale 1. Decoding the same bytes
//! as a `&[u8]` inlines the cursor. Encoding goes through a `Vec<u8>` for
//! the same reason, and is copied into tonic's buffer once; an ingest
//! batch's columns are written by [`encode_ingest_request`] (prost's
//! bytes, ~20 % less of a collector's CPU at scale 1). The bytes on
//! the wire are prost's either way: every integration test goes through
//! this codec, and `tests/server.rs` has a client on tonic's stock prost
//! codec talk to the server.
//!
//! A message that does not parse is the sender's fault. The server's
//! codec ([`ServerCodec`]) answers an undecodable request `INVALID_ARGUMENT`
//! naming the message and field (tonic's prost codec says `INTERNAL`, which
//! clients take for a server fault and retry); a client's codec
//! ([`ClientCodec`]) keeps `INTERNAL` for an undecodable answer, which is
//! the server's fault. [`DecodeErrorsAreInvalid`] gives the services whose
//! codec is not ours (gRPC health) the same answer, and every service the
//! same for a request whose framing is broken (no message in a unary call,
//! a body that ends inside a message), which tonic answers `INTERNAL`
//! before any codec runs.

use std::convert::Infallible;
use std::marker::PhantomData;

use prost::bytes::{Buf, BufMut};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, Context, Poll, Service};
use tonic::server::NamedService;
use tonic::{Code, Status};

use crate::pb::IngestRequest;

/// Which end decodes: the server decodes requests, a client answers.
pub trait Side: Send + Sync + 'static {
    /// The status of a message that does not parse.
    fn decode_error(message: &str, error: prost::DecodeError) -> Status;
}

/// The server's side: an undecodable request is `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Copy)]
pub struct RequestSide;

/// A client's side: an undecodable answer is `INTERNAL`.
#[derive(Debug, Clone, Copy)]
pub struct ResponseSide;

impl Side for RequestSide {
    fn decode_error(message: &str, error: prost::DecodeError) -> Status {
        Status::invalid_argument(format!(
            "the request is not a valid {PACKAGE}.{message} message ({}); \
             encode it from proto/sketchd/v1/sketchd.proto",
            describe(&error)
        ))
    }
}

impl Side for ResponseSide {
    fn decode_error(message: &str, error: prost::DecodeError) -> Status {
        Status::internal(format!(
            "the server's answer is not a valid {PACKAGE}.{message} message ({}); \
             is the server a sketchd of the same API version?",
            describe(&error)
        ))
    }
}

const PACKAGE: &str = "sketchd.v1";

/// The metadata key of an `INVALID_ARGUMENT` about one row of a batch: the
/// row's number (as in the message; IPv4 rows first, then IPv6 rows), so
/// that a collector can point at the input line it came from.
pub const ROW_METADATA: &str = "sketchd-row";

/// prost's error without its fixed prefix: `Msg.field: what`.
fn describe(error: &prost::DecodeError) -> String {
    let text = error.to_string();
    text.strip_prefix("failed to decode Protobuf message: ")
        .map(str::to_owned)
        .unwrap_or(text)
}

/// The unqualified name of a generated message type.
fn message_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}

/// [`Codec`] for `application/grpc+proto` with prost messages; `S` says
/// which end it decodes for.
#[derive(Debug, Clone, Copy)]
pub struct SliceCodec<T, U, S>(PhantomData<(T, U, S)>);

/// The codec of the generated servers (`build.rs`).
pub type ServerCodec<T, U> = SliceCodec<T, U, RequestSide>;

/// The codec of the generated clients (`build.rs`).
pub type ClientCodec<T, U> = SliceCodec<T, U, ResponseSide>;

impl<T, U, S> Default for SliceCodec<T, U, S> {
    fn default() -> Self {
        SliceCodec(PhantomData)
    }
}

impl<T, U, S> Codec for SliceCodec<T, U, S>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
    S: Side,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SliceEncoder<T>;
    type Decoder = SliceDecoder<U, S>;

    fn encoder(&mut self) -> Self::Encoder {
        SliceEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        SliceDecoder(PhantomData)
    }
}

/// Encodes a message into a `Vec<u8>`, then into tonic's buffer.
#[derive(Debug, Clone, Copy)]
pub struct SliceEncoder<T>(PhantomData<T>);

impl<T: Message + 'static> Encoder for SliceEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // An ingest batch is most of what a collector sends: its columns are
        // written by `encode_ingest_request`, prost's bytes at a third of
        // the CPU (prost writes a varint a byte at a time through `BufMut`).
        if let Some(request) = (&item as &dyn std::any::Any).downcast_ref::<IngestRequest>() {
            let mut out = Vec::new();
            encode_ingest_request(request, &mut out);
            buf.put_slice(&out);
        } else {
            buf.put_slice(&item.encode_to_vec());
        }
        Ok(())
    }
}

/// Appends `request` as prost encodes it: fields in tag order, defaults
/// left out, repeated numbers packed.
pub fn encode_ingest_request(request: &IngestRequest, out: &mut Vec<u8>) {
    use prost::encoding::{encode_key, encoded_len_varint, WireType};
    let IngestRequest {
        namespace,
        collector_id,
        sequence,
        ipv4,
        ipv6,
        unix_seconds,
        org_dict,
        org_index,
        country_dict,
        country_index,
    } = request;
    let bytes = |out: &mut Vec<u8>, tag: u32, value: &[u8]| {
        encode_key(tag, WireType::LengthDelimited, out);
        put_varint(out, value.len() as u64);
        out.extend_from_slice(value);
    };
    // Packed varints: the length, then the values written into place.
    fn packed(out: &mut Vec<u8>, tag: u32, values: impl Iterator<Item = u64> + Clone) {
        let len: usize = values.clone().map(encoded_len_varint).sum();
        if len == 0 {
            return;
        }
        encode_key(tag, WireType::LengthDelimited, out);
        put_varint(out, len as u64);
        let start = out.len();
        out.resize(start + len, 0);
        let mut at = 0;
        let dst = &mut out[start..];
        for mut value in values {
            while value >= 0x80 {
                dst[at] = (value as u8) | 0x80;
                value >>= 7;
                at += 1;
            }
            dst[at] = value as u8;
            at += 1;
        }
    }
    let rows = ipv4.len() + unix_seconds.len() + org_index.len() + country_index.len();
    out.reserve(64 + ipv6.len() + 4 * ipv4.len() + 5 * rows);
    if !namespace.is_empty() {
        bytes(out, 1, namespace.as_bytes());
    }
    if !collector_id.is_empty() {
        bytes(out, 2, collector_id.as_bytes());
    }
    if *sequence != 0 {
        encode_key(3, WireType::Varint, out);
        put_varint(out, *sequence);
    }
    if !ipv4.is_empty() {
        encode_key(4, WireType::LengthDelimited, out);
        put_varint(out, 4 * ipv4.len() as u64);
        for ip in ipv4 {
            out.extend_from_slice(&ip.to_le_bytes());
        }
    }
    if !ipv6.is_empty() {
        bytes(out, 5, ipv6);
    }
    packed(out, 6, unix_seconds.iter().map(|&t| t as u64));
    for name in org_dict {
        bytes(out, 7, name.as_bytes());
    }
    packed(out, 8, org_index.iter().map(|&i| u64::from(i)));
    for code in country_dict {
        bytes(out, 9, code.as_bytes());
    }
    packed(out, 10, country_index.iter().map(|&i| u64::from(i)));
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Decodes a message from the contiguous slice tonic buffered it in.
#[derive(Debug, Clone, Copy)]
pub struct SliceDecoder<U, S>(PhantomData<(U, S)>);

impl<U: Message + Default, S: Side> Decoder for SliceDecoder<U, S> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let error = |e| S::decode_error(message_name::<U>(), e);
        let len = buf.remaining();
        let item = if buf.chunk().len() == len {
            let item = U::decode(buf.chunk()).map_err(error)?;
            buf.advance(len);
            item
        } else {
            // Not contiguous (tonic does not do this today): the slow path.
            U::decode(buf).map_err(error)?
        };
        Ok(Some(item))
    }
}

/// Wraps a service so that tonic's `INTERNAL` answers to a request that does
/// not parse become `INVALID_ARGUMENT`: "failed to decode Protobuf message"
/// (from tonic's prost codec, which gRPC health uses), "Missing request
/// message." and "Unexpected EOF decoding stream." (broken framing). Unary
/// and server-streaming calls carry that status in the response headers (a
/// trailers-only response), which is where it is rewritten. (A compressed
/// message without a `grpc-encoding` stays `INTERNAL`: the gRPC spec
/// requires it.)
#[derive(Debug, Clone)]
pub struct DecodeErrorsAreInvalid<S>(pub S);

impl<S, B, R> Service<http::Request<B>> for DecodeErrorsAreInvalid<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let answer = self.0.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            let headers = response.headers_mut();
            if let Some(status) = Status::from_header_map(headers) {
                if let Some(message) = undecodable(&status) {
                    let _ = Status::invalid_argument(message).add_header(headers);
                }
            }
            Ok(response)
        })
    }
}

/// What to say instead of tonic's `INTERNAL` about a request that does not
/// parse; `None` for any other status.
fn undecodable(status: &Status) -> Option<String> {
    if status.code() != Code::Internal {
        return None;
    }
    let message = status.message();
    if let Some(what) = message.strip_prefix("failed to decode Protobuf message: ") {
        Some(format!(
            "the request does not parse ({what}); encode it from the service's .proto"
        ))
    } else if message.starts_with("Missing request message") {
        Some("the request holds no message: a unary call sends exactly one".into())
    } else if message.starts_with("Unexpected EOF decoding stream") {
        Some(
            "the request ends inside a message: its length prefix promises more bytes than \
             were sent"
                .into(),
        )
    } else {
        None
    }
}

impl<S: NamedService> NamedService for DecodeErrorsAreInvalid<S> {
    const NAME: &'static str = S::NAME;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests of every shape: empty, defaults, IPv6 only, negative and
    /// large times, codes of one to five varint bytes, dictionaries.
    #[test]
    fn ingest_requests_encode_as_prost_does() {
        let mut rng = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut requests = vec![
            IngestRequest::default(),
            IngestRequest {
                sequence: u64::MAX,
                ipv6: vec![0xab; 32],
                unix_seconds: vec![-1, 0, i64::MIN, i64::MAX],
                ..Default::default()
            },
        ];
        for n in [1usize, 7, 1_000] {
            requests.push(IngestRequest {
                namespace: "peers".into(),
                collector_id: "collector-é".into(),
                sequence: next() >> (next() % 64),
                ipv4: (0..n).map(|_| next() as u32).collect(),
                ipv6: Vec::new(),
                unix_seconds: (0..n).map(|_| (next() >> (next() % 64)) as i64).collect(),
                org_dict: (0..n / 3).map(|i| format!("AS{i}")).collect(),
                org_index: (0..n)
                    .map(|_| (next() >> (32 + next() % 32)) as u32)
                    .collect(),
                country_dict: vec!["DE".into(), String::new()],
                country_index: (0..n).map(|_| (next() % 3) as u32).collect(),
            });
        }
        for request in &requests {
            let mut ours = Vec::new();
            encode_ingest_request(request, &mut ours);
            assert_eq!(ours, request.encode_to_vec(), "{request:?}");
            assert_eq!(&IngestRequest::decode(&ours[..]).unwrap(), request);
        }
    }
}
