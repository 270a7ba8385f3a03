//! OpenAI's chat-completions request and response shapes, as far as the official clients need
//! them, and the translation of `response_format` into a schema the constrained decoder enforces.
//! What cannot be enforced is refused naming the part, never run unconstrained.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tiqu_core::format::Format;
use tiqu_core::{Constrain, Field, Message, Schema};

#[derive(Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub response_format: Option<Value>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub stop: Option<Value>,
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// tiqu's extension (`extra_body` in the Python client): how a response format's values are
    /// constrained, `json` (default) or `copy` (substrings of the user's message).
    #[serde(default)]
    pub constrain: Option<String>,
}

#[derive(Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Value,
}

#[derive(Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// A request checked and ready for the model thread.
pub struct ChatPlan {
    /// The chat template applied to the messages.
    pub prompt: tiqu_core::chat::ChatPrompt,
    /// The object to produce: a schema, how its values are constrained, and the text copy mode
    /// copies from (the user's message).
    pub format: Option<(Schema, Constrain, String)>,
    /// None: up to the end of the context.
    pub max_tokens: Option<usize>,
    /// 0 is greedy.
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub seed: u64,
    pub stream: bool,
    pub include_usage: bool,
}

/// A message's text: a string, or a list of text parts.
fn text_of(content: &Value, at: &str) -> Result<String, String> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut out = String::new();
            for (j, part) in parts.iter().enumerate() {
                if let Some(key) = part.as_object().and_then(|p| p.keys().find(|k| !["type", "text"].contains(&k.as_str()))) {
                    return Err(format!("{at}.content[{j}].{key}: not supported (a text part is {{\"type\": \"text\", \"text\": \"…\"}})"));
                }
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    (Some(other), _) if other != "text" => return Err(format!("{at}.content[{j}].type `{other}` is not supported (text only)")),
                    _ => return Err(format!("{at}.content[{j}] must be {{\"type\": \"text\", \"text\": \"…\"}}")),
                }
            }
            Ok(out)
        }
        _ => Err(format!("{at}.content must be a string or a list of text parts")),
    }
}

/// Refuses a top-level key this server would not read. OpenAI answers an unrecognised argument
/// with a 400 too; here it matters more, since a misspelt `response_format` or an `extra_body`
/// sent literally would turn a constrained answer into free text.
pub fn check_keys(body: &Value) -> Result<(), String> {
    const READ: [&str; 15] = [
        "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stream", "stream_options", "response_format",
        "seed", "n", "stop", "tools", "logprobs", "constrain",
        // Names the served model or the caller: neither changes the answer.
        "model",
    ];
    // serde reads a JSON array as a struct's fields in order: `[[{...}]]` would pass for a request.
    let Some(obj) = body.as_object() else { return Err("the body must be a JSON object with \"messages\"".into()) };
    match obj.get("messages") {
        None => return Err("the body needs \"messages\" (a list of {\"role\", \"content\"})".into()),
        Some(Value::Array(list)) => {
            if let Some(i) = list.iter().position(|m| !m.get("role").is_some_and(Value::is_string)) {
                return Err(format!("messages[{i}] must be an object with a \"role\" string and \"content\""));
            }
            // `name` tells participants apart, which one user message does not need.
            for (i, m) in list.iter().enumerate() {
                if let Some(key) = m.as_object().and_then(|m| m.keys().find(|k| !["role", "content", "name"].contains(&k.as_str()))) {
                    return Err(format!("messages[{i}].{key}: not a message key this server reads"));
                }
                if m.get("name").is_some_and(|n| !n.is_string() && !n.is_null()) {
                    return Err(format!("messages[{i}].name must be a string"));
                }
            }
        }
        Some(_) => return Err("messages must be a list of {\"role\", \"content\"}".into()),
    }
    if obj.get("model").is_some_and(|m| !m.is_string() && !m.is_null()) {
        return Err("model must be a string (the served model answers whatever it names)".into());
    }
    match obj.get("stream_options") {
        None | Some(Value::Null) => {}
        Some(Value::Object(options)) => {
            // include_obfuscation pads streamed chunks against length side channels; none here.
            if let Some(key) = options.keys().find(|k| !["include_usage", "include_obfuscation"].contains(&k.as_str())) {
                return Err(format!("stream_options.{key}: not an option this server supports"));
            }
            if obj.get("stream").and_then(Value::as_bool) != Some(true) {
                return Err("stream_options: only allowed when stream is true".into());
            }
        }
        Some(_) => return Err("stream_options must be an object".into()),
    }
    for (key, value) in obj {
        match key.as_str() {
            k if READ.contains(&k) => {}
            "user" => {}
            // Sent as 0 by some clients; any other value would change the answer.
            "frequency_penalty" | "presence_penalty" if value.is_null() || value.as_f64() == Some(0.0) => {}
            "extra_body" => return Err("extra_body is the Python client's argument: its keys (`constrain`) go at the top level of the body".into()),
            other => return Err(format!("{other}: not a parameter this server supports")),
        }
    }
    Ok(())
}

impl ChatRequest {
    /// Everything checked; `default_schema` serves `json_object`.
    pub fn plan(self, default_schema: &Schema) -> Result<ChatPlan, String> {
        if self.n.is_some_and(|n| n != 1) {
            return Err("n: only 1 choice per request is supported".into());
        }
        if self.stop.as_ref().is_some_and(|s| !s.is_null()) {
            return Err("stop: stop sequences are not supported".into());
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_null()) {
            return Err("tools: tool calls are not supported".into());
        }
        if self.logprobs == Some(true) {
            return Err("logprobs: not supported".into());
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.iter().enumerate() {
            let at = format!("messages[{i}]");
            let role = match m.role.as_str() {
                // OpenAI's newer name for the system role.
                "developer" => "system",
                r => r,
            };
            messages.push(Message { role: role.to_string(), content: text_of(&m.content, &at)? });
        }
        let prompt = tiqu_core::chat::ChatPrompt::from_messages(&messages).map_err(|e| e.to_string())?;
        let user = messages.last().map(|m| m.content.clone()).unwrap_or_default();
        if user.trim().is_empty() {
            // As /v1/extract refuses an empty text: there is nothing to answer.
            return Err(format!("messages[{}].content is empty: the user message needs text", messages.len() - 1));
        }

        // Both names of one limit: OpenAI deprecated max_tokens for max_completion_tokens, and a
        // client sending both with different values could not know which one was obeyed.
        if let (Some(a), Some(b)) = (self.max_completion_tokens, self.max_tokens) {
            if a != b {
                return Err(format!("max_completion_tokens ({a}) and max_tokens ({b}) differ: send one of them"));
            }
        }
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            Some(0) => return Err("max_tokens must be at least 1".into()),
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            None => None,
        };
        let temperature = self.temperature.unwrap_or(0.0);
        if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
            return Err(format!("temperature must be in [0, 2], got {temperature:?}"));
        }
        let top_p = match self.top_p {
            Some(p) if !(p > 0.0 && p <= 1.0) => return Err(format!("top_p must be in (0, 1], got {p:?}")),
            p => p.map(|p| p as f32),
        };
        let constrain = match self.constrain.as_deref() {
            None => None,
            Some(c) => Some(c.parse::<Constrain>().map_err(|e| format!("constrain: {e}"))?),
        };
        let format = match &self.response_format {
            None | Some(Value::Null) => None,
            Some(rf) => response_format(rf, default_schema)?,
        };
        let format = match (format, constrain) {
            (None, None) => None,
            (None, Some(_)) => return Err("constrain: needs a response_format of type json_object or json_schema".into()),
            (Some(_), Some(Constrain::None)) => {
                return Err("constrain: `none` would leave the response_format unenforced; use json or copy".into())
            }
            (Some(schema), mode) => Some((schema, mode.unwrap_or(Constrain::Json), user)),
        };
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        });
        Ok(ChatPlan {
            prompt,
            format,
            max_tokens,
            temperature: temperature as f32,
            top_p,
            seed,
            stream: self.stream.unwrap_or(false),
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
        })
    }
}

/// `response_format` as a schema: `None` for plain text.
fn response_format(rf: &Value, default_schema: &Schema) -> Result<Option<Schema>, String> {
    let kind = rf.get("type").and_then(Value::as_str).ok_or("response_format.type must be text, json_object or json_schema")?;
    // A key the decoder would not read (a schema beside `"type": "text"`, a misspelt one) is an
    // error: the client would otherwise get free text where it asked for a constraint.
    let allowed: &[&str] = if kind == "json_schema" { &["type", "json_schema"] } else { &["type"] };
    if let Some(key) = rf.as_object().and_then(|o| o.keys().find(|k| !allowed.contains(&k.as_str()))) {
        return Err(format!("response_format.{key} is not read with type `{kind}`"));
    }
    if let Some(key) = rf.get("json_schema").and_then(Value::as_object).and_then(|o| o.keys().find(|k| !["name", "schema", "strict", "description"].contains(&k.as_str()))) {
        return Err(format!("response_format.json_schema.{key} is not a json_schema key (name, schema, strict, description)"));
    }
    match kind {
        "text" => Ok(None),
        // Any object is valid JSON-object output; the served schema's is the one the decoder knows.
        "json_object" => Ok(Some(default_schema.clone())),
        "json_schema" => {
            let schema = rf
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or("response_format.json_schema.schema is missing")?;
            json_schema(schema, "response_format.json_schema.schema").map(Some)
        }
        other => Err(format!("response_format.type `{other}` is not supported (text, json_object, json_schema)")),
    }
}

/// An object whose properties are strings, or strings or null, as a schema; `at` names the
/// part in errors.
pub fn json_schema(schema: &Value, at: &str) -> Result<Schema, String> {
    let obj = schema.as_object().ok_or_else(|| format!("{at} must be an object"))?;
    for (key, value) in obj {
        match key.as_str() {
            "type" if value == "object" => {}
            "type" => return Err(format!("{at}.type must be \"object\" (got {value})")),
            "additionalProperties" if value.is_boolean() => {}
            "additionalProperties" => return Err(format!("{at}.additionalProperties must be true or false")),
            "properties" | "required" | "title" | "description" | "$schema" => {}
            other => return Err(format!("{at}.{other} cannot be enforced (an object of string or null properties only)")),
        }
    }
    if obj.get("type").is_none() {
        return Err(format!("{at}.type must be \"object\""));
    }
    let properties = match obj.get("properties") {
        Some(Value::Object(p)) if !p.is_empty() => p,
        Some(Value::Object(_)) | None => return Err(format!("{at}.properties must name at least one property")),
        Some(_) => return Err(format!("{at}.properties must be an object")),
    };
    if let Some(required) = obj.get("required") {
        let list = required.as_array().ok_or_else(|| format!("{at}.required must be a list of property names"))?;
        for (i, name) in list.iter().enumerate() {
            match name.as_str() {
                Some(n) if properties.contains_key(n) => {}
                Some(n) => return Err(format!("{at}.required[{i}] `{n}` is not a property")),
                None => return Err(format!("{at}.required[{i}] must be a string")),
            }
        }
    }
    let fields = properties
        .iter()
        .map(|(name, p)| property(name, p, &format!("{at}.properties.{name}")))
        .collect::<Result<Vec<_>, _>>()?;
    Schema::new(fields, at).map_err(|e| e.to_string())
}

/// The JSON types a property allows, from `type` or `anyOf`.
fn types_of(p: &Map<String, Value>, at: &str) -> Result<Vec<String>, String> {
    let one = |t: &Value, at: &str| t.as_str().map(str::to_string).ok_or_else(|| format!("{at} must be a type name"));
    match (p.get("type"), p.get("anyOf")) {
        (Some(_), Some(_)) => Err(format!("{at}: give `type` or `anyOf`, not both")),
        (Some(Value::Array(list)), None) => list.iter().map(|t| one(t, &format!("{at}.type"))).collect(),
        (Some(t), None) => Ok(vec![one(t, &format!("{at}.type"))?]),
        (None, Some(Value::Array(list))) => {
            let mut out = Vec::new();
            for (i, alt) in list.iter().enumerate() {
                let alt_at = format!("{at}.anyOf[{i}]");
                let alt = alt.as_object().ok_or_else(|| format!("{alt_at} must be an object"))?;
                if let Some(k) = alt.keys().find(|k| !matches!(k.as_str(), "type" | "description" | "title")) {
                    return Err(format!("{alt_at}.{k} cannot be enforced (string or null values only)"));
                }
                out.extend(types_of(alt, &alt_at)?);
            }
            Ok(out)
        }
        (None, Some(_)) => Err(format!("{at}.anyOf must be a list")),
        (None, None) => Err(format!("{at}.type is missing (string, or [\"string\", \"null\"])")),
    }
}

fn property(name: &str, p: &Value, at: &str) -> Result<Field, String> {
    let p = p.as_object().ok_or_else(|| format!("{at} must be an object"))?;
    if let Some(k) = p.keys().find(|k| !matches!(k.as_str(), "type" | "anyOf" | "description" | "title" | "format")) {
        return Err(format!("{at}.{k} cannot be enforced (string or null values only)"));
    }
    let format = match p.get("format") {
        None => None,
        Some(f) => Some(f.as_str().and_then(Format::parse).ok_or_else(|| {
            format!("{at}.format {f} cannot be enforced (the formats are {})", Format::names())
        })?),
    };
    let types = types_of(p, at)?;
    if let Some(t) = types.iter().find(|t| *t != "string" && *t != "null") {
        return Err(format!("{at}: type `{t}` cannot be enforced (string or null values only)"));
    }
    if !types.iter().any(|t| t == "string") {
        return Err(format!("{at}: a property must allow strings"));
    }
    let description = match p.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(d.clone()),
        // The description goes into the prompt: a number or object is a mistake, not a hint.
        Some(_) => return Err(format!("{at}.description must be a string")),
    };
    Ok(Field { name: name.to_string(), description, nullable: types.iter().any(|t| t == "null"), format })
}

/// The identifiers and timestamps every chunk of one completion shares.
pub struct Completion {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Completion {
    pub fn new(model: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self { id: format!("chatcmpl-{created:x}{n:06x}"), created, model: model.to_string() }
    }

    pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens})
    }

    pub fn whole(&self, content: &str, finish_reason: &str, usage: Value) -> Value {
        json!({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": null, "finish_reason": finish_reason}],
            "usage": usage,
        })
    }

    pub fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        })
    }

    pub fn usage_chunk(&self, usage: Value) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": [], "usage": usage})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_and_nullable_properties_become_fields_in_order() {
        let s = json_schema(
            &json!({"type": "object", "properties": {
                "name": {"type": "string", "description": "who"},
                "email": {"type": ["string", "null"], "format": "email"},
                "city": {"anyOf": [{"type": "null"}, {"type": "string"}]}},
              "required": ["name"], "additionalProperties": false}),
            "s",
        )
        .unwrap();
        assert_eq!(s.names(), ["name", "email", "city"]);
        assert_eq!(s.fields.iter().map(|f| f.nullable).collect::<Vec<_>>(), [false, true, true]);
        assert_eq!(s.fields[0].description.as_deref(), Some("who"));
        assert_eq!(s.fields.iter().map(|f| f.format).collect::<Vec<_>>(), [None, Some(Format::Email), None]);
    }

    #[test]
    fn what_the_decoder_cannot_enforce_is_named() {
        let refused = |schema: Value| json_schema(&schema, "s").unwrap_err();
        assert_eq!(refused(json!({"type": "array"})), "s.type must be \"object\" (got \"array\")");
        assert!(refused(json!({"type": "object", "properties": {"age": {"type": "integer"}}})).contains("s.properties.age: type `integer`"));
        assert!(refused(json!({"type": "object", "properties": {"e": {"type": "string", "pattern": "@"}}})).starts_with("s.properties.e.pattern cannot"));
        assert_eq!(
            refused(json!({"type": "object", "properties": {"d": {"type": "string", "format": "date"}}})),
            "s.properties.d.format \"date\" cannot be enforced (the formats are email)"
        );
        assert!(refused(json!({"type": "object", "properties": {"e": {"type": "null"}}})).contains("must allow strings"));
        assert!(refused(json!({"type": "object", "properties": {}})).contains("at least one property"));
        assert!(refused(json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]})).contains("s.required[0] `b`"));
        assert!(refused(json!({"type": "object", "properties": {"": {"type": "string"}}})).contains("empty name"));
        assert!(refused(json!({"type": "object", "properties": {"a": {"type": "string"}}, "oneOf": []})).starts_with("s.oneOf cannot"));
        assert_eq!(refused(json!({"type": "object", "properties": {"a": {"type": "string", "description": 5}}})), "s.properties.a.description must be a string");
    }

    #[test]
    fn requests_name_what_is_refused() {
        let plan = |body: Value| serde_json::from_value::<ChatRequest>(body).unwrap().plan(&Schema::default());
        let user = json!([{"role": "user", "content": "hi"}]);
        assert!(plan(json!({"messages": user, "n": 2})).err().unwrap().starts_with("n:"));
        assert!(plan(json!({"messages": user, "temperature": 3})).err().unwrap().starts_with("temperature"));
        assert!(plan(json!({"messages": user, "constrain": "copy"})).err().unwrap().contains("needs a response_format"));
        assert!(plan(json!({"messages": user, "response_format": {"type": "json_object"}, "constrain": "none"})).err().unwrap().contains("unenforced"));
        assert!(plan(json!({"messages": user, "response_format": {"type": "yaml"}})).err().unwrap().contains("`yaml`"));
        assert!(plan(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})).err().unwrap().contains("messages[0].content[0].type"));
        let cached = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a", "cache_control": {}}]}]});
        assert!(plan(cached).err().unwrap().starts_with("messages[0].content[0].cache_control: not supported"));
        // Nothing to answer: a user message without text, however it is written.
        for content in [json!(null), json!(""), json!(" \n"), json!([])] {
            let err = plan(json!({"messages": [{"role": "user", "content": content}]})).err().unwrap();
            assert_eq!(err, "messages[0].content is empty: the user message needs text", "{content}");
        }
        assert!(plan(json!({"messages": [{"role": "wizard", "content": "hi"}]})).err().unwrap().contains("messages[0] has role `wizard`"));
        let ok = plan(json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                             "response_format": {"type": "json_object"}, "constrain": "copy"}))
        .unwrap();
        let (schema, mode, text) = ok.format.unwrap();
        assert_eq!((schema, mode, text.as_str()), (Schema::default(), Constrain::Copy, "ab"));
        assert!(ok.prompt.to_string().starts_with("<|im_start|>system\ns<|im_end|>"));
        // A constraint the decoder would not read is refused, not answered with free text.
        let schema = json!({"name": "c", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}});
        assert!(plan(json!({"messages": user, "response_format": {"type": "text", "json_schema": schema}})).err().unwrap().contains("response_format.json_schema is not read"));
        assert!(plan(json!({"messages": user, "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": {}, "strct": true}}})).err().unwrap().contains("json_schema.strct"));
        // Two names of one limit with different values: which one would be obeyed is not guessed.
        assert!(plan(json!({"messages": user, "max_tokens": 5, "max_completion_tokens": 7})).err().unwrap().contains("differ"));
        assert!(plan(json!({"messages": user, "max_tokens": 5, "max_completion_tokens": 5})).is_ok());
    }

    /// Keys this server would not read are refused by name; the ones clients send that do not
    /// change the answer pass.
    #[test]
    fn unread_keys_are_refused_by_name() {
        let user = json!([{"role": "user", "content": "hi"}]);
        assert!(check_keys(&json!({"messages": user, "model": "m", "user": "u", "presence_penalty": 0, "frequency_penalty": null, "constrain": "copy"})).is_ok());
        assert!(check_keys(&json!({"messages": user, "extra_body": {"constrain": "copy"}})).unwrap_err().contains("top level"));
        assert_eq!(check_keys(&json!({"messages": user, "response_fromat": {}})).unwrap_err(), "response_fromat: not a parameter this server supports");
        for key in ["guided_json", "functions", "logit_bias", "top_logprobs"] {
            assert!(check_keys(&json!({"messages": user, key: 1})).unwrap_err().starts_with(key));
        }
        assert!(check_keys(&json!({"messages": user, "presence_penalty": 0.5})).is_err());
        // Keys inside what the server reads are checked too (they were ignored).
        let tagged = json!([{"role": "user", "content": "hi", "foo": 1}]);
        assert_eq!(check_keys(&json!({"messages": tagged})).unwrap_err(), "messages[0].foo: not a message key this server reads");
        assert!(check_keys(&json!({"messages": [{"role": "user", "content": "hi", "name": "a"}]})).is_ok());
        assert_eq!(check_keys(&json!({"messages": user, "stream": true, "stream_options": {"include_usage": true, "x": 1}})).unwrap_err(), "stream_options.x: not an option this server supports");
        assert!(check_keys(&json!({"messages": user, "stream_options": {"include_usage": true}})).unwrap_err().contains("only allowed when stream is true"));
        assert!(check_keys(&json!({"messages": user, "stream": true, "stream_options": {"include_usage": true, "include_obfuscation": false}})).is_ok());
        assert!(check_keys(&json!({"messages": user, "model": 5})).unwrap_err().starts_with("model must be a string"));
        // serde would read arrays as the structs' fields in order; the shapes are checked first.
        assert_eq!(check_keys(&json!([[{"role": "user", "content": "hi"}]])).unwrap_err(), "the body must be a JSON object with \"messages\"");
        assert_eq!(check_keys(&json!({"messages": [["user", "hi"]]})).unwrap_err(), "messages[0] must be an object with a \"role\" string and \"content\"");
        assert!(check_keys(&json!({"messages": "hi"})).unwrap_err().starts_with("messages must be a list"));
        assert!(check_keys(&json!({"model": "m"})).unwrap_err().starts_with("the body needs \"messages\""));
        assert!(check_keys(&json!({"messages": [{"role": "user", "content": "hi", "name": "ann"}]})).is_ok());
        assert_eq!(check_keys(&json!({"messages": [{"role": "user", "content": "hi", "name": 7}]})).unwrap_err(), "messages[0].name must be a string");
    }
}
