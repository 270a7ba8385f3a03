//! The checkpoint's `tokenizer.json`, through the `tokenizers` crate.

use crate::{Error, Result};

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Parses `tokenizer.json`; `source` names the file in error messages.
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Self> {
        let mut inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::Format(format!("{source}: not a valid tokenizer.json: {e}")))?;
        // Special tokens in text are text: a document holding `<|im_end|>` must not end its chat
        // turn (or stop generation). Turn markers come from `special_id`, never from a string.
        // Added tokens that are not special (`<think>`…) are still matched, as in transformers.
        inner.set_encode_special_tokens(true);
        Ok(Self { inner })
    }

    /// Token ids of `text` as transformers' `tokenizer(text, split_special_tokens=True)` gives
    /// them: special-token strings in `text` are tokenized as the characters they are.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, true).map_err(|e| Error::Other(format!("tokenizing: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| Error::Other(format!("decoding: {e}")))
    }

    /// The id of a special token such as `<|im_start|>`; an error names a tokenizer without it.
    pub fn special_id(&self, token: &str) -> Result<u32> {
        self.inner
            .token_to_id(token)
            .ok_or_else(|| Error::Format(format!("tokenizer.json has no {token} token (not a Qwen3 chat tokenizer)")))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// `text` in Unicode NFC, as Qwen3's tokenizer normalises what it encodes: a text cut to fit a
/// prompt is decoded from its tokens, so what is copied from it is in this form.
pub fn nfc(text: &str) -> String {
    let mut n = tokenizers::NormalizedString::from(text);
    n.nfc();
    n.get().to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::Tokenizer;

    /// The real Qwen3 tokenizer of `assets/`, for unit tests.
    pub(crate) fn qwen3() -> Tokenizer {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/qwen3-tokenizer/tokenizer.json");
        Tokenizer::from_bytes(&std::fs::read(path).unwrap(), "tokenizer.json").unwrap()
    }
}
