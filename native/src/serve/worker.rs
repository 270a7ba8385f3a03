//! The model thread and the bounded queue into it. burn models are not meant to be shared
//! across threads, so one thread loads the model and owns the [`Extractor`]; handlers submit
//! [`Job`]s and await their replies. Extraction texts run on core's continuous-batching engine
//! (`--max-batch` rows): a text takes a row as soon as one is free, the requests with texts
//! waiting taking turns, and each request is answered when its last text finishes; rows carry
//! each request's own schema and constraint. Chats decode one at a time, a pass of the chat
//! between passes of the engine (`chat.rs`), so neither holds the other until it ends. The
//! handlers see jobs and replies, never the model.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use burn::prelude::Backend;
use tiqu_core::constrain::TokenTable;
use tiqu_core::engine::Request;
use tiqu_core::{Constrain, ExtractOptions, Extraction, Schema};
use tokio::sync::{mpsc, oneshot};

use super::chat::{self, ChatJob, ChatRun};
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
    place: Arc<Place>,
}

/// A request's place: whether its client is still there, and whether it still waits for the
/// model (counted in `tiqu_queue_depth`, which `--max-queue` bounds). Shared by the handler's
/// [`Ticket`] and the model thread, so a client that leaves frees its place at once, not when
/// the model thread reaches its job.
pub struct Place {
    /// Set when the client is gone (its handler was dropped) or timed out: the job is skipped,
    /// its texts leave their rows, or a chat stops at its next token.
    cancelled: AtomicBool,
    waiting: AtomicBool,
    cancel_counted: AtomicBool,
    depth: prometheus::IntGauge,
    cancelled_total: prometheus::IntCounter,
}

impl Place {
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Leaves the queue's depth, once: when the job starts on the model, or its client leaves
    /// while it waits. True for the call that left.
    fn leave_queue(&self) -> bool {
        let left = self.waiting.swap(false, Ordering::AcqRel);
        if left {
            self.depth.dec();
        }
        left
    }

    /// Counts the job as cancelled, once, whoever notices first.
    pub fn count_cancel(&self) {
        if !self.cancel_counted.swap(true, Ordering::AcqRel) {
            self.cancelled_total.inc();
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

/// The channel into the model thread. Admission is `--max-queue` against the depth (jobs still
/// waiting); the channel holds more, since jobs whose clients left keep their slot in it until
/// the model thread takes them off.
pub fn queue(max_queue: usize) -> (Queue, Jobs) {
    let (tx, rx) = mpsc::channel(max_queue.saturating_mul(2).max(1));
    (Queue { tx }, Jobs { rx })
}

/// Held by the handler (or its response stream) while a job is queued or running: dropping it,
/// which is what happens when the client disconnects, cancels the job (and frees its place in
/// the queue at once if it was still waiting).
pub struct Ticket {
    place: Arc<Place>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.place.cancelled.store(true, Ordering::Relaxed);
        // Still waiting: its place is freed now, and the model thread will only skip it.
        if self.place.leave_queue() {
            self.place.count_cancel();
        }
    }
}

/// Puts `work` on the queue: 503 while the model loads or when the queue is full.
pub fn submit(state: &AppState, work: Work) -> std::result::Result<Ticket, ApiError> {
    match state.phase() {
        Phase::Ready => {}
        Phase::Loading => return Err(ApiError::unavailable("the model is still loading", 2)),
        Phase::Failed(why) => return Err(ApiError::unavailable(&format!("the model failed to load: {why}"), 60)),
    }
    // The depth counts every job not started yet, those the model thread has taken off the
    // channel included (chats waiting their turn, texts waiting for a row).
    if state.metrics.queue_depth.get() >= state.settings.max_queue as i64 {
        return Err(ApiError::unavailable(&format!("the queue is full ({} requests waiting); retry later", state.settings.max_queue), 1));
    }
    // Counted before sending so that the worker's decrement can never run first.
    state.metrics.queue_depth.inc();
    let place = Arc::new(Place {
        cancelled: AtomicBool::new(false),
        waiting: AtomicBool::new(true),
        cancel_counted: AtomicBool::new(false),
        depth: state.metrics.queue_depth.clone(),
        cancelled_total: state.metrics.cancelled.clone(),
    });
    match state.queue.tx.try_send(Job { work, place: place.clone() }) {
        Ok(()) => Ok(Ticket { place }),
        Err(e) => {
            place.waiting.store(false, Ordering::Release);
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
        speculate: settings.speculate,
        ..ExtractOptions::default()
    };
    let extractor = loaded.into_extractor(settings.schema.clone(), options)?;
    let table = TokenTable::new(extractor.tokenizer(), extractor.model().vocab_size());
    state.set_phase(Phase::Ready);
    eprintln!("model ready in {:.1} s", started.elapsed().as_secs_f64());

    let mut engine = extractor.engine(settings.max_batch);
    let mut work = Extracts::default();
    // The chat decoding, a pass at a time between the engine's passes, and the chats waiting
    // for their turn (one decodes at a time: its sampling loop is not the engine's).
    let mut chat: Option<ChatRun<'_, B>> = None;
    let mut chats: VecDeque<(ChatJob, Arc<Place>)> = VecDeque::new();
    loop {
        // Block for a job only when nothing is decoding or waiting; otherwise take what has
        // arrived, as long as rows would be free for it, and decode one more pass. Jobs left in
        // the channel keep it full, which is what answers 503 under overload.
        if engine.is_idle() && work.waiting == 0 && chat.is_none() && chats.is_empty() {
            match jobs.rx.blocking_recv() {
                Some(job) => work.accept(job, &mut chats),
                None => break,
            }
        }
        // Up to --max-batch requests share the rows in turn (see `Extracts`); beyond that, jobs
        // stay in the channel, whose bound answers 503. Chats taken off it wait in `chats`,
        // still counted in the queue's depth, which `submit` holds to --max-queue.
        while engine.in_flight() + work.waiting < settings.max_batch || work.pending.len() < settings.max_batch {
            match jobs.rx.try_recv() {
                Ok(job) => work.accept(job, &mut chats),
                Err(_) => break,
            }
        }
        while chat.is_none() {
            let Some((job, place)) = chats.pop_front() else { break };
            place.leave_queue();
            if place.is_cancelled() {
                place.count_cancel();
                continue;
            }
            // Its reply channel is kept aside: a panic while starting (an allocation the
            // device refuses) fails this chat, not the server.
            let events = job.events.clone();
            match std::panic::catch_unwind(AssertUnwindSafe(|| ChatRun::start(&extractor, &table, job, place))) {
                Ok(Ok(run)) => chat = Some(run),
                Ok(Err(e)) => {
                    let _ = events.send(e);
                }
                Err(_) => {
                    let _ = events.send(chat::ChatEvent::Error { status: 500, message: format!("internal failure: {}", last_panic()) });
                }
            }
        }
        if let Some(run) = chat.as_mut() {
            let over = match std::panic::catch_unwind(AssertUnwindSafe(|| run.step(&state.metrics))) {
                Ok(step) => matches!(step, chat::Step::Over),
                Err(_) => {
                    run.fail(&format!("internal failure: {}", last_panic()));
                    true
                }
            };
            if over {
                chat = None;
            }
        }
        work.drop_departed(&mut engine);
        work.feed(&mut engine, settings.max_batch);
        state.metrics.rows_in_use.set((engine.rows_in_use() + usize::from(chat.is_some())) as i64);
        if engine.is_idle() {
            continue;
        }
        match std::panic::catch_unwind(AssertUnwindSafe(|| engine.step())) {
            Ok(done) => {
                for (id, result) in done {
                    work.finish(id, result.map_err(|e| e.to_string().replace('\n', " ")), state);
                }
                // Also before blocking on an empty queue: the gauge must not keep a past batch.
                state.metrics.rows_in_use.set((engine.rows_in_use() + usize::from(chat.is_some())) as i64);
            }
            Err(_) => {
                // The engine's rows are in an unknown state: every text in it fails, and a new
                // engine starts empty.
                work.fail_in_engine(&format!("internal failure: {}", last_panic()), state);
                engine = extractor.engine(settings.max_batch);
            }
        }
    }
    state.metrics.rows_in_use.set(0);
    Ok(())
}

/// One extraction job being answered: its results so far, and how many texts are still out.
struct Open {
    job: ExtractJob,
    schema: Arc<Schema>,
    place: Arc<Place>,
    results: Vec<Option<std::result::Result<Extraction, String>>>,
    left: usize,
    /// The next of its texts to take a row.
    next: usize,
}

/// The extraction jobs in progress: jobs with texts still waiting for a row are in `pending`,
/// served in turn one text at a time, so a request of a thousand texts does not hold every row
/// until it is done while a one-text request behind it waits; `in_engine` maps the engine's
/// request ids back to (job, text).
#[derive(Default)]
struct Extracts {
    open: HashMap<usize, Open>,
    pending: VecDeque<usize>,
    /// Texts waiting for a row, over all pending jobs.
    waiting: usize,
    in_engine: HashMap<usize, (usize, usize)>,
    next_key: usize,
}

impl Extracts {
    /// Takes a job off the queue: a chat waits in `chats` for its turn, an extraction's texts
    /// join `pending`.
    fn accept(&mut self, job: Job, chats: &mut VecDeque<(ChatJob, Arc<Place>)>) {
        // Either still waits (and counts in the queue's depth) until it starts.
        let e = match job.work {
            Work::Chat(chat) => {
                chats.push_back((chat, job.place));
                return;
            }
            Work::Extract(e) => e,
        };
        if job.place.is_cancelled() {
            job.place.leave_queue();
            job.place.count_cancel();
            return;
        }
        let key = self.next_key;
        self.next_key += 1;
        let n = e.texts.len();
        let schema = Arc::new(e.schema.clone());
        self.open.insert(key, Open { job: e, schema, place: job.place, results: vec![None; n], left: n, next: 0 });
        if n == 0 {
            self.close(key);
        } else {
            self.pending.push_back(key);
            self.waiting += n;
        }
    }

    /// Submits waiting texts while rows are free; texts of a job whose client has gone are
    /// dropped instead, so a request that timed out stops taking rows.
    fn feed<B: Backend>(&mut self, engine: &mut tiqu_core::engine::Engine<'_, B>, rows: usize) {
        while engine.in_flight() < rows {
            let Some(key) = self.pending.pop_front() else { break };
            let Some(open) = self.open.get_mut(&key) else { continue };
            let t = open.next;
            open.next += 1;
            self.waiting -= 1;
            if open.next < open.job.texts.len() {
                self.pending.push_back(key);
            }
            // Its first text taking a row starts the job: it no longer waits.
            open.place.leave_queue();
            if open.place.is_cancelled() {
                open.results[t] = Some(Err("the client has gone".into()));
                open.left -= 1;
                if open.left == 0 {
                    self.close(key);
                }
                continue;
            }
            let request = Request { text: open.job.texts[t].clone(), schema: open.schema.clone(), constrain: open.job.constrain };
            let id = engine.submit(request);
            self.in_engine.insert(id, (key, t));
        }
    }

    /// Texts already decoding for a client that has gone leave their rows before the next pass
    /// (a text asked for in json mode may otherwise decode to --max-new-tokens for nobody).
    fn drop_departed<B: Backend>(&mut self, engine: &mut tiqu_core::engine::Engine<'_, B>) {
        let departed: Vec<usize> = self
            .in_engine
            .iter()
            .filter(|(_, (key, _))| self.open.get(key).is_some_and(|o| o.place.is_cancelled()))
            .map(|(&id, _)| id)
            .collect();
        for id in departed {
            engine.cancel(id);
            if let Some((key, t)) = self.in_engine.remove(&id) {
                self.give(key, t, Err("the client has gone".into()));
            }
        }
    }

    fn finish(&mut self, id: usize, result: std::result::Result<Extraction, String>, state: &AppState) {
        let Some((key, t)) = self.in_engine.remove(&id) else { return };
        match &result {
            Ok(e) => {
                state.metrics.tokens.inc_by(e.tokens as u64);
                state.metrics.texts.with_label_values(&["ok"]).inc();
            }
            Err(_) => state.metrics.texts.with_label_values(&["error"]).inc(),
        }
        self.give(key, t, result);
    }

    /// Text `t` of job `key` is settled; the job is answered once all its texts are.
    fn give(&mut self, key: usize, t: usize, result: std::result::Result<Extraction, String>) {
        let Some(open) = self.open.get_mut(&key) else { return };
        open.results[t] = Some(result);
        open.left -= 1;
        if open.left == 0 {
            self.close(key);
        }
    }

    fn fail_in_engine(&mut self, why: &str, state: &AppState) {
        let ids: Vec<usize> = self.in_engine.keys().copied().collect();
        for id in ids {
            self.finish(id, Err(why.to_string()), state);
        }
    }

    /// Sends a finished job's results (its client may have gone since: nothing to do then).
    fn close(&mut self, key: usize) {
        let Some(open) = self.open.remove(&key) else { return };
        open.place.leave_queue();
        if open.place.is_cancelled() {
            open.place.count_cancel();
            return;
        }
        let results = open.results.into_iter().map(|r| r.unwrap_or_else(|| Err("not extracted".into()))).collect();
        let _ = open.job.reply.send(results);
    }
}
