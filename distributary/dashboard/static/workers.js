// distributary dashboard: the workers page (one table row per worker, updated live).
"use strict";

function meter(fraction, text) {
  const bar = DS.el("span", { class: "bar" }, [DS.el("span")]);
  bar.firstChild.style.width = Math.min(Math.max(fraction, 0), 1) * 100 + "%";
  return DS.el("span", {}, [bar, text]);
}

function row(w, now) {
  const cell = (value, cls) => DS.el("td", cls ? { class: cls } : {}, [value]);
  const memory = w.memory_limit ? w.memory / w.memory_limit : 0;
  return DS.el("tr", { "data-address": w.address }, [
    cell(DS.workerLink(w.address, w.name)),
    cell(w.address),
    cell(w.nthreads, "num"),
    cell(meter(w.cpu / (100 * w.nthreads), w.cpu.toFixed(0) + " %")),
    cell(meter(memory, DS.bytes(w.memory) + (w.memory_limit ? " / " + DS.bytes(w.memory_limit) : ""))),
    cell(DS.bytes(w.managed), "num"),
    cell(DS.bytes(w.spilled), "num"),
    cell(DS.rate(w.read_bps), "num"),
    cell(DS.rate(w.write_bps), "num"),
    cell(w.processing, "num"),
    cell(w.stored, "num"),
    cell(w.status),
    cell(DS.seconds(Math.max(now - w.last_seen, 0)) + " ago", "num"),
  ]);
}

DS.connect((frame) => {
  const body = document.querySelector("#workers-table tbody");
  if (!frame.workers.length) {
    DS.fill(body, [DS.el("tr", {}, [DS.el("td", { colspan: 13, class: "empty", text: "No workers" })])]);
    return;
  }
  DS.fill(body, frame.workers.map((w) => row(w, frame.time)));
});
