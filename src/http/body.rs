//! Message body framing: which [`BodyKind`] a head announces (RFC 9112 §6.3) and the streaming
//! chunked decoder (RFC 9112 §7.1), and the [`BodyReader`] that delimits a streaming body.
//!
//! It never reads sockets or buffers bodies; callers move the bytes this code delimits.

use std::fmt;
use std::ops::Range;

use httparse::Header;

use super::headers::{list_items, trim_ows};
use super::parse::{ParseError, RequestHead, ResponseHead, Version};

/// Upper bound on the bytes of chunk extensions (`;name=value...`, from the first `;` up to the
/// CR) on one chunk-size line,
/// as hyper's `CHUNKED_EXTENSIONS_LIMIT` (16 KiB); pingora allows an 8 KiB chunk head.
pub const MAX_CHUNK_EXT_BYTES: usize = 16 * 1024;

/// Upper bound on the bytes of the trailer section (all trailer lines with their CRLFs),
/// as hyper's `TRAILER_LIMIT` (16 KiB); pingora allows 64 KiB.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyKind {
    /// No body and no framing header: a request with neither `Content-Length` nor
    /// `Transfer-Encoding`, or a response that cannot have one (HEAD, 1xx, 204, 304).
    Empty,
    /// Exactly this many bytes follow the head. `Length(0)` is kept as such (not folded into
    /// `Empty`) so an explicit `Content-Length: 0` is forwarded; it has no body bytes either.
    Length(u64),
    /// `Transfer-Encoding` ending in `chunked`: decode with [`ChunkedDecoder`].
    Chunked,
    /// A response read until the upstream closes (RFC 9112 §6.3 (8)). Never chosen for requests.
    CloseDelimited,
}

/// The body framing of a request, in RFC 9112 §6.3 order (requests skip (1), (2) and (8)).
///
/// # Errors
/// - [`ParseError::ConflictingFraming`]: both `Transfer-Encoding` and `Content-Length`.
/// - [`ParseError::UnsupportedTransferEncoding`]: `Transfer-Encoding` on HTTP/1.0, or whose
///   codings do not end with exactly one `chunked`.
/// - [`ParseError::InvalidContentLength`]: a `Content-Length` that is not all digits, overflows
///   `u64`, or disagrees with another one.
pub fn request_body_kind(head: &RequestHead<'_, '_>) -> Result<BodyKind, ParseError> {
    let has_te = has_header(head.headers, "transfer-encoding");
    let has_cl = has_header(head.headers, "content-length");
    // RFC 9112 §6.3 (3): TE and CL together is a smuggling vector; §6.1 lets a server reject it.
    // We always do (400 and close) rather than guess which one the sender meant.
    if has_te && has_cl {
        return Err(ParseError::ConflictingFraming);
    }
    if has_te {
        // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
        if head.version == Version::Http10 {
            return Err(ParseError::UnsupportedTransferEncoding);
        }
        // RFC 9112 §6.3 (4): chunked not final in a request → 400 and close.
        // RFC 9112 §7: chunked must not be applied more than once.
        return match chunked_position(head.headers) {
            ChunkedPosition::FinalOnce => Ok(BodyKind::Chunked),
            ChunkedPosition::NotFinal | ChunkedPosition::Repeated => {
                Err(ParseError::UnsupportedTransferEncoding)
            }
        };
    }
    if has_cl {
        // RFC 9112 §6.3 (5)/(6): a valid CL gives the length; an invalid one is unrecoverable.
        return content_length(head.headers).map(BodyKind::Length);
    }
    // RFC 9112 §6.3 (7): a request with neither has no body.
    Ok(BodyKind::Empty)
}

/// The body framing of a response, in RFC 9112 §6.3 order.
///
/// `request_was_head` is whether the request this answers used the HEAD method. 2xx answers to
/// CONNECT (§6.3 (2)) are tunnels, handled before any response parsing, so they are not here.
///
/// # Errors
/// - [`ParseError::ConflictingFraming`]: both `Transfer-Encoding` and `Content-Length`.
/// - [`ParseError::UnsupportedTransferEncoding`]: `Transfer-Encoding` on an HTTP/1.0 response or
///   `chunked` applied twice.
/// - [`ParseError::InvalidContentLength`]: invalid or differing `Content-Length`.
///
/// The proxy answers every error here with 502: it never guesses an upstream's framing.
pub fn response_body_kind(
    head: &ResponseHead<'_, '_>,
    request_was_head: bool,
) -> Result<BodyKind, ParseError> {
    // RFC 9112 §6.3 (1): a response to HEAD, and any 1xx, 204 or 304, ends at the head whatever
    // framing headers it carries.
    if request_was_head || (100..200).contains(&head.status) || matches!(head.status, 204 | 304) {
        return Ok(BodyKind::Empty);
    }
    let has_te = has_header(head.headers, "transfer-encoding");
    let has_cl = has_header(head.headers, "content-length");
    // RFC 9112 §6.3 (3): TE overrides CL, but such a message "ought to be handled as an error"
    // by intermediaries; a proxy must not guess, so this becomes a 502.
    if has_te && has_cl {
        return Err(ParseError::ConflictingFraming);
    }
    if has_te {
        // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing.
        if head.version == Version::Http10 {
            return Err(ParseError::UnsupportedTransferEncoding);
        }
        // RFC 9112 §6.3 (4): chunked final → chunked; otherwise read until close.
        return match chunked_position(head.headers) {
            ChunkedPosition::FinalOnce => Ok(BodyKind::Chunked),
            ChunkedPosition::NotFinal => Ok(BodyKind::CloseDelimited),
            // RFC 9112 §7: chunked applied twice is a framing error, not something to guess at.
            ChunkedPosition::Repeated => Err(ParseError::UnsupportedTransferEncoding),
        };
    }
    if has_cl {
        // RFC 9112 §6.3 (5): invalid CL in a response → 502 at a proxy. (6): valid → length.
        return content_length(head.headers).map(BodyKind::Length);
    }
    // RFC 9112 §6.3 (8): otherwise the body runs until the server closes the connection.
    Ok(BodyKind::CloseDelimited)
}

fn has_header(headers: &[Header<'_>], name: &str) -> bool {
    headers.iter().any(|h| h.name.eq_ignore_ascii_case(name))
}

/// Where `chunked` sits among all transfer codings of all `Transfer-Encoding` lines.
enum ChunkedPosition {
    /// The last coding is `chunked` and no earlier one is.
    FinalOnce,
    /// The last coding is not `chunked` (or there are no codings at all).
    NotFinal,
    /// The last coding is `chunked` but an earlier one is `chunked` too.
    Repeated,
}

fn chunked_position(headers: &[Header<'_>]) -> ChunkedPosition {
    let mut chunked_seen = 0usize;
    let mut last_is_chunked = false;
    let codings = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|h| list_items(h.value));
    for coding in codings {
        last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
        if last_is_chunked {
            chunked_seen += 1;
        }
    }
    match (last_is_chunked, chunked_seen) {
        (false, _) => ChunkedPosition::NotFinal,
        (true, 1) => ChunkedPosition::FinalOnce,
        (true, _) => ChunkedPosition::Repeated,
    }
}

/// The single value of all `Content-Length` lines and list elements (RFC 9110 §8.6: a list of
/// identical values such as `5, 5` may be taken as that value; anything else is an error).
/// Empty elements are rejected too: this field is the smuggling target, so no leniency.
fn content_length(headers: &[Header<'_>]) -> Result<u64, ParseError> {
    let mut value: Option<u64> = None;
    let lines = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"));
    for line in lines {
        for item in line.value.split(|&b| b == b',') {
            let n = parse_digits(trim_ows(item)).ok_or(ParseError::InvalidContentLength)?;
            match value {
                Some(prev) if prev != n => return Err(ParseError::InvalidContentLength),
                _ => value = Some(n),
            }
        }
    }
    value.ok_or(ParseError::InvalidContentLength)
}

/// `1*DIGIT` as u64; `None` for empty input, any non-digit (`+`, `-`, spaces) or overflow.
fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Why a chunked body was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyError {
    /// A chunk-size line without hex digits, with a bad character, or overflowing `u64`.
    InvalidChunkSize,
    /// A missing or wrong CRLF after a chunk's data, a chunk-size line or a trailer line.
    InvalidChunkDelimiter,
    /// Chunk extensions on one chunk-size line over [`MAX_CHUNK_EXT_BYTES`].
    ExtensionsTooLarge,
    /// Trailer section over [`MAX_TRAILER_BYTES`].
    TrailersTooLarge,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BodyError::InvalidChunkSize => "invalid chunk size",
            BodyError::InvalidChunkDelimiter => "invalid chunk delimiter",
            BodyError::ExtensionsTooLarge => "chunk extensions too large",
            BodyError::TrailersTooLarge => "trailers too large",
        })
    }
}

impl std::error::Error for BodyError {}

/// Where the decoder is inside `chunked-body` (RFC 9112 §7.1), named as hyper's `ChunkedState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkedState {
    /// Before the first hex digit of a chunk-size.
    Start,
    /// Inside the hex digits of a chunk-size.
    Size,
    /// Whitespace after the chunk-size, before `;` or CR (tolerated BWS, as hyper does).
    SizeLws,
    /// Inside chunk extensions, up to the CR.
    Extension,
    /// After the CR of a chunk-size line, expecting LF.
    SizeLf,
    /// Inside chunk data; `chunk_remaining` bytes are left.
    Body,
    /// After chunk data, expecting CR.
    BodyCr,
    /// After chunk data and CR, expecting LF.
    BodyLf,
    /// Inside a trailer line, up to its CR.
    Trailer,
    /// After the CR of a trailer line, expecting LF.
    TrailerLf,
    /// At the start of a line after the last chunk: CR ends the body, anything else is a trailer.
    EndCr,
    /// After the final CR, expecting the final LF.
    EndLf,
    /// The body is complete.
    End,
}

/// Streaming scanner/decoder for a `Transfer-Encoding: chunked` body (RFC 9112 §7.1).
///
/// It keeps only counters, never bytes, so callers can forward framing verbatim
/// (pass-through) or just the data ranges (de-chunking). Line endings must be CRLF: a bare LF
/// in the framing is rejected, since lenient chunk parsing is a known smuggling vector.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    /// Position in the chunked grammar.
    state: ChunkedState,
    /// While in `Size`: the chunk-size accumulated so far; in `Body`: data bytes still due.
    chunk_remaining: u64,
    /// Bytes of extensions (from the first `;`) on the current chunk-size line, bounded by
    /// [`MAX_CHUNK_EXT_BYTES`].
    extension_bytes: usize,
    /// Bytes of the trailer section so far, bounded by [`MAX_TRAILER_BYTES`].
    trailer_bytes: usize,
}

/// The outcome of one [`ChunkedDecoder::decode`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of the input this call accounted for (framing and data); the caller resumes at
    /// `input[consumed..]`.
    pub consumed: usize,
    /// The chunk data found by this call, as a range of the input; empty when only framing was
    /// scanned. When non-empty, `data.end == consumed`.
    pub data: Range<usize>,
    /// The body ended (last chunk, trailers and final CRLF seen) within `input[..consumed]`.
    pub done: bool,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body.
    pub fn new() -> Self {
        ChunkedDecoder {
            state: ChunkedState::Start,
            chunk_remaining: 0,
            extension_bytes: 0,
            trailer_bytes: 0,
        }
    }

    /// Whether the whole body, including trailers and the final CRLF, has been scanned.
    pub fn is_done(&self) -> bool {
        self.state == ChunkedState::End
    }

    /// Scans from `input[0]`.
    ///
    /// Stops after one contiguous run of chunk data (then `data` is that run's range within
    /// `input` and `consumed == data.end`), at the end of `input`, or when the body ends
    /// (`done`, and `consumed` covers the final CRLF after the trailers; bytes after it belong
    /// to the next message). Framing bytes yield an empty `data` range. Pass-through callers
    /// forward `input[..consumed]` verbatim and call again with the rest; de-chunking callers
    /// forward `input[data]`. Once done, every call returns `consumed == 0, done == true`.
    ///
    /// # Errors
    /// [`BodyError`] on any framing violation; the decoder must not be used afterwards (the
    /// connection is closed).
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, BodyError> {
        let mut pos = 0usize;
        while pos < input.len() {
            match self.state {
                ChunkedState::End => break,
                ChunkedState::Body => {
                    let available = input.len() - pos;
                    let take = usize::try_from(self.chunk_remaining)
                        .map_or(available, |remaining| remaining.min(available));
                    // `take as u64` cannot truncate: usize is at most 64 bits on our targets.
                    self.chunk_remaining -= take as u64;
                    if self.chunk_remaining == 0 {
                        self.state = ChunkedState::BodyCr;
                    }
                    let end = pos + take;
                    return Ok(Decoded {
                        consumed: end,
                        data: pos..end,
                        done: false,
                    });
                }
                ChunkedState::Extension => pos = self.scan_extension(input, pos)?,
                ChunkedState::Trailer => pos = self.scan_trailer(input, pos)?,
                _ => {
                    self.step(input[pos])?;
                    pos += 1;
                }
            }
        }
        Ok(Decoded {
            consumed: pos,
            data: pos..pos,
            done: self.is_done(),
        })
    }

    /// Advances one framing byte through every state but `Body`, `Extension`, `Trailer` and `End`
    /// (which `decode` handles in bulk).
    fn step(&mut self, b: u8) -> Result<(), BodyError> {
        use ChunkedState as S;
        self.state = match (self.state, b) {
            // RFC 9112 §7.1: chunk-size = 1*HEXDIG.
            (S::Start, _) => {
                let digit = hex_value(b).ok_or(BodyError::InvalidChunkSize)?;
                self.chunk_remaining = u64::from(digit);
                S::Size
            }
            (S::Size, b'\r') => S::SizeLf,
            (S::Size | S::SizeLws, b';') => {
                // The `;` counts towards the extension limit, so `;` plus the limit is too much.
                self.extension_bytes = 1;
                S::Extension
            }
            (S::Size | S::SizeLws, b' ' | b'\t') => S::SizeLws,
            (S::Size, _) => {
                let digit = hex_value(b).ok_or(BodyError::InvalidChunkSize)?;
                self.chunk_remaining = self
                    .chunk_remaining
                    .checked_mul(16)
                    .and_then(|n| n.checked_add(u64::from(digit)))
                    .ok_or(BodyError::InvalidChunkSize)?;
                S::Size
            }
            (S::SizeLws, b'\r') => S::SizeLf,
            (S::SizeLws, _) => return Err(BodyError::InvalidChunkSize),
            (S::SizeLf, b'\n') if self.chunk_remaining == 0 => {
                // RFC 9112 §7.1: last-chunk, then the trailer section and a final CRLF.
                self.trailer_bytes = 0;
                S::EndCr
            }
            (S::SizeLf, b'\n') => S::Body,
            (S::SizeLf, _) => return Err(BodyError::InvalidChunkDelimiter),
            (S::BodyCr, b'\r') => S::BodyLf,
            (S::BodyLf, b'\n') => S::Start,
            (S::BodyCr | S::BodyLf, _) => return Err(BodyError::InvalidChunkDelimiter),
            (S::EndCr, b'\r') => S::EndLf,
            // A bare LF cannot start a trailer field line.
            (S::EndCr, b'\n') => return Err(BodyError::InvalidChunkDelimiter),
            (S::EndCr, _) => {
                self.count_trailer(1)?;
                S::Trailer
            }
            (S::TrailerLf, b'\n') => {
                self.count_trailer(1)?;
                S::EndCr
            }
            (S::EndLf, b'\n') => S::End,
            (S::TrailerLf | S::EndLf, _) => return Err(BodyError::InvalidChunkDelimiter),
            // Handled in bulk by `decode`; never reached.
            (S::Body | S::Extension | S::Trailer | S::End, _) => self.state,
        };
        Ok(())
    }

    /// Skips extension bytes up to the CR ending the chunk-size line; returns the new position.
    fn scan_extension(&mut self, input: &[u8], pos: usize) -> Result<usize, BodyError> {
        let rest = &input[pos..];
        let (len, found) = match memchr::memchr2(b'\r', b'\n', rest) {
            Some(i) => (i, Some(rest[i])),
            None => (rest.len(), None),
        };
        self.extension_bytes = self.extension_bytes.saturating_add(len);
        if self.extension_bytes > MAX_CHUNK_EXT_BYTES {
            return Err(BodyError::ExtensionsTooLarge);
        }
        match found {
            Some(b'\r') => {
                self.state = ChunkedState::SizeLf;
                Ok(pos + len + 1)
            }
            // A bare LF inside extensions: the line would end differently for a lenient parser.
            Some(_) => Err(BodyError::InvalidChunkDelimiter),
            None => Ok(input.len()),
        }
    }

    /// Skips trailer-line bytes up to the CR ending the line; returns the new position.
    fn scan_trailer(&mut self, input: &[u8], pos: usize) -> Result<usize, BodyError> {
        let rest = &input[pos..];
        let (len, found) = match memchr::memchr2(b'\r', b'\n', rest) {
            Some(i) => (i, Some(rest[i])),
            None => (rest.len(), None),
        };
        self.count_trailer(len)?;
        match found {
            Some(b'\r') => {
                self.count_trailer(1)?;
                self.state = ChunkedState::TrailerLf;
                Ok(pos + len + 1)
            }
            Some(_) => Err(BodyError::InvalidChunkDelimiter),
            None => Ok(input.len()),
        }
    }

    fn count_trailer(&mut self, n: usize) -> Result<(), BodyError> {
        self.trailer_bytes = self.trailer_bytes.saturating_add(n);
        if self.trailer_bytes > MAX_TRAILER_BYTES {
            Err(BodyError::TrailersTooLarge)
        } else {
            Ok(())
        }
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Where one body stands while it streams through the proxy: which leading bytes of each buffer
/// belong to it (framing included) and how much payload it carried. Keeps counters only.
#[derive(Debug, Clone)]
pub struct BodyReader {
    /// The framing being followed.
    pub kind: BodyKind,
    /// Bytes left of a `Length` body.
    remaining: u64,
    chunked: ChunkedDecoder,
    /// Payload bytes seen (de-chunked).
    pub data_len: u64,
    /// The body is complete.
    pub done: bool,
}

impl BodyReader {
    /// A reader at the start of a body of `kind`; `Empty` and `Length(0)` start done.
    pub fn new(kind: BodyKind) -> BodyReader {
        let (remaining, done) = match kind {
            BodyKind::Length(n) => (n, n == 0),
            BodyKind::Empty => (0, true),
            BodyKind::Chunked | BodyKind::CloseDelimited => (0, false),
        };
        BodyReader {
            kind,
            remaining,
            chunked: ChunkedDecoder::new(),
            data_len: 0,
            done,
        }
    }

    /// How many leading bytes of `buf` belong to this body (framing included), handing each
    /// run of payload to `data`.
    ///
    /// # Errors
    /// A [`BodyError`] when chunked framing is broken; the bytes before it were handed out.
    pub fn scan(&mut self, buf: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, BodyError> {
        if self.done {
            return Ok(0);
        }
        match self.kind {
            BodyKind::Empty => Ok(0),
            BodyKind::Length(_) => {
                let n = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                data(&buf[..n]);
                self.remaining -= n as u64;
                self.data_len += n as u64;
                self.done = self.remaining == 0;
                Ok(n)
            }
            BodyKind::CloseDelimited => {
                data(buf);
                self.data_len += buf.len() as u64;
                Ok(buf.len())
            }
            BodyKind::Chunked => self.scan_chunked(buf, data),
        }
    }

    fn scan_chunked(
        &mut self,
        buf: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, BodyError> {
        let mut at = 0;
        while at < buf.len() && !self.chunked.is_done() {
            let step = self.chunked.decode(&buf[at..])?;
            let payload = &buf[at + step.data.start..at + step.data.end];
            if !payload.is_empty() {
                data(payload);
                self.data_len += payload.len() as u64;
            }
            at += step.consumed;
            if step.consumed == 0 {
                break;
            }
        }
        self.done = self.chunked.is_done();
        Ok(at)
    }

    /// The sender closed its side: whether that ends the body (RFC 9112 §6.3 (8): only a
    /// close-delimited body ends so; any other is then truncated). Marks it done when it does.
    pub fn end_at_close(&mut self) -> bool {
        if self.kind == BodyKind::CloseDelimited {
            self.done = true;
        }
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::{
        Limits, MAX_HEADERS_CAP, header_slots, parse_request, parse_response,
    };

    fn req_kind(raw: &str) -> Result<BodyKind, ParseError> {
        let mut headers = header_slots::<MAX_HEADERS_CAP>();
        match parse_request(raw.as_bytes(), &mut headers, &Limits::default()) {
            Ok(Some(head)) => request_body_kind(&head),
            Ok(None) => panic!("incomplete head in test row: {raw:?}"),
            Err(e) => Err(e),
        }
    }

    fn res_kind(raw: &str, request_was_head: bool) -> Result<BodyKind, ParseError> {
        let mut headers = header_slots::<MAX_HEADERS_CAP>();
        match parse_response(raw.as_bytes(), &mut headers, &Limits::default()) {
            Ok(Some(head)) => response_body_kind(&head, request_was_head),
            Ok(None) => panic!("incomplete head in test row: {raw:?}"),
            Err(e) => Err(e),
        }
    }

    #[test]
    fn request_body_kind_table() {
        use BodyKind::*;
        use ParseError::*;
        let rows: &[(&str, &str, Result<BodyKind, ParseError>)] = &[
            (
                "request_no_framing_is_empty",
                "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                Ok(Empty),
            ),
            (
                "request_cl_is_length",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
                Ok(Length(5)),
            ),
            (
                "request_cl_zero_is_length_zero",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
                Ok(Length(0)),
            ),
            (
                "request_cl_equal_list_is_length",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
                Ok(Length(5)),
            ),
            (
                "request_cl_equal_duplicate_lines_is_length",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
                Ok(Length(5)),
            ),
            (
                "request_cl_differing_lines_is_rejected",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                Err(InvalidContentLength),
            ),
            (
                "request_cl_differing_list_is_rejected",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
                Err(InvalidContentLength),
            ),
            (
                "request_cl_plus_sign_is_rejected",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
                Err(InvalidContentLength),
            ),
            (
                "request_cl_negative_is_rejected",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
                Err(InvalidContentLength),
            ),
            (
                "request_cl_overflow_is_rejected",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n",
                Err(InvalidContentLength),
            ),
            (
                "request_cl_max_u64_is_length",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n",
                Ok(Length(u64::MAX)),
            ),
            (
                "request_cl_hex_is_rejected",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
                Err(InvalidContentLength),
            ),
            (
                "request_cl_empty_is_rejected",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
                Err(InvalidContentLength),
            ),
            (
                "request_cl_empty_list_item_is_rejected",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\r\n\r\n",
                Err(InvalidContentLength),
            ),
            (
                "request_cl_inner_space_is_rejected",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n",
                Err(InvalidContentLength),
            ),
            (
                "request_te_chunked_is_chunked",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                Ok(Chunked),
            ),
            (
                "request_te_chunked_upper_is_chunked",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n",
                Ok(Chunked),
            ),
            (
                "request_te_gzip_then_chunked_is_chunked",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Ok(Chunked),
            ),
            (
                "request_te_over_two_lines_is_chunked",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
                Ok(Chunked),
            ),
            (
                "request_te_and_cl_is_conflicting",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                Err(ConflictingFraming),
            ),
            (
                "request_te_not_final_chunked_is_rejected",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Err(UnsupportedTransferEncoding),
            ),
            (
                "request_te_gzip_only_is_rejected",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
                Err(UnsupportedTransferEncoding),
            ),
            (
                "request_te_chunked_twice_is_rejected",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                Err(UnsupportedTransferEncoding),
            ),
            (
                "request_te_chunked_twice_over_lines_is_rejected",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(UnsupportedTransferEncoding),
            ),
            (
                "request_te_empty_is_rejected",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n",
                Err(UnsupportedTransferEncoding),
            ),
            (
                "request_te_chunked_prefix_word_is_rejected",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
                Err(UnsupportedTransferEncoding),
            ),
            (
                "request_te_on_http10_is_rejected",
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(UnsupportedTransferEncoding),
            ),
            (
                "request_cl_on_http10_is_length",
                "POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\n",
                Ok(Length(3)),
            ),
        ];
        for (name, raw, want) in rows {
            assert_eq!(&req_kind(raw), want, "{name}");
        }
    }

    #[test]
    fn response_body_kind_table() {
        use BodyKind::*;
        use ParseError::*;
        let rows: &[(&str, &str, bool, Result<BodyKind, ParseError>)] = &[
            (
                "response_to_head_is_empty",
                "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                true,
                Ok(Empty),
            ),
            (
                "response_to_head_with_bad_cl_is_empty",
                "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                true,
                Ok(Empty),
            ),
            (
                "response_100_is_empty",
                "HTTP/1.1 100 Continue\r\n\r\n",
                false,
                Ok(Empty),
            ),
            (
                "response_101_is_empty",
                "HTTP/1.1 101 Switching Protocols\r\n\r\n",
                false,
                Ok(Empty),
            ),
            (
                "response_204_with_cl_is_empty",
                "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                false,
                Ok(Empty),
            ),
            (
                "response_304_with_te_is_empty",
                "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Ok(Empty),
            ),
            (
                "response_te_and_cl_is_conflicting",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                false,
                Err(ConflictingFraming),
            ),
            (
                "response_te_chunked_is_chunked",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Ok(Chunked),
            ),
            (
                "response_te_gzip_is_close_delimited",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                false,
                Ok(CloseDelimited),
            ),
            (
                "response_te_chunked_not_final_is_close_delimited",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                false,
                Ok(CloseDelimited),
            ),
            (
                "response_te_chunked_twice_is_rejected",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                false,
                Err(UnsupportedTransferEncoding),
            ),
            (
                "response_te_on_http10_is_rejected",
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Err(UnsupportedTransferEncoding),
            ),
            (
                "response_cl_is_length",
                "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n",
                false,
                Ok(Length(42)),
            ),
            (
                "response_cl_equal_list_is_length",
                "HTTP/1.1 200 OK\r\nContent-Length: 42,42\r\n\r\n",
                false,
                Ok(Length(42)),
            ),
            (
                "response_cl_differing_is_rejected",
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false,
                Err(InvalidContentLength),
            ),
            (
                "response_cl_invalid_is_rejected",
                "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
                false,
                Err(InvalidContentLength),
            ),
            (
                "response_no_framing_is_close_delimited",
                "HTTP/1.1 200 OK\r\nServer: x\r\n\r\n",
                false,
                Ok(CloseDelimited),
            ),
            (
                "response_http10_no_framing_is_close_delimited",
                "HTTP/1.0 200 OK\r\n\r\n",
                false,
                Ok(CloseDelimited),
            ),
        ];
        for (name, raw, was_head, want) in rows {
            assert_eq!(&res_kind(raw, *was_head), want, "{name}");
        }
    }

    /// Feeds `input` in pieces split at `splits` (ascending offsets), de-chunking and also
    /// collecting the pass-through bytes. Returns (data, passthrough, done, leftover-offset).
    fn run(input: &[u8], splits: &[usize]) -> Result<(Vec<u8>, Vec<u8>, bool, usize), BodyError> {
        let mut dec = ChunkedDecoder::new();
        let mut data = Vec::new();
        let mut passthrough = Vec::new();
        let mut start = 0usize;
        let mut bounds: Vec<usize> = splits.to_vec();
        bounds.push(input.len());
        for &end in &bounds {
            // Everything not consumed stays buffered and is offered again with the next piece.
            let mut offset = start;
            loop {
                let piece = &input[offset..end];
                let d = dec.decode(piece)?;
                assert!(d.consumed <= piece.len());
                if !d.data.is_empty() {
                    assert_eq!(d.data.end, d.consumed);
                }
                data.extend_from_slice(&piece[d.data.clone()]);
                passthrough.extend_from_slice(&piece[..d.consumed]);
                offset += d.consumed;
                if d.done {
                    return Ok((data, passthrough, true, offset));
                }
                if d.consumed == 0 || offset == end {
                    break;
                }
            }
            start = offset;
        }
        Ok((data, passthrough, dec.is_done(), start))
    }

    const WIKI: &[u8] = b"4\r\nWiki\r\n7;ext=1\r\npedia i\r\nB ; x=\"y\"\r\nn \r\nchunks.\r\n0\r\nExpires: never\r\nX: y\r\n\r\nNEXT";

    type Run = Result<(Vec<u8>, bool, usize), BodyError>;

    #[test]
    fn chunked_decode_table() {
        let ok = |data: &[u8], done: bool, consumed: usize| -> Run {
            Ok((data.to_vec(), done, consumed))
        };
        let big_ext = format!("1;{}\r\na\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_EXT_BYTES));
        let ext_at_limit = format!(
            "1;{}\r\na\r\n0\r\n\r\n",
            "e".repeat(MAX_CHUNK_EXT_BYTES - 1)
        );
        let big_trailer = format!("0\r\nX: {}\r\n\r\n", "t".repeat(MAX_TRAILER_BYTES));
        let rows: &[(&str, &[u8], Run)] = &[
            (
                "chunked_wiki_example_decodes",
                WIKI,
                ok(b"Wikipedia in \r\nchunks.", true, WIKI.len() - 4),
            ),
            ("chunked_empty_body_is_done", b"0\r\n\r\n", ok(b"", true, 5)),
            (
                "chunked_leading_zeros_ok",
                b"0005\r\nhello\r\n0\r\n\r\n",
                ok(b"hello", true, 18),
            ),
            (
                "chunked_upper_hex_ok",
                b"A\r\n0123456789\r\n0\r\n\r\n",
                ok(b"0123456789", true, 20),
            ),
            (
                "chunked_size_lws_ok",
                b"3 \t\r\nabc\r\n0\r\n\r\n",
                ok(b"abc", true, 15),
            ),
            (
                "chunked_last_chunk_ext_ok",
                b"0;a=b\r\n\r\n",
                ok(b"", true, 9),
            ),
            (
                "chunked_incomplete_is_not_done",
                b"3\r\nab",
                ok(b"ab", false, 5),
            ),
            (
                "chunked_missing_final_crlf_not_done",
                b"0\r\n",
                ok(b"", false, 3),
            ),
            (
                "chunked_no_digits_is_invalid_size",
                b"\r\n",
                Err(BodyError::InvalidChunkSize),
            ),
            (
                "chunked_bad_hex_is_invalid_size",
                b"g\r\n",
                Err(BodyError::InvalidChunkSize),
            ),
            (
                "chunked_minus_is_invalid_size",
                b"-1\r\n",
                Err(BodyError::InvalidChunkSize),
            ),
            (
                "chunked_0x_prefix_is_invalid_size",
                b"0x5\r\n",
                Err(BodyError::InvalidChunkSize),
            ),
            (
                "chunked_space_then_digit_is_invalid_size",
                b"1 2\r\n",
                Err(BodyError::InvalidChunkSize),
            ),
            (
                "chunked_leading_space_is_invalid_size",
                b" 1\r\n",
                Err(BodyError::InvalidChunkSize),
            ),
            (
                "chunked_size_overflow_is_invalid_size",
                b"10000000000000000\r\n",
                Err(BodyError::InvalidChunkSize),
            ),
            (
                "chunked_max_size_is_accepted",
                b"ffffffffffffffff\r\nab",
                ok(b"ab", false, 20),
            ),
            (
                "chunked_size_bare_lf_is_rejected",
                b"3\nabc\r\n0\r\n\r\n",
                Err(BodyError::InvalidChunkSize),
            ),
            (
                "chunked_size_cr_without_lf_is_rejected",
                b"3\rabc",
                Err(BodyError::InvalidChunkDelimiter),
            ),
            (
                "chunked_data_too_long_is_rejected",
                b"3\r\nabcd\r\n",
                Err(BodyError::InvalidChunkDelimiter),
            ),
            (
                "chunked_data_bare_lf_is_rejected",
                b"3\r\nabc\n0\r\n\r\n",
                Err(BodyError::InvalidChunkDelimiter),
            ),
            (
                "chunked_ext_bare_lf_is_rejected",
                b"3;x\nabc",
                Err(BodyError::InvalidChunkDelimiter),
            ),
            (
                "chunked_trailer_bare_lf_is_rejected",
                b"0\r\nX: y\n\r\n",
                Err(BodyError::InvalidChunkDelimiter),
            ),
            (
                "chunked_end_bare_lf_is_rejected",
                b"0\r\n\n",
                Err(BodyError::InvalidChunkDelimiter),
            ),
            (
                "chunked_end_cr_without_lf_is_rejected",
                b"0\r\n\rx",
                Err(BodyError::InvalidChunkDelimiter),
            ),
            (
                "chunked_ext_at_limit_ok",
                ext_at_limit.as_bytes(),
                ok(b"a", true, ext_at_limit.len()),
            ),
            (
                "chunked_ext_over_limit_is_rejected",
                big_ext.as_bytes(),
                Err(BodyError::ExtensionsTooLarge),
            ),
            (
                "chunked_trailers_over_limit_is_rejected",
                big_trailer.as_bytes(),
                Err(BodyError::TrailersTooLarge),
            ),
        ];
        for (name, input, want) in rows {
            let got = run(input, &[]).map(|(data, pass, done, off)| {
                assert_eq!(pass, input[..off].to_vec(), "{name}: passthrough");
                (data, done, off)
            });
            assert_eq!(&got, want, "{name}");
        }
    }

    #[test]
    fn chunked_decode_every_split_matches_whole() {
        let inputs: &[&[u8]] = &[
            WIKI,
            b"0\r\n\r\n",
            b"1;a=b;c\r\nx\r\n10\r\n0123456789abcdef\r\n0;z\r\nT: 1\r\nU: 2\r\n\r\n",
            b"3\r\nabcd",
            b"0\r\nX: y\n\r\n",
        ];
        for input in inputs {
            let whole = run(input, &[]);
            for split in 0..=input.len() {
                assert_eq!(run(input, &[split]), whole, "split at {split} of {input:?}");
            }
            // Byte by byte: every offset is a split point.
            let every: Vec<usize> = (1..input.len()).collect();
            assert_eq!(run(input, &every), whole, "byte by byte of {input:?}");
        }
    }

    #[test]
    fn chunked_decode_random_bodies_and_splits_match_whole() {
        // xorshift: deterministic, no rand dependency.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..300 {
            let mut body = Vec::new();
            let mut want = Vec::new();
            for _ in 0..(next() % 5) {
                let len = (next() % 40 + 1) as usize;
                body.extend_from_slice(format!("{len:x}").as_bytes());
                if next() % 2 == 0 {
                    body.extend_from_slice(b";k=v");
                }
                body.extend_from_slice(b"\r\n");
                for _ in 0..len {
                    let b = (next() % 256) as u8;
                    body.push(b);
                    want.push(b);
                }
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n");
            if next() % 2 == 0 {
                body.extend_from_slice(b"T: x\r\n");
            }
            body.extend_from_slice(b"\r\nrest");
            let whole = run(&body, &[]);
            let data_end = body.len() - 4;
            assert_eq!(whole, Ok((want, body[..data_end].to_vec(), true, data_end)));
            let mut splits: Vec<usize> = (0..(next() % 8))
                .map(|_| (next() % body.len() as u64) as usize)
                .collect();
            splits.sort_unstable();
            assert_eq!(run(&body, &splits), whole, "splits {splits:?}");
        }
    }

    #[test]
    fn chunked_decode_random_garbage_never_panics() {
        let alphabet = b"0123456789abcdefABCDEF;= \t\r\nxyz";
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 48) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let mut dec = ChunkedDecoder::new();
            let mut rest = &input[..];
            while let Ok(d) = dec.decode(rest) {
                assert!(d.consumed <= rest.len());
                assert!(d.data.end <= d.consumed);
                rest = &rest[d.consumed..];
                if d.consumed == 0 || d.done {
                    break;
                }
            }
        }
    }

    #[test]
    fn chunked_decode_after_done_consumes_nothing() {
        let mut dec = ChunkedDecoder::new();
        let first = dec.decode(b"0\r\n\r\nGET");
        assert_eq!(
            first,
            Ok(Decoded {
                consumed: 5,
                data: 5..5,
                done: true
            })
        );
        assert!(dec.is_done());
        assert_eq!(
            dec.decode(b"GET"),
            Ok(Decoded {
                consumed: 0,
                data: 0..0,
                done: true
            })
        );
    }

    #[test]
    fn chunked_decode_returns_one_data_run_per_call() {
        let mut dec = ChunkedDecoder::new();
        let input = b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n";
        let first = dec.decode(input);
        assert_eq!(
            first,
            Ok(Decoded {
                consumed: 5,
                data: 3..5,
                done: false
            })
        );
        // The CRLF after "ab" and the next size line are framing scanned in the same call.
        let second = dec.decode(&input[5..]);
        assert_eq!(
            second,
            Ok(Decoded {
                consumed: 7,
                data: 5..7,
                done: false
            })
        );
        let third = dec.decode(&input[12..]);
        assert_eq!(
            third,
            Ok(Decoded {
                consumed: 7,
                data: 7..7,
                done: true
            })
        );
    }

    #[test]
    fn body_reader_rows() {
        use BodyKind::*;
        // (name, kind, input in pieces, want consumed per piece, want payload, want done)
        type Row = (
            &'static str,
            BodyKind,
            &'static [&'static [u8]],
            &'static [usize],
            &'static [u8],
            bool,
        );
        let rows: &[Row] = &[
            ("empty_is_done_at_once", Empty, &[b"GET"], &[0], b"", true),
            (
                "length_stops_at_its_end",
                Length(3),
                &[b"abcd"],
                &[3],
                b"abc",
                true,
            ),
            (
                "length_across_pieces",
                Length(4),
                &[b"ab", b"cdef"],
                &[2, 2],
                b"abcd",
                true,
            ),
            (
                "chunked_whole",
                Chunked,
                &[b"3\r\nabc\r\n0\r\n\r\nnext"],
                &[13],
                b"abc",
                true,
            ),
            (
                "chunked_split_size_line",
                Chunked,
                &[b"3", b"\r\nabc\r\n"],
                &[1, 7],
                b"abc",
                false,
            ),
            (
                "close_delimited_takes_all",
                CloseDelimited,
                &[b"xyz"],
                &[3],
                b"xyz",
                false,
            ),
        ];
        for (name, kind, pieces, consumed, payload, done) in rows {
            let mut reader = BodyReader::new(*kind);
            let mut got = Vec::new();
            let mut pending: Vec<u8> = Vec::new();
            for (piece, want) in pieces.iter().zip(*consumed) {
                pending.extend_from_slice(piece);
                let n = reader.scan(&pending, |d| got.extend_from_slice(d)).unwrap();
                assert_eq!(n, *want, "{name}: consumed");
                pending.drain(..n);
            }
            assert_eq!(got, *payload, "{name}: payload");
            assert_eq!(reader.data_len, payload.len() as u64, "{name}: data_len");
            assert_eq!(reader.done, *done, "{name}: done");
        }
    }

    #[test]
    fn body_reader_bad_size_in_a_later_piece_is_an_error() {
        let mut reader = BodyReader::new(BodyKind::Chunked);
        assert_eq!(reader.scan(b"5\r\nhello\r\n", |_| {}), Ok(10));
        assert_eq!(
            reader.scan(b"zz\r\n", |_| {}),
            Err(BodyError::InvalidChunkSize)
        );
    }

    #[test]
    fn body_reader_close_ends_only_a_close_delimited_body() {
        assert!(BodyReader::new(BodyKind::CloseDelimited).end_at_close());
        assert!(!BodyReader::new(BodyKind::Chunked).end_at_close());
        assert!(!BodyReader::new(BodyKind::Length(1)).end_at_close());
    }
}
