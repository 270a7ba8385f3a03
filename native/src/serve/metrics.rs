//! `/metrics` in Prometheus' text format. Routes are labelled by their pattern (never the raw
//! path), so a scan of random URLs cannot grow the label set.

use prometheus::{Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub queue_depth: IntGauge,
    pub rows_in_use: IntGauge,
    pub tokens: IntCounter,
    pub first_token: Histogram,
    pub texts: IntCounterVec,
    pub cancelled: IntCounter,
    /// A streamed chat's status is 200 once its headers are out: how it ended is counted here.
    pub streams: IntCounterVec,
    pub ready: IntGauge,
    /// Read from /proc at each scrape: whether memory stays flat under load.
    resident: IntGauge,
}

/// Seconds, from a fast CPU step to a long queue wait.
const BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // Names and label sets are literals: registration cannot fail except by a typo here.
        let requests = IntCounterVec::new(Opts::new("tiqu_http_requests_total", "HTTP requests answered, by route and status"), &["route", "status"])
            .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("tiqu_http_request_duration_seconds", "Time to the response's headers, by route").buckets(BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let queue_depth = IntGauge::new("tiqu_queue_depth", "Jobs waiting for the model").expect("valid metric");
        let rows_in_use = IntGauge::new("tiqu_rows_in_use", "Texts or chats the model is decoding now").expect("valid metric");
        let tokens = IntCounter::new("tiqu_tokens_generated_total", "Tokens generated (picked and grammar-forced)").expect("valid metric");
        let first_token = Histogram::with_opts(
            HistogramOpts::new("tiqu_time_to_first_token_seconds", "From a chat completion's arrival to its first content").buckets(BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let texts = IntCounterVec::new(Opts::new("tiqu_extract_texts_total", "Texts extracted, by outcome"), &["outcome"]).expect("valid metric");
        let cancelled = IntCounter::new("tiqu_jobs_cancelled_total", "Queued jobs skipped and chats stopped because their client left or timed out").expect("valid metric");
        let streams = IntCounterVec::new(
            Opts::new("tiqu_chat_streams_total", "Streamed chat completions by how they ended: done, timeout, error, left (the client went first)"),
            &["outcome"],
        )
        .expect("valid metric");
        let ready = IntGauge::new("tiqu_model_ready", "1 once the model is loaded").expect("valid metric");
        let resident = IntGauge::new("tiqu_resident_memory_bytes", "Resident memory of the server process (Linux; 0 elsewhere)").expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(queue_depth.clone()),
            Box::new(rows_in_use.clone()),
            Box::new(tokens.clone()),
            Box::new(first_token.clone()),
            Box::new(texts.clone()),
            Box::new(cancelled.clone()),
            Box::new(streams.clone()),
            Box::new(ready.clone()),
            Box::new(resident.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self { registry, requests, latency, queue_depth, rows_in_use, tokens, first_token, texts, cancelled, streams, ready, resident }
    }

    pub fn render(&self) -> String {
        self.resident.set(crate::memory::resident_bytes().unwrap_or(0) as i64);
        let mut out = Vec::new();
        // Encoding into a Vec only fails on a metric that breaks the format, which these cannot.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
