//! The gRPC message codec of every `sketchd.v1` service: prost, run over
//! contiguous byte slices.
//!
//! tonic hands a codec a whole message in one contiguous buffer, behind
//! the `Buf` trait. prost's generic decoder then advances that buffer
//! through a call for every varint; an ingest batch of 100k rows has about
//! 300k of them (times, org and country codes), which made protobuf
//! decoding ~9 % of the server's CPU at scale 1. Decoding the same bytes
//! as a `&[u8]` inlines the cursor. Encoding goes through a `Vec<u8>` for
//! the same reason, and is copied into tonic's buffer once. The bytes on
//! the wire are prost's either way: every integration test goes through
//! this codec, and `tests/server.rs` has a client on tonic's stock prost
//! codec talk to the server.

use std::marker::PhantomData;

use prost::bytes::{Buf, BufMut};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// [`Codec`] for `application/grpc+proto` with prost messages.
#[derive(Debug, Clone, Copy)]
pub struct SliceCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SliceCodec<T, U> {
    fn default() -> Self {
        SliceCodec(PhantomData)
    }
}

impl<T, U> Codec for SliceCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SliceEncoder<T>;
    type Decoder = SliceDecoder<U>;

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

impl<T: Message> Encoder for SliceEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item.encode_to_vec());
        Ok(())
    }
}

/// Decodes a message from the contiguous slice tonic buffered it in.
#[derive(Debug, Clone, Copy)]
pub struct SliceDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let len = buf.remaining();
        let item = if buf.chunk().len() == len {
            let item = U::decode(buf.chunk()).map_err(decode_error)?;
            buf.advance(len);
            item
        } else {
            // Not contiguous (tonic does not do this today): the slow path.
            U::decode(buf).map_err(decode_error)?
        };
        Ok(Some(item))
    }
}

/// As tonic's prost codec: a message that does not parse is `INTERNAL`.
fn decode_error(error: prost::DecodeError) -> Status {
    Status::internal(error.to_string())
}
