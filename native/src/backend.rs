//! `--backend cpu|wgpu|cuda`: which compiled burn backend runs, chosen at run time.

use anyhow::{bail, Result};
use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendName {
    /// burn's flex backend: pure-Rust CPU.
    Cpu,
    /// burn's wgpu backend: Vulkan, Metal, DX12 (or a software Vulkan such as lavapipe).
    Wgpu,
    /// burn's CUDA backend (NVIDIA).
    Cuda,
}

impl BackendName {
    pub fn compiled(self) -> bool {
        match self {
            Self::Cpu => cfg!(feature = "flex"),
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::Cuda => cfg!(feature = "cuda"),
        }
    }

    pub fn feature(self) -> &'static str {
        match self {
            Self::Cpu => "flex",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        }
    }
}

/// Runs `f` with panics silenced: backends report a missing driver or adapter by panicking,
/// often on a device thread of their own, while the caller only sees a closed channel. The
/// first panic message from any thread is the one that says what is missing.
fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> std::result::Result<T, String> {
    static FIRST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let text = |p: &(dyn std::any::Any + Send)| panic_message(p).unwrap_or_else(|| "unknown failure".into());
    if let Ok(mut first) = FIRST.lock() {
        *first = None;
    }
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(mut first) = FIRST.lock() {
            first.get_or_insert_with(|| text(info.payload()));
        }
    }));
    let out = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    out.map_err(|e| {
        let first = FIRST.lock().ok().and_then(|mut f| f.take()).unwrap_or_else(|| text(e.as_ref()));
        short_reason(&first)
    })
}

/// The text a panic carried, when it carried one (`panic!` with a message, `expect`, `unwrap`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
}

/// The first line of a backend's failure, short enough for one line of error.
fn short_reason(message: &str) -> String {
    // cubecl's message for a missing toolkit starts with a line break.
    let line = message.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    if line.starts_with("CUDA installation not found") {
        // The driver loaded; the first kernel's compilation needs the toolkit's headers.
        return "the CUDA toolkit was not found: burn compiles its kernels with NVRTC against its headers; install it, or set CUDA_PATH to it".into();
    }
    // cudarc's missing-library message goes on to list 34 file names.
    match line.split_once(" - searched for library names") {
        Some((what, _)) if what.contains("\"nvrtc\"") => format!("{what}: is the CUDA toolkit's libnvrtc.so on LD_LIBRARY_PATH?"),
        Some((what, _)) => format!("{what}: is the NVIDIA driver installed, libcuda.so on LD_LIBRARY_PATH?"),
        None => line.chars().take(300).collect(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_cuda_driver_is_named_in_one_short_line() {
        // What cudarc panics with on a machine without the NVIDIA driver (seen here).
        let cudarc = r#"Unable to dynamically load the "cuda" shared library - searched for library names: ["libcuda.so", "libcuda64.so", "libcuda.so.1"]. Ensure that `LD_LIBRARY_PATH` has the correct path to the installed library."#;
        let short = super::short_reason(cudarc);
        assert!(short.contains(r#"load the "cuda" shared library"#) && short.contains("NVIDIA driver"), "{short}");
        assert!(!short.contains("libcuda64") && short.len() < 160, "{short}");
        assert_eq!(super::short_reason("no adapter\nsecond line"), "no adapter");
    }

    #[test]
    fn a_missing_cuda_toolkit_or_nvrtc_is_named_not_the_driver() {
        // cubecl-cuda 0.10's `expect` when neither CUDA_PATH nor /usr/local/cuda exists: the
        // driver loaded, the first kernel cannot be compiled. Its first line is empty.
        let cubecl = "\n        CUDA installation not found.\n        Please ensure that CUDA is installed and the CUDA_PATH environment variable is set correctly.\n        Note: Default paths are used for Linux (/usr/local/cuda) and Windows (C:/Program Files/NVIDIA GPU Computing Toolkit/CUDA/), which may not be correct.\n    ";
        let short = super::short_reason(cubecl);
        assert!(short.contains("toolkit was not found") && short.contains("CUDA_PATH"), "{short}");
        let nvrtc = r#"Unable to dynamically load the "nvrtc" shared library - searched for library names: ["libnvrtc.so"]."#;
        let short = super::short_reason(nvrtc);
        assert!(short.contains("libnvrtc.so on LD_LIBRARY_PATH") && !short.contains("driver"), "{short}");
    }
}

/// Initialises a backend with one tiny tensor op; `Err` says what is missing.
pub fn probe(name: BackendName) -> Result<String, String> {
    if !name.compiled() {
        return Err(format!("not compiled in (build with --features {})", name.feature()));
    }
    match name {
        #[cfg(feature = "flex")]
        BackendName::Cpu => quietly(|| smoke::<burn::backend::Flex>(&Default::default())).map(|_| "cpu (flex)".into()),
        #[cfg(feature = "wgpu")]
        BackendName::Wgpu => {
            quietly(|| smoke::<burn::backend::Wgpu>(&Default::default())).map(|_| wgpu_adapter_name())
        }
        #[cfg(feature = "cuda")]
        BackendName::Cuda => quietly(|| smoke::<burn::backend::Cuda>(&Default::default()))
            .map(|_| "cuda:0".into())
            .map_err(|e| format!("CUDA is not usable here ({e})")),
        #[allow(unreachable_patterns)]
        _ => Err("not compiled in".into()),
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_adapter_name() -> String {
    "wgpu (default adapter)".into()
}

#[allow(dead_code)]
fn smoke<B: burn::prelude::Backend>(device: &B::Device) -> f32 {
    use burn::prelude::Tensor;
    use burn::tensor::ElementConversion;
    Tensor::<B, 1>::ones([4], device).sum().into_scalar().elem()
}

/// The backend a command runs on: the one asked for (which must initialise), or the best
/// compiled one that initialises (cuda, then wgpu, then cpu).
pub fn choose(asked: Option<BackendName>) -> Result<BackendName> {
    let chosen = choose_one(asked)?;
    let _ = CHOSEN.set(chosen);
    Ok(chosen)
}

fn choose_one(asked: Option<BackendName>) -> Result<BackendName> {
    if let Some(name) = asked {
        return match probe(name) {
            Ok(_) => Ok(name),
            Err(why) => bail!("--backend {}: {why}", name.name()),
        };
    }
    for name in [BackendName::Cuda, BackendName::Wgpu, BackendName::Cpu] {
        if name.compiled() && probe(name).is_ok() {
            return Ok(name);
        }
    }
    bail!("no compiled backend initialises (run `tiqu doctor`)")
}

/// The backend [`choose`] picked for this process: `--dtype auto` depends on it.
static CHOSEN: std::sync::OnceLock<BackendName> = std::sync::OnceLock::new();

/// Calls `$body` with the type `B` bound to the chosen backend and `device` to its device.
#[macro_export]
macro_rules! with_backend {
    ($name:expr, |$B:ident, $device:ident| $body:expr) => {{
        match $name {
            #[cfg(feature = "flex")]
            $crate::backend::BackendName::Cpu => {
                type $B = burn::backend::Flex;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "wgpu")]
            $crate::backend::BackendName::Wgpu => {
                type $B = burn::backend::Wgpu;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::backend::BackendName::Cuda => {
                type $B = burn::backend::Cuda;
                let $device = Default::default();
                $body
            }
            #[allow(unreachable_patterns)]
            other => anyhow::bail!("backend {} is not compiled in", other.name()),
        }
    }};
}

/// `device` of backend `B` initialised with one tiny op; `Err` names `spec`.
#[allow(dead_code)]
fn check_device<B: burn::prelude::Backend>(device: B::Device, spec: &str) -> Result<B::Device>
where
    B::Device: std::panic::RefUnwindSafe,
{
    match quietly(|| smoke::<B>(&device)) {
        Ok(_) => Ok(device),
        Err(why) => bail!("--devices {spec}: not usable here ({why})"),
    }
}

/// `--devices` for the cpu backend: flex has the one device.
#[cfg(feature = "flex")]
pub fn cpu_devices(specs: &[String]) -> Result<Vec<burn::backend::flex::FlexDevice>> {
    match specs {
        [] => Ok(vec![Default::default()]),
        [one] if one == "cpu" => Ok(vec![Default::default()]),
        _ => bail!("--devices {}: the cpu backend has one device, `cpu` (--threads spreads micro-batches over its cores)", specs.join(",")),
    }
}

/// `--devices` for backend `B`: its default device when none are given, else each spec parsed
/// by `parse` (or refused, saying the `expected` forms) and initialised.
#[allow(dead_code)]
fn devices<B: burn::prelude::Backend>(specs: &[String], expected: &str, parse: impl Fn(&str) -> Option<B::Device>) -> Result<Vec<B::Device>>
where
    B::Device: std::panic::RefUnwindSafe,
{
    if specs.is_empty() {
        return Ok(vec![Default::default()]);
    }
    specs
        .iter()
        .map(|spec| match parse(spec) {
            Some(device) => check_device::<B>(device, spec),
            None => bail!("--devices {spec}: expected {expected}"),
        })
        .collect()
}

/// `--devices` for wgpu: `wgpu:N` (the Nth discrete GPU), `wgpu:integrated:N`, `wgpu:default`,
/// `wgpu:cpu` (a software adapter such as lavapipe).
#[cfg(feature = "wgpu")]
pub fn wgpu_devices(specs: &[String]) -> Result<Vec<burn::backend::wgpu::WgpuDevice>> {
    use burn::backend::wgpu::WgpuDevice;
    devices::<burn::backend::Wgpu>(specs, "wgpu:N, wgpu:integrated:N, wgpu:default or wgpu:cpu", |spec| {
        Some(match spec.strip_prefix("wgpu:")? {
            "default" => WgpuDevice::DefaultDevice,
            "cpu" => WgpuDevice::Cpu,
            rest => match rest.strip_prefix("integrated:") {
                Some(n) => WgpuDevice::IntegratedGpu(n.parse().ok()?),
                None => WgpuDevice::DiscreteGpu(rest.parse().ok()?),
            },
        })
    })
}

/// `--devices` for cuda: `cuda:N`.
#[cfg(feature = "cuda")]
pub fn cuda_devices(specs: &[String]) -> Result<Vec<burn::backend::cuda::CudaDevice>> {
    use burn::backend::cuda::CudaDevice;
    devices::<burn::backend::Cuda>(specs, "cuda:N", |spec| Some(CudaDevice::new(spec.strip_prefix("cuda:")?.parse().ok()?)))
}

/// What runs the work, for reports: the CPU's model name on the cpu backend, else the device.
pub fn machine(backend: BackendName) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| info.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    match backend {
        BackendName::Cpu => format!("{cpu}, {} cores", cores()),
        other => probe(other).map_or(cpu.clone(), |d| format!("{d} (host: {cpu})")),
    }
}

/// The CPU's cores, for work tiqu splits over threads itself.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The parser of every `--threads`: a thread count clap bounds, so that a mistake is one line
/// naming the range, not a spawn failure later.
pub fn threads_arg() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096)
}

/// Work tiqu splits over threads itself (micro-batches, extraction batches) runs best with
/// single-threaded CPU kernels: kernels that also split themselves over the cores only contend.
/// Harmless when the kernels' thread pool already exists.
pub fn single_threaded_kernels() {
    let _ = rayon::ThreadPoolBuilder::new().num_threads(1).build_global();
}

/// `--dtype`: the dtype of the frozen base weights and the activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeName {
    /// bf16 on cuda; f16 for inference on a wgpu adapter that supports it; else f32.
    Auto,
    F32,
    Bf16,
    F16,
}

/// What the model is loaded for: the dtype `auto` picks depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Inference,
    /// LoRA: the base is frozen, so it may be half precision; adapters and AdamW stay f32.
    TrainLora,
    /// Every weight trained: f32, as tiqu keeps no separate f32 master copy.
    TrainFull,
}

impl Use {
    /// What training with `method` needs.
    pub fn training(method: tiqu_core::train::Method) -> Self {
        match method {
            tiqu_core::train::Method::Full => Self::TrainFull,
            tiqu_core::train::Method::Lora => Self::TrainLora,
        }
    }
}

/// `--dtype` as given on the command line; set once by `main`, like `--backend`.
static DTYPE: std::sync::OnceLock<DtypeName> = std::sync::OnceLock::new();

pub fn set_dtype(dtype: DtypeName) {
    let _ = DTYPE.set(dtype);
}

/// The dtype to cast the base to on backend `B` for `usage`: what `--dtype` asked for, checked
/// against what the device supports, or what `auto` picks for the chosen backend.
pub fn dtype<B: burn::prelude::Backend>(device: &B::Device, usage: Use) -> Result<burn::tensor::FloatDType> {
    use burn::tensor::{DType, FloatDType};
    let backend = *CHOSEN.get().unwrap_or(&BackendName::Cpu);
    let asked = *DTYPE.get().unwrap_or(&DtypeName::Auto);
    let supports = |d: DType| B::supports_dtype(device, d);
    let chosen = match asked {
        DtypeName::F32 => FloatDType::F32,
        DtypeName::Bf16 => FloatDType::BF16,
        DtypeName::F16 => FloatDType::F16,
        DtypeName::Auto => {
            return Ok(match (backend, usage) {
                (_, Use::TrainFull) | (BackendName::Cpu, _) => FloatDType::F32,
                (BackendName::Cuda, _) if supports(DType::BF16) => FloatDType::BF16,
                (BackendName::Wgpu, Use::Inference) if supports(DType::F16) => FloatDType::F16,
                _ => FloatDType::F32,
            })
        }
    };
    if usage == Use::TrainFull && chosen != FloatDType::F32 {
        bail!("--dtype {}: `--method full` trains every weight and needs f32 (half precision is for LoRA and inference)", tiqu_core::dtype::name(chosen));
    }
    if !supports(chosen.into()) {
        bail!("--dtype {}: the {} device does not support it (use --dtype f32)", tiqu_core::dtype::name(chosen), backend.name());
    }
    Ok(chosen)
}

/// Training every weight needs f32: `--dtype bf16|f16` is refused before anything is done.
pub fn refuse_half_for_full_training() -> Result<()> {
    let name = match given_dtype() {
        Some(name @ ("bf16" | "f16")) => name,
        _ => return Ok(()),
    };
    bail!("--dtype {name}: `--method full` trains every weight and needs f32 (half precision is for LoRA and inference)")
}

/// `--dtype` as given, unless `auto`.
pub fn given_dtype() -> Option<&'static str> {
    match DTYPE.get().copied().unwrap_or(DtypeName::Auto) {
        DtypeName::Auto => None,
        DtypeName::F32 => Some("f32"),
        DtypeName::Bf16 => Some("bf16"),
        DtypeName::F16 => Some("f16"),
    }
}

/// Memory the backend's allocator holds on the device, in MiB (its pools grow to the peak and
/// are kept, so read after a step it is the step's peak, as reserved); `None` on the CPU.
pub fn device_reserved_mb(backend: BackendName) -> Option<f64> {
    let bytes: u64 = match backend {
        #[cfg(feature = "cuda")]
        BackendName::Cuda => reserved_bytes::<cubecl::cuda::CudaRuntime>(),
        #[cfg(feature = "wgpu")]
        BackendName::Wgpu => reserved_bytes::<cubecl::wgpu::WgpuRuntime>(),
        #[allow(unreachable_patterns)]
        _ => None,
    }?;
    Some(bytes as f64 / (1u64 << 20) as f64)
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn reserved_bytes<R: cubecl::Runtime>() -> Option<u64>
where
    R::Device: Default,
{
    R::client(&Default::default()).memory_usage().ok().map(|u| u.bytes_reserved)
}
