// The demo page: fetch (or pick) a model folder's files, load them into tiqu-wasm, extract.
// Errors go to the red box on the page; the page stays usable after any of them, even after the
// wasm instance dies (a Rust panic aborts it): the module is then instantiated afresh.
// For scripts (scripts/test-browser): window.tiqu.{loadUrl, extract, generate, ready}, and the
// query string ?autoload=1&backend=cpu|webgpu|auto&maxTensorBytes=N&quantize=none|int8|int4&quantizeBlock=N&dtype=f32|f16.

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

let wasm = null; // the module's exports
let generation = 0; // how many times the module was instantiated
let model = null;

async function instantiate() {
  generation += 1;
  const mod = await import(`./pkg/tiqu_wasm.js?instance=${generation}`);
  await mod.default();
  wasm = mod;
}

function showError(message) {
  const box = $('error');
  box.textContent = message;
  box.classList.add('shown');
}

function clearError() {
  $('error').classList.remove('shown');
  $('error').textContent = '';
}

function message(e) {
  if (e instanceof Error) return e.message;
  return String(e);
}

// A trap (a panic in Rust) leaves the instance unusable: start a new one, drop the model.
async function recover(e) {
  if (e instanceof WebAssembly.RuntimeError) {
    model = null;
    $('extract').disabled = true;
    $('status').textContent = 'The model crashed and was unloaded; load it again.';
    await instantiate();
    return `internal error (${e.message}); the model was unloaded — see the console`;
  }
  return message(e);
}

function status(text) {
  $('status').textContent = text;
}

function progress(done, total) {
  $('progress').max = Math.max(total, 1);
  $('progress').value = done;
}

const MB = (n) => (n / (1 << 20)).toFixed(1) + ' MB';

// Fetches one file; `optional` files may be missing (404 → null).
async function fetchFile(base, name, optional, onBytes) {
  const url = new URL(name, base).href;
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new Error(`${name}: cannot fetch ${url} (${message(e)})`);
  }
  if (!response.ok) {
    if (optional && response.status === 404) return null;
    throw new Error(`${name}: HTTP ${response.status} at ${url}`);
  }
  const total = Number(response.headers.get('Content-Length')) || 0;
  const reader = response.body.getReader();
  const chunks = [];
  let got = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    got += value.length;
    onBytes(value.length, total);
  }
  const bytes = new Uint8Array(got);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.length;
  }
  return bytes;
}

// The files of a model folder at `base`, as `tiqu` reads a folder: config.json, tokenizer.json,
// generation_config.json (optional), model.safetensors or else the index's shards.
async function fetchModel(base, adapterBase) {
  base = new URL(base.endsWith('/') ? base : base + '/', location.href).href;
  const files = {};
  let done = 0;
  let known = 0;
  const seen = new Set();
  const onBytes = (name) => (n, total) => {
    if (!seen.has(name)) {
      seen.add(name);
      known += total;
    }
    done += n;
    progress(done, Math.max(known, done));
    status(`Fetching ${name}: ${MB(done)} of ${MB(Math.max(known, done))}`);
  };
  const get = async (b, name, optional) => {
    const bytes = await fetchFile(b, name, optional, onBytes(b + name));
    if (bytes) files[name] = bytes;
    return bytes;
  };
  await get(base, 'config.json', false);
  await get(base, 'tokenizer.json', false);
  await get(base, 'generation_config.json', true);
  // transformers' order (and tiqu's): a single file first, then an index's shards.
  const single = await get(base, 'model.safetensors', true);
  const index = single ? null : await get(base, 'model.safetensors.index.json', true);
  if (single) {
    // Nothing more: the weights are in one file.
  } else if (index) {
    let map;
    try {
      map = JSON.parse(new TextDecoder().decode(index)).weight_map;
    } catch (e) {
      throw new Error(`model.safetensors.index.json: not valid JSON (${message(e)})`);
    }
    if (!map) throw new Error('model.safetensors.index.json: no weight_map');
    for (const shard of [...new Set(Object.values(map))].sort()) await get(base, shard, false);
  } else {
    await get(base, 'model.safetensors', false);
  }
  let adapter = null;
  if (adapterBase) {
    const a = new URL(adapterBase.endsWith('/') ? adapterBase : adapterBase + '/', location.href).href;
    adapter = {};
    for (const name of ['adapter_config.json', 'adapter_model.safetensors']) {
      adapter[name] = await fetchFile(a, name, false, onBytes(a + name));
    }
  }
  return { files, adapter };
}

async function readPicked(input) {
  const out = {};
  for (const f of input.files) out[f.name] = new Uint8Array(await f.arrayBuffer());
  return out;
}

const busy = (on) => {
  for (const id of ['fetch', 'load-files']) $(id).disabled = on;
  if (on) $('extract').disabled = true;
  else $('extract').disabled = !model;
};

async function loadFiles(files, adapter, fetchMs) {
  const backend = params.get('backend') || $('backend').value;
  const options = { backend };
  if (params.get('maxTensorBytes')) options.maxTensorBytes = Number(params.get('maxTensorBytes'));
  options.quantize = params.get('quantize') || $('quantize').value;
  if (params.get('quantizeBlock')) options.quantizeBlock = Number(params.get('quantizeBlock'));
  if (params.get('dtype')) options.dtype = params.get('dtype');
  if (model) {
    model.free();
    model = null;
  }
  status('Loading weights onto the device…');
  const m = await wasm.Model.load(files, adapter, options);
  model = m;
  const info = JSON.parse(m.info);
  status(`Loaded on ${m.backend} in ${m.loadMs.toFixed(0)} ms` + (fetchMs != null ? ` (fetched in ${fetchMs.toFixed(0)} ms)` : '') +
    (info.embedding_blocks > 1 ? `; embedding in ${info.embedding_blocks} blocks of ≤ ${MB(info.max_tensor_bytes)}` : ''));
  return { backend: m.backend, loadMs: m.loadMs, fetchMs, info };
}

// Loads the folder at `url` (and optional adapter url); resolves to what loadFiles reports.
async function loadUrl(url, adapterUrl) {
  clearError();
  busy(true);
  try {
    const t0 = performance.now();
    const { files, adapter } = await fetchModel(url, adapterUrl || null);
    return await loadFiles(files, adapter, performance.now() - t0);
  } catch (e) {
    const text = await recover(e);
    showError(`Could not load the model: ${text}`);
    status('No model loaded.');
    throw new Error(text);
  } finally {
    busy(false);
  }
}

async function loadPicked() {
  clearError();
  busy(true);
  try {
    const files = await readPicked($('model-files'));
    if (Object.keys(files).length === 0) throw new Error('pick the model folder\'s files first');
    const adapterFiles = await readPicked($('adapter-files'));
    const adapter = Object.keys(adapterFiles).length ? adapterFiles : null;
    progress(1, 1);
    await loadFiles(files, adapter, null);
  } catch (e) {
    showError(`Could not load the model: ${await recover(e)}`);
    status('No model loaded.');
  } finally {
    busy(false);
  }
}

function render(result) {
  const tbody = $('table').querySelector('tbody');
  tbody.replaceChildren();
  for (const [k, v] of Object.entries(result.fields)) {
    const tr = document.createElement('tr');
    const th = document.createElement('th');
    th.textContent = k;
    const td = document.createElement('td');
    td.textContent = v === null ? '(null)' : v;
    tr.append(th, td);
    tbody.append(tr);
  }
  $('json').textContent = JSON.stringify(result.fields, null, 2);
  $('stats').innerHTML = '';
  for (const s of [`backend: ${result.backend}`, `${result.tokens} tokens in ${result.seconds.toFixed(2)} s`,
    `${result.tokens_per_s.toFixed(1)} tokens/s`].concat(result.warning ? [result.warning] : [])) {
    const span = document.createElement('span');
    span.textContent = s;
    $('stats').append(span);
  }
}

async function extract(text) {
  clearError();
  if (!model) {
    const e = new Error('load a model first');
    showError(e.message);
    throw e;
  }
  busy(true);
  try {
    const result = JSON.parse(await model.extract(text ?? $('text').value));
    render(result);
    return result;
  } catch (e) {
    const text = await recover(e);
    showError(`Extraction failed: ${text}`);
    throw new Error(text);
  } finally {
    busy(false);
  }
}

async function generate(prompt, maxNewTokens) {
  if (!model) throw new Error('load a model first');
  return JSON.parse(await model.generate(prompt, maxNewTokens));
}

$('fetch').onclick = () => loadUrl($('model-url').value, $('adapter-url').value).catch(() => {});
$('load-files').onclick = () => loadPicked();
$('extract').onclick = () => extract().catch(() => {});

window.tiqu = {
  loadUrl,
  extract,
  generate,
  ready: (async () => {
    try {
      await instantiate();
    } catch (e) {
      showError(`Could not start the WebAssembly module (was scripts/build-wasm run?): ${message(e)}`);
      throw e;
    }
    $('gpu-note').textContent = navigator.gpu ? 'navigator.gpu is present' : 'no navigator.gpu here: CPU only';
    try {
      const demo = await (await fetch('demo.json')).json();
      if (demo.model) $('model-url').value = demo.model;
      if (demo.adapter) $('adapter-url').value = demo.adapter;
    } catch (_) {
      // A plain static server: keep the defaults.
    }
    if (params.get('autoload')) await loadUrl($('model-url').value, $('adapter-url').value).catch(() => {});
  })(),
};
