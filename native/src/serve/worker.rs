//! The model thread and the bounded queue into it. burn models are not meant to be shared
//! across threads, so one thread loads the model and owns the [`Extractor`]; handlers submit
//! [`Job`]s and await their replies. The thread takes what is waiting (up to `--max-batch`
//! texts) and runs extraction jobs together through `Extractor::extract_batch`, `--max-batch`
//! texts at a time, and chats one by one (`chat.rs`). A continuous-batching engine replaces this file only: the handlers see jobs and
//! replies, never the model.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use burn::prelude::Backend;
use tiqu_core::constrain::TokenTable;
use tiqu_core::{Constrain, ExtractOptions, Extraction, Extractor, Schema};
use tokio::sync::{mpsc, oneshot};

use super::chat::{self, ChatJob};
use super::limits::ApiError;
use super::state::{AppState, Phase};
use crate::backend::BackendName;
use crate::{checkpoint, with_backend, ModelArgs};

/// Texts to extract with one schema and constraint; one result per text, in order.
pub struct ExtractJob {
    pub texts: Vec<String>,
    pub schema: Schema,
    pub constrain: Constrain,
    pub reply: oneshot::Sender<Vec<std::result::Result<Extraction, String>>>,
}

pub enum Work {
    Extract(ExtractJob),
    Chat(ChatJob),
}

pub struct Job {
    work: Work,
    /// Set when the client is gone (its handler was dropped) or timed out: the job is skipped,
    /// or a chat stops at its next token.
    cancelled: Arc<AtomicBool>,
}

impl Job {
    fn rows(&self) -> usize {
        match &self.work {
            Work::Extract(e) => e.texts.len(),
            Work::Chat(_) => 1,
        }
    }
}

/// The handlers' end of the queue.
pub struct Queue {
    tx: mpsc::Sender<Job>,
}

/// The model thread's end.
pub struct Jobs {
    rx: mpsc::Receiver<Job>,
}

pub fn queue(max_queue: usize) -> (Queue, Jobs) {
    let (tx, rx) = mpsc::channel(max_queue);
    (Queue { tx }, Jobs { rx })
}

/// Held by the handler (or its response stream) while a job is queued or running: dropping it,
/// which is what happens when the client disconnects, cancels the job.
pub struct Ticket {
    cancelled: Arc<AtomicBool>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

/// Puts `work` on the queue: 503 while the model loads or when the queue is full.
pub fn submit(state: &AppState, work: Work) -> std::result::Result<Ticket, ApiError> {
    match state.phase() {
        Phase::Ready => {}
        Phase::Loading => return Err(ApiError::unavailable("the model is still loading", 2)),
        Phase::Failed(why) => return Err(ApiError::unavailable(&format!("the model failed to load: {why}"), 60)),
    }
    let cancelled = Arc::new(AtomicBool::new(false));
    // Counted before sending so that the worker's decrement can never run first.
    state.metrics.queue_depth.inc();
    match state.queue.tx.try_send(Job { work, cancelled: cancelled.clone() }) {
        Ok(()) => Ok(Ticket { cancelled }),
        Err(e) => {
            state.metrics.queue_depth.dec();
            Err(match e {
                mpsc::error::TrySendError::Full(_) => ApiError::unavailable(
                    &format!("the queue is full ({} requests waiting); retry later", state.settings.max_queue),
                    1,
                ),
                mpsc::error::TrySendError::Closed(_) => ApiError::unavailable("the model thread has stopped", 60),
            })
        }
    }
}

/// The model thread: loads the model, marks the server ready, then serves jobs until the queue
/// closes. A failed load stops the server with its message.
pub fn run(backend: BackendName, model: &ModelArgs, state: Arc<AppState>, mut jobs: Jobs) {
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<()> {
        with_backend!(backend, |B, device| serve_on::<B>(&device, model, &state, &mut jobs))
    }));
    let failure = match outcome {
        Ok(Ok(())) => return,
        Ok(Err(e)) => format!("{e:#}").replace('\n', " "),
        Err(_) => format!("internal failure while loading: {}", last_panic()),
    };
    // The command reports it as it exits.
    state.set_phase(Phase::Failed(failure));
}

fn last_panic() -> String {
    crate::LAST_PANIC.lock().ok().and_then(|l| l.clone()).unwrap_or_else(|| "unknown".into())
}

fn serve_on<B: Backend>(device: &B::Device, model: &ModelArgs, state: &AppState, jobs: &mut Jobs) -> Result<()> {
    let started = Instant::now();
    let settings = &state.settings;
    let loaded = checkpoint::load::<B>(&model.load_options(), device)?;
    let options = ExtractOptions {
        constrain: settings.constrain,
        max_new_tokens: settings.max_new_tokens,
        batch: settings.max_batch,
        ..ExtractOptions::default()
    };
    let mut extractor = loaded.into_extractor(settings.schema.clone(), options)?;
    let table = TokenTable::new(extractor.tokenizer(), extractor.model().vocab_size());
    state.set_phase(Phase::Ready);
    eprintln!("model ready in {:.1} s", started.elapsed().as_secs_f64());

    while let Some(first) = jobs.rx.blocking_recv() {
        state.metrics.queue_depth.dec();
        let mut rows = first.rows();
        let mut batch = vec![first];
        while rows < settings.max_batch {
            match jobs.rx.try_recv() {
                Ok(job) => {
                    state.metrics.queue_depth.dec();
                    rows += job.rows();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let (live, gone): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|j| !j.cancelled.load(Ordering::Relaxed));
        state.metrics.cancelled.inc_by(gone.len() as u64);
        let mut extracts = Vec::new();
        let mut chats = Vec::new();
        for job in live {
            match job.work {
                Work::Extract(e) => extracts.push((e, job.cancelled)),
                Work::Chat(c) => chats.push((c, job.cancelled)),
            }
        }
        extractor = run_extracts(extractor, extracts, state);
        for (job, cancelled) in chats {
            run_chat(&extractor, &table, job, &cancelled, state);
        }
    }
    Ok(())
}

/// Runs extraction jobs, those sharing a schema and constraint together, `--max-batch` texts per
/// `extract_batch`. Between batches the texts of jobs whose client has gone are dropped, so a
/// large request that timed out stops holding the model within one batch.
fn run_extracts<B: Backend>(mut extractor: Extractor<B>, mut jobs: Vec<(ExtractJob, Arc<AtomicBool>)>, state: &AppState) -> Extractor<B> {
    while !jobs.is_empty() {
        let (schema, constrain) = (jobs[0].0.schema.clone(), jobs[0].0.constrain);
        let (group, rest): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|(j, _)| j.schema == schema && j.constrain == constrain);
        jobs = rest;
        if *extractor.schema() != schema {
            extractor = extractor.with_schema(schema);
        }
        if extractor.options().constrain != constrain {
            let options = ExtractOptions { constrain, ..*extractor.options() };
            extractor = extractor.with_options(options);
        }
        let mut results: Vec<Vec<Option<std::result::Result<Extraction, String>>>> =
            group.iter().map(|(j, _)| vec![None; j.texts.len()]).collect();
        // (job, text) pairs still to extract.
        let mut todo: std::collections::VecDeque<(usize, usize)> =
            group.iter().enumerate().flat_map(|(g, (j, _))| (0..j.texts.len()).map(move |t| (g, t))).collect();
        loop {
            todo.retain(|&(g, _)| !group[g].1.load(Ordering::Relaxed));
            let chunk: Vec<(usize, usize)> = todo.drain(..todo.len().min(state.settings.max_batch)).collect();
            if chunk.is_empty() {
                break;
            }
            let texts: Vec<&str> = chunk.iter().map(|&(g, t)| group[g].0.texts[t].as_str()).collect();
            state.metrics.rows_in_use.set(texts.len() as i64);
            let out: Vec<std::result::Result<Extraction, String>> =
                match std::panic::catch_unwind(AssertUnwindSafe(|| extractor.extract_batch(&texts))) {
                    Ok(out) => out.into_iter().map(|r| r.map_err(|e| e.to_string().replace('\n', " "))).collect(),
                    Err(_) => vec![Err(format!("internal failure: {}", last_panic())); texts.len()],
                };
            state.metrics.rows_in_use.set(0);
            for (&(g, t), r) in chunk.iter().zip(out) {
                match &r {
                    Ok(e) => {
                        state.metrics.tokens.inc_by(e.tokens as u64);
                        state.metrics.texts.with_label_values(&["ok"]).inc();
                    }
                    Err(_) => state.metrics.texts.with_label_values(&["error"]).inc(),
                }
                results[g][t] = Some(r);
            }
        }
        for ((job, cancelled), mine) in group.into_iter().zip(results) {
            if cancelled.load(Ordering::Relaxed) {
                state.metrics.cancelled.inc();
                continue;
            }
            let mine: Vec<_> = mine.into_iter().map(|r| r.unwrap_or_else(|| Err("not extracted".into()))).collect();
            // The client may have gone since the check; nothing else to do then.
            let _ = job.reply.send(mine);
        }
    }
    extractor
}

fn run_chat<B: Backend>(extractor: &Extractor<B>, table: &TokenTable, job: ChatJob, cancelled: &AtomicBool, state: &AppState) {
    state.metrics.rows_in_use.set(1);
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| chat::run(extractor, table, &job, cancelled, &state.metrics)));
    state.metrics.rows_in_use.set(0);
    let failure = match outcome {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e,
        Err(_) => chat::ChatEvent::Error { status: 500, message: format!("internal failure: {}", last_panic()) },
    };
    let _ = job.events.send(failure);
}
