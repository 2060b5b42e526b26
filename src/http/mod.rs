//! Pure HTTP/1.1 message handling: head parsing, body framing, hop-by-hop headers and encoding.
//!
//! Nothing here does I/O or knows about the runtime; callers feed bytes in and get values or bytes out.
//!
//! # Layout
//! - [`parse`]: request and response heads via httparse, borrowed in place, `Ok(None)` when
//!   incomplete.
//! - [`body`]: [`BodyKind`] chosen in RFC 9112 §6.3 order, the streaming [`ChunkedDecoder`] and
//!   the [`BodyReader`] that delimits a body as it streams.
//! - [`headers`]: header lookup, `Connection` tokens, keep-alive and hop-by-hop decisions.
//! - [`encode`]: heads and small proxy-generated responses appended to a reused `Vec<u8>`.

pub mod body;
pub mod encode;
pub mod headers;
pub mod parse;

pub use body::{
    BodyError, BodyKind, BodyReader, ChunkedDecoder, Decoded, request_body_kind, response_body_kind,
};
pub use encode::{
    encode_error, encode_parse_error, encode_request_head, encode_response_head,
    encode_simple_response, reason_phrase,
};
pub use headers::{
    connection_has, expects_continue, header, is_hop_by_hop, is_websocket_upgrade, keep_alive,
    upgrades_to_websocket,
};
pub use parse::{
    AbsoluteTarget, Limits, MAX_HEADERS_CAP, MAX_URI_BYTES, ParseError, RequestHead, ResponseHead,
    Version, header_slots, parse_request, parse_response, split_absolute_form,
};
