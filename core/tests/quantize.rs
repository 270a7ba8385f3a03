//! Weight-only quantization (burn's, per block) of the tiny checkpoints: what it costs in loss,
//! measured against the unquantized model's transformers-checked loss, int8 far below int4;
//! the projections are stored quantized, also when quantized while loading; a block that does not
//! divide a row is refused.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::DType;
use tiqu_core::loss::total_nll;
use tiqu_core::quantize::{Bits, Quantization};
use tiqu_core::dataset::sft_records::parse_records;
use tiqu_core::sft::Example;
use tiqu_core::{Checkpoint, Qwen3ForCausalLM};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn load<B: Backend>(name: &str) -> (Qwen3ForCausalLM<B>, Vec<Example>) {
    let dir = fixtures().join(name);
    let cfg = Checkpoint::open_dir(&dir).unwrap().config().clone();
    let model = Qwen3ForCausalLM::load(&cfg, &mut Checkpoint::open_dir(&dir).unwrap().weights().unwrap(), &Default::default()).unwrap();
    let tok = Checkpoint::open_dir(&dir).unwrap().tokenizer(None).unwrap();
    let text = std::fs::read_to_string(fixtures().join("sft_small.jsonl")).unwrap();
    let examples = parse_records(&text, "sft_small.jsonl").unwrap().iter().map(|r| Example::new(&r.value, &tok).unwrap()).collect();
    (model, examples)
}

fn loss<B: Backend>(model: &Qwen3ForCausalLM<B>, examples: &[Example]) -> f64 {
    let (nll, tokens) = total_nll(model, examples, 2).unwrap();
    nll / tokens as f64
}

/// Relative loss change of int8 and int4 on one fixture (block 8: the tiny rows are 8–40 wide).
fn deltas<B: Backend>(name: &str) -> (f64, f64) {
    let (model, examples) = load::<B>(name);
    let base = loss(&model, &examples);
    let mut out = [0.0; 2];
    for (i, bits) in [Bits::Int8, Bits::Int4].into_iter().enumerate() {
        let q = model.clone().quantize_projections(&Quantization { bits, block: 8 }).unwrap();
        assert!(matches!(q.model.layers[1].mlp.down_proj.weight.val().dtype(), DType::QFloat(_)));
        out[i] = (loss(&q, &examples) - base).abs() / base;
        eprintln!("{name} {bits:?}: loss {base} -> {} ({:.2e} relative)", loss(&q, &examples), out[i]);
    }
    (out[0], out[1])
}

#[test]
fn int8_costs_little_and_far_less_than_int4() {
    for name in ["tiny-tied", "tiny-untied"] {
        let (int8, int4) = deltas::<Flex>(name);
        assert!(int8 < 2e-3, "{name}: int8 moved the loss by {int8:.2e}");
        assert!(int4 > 0.0 && int8 < int4 / 4.0, "{name}: int8 {int8:.2e} vs int4 {int4:.2e}");
    }
}

#[test]
fn a_block_that_does_not_divide_a_row_is_refused() {
    let (model, _) = load::<Flex>("tiny-tied");
    // down_proj rows hold intermediate_size = 40 weights.
    let err = model.quantize_projections(&Quantization { bits: Bits::Int8, block: 16 }).unwrap_err().to_string();
    assert!(err.contains("model.layers.0.mlp.down_proj.weight") && err.contains("16"), "{err}");
}

#[cfg(feature = "wgpu")]
#[test]
fn int8_on_wgpu_costs_what_it_costs_on_the_cpu() {
    let (cpu8, cpu4) = deltas::<Flex>("tiny-untied");
    let (gpu8, gpu4) = deltas::<burn::backend::Wgpu>("tiny-untied");
    assert!((cpu8 - gpu8).abs() < 1e-4 && (cpu4 - gpu4).abs() < 1e-3, "cpu {cpu8:.2e}/{cpu4:.2e}, wgpu {gpu8:.2e}/{gpu4:.2e}");
}

#[cfg(feature = "cuda")]
#[test]
fn int8_on_cuda_costs_what_it_costs_on_the_cpu() {
    let (cpu8, cpu4) = deltas::<Flex>("tiny-untied");
    let (gpu8, gpu4) = deltas::<burn::backend::Cuda>("tiny-untied");
    assert!((cpu8 - gpu8).abs() < 1e-4 && (cpu4 - gpu4).abs() < 1e-3, "cpu {cpu8:.2e}/{cpu4:.2e}, cuda {gpu8:.2e}/{gpu4:.2e}");
}

#[test]
fn quantizing_while_loading_equals_quantizing_after() {
    let dir = fixtures().join("tiny-tied");
    let cfg = Checkpoint::open_dir(&dir).unwrap().config().clone();
    let q = Quantization { bits: Bits::Int4, block: 8 };
    let opts = tiqu_core::LoadOptions { quantize: Some(q), ..Default::default() };
    let early = Qwen3ForCausalLM::<Flex>::load_with(&cfg, &mut Checkpoint::open_dir(&dir).unwrap().weights().unwrap(), &Default::default(), &opts).unwrap();
    let (model, examples) = load::<Flex>("tiny-tied");
    let late = model.quantize_projections(&q).unwrap();
    assert_eq!(loss(&early, &examples), loss(&late, &examples));
}

/// Greedy decoding at batch 1 through the int8 copy of the output layer gives the f32 layer's
/// tokens: a random model (its logits crowd together, the hardest case for a screen) with int8
/// projections generates the same ids with the screen as without, from several prompts, tied
/// and untied.
#[test]
fn the_int8_head_screen_keeps_every_greedy_token() {
    use tiqu_core::generate::{generate, GenerateOptions, Sampling};
    for tied in [true, false] {
        let json = format!(
            r#"{{"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 3000, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "tie_word_embeddings": {tied}}}"#
        );
        let cfg = tiqu_core::Qwen3Config::from_json(json.as_bytes(), "config.json").unwrap();
        let opts = tiqu_core::LoadOptions {
            random_weights: Some(tiqu_core::load::RandomWeights { seed: 5, std: 0.3, qk_norm: 1.0, previous_token: false }),
            quantize: Some(Quantization { bits: Bits::Int8, block: 32 }),
            ..Default::default()
        };
        let screened = Qwen3ForCausalLM::<Flex>::load_with(&cfg, &mut opts.random_weights.unwrap().source(&cfg), &Default::default(), &opts).unwrap();
        assert!(screened.head_screen.is_some(), "int8 projections on the CPU come with a screen");
        let mut plain = screened.clone();
        plain.head_screen = None;
        let gen = GenerateOptions { max_new_tokens: 40, sampling: Sampling::Greedy, eos_token_ids: vec![], pad_token_id: 0 };
        for prompt in [vec![1u32, 2, 3], vec![2999, 17, 400, 5, 5, 5], vec![42]] {
            let a = generate(&screened, std::slice::from_ref(&prompt), &gen).unwrap();
            let b = generate(&plain, std::slice::from_ref(&prompt), &gen).unwrap();
            assert_eq!(a, b, "tied {tied}, prompt {prompt:?}");
            assert_eq!(a[0].tokens.len(), 40);
        }
        let made = screened.head_screen.as_ref().unwrap().get_or_make(|| None).is_some();
        assert!(made, "greedy decoding made the screen and read it");
    }
}

/// Many rows times an int8 weight (prefill) on the CPU: the tiles dequantized into a buffer and
/// multiplied by gemm, against burn's dequantize-then-multiply, for products on one thread (the
/// first and last) and one spread over the pool (an odd number of weight rows, so that with two
/// or more threads the last tile is shorter), just past the 8 rows the dot products take, and with
/// wide rows (4,096 weights).
#[test]
fn many_rows_of_an_int8_weight_match_the_dequantized_product() {
    use burn::tensor::Distribution;
    use tiqu_core::linear::Linear;
    let device = Default::default();
    let normal = Distribution::Normal(0.0, 1.0);
    for (m, n, k) in [(9, 40, 64), (64, 1101, 128), (12, 50, 4096)] {
        let mut linear = Linear::frozen(Tensor::<Flex, 2>::random([n, k], normal, &device));
        linear.quantize(&Quantization::new(Bits::Int8), "w").unwrap();
        let w = linear.weight.val();
        let x = Tensor::<Flex, 2>::random([m, k], normal, &device);
        let got = tiqu_core::flex::quantized_linear(&x, &w).expect("flex takes int8 products of many rows");
        let want = x.matmul(w.dequantize().transpose());
        let (got, want) = (got.into_data().to_vec::<f32>().unwrap(), want.into_data().to_vec::<f32>().unwrap());
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{m}x{k}x{n}: {g} vs {w}");
        }
    }
}
