//! The Qwen3 chat template with thinking disabled: one function, used by training and inference
//! alike, so training sees exactly the prompt inference sends.

/// One chat message (`role` is "system" or "user").
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A prompt in the Qwen3 chat template: turn markers (special tokens) around texts. Its string
/// form is byte-identical to transformers' `apply_chat_template([system?, user],
/// add_generation_prompt=True, enable_thinking=False)`: no system block when there is no system
/// message, and the empty think block that disables thinking. Its tokens are that string's
/// tokens, except that special tokens in a text are tokenized as the characters they are
/// (transformers' `split_special_tokens=True`), so a document containing `<|im_end|>` or
/// `<|im_start|>assistant` cannot close its turn or open another. Added tokens that are not
/// special (`<think>`, `<tool_call>`…) are matched in text as transformers matches them. Encode
/// with [`ChatPrompt::encode`], never the string form: the tokenizer reads markers in a string
/// as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPrompt {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Marker(&'static str),
    Text(String),
}

const IM_START: &str = "<|im_start|>";

impl ChatPrompt {
    pub fn new(system: Option<&str>, user: &str) -> Self {
        use Part::{Marker, Text};
        let mut parts = Vec::with_capacity(10);
        if let Some(system) = system {
            parts.extend([Marker(IM_START), Text(format!("system\n{system}")), Marker(IM_END), Text("\n".into())]);
        }
        parts.extend([
            Marker(IM_START),
            Text(format!("user\n{user}")),
            Marker(IM_END),
            Text("\n".into()),
            Marker(IM_START),
            Text("assistant\n<think>\n\n</think>\n\n".into()),
        ]);
        Self { parts }
    }

    /// An optional first system message followed by one user message.
    pub fn from_messages(messages: &[Message]) -> crate::Result<Self> {
        let (system, rest) = match messages.split_first() {
            Some((first, rest)) if first.role == "system" => (Some(first.content.as_str()), rest),
            _ => (None, messages),
        };
        const SHAPE: &str = "a prompt is an optional system message followed by one user message";
        let offset = messages.len() - rest.len();
        match rest {
            [user] if user.role == "user" => Ok(Self::new(system, &user.content)),
            [] => Err(crate::Error::Unsupported(format!("no user message: {SHAPE}"))),
            [first, ..] if first.role != "user" => {
                Err(crate::Error::Unsupported(format!("messages[{offset}] has role `{}` where the user message belongs: {SHAPE}", first.role)))
            }
            _ => Err(crate::Error::Unsupported(format!(
                "messages[{}] ({}) follows the user message: {SHAPE} (no multi-turn history)",
                offset + 1,
                rest[1].role
            ))),
        }
    }

    /// The prompt's token ids. The tokenizer splits text at special tokens before anything else,
    /// so tokenizing piece by piece gives the whole string's tokens when no text holds one.
    pub fn encode(&self, tok: &crate::Tokenizer) -> crate::Result<Vec<u32>> {
        let mut ids = Vec::new();
        for part in &self.parts {
            match part {
                Part::Marker(m) => ids.push(tok.special_id(m)?),
                Part::Text(t) => ids.extend(tok.encode(t)?),
            }
        }
        Ok(ids)
    }
}

impl std::fmt::Display for ChatPrompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for part in &self.parts {
            f.write_str(match part {
                Part::Marker(m) => m,
                Part::Text(t) => t,
            })?;
        }
        Ok(())
    }
}

/// Marks the end of a turn; training appends it to every response so the model learns to stop.
pub const IM_END: &str = "<|im_end|>";
