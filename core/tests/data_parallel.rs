//! Data-parallel training (`Trainer::set_devices`): micro-batches spread over devices give the
//! losses and adapter weights of one device with the same global batch. On the CPU backend the
//! replica shares the one device (the copy, sync and gather paths run; numbers must be equal
//! bit for bit); on wgpu (lavapipe in CI) the replica is a second logical device.

use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use tiqu_core::lora::LoraConfig;
use tiqu_core::sft::{parse_records, Example};
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
