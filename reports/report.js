// llmeval report: draws the charts and the sample browser from the JSON island.
// Data is only ever inserted with textContent and setAttribute (never parsed as HTML).
(function () {
  'use strict';
  var SVG_NS = 'http://www.w3.org/2000/svg';
  var island = document.getElementById('report-data');
  if (!island) { return; }
  var data = JSON.parse(island.textContent);
  var lb = data.results.leaderboard;
  var PALETTE = ['#2f6fde', '#d9480f', '#2b8a3e', '#862e9c', '#c2255c', '#0b7285', '#e67700', '#5c940d', '#364fc7', '#a61e4d'];

  function attrs(node, a) {
    if (a) { Object.keys(a).forEach(function (k) { if (a[k] !== null && a[k] !== undefined) { node.setAttribute(k, String(a[k])); } }); }
    return node;
  }
  function h(tag, a, text) {
    var node = attrs(document.createElement(tag), a);
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function s(tag, a, text) {
    var node = attrs(document.createElementNS(SVG_NS, tag), a);
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function tip(node, text) { node.appendChild(s('title', null, text)); return node; }
  function fmt(v, range) {
    if (v === null || v === undefined) { return '—'; }
    return (range && range[1] <= 1) ? v.toFixed(3) : v.toFixed(2);
  }
  function clip(text, n) { text = String(text); return text.length > n ? text.slice(0, n - 1) + '…' : text; }
  function color(i) { return PALETTE[i % PALETTE.length]; }
  function niceDomain(lo, hi) {
    if (!(hi > lo)) { hi = lo + 1; }
    var pad = (hi - lo) * 0.05;
    return [lo - pad, hi + pad];
  }

  // ---- per-task bar charts with 95% whiskers -------------------------------------------------
  function barChart(colIndex) {
    var col = lb.columns[colIndex];
    var rows = lb.rows.map(function (r, i) { return { label: r.label, cell: r.cells[colIndex], i: i }; })
      .filter(function (x) { return x.cell !== null; });
    var fig = h('figure', { 'class': 'bar-chart' });
    fig.appendChild(h('figcaption', null, col.label + (col.higher_is_better ? '' : ' (lower is better)')));
    var vals = [];
    rows.forEach(function (x) {
      [x.cell.value, x.cell.ci_low, x.cell.ci_high].forEach(function (v) { if (v !== null && v !== undefined) { vals.push(v); } });
    });
    if (vals.length === 0) { fig.appendChild(h('p', { 'class': 'note' }, 'no values')); return fig; }
    // A metric with a fixed range is drawn on it (an interval reaching past it is cut at its end).
    var dom = col.range ? col.range : niceDomain(Math.min(0, Math.min.apply(null, vals)), Math.max.apply(null, vals));
    var clamp = function (v) { return Math.max(dom[0], Math.min(dom[1], v)); };
    var labelW = 160, plotW = 380, rowH = 24, top = 8, W = labelW + plotW + 70, H = top + rows.length * rowH + 24;
    var x = function (v) { return labelW + (clamp(v) - dom[0]) / (dom[1] - dom[0]) * plotW; };
    var g = s('svg', { width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img' });
    for (var t = 0; t <= 4; t++) {
      var tv = dom[0] + (dom[1] - dom[0]) * t / 4;
      g.appendChild(s('line', { 'class': 'gridline', x1: x(tv), x2: x(tv), y1: top, y2: H - 20 }));
      g.appendChild(s('text', { x: x(tv), y: H - 6, 'text-anchor': 'middle' }, fmt(tv, col.range)));
    }
    rows.forEach(function (r, k) {
      var y = top + k * rowH;
      g.appendChild(tip(s('text', { x: labelW - 6, y: y + rowH / 2 + 4, 'text-anchor': 'end' }, clip(r.label, 24)), r.label));
      var c = r.cell;
      if (c.value === null || c.value === undefined) {
        g.appendChild(s('text', { x: labelW + 4, y: y + rowH / 2 + 4 }, c.errors ? 'no value (' + c.errors + ' errored)' : 'no value'));
        return;
      }
      var x0 = x(Math.max(dom[0], Math.min(0, dom[1]))), x1 = x(c.value);
      var bar = s('rect', { 'class': 'bar', x: Math.min(x0, x1), y: y + 4, width: Math.max(1, Math.abs(x1 - x0)), height: rowH - 8, fill: color(r.i) });
      tip(bar, r.label + ': ' + fmt(c.value, col.range) + (c.ci_low !== null ? ' [' + fmt(c.ci_low, col.range) + ', ' + fmt(c.ci_high, col.range) + ']' : '') + ', n = ' + c.n);
      g.appendChild(bar);
      if (c.ci_low !== null && c.ci_high !== null) {
        var cy = y + rowH / 2;
        g.appendChild(s('line', { 'class': 'whisker', x1: x(c.ci_low), x2: x(c.ci_high), y1: cy, y2: cy }));
        g.appendChild(s('line', { 'class': 'whisker', x1: x(c.ci_low), x2: x(c.ci_low), y1: cy - 5, y2: cy + 5 }));
        g.appendChild(s('line', { 'class': 'whisker', x1: x(c.ci_high), x2: x(c.ci_high), y1: cy - 5, y2: cy + 5 }));
      }
      g.appendChild(s('text', { x: Math.max(x1, c.ci_high !== null ? x(c.ci_high) : x1) + 6, y: y + rowH / 2 + 4 }, fmt(c.value, col.range)));
    });
    g.appendChild(s('line', { 'class': 'axis', x1: labelW, x2: labelW, y1: top, y2: H - 20 }));
    fig.appendChild(g);
    return fig;
  }

  var bars = document.getElementById('bar-charts');
  lb.columns.forEach(function (c, i) { if (c.category === '') { bars.appendChild(barChart(i)); } });
  if (!bars.firstChild) { bars.appendChild(h('p', { 'class': 'note' }, 'No results.')); }

  // ---- capability radar, one per model ----------------------------------------------------------
  var radar = data.results.radar;
  var radarBox = document.getElementById('radar-charts');
  if (radar.axes.length < 3) {
    radarBox.appendChild(h('p', { 'class': 'note' }, 'A radar needs at least three axes (task categories, or tasks, whose primary metric has a fixed range); these runs have ' + radar.axes.length + '.'));
  } else {
    // Room around the circle for axis labels of up to 20 characters.
    var R = 100, CX = 225, CY = 135, n = radar.axes.length;
    var pt = function (k, r) {
      var a = -Math.PI / 2 + 2 * Math.PI * k / n;
      return [CX + r * Math.cos(a), CY + r * Math.sin(a)];
    };
    lb.rows.forEach(function (row, i) {
      var fig = h('figure', { 'class': 'radar-chart' });
      fig.appendChild(h('figcaption', null, row.label));
      var g = s('svg', { width: 2 * CX, height: 2 * CY, viewBox: '0 0 ' + 2 * CX + ' ' + 2 * CY, role: 'img' });
      [0.25, 0.5, 0.75, 1].forEach(function (f) {
        var ring = [];
        for (var k = 0; k < n; k++) { ring.push(pt(k, R * f).join(',')); }
        g.appendChild(s('polygon', { 'class': 'radar-grid', points: ring.join(' ') }));
      });
      radar.axes.forEach(function (axis, k) {
        var end = pt(k, R), lab = pt(k, R + 14);
        g.appendChild(s('line', { 'class': 'axis', x1: CX, y1: CY, x2: end[0], y2: end[1] }));
        var anchor = Math.abs(lab[0] - CX) < 4 ? 'middle' : (lab[0] > CX ? 'start' : 'end');
        g.appendChild(tip(s('text', { x: lab[0], y: lab[1] + 4, 'text-anchor': anchor }, clip(axis.label, 20)), axis.label));
      });
      var values = radar.series[i];
      var pts = values.map(function (v, k) { return pt(k, R * (v === null ? 0 : v)).join(','); });
      var area = s('polygon', { 'class': 'radar-area', points: pts.join(' '), fill: color(i), stroke: color(i) });
      tip(area, row.label + ': ' + radar.axes.map(function (a, k) { return a.label + ' ' + (values[k] === null ? '—' : values[k].toFixed(3)); }).join('; '));
      g.appendChild(area);
      values.forEach(function (v, k) {
        var p = pt(k, R * (v === null ? 0 : v));
        var dot = s('circle', { 'class': v === null ? 'radar-missing' : 'radar-point', cx: p[0], cy: p[1], r: 3, fill: v === null ? 'none' : color(i), stroke: color(i) });
        g.appendChild(tip(dot, radar.axes[k].label + ': ' + (v === null ? 'no value' : v.toFixed(3))));
      });
      fig.appendChild(g);
      radarBox.appendChild(fig);
    });
  }

  // ---- arena: rating intervals and win-rate heatmap -----------------------------------------
  var arena = data.results.arena;
  if (arena) {
    var models = arena.ratings.map(function (r) { return r.model; });
    var idx = function (m) { return lb.rows.findIndex(function (r) { return r.model === m; }); };
    var lo = Math.min.apply(null, arena.ratings.map(function (r) { return r.ci_low === null ? r.rating : r.ci_low; }));
    var hi = Math.max.apply(null, arena.ratings.map(function (r) { return r.ci_high === null ? r.rating : r.ci_high; }));
    var dom = niceDomain(lo, hi);
    var labelW = 160, plotW = 360, rowH = 24, W = labelW + plotW + 20, H = 8 + models.length * rowH + 24;
    var x = function (v) { return labelW + (v - dom[0]) / (dom[1] - dom[0]) * plotW; };
    var g = s('svg', { width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img' });
    for (var t = 0; t <= 4; t++) {
      var tv = dom[0] + (dom[1] - dom[0]) * t / 4;
      g.appendChild(s('line', { 'class': 'gridline', x1: x(tv), x2: x(tv), y1: 8, y2: H - 20 }));
      g.appendChild(s('text', { x: x(tv), y: H - 6, 'text-anchor': 'middle' }, tv.toFixed(0)));
    }
    arena.ratings.forEach(function (r, k) {
      var y = 8 + k * rowH + rowH / 2, c = color(Math.max(0, idx(r.model)));
      g.appendChild(tip(s('text', { x: labelW - 6, y: y + 4, 'text-anchor': 'end' }, clip(r.rank + '. ' + r.model, 24)), r.model));
      var lo = r.ci_low === null ? r.rating : r.ci_low, hi = r.ci_high === null ? r.rating : r.ci_high;
      g.appendChild(tip(s('line', { 'class': 'interval', x1: x(lo), x2: x(hi), y1: y, y2: y, stroke: c }), r.model + ': ' + lo.toFixed(1) + ' – ' + hi.toFixed(1)));
      g.appendChild(tip(s('circle', { 'class': 'interval-point', cx: x(r.rating), cy: y, r: 5, fill: '#fff', stroke: c, 'stroke-width': 2 }), r.model + ': ' + r.rating.toFixed(1)));
    });
    document.getElementById('arena-intervals').appendChild(g);

    var cell = 46, lw = 150, th = 120, n = models.length;
    var hm = s('svg', { width: lw + n * cell + 110, height: th + n * cell + 10, role: 'img' });
    var rate = {};
    arena.win_rates.forEach(function (w) { rate[JSON.stringify([w.model, w.opponent])] = w; });
    models.forEach(function (m, k) {
      hm.appendChild(tip(s('text', { x: lw - 6, y: th + k * cell + cell / 2 + 4, 'text-anchor': 'end' }, clip(m, 22)), m));
      var cx = lw + k * cell + cell / 2;
      hm.appendChild(tip(s('text', { x: cx, y: th - 6, transform: 'rotate(-45 ' + cx + ' ' + (th - 6) + ')' }, clip(m, 18)), m));
    });
    models.forEach(function (a, i) {
      models.forEach(function (b, j) {
        var x0 = lw + j * cell, y0 = th + i * cell;
        if (i === j) { hm.appendChild(s('rect', { 'class': 'heat-diag', x: x0, y: y0, width: cell - 2, height: cell - 2 })); return; }
        var w = rate[JSON.stringify([a, b])];
        if (!w) { hm.appendChild(tip(s('rect', { 'class': 'heat-none', x: x0, y: y0, width: cell - 2, height: cell - 2, fill: '#fafafa', stroke: '#e1e5ea' }), a + ' vs ' + b + ': no battles')); return; }
        // 0 → red, ½ → white, 1 → blue.
        var v = w.observed, r, gg, bb;
        if (v < 0.5) { r = 214; gg = Math.round(72 + (255 - 72) * v * 2); bb = Math.round(72 + (255 - 72) * v * 2); }
        else { r = Math.round(255 - (255 - 47) * (v - 0.5) * 2); gg = Math.round(255 - (255 - 111) * (v - 0.5) * 2); bb = Math.round(255 - (255 - 222) * (v - 0.5) * 2); }
        hm.appendChild(tip(s('rect', { 'class': 'heat', x: x0, y: y0, width: cell - 2, height: cell - 2, fill: 'rgb(' + r + ',' + gg + ',' + bb + ')' }),
          a + ' beats ' + b + ': ' + v.toFixed(3) + ' observed over ' + w.battles + ' battles; ' + w.predicted.toFixed(3) + ' predicted'));
        hm.appendChild(s('text', { x: x0 + cell / 2 - 1, y: y0 + cell / 2 + 3, 'text-anchor': 'middle' }, v.toFixed(2)));
      });
    });
    document.getElementById('arena-heatmap').appendChild(hm);
  }

  // ---- sortable leaderboard tables ----------------------------------------------------------
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), function (table) {
    var ths = table.querySelectorAll('thead th');
    Array.prototype.forEach.call(ths, function (th, col) {
      th.addEventListener('click', function () {
        var desc = th.getAttribute('aria-sort') !== 'descending';
        Array.prototype.forEach.call(ths, function (o) { o.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', desc ? 'descending' : 'ascending');
        var body = table.tBodies[0];
        var trs = Array.prototype.slice.call(body.rows);
        var key = function (tr) {
          var td = tr.cells[col];
          return col === 0 ? td.textContent : (td.getAttribute('data-sort') === '' ? null : Number(td.getAttribute('data-sort')));
        };
        trs.sort(function (a, b) {
          var x = key(a), y = key(b);
          if (x === null || y === null) { return (x === null) - (y === null); }
          var o = typeof x === 'string' ? x.localeCompare(y) : x - y;
          return desc ? -o : o;
        });
        trs.forEach(function (tr) { body.appendChild(tr); });
      });
    });
  });

  // ---- sample drill-down ----------------------------------------------------------------------
  var samples = data.samples;
  var PAGE = 200;
  var shown = PAGE;
  var search = document.getElementById('sample-search');
  var fModel = document.getElementById('sample-model');
  var fTask = document.getElementById('sample-task');
  var fOutcome = document.getElementById('sample-outcome');
  var list = document.getElementById('sample-list');
  var count = document.getElementById('sample-count');
  var more = document.getElementById('sample-more');
  function options(select, values) {
    values.forEach(function (v) { var o = h('option', null, v); o.value = v; select.appendChild(o); });
  }
  function unique(key) {
    var seen = [];
    samples.forEach(function (x) { if (seen.indexOf(x[key]) < 0) { seen.push(x[key]); } });
    return seen;
  }
  options(fModel, unique('model'));
  options(fTask, unique('task'));
  function field(name, value) {
    var d = h('div', { 'class': 'field' });
    d.appendChild(h('div', { 'class': 'name' }, name));
    d.appendChild(h('pre', null, value === null || value === undefined ? '—' : value));
    return d;
  }
  function sampleNode(x) {
    var d = h('details', { 'class': 'sample', 'data-outcome': x.outcome });
    var sum = h('summary');
    sum.appendChild(h('b', null, x.model));
    sum.appendChild(document.createTextNode(' · ' + x.task + ' · ' + x.item_id + (x.category ? ' · ' + x.category : '')));
    sum.appendChild(h('span', { 'class': 'badge ' + x.outcome }, x.outcome));
    if (x.scores.length) {
      sum.appendChild(h('span', { 'class': 'badge' }, x.scores.map(function (p) { return p[0] + ' ' + (Math.round(p[1] * 1000) / 1000); }).join(', ')));
    }
    d.appendChild(sum);
    d.appendChild(field('prompt', x.prompt));
    d.appendChild(field('response', x.response));
    d.appendChild(field('extracted answer', x.answer));
    d.appendChild(field('target', x.target));
    if (x.error) { d.appendChild(field('error', x.error)); }
    x.judgments.forEach(function (j) {
      var head = 'judge ' + j.judge + ' (' + j.metric + ')' + (j.opponent ? ' vs ' + j.opponent + ', this answer shown as ' + j.slot : '') +
        ': ' + (j.error ? 'call failed' : 'verdict ' + (j.verdict === null ? '—' : j.verdict));
      d.appendChild(field(head, j.error ? j.error : j.raw));
    });
    d.setAttribute('data-run', x.run_id);
    return d;
  }
  function matches(x, needle) {
    if (fModel.value && x.model !== fModel.value) { return false; }
    if (fTask.value && x.task !== fTask.value) { return false; }
    if (fOutcome.value && x.outcome !== fOutcome.value) { return false; }
    if (!needle) { return true; }
    return [x.item_id, x.prompt, x.response, x.answer, x.target].some(function (t) { return t !== null && t !== undefined && String(t).toLowerCase().indexOf(needle) >= 0; });
  }
  function render() {
    var needle = search.value.toLowerCase();
    var hits = samples.filter(function (x) { return matches(x, needle); });
    while (list.firstChild) { list.removeChild(list.firstChild); }
    hits.slice(0, shown).forEach(function (x) { list.appendChild(sampleNode(x)); });
    count.textContent = 'showing ' + Math.min(shown, hits.length) + ' of ' + hits.length + ' matching (' + samples.length + ' in all)';
    more.hidden = hits.length <= shown;
  }
  [search, fModel, fTask, fOutcome].forEach(function (c) { c.addEventListener('input', function () { shown = PAGE; render(); }); });
  more.addEventListener('click', function () { shown += PAGE; render(); });
  // The filters can be given in the address: #samples?model=…&task=…&outcome=…&q=…
  if (location.hash.indexOf('#samples?') === 0) {
    var params = new URLSearchParams(location.hash.slice('#samples?'.length));
    fModel.value = params.get('model') || '';
    fTask.value = params.get('task') || '';
    fOutcome.value = params.get('outcome') || '';
    search.value = params.get('q') || '';
  }
  // A leaderboard cell opens that model's samples of that task.
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable tbody td[data-task]'), function (td) {
    if (td.getAttribute('data-task') === '') { return; }
    td.classList.add('drill');
    td.addEventListener('click', function () {
      fModel.value = td.parentNode.getAttribute('data-model');
      fTask.value = td.getAttribute('data-task');
      fOutcome.value = '';
      search.value = '';
      shown = PAGE;
      render();
      document.getElementById('samples').scrollIntoView();
    });
  });
  render();
}());
