//! Folding a LoRA adapter into the base weights: `W' = W + scaling·B·A`, computed in f32 and
//! cast back to each tensor's stored dtype, streamed tensor by tensor.

use std::collections::HashMap;

use crate::layout::PROJECTIONS;
use crate::lora::LoraConfig;
use crate::Qwen3Config;
use crate::weights::{encode, write_safetensors, SafetensorsFile};
use crate::{Error, Result};

/// `w` `[out, in]` += `scaling` · `b` `[out, r]` · `a` `[r, in]`, in place.
pub fn add_low_rank(w: &mut [f32], a: &[f32], b: &[f32], out: usize, inp: usize, r: usize, scaling: f32) {
    for o in 0..out {
        let row = &mut w[o * inp..(o + 1) * inp];
        for k in 0..r {
            let coef = scaling * b[o * r + k];
            if coef == 0.0 {
                continue;
            }
            let a_row = &a[k * inp..(k + 1) * inp];
            for (x, &y) in row.iter_mut().zip(a_row) {
                *x += coef * y;
            }
        }
    }
}

/// Writes the merged weights of `base` + adapter to `out` as one safetensors file.
/// Returns how many weight matrices were changed.
///
/// Refused before anything is written: a base tensor whose shape is not what `config` says, an
/// adapter holding LoRA tensors the config does not target, or tensors that are not LoRA's
/// (generation refuses those too);
/// while writing, an adapter tensor that is not finite.
pub fn merge_into<W: std::io::Write>(
    base: &mut SafetensorsFile,
    config: &Qwen3Config,
    lora: &LoraConfig,
    adapter: &mut SafetensorsFile,
    out: &mut W,
) -> Result<usize> {
    lora.validate()?;
    let num_layers = config.num_hidden_layers;
    config.check_layer_indices(base.names(), "the base")?;
    for (name, shape) in config.tensor_shapes() {
        match base.info(&name) {
            None => return Err(Error::Tensor(format!("base tensor `{name}` is missing (config.json expects {shape:?})"))),
            Some(info) if info.shape != shape => {
                return Err(Error::Tensor(format!("base tensor `{name}` has shape {:?}, but config.json says {shape:?}", info.shape)));
            }
            Some(_) => {}
        }
    }
    // Base weight name → adapter (A, B) keys.
    let mut targets: HashMap<String, (String, String)> = HashMap::new();
    for layer in 0..num_layers {
        for p in PROJECTIONS.iter().filter(|p| lora.target_modules.iter().any(|m| m == p.name())) {
            let path = p.path(layer);
            let key = |which: &str| {
                let plain = format!("base_model.model.{path}.{which}.weight");
                let named = format!("base_model.model.{path}.{which}.default.weight");
                if adapter.info(&plain).is_none() && adapter.info(&named).is_some() { named } else { plain }
            };
            targets.insert(format!("{path}.weight"), (key("lora_A"), key("lora_B")));
        }
    }
    crate::lora::only_lora_weights(adapter.names(), "the adapter")?;
    let lora_keys = adapter.names().filter(|n| n.contains(".lora_")).count();
    if lora_keys != 2 * targets.len() {
        return Err(Error::Tensor(format!(
            "the adapter holds {lora_keys} LoRA tensors but the base ({num_layers} layers, targets {}) uses {}; adapter made for another model?",
            lora.target_modules.join(","),
            2 * targets.len()
        )));
    }
    let entries = base.entries();
    let scaling = lora.scaling() as f32;
    let mut merged = 0;
    write_safetensors(out, &entries, &[("format", "pt")], |i| {
        let e = &entries[i];
        let (_, mut w) = base.read_f32(&e.name)?;
        // The merged folder is a model to serve: a weight that is not finite there is a
        // damaged model written with exit 0 (the base's own, or a product that overflowed).
        if w.iter().any(|x| !x.is_finite()) {
            return Err(Error::Tensor(format!("base tensor `{}` holds NaN or infinite values; refusing to write a merged model of it", e.name)));
        }
        if let Some((a_key, b_key)) = targets.get(&e.name) {
            let (out_dim, inp) = (e.shape[0], e.shape[1]);
            let (a_shape, a) = adapter.read_f32(a_key)?;
            let (b_shape, b) = adapter.read_f32(b_key)?;
            if a_shape != [lora.r, inp] || b_shape != [out_dim, lora.r] {
                return Err(Error::Tensor(format!(
                    "adapter tensors `{a_key}` {a_shape:?} / `{b_key}` {b_shape:?} do not fit `{}` {:?} with r={}",
                    e.name, e.shape, lora.r
                )));
            }
            if let Some(key) = [(a_key, &a), (b_key, &b)].into_iter().find(|(_, v)| v.iter().any(|x| !x.is_finite())).map(|(k, _)| k) {
                return Err(Error::Tensor(format!("adapter tensor `{key}` holds NaN or infinite values; refusing to fold it in")));
            }
            add_low_rank(&mut w, &a, &b, out_dim, inp, lora.r, scaling);
            let fits = |x: &f32| x.is_finite() && (e.dtype != crate::weights::Dtype::F16 || half::f16::from_f32(*x).is_finite());
            if !w.iter().all(fits) {
                return Err(Error::Tensor(format!(
                    "`{}` plus the adapter's product (scaling {scaling}) overflows {:?}: the adapter's values are far too large for this base",
                    e.name, e.dtype
                )));
            }
            merged += 1;
        }
        Ok(encode(&w, e.dtype))
    })?;
    if merged != targets.len() {
        return Err(Error::Tensor(format!("merged {merged} of the {} targeted weights; the base lacks some", targets.len())));
    }
    Ok(merged)
}
