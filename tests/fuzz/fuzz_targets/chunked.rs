//! Feeding a chunked body to `ChunkedDecoder` in pieces, shared by the `request` and `response`
//! targets. It only drives the decoder and checks its contract; it parses no heads.

use phantom_fast::http::{BodyError, ChunkedDecoder};

/// How feeding a chunked body ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The body is complete after this many input bytes.
    Done(usize),
    /// Framing error.
    Error(BodyError),
    /// Input ran out before the body ended.
    Incomplete,
}

/// Decodes `body` whole, split at `split` (clamped to the body), and byte by byte; all three must
/// agree. Returns the body's length in the stream when it completes.
pub(crate) fn decode_equivalently(body: &[u8], split: usize) -> Option<usize> {
    let whole = decode_pieces(&[body]);
    let mid = split.min(body.len());
    let halves = decode_pieces(&[&body[..mid], &body[mid..]]);
    assert_eq!(halves, whole, "split at {mid} differs from one piece");
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    let single = decode_pieces(&bytes);
    assert_eq!(single, whole, "byte-by-byte differs from one piece");
    match whole.1 {
        End::Done(n) => Some(n),
        End::Error(_) | End::Incomplete => None,
    }
}

/// Feeds `pieces` in order, as reads from a socket, collecting the de-chunked data.
fn decode_pieces(pieces: &[&[u8]]) -> (Vec<u8>, End) {
    let mut dec = ChunkedDecoder::new();
    let mut data = Vec::new();
    let mut offset = 0usize;
    for piece in pieces {
        let mut at = 0usize;
        while at < piece.len() {
            let input = &piece[at..];
            let got = match dec.decode(input) {
                Ok(got) => got,
                Err(e) => return (data, End::Error(e)),
            };
            assert!(got.consumed <= input.len(), "consumed past the input");
            assert!(
                got.data.start <= got.data.end && got.data.end <= got.consumed,
                "data {:?} outside consumed {}",
                got.data,
                got.consumed
            );
            assert!(
                got.data.is_empty() || got.data.end == got.consumed,
                "data does not end at consumed"
            );
            assert_eq!(got.done, dec.is_done(), "done disagrees with is_done");
            data.extend_from_slice(&input[got.data.clone()]);
            at += got.consumed;
            offset += got.consumed;
            if got.done {
                let again = dec.decode(&piece[at..]);
                assert!(
                    matches!(&again, Ok(d) if d.consumed == 0 && d.done),
                    "a finished decoder consumed more: {again:?}"
                );
                return (data, End::Done(offset));
            }
            // No progress without being done would loop forever in the proxy.
            assert!(
                got.consumed > 0,
                "decode made no progress on {} bytes",
                input.len()
            );
        }
    }
    (data, End::Incomplete)
}
