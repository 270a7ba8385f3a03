//! Where a label that is not in its text comes from: the span of the text nearest to it.
//!
//! Copy-constrained decoding only ever writes substrings of the text, so a label that is not one
//! can never be produced and teaches the model an answer it is not allowed to give. Large models
//! that write labels often change only whitespace or the width of punctuation (`,` for `，`,
//! `(` for `（`); such a label has an exact counterpart in the text, found by comparing both with
//! whitespace removed and full-width forms folded to half-width, and replacing it changes no
//! other character. Anything else gets the text's span at the smallest edit distance, as a hint
//! for a person, never as an automatic fix.

/// The text's span nearest to a label that is not in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nearest {
    pub span: String,
    /// Character edits from the label to `span` (0 when only whitespace or width differ).
    pub edits: usize,
    /// True when `span` differs from the label only in whitespace and punctuation width, so
    /// replacing the label by it is safe.
    pub fixable: bool,
}

/// A character as compared for [`fold`]: full-width ASCII forms (U+FF01–U+FF5E) and the
/// ideographic space become their half-width counterparts.
fn fold_char(c: char) -> char {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        '\u{3000}' => ' ',
        _ => c,
    }
}

/// The text with whitespace removed and full-width forms folded: two texts with the same fold
/// differ only in whitespace and punctuation width. Also the key under which texts count as
/// duplicates.
pub fn fold(text: &str) -> String {
    text.chars().map(fold_char).filter(|c| !c.is_whitespace()).collect()
}

/// The span of `text` nearest to `label`, or `None` when `label` is in `text` (or empty).
pub fn nearest(label: &str, text: &str) -> Option<Nearest> {
    if label.is_empty() || text.contains(label) {
        return None;
    }
    if let Some(span) = folded_match(label, text) {
        return Some(Nearest { span, edits: 0, fixable: true });
    }
    let (span, edits) = closest_substring(label, text);
    Some(Nearest { span, edits, fixable: false })
}

/// The span of `text` whose fold equals `label`'s, from the first to the last matching character.
fn folded_match(label: &str, text: &str) -> Option<String> {
    let want: Vec<char> = fold(label).chars().collect();
    if want.is_empty() {
        return None;
    }
    // Folded characters of the text with their byte ranges in it.
    let kept: Vec<(char, usize, usize)> = text
        .char_indices()
        .filter(|(_, c)| !c.is_whitespace())
        .map(|(i, c)| (fold_char(c), i, i + c.len_utf8()))
        .collect();
    let start = (0..kept.len().checked_sub(want.len())? + 1)
        .find(|&s| kept[s..s + want.len()].iter().map(|k| k.0).eq(want.iter().copied()))?;
    Some(text[kept[start].1..kept[start + want.len() - 1].2].to_string())
}

/// The substring of `text` at the smallest edit distance from `label` (Sellers' algorithm:
/// Levenshtein with a free start and end in the text), shortest first among equals.
fn closest_substring(label: &str, text: &str) -> (String, usize) {
    let l: Vec<char> = label.chars().collect();
    let t: Vec<(usize, char)> = text.char_indices().collect();
    // dist[j], start[j]: best distance of label[..i] to a substring of text ending before char j,
    // and where that substring starts (as a char index).
    let mut dist: Vec<usize> = vec![0; t.len() + 1];
    let mut start: Vec<usize> = (0..=t.len()).collect();
    for (i, &lc) in l.iter().enumerate() {
        let (mut diag, mut diag_start) = (dist[0], start[0]);
        dist[0] = i + 1;
        for j in 1..=t.len() {
            let (up, up_start) = (dist[j], start[j]);
            let sub = diag + usize::from(t[j - 1].1 != lc);
            let mut best = (sub, diag_start);
            if up + 1 < best.0 {
                best = (up + 1, up_start);
            }
            if dist[j - 1] + 1 < best.0 {
                best = (dist[j - 1] + 1, start[j - 1]);
            }
            (diag, diag_start) = (up, up_start);
            (dist[j], start[j]) = best;
        }
    }
    let end = (0..=t.len()).min_by_key(|&j| (dist[j], j - start[j].min(j))).unwrap_or(0);
    let byte = |j: usize| t.get(j).map_or(text.len(), |c| c.0);
    let s = start[end].min(end);
    (text[byte(s)..byte(end)].to_string(), dist[end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_and_width_differences_are_fixable() {
        let text = "龙琳，宁夏回族自治区璐市城东林街g座 955491，邮箱 nafan@example.com。";
        assert_eq!(nearest("龙琳", text), None);
        let n = nearest("宁夏回族自治区璐市城东林街g座955491", text).unwrap();
        assert_eq!((n.span.as_str(), n.fixable), ("宁夏回族自治区璐市城东林街g座 955491", true));
        let n = nearest(" 龙琳,宁夏", text).unwrap();
        assert_eq!((n.span.as_str(), n.edits, n.fixable), ("龙琳，宁夏", 0, true));
        // Full-width letters in the label, half-width in the text.
        assert_eq!(nearest("ｎａｆａｎ", text).unwrap().span, "nafan");
    }

    #[test]
    fn other_differences_get_the_closest_span_but_no_fix() {
        let text = "联系人：张伟，邮箱 zhangwei@example.com，楼道灯坏了。";
        let n = nearest("zhangwei@exmaple.com", text).unwrap();
        assert_eq!((n.span.as_str(), n.edits, n.fixable), ("zhangwei@example.com", 2, false));
        let n = nearest("张小伟", text).unwrap();
        assert_eq!((n.span.as_str(), n.edits, n.fixable), ("张伟", 1, false));
        // Full stop and comma are not width variants of each other.
        assert!(!nearest("楼道灯坏了.", text).unwrap().fixable);
    }
}
