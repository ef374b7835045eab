"""The circuit's graph page in a real browser: Debian's chromium, driven by Selenium.

A circuit found by ``saekit circuit`` on a tiny random model with two small dictionaries
(the first with a dashboard to link to), opened from its file:// URL: the nodes and edges
drawn are those of circuit.json (ids, labels, effects; edges by their ends), hovering a
node shows its effect and dims the edges it is not on, a linked node opens the page of its
own feature in the dashboard, and the console shows no error.

Skips (saying why) only when chromium, chromedriver or selenium is missing, as the
dashboard's browser test does (its paths, skip reason and helpers are reused).
"""

from __future__ import annotations

import json
import re
from urllib.parse import urldefrag

import pytest
import torch

import saekit
from conftest import browser_missing as _missing, random_dictionary
from saekit.cli import main
from test_dashboard_browser import screenshot, wait_for

pytestmark = pytest.mark.skipif(_missing() is not None, reason=f"no browser to drive: {_missing()}")

RECORDS = [
    {"clean_prefix": "the cat", "clean_answer": "s", "patch_prefix": "the dog", "patch_answer": "x"},
    {"clean_prefix": "the man", "clean_answer": "s", "patch_prefix": "the men", "patch_answer": "x"},
    {"clean_prefix": "a big one", "clean_answer": "s", "patch_prefix": "a bag two", "patch_answer": "x"},
]


@pytest.fixture(scope="module")
def found(model_dir, corpus, tmp_path_factory):
    """circuit.json and circuit.html of a run whose nodes include features of the dashboard's hook point."""
    root = tmp_path_factory.mktemp("circuit-page")
    lm = saekit.load_model(str(model_dir))
    folders = []
    for i, hook in enumerate(("resid_post.0", "resid_post.1")):
        d = random_dictionary("relu", lm.d_model, 24, i, hook=hook, model=lm.name, scale=0.2)
        with torch.no_grad():
            d.after_step()
        saekit.save(d, root / hook)
        folders.append(str(root / hook))
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    board = root / "board"
    assert main(["dashboard", folders[0], "--model", str(model_dir), "--dataset", str(corpus), "--out", str(board),
                 "--tokens", "400", "--context-length", "16", "--all"]) == 0
    out = root / "c"
    base = ["circuit", "--dictionaries", *folders, "--model", str(model_dir), "--data", str(data), "--out", str(out)]
    main([*base, "--node-threshold", "1e9"])  # no node passes: effects.json tells the scale
    effects = json.loads((out / "effects.json").read_text())["nodes"]
    # A threshold that keeps about a dozen nodes, features of both points among them.
    threshold = sorted(abs(n["effect"]) for n in effects)[-12]
    assert main([*base, "--node-threshold", repr(threshold), "--edge-threshold", "0", "--dashboard", str(board)]) == 0
    circuit = json.loads((out / "circuit.json").read_text())
    return out, circuit


def drawn(driver) -> dict:
    """What the page drew, read in one script."""
    return driver.execute_script("""
        const nodes = Array.from(document.querySelectorAll('svg g.node:not(.sink)'), g => ({
            id: g.dataset.id, effect: Number(g.dataset.effect), kind: g.classList.contains('error') ? 'error' : 'feature',
            label: g.querySelector('text').textContent,
            href: g.parentElement.tagName.toLowerCase() === 'a' ? g.parentElement.getAttribute('href') : null}));
        const edges = Array.from(document.querySelectorAll('svg line.edge'), e => ({
            from: e.dataset.from, to: e.dataset.to, width: Number(e.getAttribute('stroke-width'))}));
        return {nodes, edges};""")


def test_the_page_draws_the_circuit_it_was_written_for(browser, found, tmp_path):
    out, circuit = found
    browser.get((out / "circuit.html").resolve().as_uri())  # from file://: no server, no external asset
    wait_for(browser, lambda d: d.execute_script("return document.readyState") == "complete", "the page")
    page = drawn(browser)
    by_id = {n["id"]: n for n in circuit["nodes"]}
    assert sorted(n["id"] for n in page["nodes"]) == sorted(by_id)
    for n in page["nodes"]:
        want = by_id[n["id"]]
        assert n["kind"] == ("error" if want["feature"] == "error" else "feature")
        assert n["label"] == ("ε" if want["feature"] == "error" else str(want["feature"]))
        assert n["effect"] == pytest.approx(want["effect"], rel=1e-9)
    assert len(page["edges"]) == len(circuit["edges"]) > 0
    assert sorted((e["from"], e["to"]) for e in page["edges"]) == sorted((e["from"], e["to"]) for e in circuit["edges"])
    # The strongest edge is drawn widest.
    strongest = max(circuit["edges"], key=lambda e: abs(e["weight"]))
    widest = max(page["edges"], key=lambda e: e["width"])
    assert abs(next(e["weight"] for e in circuit["edges"] if (e["from"], e["to"]) == (widest["from"], widest["to"]))) \
        == pytest.approx(abs(strongest["weight"]))
    assert browser.execute_script("return document.querySelectorAll('svg g.node.sink').length") == 1
    facts = browser.find_element("css selector", ".facts").text
    assert f"nodes {len(circuit['nodes'])}" in facts and f"edges {len(circuit['edges'])}" in facts
    screenshot(browser, tmp_path, "circuit-page", whole_page=True)
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE" and "favicon" not in e["message"]]
    assert not errors


def test_hovering_a_node_shows_its_effect_and_a_linked_node_opens_its_feature_page(browser, found, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    out, circuit = found
    url = (out / "circuit.html").resolve().as_uri()
    browser.get(url)
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "svg g.node"), "the graph")
    ends = {}
    for e in circuit["edges"]:
        ends.setdefault(e["from"], set()).add((e["from"], e["to"]))
        ends.setdefault(e["to"], set()).add((e["from"], e["to"]))
    # The node on most edges, so that hovering it visibly leaves others dimmed. The values shown
    # must not move the graph: if they did, the node would slip from under the pointer, the
    # values would go, the graph move back, and so on (a page bug this catches).
    node = max(circuit["nodes"], key=lambda n: len(ends.get(n["id"], ())))
    box = browser.find_element(By.CSS_SELECTOR, f'svg g.node[data-id="{node["id"]}"] rect')
    ActionChains(browser).move_to_element(box).perform()
    info = browser.find_element(By.ID, "info")
    wait_for(browser, lambda d: node["id"] in info.text, "the hovered node's values")
    shown = re.search(r"effect ([-+]\S+)", info.text)
    assert shown and float(shown.group(1)) == pytest.approx(node["effect"], rel=1e-5)
    lit = browser.execute_script(
        "return Array.from(document.querySelectorAll('line.edge:not(.dim)'), e => [e.dataset.from, e.dataset.to])")
    assert {tuple(pair) for pair in lit} == ends.get(node["id"], set())
    screenshot(browser, tmp_path, "circuit-hover")
    ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()  # off the node
    wait_for(browser, lambda d: info.text == "", "the values cleared")
    assert not browser.find_elements(By.CSS_SELECTOR, "line.edge.dim")

    # Feature nodes of the dashboard's hook point link to their own pages; nothing else links.
    page = drawn(browser)
    linked = [n for n in page["nodes"] if n["href"]]
    want = [n for n in circuit["nodes"] if n["hook"] == "resid_post.0" and n["feature"] != "error"]
    assert want, "the threshold should keep a feature of the dashboard's hook point"
    assert sorted(n["id"] for n in linked) == sorted(n["id"] for n in want)
    target = next(n for n in want if n["id"] == linked[0]["id"])
    href = browser.execute_script("return new URL(arguments[0], location.href).href", linked[0]["href"])
    assert urldefrag(href).fragment == str(target["feature"])
    browser.get(href)
    wait_for(browser, lambda d: d.find_elements(By.ID, "feature-title")
             and d.find_element(By.ID, "feature-title").text == f"Feature #{target['feature']}", "the feature's page")
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE" and "favicon" not in e["message"]]
    assert not errors
