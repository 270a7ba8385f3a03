//! Speculative decoding for extraction. A value that is being copied from the text most likely
//! goes on copying it, and the copy constraint's automaton knows where in the text the value
//! stands, so the tokens of the text that follow are a draft. The engine feeds a row's pick and
//! its draft in one forward pass; the logits at each drafted position say what the model,
//! constrained as always, would have picked there: the draft is kept up to the first
//! disagreement, which becomes the model's own pick. Greedy output is therefore the output of
//! decoding one token at a time. Rejected positions need no undo: the row's length in the KV
//! cache is set back, the attention mask never shows columns past it, and later passes overwrite
//! them.
//!
//! Forced literals (keys, punctuation) are fed without asking the model at all, so drafts stop at
//! the end of a value: they never cross into what the grammar decides.
//!
//! Sampled picks verify a draft the same way: the pick at each drafted position is a draw from
//! the model's constrained distribution there, and the draft is kept while the draws equal it.
//! For a draft that proposes one token with certainty this is speculative sampling's acceptance
//! rule (keep the drafted token d with probability min(1, p(d)/q(d)) = p(d); otherwise draw from
//! max(0, p − q) renormalised, which is p without d). Each pick is one draw from the row's own
//! stream whether it was drafted or not, so a seed gives the same records with and without
//! drafts, as greedy decoding does.

use crate::constrain::{Grammar, State, TokenTable};
use crate::tokenizer::Tokenizer;

/// The longest draft a row proposes.
pub const MAX_DRAFT: usize = 16;
/// The first draft length of a row under `auto`.
const AUTO_START: usize = 4;

/// `--speculate off|auto|K`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Speculate {
    Off,
    /// Each row's draft grows while it is accepted whole and shrinks to what was accepted; no
    /// drafts while more rows decode than a pass can widen for free (see the engine).
    #[default]
    Auto,
    /// Always up to K tokens.
    Fixed(usize),
}

impl std::str::FromStr for Speculate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "auto" => Ok(Self::Auto),
            k => match k.parse::<usize>() {
                Ok(0) => Ok(Self::Off),
                Ok(k) if k <= MAX_DRAFT => Ok(Self::Fixed(k)),
                _ => Err(format!("`{s}` is not off, auto or a draft length from 0 (off) to {MAX_DRAFT}")),
            },
        }
    }
}

impl std::fmt::Display for Speculate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::Auto => f.write_str("auto"),
            Self::Fixed(k) => write!(f, "{k}"),
        }
    }
}

/// How many tokens one row drafts next.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DraftLength {
    mode: Speculate,
    len: usize,
}

impl DraftLength {
    pub(crate) fn new(mode: Speculate) -> Self {
        let len = match mode {
            Speculate::Off => 0,
            Speculate::Auto => AUTO_START,
            Speculate::Fixed(k) => k.min(MAX_DRAFT),
        };
        Self { mode, len }
    }

    pub(crate) fn get(&self) -> usize {
        self.len
    }

    pub(crate) fn is_auto(&self) -> bool {
        self.mode == Speculate::Auto
    }

    /// After a pass that verified `drafted` tokens and kept `accepted` of them: a draft taken
    /// whole doubles, one cut short shrinks to what was kept plus one, so that a row that copies
    /// long spans drafts far and one that does not costs little.
    pub(crate) fn update(&mut self, drafted: usize, accepted: usize) {
        if self.mode != Speculate::Auto || drafted == 0 {
            return;
        }
        self.len = if accepted == drafted { (2 * self.len).min(MAX_DRAFT) } else { (accepted + 1).min(MAX_DRAFT) };
    }
}

/// Up to `k` tokens of the text that follows the value being copied, split as the tokenizer
/// splits text, and cut at the first token that the grammar would refuse or that would end the
/// value. Empty outside a started string value in copy mode.
pub(crate) fn draft(grammar: &Grammar, state: &State, tokenizer: &Tokenizer, table: &TokenTable, k: usize) -> Vec<u32> {
    let Some(rest) = grammar.continuation(state) else { return Vec::new() };
    if k == 0 || rest.is_empty() {
        return Vec::new();
    }
    // Enough bytes for k tokens of Chinese or Latin text; the window's last token may be the
    // start of a longer one, so it is dropped unless the window reaches the end of the text.
    let mut cut = (6 * k + 8).min(rest.len());
    while !rest.is_char_boundary(cut) {
        cut += 1;
    }
    let Ok(mut ids) = tokenizer.encode(&rest[..cut]) else { return Vec::new() };
    if cut < rest.len() {
        ids.pop();
    }
    ids.truncate(k);
    let mut state = state.clone();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(bytes) = table.bytes(id) else { break };
        match grammar.step_bytes(&state, bytes) {
            Some(next) if grammar.in_value(&next) => {
                state = next;
                out.push(id);
            }
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constrain::Constrain;
    use crate::schema::Schema;
    use crate::tokenizer::tests::qwen3 as tokenizer;

    #[test]
    fn speculate_parses_off_auto_and_lengths() {
        assert_eq!("off".parse::<Speculate>(), Ok(Speculate::Off));
        assert_eq!("0".parse::<Speculate>(), Ok(Speculate::Off));
        assert_eq!("auto".parse::<Speculate>(), Ok(Speculate::Auto));
        assert_eq!("5".parse::<Speculate>(), Ok(Speculate::Fixed(5)));
        for bad in ["17", "-1", "fast", ""] {
            assert!(bad.parse::<Speculate>().unwrap_err().contains("off, auto or a draft length"), "{bad}");
        }
    }

    #[test]
    fn auto_length_grows_on_acceptance_and_shrinks_on_rejection() {
        let mut d = DraftLength::new(Speculate::Auto);
        assert_eq!(d.get(), AUTO_START);
        d.update(4, 4);
        assert_eq!(d.get(), 8);
        d.update(8, 8);
        d.update(16, 16);
        assert_eq!(d.get(), MAX_DRAFT);
        d.update(16, 2);
        assert_eq!(d.get(), 3);
        d.update(3, 0);
        assert_eq!(d.get(), 1);
        let mut fixed = DraftLength::new(Speculate::Fixed(3));
        fixed.update(3, 0);
        assert_eq!(fixed.get(), 3);
        assert_eq!(DraftLength::new(Speculate::Off).get(), 0);
    }

    /// Inside a value copied from the text, the draft is the text that follows, as tokens the
    /// grammar takes, and stops before the text's quote (which would end the value); outside a
    /// value, or in json mode, there is none.
    #[test]
    fn drafts_follow_the_text_and_stop_at_the_value_end() {
        let tok = tokenizer();
        let table = TokenTable::new(&tok, 151936);
        let text = "龙琳，宁夏回族自治区璐市城东林街g座 955491，邮箱 nafan@example.com \"quoted\"";
        let g = Grammar::new(&Schema::default(), Constrain::Copy, text).unwrap();
        let start = g.step_bytes(&g.start(), b"{\"name\": ").unwrap();
        assert!(draft(&g, &start, &tok, &table, 8).is_empty(), "before the value");
        let opened = g.step_bytes(&start, b"\"").unwrap();
        assert!(draft(&g, &opened, &tok, &table, 8).is_empty(), "nothing copied yet");
        let s = g.step_bytes(&opened, "宁夏".as_bytes()).unwrap();
        let d = draft(&g, &s, &tok, &table, 4);
        assert!(!d.is_empty() && d.len() <= 4);
        let bytes: Vec<u8> = d.iter().flat_map(|&t| table.bytes(t).unwrap().to_vec()).collect();
        assert!(text.split_once("宁夏").unwrap().1.as_bytes().starts_with(&bytes), "{:?}", String::from_utf8_lossy(&bytes));
        let s = g.step_bytes(&opened, b"example.com ").unwrap();
        let d = draft(&g, &s, &tok, &table, 16);
        let bytes: Vec<u8> = d.iter().flat_map(|&t| table.bytes(t).unwrap().to_vec()).collect();
        assert!(bytes.is_empty(), "the next byte is a quote: {:?}", String::from_utf8_lossy(&bytes));
        let json = Grammar::new(&Schema::default(), Constrain::Json, text).unwrap();
        let s = json.step_bytes(&json.start(), "{\"name\": \"宁夏".as_bytes()).unwrap();
        assert!(draft(&json, &s, &tok, &table, 4).is_empty());
    }
}
