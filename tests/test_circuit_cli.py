"""``saekit circuit`` end to end on a tiny random model, and its HTML graph page."""

from __future__ import annotations

import json
import re

import pytest
import torch

import saekit
from conftest import random_dictionary
from saekit.cli import main

RECORDS = [
    {"clean_prefix": "the cat", "clean_answer": "s", "patch_prefix": "the dog", "patch_answer": "x"},
    {"clean_prefix": "the man", "clean_answer": "s", "patch_prefix": "the men", "patch_answer": "x"},
    {"clean_prefix": "a big one", "clean_answer": "s", "patch_prefix": "a bag two", "patch_answer": "x"},
]


@pytest.fixture(scope="module")
def lm(model_dir):
    return saekit.load_model(str(model_dir))


@pytest.fixture(scope="module")
def folders(lm, model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("dicts")
    out = []
    for i, hook in enumerate(("resid_post.0", "resid_post.1")):
        d = random_dictionary("relu", lm.d_model, 24, i, hook=hook, model=lm.name, scale=0.2)
        with torch.no_grad():
            d.after_step()
        saekit.save(d, root / hook)
        out.append(str(root / hook))
    return out


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def largest_effect(out):
    effects = json.loads((out / "effects.json").read_text())
    return abs(effects["nodes"][0]["effect"])


def test_saekit_circuit_writes_a_circuit_its_page_and_faithfulness(folders, model_dir, data_file, tmp_path, capsys):
    out = tmp_path / "c"
    # A first run to learn the scale of the effects, then a threshold that keeps a few nodes.
    assert main(["circuit", "--dictionaries", *folders, "--model", str(model_dir), "--data", str(data_file),
                 "--out", str(out), "--node-threshold", "1e9"]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the node effects' progress bar
    assert last.startswith("saekit circuit: error: no node has |effect| >= 1e+09 (per position); the largest is ")
    threshold = largest_effect(out) / 3
    args = ["circuit", "--dictionaries", *folders, "--model", str(model_dir), "--data", str(data_file), "--out",
            str(out), "--node-threshold", str(threshold), "--edge-threshold", "0", "--faithfulness", "0,1,2,100"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    circuit = json.loads((out / "circuit.json").read_text())
    ids = [n["id"] for n in circuit["nodes"]]
    assert ids and all(abs(n["effect"]) >= threshold for n in circuit["nodes"])
    assert f"circuit: {len(ids)} nodes" in printed and f"{len(circuit['edges'])} edges" in printed
    assert "faithfulness (top n nodes kept" in printed and "metric (" in printed and "clean " in printed
    assert circuit["metadata"]["method"] == "atp" and circuit["metadata"]["n_examples"] == 3
    assert sorted(d["source"] for d in circuit["metadata"]["dictionaries"]) == sorted(folders)

    page = (out / "circuit.html").read_text()
    assert sorted(re.findall(r'<g class="node (?:feature|error)" data-id="([^"]+)"', page)) == sorted(ids)
    assert page.count("<line class=\"edge\"") == len(circuit["edges"])
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert 'href="' not in page  # no dashboard given: no links

    curve = json.loads((out / "faithfulness.json").read_text())
    points = curve["points"]
    assert [p["n_nodes"] for p in points][:3] == [0, 1, 2]
    assert points[0]["faithfulness"] == pytest.approx(0.0, abs=1e-5)
    assert (out / "faithfulness.png").read_bytes()[:4] == b"\x89PNG"

    # Rerun into the same folder (it holds a circuit), summed over positions, by integrated gradients.
    assert main([*args[:-2], "--summed", "--method", "ig", "--steps", "3"]) == 0
    summed = json.loads((out / "circuit.json").read_text())
    assert all(n["position"] is None for n in summed["nodes"]) and summed["metadata"]["method"] == "ig"

    # The mask baseline beside the attribution circuit, at the sizes the masks keep.
    assert main([*args, "--mask", "1e-3,10", "--mask-steps", "3"]) == 0
    printed = capsys.readouterr().out
    mask = json.loads((out / "mask.json").read_text())
    assert [row["sparsity"] for row in mask["matched"]] == [1e-3, 10.0] and mask["steps"] == 3
    sizes = {p["n_nodes"]: p["faithfulness"] for p in json.loads((out / "faithfulness.json").read_text())["points"]}
    for row in mask["matched"]:
        assert 0 <= row["n_nodes"] <= mask["masks"]["n_candidates"]
        assert f"sparsity {row['sparsity']:g}: {row['n_nodes']} nodes" in printed
        assert row["attribution_nodes"] <= row["n_nodes"]  # fewer where fewer nodes have an effect
        if row["attribution_nodes"] in sizes:  # the attribution circuit at that size: the curve's own figure
            assert row["attribution"] == pytest.approx(sizes[row["attribution_nodes"]], abs=1e-6)


def test_the_page_links_feature_nodes_to_their_dashboard_pages(folders, model_dir, data_file, corpus, tmp_path):
    board = tmp_path / "board"
    assert main(["dashboard", folders[0], "--model", str(model_dir), "--dataset", str(corpus), "--out", str(board),
                 "--tokens", "400", "--context-length", "16", "--all"]) == 0
    out = tmp_path / "c"
    main(["circuit", "--dictionaries", *folders, "--model", str(model_dir), "--data", str(data_file), "--out", str(out),
          "--node-threshold", "1e9"])
    threshold = largest_effect(out) / 5
    assert main(["circuit", "--dictionaries", *folders, "--model", str(model_dir), "--data", str(data_file), "--out",
                 str(out), "--node-threshold", str(threshold), "--dashboard", str(board)]) == 0
    circuit = json.loads((out / "circuit.json").read_text())
    page = (out / "circuit.html").read_text()
    linked = [n for n in circuit["nodes"] if n["hook"] == "resid_post.0" and n["feature"] != "error"]
    unlinked = [n for n in circuit["nodes"] if n["hook"] != "resid_post.0" or n["feature"] == "error"]
    assert linked, "the threshold should keep a feature of the dashboard's hook point"
    hrefs = re.findall(r'<a href="([^"]+)" target="_blank"><g class="node feature" data-id="([^"]+)"', page)
    assert sorted(i for _, i in hrefs) == sorted(n["id"] for n in linked)
    for href, node_id in hrefs:
        feature = next(n["feature"] for n in linked if n["id"] == node_id)
        assert href == f"../board/feature.html#{feature}"
    assert len(unlinked) + len(hrefs) == len(circuit["nodes"])


def refuse(args, capsys, says):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


def test_bad_input_is_refused_before_the_model_loads(folders, model_dir, data_file, tmp_path, monkeypatch, capsys):
    import os

    monkeypatch.setattr(saekit.models, "load_model", lambda *a, **kw: pytest.fail("the model was loaded"))
    base = ["circuit", "--dictionaries", *folders, "--model", str(model_dir)]
    refuse([*base, "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")], capsys, "no such file")
    (tmp_path / "empty.jsonl").write_text("\n")
    refuse([*base, "--data", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "o")], capsys, "is empty")
    refuse([*base, "--data", str(data_file), "--out", str(tmp_path / "o"), "--node-threshold", "-1"], capsys,
           "--node-threshold must be a finite number of at least 0")
    refuse([*base, "--data", str(data_file), "--out", str(tmp_path / "o"), "--node-threshold", "0"], capsys,
           "must be above 0")
    refuse([*base, "--data", str(data_file), "--out", str(tmp_path / "o"), "--mask", "0.1,0"], capsys,
           "--mask takes sparsity penalties above 0")
    (tmp_path / "ro").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(tmp_path / "ro")
                        else real_access(p, mode, **kw))
    refuse([*base, "--data", str(data_file), "--out", str(tmp_path / "ro" / "c")], capsys, "read-only")
    monkeypatch.setattr(os, "access", real_access)
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    refuse([*base, "--data", str(data_file), "--out", str(tmp_path / "theirs")], capsys, "holds no saekit circuit")
    refuse([*base, "--data", str(data_file), "--out", str(tmp_path / "o"), "--dashboard", str(tmp_path / "theirs")],
           capsys, "holds no finished saekit dashboard")
    other = random_dictionary("relu", 64, 24, 5, hook="resid_post.0", model="gpt2")
    saekit.save(other, tmp_path / "gpt2")
    refuse(["circuit", "--dictionaries", str(tmp_path / "gpt2"), "--model", str(model_dir), "--data", str(data_file),
            "--out", str(tmp_path / "o")], capsys, "trained on gpt2")
    refuse(["circuit", "--dictionaries", folders[0], str(tmp_path / "gpt2"), "--data", str(data_file),
            "--out", str(tmp_path / "o")], capsys, "a circuit needs dictionaries of one model")
    assert not (tmp_path / "o").exists()


def test_a_multi_token_answer_is_refused_before_any_pass(folders, model_dir, tmp_path, monkeypatch, capsys):
    import saekit.circuits as circuits

    monkeypatch.setattr(circuits, "node_effects", lambda *a, **kw: pytest.fail("a pass ran"))
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"clean_prefix": "the cat", "clean_answer": "s river city king"}) + "\n")
    refuse(["circuit", "--dictionaries", *folders, "--model", str(model_dir), "--data", str(path),
            "--out", str(tmp_path / "o")], capsys, "clean_answer")


def test_the_page_escapes_text_and_draws_error_nodes():
    from saekit.circuits import Circuit, CircuitNode, Edge, Node
    from saekit.circuits.page import circuit_page

    a, b = Node("resid_post.0", 3, 1), Node("resid_post.1", None, 1)
    c = Circuit([CircuitNode(b, -0.5), CircuitNode(a, 2.0)], [Edge(a, b, 0.3), Edge(b, None, -0.5)],
                {"data_file": "<script>alert(1)</script>", "metric": "logit_diff"})
    page = circuit_page(c, token_labels=["<bos>", "</script>&"])
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    assert "</script>&" not in page.split("<script>")[0]
    assert ">ε<" in page and 'class="node error"' in page and ">3<" in page
    assert page.count('<line class="edge"') == 2 and 'data-to="metric"' in page
