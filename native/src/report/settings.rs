//! Which settings and figures a report shows, and how: only the knobs the run's method used
//! (a `--method full` run has no LoRA rank), in a reading order, and measured figures rounded.
//! Works on `config.toml` as a plain value so that it follows the training config as it grows.

use serde_json::Value;

use super::ticks::fmt_figure;
// LoRA's knobs (meaningless when every parameter trains) and the random init's (meaningless when
// a checkpoint is loaded).
use tiqu_core::run::{LORA_ONLY as LORA_KEYS, RANDOM_ONLY as RANDOM_INIT_KEYS};

/// Reading order; keys not listed (added later) follow in alphabetical order.
const ORDER: [&str; 30] = [
    "model", "method", "random_weights", "init_std", "qk_norm_init", "previous_token_init", "restrict_vocab", "data", "eval_data",
    "r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora",
    "learning_rate", "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
    "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps", "save_steps",
    "max_length", "gradient_checkpointing", "checkpointing", "seed",
];

/// The run's method as its config says (`lora` when absent, the training default).
pub fn method(config: &Value) -> &str {
    config.get("method").and_then(Value::as_str).unwrap_or("lora")
}

fn used(config: &Value, key: &str) -> bool {
    if method(config) == "full" && LORA_KEYS.contains(&key) {
        return false;
    }
    let random = config.get("random_weights").and_then(Value::as_bool).unwrap_or(false);
    random || !RANDOM_INIT_KEYS.contains(&key)
}

/// The settings the run used, as (key, text), in reading order.
pub fn shown(config: &Value) -> Vec<(String, String)> {
    let Some(map) = config.as_object() else { return Vec::new() };
    let mut keys: Vec<&String> = map.keys().filter(|k| used(config, k)).collect();
    keys.sort_by_key(|k| (ORDER.iter().position(|o| o == k).unwrap_or(ORDER.len()), k.as_str()));
    keys.into_iter().map(|k| (k.clone(), setting(&map[k]))).collect()
}

/// A setting exactly as given (settings are not measurements: 2e-4 stays 2e-4).
pub fn setting(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) if f != 0.0 && f.abs() < 1e-2 => format!("{f:e}"),
            (None, Some(f)) => f.to_string(),
            _ => n.to_string(),
        },
        Value::Array(items) => items.iter().map(setting).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// A measured figure: integers as they are, fractions to four significant digits.
pub fn figure(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_f64() => n.as_f64().map_or_else(|| n.to_string(), fmt_figure),
        other => setting(other),
    }
}

/// `352.4` → `5 min 52 s`.
pub fn duration(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "–".into();
    }
    if s < 60.0 {
        return format!("{} s", fmt_figure(s));
    }
    let whole = s.round() as u64;
    if whole < 3600 {
        format!("{} min {:02} s", whole / 60, whole % 60)
    } else {
        format!("{} h {:02} min", whole / 3600, (whole % 3600) / 60)
    }
}

/// Summary keys with a label of their own, in reading order: where the run ran, then results.
const SUMMARY: [(&str, &str); 14] = [
    ("status", "status"),
    ("machine", "machine"),
    ("backend", "backend"),
    ("dtype", "dtype"),
    ("tiqu_version", "tiqu version"),
    ("elapsed_s", "wall time"),
    ("steps", "steps"),
    ("first_loss", "first loss"),
    ("final_loss", "final loss"),
    ("final_eval_loss", "final eval loss"),
    ("tokens_per_s", "tokens/s"),
    ("records_cut", "records cut at max_length"),
    ("records_skipped", "records skipped (not JSON)"),
    ("method", "method"),
];

/// `summary.json` as (label, text) rows; keys without a label follow under their own name.
/// The trainable-parameter line is shown apart, above the charts.
pub fn summary_rows(summary: &Value) -> Vec<(String, String)> {
    let Some(map) = summary.as_object() else { return Vec::new() };
    let mut rows = Vec::new();
    for (key, label) in SUMMARY {
        match map.get(key) {
            None | Some(Value::Null) => {}
            Some(v) if key == "elapsed_s" => rows.push((label.to_string(), v.as_f64().map_or_else(|| figure(v), duration))),
            Some(v) => rows.push((label.to_string(), figure(v))),
        }
    }
    for (key, v) in map {
        if key != "trainable" && !SUMMARY.iter().any(|(k, _)| k == key) && !v.is_null() {
            rows.push((key.clone(), figure(v)));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(method: &str, random: bool) -> Value {
        json!({"model": "Qwen/Qwen3-0.6B", "method": method, "random_weights": random, "init_std": 0.02, "qk_norm_init": 1.0,
               "r": 8, "lora_alpha": 32.0, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"], "use_rslora": false,
               "learning_rate": 0.0002, "adam_epsilon": 1e-8, "seed": 42, "checkpointing": "balanced"})
    }

    fn keys(rows: &[(String, String)]) -> Vec<&str> {
        rows.iter().map(|r| r.0.as_str()).collect()
    }

    #[test]
    fn a_full_run_shows_no_lora_knobs_and_a_checkpoint_run_no_init_knobs() {
        let lora = shown(&config("lora", false));
        assert_eq!(keys(&lora), ["model", "method", "random_weights", "r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "learning_rate", "adam_epsilon", "checkpointing", "seed"]);
        let full = shown(&config("full", true));
        assert_eq!(keys(&full), ["model", "method", "random_weights", "init_std", "qk_norm_init", "learning_rate", "adam_epsilon", "checkpointing", "seed"]);
        // Old runs' configs without `method` were LoRA runs.
        let mut old = config("lora", false);
        old.as_object_mut().unwrap().remove("method");
        assert!(keys(&shown(&old)).contains(&"r"));
        // Settings print as given, not rounded.
        let text: Vec<&str> = lora.iter().map(|r| r.1.as_str()).collect();
        assert!(text.contains(&"2e-4") && text.contains(&"1e-8") && text.contains(&"q_proj, v_proj") && text.contains(&"32"), "{text:?}");
    }

    #[test]
    fn summary_figures_are_rounded_and_labelled() {
        let rows = summary_rows(&json!({"steps": 300, "final_loss": 0.022380830720067024, "elapsed_s": 352.4, "trainable": "x",
                                        "machine": "AMD EPYC 9B14", "backend": "cpu", "first_loss": null, "future_key": 1.23456789}));
        let find = |k: &str| rows.iter().find(|r| r.0 == k).map(|r| r.1.as_str());
        assert_eq!(find("final loss"), Some("0.02238"));
        assert_eq!(find("wall time"), Some("5 min 52 s"));
        assert_eq!(find("steps"), Some("300"));
        assert_eq!(find("machine"), Some("AMD EPYC 9B14"));
        assert_eq!(find("future_key"), Some("1.235"));
        assert_eq!(find("first loss"), None);
        assert!(rows.iter().all(|r| r.0 != "trainable"));
        assert_eq!(keys(&rows)[..3], ["machine", "backend", "wall time"]);
        assert_eq!((duration(12.5), duration(7384.0)), ("12.5 s".to_string(), "2 h 03 min".to_string()));
    }
}
