// distributary dashboard: what every page shares (the live feed, formatting, SVG helpers).
"use strict";

const DS = (() => {
  const SVG_NS = "http://www.w3.org/2000/svg";

  // Connect to the live feed (server-sent events); call onFrame with each frame.
  function connect(onFrame) {
    const live = document.querySelector("nav .live");
    const source = new EventSource("/events");
    source.onopen = () => setLive(live, true);
    source.onerror = () => setLive(live, false);  // (the browser connects again by itself)
    source.onmessage = (message) => {
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch (error) {
        console.warn("dashboard: a frame that is not JSON", error);
        return;
      }
      onFrame(frame);
    };
    window.addEventListener("beforeunload", () => source.close());
    return source;
  }

  function setLive(element, on) {
    if (!element) return;
    element.className = "live " + (on ? "on" : "off");
    element.textContent = on ? "live" : "reconnecting";
  }

  function el(tag, attributes, children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    for (const child of children || []) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attributes, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function bytes(n) {
    if (!isFinite(n) || n <= 0) return "0 B";
    const units = ["B", "kiB", "MiB", "GiB", "TiB", "PiB"];
    const i = Math.min(Math.floor(Math.log(n) / Math.log(1024)), units.length - 1);
    const value = n / Math.pow(1024, i);
    return (value >= 100 || i === 0 ? value.toFixed(0) : value.toFixed(1)) + " " + units[i];
  }

  function rate(n) {
    return bytes(n) + "/s";
  }

  function seconds(s) {
    if (s < 1) return (s * 1000).toFixed(0) + " ms";
    if (s < 120) return s.toFixed(1) + " s";
    return (s / 60).toFixed(1) + " min";
  }

  // A colour per task prefix, the same on every page and every visit.
  const colours = new Map();
  function colour(prefix) {
    let c = colours.get(prefix);
    if (c === undefined) {
      let hash = 0;
      for (let i = 0; i < prefix.length; i++) hash = (hash * 31 + prefix.charCodeAt(i)) | 0;
      c = "hsl(" + (((hash % 360) + 360) % 360) + ", 62%, 50%)";
      colours.set(prefix, c);
    }
    return c;
  }

  // A worker's name or address without its tcp:// (shorter labels).
  function short(name) {
    return String(name).replace(/^tcp:\/\//, "");
  }

  function workerLink(address, label) {
    return el("a", { href: "/info/worker/" + encodeURIComponent(address), text: label || address });
  }

  function taskLink(key) {
    return el("a", { href: "/info/task/" + encodeURIComponent(key), text: key });
  }

  // Replace the children of ``node`` (a page section) with ``children``.
  function fill(node, children) {
    node.replaceChildren(...children);
  }

  return { connect, el, svg, bytes, rate, seconds, colour, short, workerLink, taskLink, fill };
})();
