// The capsule explorer written by `effcn explore`: plain JavaScript, no libraries, no network.
// The page's data (JSON in #effcn-data) holds base64 little-endian arrays; the decoder is a list
// of operations (linear, relu, leaky_relu, sigmoid, reshape, upsample, conv2d) that this script
// runs exactly as the PyTorch decoder does (effcn/analysis/decoder_export.py is its reference).
(function () {
  'use strict';

  const DATA = JSON.parse(document.getElementById('effcn-data').textContent);

  // ------------------------------------------------------------------ arrays
  const HALF = (function () {  // every float16 bit pattern -> its value
    const t = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const s = (h & 0x8000) ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
      t[h] = e === 0 ? s * f * Math.pow(2, -24)
        : e === 31 ? (f ? NaN : s * Infinity)
          : s * (1 + f / 1024) * Math.pow(2, e - 15);
    }
    return t;
  })();

  function bytes(b64) {
    const s = atob(b64), out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  function array(entry) {  // {dtype, shape, data} -> {shape, data: typed array}
    if (!entry) return null;
    const raw = bytes(entry.data);
    let data;
    if (entry.dtype === 'u8') data = raw;
    else if (entry.dtype === 'i32') data = new Int32Array(raw.buffer);
    else if (entry.dtype === 'f32') data = new Float32Array(raw.buffer);
    else if (entry.dtype === 'f16') {
      const h = new Uint16Array(raw.buffer);
      data = new Float32Array(h.length);
      for (let i = 0; i < h.length; i++) data[i] = HALF[h[i]];
    } else throw new Error('unknown dtype ' + entry.dtype);
    return { shape: entry.shape, data: data };
  }

  // ----------------------------------------------------------------- decoder
  function linear(op, x) {
    const W = op.W, b = op.b, nOut = op.nOut, nIn = op.nIn, y = new Float32Array(nOut);
    const nz = [];
    for (let i = 0; i < nIn; i++) if (x[i] !== 0) nz.push(i);
    if (nz.length * 2 < nIn) {  // the masked input: only one capsule is non-zero
      for (let o = 0; o < nOut; o++) {
        let s = 0;
        const r = o * nIn;
        for (let k = 0; k < nz.length; k++) s += W[r + nz[k]] * x[nz[k]];
        y[o] = s + b[o];
      }
    } else {
      for (let o = 0; o < nOut; o++) {
        let s = 0;
        const r = o * nIn;
        for (let i = 0; i < nIn; i++) s += W[r + i] * x[i];
        y[o] = s + b[o];
      }
    }
    return y;
  }

  function upsample(x, shape) {  // bilinear x2, align_corners=False
    const C = shape[0], H = shape[1], W = shape[2], H2 = 2 * H, W2 = 2 * W;
    function axis(n) {
      const lo = new Int32Array(2 * n), hi = new Int32Array(2 * n), l = new Float32Array(2 * n);
      for (let d = 0; d < 2 * n; d++) {
        const at = Math.max((d + 0.5) / 2 - 0.5, 0), i0 = Math.floor(at);
        lo[d] = i0; hi[d] = Math.min(i0 + 1, n - 1); l[d] = at - i0;
      }
      return [lo, hi, l];
    }
    const [h0, h1, lh] = axis(H), [w0, w1, lw] = axis(W), y = new Float32Array(C * H2 * W2);
    for (let c = 0; c < C; c++) {
      const base = c * H * W;
      for (let r = 0; r < H2; r++) {
        const a = base + h0[r] * W, b = base + h1[r] * W, t = lh[r];
        for (let q = 0; q < W2; q++) {
          const top = x[a + w0[q]] * (1 - lw[q]) + x[a + w1[q]] * lw[q];
          const bot = x[b + w0[q]] * (1 - lw[q]) + x[b + w1[q]] * lw[q];
          y[(c * H2 + r) * W2 + q] = top * (1 - t) + bot * t;
        }
      }
    }
    return [y, [C, H2, W2]];
  }

  function conv2d(op, x, shape) {  // stride 1, no padding
    const I = shape[0], H = shape[1], W = shape[2], O = op.shape[0], k = op.shape[2];
    const h = H - k + 1, w = W - k + 1, y = new Float32Array(O * h * w), Wt = op.W;
    for (let o = 0; o < O; o++) {
      for (let p = 0; p < h * w; p++) y[o * h * w + p] = op.b[o];
      for (let c = 0; c < I; c++) {
        for (let ki = 0; ki < k; ki++) {
          for (let kj = 0; kj < k; kj++) {
            const wv = Wt[((o * I + c) * k + ki) * k + kj];
            if (wv === 0) continue;
            for (let r = 0; r < h; r++) {
              const at = (c * H + r + ki) * W + kj, dst = (o * h + r) * w;
              for (let q = 0; q < w; q++) y[dst + q] += wv * x[at + q];
            }
          }
        }
      }
    }
    return [y, [O, h, w]];
  }

  function prepareDecoder(spec) {
    if (!spec) return null;
    const ops = spec.ops.map(function (op) {
      if (!op.weight) return op;
      const W = array(op.weight), b = array(op.bias);
      return Object.assign({}, op, { W: W.data, b: b.data, shape: W.shape,
        nOut: W.shape[0], nIn: W.shape[1] });
    });
    return { ops: ops, inFeatures: spec.in_features, outShape: spec.out_shape };
  }

  function runDecoder(dec, input) {  // masked capsules (n_classes * D) -> image (C * H * W)
    let x = Float32Array.from(input), shape = [x.length];
    for (const op of dec.ops) {
      if (op.op === 'linear') { x = linear(op, x); shape = [x.length]; }
      else if (op.op === 'relu') { for (let i = 0; i < x.length; i++) if (x[i] < 0) x[i] = 0; }
      else if (op.op === 'leaky_relu') {
        for (let i = 0; i < x.length; i++) if (x[i] < 0) x[i] *= op.slope;
      } else if (op.op === 'sigmoid') {
        for (let i = 0; i < x.length; i++) x[i] = 1 / (1 + Math.exp(-x[i]));
      } else if (op.op === 'reshape') shape = op.shape.slice();
      else if (op.op === 'upsample') [x, shape] = upsample(x, shape);
      else if (op.op === 'conv2d') [x, shape] = conv2d(op, x, shape);
      else throw new Error('unknown decoder operation ' + op.op);
    }
    return x;
  }

  // ------------------------------------------------------------------- state
  const meta = DATA.meta, names = DATA.class_names;
  const images = array(DATA.images), caps = array(DATA.capsules), lengths = array(DATA.lengths);
  const labels = array(DATA.labels), decodedTop = array(DATA.decoded);
  const coupling = array(DATA.coupling), recons = array(DATA.reconstructions);
  const decoder = prepareDecoder(DATA.decoder);
  const N = images.shape[0], C = images.shape[1], H = images.shape[2], W = images.shape[3];
  const K = caps.shape[1], D = caps.shape[2], L = labels.shape[1], NS = decodedTop.shape[1];
  const PIX = C * H * W;
  const SLOT_COLORS = NS === 1 ? ['#2f6fde'] : ['#e8590c', '#1f9d55'];
  const SLOT_RGB = NS === 1 ? [[255, 255, 255]] : [[255, 110, 40], [40, 220, 110]];
  const S = { i: 0, caps: null, slots: [], active: 0 };
  const last = { pixels: null, all: [], ms: 0, cls: -1 };
  const $ = function (id) { return document.getElementById(id); };

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    for (const k in (attrs || {})) {
      if (k === 'text') e.textContent = attrs[k];
      else if (k === 'html') e.innerHTML = attrs[k];
      else if (k === 'class') e.className = attrs[k];
      else if (k === 'style') e.style.cssText = attrs[k];
      else e.setAttribute(k, attrs[k]);
    }
    (children || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }
  const fmt = function (v, n) {  // fixed decimals, never "-0.000"
    const s = v.toFixed(n === undefined ? 3 : n);
    return /^-0\.?0*$/.test(s) ? s.slice(1) : s;
  };
  const len = function (i, j) { return lengths.data[i * K + j]; };
  const labelsOf = function (i) { return Array.from(labels.data.slice(i * L, (i + 1) * L)); };
  const topOf = function (i) { return Array.from(decodedTop.data.slice(i * NS, (i + 1) * NS)); };
  function isWrong(i) {
    const top = topOf(i);
    return labelsOf(i).some(function (y) { return top.indexOf(y) < 0; });
  }

  // ------------------------------------------------------------ drawing images
  function paint(canvas, pix, offset, scale) {  // (C, H, W) at offset, u8 or float in [0, 1]
    const f = pix instanceof Uint8Array ? 1 : 255, side = SIDE;
    canvas.width = W * side; canvas.height = H;
    const ctx = canvas.getContext('2d'), img = ctx.createImageData(W * side, H), d = img.data;
    for (let r = 0; r < H; r++) {
      for (let q = 0; q < W * side; q++) {
        const p = (r * W * side + q) * 4;
        if (C === 3) {
          for (let c = 0; c < 3; c++) d[p + c] = pix[offset + c * H * W + r * W + q] * f;
        } else {
          const c = Math.floor(q / W), v = pix[offset + c * H * W + r * W + (q % W)] * f;
          d[p] = d[p + 1] = d[p + 2] = v;
        }
        d[p + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
    if (scale) canvas.style.width = (W * side * scale) + 'px';
    return canvas;
  }

  function paintOverlay(canvas, parts, scale) {  // single-channel images, one colour each
    canvas.width = W; canvas.height = H;
    const ctx = canvas.getContext('2d'), img = ctx.createImageData(W, H), d = img.data;
    for (let p = 0; p < H * W; p++) {
      for (let c = 0; c < 3; c++) {
        let v = 0;
        parts.forEach(function (part, s) {
          const f = part.pix instanceof Uint8Array ? 1 : 255;
          v += part.pix[part.offset + p] * f * SLOT_RGB[s][c] / 255;
        });
        d[p * 4 + c] = Math.min(255, v);
      }
      d[p * 4 + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    canvas.style.width = (W * scale) + 'px';
    return canvas;
  }

  // Display scale of the picked image and its decodes: whole pixels for one decode per image,
  // about 100 CSS pixels wide for two (MultiMNIST shows seven images).
  const SIDE = (C === 1 || C === 3) ? 1 : C;
  const SCALE = NS > 1 ? 100 / (W * SIDE) : Math.max(1, Math.floor(132 / (W * SIDE)));

  function figure(canvas, caption, cls) {
    return el('figure', { class: cls || '' }, [canvas, el('figcaption', { html: caption })]);
  }

  // --------------------------------------------------------------------- grid
  function buildGrid() {
    const grid = $('grid');
    for (let i = 0; i < N; i++) {
      const c = paint(el('canvas'), images.data, i * PIX);
      c.title = '#' + i + ': true ' + labelsOf(i).map(function (y) { return names[y]; }).join(' & ') +
        ', predicted ' + topOf(i).map(function (y) { return names[y]; }).join(' & ');
      c.dataset.index = i;
      if (C === 2) c.classList.add('wide');
      if (isWrong(i)) c.classList.add('wrong');
      c.addEventListener('click', function () { pick(i); });
      grid.appendChild(c);
    }
    if (N > 96) { grid.style.maxHeight = '78vh'; grid.style.overflowY = 'auto'; }
  }

  // ------------------------------------------------------------------ picking
  function pick(i) {
    i = Math.max(0, Math.min(N - 1, i));
    S.i = i;
    S.caps = Float32Array.from(caps.data.slice(i * K * D, (i + 1) * K * D));
    S.slots = topOf(i);
    S.active = 0;
    document.querySelectorAll('#grid canvas').forEach(function (c) {
      c.classList.toggle('picked', Number(c.dataset.index) === i);
    });
    const truth = labelsOf(i).map(function (y) { return names[y]; }).join(' & ');
    const pred = S.slots.map(function (y) { return names[y] + ' (' + fmt(len(i, y), 2) + ')'; });
    $('picked-title').innerHTML = 'Image #' + i + ' <span class="sub">true <b>' + truth +
      '</b> · predicted ' + (NS > 1 ? '(two longest) ' : '') + '<b>' + pred.join(' & ') +
      '</b>' + (isWrong(i) ? ' · <span style="color:var(--wrong)">wrong</span>' : '') + '</span>';
    buildImages();
    buildBars();
    buildRouting();
    buildSliders();
    redrawLive();
  }

  function buildImages() {
    const box = $('images'), i = S.i;
    box.innerHTML = '';
    const rowA = el('div', { style: 'display:flex;gap:12px;flex-wrap:wrap' });
    rowA.appendChild(figure(paint(el('canvas'), images.data, i * PIX, SCALE), '<b>input</b>'));
    if (recons) {
      topOf(i).forEach(function (k, s) {
        const label = NS > 1 ? 'reconstruction ' + (s + 1) : 'reconstruction';
        rowA.appendChild(figure(paint(el('canvas'), recons.data, (i * NS + s) * PIX, SCALE),
          '<b>' + label + '</b><br>PyTorch, class ' + names[k]));
      });
      if (NS > 1 && C === 1) {
        rowA.appendChild(figure(paintOverlay(el('canvas'), topOf(i).map(function (k, s) {
          return { pix: recons.data, offset: (i * NS + s) * PIX };
        }), SCALE), '<b>both</b><br>' + legendDots(topOf(i))));
      }
    }
    box.appendChild(rowA);
    if (decoder) {  // one image: input, reconstruction, live in a row; two: live below
      const rowB = NS > 1 ? el('div', { style: 'display:flex;gap:12px;flex-wrap:wrap' }) : rowA;
      for (let s = 0; s < NS; s++) {
        rowB.appendChild(figure(el('canvas', { id: 'live' + s }), '', 'live'));
      }
      if (NS > 1 && C === 1) rowB.appendChild(figure(el('canvas', { id: 'live-both' }),
        ''));
      if (rowB !== rowA) box.appendChild(rowB);
    }
    $('images-note').innerHTML = decoder
      ? (NS > 1 ? 'Reconstructions: the PyTorch decoder on each of the two longest capsules ' +
        '(the masked decoder, as at inference). Live: the same decoder running in this page on ' +
        'the capsules as the sliders set them; it starts equal to the reconstructions.'
        : 'Reconstruction: the PyTorch decoder on the longest capsule (the masked decoder, as ' +
        'at inference). Live: the same decoder running in this page on the capsule as the ' +
        'sliders set it; it starts equal to the reconstruction.')
      : '<span class="note" style="display:block">No live decoding: ' +
        (DATA.no_decoder || 'this page holds no decoder') + '.</span>';
  }

  function legendDots(classes) {
    return classes.map(function (k, s) {
      return '<span style="color:' + SLOT_COLORS[s] + '">■</span> ' + names[k];
    }).join(' ');
  }

  // --------------------------------------------------------------------- bars
  function buildBars() {
    const box = $('bars'), i = S.i, truth = labelsOf(i), top = topOf(i);
    box.innerHTML = '';
    [[1, '1'], [0.5, '0.5'], [0, '0']].forEach(function (t) {
      box.appendChild(el('div', { class: 'axis', text: t[1], style: 'bottom:' + (t[0] * 100) +
        '%;transform:translateY(50%)' }));
    });
    [0.9, 0.1].forEach(function (t) {
      box.appendChild(el('div', { class: 'target', style: 'bottom:' + (t * 100) + '%' }));
    });
    for (let j = 0; j < K; j++) {
      const v = len(i, j), bar = el('div', { class: 'bar', title: names[j] + ': |v| = ' + fmt(v) });
      const slot = S.slots.indexOf(j);
      const fill = el('div', { class: 'fill', style: 'height:' + (v * 100) + '%' });
      if (top.indexOf(j) >= 0) fill.style.background = SLOT_COLORS[top.indexOf(j)];
      bar.appendChild(el('div', { class: 'num', text: fmt(v, 2),
        style: 'bottom:calc(' + (v * 100) + '% + 5px)' }));
      bar.appendChild(fill);
      bar.appendChild(el('div', { class: 'name', text: names[j] }));
      if (truth.indexOf(j) >= 0) bar.appendChild(el('div', { class: 'truth', text: '▲ true' }));
      if (decoder && slot === S.active) bar.classList.add('decoded');
      bar.addEventListener('click', function () { if (decoder) setClass(j); });
      box.appendChild(bar);
    }
  }

  // ------------------------------------------------------------------ routing
  const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
  function viridis(t) {
    t = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1);
    const a = Math.floor(Math.min(t, VIRIDIS.length - 2)), f = t - a;
    const c = VIRIDIS[a].map(function (v, n) { return Math.round(v + (VIRIDIS[a + 1][n] - v) * f); });
    return 'rgb(' + c.join(',') + ')';
  }

  function buildRouting() {
    const box = $('routing'), i = S.i;
    box.innerHTML = '';
    if (!coupling) {
      box.appendChild(el('p', { class: 'note', text: 'This model returned no routing coefficients.' }));
      return;
    }
    const nOut = coupling.shape[1], nIn = coupling.shape[2], off = i * nOut * nIn;
    const c = coupling.data.subarray(off, off + nOut * nIn);
    let vmax = 0;
    for (let p = 0; p < c.length; p++) vmax = Math.max(vmax, c[p]);
    vmax = Math.max(vmax, 2 / nOut);  // uniform routing (1 / nOut) stays mid-scale
    const labelW = 10 + 7 * Math.max.apply(null, names.map(function (n) { return n.length; })) + 8;
    const avail = Math.max(240, (box.clientWidth || 460) - labelW - 4);
    const cw = avail / nIn >= 1 ? Math.min(26, Math.floor(avail / nIn)) : avail / nIn;
    const ch = Math.max(8, Math.min(20, Math.floor(230 / nOut)));
    const axisH = 30, cssW = labelW + cw * nIn, cssH = ch * nOut + axisH;
    const dpr = window.devicePixelRatio || 1;
    const canvas = el('canvas', { style: 'width:' + cssW + 'px;height:' + cssH + 'px' });
    canvas.width = Math.round(cssW * dpr); canvas.height = Math.round(cssH * dpr);
    const ctx = canvas.getContext('2d');
    ctx.scale(dpr, dpr);
    for (let j = 0; j < nOut; j++) {
      for (let q = 0; q < nIn; q++) {
        ctx.fillStyle = viridis(c[j * nIn + q] / vmax);
        ctx.fillRect(labelW + q * cw, j * ch, cw, ch);
      }
    }
    ctx.font = '11px system-ui, sans-serif';
    ctx.textBaseline = 'middle';
    const truth = labelsOf(i);
    for (let j = 0; j < nOut; j++) {
      const slot = S.slots.indexOf(j);
      ctx.fillStyle = slot >= 0 ? SLOT_COLORS[slot] : '#667085';
      ctx.font = (slot >= 0 ? 'bold ' : '') + '11px system-ui, sans-serif';
      ctx.textAlign = 'right';
      ctx.fillText((truth.indexOf(j) >= 0 ? '▸ ' : '') + (names[j] || String(j)), labelW - 6,
        j * ch + ch / 2);
    }
    ctx.fillStyle = '#667085'; ctx.font = '10px system-ui, sans-serif'; ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    const every = nIn <= 32 ? 1 : Math.ceil(nIn / 8 / 10) * 10;
    for (let q = 0; q < nIn; q += every) ctx.fillText(String(q), labelW + q * cw + cw / 2, ch * nOut + 3);
    ctx.fillText('primary capsule i', labelW + cw * nIn / 2, ch * nOut + 16);
    box.appendChild(canvas);
    let entropy = 0;
    for (let q = 0; q < nIn; q++) {
      for (let j = 0; j < nOut; j++) {
        const v = Math.max(c[j * nIn + q], 1e-12);
        entropy -= v * Math.log(v);
      }
    }
    entropy /= nIn * Math.log(nOut);
    const stops = VIRIDIS.map(function (v, n) {
      return 'rgb(' + v.join(',') + ') ' + (100 * n / (VIRIDIS.length - 1)) + '%';
    });
    box.appendChild(el('div', { class: 'legend' }, [
      el('span', { text: 'c = 0' }),
      el('span', { class: 'ramp', style: 'background:linear-gradient(to right,' + stops.join(',') + ')' }),
      el('span', { text: fmt(vmax, 2) }),
      el('span', { html: '&nbsp; (uniform routing: 1/' + nOut + ' = ' + fmt(1 / nOut, 2) + ')' })]));
    box.appendChild(el('p', { class: 'hint', html: 'Entropy of c over the classes: <b>' +
      fmt(entropy, 2) + '</b> of uniform (1 = routing does not choose). ▸ marks the true ' +
      'class' + (L > 1 ? 'es' : '') + (decoder ? '; coloured rows are decoded.' : '.') }));
    const tip = el('div', { id: 'routing-tip', class: 'hint', text: 'Hover a cell for its value.' });
    box.appendChild(tip);
    canvas.addEventListener('mousemove', function (ev) {
      const q = Math.floor((ev.offsetX - labelW) / cw), j = Math.floor(ev.offsetY / ch);
      if (q < 0 || q >= nIn || j < 0 || j >= nOut) return;
      tip.textContent = 'class ' + names[j] + ' · primary capsule ' + q + ' · c = ' +
        fmt(c[j * nIn + q]);
    });
  }

  // ------------------------------------------------------------------ sliders
  const RANGE = 0.5;  // each slider spans the model's value +- RANGE

  function original(k, d) { return caps.data[(S.i * K + k) * D + d]; }

  function buildSliders() {
    if (!decoder) return;  // buildPage hid the card and said why
    const k = S.slots[S.active];
    $('sliders-sub').textContent = 'of class ' + names[k] + '’s capsule, decoded live';
    const slots = $('slots');
    slots.innerHTML = '';
    if (NS > 1) {
      S.slots.forEach(function (cls, s) {
        const b = el('button', { type: 'button', class: s === S.active ? 'active' : '',
          style: s === S.active ? 'background:' + SLOT_COLORS[s] + ';border-color:' +
            SLOT_COLORS[s] : 'color:' + SLOT_COLORS[s],
          text: 'digit ' + (s + 1) + ': class ' + names[cls] });
        b.addEventListener('click', function () { S.active = s; buildSliders(); buildBars(); });
        slots.appendChild(b);
      });
    }
    const classes = $('classes');
    classes.innerHTML = '';
    classes.appendChild(el('span', { class: 'hint', style: 'margin:3px 4px 0 0',
      text: NS > 1 ? 'decode as class:' : 'decoded class:' }));
    for (let j = 0; j < K; j++) {
      const b = el('button', { type: 'button', class: j === k ? 'active' : '', text: names[j],
        title: 'decode the capsule of class ' + names[j] + ' (|v| = ' + fmt(len(S.i, j)) + ')' });
      b.addEventListener('click', function () { setClass(j); });
      classes.appendChild(b);
    }
    const box = $('sliders');
    box.innerHTML = '';
    for (let d = 0; d < D; d++) {
      const v0 = original(k, d), v = S.caps[k * D + d];
      const input = el('input', { type: 'range', min: fmt(v0 - RANGE, 4), max: fmt(v0 + RANGE, 4),
        step: '0.001', value: String(v), 'data-dim': d, 'aria-label': 'dimension ' + d });
      input.value = String(v);
      const val = el('span', { class: 'val', text: fmt(v) });
      input.addEventListener('input', function () {
        const x = parseFloat(input.value);
        S.caps[k * D + d] = x;
        val.textContent = fmt(x);
        val.classList.toggle('moved', Math.abs(x - v0) > 1e-6);
        redrawLive();
      });
      box.appendChild(el('div', { class: 'slider' }, [el('label', { text: 'd' + d }), input, val]));
    }
  }

  function setClass(j) {
    S.slots[S.active] = j;
    buildSliders();
    buildBars();
    buildRouting();
    redrawLive();
  }

  function decodeClass(k, vec) {  // the masked decoder: only class k's capsule is non-zero
    const masked = new Float32Array(K * D);
    for (let d = 0; d < D; d++) masked[k * D + d] = vec[d];
    return runDecoder(decoder, masked);
  }

  function redrawLive() {
    if (!decoder) return;
    const t0 = performance.now(), all = [];
    S.slots.forEach(function (k, s) {
      const out = decodeClass(k, S.caps.subarray(k * D, (k + 1) * D));
      all.push(out);
      const canvas = $('live' + s);
      if (!canvas) return;
      paint(canvas, out, 0, SCALE);
      let lenK = 0;
      for (let d = 0; d < D; d++) lenK += S.caps[k * D + d] * S.caps[k * D + d];
      canvas.parentNode.querySelector('figcaption').innerHTML = '<b>live' +
        (NS > 1 ? ' ' + (s + 1) : '') + '</b><br>class <b style="color:' + SLOT_COLORS[s] + '">' +
        names[k] + '</b>, |v| = ' + fmt(Math.sqrt(lenK), 2);
    });
    const both = $('live-both');
    if (both) {
      paintOverlay(both, all.map(function (p) { return { pix: p, offset: 0 }; }), SCALE);
      both.parentNode.querySelector('figcaption').innerHTML = '<b>both, live</b><br>' +
        legendDots(S.slots);
    }
    last.ms = performance.now() - t0;
    last.all = all;
    last.pixels = all[S.active];
    last.cls = S.slots[S.active];
    $('timing').textContent = 'decoded and drawn in ' + fmt(last.ms, 1) + ' ms';
  }

  // --------------------------------------------------------------------- page
  function buildMeta() {
    const parts = ['run <b>' + meta.run + '</b>', 'model <b>' + meta.model + '</b>',
      '<b>' + meta.checkpoint + '</b> checkpoint' + (meta.epoch != null ? ', epoch ' + meta.epoch : ''),
      'dataset <b>' + meta.dataset + '</b>'];
    if (meta.best_val_acc != null) {
      parts.push('best validation ' + meta.metric + ' <b>' + (100 * meta.best_val_acc).toFixed(2) + '%</b>');
    }
    parts.push(N + ' validation images', K + ' class capsules × ' + D + ' dimensions');
    $('meta').innerHTML = parts.join(' · ');
  }

  document.addEventListener('keydown', function (ev) {
    if (ev.target && (ev.target.tagName === 'INPUT' || ev.target.tagName === 'BUTTON')) return;
    const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: 8, ArrowUp: -8 }[ev.key];
    if (step) { ev.preventDefault(); pick(S.i + step); }
  });
  $('reset').addEventListener('click', function () {
    S.caps = Float32Array.from(caps.data.slice(S.i * K * D, (S.i + 1) * K * D));
    buildSliders();
    redrawLive();
  });

  buildMeta();
  if (!decoder) {
    $('sliders-card').style.display = 'none';
    $('images-card').style.gridColumn = '1 / -1';
    $('bars-hint').textContent = 'Dashed lines: the margin loss targets 0.9 (present class) ' +
      'and 0.1 (absent).';
  }
  buildGrid();
  pick(0);

  // For tests and the curious: the state, the decoder and the last live decode.
  window.effcnExplorer = {
    pick: pick, setClass: setClass, last: last, meta: meta,
    state: function () {
      return { image: S.i, slots: S.slots.slice(), active: S.active,
        capsules: Array.from(S.caps) };
    },
    decode: function (k, vec) { return Array.from(decodeClass(k, vec)); },
    ready: true,
  };
})();
