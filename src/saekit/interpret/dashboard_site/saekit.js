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

  // A window's tokens as the data holds them: one string, each token's rank in the site's
  // vocabulary (data/vocab.js, the most used first) in a variable-length code. A code's last
  // character is one of CODE_LAST, any before it are of CODE_MORE (dashboard.py writes them).
  const CODE_LAST = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-";
  const CODE_MORE = "!#$%&'()*+,./:;=>?@[]^`{|}~";
  const LAST = new Int16Array(128).fill(-1);
  const MORE = new Int16Array(128).fill(-1);
  for (let i = 0; i < CODE_LAST.length; i++) LAST[CODE_LAST.charCodeAt(i)] = i;
  for (let i = 0; i < CODE_MORE.length; i++) MORE[CODE_MORE.charCodeAt(i)] = i;
  const FIRST_RANK = [0]; // the first rank of the codes with 0, 1, 2, ... characters of CODE_MORE
  for (let m = 0, capacity = CODE_LAST.length; m < 8; m++, capacity *= CODE_MORE.length) FIRST_RANK.push(FIRST_RANK[m] + capacity);

  function decodeRanks(code) {
    const ranks = [];
    let rest = 0, more = 0;
    for (let i = 0; i < code.length; i++) {
      const c = code.charCodeAt(i);
      if (c < 128 && MORE[c] >= 0) { rest = rest * CODE_MORE.length + MORE[c]; more++; continue; }
      ranks.push(c < 128 && LAST[c] >= 0 ? FIRST_RANK[more] + rest * CODE_LAST.length + LAST[c] : -1);
      rest = 0; more = 0;
    }
    return ranks;
  }

  // A window's non-zero activations, as the data holds them: one string in the same code,
  // three numbers each: position in the window, three significant digits less 100 (plus 900
  // when negative), power of ten zigzagged (0, -1, 1, -2, ... as 0, 1, 2, 3, ...).
  function decodeActivations(code, length) {
    const acts = new Array(length).fill(0);
    const numbers = decodeRanks(code);
    for (let k = 0; k + 2 < numbers.length; k += 3) {
      const d = numbers[k + 1], z = numbers[k + 2];
      const digits = (d % 900) + 100;
      const power = z % 2 ? -(z + 1) / 2 : z / 2;
      // Divided by an exact power of ten, not multiplied by 0.01: 123 / 100 reads 1.23.
      const value = power >= 0 ? digits * Math.pow(10, power) : digits / Math.pow(10, -power);
      acts[numbers[k]] = d >= 900 ? -value : value;
    }
    return acts;
  }

  // The site's vocabulary (data/vocab.js): the token of each rank, and the text of each id.
  function vocabulary(data) {
    const byId = new Map();
    data.ids.forEach((id, rank) => byId.set(id, data.texts[rank]));
    return {
      id: (rank) => (rank >= 0 && rank < data.ids.length ? data.ids[rank] : null),
      text: (rank) => (rank >= 0 && rank < data.texts.length ? data.texts[rank] : "<?>"),
      textOf: (id) => (byId.has(id) ? byId.get(id) : "<id " + id + ">"),
    };
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

  // A token as a chip; one made of blanks only shows them, a space as ␣ and any other blank
  // (a no-break space, an em space, ...) as ⍽, with its code point on hover: an empty chip
  // says nothing.
  function chip(text) {
    if (!/^\s+$/.test(text)) return el("span", { className: "chip", title: JSON.stringify(text) }, text);
    const shown = Array.from(text, (c) => (c === " " ? "␣" : "⍽")).join("");
    const points = Array.from(text, (c) => "U+" + c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")).join(" ");
    return el("span", { className: "chip", title: JSON.stringify(text) + " (" + points + ")" }, shown);
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
  window.saekit = { el, svg, fmt, percent, oneIn, chip, clear, showError, sourceLine, decodeRanks, decodeActivations, vocabulary };
})();
