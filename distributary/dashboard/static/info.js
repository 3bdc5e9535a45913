// distributary dashboard: the info page of one worker (/info/worker/ADDRESS) or one task
// (/info/task/KEY), read from /api/worker/... or /api/task/..., and read again whenever
// the live feed pushes a frame (one read at a time).
"use strict";

const [, , kind, ...rest] = location.pathname.split("/");
const target = decodeURIComponent(rest.join("/"));

function facts(pairs) {
  const list = DS.el("dl", { class: "facts" });
  for (const [term, value] of pairs) {
    list.append(DS.el("dt", { text: term }), DS.el("dd", {}, [value === null || value === undefined ? "" : value]));
  }
  return list;
}

function keyTable(rows, columns) {
  if (!rows.length) return DS.el("p", { class: "empty", text: "None" });
  const head = DS.el("tr", {}, columns.map(([title]) => DS.el("th", { text: title })));
  const body = rows.map((r) => DS.el("tr", {}, columns.map(([, value, cls]) => DS.el("td", cls ? { class: cls } : {}, [value(r)]))));
  return DS.el("table", {}, [DS.el("thead", {}, [head]), DS.el("tbody", {}, body)]);
}

function panel(title, content) {
  return DS.el("section", { class: "panel wide" }, [DS.el("h2", { text: title }), content]);
}

function worker(w) {
  const metrics = w.services.dashboard
    ? DS.el("a", { href: `http://${w.host}:${w.services.dashboard}/metrics`, text: "/metrics" })
    : "";
  return [
    panel("Worker " + w.name, facts([
      ["Address", w.address], ["Status", w.status], ["Threads", w.nthreads],
      ["CPU", w.cpu.toFixed(0) + " %"],
      ["Memory", DS.bytes(w.memory) + " / " + DS.bytes(w.memory_limit)],
      ["Managed / unmanaged / spilled", `${DS.bytes(w.managed)} / ${DS.bytes(w.unmanaged)} / ${DS.bytes(w.spilled)}`],
      ["Network read / write", DS.rate(w.read_bps) + " / " + DS.rate(w.write_bps)],
      ["Processing", w.processing], ["Results held", `${w.stored} (${DS.bytes(w.nbytes)})`],
      ["Nanny", w.nanny || "none"], ["PID", w.pid], ["Directory", w.local_directory],
      ["Resources", JSON.stringify(w.resources)], ["Metrics", metrics],
    ])),
    panel("Processing", keyTable(w.processing_keys.map((key) => ({ key })), [["Key", (r) => DS.taskLink(r.key), "key"]])),
    panel("Held", keyTable(w.held, [
      ["Key", (r) => DS.taskLink(r.key), "key"], ["Type", (r) => r.type], ["Bytes", (r) => DS.bytes(r.nbytes), "num"],
    ])),
  ];
}

function task(t) {
  const links = (tasks, total) => DS.el("div", {}, [
    keyTable(tasks, [["Key", (r) => DS.taskLink(r.key), "key"], ["State", (r) => r.state]]),
    total > tasks.length ? DS.el("p", { class: "empty", text: `and ${total - tasks.length} more` }) : "",
  ]);
  const workers = (addresses) => DS.el("span", {}, addresses.flatMap((a, i) => (i ? [", ", DS.workerLink(a)] : [DS.workerLink(a)])));
  return [
    panel("Task " + t.key, facts([
      ["State", t.state], ["Prefix", t.prefix], ["Priority", JSON.stringify(t.priority)],
      ["Processing on", t.processing_on ? DS.workerLink(t.processing_on) : "none"],
      ["Held by", workers(t.who_has)], ["Bytes", t.nbytes >= 0 ? DS.bytes(t.nbytes) : "unknown"],
      ["Type", t.type], ["Wanted by", t.who_wants.join(", ")], ["Retries left", t.retries],
      ["Workers it killed", t.suspicious], ["Waiting on", t.waiting_on],
      ["Exception", t.exception ? DS.el("span", { class: "error", text: t.exception }) : "none"],
    ])),
    panel("Story", keyTable(t.story, [["From", (r) => r.start], ["To", (r) => r.finish], ["Stimulus", (r) => r.stimulus_id]])),
    panel(`Dependencies (${t.n_dependencies})`, links(t.dependencies, t.n_dependencies)),
    panel(`Dependents (${t.n_dependents})`, links(t.dependents, t.n_dependents)),
  ];
}

async function load() {
  const main = document.getElementById("info");
  const api = kind === "worker" ? "/api/worker/" : "/api/task/";
  let response;
  try {
    response = await fetch(api + encodeURIComponent(target));
  } catch (error) {
    DS.fill(main, [DS.el("p", { class: "error", text: "The scheduler cannot be reached" })]);
    return;
  }
  if (!response.ok) {
    DS.fill(main, [DS.el("p", { class: "error", text: await response.text() })]);
    return;
  }
  const data = await response.json();
  document.title = (kind === "worker" ? "Worker " : "Task ") + target + " - distributary";
  DS.fill(main, [DS.el("div", { class: "grid" }, kind === "worker" ? worker(data) : task(data))]);
}

let reading = false;
let again = false;

async function refresh() {
  if (reading) {
    again = true;
    return;
  }
  reading = true;
  try {
    await load();
  } finally {
    reading = false;
    if (again) {
      again = false;
      refresh();
    }
  }
}

DS.connect(refresh);
refresh();
