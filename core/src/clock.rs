//! A clock for timings that also compiles for wasm32-unknown-unknown, where std's clock is not
//! available: there every timing reads zero (the page measures with `performance.now()`).

#[derive(Debug, Clone, Copy)]
pub struct Stamp(#[cfg(not(target_arch = "wasm32"))] std::time::Instant);

pub fn now() -> Stamp {
    #[cfg(not(target_arch = "wasm32"))]
    return Stamp(std::time::Instant::now());
    #[cfg(target_arch = "wasm32")]
    Stamp()
}

/// Seconds since `start`.
pub fn elapsed_s(start: Stamp) -> f64 {
    #[cfg(not(target_arch = "wasm32"))]
    return start.0.elapsed().as_secs_f64();
    #[cfg(target_arch = "wasm32")]
    {
        let _ = start;
        0.0
    }
}
