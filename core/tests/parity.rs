//! Parity with transformers' Qwen3ForCausalLM on the committed tiny checkpoints
//! (tests/reference/make_fixtures.py): logits within 1e-3, response-token losses within 1e-4
//! relative, greedy tokens identical — alone, in left-padded batches and (logits) in
//! continuous-batching passes of rows of different lengths — on every backend built.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde_json::Value;
use tiqu_core::generate::{generate, GenerateOptions, Sampling};
use tiqu_core::loss::nll_sums;
use tiqu_core::model::{Positions, RowPass};
use tiqu_core::dataset::sft_records::parse_records;
use tiqu_core::sft::Example;
use tiqu_core::{Checkpoint, Qwen3Config, Qwen3ForCausalLM, Tokenizer};

const FIXTURES: [&str; 2] = ["tiny-tied", "tiny-untied"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

struct Fixture<B: Backend> {
    config: Qwen3Config,
    model: Qwen3ForCausalLM<B>,
    tokenizer: Tokenizer,
    eos: Vec<u32>,
    reference: Value,
}

fn load<B: Backend>(name: &'static str, device: &B::Device) -> Fixture<B> {
    let dir = fixtures().join(name);
    let config = Checkpoint::open_dir(&dir).unwrap().config().clone();
    let model = Qwen3ForCausalLM::load(&config, &mut Checkpoint::open_dir(&dir).unwrap().weights().unwrap(), device).unwrap();
    let tokenizer = Checkpoint::open_dir(&dir).unwrap().tokenizer(None).unwrap();
    let eos = { let c = Checkpoint::open_dir(&dir).unwrap(); c.eos_token_ids(&c.tokenizer(None).unwrap(), None).unwrap() };
    let reference = serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    Fixture { config, model, tokenizer, eos, reference }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Full-vocabulary logits `[rows][vocab]` for hidden rows.
fn logits_rows<B: Backend>(model: &Qwen3ForCausalLM<B>, hidden: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let v = model.vocab_size();
    let flat: Vec<f32> = model.logits(hidden).into_data().convert::<f32>().to_vec().unwrap();
    flat.chunks(v).map(<[f32]>::to_vec).collect()
}

/// Compares one position's logits with the reference: the vocab subset within 1e-3, the
/// logsumexp over the whole vocabulary within 1e-3, and the argmax where it is decisive.
fn compare_position(f: &str, what: &str, ours: &[f32], reference: &Value, pos: usize, subset: &[u32]) -> f64 {
    let values = floats(&reference["values"][pos]);
    let mut worst = 0.0f64;
    for (j, &id) in subset.iter().enumerate() {
        worst = worst.max((ours[id as usize] as f64 - values[j]).abs());
    }
    let max = ours.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + ours.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    worst = worst.max((lse - reference["logsumexp"][pos].as_f64().unwrap()).abs());
    let ref_arg = reference["argmax"][pos].as_u64().unwrap() as usize;
    let mut sorted: Vec<f32> = ours.to_vec();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    if sorted[0] - sorted[1] > 2e-3 {
        let arg = ours.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(arg, ref_arg, "{f} {what} position {pos}: argmax differs");
    }
    assert!(worst <= 1e-3, "{f} {what} position {pos}: max |Δlogit| {worst} > 1e-3");
    worst
}

pub fn logits_match<B: Backend>(device: &B::Device) {
    for name in FIXTURES {
        let f = load::<B>(name, device);
        let subset = ids(&f.reference["vocab_subset"]);
        let prompts = f.reference["prompts"].as_array().unwrap();
        let mut worst = 0.0f64;
        // Each prompt alone.
        for (i, p) in prompts.iter().enumerate() {
            let tokens = ids(&p["ids"]);
            let reference = &f.reference["logits"][i];
            let n = tokens.len();
            let hidden = f.model.hidden(&tokens, &Positions::right_padded(&[n], n), None).unwrap();
            let rows = logits_rows(&f.model, hidden.reshape([n, f.config.hidden_size]));
            for (pos, row) in rows.iter().enumerate() {
                worst = worst.max(compare_position(name, &format!("prompt {i}"), row, reference, pos, &subset));
            }
        }
        // All prompts in one left-padded batch, then one right-padded batch: padding must not
        // change a real position's logits.
        let all: Vec<Vec<u32>> = prompts.iter().map(|p| ids(&p["ids"])).collect();
        let lengths: Vec<usize> = all.iter().map(Vec::len).collect();
        let seq = *lengths.iter().max().unwrap();
        for left in [true, false] {
            let mut flat = Vec::new();
            for p in &all {
                let pad = vec![f.eos[0]; seq - p.len()];
                if left {
                    flat.extend(pad.iter().chain(p));
                } else {
                    flat.extend(p.iter().chain(&pad));
                }
            }
            let pos = if left { Positions::left_padded(&lengths, seq) } else { Positions::right_padded(&lengths, seq) };
            let hidden = f.model.hidden(&flat, &pos, None).unwrap();
            let rows = logits_rows(&f.model, hidden.reshape([all.len() * seq, f.config.hidden_size]));
            for (i, len) in lengths.iter().enumerate() {
                let offset = if left { seq - len } else { 0 };
                for pos in 0..*len {
                    let row = &rows[i * seq + offset + pos];
                    let what = format!("prompt {i} in a {} batch", if left { "left-padded" } else { "right-padded" });
                    worst = worst.max(compare_position(name, &what, row, &f.reference["logits"][i], pos, &subset));
                }
            }
        }
        // Continuous batching: each prompt in its own cache row, fed in chunks of a different
        // length per row (1, 3 and 5 tokens; a row whose prompt has ended feeds nothing), so
        // the passes are packed and, on flex, attention is read straight from the cache.
        let mut cache = f.model.new_cache(all.len(), seq).unwrap();
        let mut fed = vec![0usize; all.len()];
        while fed.iter().zip(&lengths).any(|(n, len)| n < len) {
            let lens: Vec<usize> = lengths.iter().zip(&fed).enumerate().map(|(i, (len, n))| (len - n).min(1 + 2 * i)).collect();
            let width = *lens.iter().max().unwrap();
            let mut flat = Vec::new();
            for (p, (&n, &l)) in all.iter().zip(fed.iter().zip(&lens)) {
                flat.extend(p[n..n + l].iter().copied().chain(std::iter::repeat(f.eos[0])).take(width));
            }
            let pass = RowPass { first: 0, seq: width, starts: fed.clone(), lens: lens.clone() };
            let hidden = f.model.hidden_rows(&flat, &pass, &mut cache).unwrap();
            let rows = logits_rows(&f.model, hidden.reshape([all.len() * width, f.config.hidden_size]));
            for (i, (&n, &l)) in fed.iter().zip(&lens).enumerate() {
                for j in 0..l {
                    let what = format!("prompt {i} in a pass of rows feeding {lens:?}");
                    worst = worst.max(compare_position(name, &what, &rows[i * width + j], &f.reference["logits"][i], n + j, &subset));
                }
            }
            fed.iter_mut().zip(&lens).for_each(|(n, l)| *n += l);
        }
        eprintln!("{name}: max |Δlogit| vs transformers = {worst:.2e}");
    }
}

pub fn greedy_matches<B: Backend>(device: &B::Device) {
    for name in FIXTURES {
        let f = load::<B>(name, device);
        let max_new = f.reference["max_new_tokens"].as_u64().unwrap() as usize;
        let opts = GenerateOptions {
            max_new_tokens: max_new,
            sampling: Sampling::Greedy,
            eos_token_ids: f.eos.clone(),
            pad_token_id: f.eos[0],
        };
        let prompts: Vec<Vec<u32>> = f.reference["prompts"].as_array().unwrap().iter().map(|p| ids(&p["ids"])).collect();
        let batched = generate(&f.model, &prompts, &opts).unwrap();
        for (i, prompt) in prompts.iter().enumerate() {
            let expected = &f.reference["greedy"][i];
            let alone = generate(&f.model, std::slice::from_ref(prompt), &opts).unwrap().remove(0);
            assert_eq!(alone.tokens, ids(&expected["ids"]), "{name} prompt {i}: greedy tokens differ from transformers");
            assert_eq!(alone.stopped_on_eos, expected["stopped_on_eos"].as_bool().unwrap(), "{name} prompt {i}");
            assert_eq!(batched[i], alone, "{name} prompt {i}: left-padded batch differs from the prompt alone");
            let text = f.tokenizer.decode(&alone.tokens, true).unwrap();
            assert_eq!(text, expected["text"].as_str().unwrap(), "{name} prompt {i}: decoded text");
        }
        // Stopping: with the 4th greedy token declared an eos id, transformers would return the
        // first three tokens and stop; so must we, and the stop token is not part of the output.
        let expected = ids(&f.reference["greedy"][0]["ids"]);
        let stop = GenerateOptions { eos_token_ids: vec![expected[3]], ..opts.clone() };
        let first = expected.iter().position(|&t| t == expected[3]).unwrap();
        let out = generate(&f.model, &prompts[..1], &stop).unwrap().remove(0);
        assert_eq!(out.tokens, expected[..first], "{name}: tokens before the stop token");
        assert!(out.stopped_on_eos, "{name}: should report the stop");
        let short = GenerateOptions { max_new_tokens: 2, ..opts.clone() };
        let out = generate(&f.model, &prompts[..1], &short).unwrap().remove(0);
        assert_eq!((out.tokens.as_slice(), out.stopped_on_eos), (&expected[..2], false), "{name}: max_new_tokens");
    }
}

pub fn losses_match<B: Backend>(device: &B::Device) {
    let path = fixtures().join("sft_small.jsonl");
    let records = parse_records(&std::fs::read_to_string(&path).unwrap(), "sft_small.jsonl").unwrap();
    for name in FIXTURES {
        let f = load::<B>(name, device);
        let reference = &f.reference["losses"];
        let examples: Vec<Example> = records.iter().map(|r| Example::new(&r.value, &f.tokenizer).unwrap()).collect();
        for (i, ex) in examples.iter().enumerate() {
            let r = &reference["per_record"][i];
            let full: Vec<u32> = ex.prompt.iter().chain(&ex.response).copied().collect();
            assert_eq!(full, ids(&r["input_ids"]), "{name} record {i}: token ids differ from transformers");
            assert_eq!(ex.prompt.len(), r["prompt_len"].as_u64().unwrap() as usize, "{name} record {i}: prompt length");
        }
        // Unequal lengths in one right-padded batch, and each record alone.
        let batched = nll_sums(&f.model, &examples).unwrap();
        let (mut total, mut tokens) = (0.0, 0);
        for (i, ex) in examples.iter().enumerate() {
            let r = &reference["per_record"][i];
            let alone = nll_sums(&f.model, std::slice::from_ref(ex)).unwrap()[0];
            let expected = r["nll_sum"].as_f64().unwrap();
            for (what, got) in [("alone", alone), ("in a batch", batched[i])] {
                assert_eq!(got.1, r["tokens"].as_u64().unwrap() as usize, "{name} record {i} {what}: token count");
                let rel = (got.0 - expected).abs() / expected.abs();
                assert!(rel <= 1e-4, "{name} record {i} {what}: nll {} vs transformers {expected} (rel {rel:.2e})", got.0);
            }
            total += batched[i].0;
            tokens += batched[i].1;
        }
        let loss = total / tokens as f64;
        let expected = reference["loss"].as_f64().unwrap();
        assert!((loss - expected).abs() / expected <= 1e-4, "{name}: mean loss {loss} vs transformers {expected}");
        eprintln!("{name}: loss {loss:.6} vs transformers {expected:.6}");
    }
}

/// The fused output layer and loss of training ([`head_loss`]) against the loss's definition
/// computed on the host in f64 (logits, softmax, NLL and their gradients for the hidden rows and
/// the output weight), and against the same loss through the autodiff graph (logits,
/// log-softmax, gather: what training did before), tied and untied, with the output weight
/// frozen (LoRA) and trained (full), in chunks of 3 rows so that chunking is exercised.
pub fn fused_head_gradients_match_the_graph<B: Backend>(device: &B::Device) {
    use burn::backend::Autodiff;
    use burn::module::Param;
    use burn::tensor::TensorData;
    use tiqu_core::head_loss::head_loss;
    use tiqu_core::loss::nll;
    type A<B> = Autodiff<B>;
    fn weight<B: Backend>(m: &mut Qwen3ForCausalLM<B>) -> &mut Param<Tensor<B, 2>> {
        match &mut m.lm_head {
            Some(head) => &mut head.weight,
            None => &mut m.model.embed_tokens.weight,
        }
    }
    fn host<B: Backend>(t: Tensor<B, 2>) -> Vec<f64> {
        t.into_data().convert::<f64>().to_vec().unwrap()
    }
    /// Largest difference, and the reference's largest magnitude.
    fn gap(ours: &[f64], reference: &[f64]) -> (f64, f64) {
        let worst = ours.iter().zip(reference).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        (worst, reference.iter().fold(0f64, |m, x| m.max(x.abs())))
    }
    for name in FIXTURES {
        for train_weight in [false, true] {
            let mut model = load::<A<B>>(name, device).model;
            let w = weight(&mut model);
            *w = w.clone().set_require_grad(train_weight);
            let (rows, d, vocab) = (7, model.model.norm.weight.dims()[0], model.vocab_size());
            // Deterministic rows of unit scale, like normalised hidden states.
            let values: Vec<f32> = (0..rows * d).map(|i| (i as f32 * 0.7548).sin() * 1.7).collect();
            let h = Tensor::<B, 2>::from_data(TensorData::new(values, [rows, d]), device);
            let targets: Vec<u32> = (0..rows).map(|i| ((i * 7919 + 13) % vocab) as u32).collect();

            // The definition, in f64.
            let (hv, wv) = (host(h.clone()), host(weight(&mut model).val().inner()));
            let (mut want_nll, mut want_h, mut want_w) = (0f64, vec![0f64; rows * d], vec![0f64; vocab * d]);
            for r in 0..rows {
                let hr = &hv[r * d..(r + 1) * d];
                let logits: Vec<f64> = wv.chunks(d).map(|wr| wr.iter().zip(hr).map(|(a, b)| a * b).sum()).collect();
                let max = logits.iter().copied().fold(f64::MIN, f64::max);
                let sum: f64 = logits.iter().map(|l| (l - max).exp()).sum();
                want_nll += sum.ln() + max - logits[targets[r] as usize];
                for (v, l) in logits.iter().enumerate() {
                    let dl = (l - max).exp() / sum - if v == targets[r] as usize { 1.0 } else { 0.0 };
                    for k in 0..d {
                        want_h[r * d + k] += dl * wv[v * d + k];
                        want_w[v * d + k] += dl * hr[k];
                    }
                }
            }

            let graph_h = Tensor::<A<B>, 2>::from_inner(h.clone()).require_grad();
            let graph = nll(&model, graph_h.clone(), &targets, 3).sum();
            let graph_nll = host(graph.clone().inner().reshape([1, 1]))[0];
            let graph_grads = graph.backward();
            let fused_h = Tensor::<A<B>, 2>::from_inner(h).require_grad();
            let fused = head_loss(&model, fused_h.clone(), &targets, 3).unwrap();
            let fused_grads = fused.surrogate.backward();

            let what = format!("{name}, output weight {}", if train_weight { "trained" } else { "frozen" });
            for (path, got) in [("fused", fused.nll), ("graph", graph_nll)] {
                assert!((got - want_nll).abs() <= 1e-5 * want_nll, "{what}: {path} nll {got} vs {want_nll} (f64)");
            }
            let mut grads = vec![("the hidden rows", host(fused_h.grad(&fused_grads).unwrap()), host(graph_h.grad(&graph_grads).unwrap()), want_h)];
            let w = weight(&mut model);
            match train_weight {
                true => grads.push(("the output weight", host(w.grad(&fused_grads).unwrap()), host(w.grad(&graph_grads).unwrap()), want_w)),
                false => assert!(w.grad(&fused_grads).is_none(), "{what}: a frozen output weight got a gradient"),
            }
            for (of, fused, graph, want) in grads {
                let ((f, scale), (g, _)) = (gap(&fused, &want), gap(&graph, &want));
                eprintln!("{what}, gradient of {of}: fused off by {f:.1e}, graph by {g:.1e} (scale {scale:.2})");
                // Sums over the vocabulary in f32: the graph path is itself off by up to 3.5e-5
                // of the scale here. The fused path must be as close, give or take.
                assert!(scale > 0.0 && f <= 1e-4 * scale, "{what}: fused gradient of {of} off by {f} (scale {scale})");
                assert!(f <= 2.0 * g + 1e-6 * scale, "{what}: fused gradient of {of} off by {f}, the graph's by {g}");
            }
        }
    }
}

macro_rules! backend_tests {
    ($module:ident, $backend:ty) => {
        mod $module {
            #[test]
            fn logits_match_transformers() {
                super::logits_match::<$backend>(&Default::default());
            }
            #[test]
            fn greedy_tokens_match_transformers() {
                super::greedy_matches::<$backend>(&Default::default());
            }
            #[test]
            fn losses_match_transformers() {
                super::losses_match::<$backend>(&Default::default());
            }
            #[test]
            fn fused_head_gradients_match_the_graph() {
                super::fused_head_gradients_match_the_graph::<$backend>(&Default::default());
            }
        }
    };
}

#[cfg(feature = "flex")]
backend_tests!(flex, burn::backend::Flex);
#[cfg(feature = "wgpu")]
backend_tests!(wgpu, burn::backend::Wgpu);
#[cfg(feature = "cuda")]
backend_tests!(cuda, burn::backend::Cuda);
