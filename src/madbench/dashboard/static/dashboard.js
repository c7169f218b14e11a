const D = JSON.parse(document.getElementById('data').textContent);
const fmt = v => (v === null || v === undefined) ? '' :
  (typeof v === 'number' && !Number.isInteger(v)) ? Number(v.toPrecision(4)).toString() : String(v);
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function buildFilters() {
  const box = document.getElementById('filters');
  for (const key of D.filters) {
    const values = [...new Set(D.runs.map(r => fmt(r[key])))].sort();
    const sel = el('select', {id: 'filter-' + key, 'data-key': key});
    sel.appendChild(el('option', {value: ''}, 'all'));
    for (const v of values) sel.appendChild(el('option', {value: v}, v));
    sel.addEventListener('change', applyFilters);
    const lab = el('label', {}, key + ' ');
    lab.appendChild(sel);
    box.appendChild(lab);
  }
}
function buildRuns() {
  const table = document.getElementById('runs');
  const head = table.querySelector('thead tr'), body = table.querySelector('tbody');
  for (const c of D.columns) head.appendChild(el('th', {}, c));
  D.runs.forEach((r, i) => {
    const tr = el('tr', {'data-run': String(i)});
    if (r.status !== 'ok') tr.className = 'failed';
    for (const c of D.columns) {
      const td = el('td', {}, fmt(r[c]));
      if (c === 'status' && r.status !== 'ok') {
        td.textContent = '';
        td.appendChild(el('span', {class: 'badge'}, 'FAILED'));
        td.appendChild(document.createTextNode(' ' + (r.failed_stage || '')));
      }
      tr.appendChild(td);
    }
    tr.addEventListener('click', () => showRun(i, tr));
    body.appendChild(tr);
  });
}
function applyFilters() {
  const active = D.filters.map(k => [k, document.getElementById('filter-' + k).value]);
  let shown = 0;
  document.querySelectorAll('#runs tbody tr').forEach(tr => {
    const r = D.runs[Number(tr.dataset.run)];
    const ok = active.every(([k, v]) => v === '' || fmt(r[k]) === v);
    tr.hidden = !ok;
    if (ok) shown++;
  });
  document.getElementById('count').textContent = shown + ' of ' + D.runs.length + ' runs shown';
}
function sortBy(th) {
  const table = th.closest('table'), body = table.querySelector('tbody');
  const idx = [...th.parentNode.children].indexOf(th);
  const asc = !th.classList.contains('asc');
  table.querySelectorAll('th').forEach(h => h.classList.remove('asc', 'desc'));
  th.classList.add(asc ? 'asc' : 'desc');
  const key = tr => {
    const t = tr.children[idx].textContent.trim(), n = parseFloat(t);
    return isNaN(n) ? t : n;
  };
  const rows = [...body.querySelectorAll('tr')];
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    const c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0)
      : (typeof x === 'number' ? -1 : 1);
    return asc ? c : -c;
  });
  rows.forEach(r => body.appendChild(r));
}
function lossSVG(h) {
  if (!h || !h.loss || h.loss.length < 2) return '<p class="muted">no loss history</p>';
  const xs = h.step || h.loss.map((_, i) => i), ys = h.loss;
  const pts = xs.map((x, i) => [x, ys[i]]).filter(p => p[0] !== null && p[1] !== null);
  const logy = pts.every(p => p[1] > 0);
  const ty = v => logy ? Math.log10(v) : v;
  const [x0, x1] = [Math.min(...pts.map(p => p[0])), Math.max(...pts.map(p => p[0]))];
  const [y0, y1] = [Math.min(...pts.map(p => ty(p[1]))), Math.max(...pts.map(p => ty(p[1])))];
  const W = 520, H = 220, m = 45;
  const sx = x => m + (W - 2 * m) * (x - x0) / ((x1 - x0) || 1);
  const sy = y => H - m + (2 * m - H) * (ty(y) - y0) / ((y1 - y0) || 1);
  const line = pts.map(p => sx(p[0]).toFixed(1) + ',' + sy(p[1]).toFixed(1)).join(' ');
  const lab = v => logy ? Number((10 ** v).toPrecision(3)) : Number(v.toPrecision(3));
  return `<svg class="loss" width="${W}" height="${H}" xmlns="http://www.w3.org/2000/svg">
    <rect x="${m}" y="${m / 2}" width="${W - 2 * m}" height="${H - 1.5 * m}"
      fill="none" stroke="#ccc"/>
    <polyline fill="none" stroke="#36c" stroke-width="1.5" points="${line}"/>
    <text x="${m}" y="${H - m / 3}" font-size="11">step ${x0}</text>
    <text x="${W - m}" y="${H - m / 3}" font-size="11" text-anchor="end">${x1}</text>
    <text x="2" y="${m / 2 + 10}" font-size="11">${lab(y1)}</text>
    <text x="2" y="${H - m}" font-size="11">${lab(y0)}</text>
    <text x="${W / 2}" y="${m / 2 - 4}" font-size="11" text-anchor="middle">
      loss${logy ? ' (log scale)' : ''}</text>
  </svg>`;
}
function showRun(i, tr) {
  document.querySelectorAll('#runs tr.sel').forEach(t => t.classList.remove('sel'));
  tr.classList.add('sel');
  const r = D.runs[i], box = document.getElementById('detail');
  const skip = new Set(['links', 'history', 'error']);
  const rows = Object.entries(r).filter(([k, v]) => !skip.has(k) && v !== null)
    .map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(fmt(v))}</td></tr>`).join('');
  const links = Object.entries(r.links)
    .map(([k, href]) => `<a href="${esc(href)}">${esc(k)}</a>`).join(' · ');
  const err = r.status === 'ok' ? '' :
    `<p class="bad">FAILED at stage ${esc(r.failed_stage || '?')}</p>` +
    `<pre>${esc(r.error || '')}</pre>`;
  const title = [r.dataset, r.schedule, r.method, 'seed ' + r.seed].map(esc).join(' / ');
  box.innerHTML = `<h3>${title}</h3>
    ${err}<p>${links || '<span class="muted">no files</span>'}</p>${lossSVG(r.history)}
    <details><summary>all fields (provenance, metrics)</summary><table>${rows}</table></details>`;
  box.hidden = false;
}
function esc(s) {
  const map = {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'};
  return String(s).replace(/[&<>"']/g, c => map[c]);
}
buildFilters();
buildRuns();
applyFilters();
document.querySelectorAll('table.sortable th, #runs th')
  .forEach(th => th.addEventListener('click', () => sortBy(th)));
