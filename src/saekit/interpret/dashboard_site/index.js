// The index: every feature of the dashboard, searchable, sortable and paged.
//
// The rows live in chunk files of meta.index_chunk features. The first page in feature
// order needs one chunk; searching or sorting needs them all, and loads them then, so a
// dictionary of 100k+ features opens as fast as a small one.
(function () {
  "use strict";
  const { el, fmt, percent, oneIn, chip, clear, showError, sourceLine } = window.saekit;
  const ROW = { feature: 0, density: 1, max: 2, mean: 3, tokens: 4, explanation: 5, detection: 6, fuzzing: 7 };
  const PAGE_SIZES = [25, 50, 100, 200];

  let meta = null;
  let allRows = null; // every row, once loaded
  let view = null; // the rows matching the search, in the chosen order
  const state = { q: "", sort: "feature", dir: "asc", page: 0, size: 50 };
  const status = document.getElementById("status");
  const body = document.getElementById("rows");
  let renderToken = 0;

  function columns() {
    const cols = [
      { key: "feature", label: "Feature", numeric: true, title: "the feature's index in the dictionary" },
      { key: "density", label: "Density", numeric: true, title: "fraction of tokens where the feature is above 0" },
      { key: "max", label: "Max act.", numeric: true, title: "largest activation seen" },
      { key: "mean", label: "Mean act.", numeric: true, title: "mean activation where it is above 0" },
      { key: "tokens", label: "Top tokens", numeric: false, title: "tokens most often at the centre of its top examples" },
    ];
    if (meta.explained) cols.push({ key: "explanation", label: "Explanation", numeric: false, title: "written by a language model" });
    if (meta.scored) {
      cols.push({ key: "detection", label: "Detection", numeric: true, title: "balanced accuracy of a scorer told the explanation, telling activating contexts from others" });
      cols.push({ key: "fuzzing", label: "Fuzzing", numeric: true, title: "balanced accuracy of a scorer telling which highlighted tokens activate" });
    }
    return cols;
  }

  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    state.q = params.get("q") || "";
    state.sort = params.get("sort") || "feature";
    state.dir = params.get("dir") === "desc" ? "desc" : "asc";
    state.page = Math.max(0, (parseInt(params.get("page"), 10) || 1) - 1);
    const size = parseInt(params.get("size"), 10);
    state.size = PAGE_SIZES.includes(size) ? size : 50;
  }

  function writeHash() {
    const params = new URLSearchParams();
    if (state.q) params.set("q", state.q);
    if (state.sort !== "feature" || state.dir !== "asc") { params.set("sort", state.sort); params.set("dir", state.dir); }
    if (state.page) params.set("page", String(state.page + 1));
    if (state.size !== 50) params.set("size", String(state.size));
    const hash = params.toString();
    history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
    // The feature pages' "All features" link returns to this search, sort and page.
    try { sessionStorage.setItem("saekit-index", hash ? "#" + hash : ""); } catch (error) { /* storage off: plain link */ }
  }

  function isDefaultView() {
    return !state.q && state.sort === "feature" && state.dir === "asc";
  }

  async function loadAll() {
    if (allRows) return allRows;
    const names = [];
    for (let i = 0; i < meta.index_chunks; i++) names.push("index-" + String(i).padStart(5, "0"));
    let done = 0;
    const parts = await Promise.all(names.map((name) => window.saekitData.load(name).then((chunk) => {
      done += 1;
      if (meta.index_chunks > 1) status.textContent = "loading the index: " + done + " of " + meta.index_chunks + " parts";
      return chunk.rows;
    })));
    allRows = parts.flat();
    return allRows;
  }

  // The rows of one page in feature order, from the chunks that hold them only.
  async function defaultPage(start, stop) {
    const first = Math.floor(start / meta.index_chunk);
    const last = Math.floor((stop - 1) / meta.index_chunk);
    const rows = [];
    for (let c = first; c <= last; c++) {
      const chunk = await window.saekitData.load("index-" + String(c).padStart(5, "0"));
      rows.push(...chunk.rows);
    }
    const offset = first * meta.index_chunk;
    return rows.slice(start - offset, stop - offset);
  }

  function matches(row, q) {
    if (/^#?\d+$/.test(q) && row[ROW.feature] === parseInt(q.replace("#", ""), 10)) return true;
    const needle = q.toLowerCase();
    if (row[ROW.tokens].some((t) => t.toLowerCase().includes(needle) || t.trim().toLowerCase() === needle.trim())) return true;
    const explanation = row[ROW.explanation];
    return Boolean(explanation && explanation.toLowerCase().includes(needle));
  }

  function compare(key) {
    const i = ROW[key];
    const sign = state.dir === "desc" ? -1 : 1;
    return (a, b) => {
      let x = a[i], y = b[i];
      if (key === "tokens") { x = x.length ? x[0].trim().toLowerCase() : null; y = y.length ? y[0].trim().toLowerCase() : null; }
      if (typeof x === "string") x = x.toLowerCase();
      if (typeof y === "string") y = y.toLowerCase();
      // Missing values (a feature that never fired, no explanation) go last either way.
      if (x === null || x === undefined) return (y === null || y === undefined) ? a[0] - b[0] : 1;
      if (y === null || y === undefined) return -1;
      if (x < y) return -sign;
      if (x > y) return sign;
      return a[0] - b[0];
    };
  }

  async function render() {
    const token = ++renderToken;
    writeHash();
    renderHeader();
    let rows, total;
    try {
      if (isDefaultView()) {
        total = meta.n_features;
        state.page = Math.min(state.page, Math.max(0, Math.ceil(total / state.size) - 1));
        const start = state.page * state.size;
        rows = await defaultPage(start, Math.min(total, start + state.size));
        status.textContent = "";
      } else {
        const everything = await loadAll();
        const q = state.q.trim();
        view = q ? everything.filter((row) => matches(row, q)) : everything.slice();
        view.sort(compare(state.sort));
        total = view.length;
        state.page = Math.min(state.page, Math.max(0, Math.ceil(total / state.size) - 1));
        rows = view.slice(state.page * state.size, (state.page + 1) * state.size);
        status.textContent = q ? total.toLocaleString("en-US") + " of " + meta.n_features.toLocaleString("en-US") + " features match" : "";
      }
    } catch (error) {
      showError(body, error);
      return;
    }
    if (token !== renderToken) return; // a newer search or sort has started
    renderRows(rows);
    renderPager(total);
  }

  function renderHeader() {
    const row = clear(document.getElementById("columns"));
    for (const col of columns()) {
      const sorted = state.sort === col.key;
      const th = el("th", {
        className: (col.numeric ? "num " : "") + "sortable" + (sorted ? " sorted " + state.dir : ""),
        title: col.title + " (click to sort)", "data-key": col.key,
        "aria-sort": sorted ? (state.dir === "asc" ? "ascending" : "descending") : "none",
        onclick: () => {
          if (state.sort === col.key) state.dir = state.dir === "asc" ? "desc" : "asc";
          else { state.sort = col.key; state.dir = col.numeric && col.key !== "feature" ? "desc" : "asc"; }
          state.page = 0;
          render();
        },
      }, col.label, el("span", { className: "arrow" }, sorted ? (state.dir === "asc" ? "▲" : "▼") : ""));
      row.appendChild(th);
    }
  }

  function renderRows(rows) {
    clear(body);
    const cols = columns();
    if (!rows.length) {
      body.appendChild(el("tr", {}, el("td", { colspan: cols.length, className: "empty" }, "No feature matches “" + state.q + "”.")));
      return;
    }
    for (const row of rows) {
      const link = "feature.html#" + row[ROW.feature];
      const cells = {
        feature: el("td", { className: "num feature" }, el("a", { href: link }, "#" + row[ROW.feature])),
        density: el("td", { className: "num", title: oneIn(row[ROW.density]) }, densityBar(row[ROW.density]),
          el("span", { className: "dens" }, percent(row[ROW.density]))),
        max: el("td", { className: "num" }, fmt(row[ROW.max])),
        mean: el("td", { className: "num" }, fmt(row[ROW.mean])),
        tokens: el("td", { className: "tokens" }, row[ROW.tokens].map(chip)),
        explanation: el("td", { className: "explanation" }, row[ROW.explanation] || el("span", { className: "muted" }, "—")),
        detection: el("td", { className: "num score" }, score(row[ROW.detection])),
        fuzzing: el("td", { className: "num score" }, score(row[ROW.fuzzing])),
      };
      const tr = el("tr", { "data-feature": row[ROW.feature] }, cols.map((c) => cells[c.key]));
      tr.addEventListener("click", (event) => { if (!event.target.closest("a")) location.href = link; });
      body.appendChild(tr);
    }
  }

  // Density on a log scale from 1e-5 to 1: the eye compares orders of magnitude.
  function densityBar(density) {
    const width = density ? Math.max(3, Math.min(100, (Math.log10(density) + 5) / 5 * 100)) : 0;
    return el("span", { className: "bar" }, el("span", { style: { width: width + "%" } }));
  }

  function score(value) {
    if (value === null || value === undefined) return el("span", { className: "muted" }, "—");
    // Green from chance (0.5) up to perfect (1); grey at or below chance.
    const strength = Math.max(0, Math.min(1, (value - 0.5) * 2));
    return el("span", { className: "pill", style: { backgroundColor: "rgba(22, 163, 74, " + (0.08 + 0.5 * strength).toFixed(3) + ")" } },
      value.toFixed(2));
  }

  function renderPager(total) {
    const pager = clear(document.getElementById("pager"));
    const pages = Math.max(1, Math.ceil(total / state.size));
    const go = (page) => () => { state.page = page; render(); window.scrollTo(0, 0); };
    const first = total ? state.page * state.size + 1 : 0;
    const last = Math.min(total, (state.page + 1) * state.size);
    pager.append(
      el("button", { id: "prev-page", disabled: state.page === 0, onclick: go(state.page - 1) }, "‹ Previous"),
      el("span", { className: "where", id: "page-info" }, "Page " + (state.page + 1) + " of " + pages.toLocaleString("en-US") +
        " · features " + first.toLocaleString("en-US") + "–" + last.toLocaleString("en-US") + " of " + total.toLocaleString("en-US")),
      el("button", { id: "next-page", disabled: state.page >= pages - 1, onclick: go(state.page + 1) }, "Next ›"),
    );
    const select = el("select", { id: "page-size", "aria-label": "features per page" },
      PAGE_SIZES.map((n) => el("option", { value: n, selected: n === state.size }, n + " per page")));
    select.addEventListener("change", () => { state.size = parseInt(select.value, 10); state.page = 0; render(); });
    pager.append(select);
  }

  function renderSummary() {
    const summary = document.getElementById("summary");
    clear(document.getElementById("source")).append(...sourceLine(meta));
    const facts = [
      ["features shown", meta.n_features.toLocaleString("en-US") + (meta.d_sae ? " of " + meta.d_sae.toLocaleString("en-US") : "")],
      ["tokens read", meta.tokens_seen.toLocaleString("en-US")],
      ["context kept", meta.window[0] + " before, " + meta.window[1] + " after"],
    ];
    if (meta.explained) facts.push(["explained", meta.explained.toLocaleString("en-US") + (meta.scored ? " (" + meta.scored.toLocaleString("en-US") + " scored)" : "")]);
    summary.append(el("h1", {}, "Features"),
      el("dl", { className: "facts" }, facts.map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, v)))));
  }

  async function start() {
    try {
      meta = await window.saekitData.load("meta");
    } catch (error) {
      showError(document.querySelector("main"), error);
      return;
    }
    document.title = "saekit features · " + (meta.hook || meta.dictionary);
    readHash();
    renderSummary();
    const search = document.getElementById("search");
    search.value = state.q;
    let timer = null;
    search.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => { state.q = search.value; state.page = 0; render(); }, 150);
    });
    search.addEventListener("keydown", (event) => {
      if (event.key === "Enter") { clearTimeout(timer); state.q = search.value; state.page = 0; render(); }
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "/" && document.activeElement !== search) { event.preventDefault(); search.focus(); }
    });
    render();
  }

  start();
})();
