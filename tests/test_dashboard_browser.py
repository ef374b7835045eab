"""The dashboard in a real browser: Debian's chromium, driven by Selenium through chromedriver.

A dashboard for a tiny random model and dictionary (its data split into small chunks, so
paging, searching and sorting cross chunk files), served by `saekit serve` in a subprocess:
the index shows every feature, searches, sorts; a feature page shows the values of the
FeatureExamples it was built from; hovering a token shows its activation. The same site
opens from its file:// URL, and markup in a token displays as text and never runs.
Screenshots go to the test's tmp folder and, when SAEKIT_SCREENSHOT_DIR is set, there.

Skips (saying why) only when chromium, chromedriver or selenium is missing
(scripts/install_browser.sh installs the first two).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import saekit
from saekit.interpret.dashboard import readable_tokens, write_dashboard

from conftest import WAIT, browser_missing as _missing, random_dictionary
from test_dashboard import EXPLANATIONS, PieceTokenizer, hand_examples, hand_views


pytestmark = pytest.mark.skipif(_missing() is not None, reason=f"no browser to drive: {_missing()}")


@pytest.fixture(scope="module")
def site(model_dir, corpus, tmp_path_factory):
    """A dashboard of 90 features of a tiny model's dictionary, in chunks of 25 (index) and 10 (pages)."""
    from saekit.interpret.directions import nearest_features, output_tokens
    from saekit.interpret.examples import collect_examples

    lm = saekit.load_model(str(model_dir))
    d = random_dictionary("relu", lm.d_model, 96, 0, hook="resid_post.1", model=lm.name, scale=0.2)
    with torch.no_grad():
        d.after_step()
    features = list(range(90))
    examples = collect_examples(d, lm, features=features, tokens=2000, dataset=str(corpus), context_length=32,
                                top=8, samples=12)
    explanations = {7: {"feature": 7, "explanation": "names of rivers", "explainer": "tiny",
                        "scores": {"detection": {"balanced_accuracy": 0.7, "auroc": 0.75, "n": 10}}}}
    out = tmp_path_factory.mktemp("dashboard") / "site"
    write_dashboard(out, examples, lm.tokenizer, output_tokens=output_tokens(d, lm, features, k=6),
                    nearest=nearest_features(d, features, k=6), explanations=explanations, d_sae=96,
                    index_chunk=25, feature_chunk=10)
    return out, examples, lm.tokenizer


@pytest.fixture(scope="module")
def served(site):
    """`saekit serve` on a free port, in a subprocess; its URL from the line it prints."""
    out = site[0]
    proc = subprocess.Popen([sys.executable, "-m", "saekit", "serve", str(out), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert match, f"saekit serve printed {line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        yield match.group(0)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: it stops cleanly
        try:
            assert proc.wait(WAIT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            proc.stderr.close()


def wait_for(driver, condition, what: str):
    """Wait until ``condition(driver)`` holds. An element the page re-renders between being
    found and being read goes stale; that poll is retried, like one that finds nothing."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: condition(d), message=f"waiting for {what}")


def shown_rows(driver) -> list[int]:
    """The features the index lists now, read in one script (a re-render cannot slip in between)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#rows tr[data-feature]'), tr => Number(tr.dataset.feature))")


def screenshot(driver, tmp_path: Path, name: str, whole_page: bool = False) -> Path:
    """A PNG of the window (or of the whole page, through the DevTools protocol)."""
    path = tmp_path / f"{name}.png"
    if whole_page:
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(shot["data"]))
    else:
        driver.save_screenshot(str(path))
    if os.environ.get("SAEKIT_SCREENSHOT_DIR"):
        target = Path(os.environ["SAEKIT_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return path


def test_the_index_searches_sorts_and_opens_a_feature_page_that_shows_the_data(browser, site, served, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    out, examples, tokenizer = site
    features = examples.features.tolist()
    browser.set_window_size(1400, 1000)
    browser.get(served + "index.html")
    wait_for(browser, lambda d: len(shown_rows(d)) == 50, "the first page of the index")
    assert shown_rows(browser) == features[:50]  # page 1 spans two index chunks of 25
    assert "of 90" in browser.find_element(By.ID, "page-info").text
    screenshot(browser, tmp_path, "dashboard-index")
    browser.find_element(By.ID, "next-page").click()
    wait_for(browser, lambda d: shown_rows(d) == features[50:], "the second page")

    # search: by index, and by explanation text
    search = browser.find_element(By.ID, "search")
    search.send_keys("17", Keys.ENTER)
    wait_for(browser, lambda d: 17 in shown_rows(d), "feature 17 found by its index")
    assert shown_rows(browser)[0] == 17
    search.clear()
    search.send_keys("rivers", Keys.ENTER)
    wait_for(browser, lambda d: shown_rows(d) == [7], "the feature whose explanation says rivers")
    assert "names of rivers" in browser.find_element(By.CSS_SELECTOR, "#rows tr").text
    search.clear()
    search.send_keys(Keys.ENTER)
    wait_for(browser, lambda d: shown_rows(d) == features[:50], "the index in feature order again")

    # sort by maximum activation: descending on the first click, ascending on the second (the
    # site holds figures to 4 significant digits, so features equal to that many are tied)
    maxima = [float(f"{v:.4g}") for v in examples.max_activation.tolist()]
    header = browser.find_element(By.CSS_SELECTOR, "th[data-key='max']")
    header.click()
    wait_for(browser, lambda d: shown_rows(d) != features[:50], "the index sorted")
    shown = shown_rows(browser)
    values = [maxima[features.index(f)] for f in shown]
    assert values == sorted(values, reverse=True) and len(shown) == 50
    assert maxima[features.index(shown[0])] == max(maxima)
    browser.find_element(By.CSS_SELECTOR, "th[data-key='max']").click()
    wait_for(browser, lambda d: shown_rows(d) and shown_rows(d)[0] != shown[0], "the index sorted ascending")
    ascending = [maxima[features.index(f)] for f in shown_rows(browser)]
    assert ascending == sorted(ascending)
    browser.find_element(By.CSS_SELECTOR, "th[data-key='max']").click()
    wait_for(browser, lambda d: shown_rows(d) == shown, "the index sorted descending again")

    # the feature page of the strongest feature: figures and the top example as the data has them
    f = shown[0]
    browser.find_element(By.CSS_SELECTOR, f"#rows tr[data-feature='{f}'] td.feature a").click()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#top-card .example"), "the feature page")
    r = features.index(f)
    assert browser.find_element(By.ID, "feature-title").text == f"Feature #{f}"
    assert float(browser.find_element(By.ID, "stat-max").text) == pytest.approx(maxima[r], rel=5e-3)
    assert float(browser.find_element(By.ID, "stat-mean").text) == pytest.approx(float(examples.mean_activation[r]), rel=5e-3)
    assert browser.find_element(By.ID, "stat-count").text == f"{int(examples.count[r]):,}"
    top = examples.top_examples(f)
    shown_examples = browser.find_elements(By.CSS_SELECTOR, "#top-card .example")
    assert len(shown_examples) == len(top)
    vocab = readable_tokens(tokenizer, top[0].tokens)
    first = shown_examples[0]
    assert first.find_element(By.CSS_SELECTOR, ".context").get_attribute("textContent") == "".join(vocab[t] for t in top[0].tokens)
    assert float(first.find_element(By.CSS_SELECTOR, ".value").text) == pytest.approx(top[0].value, rel=5e-3)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#quantile-card .quantile")) == 4
    assert browser.find_elements(By.CSS_SELECTOR, "#histogram rect.bin")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#boosts tbody tr")) == 6
    assert len(browser.find_elements(By.CSS_SELECTOR, "#nearest li")) == 6

    # hovering the example's own token shows its activation
    centre = first.find_element(By.CSS_SELECTOR, ".tok.centre")
    ActionChains(browser).move_to_element(centre).perform()
    tip = browser.find_element(By.ID, "tip")
    wait_for(browser, lambda d: tip.is_displayed(), "the tooltip")
    value = re.search(r"activation (\S+)", tip.text)
    assert value and float(value.group(1)) == pytest.approx(top[0].value, rel=5e-3)
    assert vocab[top[0].tokens[top[0].centre]] in tip.get_attribute("textContent")
    screenshot(browser, tmp_path, "dashboard-feature", whole_page=True)

    # the next feature, and back to the index
    following = features[r + 1] if r + 1 < len(features) else None
    if following is not None:
        browser.find_element(By.ID, "next").click()
        wait_for(browser, lambda d: d.find_element(By.ID, "feature-title").text == f"Feature #{following}", "the next feature")
    browser.find_element(By.ID, "back").click()  # back to the index as it was: sorted by max
    wait_for(browser, lambda d: shown_rows(d) == shown, "the index again, sorted as it was")
    browser_errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE" and "favicon" not in e["message"]]
    assert not browser_errors


def test_the_site_opens_from_its_file_url_and_markup_in_tokens_never_runs(browser, site, tmp_path):
    from selenium.webdriver.common.by import By

    out, examples, _ = site
    browser.get((out / "index.html").resolve().as_uri())
    wait_for(browser, lambda d: len(shown_rows(d)) == 50, "the index from file://")
    browser.get((out / "feature.html").resolve().as_uri() + "#89")
    wait_for(browser, lambda d: d.find_element(By.ID, "feature-title").text == "Feature #89", "a page from the last chunk")

    # a token that is markup displays as text: no element is made of it, nothing runs
    hand = hand_examples()
    outputs, nearest = hand_views(hand)
    markup = tmp_path / "markup"
    write_dashboard(markup, hand, PieceTokenizer(), output_tokens=outputs, nearest=nearest, explanations=EXPLANATIONS)
    browser.get((markup / "feature.html").resolve().as_uri() + "#2")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#top-card .example"), "the markup page")
    centre = browser.find_element(By.CSS_SELECTOR, "#top-card .example .tok.centre")
    assert centre.text == "<script>"
    page_text = browser.find_element(By.ID, "page").get_attribute("textContent")
    assert "<script>" in page_text and " <img" in page_text  # the markup tokens, as text
    assert not browser.find_elements(By.CSS_SELECTOR, "#page script, #page img, #page b")
    assert browser.execute_script("return window.pwned") is None
    browser.get((markup / "feature.html").resolve().as_uri() + "#5")
    wait_for(browser, lambda d: d.find_elements(By.ID, "explanation"), "an explained feature")
    assert browser.find_element(By.ID, "explanation").text == "names of <b>rivers</b>"
    assert "0.75" in browser.find_element(By.ID, "scores").text
    screenshot(browser, tmp_path, "dashboard-file-url", whole_page=True)
    browser.get((markup / "index.html").resolve().as_uri() + "#q=rivers")
    wait_for(browser, lambda d: shown_rows(d) == [5], "the explanation found")
    assert "names of <b>rivers</b>" in browser.find_element(By.CSS_SELECTOR, "#rows tr").text
    browser.get((markup / "feature.html").resolve().as_uri() + "#3")
    wait_for(browser, lambda d: "not in this dashboard" in d.find_element(By.ID, "page").text, "a feature it lacks")
