//! Data-parallel training (`Trainer::set_devices`): micro-batches spread over devices give the
//! losses and adapter weights of one device with the same global batch. On the CPU backend the
//! replica shares the one device (the copy, sync and gather paths run; numbers must be equal
//! bit for bit); on wgpu (lavapipe in CI) the replica is a second logical device.

use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use tiqu_core::lora::LoraConfig;
use tiqu_core::dataset::sft_records::parse_records;
use tiqu_core::sft::Example;
use tiqu_core::train::{AdamWConfig, Method, Trainer};
use tiqu_core::{Checkpoint, Qwen3ForCausalLM};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Three steps of 4 micro-batches (dropout on) from the same start; returns the losses and the
/// final adapter weights.
fn train<B: AutodiffBackend>(main: &B::Device, more: &[B::Device]) -> (Vec<f64>, Vec<(String, Vec<f32>)>) {
    let dir = fixtures().join("tiny-untied");
    let cfg = Checkpoint::open_dir(&dir).unwrap().config().clone();
    let mut model = Qwen3ForCausalLM::<B>::load(&cfg, &mut Checkpoint::open_dir(&dir).unwrap().weights().unwrap(), main).unwrap();
    model.add_lora(&LoraConfig::default(), 3).unwrap();
    let tok = Checkpoint::open_dir(&dir).unwrap().tokenizer(None).unwrap();
    let text = std::fs::read_to_string(fixtures().join("sft_small.jsonl")).unwrap();
    let examples: Vec<Example> = parse_records(&text, "sft_small.jsonl").unwrap().iter().map(|r| Example::new(&r.value, &tok).unwrap()).collect();
    let mut trainer = Trainer::new(model, Method::Lora, AdamWConfig::default(), 1.0, 3).unwrap();
    trainer.set_devices(more);
    let micro: Vec<&[Example]> = vec![&examples[0..2], &examples[2..3], &examples[3..5], &examples[5..6]];
    let losses = (0..3).map(|_| trainer.step(&micro, 1e-2).unwrap().loss).collect();
    let weights = trainer.model.adapter_tensors().unwrap().into_iter().map(|(name, (_, v))| (name, v)).collect();
    (losses, weights)
}

fn compare(one: &(Vec<f64>, Vec<(String, Vec<f32>)>), many: &(Vec<f64>, Vec<(String, Vec<f32>)>), tol: f64) {
    for (a, b) in one.0.iter().zip(&many.0) {
        assert!((a - b).abs() <= tol * a.abs(), "loss {a} on one device, {b} on several");
    }
    assert_eq!(one.1.len(), many.1.len());
    for ((name, a), (_, b)) in one.1.iter().zip(&many.1) {
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) as f64;
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        assert!(worst <= tol * scale.max(1e-6), "{name}: differs by {worst:e}");
    }
}

#[test]
fn a_replica_on_the_cpu_changes_nothing() {
    type B = Autodiff<burn::backend::Flex>;
    let device = Default::default();
    let one = train::<B>(&device, &[]);
    let two = train::<B>(&device, &[Default::default()]);
    compare(&one, &two, 0.0);
    assert!(one.0[2] < one.0[0], "it trains: {:?}", one.0);
}

#[cfg(feature = "wgpu")]
#[test]
fn two_wgpu_devices_train_as_one() {
    use burn::backend::wgpu::WgpuDevice;
    type B = Autodiff<burn::backend::Wgpu>;
    // Two logical devices: lavapipe (or the GPU) as the default device, and the CPU-type adapter.
    let one = train::<B>(&WgpuDevice::DefaultDevice, &[]);
    let two = train::<B>(&WgpuDevice::DefaultDevice, &[WgpuDevice::Cpu]);
    compare(&one, &two, 1e-5);
}

/// Per-layer checkpointing (`Trainer::recompute_layers`: each layer's input kept, the layer run
/// again and back-propagated alone) against the whole graph: the same loss and the same gradients
/// of every trainable parameter, for LoRA with dropout on (the recomputed layer must draw the
/// same masks) and for full fine-tuning (the norms, the output layer and the embedding trained
/// too, tied and untied).
fn recomputing_layers_changes_nothing<B: AutodiffBackend>(device: &B::Device, tol: f64) {
    use tiqu_core::train::trainable_names;
    for fixture in ["tiny-tied", "tiny-untied"] {
        for method in [Method::Lora, Method::Full] {
            let dir = fixtures().join(fixture);
            let cfg = Checkpoint::open_dir(&dir).unwrap().config().clone();
            let mut model = Qwen3ForCausalLM::<B>::load(&cfg, &mut Checkpoint::open_dir(&dir).unwrap().weights().unwrap(), device).unwrap();
            if method == Method::Lora {
                // B starts at zero in a fresh adapter; a non-zero B makes every LoRA gradient flow.
                model.add_lora(&LoraConfig::default(), 5).unwrap();
                let mut trainer = Trainer::new(model, method, AdamWConfig::default(), 1.0, 5).unwrap();
                let tok = Checkpoint::open_dir(&dir).unwrap().tokenizer(None).unwrap();
                let text = std::fs::read_to_string(fixtures().join("sft_small.jsonl")).unwrap();
                let examples: Vec<Example> = parse_records(&text, "sft_small.jsonl").unwrap().iter().map(|r| Example::new(&r.value, &tok).unwrap()).collect();
                trainer.step(&[&examples[..]], 1e-2).unwrap();
                model = trainer.model;
            }
            let tok = Checkpoint::open_dir(&dir).unwrap().tokenizer(None).unwrap();
            let text = std::fs::read_to_string(fixtures().join("sft_small.jsonl")).unwrap();
            let examples: Vec<Example> = parse_records(&text, "sft_small.jsonl").unwrap().iter().map(|r| Example::new(&r.value, &tok).unwrap()).collect();
            let names = trainable_names(&model, method);
            let mut trainer = Trainer::new(model, method, AdamWConfig::default(), 1.0, 9).unwrap();
            let micro: Vec<&[Example]> = vec![&examples[0..3], &examples[3..6]];
            let (loss, _, whole) = trainer.gradients(&micro).unwrap();
            trainer.recompute_layers = true;
            let (loss_layers, _, layers) = trainer.gradients(&micro).unwrap();
            let what = format!("{fixture}, {}", method.name());
            assert!((loss - loss_layers).abs() <= 1e-6 * loss, "{what}: loss {loss} vs {loss_layers} recomputing layers");
            assert_eq!(whole.len(), layers.len());
            for ((name, a), b) in names.iter().zip(whole).zip(layers) {
                let (a, b): (Vec<f32>, Vec<f32>) = (a.into_data().convert::<f32>().to_vec().unwrap(), b.into_data().convert::<f32>().to_vec().unwrap());
                let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
                let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) as f64;
                assert!(scale > 0.0, "{what}: {name} has no gradient");
                // The order of f32 sums differs (up to 2e-5 of the scale on the CPU).
                assert!(worst <= tol * scale, "{what}: gradient of {name} differs by {worst:e} (scale {scale:e}) recomputing layers");
            }
        }
    }
}

#[test]
fn recomputing_layers_on_the_cpu_changes_nothing() {
    recomputing_layers_changes_nothing::<Autodiff<burn::backend::Flex>>(&Default::default(), 1e-4);
}

#[cfg(feature = "wgpu")]
#[test]
fn recomputing_layers_on_wgpu_changes_nothing() {
    recomputing_layers_changes_nothing::<Autodiff<burn::backend::Wgpu>>(&Default::default(), 1e-4);
}
