//! Bytes to text: UTF-8 (a leading byte-order mark dropped), or one line naming where the bytes
//! stop being UTF-8. Spreadsheets and older Chinese systems export GBK or UTF-16, and a file
//! assembled from several sources may mix encodings line by line; reading such a file lossily
//! would put U+FFFD into texts and labels, so it is refused instead.

use crate::{Error, Result};

use std::io::{BufRead, Chain, Cursor, Read};

const BOM: &[u8] = b"\xEF\xBB\xBF";
const UTF16_LE: &[u8] = b"\xFF\xFE";
const UTF16_BE: &[u8] = b"\xFE\xFF";

/// The line breaks in `bytes`: how far a line number moves over them.
pub fn line_breaks(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// `reader` with a leading UTF-8 byte-order mark dropped; UTF-16 (by its mark) is refused with
/// the command that converts it. The mark is read a byte at a time, since a read may end inside
/// it; bytes that turn out not to be one are put back in front.
pub fn skip_bom<R: BufRead>(mut reader: R, source: &str) -> Result<Chain<Cursor<Vec<u8>>, R>> {
    const MARKS: [&[u8]; 3] = [BOM, UTF16_LE, UTF16_BE];
    let mut head = Vec::new();
    while MARKS.iter().any(|m| m.len() > head.len() && m.starts_with(&head)) {
        match reader.fill_buf().map_err(|e| Error::io(source, e))?.first() {
            Some(&b) => head.push(b),
            None => break,
        }
        reader.consume(1);
    }
    if head.starts_with(UTF16_LE) || head.starts_with(UTF16_BE) {
        return Err(utf16(source));
    }
    if head == BOM {
        head.clear();
    }
    Ok(Cursor::new(head).chain(reader))
}

fn utf16(source: &str) -> Error {
    Error::Format(format!("{source}:1: UTF-16 text; tiqu reads UTF-8 (convert it: iconv -f UTF-16 -t UTF-8)"))
}

/// What to say about a line whose byte `byte` is not UTF-8.
pub fn not_utf8_reason(byte: u8) -> String {
    format!(
        "not valid UTF-8 (byte 0x{byte:02X}): GBK or another legacy encoding? convert it to UTF-8 \
         (iconv -f GBK -t UTF-8 for a whole GBK file)"
    )
}

/// One line as text; the leading byte-order mark is dropped on the first line only.
pub fn decode_line(bytes: &[u8], first: bool) -> std::result::Result<&str, String> {
    let bytes = if first { bytes.strip_prefix(BOM).unwrap_or(bytes) } else { bytes };
    std::str::from_utf8(bytes).map_err(|e| not_utf8_reason(bytes[e.valid_up_to()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mark is found however the reads cut it, and only a whole mark is dropped.
    #[test]
    fn a_byte_order_mark_is_dropped_from_a_reader() {
        let read = |bytes: &[u8], capacity: usize| {
            let mut text = Vec::new();
            skip_bom(std::io::BufReader::with_capacity(capacity, bytes), "f").map(|mut r| r.read_to_end(&mut text).map(|_| text).unwrap())
        };
        for capacity in [1, 2, 64] {
            assert_eq!(read(b"\xEF\xBB\xBF{}", capacity).unwrap(), b"{}");
            assert_eq!(read("（{}".as_bytes(), capacity).unwrap(), "（{}".as_bytes(), "U+FF08 starts like the mark");
            assert_eq!(read(b"\xEF\xBB", capacity).unwrap(), b"\xEF\xBB");
            assert_eq!(read(b"", capacity).unwrap(), b"");
            assert!(read(b"\xFF\xFEa\x00", capacity).unwrap_err().to_string().starts_with("f:1: UTF-16 text"));
        }
    }
}
