//! Where parameter values come from: safetensors shards read tensor by tensor (so loading
//! never holds a second full copy of the weights), or a seeded random init for `--random-weights`.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

use half::slice::HalfFloatSliceExt;
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};
use serde_json::Value;

use crate::entries::Entries;
use crate::previous_token::PreviousTokenHead;
use crate::{Error, Result};

/// A provider of named f32 tensors, checked against the shape the model expects.
pub trait WeightSource {
    /// Values of `name` in row-major order; `shape` is what the model expects.
    fn load(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    /// Whether the source holds `name` (used for optional tensors such as an untied lm_head).
    fn contains(&self, name: &str) -> bool;
    /// Checks, before anything is allocated, that every tensor the config implies can be given:
    /// a config that claims more layers or a wider vocabulary than its weights is refused here
    /// instead of by a failed allocation halfway through loading.
    fn check(&self, shapes: &[(String, Vec<usize>)]) -> Result<()>;
}

/// A zeroed buffer of `n` values, or an error naming `what` when memory cannot hold it (a plain
/// `vec!` aborts the process instead).
fn zeroed<T: Clone + Default>(n: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::Limit(format!("{what}: {n} values of {} bytes do not fit in memory", std::mem::size_of::<T>()))
    })?;
    v.resize(n, T::default());
    Ok(v)
}

pub trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "F32" => Some(Self::F32),
            "F16" => Some(Self::F16),
            "BF16" => Some(Self::BF16),
            _ => None,
        }
    }
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }
    /// The safetensors spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    shard: usize,
    /// Absolute byte range in the shard file.
    start: u64,
    end: u64,
}

struct Shard {
    name: String,
    reader: Box<dyn ReadSeek>,
}

/// One checkpoint's safetensors files (one or several shards), read lazily.
pub struct SafetensorsFile {
    shards: Vec<Shard>,
    tensors: HashMap<String, TensorInfo>,
}

impl SafetensorsFile {
    /// Opens shards given as (file name for messages, reader). Only the headers are read here.
    pub fn open(shards: Vec<(String, Box<dyn ReadSeek>)>) -> Result<Self> {
        let mut out = Self { shards: Vec::new(), tensors: HashMap::new() };
        for (idx, (name, mut reader)) in shards.into_iter().enumerate() {
            let infos = read_header(&name, &mut reader, idx)?;
            for (key, info) in infos {
                if out.tensors.contains_key(&key) {
                    return Err(Error::Format(format!("{name}: tensor `{key}` also stored in another shard")));
                }
                out.tensors.insert(key, info);
            }
            out.shards.push(Shard { name, reader });
        }
        Ok(out)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// The file names, for messages.
    pub fn describe(&self) -> String {
        self.shards.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// The dtype most tensors are stored in (what `merge` writes back).
    pub fn main_dtype(&self) -> Option<Dtype> {
        let mut counts: HashMap<&'static str, (usize, Dtype)> = HashMap::new();
        for info in self.tensors.values() {
            counts.entry(info.dtype.name()).or_insert((0, info.dtype)).0 += 1;
        }
        counts.into_values().max_by_key(|(n, _)| *n).map(|(_, d)| d)
    }

    /// Reads one tensor as f32, whatever its shape.
    pub fn read_f32(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self.tensors.get(name).cloned().ok_or_else(|| {
            Error::Tensor(format!("tensor `{name}` is missing from {}", self.describe()))
        })?;
        let shard = &mut self.shards[info.shard];
        let len = (info.end - info.start) as usize;
        let numel = len / info.dtype.size();
        let io = |e: std::io::Error| Error::Format(format!("{}: reading tensor `{name}`: {e}", shard.name));
        shard.reader.seek(SeekFrom::Start(info.start)).map_err(io)?;
        let values = match info.dtype {
            Dtype::F32 => {
                // Read straight into the f32 buffer: no second copy of the largest tensor.
                let mut values = zeroed::<f32>(numel, name)?;
                shard.reader.read_exact(bytemuck::cast_slice_mut(&mut values)).map_err(io)?;
                if cfg!(target_endian = "big") {
                    values.iter_mut().for_each(|v| *v = f32::from_bits(v.to_bits().swap_bytes()));
                }
                values
            }
            Dtype::F16 | Dtype::BF16 => {
                let mut raw = zeroed::<u16>(numel, name)?;
                shard.reader.read_exact(bytemuck::cast_slice_mut(&mut raw)).map_err(io)?;
                let mut values = zeroed::<f32>(numel, name)?;
                if info.dtype == Dtype::F16 {
                    bytemuck::cast_slice::<u16, half::f16>(&raw).convert_to_f32_slice(&mut values);
                } else {
                    bytemuck::cast_slice::<u16, half::bf16>(&raw).convert_to_f32_slice(&mut values);
                }
                values
            }
        };
        Ok((info.shape, values))
    }
}

impl WeightSource for SafetensorsFile {
    fn load(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let info = self.tensors.get(name).ok_or_else(|| {
            Error::Tensor(format!("tensor `{name}` is missing from {}", self.describe()))
        })?;
        if info.shape != shape {
            return Err(Error::Tensor(format!(
                "{}: tensor `{name}` has shape {:?}, but config.json implies {:?}",
                self.shards[info.shard].name, info.shape, shape
            )));
        }
        Ok(self.read_f32(name)?.1)
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn check(&self, shapes: &[(String, Vec<usize>)]) -> Result<()> {
        for (name, shape) in shapes {
            match self.tensors.get(name) {
                None => {
                    return Err(Error::Tensor(format!(
                        "tensor `{name}`, which config.json implies, is missing from {}",
                        self.describe()
                    )))
                }
                Some(info) if &info.shape != shape => {
                    return Err(Error::Tensor(format!(
                        "{}: tensor `{name}` has shape {:?}, but config.json implies {shape:?}",
                        self.shards[info.shard].name, info.shape
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

fn read_header(name: &str, reader: &mut Box<dyn ReadSeek>, shard: usize) -> Result<Vec<(String, TensorInfo)>> {
    let corrupt = |why: String| Error::Format(format!("{name}: not a valid safetensors file: {why}"));
    let file_len = reader
        .seek(SeekFrom::End(0))
        .and_then(|n| reader.seek(SeekFrom::Start(0)).map(|_| n))
        .map_err(|e| Error::Format(format!("{name}: {e}")))?;
    let mut len = [0u8; 8];
    reader.read_exact(&mut len).map_err(|_| corrupt(format!("only {file_len} bytes long")))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > 100_000_000 || 8 + header_len > file_len {
        return Err(corrupt(format!("header length {header_len} does not fit a {file_len}-byte file")));
    }
    let mut header = vec![0u8; header_len as usize];
    reader.read_exact(&mut header).map_err(|e| corrupt(e.to_string()))?;
    let header = serde_json::from_slice::<Entries<Value>>(&header)
        .map_err(|e| corrupt(format!("header is not a JSON object of tensors: {e}")))?
        .0;
    let data_start = 8 + header_len;
    let data_len = file_len - data_start;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (key, value) in header {
        if key == "__metadata__" {
            // As the safetensors library reads it: text keys to text values, or null.
            if !(value.is_null() || value.as_object().is_some_and(|m| m.values().all(Value::is_string))) {
                return Err(corrupt("`__metadata__` is not an object of strings".into()));
            }
            continue;
        }
        if !seen.insert(key.clone()) {
            return Err(corrupt(format!("tensor `{key}` is listed twice in the header")));
        }
        let dtype_s = value.get("dtype").and_then(Value::as_str).unwrap_or("?");
        let dtype = Dtype::parse(dtype_s).ok_or_else(|| {
            Error::Unsupported(format!("{name}: tensor `{key}` has dtype {dtype_s}; tiqu reads F32, F16 and BF16"))
        })?;
        let shape = integers(&value, "shape").ok_or_else(|| {
            corrupt(format!("tensor `{key}`: `shape` is not a list of non-negative integers"))
        })?;
        let offsets = integers(&value, "data_offsets").ok_or_else(|| {
            corrupt(format!("tensor `{key}`: `data_offsets` is not a list of two non-negative integers"))
        })?;
        let [start, end] = offsets[..] else {
            return Err(corrupt(format!("tensor `{key}`: `data_offsets` must hold two integers, not {}", offsets.len())));
        };
        // Checked products and sums: wrapped arithmetic could pass these checks with a crafted
        // shape and let a tensor read the header's own bytes.
        let bytes = shape
            .iter()
            .try_fold(dtype.size() as u64, |n, &d| n.checked_mul(d))
            .ok_or_else(|| corrupt(format!("tensor `{key}`: shape {shape:?} overflows")))?;
        if end < start || end - start != bytes {
            return Err(corrupt(format!("tensor `{key}`: offsets {start}..{end} do not match shape {shape:?}")));
        }
        if end > data_len {
            return Err(corrupt(format!(
                "tensor `{key}` ends at byte {} but the file has {file_len} bytes (truncated?)",
                data_start.saturating_add(end)
            )));
        }
        let shape = shape.into_iter().map(|d| d as usize).collect();
        out.push((key, TensorInfo { dtype, shape, shard, start: data_start + start, end: data_start + end }));
    }
    // The tensors cover the data exactly, as the safetensors library (and so transformers)
    // requires. Two sharing bytes would let a write to one change the other; a gap or trailing
    // bytes mean offsets written wrong or files joined.
    let mut ranges: Vec<(u64, u64, &str)> = out.iter().map(|(k, i)| (i.start, i.end, k.as_str())).collect();
    ranges.sort_unstable();
    let (mut at, mut previous) = (data_start, "");
    for &(start, end, key) in &ranges {
        if start < at {
            return Err(corrupt(format!("tensors `{previous}` and `{key}` overlap in the data")));
        }
        if start > at {
            return Err(corrupt(format!("bytes {at}..{start}, before tensor `{key}`, belong to no tensor")));
        }
        (at, previous) = (end, key);
    }
    if at != file_len {
        return Err(corrupt(format!("{} bytes after the last tensor belong to no tensor", file_len - at)));
    }
    Ok(out)
}

/// A list of non-negative integers at `value[field]`; `None` if any entry is something else.
fn integers(value: &Value, field: &str) -> Option<Vec<u64>> {
    value.get(field)?.as_array()?.iter().map(Value::as_u64).collect()
}

/// Seeded random parameters, like transformers' `_init_weights` for Qwen3: normal(0, std) for
/// matrices, ones for RMSNorm weights.
pub struct RandomInit {
    rng: StdRng,
    std: f32,
    /// Initial value of the query/key RMSNorm weights (1 in transformers).
    pub qk_norm: f32,
    /// Start layer 0 with a previous-token head.
    pub previous_token: Option<PreviousTokenHead>,
}

impl RandomInit {
    pub fn new(seed: u64, std: f32) -> Self {
        Self { rng: StdRng::seed_from_u64(seed), std, qk_norm: 1.0, previous_token: None }
    }
}

impl WeightSource for RandomInit {
    fn load(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        if name.ends_with("q_norm.weight") || name.ends_with("k_norm.weight") {
            let mut values = vec![self.qk_norm; n];
            if let Some(head) = &self.previous_token {
                head.apply(name, shape, &mut values);
            }
            return Ok(values);
        }
        if name.ends_with("norm.weight") {
            return Ok(vec![1.0; n]);
        }
        let normal = Normal::new(0.0f32, self.std).map_err(|e| Error::Other(e.to_string()))?;
        let mut values = zeroed::<f32>(n, name)?;
        values.iter_mut().for_each(|v| *v = normal.sample(&mut self.rng));
        if let Some(head) = &self.previous_token {
            head.apply(name, shape, &mut values);
        }
        Ok(values)
    }

    fn contains(&self, _name: &str) -> bool {
        true
    }

    fn check(&self, shapes: &[(String, Vec<usize>)]) -> Result<()> {
        let bytes: u64 = shapes.iter().map(|(_, s)| s.iter().map(|&d| d as u64).product::<u64>() * 4).sum();
        check_available(bytes.into(), "random weights of this config (f32) take", "")
    }
}

/// Host memory this process can still take, in bytes, where Linux says: the least of
/// `MemAvailable` (/proc/meminfo), what is left under the container's cgroup limit (a pod's
/// memory limit, where going over is an OOM kill, while MemAvailable counts the whole node), and
/// what is left under the address-space limit (`ulimit -v`, where an allocation over it aborts).
pub fn available_memory() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let field_kib = |text: &str, key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().next()?.parse::<u64>().ok().map(|k| k.saturating_mul(1024))
    };
    let number = |text: Option<String>| text.and_then(|t| t.trim().parse::<u64>().ok());
    let meminfo = read("/proc/meminfo").and_then(|t| field_kib(&t, "MemAvailable:"));
    // cgroup v2 says "max" where there is no limit (the parse fails: no bound); v1 an enormous
    // number. Usage counts the page cache, which fills up to the limit and is reclaimed on
    // demand: what is in use is the working set, usage less the inactive file pages (kubelet's).
    let stat = |text: Option<String>, key: &str| -> u64 {
        text.and_then(|t| t.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())).unwrap_or(0)
    };
    let cgroup = match number(read("/sys/fs/cgroup/memory.max")) {
        Some(limit) => {
            let usage = number(read("/sys/fs/cgroup/memory.current")).unwrap_or(0);
            Some(limit.saturating_sub(usage.saturating_sub(stat(read("/sys/fs/cgroup/memory.stat"), "inactive_file"))))
        }
        None => number(read("/sys/fs/cgroup/memory/memory.limit_in_bytes")).filter(|&limit| limit < 1 << 60).map(|limit| {
            let usage = number(read("/sys/fs/cgroup/memory/memory.usage_in_bytes")).unwrap_or(0);
            limit.saturating_sub(usage.saturating_sub(stat(read("/sys/fs/cgroup/memory/memory.stat"), "total_inactive_file")))
        }),
    };
    let address_space = read("/proc/self/limits").and_then(|limits| {
        let line = limits.lines().find(|l| l.starts_with("Max address space"))?;
        let soft: u64 = line["Max address space".len()..].split_whitespace().next()?.parse().ok()?;
        let used = read("/proc/self/status").and_then(|t| field_kib(&t, "VmSize:")).unwrap_or(0);
        Some(soft.saturating_sub(used))
    });
    [meminfo, cgroup, address_space].into_iter().flatten().min()
}

/// Refuses `bytes` of host memory when the machine has less available: asked of the allocator,
/// that much aborts the process instead of failing. The error reads "{what_takes} N GiB; this
/// machine has M GiB available{after}" (`what_takes` ends in a verb: "a KV cache of … takes").
pub fn check_available(bytes: u128, what_takes: &str, after: &str) -> Result<()> {
    let Some(available) = available_memory() else { return Ok(()) };
    if bytes > u128::from(available) {
        let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
        return Err(Error::Limit(format!("{what_takes} {:.1} GiB; this machine has {:.1} GiB available{after}", gib(bytes), gib(available.into()))));
    }
    Ok(())
}

/// One tensor to write: name, stored dtype, shape.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

/// f32 values in `dtype`'s little-endian bytes (bf16/f16 round to nearest even, as torch does).
pub fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        Dtype::BF16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
    }
}

/// Writes a safetensors file tensor by tensor: the header first, then each tensor's bytes as
/// `produce(i)` returns them, so a file larger than memory can be written. `metadata` goes
/// into `__metadata__`.
pub fn write_safetensors<W: std::io::Write>(
    out: &mut W,
    entries: &[TensorEntry],
    metadata: &[(&str, &str)],
    mut produce: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, Value> = metadata.iter().map(|(k, v)| (k.to_string(), Value::from(*v))).collect();
        header.insert("__metadata__".into(), Value::Object(meta));
    }
    let mut offset = 0usize;
    for e in entries {
        let bytes = e.shape.iter().product::<usize>() * e.dtype.size();
        header.insert(
            e.name.clone(),
            serde_json::json!({"dtype": e.dtype.name(), "shape": e.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&header).map_err(|e| Error::Other(e.to_string()))?;
    // The spec pads the header with spaces to an 8-byte boundary.
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let io = |e: std::io::Error| Error::Other(format!("writing safetensors: {e}"));
    out.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
    out.write_all(&header).map_err(io)?;
    for (i, e) in entries.iter().enumerate() {
        let bytes = produce(i)?;
        let expected = e.shape.iter().product::<usize>() * e.dtype.size();
        if bytes.len() != expected {
            return Err(Error::Other(format!("tensor `{}`: {} bytes produced, {expected} expected", e.name, bytes.len())));
        }
        out.write_all(&bytes).map_err(io)?;
    }
    Ok(())
}

impl SafetensorsFile {
    /// Every tensor's entry, sorted by name (the order safetensors files list them in).
    pub fn entries(&self) -> Vec<TensorEntry> {
        let mut out: Vec<TensorEntry> = self
            .tensors
            .iter()
            .map(|(name, info)| TensorEntry { name: name.clone(), dtype: info.dtype, shape: info.shape.clone() })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(header: &str, data: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, data));
        bytes
    }

    /// As the safetensors library: the tensors cover the data exactly (a gap is named), and
    /// `__metadata__` may be null.
    #[test]
    fn tensors_cover_the_data_exactly() {
        let open = |bytes: Vec<u8>| SafetensorsFile::open(vec![("w.safetensors".into(), Box::new(std::io::Cursor::new(bytes)) as Box<dyn ReadSeek>)]);
        let tensor = |name: &str, at: usize| format!(r#""{name}":{{"dtype":"F32","shape":[1],"data_offsets":[{at},{}]}}"#, at + 4);
        let header = format!(r#"{{"__metadata__":null,{},{}}}"#, tensor("a", 0), tensor("b", 4));
        assert!(open(file_of(&header, 8)).is_ok());
        let gap = format!("{{{},{}}}", tensor("a", 0), tensor("b", 8));
        let e = open(file_of(&gap, 12)).err().unwrap().to_string();
        let at = 8 + gap.len();
        assert_eq!(e, format!("w.safetensors: not a valid safetensors file: bytes {}..{}, before tensor `b`, belong to no tensor", at + 4, at + 8));
    }

    /// The random init applies the previous-token head when asked and only then: the shared
    /// embedding component and layer 0's norm weights of the head's pairs, nothing in layer 1;
    /// the tensors it leaves alone draw the same numbers either way.
    #[test]
    fn the_random_init_builds_the_previous_token_head_when_asked() {
        let head = PreviousTokenHead { head_dim: 32, rope_theta: 1e4 };
        let mut plain = RandomInit::new(9, 0.02);
        let mut with = RandomInit::new(9, 0.02);
        with.previous_token = Some(head);
        let shapes: [(&str, Vec<usize>); 4] = [
            ("model.embed_tokens.weight", vec![50, 64]),
            ("model.layers.0.self_attn.q_norm.weight", vec![32]),
            ("model.layers.1.self_attn.q_norm.weight", vec![32]),
            ("model.layers.1.self_attn.q_proj.weight", vec![64, 64]),
        ];
        let [embed, norm0, norm1, q1] = shapes.map(|(name, shape)| (plain.load(name, &shape).unwrap(), with.load(name, &shape).unwrap()));
        let shared: f32 = embed.1.chunks(64).map(|row| row[63]).sum::<f32>() / 50.0;
        assert!((shared - 0.3).abs() < 0.02, "{shared}");
        assert_eq!(embed.0.chunks(64).map(|r| &r[..63]).collect::<Vec<_>>(), embed.1.chunks(64).map(|r| &r[..63]).collect::<Vec<_>>());
        assert_eq!((norm0.0[0], norm0.1[0], norm0.1[16], norm0.1[15]), (1.0, 2.0, 2.0, 1.0));
        assert_eq!(norm1.0, norm1.1);
        assert_eq!(q1.0, q1.1);
    }

    /// RMSNorm without weight, then `w`.
    fn norm(x: &[f32], w: &[f32]) -> Vec<f32> {
        let rms = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32 + 1e-6).sqrt();
        x.iter().zip(w).map(|(v, g)| v / rms * g).collect()
    }

    /// Head 0 of layer 0's attention over a random token sequence, as transformers' Qwen3
    /// computes it (RMSNorm, q/k projections, per-head q/k norms, rotate-half RoPE, causal
    /// softmax): the mean weight each position from the 10th on puts on the one before it.
    fn attention_on_previous(init: &mut RandomInit, hidden: usize, head_dim: usize, heads: usize, kv: usize, theta: f64) -> f32 {
        let vocab = 300;
        let embed = init.load("model.embed_tokens.weight", &[vocab, hidden]).unwrap();
        let q_proj = init.load("model.layers.0.self_attn.q_proj.weight", &[heads * head_dim, hidden]).unwrap();
        let k_proj = init.load("model.layers.0.self_attn.k_proj.weight", &[kv * head_dim, hidden]).unwrap();
        let q_norm = init.load("model.layers.0.self_attn.q_norm.weight", &[head_dim]).unwrap();
        let k_norm = init.load("model.layers.0.self_attn.k_norm.weight", &[head_dim]).unwrap();
        let ones = vec![1.0; hidden];
        let t = 80;
        let tokens: Vec<usize> = (0..t).map(|i| (i * 7919 + 13) % vocab).collect();
        let project = |w: &[f32], x: &[f32]| -> Vec<f32> { (0..head_dim).map(|r| w[r * hidden..(r + 1) * hidden].iter().zip(x).map(|(a, b)| a * b).sum()).collect() };
        let rope = |v: &[f32], pos: usize| -> Vec<f32> {
            let h = head_dim / 2;
            let mut out = v.to_vec();
            for p in 0..h {
                let angle = pos as f64 * theta.powf(-2.0 * p as f64 / head_dim as f64);
                let (s, c) = (angle.sin() as f32, angle.cos() as f32);
                out[p] = v[p] * c - v[p + h] * s;
                out[p + h] = v[p + h] * c + v[p] * s;
            }
            out
        };
        let (mut q, mut k) = (Vec::new(), Vec::new());
        for (i, &tok) in tokens.iter().enumerate() {
            let x = norm(&embed[tok * hidden..(tok + 1) * hidden], &ones);
            q.push(rope(&norm(&project(&q_proj, &x), &q_norm), i));
            k.push(rope(&norm(&project(&k_proj, &x), &k_norm), i));
        }
        let mut total = 0.0;
        for i in 10..t {
            let scores: Vec<f32> = (0..=i).map(|j| q[i].iter().zip(&k[j]).map(|(a, b)| a * b).sum::<f32>() / (head_dim as f32).sqrt()).collect();
            let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = scores.iter().map(|s| (s - max).exp()).sum();
            total += (scores[i - 1] - max).exp() / sum;
        }
        total / (t - 10) as f32
    }

    /// With the head, layer 0's first head attends to the previous position (over 0.9 of its
    /// weight), on the quickstart's shape and on a Qwen3-0.6B-like head (128, rotary base 10⁶);
    /// the plain random init spreads its attention (under 0.2).
    #[test]
    fn the_first_head_attends_to_the_previous_position() {
        for (hidden, head_dim, heads, kv, theta) in [(128, 32, 4, 2, 1e4), (256, 128, 2, 1, 1e6)] {
            let mut plain = RandomInit::new(3, 0.02);
            let before = attention_on_previous(&mut plain, hidden, head_dim, heads, kv, theta);
            let mut init = RandomInit::new(3, 0.02);
            init.previous_token = Some(PreviousTokenHead { head_dim, rope_theta: theta });
            let after = attention_on_previous(&mut init, hidden, head_dim, heads, kv, theta);
            eprintln!("head_dim {head_dim}: attention on the previous position {before:.3} plain, {after:.3} with the head");
            assert!(before < 0.2, "head_dim {head_dim}: plain init {before}");
            assert!(after > 0.9, "head_dim {head_dim}: with the head {after}");
        }
    }
}
