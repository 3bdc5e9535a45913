// The charts of distributary's diagnostics pages: the task stream and the flame graph,
// drawn as SVG from the JSON beside each chart.  No libraries, no network.
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";
  var ROW = 18; // pixels per row of the task stream and of the flame graph
  var LABELS = 170; // pixels for the row labels of the task stream
  var AXIS = 24; // pixels for the time axis

  function node(name, attrs, parent, text) {
    var el = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (k) {
      el.setAttribute(k, attrs[k]);
    });
    if (text !== undefined) {
      el.textContent = text;
    }
    if (parent) {
      parent.appendChild(el);
    }
    return el;
  }

  function tooltip(el, text) {
    node("title", {}, el, text);
  }

  function svg(container, width, height) {
    var root = node("svg", {
      width: width,
      height: height,
      viewBox: "0 0 " + width + " " + height,
      role: "img",
    });
    container.appendChild(root);
    return root;
  }

  function empty(container, message) {
    var p = document.createElement("p");
    p.className = "empty";
    p.textContent = message;
    container.appendChild(p);
  }

  function formatTime(seconds) {
    var s = Math.abs(seconds);
    if (s >= 60) return (seconds / 60).toFixed(1) + " min";
    if (s >= 1) return seconds.toFixed(2) + " s";
    if (s >= 1e-3) return (seconds * 1e3).toFixed(1) + " ms";
    return (seconds * 1e6).toFixed(0) + " us";
  }

  function hash(text) {
    var h = 0;
    for (var i = 0; i < text.length; i++) {
      h = (h * 31 + text.charCodeAt(i)) | 0;
    }
    return Math.abs(h);
  }

  function colorOf(text) {
    return "hsl(" + (hash(text) % 360) + ", 62%, 55%)";
  }

  function niceStep(span, ticks) {
    var raw = span / ticks;
    var power = Math.pow(10, Math.floor(Math.log10(raw)));
    var steps = [1, 2, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (raw <= steps[i] * power) return steps[i] * power;
    }
    return 10 * power;
  }

  function timeAxis(root, x0, width, y, span) {
    var axis = node("g", { class: "axis" }, root);
    node("line", { x1: x0, x2: x0 + width, y1: y, y2: y }, axis);
    if (!(span > 0)) return;
    var step = niceStep(span, Math.max(2, Math.floor(width / 90)));
    for (var t = 0; t <= span + step / 1e6; t += step) {
      var x = x0 + (t / span) * width;
      node("line", { x1: x, x2: x, y1: y, y2: y + 4 }, axis);
      node("text", { x: x, y: y + 15, "text-anchor": "middle" }, axis, formatTime(t));
    }
  }

  // ------------------------------------------------------------------ task stream

  // The colors of task prefixes, in the order they appear (none red or orange: those
  // are the transfers' and the disk's).
  var PALETTE = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#393b79", "#637939", "#7b4173", "#3182bd", "#31a354", "#756bb1",
    "#636363", "#aec7e8", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5"];

  function prefixColor(index, prefix) {
    return index < PALETTE.length ? PALETTE[index] : colorOf(prefix);
  }

  var PHASE_COLORS = {
    transfer: "#d62728",
    "disk-read": "#ff9800",
    "disk-write": "#ff9800",
  };

  function drawTaskStream(container, data) {
    if (!data.rects.length) {
      empty(container, "No tasks ran.");
      return;
    }
    var width = Math.max(container.clientWidth || 960, 400);
    var plot = width - LABELS - 10;
    var rowHeight = data.rows.length > 40 ? Math.max(4, Math.floor(720 / data.rows.length)) : ROW;
    var height = data.rows.length * rowHeight + AXIS + 4;
    var root = svg(container, width, height);
    root.setAttribute("class", "task-stream-chart");
    var span = Math.max(data.t1 - data.t0, 1e-6);
    var scale = plot / span;
    data.rows.forEach(function (label, i) {
      if (rowHeight >= 12) {
        node("text", { x: LABELS - 6, y: i * rowHeight + rowHeight - 5, "text-anchor": "end" },
          root, label);
      }
    });
    var layer = node("g", { transform: "translate(" + LABELS + ",0)" }, root);
    data.rects.forEach(function (r) {
      var row = r[0], start = r[1], stop = r[2], action = data.actions[r[3]];
      var key = data.keys[r[4]], prefix = data.prefixes[r[5]], ok = r[6], source = r[7];
      var fill = action === "compute" ? (ok ? prefixColor(r[5], prefix) : "#000")
        : PHASE_COLORS[action];
      var rect = node("rect", {
        class: "phase phase-" + action,
        x: (start * scale).toFixed(2),
        y: row * rowHeight + 1,
        width: Math.max(stop - start, 0) * scale < 1 ? 1 : ((stop - start) * scale).toFixed(2),
        height: Math.max(rowHeight - 2, 2),
        fill: fill,
        "fill-opacity": action === "compute" ? 1 : 0.55,
        "data-key": key,
        "data-action": action,
      }, layer);
      var text = (action === "compute" ? "" : action + " ") + key + "\n" +
        formatTime(stop - start) + (ok ? "" : " (error)");
      if (source >= 0) {
        text += "\nfrom " + data.workers[source];
      }
      tooltip(rect, text);
    });
    timeAxis(root, LABELS, plot, data.rows.length * rowHeight + 2, span);
    var legend = document.createElement("div");
    legend.className = "legend";
    data.prefixes.slice(0, 30).forEach(function (prefix, i) {
      var swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = prefixColor(i, prefix);
      legend.appendChild(swatch);
      legend.appendChild(document.createTextNode(prefix));
    });
    ["transfer", "disk-read"].forEach(function (action) {
      var swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = PHASE_COLORS[action];
      swatch.style.opacity = 0.55;
      legend.appendChild(swatch);
      legend.appendChild(document.createTextNode(action === "transfer" ? "transfer" : "disk"));
    });
    container.appendChild(legend);
  }

  // ------------------------------------------------------------------ flame graph

  // A node of the data: [name, filename, line number, line, count, children].
  function drawFlameGraph(container, data) {
    if (!data || !data[4]) {
      empty(container, "No samples.");
      return;
    }
    var path = [data]; // the root, down to the node in focus
    function draw() {
      container.textContent = "";
      var focus = path[path.length - 1];
      var crumbs = document.createElement("div");
      crumbs.className = "breadcrumbs";
      crumbs.textContent = path.map(function (n) { return n[0] || "all"; }).join(" > ") +
        " (" + focus[4] + " samples; click a frame to zoom in, an ancestor to zoom out)";
      container.appendChild(crumbs);
      var width = Math.max(container.clientWidth || 960, 400);
      var rows = [];
      var depth = path.length - 1;
      function layout(n, x, w, level) {
        if (w < 0.5) return;
        rows.push([n, x, w, level]);
        var cx = x;
        n[5].forEach(function (child) {
          var cw = (w * child[4]) / n[4];
          layout(child, cx, cw, level + 1);
          cx += cw;
        });
      }
      path.slice(0, depth).forEach(function (ancestor, i) {
        rows.push([ancestor, 0, width, i, true]);
      });
      layout(focus, 0, width, depth);
      var levels = 0;
      rows.forEach(function (r) { levels = Math.max(levels, r[3] + 1); });
      var root = svg(container, width, levels * ROW + 2);
      root.setAttribute("class", "flame-graph-chart");
      var total = data[4];
      rows.forEach(function (r) {
        var n = r[0], x = r[1], w = r[2], level = r[3], ancestor = r[4];
        var g = node("g", { transform: "translate(" + x.toFixed(2) + "," + level * ROW + ")" },
          root);
        var rect = node("rect", {
          class: "node",
          width: Math.max(w, 0.5).toFixed(2),
          height: ROW - 1,
          fill: n[1] ? colorOf(n[1]) : "#bbb",
          "fill-opacity": ancestor ? 0.5 : 1,
          "data-name": n[0],
        }, g);
        var where = n[1] ? n[1] + ":" + n[2] : "";
        tooltip(rect, (n[0] || "all") + (where ? "\n" + where : "") +
          (n[3] ? "\n" + n[3].trim() : "") + "\n" + n[4] + " samples (" +
          ((100 * n[4]) / total).toFixed(1) + "%)");
        if (w > 30) {
          var label = n[0] || "all";
          var fits = Math.floor((w - 6) / 6.5);
          node("text", { x: 3, y: ROW - 5 }, g,
            label.length > fits ? label.slice(0, Math.max(fits - 1, 1)) + "\u2026" : label);
        }
        rect.addEventListener("click", function () {
          var at = path.indexOf(n);
          if (at >= 0) {
            path = path.slice(0, at + 1);
          } else {
            path = path.concat(ancestry(path[path.length - 1], n));
          }
          draw();
        });
      });
    }
    draw();
  }

  // The nodes from below ``top`` down to ``target`` (empty if not under it).
  function ancestry(top, target) {
    var todo = [[top, []]];
    while (todo.length) {
      var item = todo.pop();
      var children = item[0][5];
      for (var i = 0; i < children.length; i++) {
        var trail = item[1].concat([children[i]]);
        if (children[i] === target) return trail;
        todo.push([children[i], trail]);
      }
    }
    return [];
  }

  // ------------------------------------------------------------------ the page

  var DRAW = { "task-stream": drawTaskStream, "flame-graph": drawFlameGraph };

  function drawAll() {
    var charts = document.querySelectorAll(".chart[data-kind]");
    Array.prototype.forEach.call(charts, function (container) {
      var source = document.getElementById(container.getAttribute("data-source"));
      container.textContent = "";
      DRAW[container.getAttribute("data-kind")](container, JSON.parse(source.textContent));
    });
  }

  var resizing = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(drawAll, 200);
  });
  drawAll();
})();
