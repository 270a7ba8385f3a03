//! The Qwen3 chat template with thinking disabled: one function, used by training and inference
//! alike, so training sees exactly the prompt inference sends.

/// One chat message (`role` is "system" or "user").
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// Byte-identical to transformers' `apply_chat_template([system?, user],
/// add_generation_prompt=True, enable_thinking=False)` for Qwen3: no system block when there is
/// no system message, and the empty think block that disables thinking.
pub fn chat_prompt(system: Option<&str>, user: &str) -> String {
    let mut out = String::with_capacity(user.len() + system.map_or(0, str::len) + 96);
    if let Some(system) = system {
        out.push_str("<|im_start|>system\n");
        out.push_str(system);
        out.push_str("<|im_end|>\n");
    }
    out.push_str("<|im_start|>user\n");
    out.push_str(user);
    out.push_str("<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
    out
}

/// The same template for a message list whose optional first message is the system prompt.
pub fn chat_prompt_messages(messages: &[Message]) -> crate::Result<String> {
    let (system, rest) = match messages.split_first() {
        Some((first, rest)) if first.role == "system" => (Some(first.content.as_str()), rest),
        _ => (None, messages),
    };
    match rest {
        [user] if user.role == "user" => Ok(chat_prompt(system, &user.content)),
        _ => Err(crate::Error::Unsupported(
            "a prompt is an optional system message followed by one user message".into(),
        )),
    }
}

/// Marks the end of a turn; training appends it to every response so the model learns to stop.
pub const IM_END: &str = "<|im_end|>";
