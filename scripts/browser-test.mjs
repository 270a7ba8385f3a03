// Drives the demo page (served by `tiqu serve --demo`) in headless Chromium through playwright-core.
// Called by scripts/test-browser with one JSON argument:
//   {url, text, fixture, pickedExpected, runs: [{name, query, expected, blocks, generated}], badInputs,
//    webgpu, bench}
// (`fixture`: a single-file model folder whose files the bad-input checks pick, and whose native
// fields are `pickedExpected`.)
// Each run loads the model with the page's own code and checks the extracted fields equal the
// native CLI's (`expected`); badInputs checks that wrong files give a visible error and leave the
// page usable; webgpu tries Chromium's software WebGPU and reports what happened (never fails).
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const require = createRequire(process.env.TIQU_NODE_PREFIX + '/');
const { chromium } = require('playwright-core');

const spec = JSON.parse(process.argv[2]);
const BASE_FLAGS = ['--headless', '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
let failures = 0;
const started = Date.now();
const at = () => `${((Date.now() - started) / 1000).toFixed(1)}s`;

function check(ok, what) {
  if (ok) {
    console.log(`  ok    ${what}`);
  } else {
    console.log(`  FAIL  ${what}`);
    failures += 1;
  }
}

async function open(browser, query, url = spec.url) {
  const page = await browser.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error') console.log(`  [page console] ${m.text()}`);
  });
  page.on('pageerror', (e) => console.log(`  [page error] ${e.message}`));
  await page.goto(`${url}?${query}`);
  await page.evaluate(() => window.tiqu.ready);
  return page;
}

const errorText = (page) => page.evaluate(() => {
  const box = document.getElementById('error');
  return box.classList.contains('shown') && getComputedStyle(box).display !== 'none' ? box.textContent : null;
});

async function run(browser, r) {
  console.log(`${r.name} (at ${at()}):`);
  const page = await open(browser, r.query, r.url);
  const loaded = await page.evaluate(() => window.tiqu.loadUrl('model/').catch((e) => ({ error: e.message })));
  if (loaded.error) {
    check(false, `load: ${loaded.error}`);
    await page.close();
    return null;
  }
  console.log(`  backend: ${loaded.backend}; fetch ${loaded.fetchMs.toFixed(0)} ms, load ${loaded.loadMs.toFixed(0)} ms; embedding blocks ${loaded.info.embedding_blocks}`);
  if (r.blocks != null) check(loaded.info.embedding_blocks === r.blocks, `embedding in ${r.blocks} blocks (got ${loaded.info.embedding_blocks})`);
  const out = await page.evaluate((t) => window.tiqu.extract(t).catch((e) => ({ error: e.message })), spec.text);
  if (out.error) {
    check(false, `extract: ${out.error}`);
    await page.close();
    return null;
  }
  const same = JSON.stringify(out.fields) === JSON.stringify(r.expected);
  check(same, `fields equal the native CLI's: ${JSON.stringify(out.fields)}${same ? '' : ` vs native ${JSON.stringify(r.expected)}`}`);
  const shown = await page.evaluate(() => JSON.parse(document.getElementById('json').textContent));
  check(JSON.stringify(shown) === JSON.stringify(out.fields), 'the page shows them as JSON');
  const rows = await page.evaluate(() => document.querySelectorAll('#table tbody tr').length);
  check(rows === Object.keys(out.fields).length, `and as a table (${rows} rows)`);
  console.log(`  extract: ${out.tokens} tokens in ${out.seconds.toFixed(3)} s = ${out.tokens_per_s.toFixed(1)} tokens/s`);
  let gen = null;
  if (spec.bench && r.generated !== null) {
    // Medians of 5 after the first call (which also warms up).
    const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const ex = [];
    for (let i = 0; i < 5; i++) ex.push((await page.evaluate((t) => window.tiqu.extract(t), spec.text)).tokens_per_s);
    const gens = [];
    for (let i = 0; i < 6; i++) gens.push(await page.evaluate(() => window.tiqu.generate('你好', 32)));
    gen = gens[0];
    check(JSON.stringify(gen.text) === JSON.stringify(r.generated), `generate 32 tokens equals the native CLI's text`);
    gen.median_tokens_per_s = median(gens.slice(1).map((g) => g.tokens_per_s));
    out.median_tokens_per_s = median(ex);
    console.log(`  bench: extract median ${out.median_tokens_per_s.toFixed(1)} tokens/s (5 runs); generate ${gen.tokens} tokens (prompt ${gen.prompt_tokens}) median ${gen.median_tokens_per_s.toFixed(1)} tokens/s (5 runs after one warm-up)`);
  }
  await page.close();
  return { name: r.name, backend: loaded.backend, fetch_ms: loaded.fetchMs, load_ms: loaded.loadMs, extract: out, generate: gen };
}

async function badInputs(browser) {
  console.log(`bad inputs (at ${at()}):`);
  const page = await open(browser, 'backend=cpu');
  const dir = spec.fixture;
  const file = (name, buffer) => ({ name, mimeType: 'application/octet-stream', buffer: buffer ?? readFileSync(join(dir, name)) });
  const pick = async (files) => {
    await page.setInputFiles('#model-files', files);
    await page.click('#load-files');
    await page.waitForFunction(() => !document.getElementById('load-files').disabled);
    return errorText(page);
  };
  let err = await page.evaluate(() => window.tiqu.loadUrl('no-such-model/').then(() => null, (e) => e.message));
  let shown = await errorText(page);
  check(err && shown && shown.includes('config.json') && shown.includes('404'), `a folder URL without config.json: "${shown}"`);
  const good = ['config.json', 'tokenizer.json', 'model.safetensors'].map((n) => file(n));
  shown = await pick([file('config.json'), file('tokenizer.json')]);
  check(shown && shown.includes('no model.safetensors'), `no weights: "${shown}"`);
  shown = await pick([file('config.json'), file('tokenizer.json'), file('model.safetensors', Buffer.from('this is not a safetensors file at all'))]);
  check(shown && shown.includes('model.safetensors'), `a model.safetensors that is not one: "${shown}"`);
  shown = await pick([file('config.json', Buffer.from('{"hidden_size": ')), file('tokenizer.json'), file('model.safetensors')]);
  check(shown && shown.includes('config.json'), `a config.json that is not JSON: "${shown}"`);
  shown = await pick([file('config.json'), file('tokenizer.json', Buffer.from('{}')), file('model.safetensors')]);
  check(shown && shown.includes('tokenizer.json'), `a wrong tokenizer.json: "${shown}"`);
  // Too big for the device: a per-tensor limit below one embedding row (as a small adapter's).
  const small = await open(browser, 'backend=cpu&maxTensorBytes=32');
  err = await small.evaluate(() => window.tiqu.loadUrl('model/').then(() => null, (e) => e.message));
  shown = await errorText(small);
  check(shown && shown.includes("over the device's limit"), `a model over the device's per-tensor limit: "${shown}"`);
  await small.close();
  // Still usable: the good files load and extract.
  shown = await pick(good);
  check(shown === null, 'after all that, the right files load on the same page');
  const out = await page.evaluate((t) => window.tiqu.extract(t).catch((e) => ({ error: e.message })), spec.text);
  check(!out.error && out.fields && JSON.stringify(out.fields) === JSON.stringify(spec.pickedExpected), `and extract the native CLI's fields (${JSON.stringify(out.fields ?? out.error)})`);
  await page.close();
}

async function webgpu() {
  // Chromium's software WebGPU: SwiftShader's Vulkan under Dawn. Informational only.
  const flags = [...BASE_FLAGS, '--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader', '--use-webgpu-adapter=swiftshader', '--disable-vulkan-surface'];
  console.log(`WebGPU on software (${flags.slice(BASE_FLAGS.length).join(' ')}) (at ${at()}):`);
  let browser;
  try {
    browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: flags });
    const page = await browser.newPage();
    // The tied fixture with its embedding forced into 1 MiB blocks, as a 0.6B model's would be.
    await page.goto(`${spec.runs[0].url ?? spec.url}?backend=webgpu&maxTensorBytes=1048576`);
    const adapter = await page.evaluate(async () => {
      if (!navigator.gpu) return 'no navigator.gpu';
      const a = await navigator.gpu.requestAdapter();
      if (!a) return 'navigator.gpu.requestAdapter() gave null';
      const info = a.info || {};
      return `adapter: ${info.vendor || '?'} ${info.architecture || ''} ${info.description || ''} (maxStorageBufferBindingSize ${a.limits.maxStorageBufferBindingSize})`;
    });
    console.log(`  ${adapter}`);
    if (adapter.startsWith('adapter')) {
      const t0 = Date.now();
      let timer;
      await page.evaluate(() => window.tiqu.ready);
      const r = spec.runs[0];
      const result = await Promise.race([
        (async () => {
          const loaded = await page.evaluate(() => window.tiqu.loadUrl('model/').catch((e) => ({ error: e.message })));
          if (loaded.error) return `load failed: ${loaded.error}`;
          const out = await page.evaluate((t) => window.tiqu.extract(t).catch((e) => ({ error: e.message })), spec.text);
          if (out.error) return `extract failed: ${out.error}`;
          const same = JSON.stringify(out.fields) === JSON.stringify(r.expected);
          return `${loaded.backend}, embedding in ${loaded.info.embedding_blocks} blocks: load ${loaded.loadMs.toFixed(0)} ms, ${out.tokens} tokens at ${out.tokens_per_s.toFixed(1)} tokens/s; fields ${same ? 'equal' : 'DIFFER from'} the native CLI's: ${JSON.stringify(out.fields)}`;
        })(),
        new Promise((resolve) => {
          timer = setTimeout(() => resolve('gave up after 180 s'), 180000);
        }),
      ]);
      clearTimeout(timer);
      console.log(`  ${result} (${((Date.now() - t0) / 1000).toFixed(0)} s in all)`);
    }
  } catch (e) {
    console.log(`  could not run: ${e.message.split('\n')[0]}`);
  } finally {
    if (browser) await browser.close().catch(() => {});
  }
}

const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: [...BASE_FLAGS, '--disable-gpu'] });
console.log(`Chromium started (at ${at()})`);
const results = [];
try {
  for (const r of spec.runs) results.push(await run(browser, r));
  if (spec.badInputs) await badInputs(browser);
} finally {
  await browser.close();
}
if (spec.webgpu) await webgpu();
if (process.env.TIQU_BROWSER_RESULTS) {
  (await import('node:fs')).writeFileSync(process.env.TIQU_BROWSER_RESULTS, JSON.stringify(results, null, 2));
}
if (failures) {
  console.log(`${failures} browser check(s) failed`);
  process.exit(1);
}
console.log(`browser checks passed (${at()})`);
process.exit(0);
