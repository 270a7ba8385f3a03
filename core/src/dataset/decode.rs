//! Bytes to text: UTF-8 (a leading byte-order mark dropped), or one line naming where the bytes
//! stop being UTF-8. Spreadsheets and older Chinese systems export GBK or UTF-16, and a file
//! assembled from several sources may mix encodings line by line; reading such a file lossily
//! would put U+FFFD into texts and labels, so it is refused instead.

use crate::{Error, Result};

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The file's text, without a UTF-8 byte-order mark.
pub fn decode_utf8<'a>(bytes: &'a [u8], source: &str) -> Result<&'a str> {
    if bytes.starts_with(b"\xFF\xFE") || bytes.starts_with(b"\xFE\xFF") {
        return Err(Error::Format(format!(
            "{source}:1: UTF-16 text; tiqu reads UTF-8 (convert it: iconv -f UTF-16 -t UTF-8)"
        )));
    }
    let body = bytes.strip_prefix(BOM).unwrap_or(bytes);
    std::str::from_utf8(body).map_err(|e| {
        let at = e.valid_up_to();
        let line = body[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::Format(format!("{source}:{line}: {}", not_utf8_reason(body[at])))
    })
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

    #[test]
    fn names_the_line_of_the_first_foreign_byte() {
        // "投" in UTF-8 on line 2, "投诉" in GBK (CD B6 CB DF) on line 3. CD B6 happens to be a
        // valid UTF-8 pair; CB is the first byte that is not.
        let bytes = b"ok\nfine \xE6\x8A\x95\n\xCD\xB6\xCB\xDF\n";
        let e = decode_utf8(bytes, "f.csv").unwrap_err().to_string();
        assert!(e.starts_with("f.csv:3: not valid UTF-8 (byte 0xCB)"), "{e}");
        assert_eq!(decode_utf8(b"\xEF\xBB\xBFa\n", "f").unwrap(), "a\n");
        assert!(decode_utf8(b"\xFF\xFEa\x00", "f").unwrap_err().to_string().contains("UTF-16"));
    }
}
