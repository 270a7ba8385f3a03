//! This process's memory as Linux reports it in `/proc/self/status` (benchmarks and `/metrics`);
//! `None` elsewhere.

/// A `/proc/self/status` field given in kB (`VmRSS`, `VmHWM`…), in bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resident memory now.
pub fn resident_bytes() -> Option<u64> {
    status_bytes("VmRSS")
}

/// Peak resident set size in MiB (0 where unknown).
pub fn peak_rss_mb() -> f64 {
    status_bytes("VmHWM").map_or(0.0, |b| b as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn resident_and_peak_are_read_on_linux() {
        if cfg!(target_os = "linux") {
            let now = super::resident_bytes().expect("VmRSS");
            assert!(now > 0 && super::peak_rss_mb() * 1024.0 * 1024.0 >= now as f64);
        }
    }
}
