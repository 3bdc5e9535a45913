// distributary dashboard: the status page (task stream, progress, memory and processing).
"use strict";

const LABEL_WIDTH = 150;  // px left of every bar and of the task stream's rows
const ROW = 20;  // px per row of the bar charts
const STREAM_ROW = 14;  // px per thread of the task stream
const AXIS = 18;  // px of the task stream's time axis

// The task stream: a rectangle per task run (and per transfer) on each worker thread.
class TaskStream {
  constructor(canvas) {
    this.canvas = canvas;
    this.rectangles = [];
    this.seen = new Set();
    this.received = 0;
    this.limit = 1000;
    this.names = new Map();  // worker address -> name
    this.now = 0;
  }

  add(rectangles, limit) {
    if (limit) this.limit = limit;
    for (const r of rectangles) {
      const id = r.k + "|" + r.a + "|" + r.s;
      if (this.seen.has(id)) continue;
      this.seen.add(id);
      this.rectangles.push(r);
      this.received += 1;
    }
    if (this.rectangles.length > this.limit) {
      const dropped = this.rectangles.splice(0, this.rectangles.length - this.limit);
      for (const r of dropped) this.seen.delete(r.k + "|" + r.a + "|" + r.s);
    }
    this.canvas.dataset.rectangles = String(this.rectangles.length);
    this.canvas.dataset.received = String(this.received);
  }

  draw() {
    const canvas = this.canvas;
    const rows = new Map();
    for (const r of this.rectangles) rows.set(r.w + "|" + r.t, [r.w, r.t]);
    const order = [...rows.keys()].sort((a, b) => {
      const [wa, ta] = rows.get(a), [wb, tb] = rows.get(b);
      const na = this.names.get(wa) || wa, nb = this.names.get(wb) || wb;
      return na < nb ? -1 : na > nb ? 1 : ta - tb;
    });
    const index = new Map(order.map((row, i) => [row, i]));
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 800;
    const height = Math.max(order.length, 1) * STREAM_ROW + AXIS;
    canvas.style.height = height + "px";
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "11px system-ui, sans-serif";
    if (!this.rectangles.length) {
      ctx.fillStyle = "#656d76";
      ctx.fillText("No task has run since this page opened", LABEL_WIDTH, 12);
      return;
    }
    let first = Infinity, last = -Infinity;
    for (const r of this.rectangles) {
      if (r.s < first) first = r.s;
      if (r.e > last) last = r.e;
    }
    const end = Math.max(last, this.now);
    const start = end - Math.min(Math.max(end - first, 5), 300);
    const span = end - start;
    const plot = width - LABEL_WIDTH - 8;
    const x = (t) => LABEL_WIDTH + ((t - start) / span) * plot;
    ctx.fillStyle = "#656d76";
    for (const [row, i] of index) {
      const [w, t] = rows.get(row);
      const name = DS.short(this.names.get(w) || w).slice(-18);
      ctx.fillText(name + " #" + t, 4, i * STREAM_ROW + 11);
    }
    for (const r of this.rectangles) {
      if (r.e < start) continue;
      const y = index.get(r.w + "|" + r.t) * STREAM_ROW + 1;
      const left = Math.max(x(r.s), LABEL_WIDTH);
      const w = Math.max(x(r.e) - left, 1);
      ctx.fillStyle = r.x === "error" ? "#1f2328" : r.a === "compute" ? DS.colour(r.p)
        : r.a === "transfer" ? "rgba(200, 40, 40, 0.55)" : "rgba(120, 120, 120, 0.6)";
      ctx.fillRect(left, y, w, STREAM_ROW - 2);
    }
    const axis = order.length * STREAM_ROW;
    ctx.strokeStyle = "#d0d7de";
    ctx.beginPath();
    ctx.moveTo(LABEL_WIDTH, axis + 1);
    ctx.lineTo(width - 8, axis + 1);
    ctx.stroke();
    ctx.fillStyle = "#656d76";
    const step = niceStep(span / 6);
    for (let ago = 0; ago <= span; ago += step) {
      const label = ago ? "-" + DS.seconds(ago) : "now";
      ctx.fillText(label, Math.min(x(end - ago) - 10, width - 30), axis + 14);
    }
  }
}

function niceStep(raw) {
  const power = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1e-3))));
  for (const m of [1, 2, 5, 10]) if (m * power >= raw) return m * power;
  return 10 * power;
}

// Horizontal bars, one row per item: ``segments(item)`` gives [[value, colour, opacity]].
function bars(container, items, label, segments, scale, note, markers) {
  if (!items.length) {
    DS.fill(container, [DS.el("p", { class: "empty", text: "None" })]);
    return;
  }
  const width = container.clientWidth || 500;
  const plot = Math.max(width - LABEL_WIDTH - 110, 40);
  const chart = DS.svg("svg", { height: items.length * ROW, viewBox: `0 0 ${width} ${items.length * ROW}` });
  items.forEach((item, i) => {
    const y = i * ROW;
    const row = DS.svg("g", { "data-row": label(item) });
    row.append(DS.svg("text", { x: 0, y: y + 14 }, DS.short(label(item)).slice(-22)));
    row.append(DS.svg("rect", { x: LABEL_WIDTH, y: y + 3, width: plot, height: ROW - 6, fill: "#f6f8fa", stroke: "#d0d7de" }));
    let offset = 0;
    for (const [value, colour, opacity] of segments(item)) {
      const w = scale(item) > 0 ? (value / scale(item)) * plot : 0;
      if (w > 0) {
        row.append(DS.svg("rect", { x: LABEL_WIDTH + offset, y: y + 3, width: w, height: ROW - 6, fill: colour, "fill-opacity": opacity }));
      }
      offset += w;
    }
    for (const at of (markers ? markers(item) : [])) {
      const mx = LABEL_WIDTH + Math.min(at / scale(item), 1) * plot;
      row.append(DS.svg("line", { x1: mx, x2: mx, y1: y + 1, y2: y + ROW - 1, stroke: "#1f2328" }));
    }
    row.append(DS.svg("text", { x: LABEL_WIDTH + plot + 6, y: y + 14, class: "muted" }, note(item)));
    chart.append(row);
  });
  DS.fill(container, [chart]);
}

function drawProgress(prefixes) {
  bars(
    document.getElementById("progress"),
    prefixes,
    (p) => p.name,
    (p) => [
      [p.memory, DS.colour(p.name), 1],
      [p.released, DS.colour(p.name), 0.7],
      [p.processing, DS.colour(p.name), 0.3],
      [p.erred, "#b42318", 1],
    ],
    (p) => Math.max(p.total, 1),
    (p) => `${p.memory + p.released} / ${p.total}` + (p.erred ? ` (${p.erred} erred)` : ""),
  );
}

function drawMemory(workers) {
  const scale = Math.max(1, ...workers.map((w) => Math.max(w.memory_limit, w.memory + w.spilled)));
  bars(
    document.getElementById("memory"),
    workers,
    (w) => w.name,
    (w) => [[w.managed, "#0b6e99", 1], [w.unmanaged, "#7fb7d0", 1], [w.spilled, "#b8b8b8", 1]],
    () => scale,
    (w) => DS.bytes(w.memory) + (w.memory_limit ? " / " + DS.bytes(w.memory_limit) : ""),
    (w) => (w.memory_limit ? [w.memory_limit] : []),
  );
}

function drawProcessing(workers) {
  const scale = Math.max(1, ...workers.map((w) => Math.max(w.processing, w.nthreads)));
  bars(
    document.getElementById("processing"),
    workers,
    (w) => w.name,
    (w) => [[w.processing, "#0b6e99", 0.8]],
    () => scale,
    (w) => `${w.processing} (${w.nthreads} threads)`,
    (w) => [w.nthreads],
  );
}

function drawSummary(frame) {
  const workers = frame.workers;
  const sum = (f) => workers.reduce((total, w) => total + f(w), 0);
  const facts = [
    ["Workers", workers.length],
    ["Threads", sum((w) => w.nthreads)],
    ["Memory", DS.bytes(sum((w) => w.memory)) + " / " + DS.bytes(sum((w) => w.memory_limit))],
    ["Processing", sum((w) => w.processing)],
    ["Results held", sum((w) => w.stored)],
  ];
  DS.fill(document.getElementById("summary"), facts.map(([name, value]) =>
    DS.el("div", { "data-fact": name }, [DS.el("b", { text: String(value) }), name])));
}

const stream = new TaskStream(document.getElementById("task-stream"));
let latest = null;

function draw() {
  if (!latest) return;
  drawSummary(latest);
  drawProgress(latest.prefixes || []);
  drawMemory(latest.workers);
  drawProcessing(latest.workers);
  stream.draw();
}

DS.connect((frame) => {
  latest = frame;
  for (const w of frame.workers) stream.names.set(w.address, w.name);
  stream.now = frame.time;
  stream.add(frame.stream || [], frame.stream_length);
  requestAnimationFrame(draw);
});
window.addEventListener("resize", () => requestAnimationFrame(draw));
