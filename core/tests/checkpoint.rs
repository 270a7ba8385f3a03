//! The one loader: any [`Files`] source gives the same model, eos is found in transformers'
//! order, and names from checkpoint files cannot leave the folder.

use std::path::{Path, PathBuf};

use tiqu_core::checkpoint::eos_token_ids;
use tiqu_core::files::Folder;
use tiqu_core::{Checkpoint, Files, MemoryFiles, Qwen3Config, Tokenizer};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name)
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_bytes(&std::fs::read(fixture("tiny-untied/tokenizer.json")).unwrap(), "tokenizer.json").unwrap()
}

fn config(eos: &str) -> Qwen3Config {
    let json = format!(
        r#"{{"architectures":["Qwen3ForCausalLM"],"vocab_size":151936,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,
        "num_attention_heads":2,"max_position_embeddings":16,"rms_norm_eps":1e-6,"rope_theta":10000,"eos_token_id":{eos}}}"#
    );
    Qwen3Config::from_json(json.as_bytes(), "config.json").unwrap()
}

#[test]
fn eos_comes_from_generation_config_then_config_then_tokenizer_config_then_im_end() {
    let tok = tokenizer();
    let mut files = MemoryFiles::new("m");
    files.insert("generation_config.json", br#"{"eos_token_id": [151645, 151643]}"#.to_vec());
    assert_eq!(eos_token_ids(&files, None, &config("7"), &tok).unwrap(), [151645, 151643]);
    files.insert("generation_config.json", br#"{"eos_token_id": null}"#.to_vec());
    assert_eq!(eos_token_ids(&files, None, &config("7"), &tok).unwrap(), [7]);
    files.insert("tokenizer_config.json", br#"{"eos_token": {"content": "<|endoftext|>"}}"#.to_vec());
    assert_eq!(eos_token_ids(&files, None, &config("null"), &tok).unwrap(), [151643]);
    let bare = MemoryFiles::new("bare");
    assert_eq!(eos_token_ids(&bare, None, &config("null"), &tok).unwrap(), [151645], "<|im_end|> of the chat template");
    files.insert("tokenizer_config.json", br#"{"eos_token": "<|nope|>"}"#.to_vec());
    let err = eos_token_ids(&files, None, &config("null"), &tok).unwrap_err().to_string();
    assert_eq!(err, "m/tokenizer_config.json: eos_token `<|nope|>` is not in the tokenizer's vocabulary");
}

#[test]
fn files_in_memory_load_the_same_model_as_the_folder() {
    let dir = fixture("tiny-tied");
    let folder = Folder::new(&dir);
    let mut memory = MemoryFiles::new("memory");
    for name in folder.list().unwrap() {
        memory.insert(&name, folder.read(&name).unwrap());
    }
    type B = burn::backend::Flex;
    let a = Checkpoint::open(Box::new(folder)).unwrap().load::<B>(&Default::default(), &Default::default()).unwrap();
    let b = Checkpoint::open(Box::new(memory)).unwrap().load::<B>(&Default::default(), &Default::default()).unwrap();
    assert_eq!(a.eos_token_ids, b.eos_token_ids);
    let w = |l: &tiqu_core::Loaded<B>| l.model.model.layers[1].mlp.down_proj.weight.val().into_data().to_vec::<f32>().unwrap();
    assert_eq!(w(&a), w(&b));
}

#[test]
fn shard_names_that_leave_the_folder_are_refused_before_any_read() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture("tiny-tied").join(name), dir.path().join(name)).unwrap();
    }
    let index = r#"{"weight_map": {"model.embed_tokens.weight": "../tiny-untied/model.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
    let err = Checkpoint::open_dir(dir.path()).unwrap().weights().err().unwrap().to_string();
    assert!(err.contains("model.safetensors.index.json: shard name `../tiny-untied/model.safetensors`"), "{err}");
}

/// A safetensors file from a header (as JSON text) and `data` bytes after it.
fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn open_header(header: &str, data: &[u8]) -> String {
    let reader: Box<dyn tiqu_core::weights::ReadSeek> = Box::new(std::io::Cursor::new(safetensors(header, data)));
    match tiqu_core::SafetensorsFile::open(vec![("crafted.safetensors".into(), reader)]) {
        Ok(_) => "opened".into(),
        Err(e) => e.to_string(),
    }
}

/// Issue 14 case 6: headers whose arithmetic wraps, or that list a tensor twice, overlap two
/// tensors or put non-integers in a shape are refused with the file and tensor named, so a
/// crafted file can never hand the model bytes of its own header as weights.
#[test]
fn crafted_safetensors_headers_are_refused() {
    let data = [0u8; 16];
    assert_eq!(open_header(r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#, &data), "opened");
    let cases = [
        // 2^62 · 4 elements · 4 bytes wraps to 0, which the offsets 0..0 would match.
        (r#"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}}"#, "overflows"),
        // The end plus the data start wraps past 2^64 to a small number.
        (r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[18446744073709551610,18446744073709551614]}}"#, "truncated"),
        (r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, "listed twice"),
        (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, "overlap"),
        (r#"{"a":{"dtype":"F32","shape":[2,"x"],"data_offsets":[0,8]}}"#, "`shape` is not a list of non-negative integers"),
        (r#"{"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}}"#, "`shape` is not"),
        (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}}"#, "`data_offsets` is not"),
        (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}}"#, "must hold two integers"),
        (r#"[1,2]"#, "not a JSON object"),
    ];
    for (header, expected) in cases {
        let err = open_header(header, &data);
        assert!(err.starts_with("crafted.safetensors: ") && err.contains(expected), "{header}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

/// Issue 14 case 7: a config.json beyond the stated limits, or with values that make every loss
/// NaN, is refused when it is read; random weights larger than the machine's memory and a config
/// that claims more layers than its weights hold are refused before anything is allocated.
#[test]
fn configs_beyond_limits_are_refused_before_allocating() {
    let base = serde_json::json!({"architectures":["Qwen3ForCausalLM"],"vocab_size":64,"hidden_size":8,
        "intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":16,
        "rms_norm_eps":1e-6,"rope_theta":10000});
    let with = |changes: serde_json::Value| {
        let mut c = base.clone();
        for (k, v) in changes.as_object().unwrap() {
            c[k] = v.clone();
        }
        Qwen3Config::from_json(c.to_string().as_bytes(), "config.json")
    };
    let err = |changes| with(changes).unwrap_err().to_string();
    assert_eq!(err(serde_json::json!({"num_hidden_layers": 1_000_000_000_000u64})), "config.json: num_hidden_layers 1000000000000 is over tiqu's limit of 1024");
    assert!(err(serde_json::json!({"num_attention_heads": 1u64 << 40, "num_key_value_heads": 1, "head_dim": 2})).contains("num_attention_heads 1099511627776 is over"));
    assert!(err(serde_json::json!({"vocab_size": 1u64 << 40})).contains("vocab_size"));
    assert_eq!(err(serde_json::json!({"rope_theta": 0})), "config.json: rope_theta 0 must be a positive number");
    assert_eq!(err(serde_json::json!({"rms_norm_eps": -1e-6})), "config.json: rms_norm_eps -0.000001 must be a positive number");

    type B = burn::backend::Flex;
    // 2^20 · 2^20 embedding values: 4 TiB as f32, counted without wrapping and refused as a limit.
    let huge = with(serde_json::json!({"vocab_size": 1 << 20, "hidden_size": 1 << 20, "head_dim": 2})).unwrap();
    // Two 2^40 tables (untied) + one layer (42·2^20 + 4) + the final norm (2^20): no wrap.
    assert_eq!(huge.num_parameters(), 2_199_068_344_324);
    let mut files = MemoryFiles::new("huge");
    files.insert("config.json", huge.raw.to_string().into_bytes());
    let opts = tiqu_core::load::LoadOptions { random_weights: Some(tiqu_core::load::RandomWeights::new(1)), ..Default::default() };
    let err = Checkpoint::open(Box::new(files)).unwrap().load_model::<B>(&opts, &Default::default()).err().unwrap();
    assert!(matches!(err, tiqu_core::Error::Limit(_)), "{err}");

    // The tiny checkpoint with one layer more in its config than in its file.
    let folder = Folder::new(fixture("tiny-untied"));
    let mut files = MemoryFiles::new("more-layers");
    for name in folder.list().unwrap() {
        files.insert(&name, folder.read(&name).unwrap());
    }
    let mut cfg: serde_json::Value = serde_json::from_slice(&folder.read("config.json").unwrap()).unwrap();
    let layers = cfg["num_hidden_layers"].as_u64().unwrap();
    cfg["num_hidden_layers"] = serde_json::json!(layers + 1);
    files.insert("config.json", cfg.to_string().into_bytes());
    let err = Checkpoint::open(Box::new(files)).unwrap().load_model::<B>(&Default::default(), &Default::default()).err().unwrap().to_string();
    assert!(err.contains(&format!("model.layers.{layers}.")) && err.contains("which config.json implies, is missing"), "{err}");
}

/// Proves: a config built by hand (its fields are public) is checked as config.json is when a
/// model is built from it: heads that the key/value heads do not divide failed in a forward
/// pass with a reshape's panic.
#[test]
fn a_hand_built_config_is_checked_when_loaded() {
    type B = burn::backend::Flex;
    let cfg = Qwen3Config { num_key_value_heads: 3, ..Qwen3Config::preset("qwen3-0.6b").unwrap() };
    let mut init = tiqu_core::load::RandomWeights::new(1).source(&cfg);
    let err = tiqu_core::Qwen3ForCausalLM::<B>::load(&cfg, &mut init, &Default::default()).err().unwrap().to_string();
    assert_eq!(err, "the model's config: num_attention_heads 16 must be a positive multiple of num_key_value_heads 3");
}
