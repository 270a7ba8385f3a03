//! The chat template and tokenizer against strings and ids transformers produced with the real
//! Qwen3 tokenizer (`apply_chat_template(…, add_generation_prompt=True, enable_thinking=False)`).

use std::path::Path;

use serde_json::Value;
use tiqu_core::chat::{chat_prompt_messages, Message};
use tiqu_core::Tokenizer;

fn tokenizer() -> Tokenizer {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/qwen3-tokenizer/tokenizer.json");
    Tokenizer::from_bytes(&std::fs::read(path).unwrap(), "tokenizer.json").unwrap()
}

fn cases() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/chat_template.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn template_is_byte_identical_and_tokenizes_identically() {
    let tok = tokenizer();
    let mut chats = 0;
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let text = case["text"].as_str().unwrap();
        // "response" cases hold only a tokenization to check.
        if case["kind"] == "chat" {
            let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
            let ours = chat_prompt_messages(&messages).unwrap();
            assert_eq!(ours, text, "{name}: template text differs from transformers");
            chats += 1;
        }
        assert_eq!(tok.encode(text).unwrap(), ids(&case["ids"]), "{name}: token ids differ from transformers");
    }
    assert!(chats >= 5, "the fixture should hold at least five chat cases");
}

#[test]
fn prompt_must_be_system_then_user() {
    let user = Message { role: "user".into(), content: "hi".into() };
    let assistant = Message { role: "assistant".into(), content: "hello".into() };
    assert!(chat_prompt_messages(&[user.clone(), assistant]).is_err());
    assert!(chat_prompt_messages(&[]).is_err());
    assert!(chat_prompt_messages(&[user]).is_ok());
}
