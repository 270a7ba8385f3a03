// The run report in headless Chromium (playwright-core), on run folders made here by hand (no
// training): a 10,000-step LoRA run with extraction metrics at its checkpoints, a full run with
// another learning rate, and an older run whose checkpoints have the eval loss only.
// Usage: node scripts/report-test.mjs PATH/TO/tiqu   (scripts/test-browser runs it last)
// Proves: the report opens offline and quickly; the loss chart starts on a log axis whose
// labels are decades and the linear toggle changes them; hovering a point shows its step and
// value; the smoothing slider redraws; the extraction chart is there when the eval lines carry
// extraction metrics and not otherwise; `runs compare --html` draws both runs and highlights a
// setting that differs, not one that does not.
import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, statSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const require = createRequire((process.env.TIQU_NODE_PREFIX || `${process.env.HOME}/.cache/tiqu-browser`) + '/');
const { chromium } = require('playwright-core');

const tiqu = process.argv[2];
if (!tiqu) {
  console.log('usage: node scripts/report-test.mjs PATH/TO/tiqu');
  process.exit(2);
}
let failures = 0;
function check(ok, what) {
  console.log(`  ${ok ? 'ok  ' : 'FAIL'}  ${what}`);
  if (!ok) failures += 1;
}

// A run folder as the training loop leaves it.
function makeRun(dir, { method, lr, steps, save, extraction }) {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.toml'), [
    'model = "Qwen/Qwen3-0.6B"', `method = "${method}"`, 'random_weights = false', 'data = "train.jsonl"', 'eval_data = "eval.jsonl"',
    'r = 8', 'lora_alpha = 32.0', 'lora_dropout = 0.1', 'target_modules = ["q_proj", "v_proj"]', 'use_rslora = false',
    `learning_rate = ${lr}`, `save_steps = ${save}`, 'seed = 42', ''].join('\n'));
  const lines = [];
  for (let s = 1; s <= steps; s++) {
    const loss = 7.9 * Math.exp(-s / 40) + 0.002 + 0.001 * ((s * 7919) % 13);
    lines.push(JSON.stringify({ step: s, epoch: s / 100, loss, lr: lr * (1 - s / steps), grad_norm: 1 / s, tokens: 512, label_tokens: 64,
      tokens_per_s: 900 + (s % 10), step_s: 0.57, elapsed_s: 0.57 * s }));
    if (s % save === 0) {
      const q = s / steps;
      lines.push(JSON.stringify(extraction
        ? { step: s, eval_loss: 0.5 / s + 0.01, eval_records: 32, eval_all_fields_exact: 0.9 * q, eval_json_valid: 1, eval_hallucinated: 0,
            eval_per_field: { name: { exact: q, f1: q }, address: { exact: 0.95 * q, f1: 0.97 }, email: { exact: q, f1: 1 }, question: { exact: 0.8 * q, f1: 0.9 } } }
        : { step: s, eval_loss: 0.5 / s + 0.01 }));
    }
  }
  writeFileSync(join(dir, 'metrics.jsonl'), lines.join('\n') + '\n');
  writeFileSync(join(dir, 'summary.json'), JSON.stringify({ steps, final_loss: 0.022380830720067024, first_loss: 7.9, tokens_per_s: 903.3, elapsed_s: 0.57 * steps,
    trainable: 'trainable params: 2,944', records_cut: 0, records_skipped: 0, machine: 'test machine', backend: 'cpu', dtype: 'f32', tiqu_version: '0.1.0', method }));
}

const root = mkdtempSync(join(tmpdir(), 'tiqu-report-'));
const [long, full, old] = ['long', 'full', 'old'].map((n) => join(root, n));
makeRun(long, { method: 'lora', lr: 1e-4, steps: 10000, save: 50, extraction: true });
makeRun(full, { method: 'full', lr: 3e-4, steps: 3000, save: 50, extraction: true });
makeRun(old, { method: 'lora', lr: 1e-4, steps: 300, save: 50, extraction: false });
for (const dir of [long, full, old]) execFileSync(tiqu, ['runs', 'report', dir], { stdio: ['ignore', 'ignore', 'inherit'] });
const comparePage = join(root, 'compare.html');
execFileSync(tiqu, ['runs', 'compare', long, full, '--html', comparePage], { stdio: ['ignore', 'ignore', 'inherit'] });

const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
const requests = [];
async function open(file) {
  const page = await browser.newPage({ viewport: { width: 1000, height: 900 } });
  page.on('pageerror', (e) => check(false, `no script error (${e.message})`));
  page.on('request', (r) => { if (!r.url().startsWith('file://')) requests.push(r.url()); });
  const t0 = Date.now();
  await page.goto(`file://${file}`);
  await page.waitForSelector('body[data-ready="true"]', { timeout: 10000 });
  return { page, ms: Date.now() - t0 };
}
// Tick labels of a chart's y axis that are displayed (the other axis is hidden by CSS).
const yLabels = (page, id) => page.evaluate((id) => {
  const fig = document.getElementById(id);
  return [...fig.querySelectorAll('g.ax-log, g.ax-lin')].filter((g) => getComputedStyle(g).display !== 'none')
    .flatMap((g) => [...g.querySelectorAll('text')].map((t) => t.textContent));
}, id);
const pathCount = (page, id) => page.evaluate((id) => [...document.querySelectorAll(`#${id} g.lines path`)].filter((p) => p.getAttribute('d')).length, id);
// Moves the mouse over a curve's point (index i), using the SVG's own transform to the screen.
async function hover(page, id, curve, i) {
  const at = await page.evaluate(({ id, curve, i }) => {
    const fig = document.getElementById(id);
    fig.scrollIntoView({ block: 'center' });
    const d = JSON.parse(fig.querySelector('script.data').textContent);
    const [x] = d.curves[curve].pts[i];
    const svg = fig.querySelector('svg');
    const [left, top, width, height] = d.box;
    const px = left + ((x - d.x[0]) / (d.x[1] - d.x[0])) * width;
    const p = new DOMPoint(px, top + height / 2).matrixTransform(svg.getScreenCTM());
    return { x: p.x, y: p.y, step: x, near: (d.x[1] - d.x[0]) / 100 };
  }, { id, curve, i });
  await page.mouse.move(at.x, at.y);
  const tip = await page.evaluate((id) => {
    const t = document.querySelector(`#${id} .tip`);
    return t.hidden ? null : t.textContent;
  }, id);
  const shown = tip && /step (\d+)/.exec(tip);
  // The mouse lands on whole pixels: the point read out may be a neighbour of the one aimed at.
  return { tip, step: at.step, ok: !!shown && Math.abs(Number(shown[1]) - at.step) <= at.near };
}

try {
  console.log('run report, 10,000 steps with extraction metrics:');
  const size = statSync(join(long, 'report.html')).size;
  const { page, ms } = await open(join(long, 'report.html'));
  check(size < 600000 && ms < 5000, `light: ${(size / 1024).toFixed(0)} KiB, ready in ${ms} ms`);
  const log = await yLabels(page, 'chart-loss');
  const decade = /^(1e-?\d+|0\.0*1|10*)$/;
  check(log.length >= 2 && log.every((l) => decade.test(l)), `the loss chart opens on a log axis labelled in decades: ${log.join(' ')}`);
  check(new Set(log).size === log.length, 'no label repeats');
  check(await pathCount(page, 'chart-loss') >= 2, 'train and eval loss drawn');
  const h = await hover(page, 'chart-loss', 0, 1000);
  check(h.ok && h.tip.includes('train loss'), `hovering a point shows its step and value: "${h.tip}"`);
  const before = await page.evaluate(() => document.querySelector('#chart-loss g.lines path.curve').getAttribute('d'));
  await page.click('#chart-loss button[data-scale="lin"]');
  const lin = await yLabels(page, 'chart-loss');
  const after = await page.evaluate(() => document.querySelector('#chart-loss g.lines path.curve').getAttribute('d'));
  check(lin.length >= 3 && lin.join() !== log.join() && lin.includes('0'), `linear toggle changes the labels: ${lin.join(' ')}`);
  check(before !== after, 'and redraws the curves');
  const smooth = await page.evaluate(() => document.querySelectorAll('#chart-loss g.lines path.raw').length);
  await page.evaluate(() => { const s = document.getElementById('smoothing'); s.value = '0'; s.dispatchEvent(new Event('input')); });
  const unsmoothed = await page.evaluate(() => document.querySelectorAll('#chart-loss g.lines path.raw').length);
  check(smooth === 1 && unsmoothed === 0, `smoothing draws the raw curve faintly behind the smoothed one, and 0 turns it off (${smooth} → ${unsmoothed})`);
  const evalLabels = await yLabels(page, 'chart-eval');
  const evalCurves = await pathCount(page, 'chart-eval');
  check(evalLabels.includes('0') && evalLabels.includes('1') && evalCurves >= 6, `the extraction chart: ${evalCurves} curves on 0..1`);
  const h2 = await hover(page, 'chart-eval', 0, 100);
  check(h2.ok && h2.tip.includes('all fields exact'), `hover on the extraction chart: "${h2.tip}"`);
  await page.close();

  console.log('an older run (eval loss only):');
  const o = (await open(join(old, 'report.html'))).page;
  check(await o.evaluate(() => !!document.getElementById('chart-loss') && !document.getElementById('chart-eval')), 'a loss chart and no extraction chart');
  await o.close();

  console.log('runs compare --html:');
  const c = (await open(comparePage)).page;
  const colors = await c.evaluate(() => new Set([...document.querySelectorAll('#chart-loss g.lines path.curve')].map((p) => p.getAttribute('stroke'))).size);
  check(colors === 2, `both runs on the loss chart (${colors} colours)`);
  const rows = await c.evaluate(() => [...document.querySelectorAll('table.settings tbody tr')].map((tr) => ({
    key: tr.cells[0].textContent, differs: tr.classList.contains('differs'), bg: getComputedStyle(tr.cells[1]).backgroundColor })));
  const lr = rows.find((r) => r.key.includes('learning_rate'));
  const seed = rows.find((r) => r.key.includes('seed'));
  check(lr && lr.differs && lr.bg !== 'rgba(0, 0, 0, 0)', `learning_rate differs and is highlighted (${lr && lr.bg})`);
  check(seed && !seed.differs && seed.bg === 'rgba(0, 0, 0, 0)', 'seed is the same and is not');
  const hc = await hover(c, 'chart-loss', 0, 500);
  check(hc.tip && hc.tip.includes('long train') && hc.tip.includes('full train'), `hover lists both runs: "${hc.tip}"`);
  await c.close();
  check(requests.length === 0, `nothing fetched from the network (${requests.join(' ')})`);
} finally {
  await browser.close();
  rmSync(root, { recursive: true, force: true });
}
if (failures) {
  console.log(`${failures} report check(s) failed`);
  process.exit(1);
}
console.log('report checks passed');
