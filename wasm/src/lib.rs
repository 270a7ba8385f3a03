//! tiqu in a browser tab: the core [`Extractor`] over the files of a model folder as the Hub ships
//! it (or as `tiqu merge` writes it), on WebGPU when the browser gives an adapter, else on burn's
//! flex CPU backend. Everything that reads a tensor back awaits it: WebGPU cannot block.
//!
//! ```js
//! const model = await Model.load({"config.json": bytes, "model.safetensors": bytes, ...}, null, {backend: "auto"});
//! const out = JSON.parse(await model.extract(text));   // {fields, tokens, seconds, tokens_per_s, ...}
//! ```

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::rc::Rc;

use burn::backend::wgpu::{graphics::WebGpu as WebGpuApi, init_setup_async, RuntimeOptions, WgpuDevice};
use burn::backend::{Flex, Wgpu};
use burn::prelude::Backend;
use js_sys::{Object, Promise, Reflect, Uint8Array};
use serde_json::json;
use tiqu_core::generate::{generate_async, GenerateOptions, Sampling};
use tiqu_core::quantize::{Bits, Quantization};
use tiqu_core::weights::ReadSeek;
use tiqu_core::chat::ChatPrompt;
use tiqu_core::{Checkpoint, ExtractOptions, Extractor, Files, LoadOptions, Schema};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{future_to_promise, JsFuture};

/// A `Read + Seek` over a JS `Uint8Array`: weights stay in JS memory and are copied into wasm
/// one tensor at a time, so a checkpoint never sits twice in the wasm heap.
struct JsReader {
    array: Uint8Array,
    len: u64,
    pos: u64,
}

impl Read for JsReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n > 0 {
            self.array.subarray(self.pos as u32, (self.pos as usize + n) as u32).copy_to(&mut buf[..n]);
            self.pos += n as u64;
        }
        Ok(n)
    }
}

impl Seek for JsReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if target < 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start"));
        }
        self.pos = target as u64;
        Ok(self.pos)
    }
}

/// The files of one folder, by base name, kept in JS memory: the core loader reads them through
/// [`tiqu_core::Files`] like a folder on disk.
struct JsFiles {
    label: String,
    files: HashMap<String, Uint8Array>,
}

impl JsFiles {
    fn from_js(files: &JsValue, what: &str) -> Result<Self, String> {
        if !files.is_object() {
            return Err(format!("{what}: expected an object of file name → Uint8Array"));
        }
        let mut map = HashMap::new();
        for entry in Object::entries(&Object::from(files.clone())).iter() {
            let pair = js_sys::Array::from(&entry);
            let name = pair.get(0).as_string().unwrap_or_default();
            let base = name.rsplit('/').next().unwrap_or(&name).to_string();
            let bytes = pair
                .get(1)
                .dyn_into::<Uint8Array>()
                .map_err(|_| format!("{what}: {name} is not a Uint8Array"))?;
            map.insert(base, bytes);
        }
        Ok(Self { label: what.to_string(), files: map })
    }
}

impl Files for JsFiles {
    fn label(&self) -> String {
        self.label.clone()
    }

    /// Messages name the file alone: the page shows them under its folder picker.
    fn path(&self, name: &str) -> String {
        name.to_string()
    }

    fn exists(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }

    fn open(&self, name: &str) -> tiqu_core::Result<Box<dyn ReadSeek>> {
        let array = self.files.get(name).ok_or_else(|| tiqu_core::Error::Format(format!("{name}: missing from the {}", self.label)))?.clone();
        let len = array.length() as u64;
        Ok(Box::new(JsReader { array, len, pos: 0 }))
    }

    fn list(&self) -> tiqu_core::Result<Vec<String>> {
        let mut names: Vec<String> = self.files.keys().cloned().collect();
        names.sort();
        Ok(names)
    }
}

fn now_ms() -> f64 {
    Reflect::get(&js_sys::global(), &"performance".into())
        .ok()
        .and_then(|p| {
            let f = Reflect::get(&p, &"now".into()).ok()?.dyn_into::<js_sys::Function>().ok()?;
            f.call0(&p).ok()?.as_f64()
        })
        .unwrap_or_else(js_sys::Date::now)
}

/// Whether `navigator.gpu.requestAdapter()` gives an adapter.
async fn webgpu_adapter() -> bool {
    let gpu = Reflect::get(&js_sys::global(), &"navigator".into())
        .and_then(|nav| Reflect::get(&nav, &"gpu".into()))
        .unwrap_or(JsValue::UNDEFINED);
    if gpu.is_undefined() || gpu.is_null() {
        return false;
    }
    let Ok(request) = Reflect::get(&gpu, &"requestAdapter".into()).and_then(|f| f.dyn_into::<js_sys::Function>().map_err(JsValue::from)) else {
        return false;
    };
    let Ok(promise) = request.call0(&gpu).and_then(|p| p.dyn_into::<Promise>().map_err(JsValue::from)) else {
        return false;
    };
    matches!(JsFuture::from(promise).await, Ok(a) if !a.is_null() && !a.is_undefined())
}

enum Inner {
    Gpu(Extractor<Wgpu>),
    Cpu(Extractor<Flex>),
}

struct State {
    inner: Inner,
    backend: String,
    load_ms: f64,
    max_tensor_bytes: Option<usize>,
    embedding_blocks: usize,
}

/// A loaded model, ready to extract.
#[wasm_bindgen]
pub struct Model {
    state: Rc<State>,
}

fn options(opts: &JsValue, key: &str) -> Option<JsValue> {
    if !opts.is_object() {
        return None;
    }
    Reflect::get(opts, &key.into()).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

/// `options.quantize` ("int8" | "int4", with `quantizeBlock`, default 32) and `options.dtype`
/// ("f32" | "f16").
struct Precision {
    quantize: Option<Quantization>,
    f16: bool,
}

impl Precision {
    fn from_js(opts: &JsValue) -> Result<Self, String> {
        let block = options(opts, "quantizeBlock").and_then(|v| v.as_f64()).map_or(32, |v| v as usize);
        let quantize = match options(opts, "quantize").and_then(|v| v.as_string()).as_deref() {
            None | Some("none") | Some("") => None,
            Some("int8") => Some(Quantization { bits: Bits::Int8, block }),
            Some("int4") => Some(Quantization { bits: Bits::Int4, block }),
            Some(other) => return Err(format!("unknown quantize `{other}` (none, int8 or int4)")),
        };
        let f16 = match options(opts, "dtype").and_then(|v| v.as_string()).as_deref() {
            None | Some("f32") | Some("") => false,
            Some("f16") => true,
            Some(other) => return Err(format!("unknown dtype `{other}` (f32 or f16)")),
        };
        Ok(Self { quantize, f16 })
    }
}

fn build<B: Backend>(
    checkpoint: &Checkpoint,
    adapter: Option<&JsFiles>,
    load: &LoadOptions,
    precision: &Precision,
    max_new_tokens: usize,
    device: &B::Device,
) -> Result<(Extractor<B>, usize), String> {
    if precision.f16 && !B::supports_dtype(device, burn::tensor::DType::F16) {
        return Err("dtype f16 was asked for, but this device does not support f16 (use f32)".into());
    }
    // Cast (and quantize) layer by layer as the weights load.
    let load = LoadOptions {
        dtype: precision.f16.then_some(burn::tensor::FloatDType::F16),
        adapter: adapter.map(|a| a as &dyn Files),
        ..load.clone()
    };
    let loaded = checkpoint.load::<B>(&load, device).map_err(|e| e.to_string())?;
    let blocks = 1 + loaded.model.model.embed_tokens.rest.len();
    let options = ExtractOptions { max_new_tokens, batch: 1, ..Default::default() };
    Ok((loaded.into_extractor(Schema::default(), options).map_err(|e| e.to_string())?, blocks))
}

#[wasm_bindgen]
impl Model {
    /// Loads a model folder's files (`{name: Uint8Array}`: config.json, tokenizer.json,
    /// safetensors, generation_config.json optional) and optionally an adapter folder's
    /// (adapter_config.json, adapter_model.safetensors). `options`: `{backend: "auto" | "webgpu"
    /// | "cpu", maxTensorBytes?: number, maxNewTokens?: number, quantize?: "none" | "int8" |
    /// "int4", quantizeBlock?: number, dtype?: "f32" | "f16"}`. Rejects with a one-line message.
    pub async fn load(files: JsValue, adapter: JsValue, options_js: JsValue) -> Result<Model, JsError> {
        Self::load_inner(files, adapter, options_js).await.map_err(|e| JsError::new(&e))
    }

    async fn load_inner(files: JsValue, adapter: JsValue, opts: JsValue) -> Result<Model, String> {
        let start = now_ms();
        let files = JsFiles::from_js(&files, "model folder")?;
        let adapter = if adapter.is_undefined() || adapter.is_null() { None } else { Some(JsFiles::from_js(&adapter, "adapter folder")?) };
        let checkpoint = Checkpoint::open(Box::new(files)).map_err(|e| e.to_string())?;
        let wanted = options(&opts, "backend").and_then(|v| v.as_string()).unwrap_or_else(|| "auto".into());
        let forced_limit = options(&opts, "maxTensorBytes").and_then(|v| v.as_f64()).map(|v| v as usize);
        let max_new_tokens = options(&opts, "maxNewTokens").and_then(|v| v.as_f64()).map_or(256, |v| v as usize);
        let precision = Precision::from_js(&opts)?;
        let use_gpu = match wanted.as_str() {
            "cpu" => false,
            "webgpu" => {
                if !webgpu_adapter().await {
                    return Err("WebGPU was asked for, but navigator.gpu gives no adapter here".into());
                }
                true
            }
            "auto" => webgpu_adapter().await,
            other => return Err(format!("unknown backend `{other}` (auto, webgpu or cpu)")),
        };
        let state = if use_gpu {
            let device = WgpuDevice::default();
            let setup = init_setup_async::<WebGpuApi>(&device, RuntimeOptions::default()).await;
            let limits = setup.device.limits();
            let device_limit = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size) as usize;
            let limit = forced_limit.map_or(device_limit, |f| f.min(device_limit));
            let load = LoadOptions { max_tensor_bytes: Some(limit), quantize: precision.quantize, ..Default::default() };
            let info = setup.adapter.get_info();
            let about: Vec<&str> = [info.name.as_str(), info.driver.as_str(), info.driver_info.as_str()].into_iter().filter(|s| !s.is_empty()).collect();
            let name = if about.is_empty() { "webgpu".to_string() } else { format!("webgpu ({})", about.join(", ")) };
            let (extractor, blocks) = build::<Wgpu>(&checkpoint, adapter.as_ref(), &load, &precision, max_new_tokens, &device)?;
            State { inner: Inner::Gpu(extractor), backend: name, load_ms: 0.0, max_tensor_bytes: Some(limit), embedding_blocks: blocks }
        } else {
            let load = LoadOptions { max_tensor_bytes: forced_limit, quantize: precision.quantize, ..Default::default() };
            let (extractor, blocks) = build::<Flex>(&checkpoint, adapter.as_ref(), &load, &precision, max_new_tokens, &Default::default())?;
            State { inner: Inner::Cpu(extractor), backend: "cpu (flex)".into(), load_ms: 0.0, max_tensor_bytes: forced_limit, embedding_blocks: blocks }
        };
        let load_ms = now_ms() - start;
        Ok(Model { state: Rc::new(State { load_ms, ..state }) })
    }

    /// Which backend runs this model: `webgpu (adapter name)` or `cpu (flex)`.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        self.state.backend.clone()
    }

    /// Milliseconds from the files in memory to the model ready on its device.
    #[wasm_bindgen(getter, js_name = loadMs)]
    pub fn load_ms(&self) -> f64 {
        self.state.load_ms
    }

    /// The per-tensor byte limit the weights were loaded under, and the embedding's row blocks.
    #[wasm_bindgen(getter)]
    pub fn info(&self) -> String {
        json!({
            "backend": self.state.backend,
            "load_ms": self.state.load_ms,
            "max_tensor_bytes": self.state.max_tensor_bytes,
            "embedding_blocks": self.state.embedding_blocks,
        })
        .to_string()
    }

    /// Extracts the fields of `text`: a promise of a JSON string `{fields, tokens, truncated,
    /// warning, seconds, tokens_per_s}`.
    pub fn extract(&self, text: String) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let start = now_ms();
            let result = match &state.inner {
                Inner::Gpu(e) => e.extract_async(&text).await,
                Inner::Cpu(e) => e.extract_async(&text).await,
            };
            let seconds = (now_ms() - start) / 1000.0;
            let e = result.map_err(|e| JsValue::from(JsError::new(&e.to_string())))?;
            let out = json!({
                "fields": e.fields.to_json(),
                "tokens": e.tokens,
                "truncated": e.truncated,
                "warning": e.warning,
                "seconds": seconds,
                "tokens_per_s": if seconds > 0.0 { e.tokens as f64 / seconds } else { 0.0 },
                "backend": state.backend,
            });
            Ok(JsValue::from_str(&out.to_string()))
        })
    }

    /// Greedy generation as `tiqu generate --json` runs it (chat template, thinking off): a
    /// promise of `{text, tokens, prompt_tokens, tokens_per_s}`.
    pub fn generate(&self, prompt: String, max_new_tokens: usize) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let err = |e: tiqu_core::Error| JsValue::from(JsError::new(&e.to_string()));
            macro_rules! run {
                ($e:expr) => {{
                    let e = $e;
                    let ids = ChatPrompt::new(None, &prompt).encode(e.tokenizer()).map_err(err)?;
                    let opts = GenerateOptions {
                        max_new_tokens,
                        sampling: Sampling::Greedy,
                        pad_token_id: e.eos_token_ids()[0],
                        eos_token_ids: e.eos_token_ids().to_vec(),
                    };
                    let start = now_ms();
                    let out = generate_async(e.model(), &[ids.clone()], &opts).await.map_err(err)?.remove(0);
                    let seconds = (now_ms() - start) / 1000.0;
                    let text = e.tokenizer().decode(&out.tokens, true).map_err(err)?;
                    (text, out.tokens.len(), ids.len(), seconds)
                }};
            }
            let (text, tokens, prompt_tokens, seconds) = match &state.inner {
                Inner::Gpu(e) => run!(e),
                Inner::Cpu(e) => run!(e),
            };
            let out = json!({
                "text": text,
                "tokens": tokens,
                "prompt_tokens": prompt_tokens,
                "seconds": seconds,
                "tokens_per_s": if seconds > 0.0 { tokens as f64 / seconds } else { 0.0 },
            });
            Ok(JsValue::from_str(&out.to_string()))
        })
    }
}

/// Panics end the wasm instance (panic = abort); log them first so the page can show them.
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&format!("tiqu panicked: {info}").into());
    }));
}
