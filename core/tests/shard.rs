//! Row-blocked embeddings (WebGPU's per-binding limit): a tiny model whose tied embedding is
//! forced into small blocks gives the logits, greedy tokens and extractions of the unsplit one;
//! a tensor that cannot be split is refused by name before anything loads; the async decode
//! loops give what the blocking ones give.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use tiqu_core::generate::{generate, generate_async, GenerateOptions, Sampling};
use tiqu_core::model::Positions;
use tiqu_core::{Checkpoint, Error, ExtractOptions, Extractor, LoadOptions, Qwen3ForCausalLM, Schema};

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name)
}

fn load(name: &str, max_tensor_bytes: Option<usize>) -> Qwen3ForCausalLM<Flex> {
    let d = dir(name);
    let config = Checkpoint::open_dir(&d).unwrap().config().clone();
    let opts = LoadOptions { max_tensor_bytes, ..Default::default() };
    Qwen3ForCausalLM::load_with(&config, &mut Checkpoint::open_dir(&d).unwrap().weights().unwrap(), &Default::default(), &opts).unwrap()
}

/// The test's own executor for the async loops: flex reads never wait.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("flex read waited"),
    }
}

const TEXT: &str = "龙琳，宁夏回族自治区璐市城东林街g座 955491，邮箱 nafan@example.com。小区垃圾堆积成山，物业一直不处理，希望尽快解决。";

#[test]
fn small_blocks_give_the_logits_and_tokens_of_the_whole_table() {
    let whole = load("tiny-tied", None);
    // 151,936 × 16 f32 = 9.3 MiB; 1 MiB blocks of 16,384 rows: 10 blocks, the last one short.
    let split = load("tiny-tied", Some(1 << 20));
    assert!(whole.model.embed_tokens.rest.is_empty());
    assert_eq!(split.model.embed_tokens.rest.len(), 9);
    assert_eq!(split.vocab_size(), whole.vocab_size());
    // Ids from every block, repeated and out of order, in a left-padded batch of two.
    let ids: Vec<u32> = vec![151_935, 5, 70_000, 16_383, 16_384, 5, 151_644, 99_999, 1, 2, 3, 40_000];
    let pos = Positions::left_padded(&[6, 6], 6);
    let logits = |m: &Qwen3ForCausalLM<Flex>| -> Vec<f32> {
        let h = m.hidden(&ids, &pos, None).unwrap();
        m.logits(h.reshape([12, 16])).into_data().convert::<f32>().to_vec().unwrap()
    };
    let (a, b) = (logits(&whole), logits(&split));
    assert_eq!(a.len(), 12 * 151_936);
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst <= 1e-6, "logits differ by {worst}");
    let opts = GenerateOptions { max_new_tokens: 12, sampling: Sampling::Greedy, eos_token_ids: vec![151_645], pad_token_id: 151_643 };
    let prompts = vec![vec![9707u32, 11, 1879], vec![100, 200, 300, 400, 151_000]];
    let expected = generate(&whole, &prompts, &opts).unwrap();
    assert_eq!(generate(&split, &prompts, &opts).unwrap(), expected);
    assert_eq!(block_on(generate_async(&split, &prompts, &opts)).unwrap(), expected);
}

#[test]
fn extraction_is_the_same_split_or_whole_blocking_or_async() {
    let d = dir("tiny-tied");
    let make = |m| {
        let tok = Checkpoint::open_dir(&d).unwrap().tokenizer(None).unwrap();
        let eos = { let c = Checkpoint::open_dir(&d).unwrap(); c.eos_token_ids(&c.tokenizer(None).unwrap(), None).unwrap() };
        let options = ExtractOptions { max_new_tokens: 40, ..Default::default() };
        Extractor::new(m, tok, eos, Schema::default(), options)
    };
    let whole = make(load("tiny-tied", None));
    let split = make(load("tiny-tied", Some(300_000)));
    let expected = whole.extract(TEXT).unwrap();
    assert_eq!(split.extract(TEXT).unwrap(), expected);
    assert_eq!(block_on(split.extract_async(TEXT)).unwrap().fields, expected);
    let batch = ["你好", TEXT, "  "];
    // Everything but the timing.
    let show = |r: tiqu_core::Result<tiqu_core::Extraction>| match r {
        Ok(e) => format!("{:?} {:?} {} {}", e.fields, e.warning, e.tokens, e.truncated),
        Err(e) => e.to_string(),
    };
    let sync: Vec<String> = whole.extract_batch(&batch).into_iter().map(show).collect();
    let asynch: Vec<String> = block_on(split.extract_batch_async(&batch)).into_iter().map(show).collect();
    assert_eq!(sync, asynch);
}

#[test]
fn a_tensor_over_the_limit_that_cannot_be_split_is_refused_by_name() {
    let d = dir("tiny-untied");
    let config = Checkpoint::open_dir(&d).unwrap().config().clone();
    let opts = LoadOptions { max_tensor_bytes: Some(1 << 20), ..Default::default() };
    let err = Qwen3ForCausalLM::<Flex>::load_with(&config, &mut Checkpoint::open_dir(&d).unwrap().weights().unwrap(), &Default::default(), &opts).unwrap_err();
    assert!(matches!(err, Error::Limit(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("model.embed_tokens.weight") && msg.contains("MiB"), "{msg}");
    // A limit below one row cannot hold even one block.
    let d = dir("tiny-tied");
    let config = Checkpoint::open_dir(&d).unwrap().config().clone();
    let opts = LoadOptions { max_tensor_bytes: Some(32), ..Default::default() };
    let err = Qwen3ForCausalLM::<Flex>::load_with(&config, &mut Checkpoint::open_dir(&d).unwrap().weights().unwrap(), &Default::default(), &opts).unwrap_err();
    assert!(err.to_string().contains("over the device's limit"), "{err}");
}
