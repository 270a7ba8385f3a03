// Draws the curves of every `figure.chart` from its embedded JSON (chart.rs writes the axes),
// smooths per-step curves with a debiased EMA (as TensorBoard and SwanLab), switches between
// the log and linear y axes, and reads values out on hover. No dependencies: reports open offline.
(() => {
  const NS = 'http://www.w3.org/2000/svg';
  const slider = document.getElementById('smoothing');
  const shown = document.getElementById('smoothing-value');
  let weight = slider ? Number(slider.value) : 0;

  // As ticks.rs's fmt_figure: four significant digits, no trailing zeros.
  const fmt = (v) => {
    if (v === 0) return '0';
    const a = Math.abs(v);
    if (a >= 1e-4 && a < 1e6) return String(Number(v.toPrecision(4)));
    return v.toExponential(3).replace(/\.?0+e/, 'e').replace('e+', 'e');
  };

  // A gap of `unit` steps weighs as one point, so thinned curves (bucket means) and sparse
  // ones smooth over the same span of steps as the full per-step curve would.
  const ema = (pts, unit, w) => {
    if (w <= 0) return pts;
    let s = 0, n = 0, prev = null;
    return pts.map(([x, y]) => {
      const a = prev === null ? w : Math.pow(w, Math.max(x - prev, 0) / unit);
      s = a * s + (1 - a) * y;
      n = a * n + (1 - a);
      prev = x;
      return [x, s / n];
    });
  };

  const nearest = (pts, x) => {
    let lo = 0, hi = pts.length - 1;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (pts[mid][0] < x) lo = mid; else hi = mid;
    }
    return Math.abs(pts[lo][0] - x) <= Math.abs(pts[hi][0] - x) ? pts[lo] : pts[hi];
  };

  function setup(fig) {
    const d = JSON.parse(fig.querySelector('script.data').textContent);
    const [LEFT, TOP, PW, PH] = d.box; // the plot's box in SVG units (chart.rs)
    const svg = fig.querySelector('svg');
    const lines = svg.querySelector('g.lines');
    const dots = svg.querySelector('g.dots');
    const guide = svg.querySelector('line.guide');
    const tip = fig.querySelector('.tip');
    const sx = (x) => LEFT + ((x - d.x[0]) / (d.x[1] - d.x[0])) * PW;
    const sy = (y) => {
      const log = fig.dataset.scale === 'log';
      const [lo, hi] = log ? d.log : d.lin;
      if (log && !(y > 0)) return null;
      const f = log ? Math.log10 : (v) => v;
      const t = (f(y) - f(lo)) / (f(hi) - f(lo));
      return TOP + PH * (1 - Math.min(Math.max(t, -0.02), 1.02));
    };
    const path = (pts) => {
      let s = '', pen = false;
      for (const [x, y] of pts) {
        const py = sy(y);
        if (py === null) { pen = false; continue; }
        s += `${pen ? 'L' : 'M'}${sx(x).toFixed(1)},${py.toFixed(1)}`;
        pen = true;
      }
      return s;
    };
    const el = (name, attrs) => {
      const e = document.createElementNS(NS, name);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      return e;
    };

    function draw() {
      lines.replaceChildren();
      for (const c of d.curves) {
        c.smoothed = c.smooth && weight > 0 ? ema(c.means || c.pts, c.unit, weight) : null;
        const dash = c.dash ? '5 4' : 'none';
        if (c.smoothed) {
          lines.append(el('path', { d: path(c.pts), stroke: c.color, class: 'raw', 'stroke-dasharray': dash }));
          lines.append(el('path', { d: path(c.smoothed), stroke: c.color, class: 'curve', 'stroke-dasharray': dash }));
        } else {
          lines.append(el('path', { d: path(c.pts), stroke: c.color, class: 'curve', 'stroke-dasharray': dash }));
        }
        // Sparse curves (evaluations at checkpoints) also get their points marked.
        if (c.pts.length <= 60) {
          for (const [x, y] of c.pts) {
            const py = sy(y);
            if (py !== null) lines.append(el('circle', { cx: sx(x).toFixed(1), cy: py.toFixed(1), r: 2.5, fill: c.color, class: 'point' }));
          }
        }
      }
    }

    function hide() {
      tip.hidden = true;
      guide.setAttribute('x1', -10);
      guide.setAttribute('x2', -10);
      dots.replaceChildren();
    }

    function hover(ev) {
      const m = svg.getScreenCTM();
      if (!m) return;
      const p = new DOMPoint(ev.clientX, ev.clientY).matrixTransform(m.inverse());
      if (p.x < LEFT || p.x > LEFT + PW || p.y < TOP || p.y > TOP + PH) return hide();
      const x = d.x[0] + ((p.x - LEFT) / PW) * (d.x[1] - d.x[0]);
      const rows = [];
      for (const c of d.curves) {
        const raw = nearest(c.pts, x);
        // Sparse curves only answer near one of their points.
        if (Math.abs(sx(raw[0]) - p.x) > 24) continue;
        const smooth = c.smoothed ? nearest(c.smoothed, raw[0]) : null;
        rows.push({ c, raw, smooth });
      }
      if (!rows.length) return hide();
      const step = rows.reduce((b, r) => (Math.abs(r.raw[0] - x) < Math.abs(b - x) ? r.raw[0] : b), rows[0].raw[0]);
      dots.replaceChildren();
      const html = [`<b>step ${step}</b>`];
      for (const { c, raw, smooth } of rows) {
        const shownY = smooth ? smooth[1] : raw[1];
        const py = sy(shownY);
        if (py !== null) dots.append(el('circle', { cx: sx(raw[0]).toFixed(1), cy: py.toFixed(1), r: 4, fill: c.color, class: 'dot' }));
        const at = raw[0] === step ? '' : ` (step ${raw[0]})`;
        const sm = smooth ? ` · smoothed ${fmt(smooth[1])}` : '';
        html.push(`<span style="color:${c.color}">■</span> ${esc(c.name)}: ${fmt(raw[1])}${sm}${at}`);
      }
      guide.setAttribute('x1', sx(step));
      guide.setAttribute('x2', sx(step));
      tip.innerHTML = html.join('<br>');
      tip.hidden = false;
      const box = fig.getBoundingClientRect();
      const left = ev.clientX - box.left + 14;
      tip.style.left = `${Math.min(left, box.width - tip.offsetWidth - 4)}px`;
      tip.style.top = `${ev.clientY - box.top + 14}px`;
    }

    for (const b of fig.querySelectorAll('button[data-scale]')) {
      b.addEventListener('click', () => {
        fig.dataset.scale = b.dataset.scale;
        fig.classList.remove('log', 'lin');
        fig.classList.add(b.dataset.scale);
        for (const o of fig.querySelectorAll('button[data-scale]')) o.classList.toggle('on', o === b);
        hide();
        draw();
      });
    }
    svg.addEventListener('mousemove', hover);
    svg.addEventListener('mouseleave', hide);
    draw();
    return draw;
  }

  const esc = (s) => s.replace(/[&<>"]/g, (ch) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[ch]);
  const redraws = [...document.querySelectorAll('figure.chart')].map(setup);
  if (slider) {
    slider.addEventListener('input', () => {
      weight = Number(slider.value);
      shown.textContent = weight.toFixed(2);
      redraws.forEach((f) => f());
    });
  }
  document.body.dataset.ready = 'true';
})();
