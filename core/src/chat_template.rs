//! A checkpoint's own chat template (`chat_template.jinja`, or `chat_template` in
//! `tokenizer_config.json`), rendered as transformers renders it, to tell whether tiqu's prompts
//! ([`ChatPrompt`], Qwen3's template with thinking disabled) are the ones it makes. tiqu always
//! prompts in its own form, in training and inference alike; a checkpoint whose template makes
//! other prompts (Qwen3-*-2507, a fine-tune with its own template) answers tiqu's prompts as
//! it answers any unfamiliar text, and a merged model keeps the checkpoint's template, so other
//! runtimes would prompt it unlike its training.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde_json::Value;

use crate::chat::ChatPrompt;
use crate::files::Files;
use crate::{Error, Result};

/// The messages each template is rendered for: with and without a system message, as tiqu
/// prompts. Their texts hold nothing a template would treat specially.
const PROBES: [(Option<&str>, &str); 2] = [(Some("System text."), "User text."), (None, "User text.")];

/// The checkpoint's template, and the file it came from: `chat_template.jinja` first (where
/// recent transformers versions save it), then `tokenizer_config.json`'s `chat_template` (a string,
/// or a list of named templates whose `default` one is used). `None` when neither has one.
pub fn find(sources: &[&dyn Files]) -> Result<Option<(String, String)>> {
    for files in sources {
        if files.exists("chat_template.jinja") {
            let bytes = files.read("chat_template.jinja")?;
            let path = files.path("chat_template.jinja");
            let text = String::from_utf8(bytes).map_err(|_| Error::Format(format!("{path}: not UTF-8")))?;
            return Ok(Some((text, path)));
        }
        if files.exists("tokenizer_config.json") {
            let path = files.path("tokenizer_config.json");
            let value: Value = serde_json::from_slice(&files.read("tokenizer_config.json")?).map_err(|e| Error::json(&path, e))?;
            let template = match value.get("chat_template") {
                Some(Value::String(t)) => Some(t.clone()),
                Some(Value::Array(named)) => named
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str().map(String::from)),
                _ => None,
            };
            return Ok(template.map(|t| (t, path)));
        }
    }
    Ok(None)
}

/// `None` when `template` renders exactly tiqu's prompts; else why not, in one line: where the
/// first prompt that differs parts from tiqu's, or the template's own error.
pub fn differs(template: &str) -> Option<String> {
    let env = environment();
    let template = without_generation_tags(template);
    let compiled = match env.template_from_str(&template) {
        Ok(t) => t,
        Err(e) => return Some(format!("it does not parse as Jinja ({e})")),
    };
    for (system, user) in PROBES {
        let mut messages = Vec::new();
        if let Some(system) = system {
            messages.push(context! { role => "system", content => system });
        }
        messages.push(context! { role => "user", content => user });
        let ours = ChatPrompt::new(system, user).to_string();
        let theirs = match compiled.render(context! {
            messages => messages,
            add_generation_prompt => true,
            enable_thinking => false,
            bos_token => "",
            eos_token => "<|im_end|>",
            // None, as transformers passes them without tools or documents (undefined is not
            // none to `is not none`).
            tools => (),
            documents => (),
        }) {
            Ok(text) => text,
            Err(e) => return Some(format!("it does not render ({e})")),
        };
        if theirs != ours {
            let at = ours.bytes().zip(theirs.bytes()).take_while(|(a, b)| a == b).count();
            let at = (0..=at).rev().find(|&i| ours.is_char_boundary(i) && theirs.is_char_boundary(i)).unwrap_or(0);
            let shown = |s: &str| format!("{:?}", s[at..].chars().take(40).collect::<String>());
            let with = if system.is_some() { "with" } else { "without" };
            return Some(format!("its prompt {with} a system message reads {} where tiqu's reads {}", shown(&theirs), shown(&ours)));
        }
    }
    None
}

/// Jinja as transformers sets it up: jinja2's trim_blocks and lstrip_blocks, Python's string
/// methods (`startswith`, `split`, `strip`…) and a `raise_exception` function.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> std::result::Result<String, JinjaError> {
        Err(JinjaError::new(ErrorKind::InvalidOperation, message))
    });
    // transformers' date: any text that shows in a prompt makes it differ from tiqu's, which
    // holds no date, as a real date would.
    env.add_function("strftime_now", |format: String| format);
    env
}

/// `template` with transformers' `{% generation %}…{% endgeneration %}` (its AssistantTracker
/// extension, which marks the assistant's tokens for training) as a plain `if true` block: it
/// renders the same text, and minijinja knows no such tag.
fn without_generation_tags(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{%") {
        let Some(len) = rest[open..].find("%}") else { break };
        let tag = &rest[open + 2..open + len];
        let inner = tag.trim_start_matches(['-', '+']).trim_end_matches(['-', '+']).trim();
        let (lead, trail) = (&tag[..tag.len() - tag.trim_start_matches(['-', '+']).len()], &tag[tag.trim_end_matches(['-', '+']).len()..]);
        out.push_str(&rest[..open]);
        match inner {
            "generation" => out.push_str(&format!("{{%{lead} if true {trail}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{lead} endif {trail}%}}")),
            _ => out.push_str(&rest[open..open + len + 2]),
        }
        rest = &rest[open + len + 2..];
    }
    out.push_str(rest);
    out
}

/// The warning for a checkpoint whose template makes other prompts than tiqu's, or `None`.
/// An unreadable file is a warning too: tiqu does not need the template to run.
pub fn warning(sources: &[&dyn Files]) -> Option<String> {
    let (template, path) = match find(sources) {
        Ok(Some(found)) => found,
        Ok(None) => return None,
        Err(e) => return Some(format!("warning: the chat template could not be read ({e}); tiqu prompts in Qwen3's template")),
    };
    differs(&template).map(|why| {
        format!(
            "warning: {path}: the chat template is not the Qwen3 template tiqu prompts in: {why}; tiqu trains and runs with its own, so runtimes that use this file prompt the model otherwise"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen3() -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/qwen3-tokenizer/tokenizer_config.json");
        let config: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        config["chat_template"].as_str().unwrap().to_string()
    }

    /// Qwen3's own template renders tiqu's prompts; one that drops the empty think block (as
    /// Qwen3-2507's instruct models do) is told apart, with where the prompts part.
    #[test]
    fn qwen3s_template_is_recognised_and_another_is_not() {
        assert_eq!(differs(&qwen3()), None);
        let no_think = qwen3().replace("{{- '<think>\\n\\n</think>\\n\\n' }}", "");
        assert_ne!(no_think, qwen3(), "the edit should change the template");
        let why = differs(&no_think).unwrap();
        assert!(why.contains("with a system message") && why.contains("\"<think>"), "{why}");
        assert!(differs("{{ messages[0].content").unwrap().starts_with("it does not parse"));
        assert!(differs("{{ raise_exception('no system messages') }}").unwrap().contains("no system messages"));
        // A template marked for assistant-only training (TRL's `{% generation %}` blocks) and one
        // that tests `tools is not none` render Qwen3's prompts as transformers does: no warning.
        let tracked = qwen3().replace(
            "{{- '<|im_start|>' + message.role + '\\n' + content }}",
            "{%- generation %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endgeneration %}",
        );
        assert_ne!(tracked, qwen3(), "the edit should change the template");
        assert_eq!(differs(&tracked), None);
        let none_test = qwen3().replacen("{%- if tools %}", "{%- if tools is not none %}", 1);
        assert_ne!(none_test, qwen3());
        assert_eq!(differs(&none_test), None);
    }

    /// The renderer agrees with transformers: each prompt transformers rendered with the real
    /// Qwen3 template (tests/fixtures/chat_template.json) is rendered the same here.
    #[test]
    fn renders_as_transformers_does() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/chat_template.json");
        let cases: Vec<Value> = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let env = environment();
        let template = qwen3();
        let compiled = env.template_from_str(&template).unwrap();
        let mut rendered = 0;
        for case in cases.iter().filter(|c| c["kind"] == "chat") {
            let text = compiled
                .render(context! { messages => case["messages"].clone(), add_generation_prompt => true, enable_thinking => false })
                .unwrap();
            assert_eq!(text, case["text"].as_str().unwrap(), "{}", case["name"]);
            rendered += 1;
        }
        assert!(rendered >= 5);
    }
}
