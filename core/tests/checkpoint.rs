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
