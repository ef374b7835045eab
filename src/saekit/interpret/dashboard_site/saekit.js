// The dashboard's shared code: the data loader and small DOM helpers.
//
// Data files are JavaScript that call saekitData.add(name, data); they are loaded by
// inserting <script> tags, because a page opened from a file:// URL may not fetch() or
// XHR local files, while <script src> works there and over HTTP alike.
(function () {
  "use strict";
  const store = Object.create(null);
  const waiting = Object.create(null);

  function add(name, data) {
    store[name] = data;
    const callbacks = waiting[name] || [];
    delete waiting[name];
    callbacks.forEach((c) => c.resolve(data));
  }

  function load(name) {
    if (name in store) return Promise.resolve(store[name]);
    return new Promise((resolve, reject) => {
      if (waiting[name]) {
        waiting[name].push({ resolve, reject });
        return;
      }
      waiting[name] = [{ resolve, reject }];
      const script = document.createElement("script");
      script.src = "data/" + name + ".js";
      script.onerror = () => {
        const callbacks = waiting[name] || [];
        delete waiting[name];
        const error = new Error("could not load data/" + name + ".js: the dashboard folder is incomplete; write it again with saekit dashboard");
        callbacks.forEach((c) => c.reject(error));
      };
      document.head.appendChild(script);
    });
  }

  // An element: attributes (className, href, title, dataset via "data-x", style via object)
  // and children (strings become text nodes, so nothing from the data is parsed as HTML).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "style") Object.assign(node.style, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  // A figure to three significant digits, without exponents for everyday magnitudes.
  function fmt(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return "—";
    digits = digits || 3;
    if (value === 0) return "0";
    const a = Math.abs(value);
    if (a >= 1e5 || a < 1e-3) return value.toExponential(digits - 1).replace("e+", "e");
    if (a >= Math.pow(10, digits)) return Math.round(value).toLocaleString("en-US");
    return String(Number(value.toPrecision(digits)));
  }

  function percent(value) {
    if (value === null || value === undefined) return "—";
    if (value === 0) return "0%";
    const p = value * 100;
    return (p >= 0.01 ? fmt(p, 3) : p.toExponential(1)) + "%";
  }

  // Density as "1 in N tokens": easier to compare than small percentages.
  function oneIn(density) {
    if (!density) return "never fired";
    const n = 1 / density;
    return n < 1.05 ? "almost every token" : "1 in " + fmt(n, 3) + " tokens";
  }

  // A token as a chip; one made of spaces only shows them as ␣ (an empty chip says nothing).
  function chip(text) {
    const shown = /^ +$/.test(text) ? "␣".repeat(text.length) : text;
    return el("span", { className: "chip", title: JSON.stringify(text) }, shown);
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function showError(where, error) {
    clear(where).appendChild(el("p", { className: "error" }, String(error && error.message ? error.message : error)));
  }

  function sourceLine(meta) {
    const parts = [];
    if (meta.dictionary) parts.push(el("span", { title: "dictionary" }, meta.dictionary));
    if (meta.hook) parts.push(el("span", { className: "hook", title: "hook point" }, meta.hook));
    if (meta.model) parts.push(el("span", { title: "model" }, meta.model));
    return parts;
  }

  window.saekitData = { add, load };
  window.saekit = { el, svg, fmt, percent, oneIn, chip, clear, showError, sourceLine };
})();
