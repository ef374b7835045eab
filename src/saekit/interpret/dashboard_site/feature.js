// One feature's page (feature.html#123), drawn from the data chunk that holds the feature.
(function () {
  "use strict";
  const { el, svg, fmt, percent, oneIn, chip, clear, showError, sourceLine, decodeRanks, decodeActivations, vocabulary } = window.saekit;
  const page = document.getElementById("page");
  const tip = document.getElementById("tip");
  let meta = null;
  let vocab = null; // the site's vocabulary, loaded with the first feature shown

  const chunkName = (c) => "features-" + String(c).padStart(5, "0");

  // The chunk holding feature f: chunks cover ascending, disjoint ranges [first, last].
  function chunkOf(f) {
    const ranges = meta.feature_chunks;
    let lo = 0, hi = ranges.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (f < ranges[mid][0]) hi = mid - 1;
      else if (f > ranges[mid][1]) lo = mid + 1;
      else return mid;
    }
    return -1;
  }

  function wanted() {
    const text = decodeURIComponent(location.hash.slice(1)).replace(/^feature[-=]?/, "");
    if (/^\d+$/.test(text)) return parseInt(text, 10);
    return meta.feature_chunks.length ? meta.feature_chunks[0][0] : null;
  }

  async function show() {
    hideTip();
    const f = wanted();
    const c = f === null ? -1 : chunkOf(f);
    let chunk = null, data = null;
    if (c >= 0) {
      try {
        const [words, loaded] = await Promise.all([window.saekitData.load("vocab"), window.saekitData.load(chunkName(c))]);
        vocab = vocab || vocabulary(words);
        chunk = loaded;
      } catch (error) {
        showError(page, error);
        return;
      }
      data = chunk.features.find((x) => x.f === f) || null;
    }
    if (!data) {
      renderNav(null, null, null);
      clear(page).append(el("h1", {}, "Feature " + (f === null ? "?" : "#" + f)),
        el("p", { className: "error" }, f === null ? "This dashboard holds no features."
          : "Feature " + f + " is not in this dashboard. " + coverage()),
        el("p", {}, el("a", { href: "index.html" }, "← all features")));
      return;
    }
    const ids = chunk.features.map((x) => x.f);
    const i = ids.indexOf(f);
    const prev = i > 0 ? ids[i - 1] : (c > 0 ? meta.feature_chunks[c - 1][1] : null);
    const next = i < ids.length - 1 ? ids[i + 1] : (c < meta.feature_chunks.length - 1 ? meta.feature_chunks[c + 1][0] : null);
    renderNav(f, prev, next);
    document.title = "Feature " + f + " · " + (meta.hook || meta.dictionary);
    render(data, vocab);
    window.scrollTo(0, 0);
  }

  function coverage() {
    const r = meta.feature_chunks;
    return r.length ? "It holds " + meta.n_features.toLocaleString("en-US") + " features, from #" + r[0][0] + " to #" + r[r.length - 1][1] + "." : "";
  }

  // The index's search, sort and page when it was last open in this tab.
  function lastIndexView() {
    try { return sessionStorage.getItem("saekit-index") || ""; } catch (error) { return ""; }
  }

  function renderNav(f, prev, next) {
    const nav = clear(document.getElementById("featnav"));
    nav.append(
      el("a", { href: "index.html" + lastIndexView(), className: "back", id: "back" }, "← All features"),
      prev === null ? el("span", { className: "disabled" }, "‹ Previous") : el("a", { href: "#" + prev, id: "prev", rel: "prev" }, "‹ #" + prev),
      el("form", { className: "jump", onsubmit: (event) => {
        event.preventDefault();
        const value = event.target.elements.go.value.trim().replace("#", "");
        if (/^\d+$/.test(value)) location.hash = "#" + value;
      } }, el("input", { name: "go", type: "text", inputmode: "numeric", placeholder: f === null ? "go to #" : "#" + f, "aria-label": "go to feature" })),
      next === null ? el("span", { className: "disabled" }, "Next ›") : el("a", { href: "#" + next, id: "next", rel: "next" }, "#" + next + " ›"),
    );
  }

  function render(d, vocab) {
    clear(page);
    const title = el("section", { className: "title" },
      el("h1", { id: "feature-title" }, "Feature ", el("span", { className: "index" }, "#" + d.f)),
      d.explanation ? el("p", { className: "explanation", id: "explanation" }, d.explanation.text) : null);
    page.append(title);
    if (d.explanation) page.append(explanationBlock(d.explanation));
    page.append(stats(d));

    const side = el("div", { className: "side" });
    side.append(card("Activation histogram", histogram(d), "hist-card"));
    if (d.boosts) side.append(card("Output tokens", outputTokens(d, vocab), "output-card"));
    if (d.nearest) side.append(card("Nearest features", nearest(d), "nearest-card",
      "by cosine of decoder directions"));

    const main = el("div", { className: "examples-col" });
    main.append(card("Top activations", d.top.length ? examples(d.top, vocab, d.max, "top")
      : el("p", { className: "muted" }, "This feature never fired in the " + meta.tokens_seen.toLocaleString("en-US") + " tokens read."),
      "top-card", d.top.length ? d.top.length + " contexts with the largest activations; the outlined token is each context's own" : null));
    if (d.quantiles.length) main.append(card("Samples across the activation range", quantiles(d, vocab), "quantile-card",
      "a uniform sample of activating tokens, split into intervals by value"));
    page.append(el("div", { className: "columns" }, main, side));
  }

  function card(heading, content, id, note) {
    return el("section", { className: "card", id: id },
      el("h2", {}, heading, note ? el("span", { className: "note" }, note) : null), content);
  }

  function explanationBlock(x) {
    const rows = [];
    for (const kind of ["detection", "fuzzing"]) {
      const s = x.scores[kind];
      if (!s) continue;
      rows.push(el("tr", {}, el("th", {}, kind), el("td", { className: "num" }, s.balanced_accuracy === null ? "—" : s.balanced_accuracy.toFixed(2)),
        el("td", { className: "num" }, s.auroc === null ? "—" : s.auroc.toFixed(2)), el("td", { className: "num" }, s.n === null ? "—" : String(s.n))));
    }
    return el("section", { className: "explained" },
      el("div", { className: "who" }, "explained by ", el("strong", {}, x.explainer || "a language model"),
        x.scorer ? [", scored by ", el("strong", {}, x.scorer)] : null),
      rows.length ? el("table", { className: "scores", id: "scores" },
        el("thead", {}, el("tr", {}, el("th", {}, ""), el("th", { className: "num" }, "balanced acc."), el("th", { className: "num" }, "AUROC"), el("th", { className: "num" }, "n"))),
        el("tbody", {}, rows)) : el("div", { className: "muted" }, "not scored yet"));
  }

  function stats(d) {
    const items = [
      ["Density", percent(d.density), oneIn(d.density), "stat-density"],
      ["Max activation", fmt(d.max), "largest seen", "stat-max"],
      ["Mean activation", fmt(d.mean), "where above 0", "stat-mean"],
      ["Activating tokens", d.count.toLocaleString("en-US"), "of " + meta.tokens_seen.toLocaleString("en-US") + " read", "stat-count"],
    ];
    return el("section", { className: "stats" }, items.map(([label, value, sub, id]) =>
      el("div", { className: "stat" }, el("div", { className: "label" }, label), el("div", { className: "value", id: id }, value),
        el("div", { className: "sub" }, sub))));
  }

  // Tokens coloured by activation (relative to the feature's maximum), the example's own
  // token outlined, the value on hover. The example holds the whole window, whose token
  // meta.window[0] is its own; positions outside the text (id -1) are left out.
  function context(example, vocab, scale) {
    const [tokens, activations, value] = example;
    const ranks = decodeRanks(tokens);
    const act = decodeActivations(activations, ranks.length);
    const centre = meta.window[0];
    const spans = [];
    ranks.forEach((rank, i) => {
      const id = vocab.id(rank);
      if (id === -1) return;
      const a = act[i];
      const text = vocab.text(rank);
      spans.push(el("span", {
        className: "tok" + (i === centre ? " centre" : "") + (a ? " on" : ""),
        style: a ? { backgroundColor: colour(a, scale) } : null,
        "data-act": String(a), "data-token": text, "data-id": String(id),
      }, text));
    });
    return el("div", { className: "example" },
      el("div", { className: "value", title: "activation at the outlined token" }, fmt(value)),
      el("div", { className: "context" }, spans));
  }

  function colour(a, scale) {
    const x = Math.min(1, Math.abs(a) / (scale || 1));
    const alpha = 0.12 + 0.78 * Math.pow(x, 0.8);
    return a > 0 ? "rgba(249, 115, 22, " + alpha.toFixed(3) + ")" : "rgba(59, 130, 246, " + alpha.toFixed(3) + ")";
  }

  function examples(list, vocab, scale, kind) {
    return el("div", { className: "examples " + kind }, list.map((e) => context(e, vocab, scale)));
  }

  function quantiles(d, vocab) {
    return d.quantiles.map((group, g) => {
      const values = group.map((e) => e[2]);
      const hi = Math.max(...values), lo = Math.min(...values);
      return el("div", { className: "quantile" },
        el("h3", {}, "Interval " + (g + 1) + " of " + d.quantiles.length,
          el("span", { className: "range" }, "activations " + fmt(lo) + " – " + fmt(hi)),
          el("span", { className: "note" }, group.length + " sample" + (group.length === 1 ? "" : "s"))),
        examples(group, vocab, d.max, "sample"));
    });
  }

  // The activation histogram on a log-x axis, from the shared log-spaced bin edges.
  function histogram(d) {
    const [first, counts] = d.hist;
    if (!counts.length) return el("p", { className: "muted" }, "no activations above 0");
    const edges = meta.bin_edges;
    const W = 360, H = 170, L = 40, R = 10, T = 12, B = 32;
    const x0 = Math.log10(edges[first]), x1 = Math.log10(edges[first + counts.length]);
    const span = Math.max(x1 - x0, 1e-9);
    const X = (v) => L + (Math.log10(v) - x0) / span * (W - L - R);
    const top = Math.max(...counts);
    const Y = (c) => H - B - c / top * (H - T - B);
    const chart = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "histogram", id: "histogram", role: "img",
      "aria-label": "histogram of activations, log scale" });
    chart.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
    chart.append(svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
    counts.forEach((c, i) => {
      if (!c) return;
      const a = X(edges[first + i]), b = X(edges[first + i + 1]);
      const bar = svg("rect", { x: a, y: Y(c), width: Math.max(0.8, b - a - 0.3), height: H - B - Y(c), class: "bin" });
      bar.append(svg("title", {}, fmt(edges[first + i]) + " – " + fmt(edges[first + i + 1]) + ": " + c.toLocaleString("en-US")));
      chart.append(bar);
    });
    for (const v of logTicks(Math.pow(10, x0), Math.pow(10, x1))) {
      const x = X(v);
      chart.append(svg("line", { x1: x, y1: H - B, x2: x, y2: H - B + 4, class: "axis" }));
      chart.append(svg("text", { x: x, y: H - B + 16, class: "tick", "text-anchor": "middle" }, fmt(v)));
    }
    chart.append(svg("text", { x: L - 6, y: T + 8, class: "tick", "text-anchor": "end" }, top.toLocaleString("en-US")));
    chart.append(svg("text", { x: L - 6, y: H - B, class: "tick", "text-anchor": "end" }, "0"));
    chart.append(svg("text", { x: (L + W - R) / 2, y: H - 4, class: "label", "text-anchor": "middle" }, "activation (log scale)"));
    if (d.mean) {
      const x = X(Math.min(Math.max(d.mean, Math.pow(10, x0)), Math.pow(10, x1)));
      chart.append(svg("line", { x1: x, y1: T, x2: x, y2: H - B, class: "mean" }));
      chart.append(svg("text", { x: x + 3, y: T + 8, class: "tick mean-label" }, "mean"));
    }
    return chart;
  }

  // Ticks at 1, 2, 5 × powers of ten (only powers of ten over a wide range).
  function logTicks(lo, hi) {
    const ticks = [];
    const decades = Math.log10(hi / lo);
    const steps = decades > 3 ? [1] : decades > 1.2 ? [1, 3] : [1, 2, 5];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      for (const m of steps) {
        const v = m * Math.pow(10, e);
        if (v >= lo * 0.999 && v <= hi * 1.001) ticks.push(v);
      }
    }
    return ticks;
  }

  function outputTokens(d, vocab) {
    const scale = Math.max(...d.boosts.map((x) => Math.abs(x[1])), ...d.suppresses.map((x) => Math.abs(x[1])), 1e-9);
    const table = (rows, kind) => el("table", { className: "logits " + kind, id: kind },
      el("thead", {}, el("tr", {}, el("th", { colspan: 2 }, kind === "boosts" ? "Promotes" : "Suppresses"))),
      el("tbody", {}, rows.map(([id, v]) => el("tr", {},
        el("td", { className: "tokcell" }, chip(vocab.textOf(id))),
        el("td", { className: "num" }, el("span", { className: "lbar " + kind, style: { width: (Math.abs(v) / scale * 34).toFixed(1) + "px" } }), fmt(v))))));
    return [el("p", { className: "note" }, "its decoder direction through the final norm and the unembedding (logit change per unit activation)"),
      el("div", { className: "pair" }, table(d.boosts, "boosts"), table(d.suppresses, "suppresses"))];
  }

  function nearest(d) {
    const present = new Set();
    return el("ol", { className: "nearest", id: "nearest" }, d.nearest.map(([id, cos]) => {
      present.add(id);
      const inside = chunkOf(id) >= 0;
      return el("li", {},
        inside ? el("a", { href: "#" + id }, "#" + id) : el("span", { className: "muted", title: "not in this dashboard" }, "#" + id),
        el("span", { className: "cos" }, el("span", { className: "lbar near", style: { width: (Math.max(0, cos) * 70).toFixed(1) + "px" } }), cos.toFixed(3)));
    }));
  }

  function showTip(span) {
    const a = parseFloat(span.dataset.act);
    clear(tip).append(el("span", { className: "tip-token" }, "“" + span.dataset.token + "”"),
      el("span", { className: "tip-act" }, "activation " + fmt(a)));
    tip.hidden = false;
    const box = span.getBoundingClientRect();
    const width = tip.offsetWidth;
    const left = Math.min(window.innerWidth - width - 8, Math.max(8, box.left + box.width / 2 - width / 2));
    tip.style.left = left + window.scrollX + "px";
    tip.style.top = box.top + window.scrollY - tip.offsetHeight - 6 + "px";
  }

  function hideTip() { tip.hidden = true; }

  page.addEventListener("mouseover", (event) => {
    const span = event.target.closest(".tok");
    if (span) showTip(span); else hideTip();
  });
  page.addEventListener("mouseleave", hideTip);
  document.addEventListener("keydown", (event) => {
    if (event.target.tagName === "INPUT") return;
    const link = event.key === "ArrowLeft" ? document.getElementById("prev") : event.key === "ArrowRight" ? document.getElementById("next") : null;
    if (link) location.hash = link.getAttribute("href");
  });

  async function start() {
    try {
      meta = await window.saekitData.load("meta");
    } catch (error) {
      showError(page, error);
      return;
    }
    clear(document.getElementById("source")).append(...sourceLine(meta));
    window.addEventListener("hashchange", show);
    show();
  }

  start();
})();
