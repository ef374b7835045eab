"""Dictionaries on the Hub, against a local stand-in (tests/hub_server.py), never the network.

huggingface_hub's own code runs unchanged: HF_ENDPOINT points it at the stand-in and
HF_HUB_CACHE at a temporary cache, both read by saekit when each call is made.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import saekit
from saekit.cli import main
from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.errors import ConfigError, FormatError, HubError
from saekit.io.saekit_format import save_dictionary
from saekit.hub import HubLocation, default_output, model_card, parse_hub_spec, push, resolve
from saekit.io.formats import save_saelens

sys.path.insert(0, str(Path(__file__).parent))
from conftest import random_dictionary  # noqa: E402
from hub_server import REVISIONS, HubServer  # noqa: E402

D, F = 8, 24


def make(arch="topk", seed=0, hook="blocks.1.hook_resid_post", model="tiny"):
    return random_dictionary(arch, D, F, seed, hook, model)


def same(a, b):
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(1))
    return torch.allclose(a.encode(x), b.encode(x), atol=1e-6) and torch.allclose(a.reconstruct(x), b.reconstruct(x), atol=1e-6)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with HubServer(tmp_path / "hub") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        yield server


def resolves(server):
    return [path for method, path in server.requests if "/resolve/" in path and method == "GET"]


# ---------------------------------------------------------------- names


def test_parse_hub_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_hub_spec("google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71") == HubLocation(
        "google/gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71")
    assert parse_hub_spec("hf://alice/saes@v1.0/resid_post.9/") == HubLocation("alice/saes", "resid_post.9", "v1.0")
    assert parse_hub_spec("alice/saes") == HubLocation("alice/saes")
    # Local wins: existing paths, and anything that can only be a path.
    (tmp_path / "runs" / "topk").mkdir(parents=True)
    for local in ("runs/topk", "./x/y", "../x/y", "/abs/x/y", "~/x/y", tmp_path / "a" / "b", "single"):
        assert parse_hub_spec(local) is None, local
    with pytest.raises(ConfigError, match="hf://OWNER/REPO"):
        parse_hub_spec("hf://just-one-part")
    with pytest.raises(ConfigError, match=r"'\.\.'"):
        parse_hub_spec("hf://alice/saes/../other")
    # Names the Hub refuses are local paths, or an error when hf:// insists.
    assert parse_hub_spec("alice/a--b/x") is None
    with pytest.raises(ConfigError, match="valid repository id"):
        parse_hub_spec("hf://alice/a--b/x")
    with pytest.raises(ConfigError, match="model repositories, not datasets"):
        parse_hub_spec("hf://datasets/alice/x")
    # An absolute-looking path inside stays inside; a revision with slashes is written %2F.
    assert parse_hub_spec("hf://alice/saes//tmp/x").path == "tmp/x"
    assert parse_hub_spec("alice/saes@refs%2Fpr%2F1/x") == HubLocation("alice/saes", "x", "refs/pr/1")
    # A missing path under a folder that exists here is a typo, not a Hub name.
    assert parse_hub_spec("runs/topk2") is None
    with pytest.raises(FormatError, match="runs/topk2 does not exist here; .* hf://runs/topk2"):
        resolve("runs/topk2")


def test_default_output_never_writes_into_the_cache(tmp_path):
    (tmp_path / "run").mkdir()
    assert default_output(tmp_path / "run", "eval.json") == tmp_path / "run" / "eval.json"
    assert default_output("hf://alice/saes@v1/resid_post.9", "eval.json") == Path("eval-alice--saes@v1--resid_post.9.json")
    # Names that differ only in where a '/' falls, or in the revision, get different files.
    outputs = {default_output(f"hf://{n}", "eval.json") for n in ("alice/saes-x", "alice/saes/x", "alice/saes@v2/x")}
    assert len(outputs) == 3


# ---------------------------------------------------------------- download


def test_load_from_a_hub_laid_out_folder_fetches_only_that_dictionary(hub, tmp_path):
    """A SAELens-style release: one repository, a folder per hook point."""
    saes = {f"blocks.{i}.hook_resid_post": make(seed=i, hook=f"blocks.{i}.hook_resid_post") for i in range(3)}
    for hook, sae in saes.items():
        save_saelens(sae, hub.root / "org" / "release" / hook)
    loaded = saekit.load("org/release/blocks.1.hook_resid_post")
    assert same(loaded, saes["blocks.1.hook_resid_post"]) and loaded.cfg.hook == "blocks.1.hook_resid_post"
    fetched = resolves(hub)
    assert fetched and all("/blocks.1.hook_resid_post/" in p for p in fetched), fetched
    # The explicit hf:// form and a path to a file inside the folder name the same dictionary.
    assert same(saekit.load("hf://org/release/blocks.1.hook_resid_post"), loaded)
    assert same(saekit.load("org/release/blocks.1.hook_resid_post/cfg.json"), loaded)


def test_gemma_scope_params_npz_on_the_hub(hub):
    rng = np.random.default_rng(0)
    folder = hub.root / "google" / "gemma-scope-tiny" / "layer_1" / "width_24" / "average_l0_5"
    folder.mkdir(parents=True)
    arrays = {"W_enc": rng.normal(size=(D, F)), "W_dec": rng.normal(size=(F, D)), "b_enc": rng.normal(size=F),
              "b_dec": rng.normal(size=D), "threshold": rng.uniform(0, 0.3, size=F)}
    np.savez(folder / "params.npz", **{k: v.astype(np.float32) for k, v in arrays.items()})
    by_folder = saekit.load("google/gemma-scope-tiny/layer_1/width_24/average_l0_5")
    by_file = saekit.load("google/gemma-scope-tiny/layer_1/width_24/average_l0_5/params.npz")
    assert by_folder.cfg.arch == "jumprelu" and by_folder.cfg.d_sae == F and same(by_folder, by_file)
    assert same(by_folder, saekit.load(folder))


def test_second_load_reads_the_cache_without_the_network(hub, monkeypatch):
    save_dictionary(make(), hub.root / "alice" / "saes" / "layer1")
    first = saekit.load("alice/saes/layer1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    assert same(saekit.load("alice/saes/layer1"), first)
    with pytest.raises(HubError, match=r"cannot reach http://127.0.0.1:9, and this folder of alice/never-downloaded is not in"):
        saekit.load("alice/never-downloaded/layer1")


def test_revisions_branch_tag_and_commit(hub):
    repo = hub.root / "alice" / "saes"
    save_dictionary(make(seed=0), repo / "layer1")
    save_dictionary(make(seed=1), repo / REVISIONS / "v1" / "layer1")
    main_sae, v1 = saekit.load("alice/saes/layer1"), saekit.load("alice/saes@v1/layer1")
    assert not same(main_sae, v1) and same(v1, make(seed=1))
    commit = hub.commit(repo / REVISIONS / "v1")
    assert same(saekit.load(f"alice/saes@{commit}/layer1"), v1)
    with pytest.raises(HubError, match="no revision 'v9'"):
        saekit.load("alice/saes@v9/layer1")


def test_hub_errors_say_what_is_wrong(hub, tmp_path):
    save_dictionary(make(), hub.root / "alice" / "saes" / "layer1" / "topk")
    with pytest.raises(HubError, match="no local folder 'alice/nope/x', and as a Hub name: .*no model repository alice/nope"):
        saekit.load("alice/nope/x")
    with pytest.raises(HubError, match="^cannot download hf://alice/nope/x: .*no model repository"):
        saekit.load("hf://alice/nope/x")
    with pytest.raises(HubError, match=r"no dictionary there.*holds: topk/.*alice/saes/layer1/topk"):
        saekit.load("alice/saes/layer1")
    with pytest.raises(HubError, match=r"no folder 'layer2'.*top level holds: layer1/"):
        saekit.load("alice/saes/layer2")
    with pytest.raises(HubError, match="no file layer1/topk/params.npz"):
        saekit.load("alice/saes/layer1/topk/params.npz")


# ---------------------------------------------------------------- upload


def run_folder(tmp_path, sae=None):
    """A folder as `saekit train` leaves it: the dictionary plus its record and a checkpoint."""
    folder = save_dictionary(sae or make(), tmp_path / "run")
    (folder / "eval.json").write_text(json.dumps({
        "dictionary": sae.cfg.to_dict() if sae else make().cfg.to_dict(), "model": "tiny", "hook": "blocks.1.hook_resid_post",
        "fixed": {"fvu": 0.1912, "l0": 4.0, "loss_recovered": 0.955, "n_tokens": 1000},
        "documents": {"fvu": 0.1987, "l0": 4.0, "loss_recovered": 0.958, "n_tokens": 990},
    }))
    (folder / "training.json").write_text(json.dumps({"config": {"tokens": 300000, "dataset": None}}))
    (folder / "log.jsonl").write_text('{"step": 1, "tokens": 1024, "loss": 1.0}\n')
    (folder / "checkpoint.safetensors").write_bytes(b"optimizer state")
    return folder


def test_push_then_load_round_trip(hub, tmp_path):
    sae = make(seed=3)
    folder = run_folder(tmp_path, sae)
    name = push(folder, "alice/smol-saes", path_in_repo="resid_post.1")
    assert name == "alice/smol-saes/resid_post.1"
    uploaded = sorted(p.name for p in (hub.root / "alice" / "smol-saes" / "resid_post.1").iterdir())
    assert uploaded == ["README.md", "config.json", "eval.json", "log.jsonl", "training.json", "weights.safetensors"]
    assert same(saekit.load(name), sae)
    card = (hub.root / "alice" / "smol-saes" / "resid_post.1" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: saekit\n") and "- topk" in card
    assert "| fvu | 0.1912 | 0.1987 |" in card and 'saekit.load("alice/smol-saes/resid_post.1")' in card
    # A second push to the same repository adds to it; the checkpoint goes only when asked.
    push(folder, "alice/smol-saes", path_in_repo="resid_post.1-again", include_checkpoint=True)
    assert (hub.root / "alice" / "smol-saes" / "resid_post.1-again" / "checkpoint.safetensors").exists()
    assert (hub.root / "alice" / "smol-saes" / "resid_post.1" / "README.md").exists()


def test_push_keeps_the_users_card_and_pushes_peer_formats(hub, tmp_path):
    sae = make("jumprelu", seed=4)
    folder = save_saelens(sae, tmp_path / "saelens")
    (folder / "README.md").write_text("# my own card\n")
    push(folder, "alice/jr")
    assert (hub.root / "alice" / "jr" / "README.md").read_text() == "# my own card\n"
    assert (hub.root / "alice" / "jr" / "sae_weights.safetensors").exists()
    assert same(saekit.load("alice/jr"), sae)


def test_model_card_base_model_for_the_embedded_model(tmp_path):
    folder = save_dictionary(make(model="smollm2-135m", hook="resid_post.9"), tmp_path / "d")
    card = model_card(folder, "alice/x", base_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct\nbase_model_relation: adapter" in card
    assert "## Evaluation" not in card and "HuggingFaceTB/SmolLM2-135M-Instruct (saekit's embedded" in card
    # A local model is published by its last part only, and never as base_model.
    local_model = save_dictionary(make(model=str(tmp_path / "private" / "my-model")), tmp_path / "e")
    card = model_card(local_model, "alice/x")
    assert "base_model:" not in card and "my-model (a local copy)" in card and str(tmp_path) not in card
    assert "| model | gpt2 |" in model_card(save_dictionary(make(model="gpt2"), tmp_path / "g"), "alice/x")


def test_push_refuses_bad_input_before_any_request(hub, tmp_path):
    folder = save_dictionary(make(), tmp_path / "d")
    with pytest.raises(ConfigError, match="OWNER/NAME"):
        push(folder, "not-a-repo-id")
    with pytest.raises(ConfigError, match="without '..'"):
        push(folder, "alice/x", path_in_repo="../up")
    (folder / "weights.safetensors").write_bytes(b"truncated")
    with pytest.raises(FormatError, match="truncated or corrupt"):
        push(folder, "alice/x")
    with pytest.raises(FormatError, match="no checkpoint.safetensors"):
        push(save_dictionary(make(), tmp_path / "ok"), "alice/x", include_checkpoint=True)
    assert hub.requests == []


def test_push_unreachable_hub_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(HubError, match="cannot reach http://127.0.0.1:9"):
        push(save_dictionary(make(), tmp_path / "d"), "alice/x")


# ---------------------------------------------------------------- CLI


def test_cli_push_convert_report_compare_from_the_hub(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sae = make(seed=5)
    folder = run_folder(tmp_path, sae)
    assert main(["push", str(folder), "alice/cli", "--path", "topk", "--message", "first"]) == 0
    assert "alice/cli/topk" in capsys.readouterr().out
    assert main(["convert", "alice/cli/topk", str(tmp_path / "as-saelens"), "--to", "saelens"]) == 0
    assert same(saekit.load(tmp_path / "as-saelens"), sae)
    assert main(["report", "alice/cli/topk"]) == 0  # eval.json travels with the dictionary
    assert "0.1912" in (tmp_path / "report-alice--cli--topk.html").read_text()  # the fixed regime's fvu
    assert main(["compare", "alice/cli/topk", str(folder), "--out", "cmp.html"]) == 0
    assert "topk" in capsys.readouterr().out
    assert main(["push", str(folder), "bad id"]) == 2
    assert "OWNER/NAME" in capsys.readouterr().err
    assert main(["convert", "alice/missing/topk", str(tmp_path / "x"), "--to", "saekit"]) == 2
    assert "no model repository alice/missing" in capsys.readouterr().err


def test_cli_eval_a_hub_dictionary_writes_its_figures_here(hub, tmp_path, monkeypatch, model_dir, corpus, capsys):
    from conftest import D_MODEL

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    sae = build_dictionary(DictionaryConfig(arch="topk", d_in=D_MODEL, d_sae=64, k=4, hook="resid_post.1", model=str(model_dir)))
    save_dictionary(sae, hub.root / "alice" / "tiny-saes" / "resid_post.1")
    assert main(["eval", "alice/tiny-saes/resid_post.1", "--dataset", str(corpus), "--tokens", "200",
                 "--max-length", "64", "--regimes", "fixed"]) == 0
    figures = json.loads((tmp_path / "eval-alice--tiny-saes--resid_post.1.json").read_text())
    assert figures["fixed"]["n_tokens"] >= 200 and figures["hook"] == "resid_post.1"
    assert not list((tmp_path / "cache").rglob("eval.json"))  # nothing written into the Hub cache
    # The report finds the figures eval wrote here (the Hub folder has none).
    assert main(["report", "alice/tiny-saes/resid_post.1"]) == 0
    assert (tmp_path / "report-alice--tiny-saes--resid_post.1.html").exists()


# ---------------------------------------------------------------- what the real Hub also does


def test_gated_private_and_refused_are_told_apart(tmp_path, monkeypatch):
    with HubServer(tmp_path / "hub", token="secret") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token file from the machine
        save_dictionary(make(), server.root / "google" / "gated" / "layer1")
        (server.root / "google" / "gated" / ".gated").touch()
        folder = save_dictionary(make(), tmp_path / "d")
        # The Hub answers an anonymous read of a missing repository with 401 + RepoNotFound.
        with pytest.raises(HubError, match="has no model repository alice/missing .*or it is private"):
            saekit.load("hf://alice/missing/x")
        with pytest.raises(HubError, match="google/gated is gated: accept its terms"):
            saekit.load("hf://google/gated/layer1")
        with pytest.raises(HubError, match=r"refused access to alice/new \(401\).*write access.*Nothing was uploaded"):
            push(folder, "alice/new")
        monkeypatch.setenv("HF_TOKEN", "secret")
        assert push(folder, "alice/new") == "alice/new" and same(saekit.load("hf://alice/new"), make())


def test_offline_mode_is_named(hub, monkeypatch):
    from huggingface_hub import constants

    save_dictionary(make(), hub.root / "alice" / "saes" / "layer1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set"):
        saekit.load("alice/saes/layer1")
    assert not resolves(hub)


def test_push_errors_from_the_hub(hub, tmp_path):
    folder = save_dictionary(make(), tmp_path / "d")
    push(folder, "alice/x")
    with pytest.raises(HubError, match="no revision 'dev'; push to an existing branch, or create this one first"):
        push(folder, "alice/x", revision="dev")
    (folder / "README.md").write_text("---\nlicense: [\n")  # metadata the Hub refuses
    with pytest.raises(HubError, match="the Hub answered 400: .*README.md.*Nothing was uploaded"):
        push(folder, "alice/x")


def test_push_replaces_the_dictionary_at_a_path(hub, tmp_path):
    """Pushing a SAELens folder where a saekit one was must not leave the old weights to be found first."""
    old = run_folder(tmp_path, make(seed=1))
    push(old, "alice/p", path_in_repo="d")
    new = save_saelens(make(seed=2), tmp_path / "new-saelens")
    push(new, "alice/p", path_in_repo="d")
    assert sorted(p.name for p in (hub.root / "alice" / "p" / "d").iterdir()) == ["README.md", "cfg.json", "sae_weights.safetensors"]
    assert same(saekit.load("hf://alice/p/d"), make(seed=2))


def test_push_with_a_path_gives_a_repository_its_top_level_card(hub, tmp_path):
    push(save_dictionary(make(), tmp_path / "a"), "alice/many", path_in_repo="layer1")
    root_card = (hub.root / "alice" / "many" / "README.md").read_text()
    assert root_card.startswith("---\nlibrary_name: saekit") and "alice/many/layer1" in root_card
    (hub.root / "alice" / "many" / "README.md").write_text("# curated by hand\n")
    push(save_dictionary(make(seed=1), tmp_path / "b"), "alice/many", path_in_repo="layer2")
    assert (hub.root / "alice" / "many" / "README.md").read_text() == "# curated by hand\n"


def test_push_names_base_model_only_when_the_hub_knows_it(hub, tmp_path):
    (hub.root / "org" / "real-model").mkdir(parents=True)
    (hub.root / "org" / "real-model" / "config.json").write_text("{}")
    push(save_dictionary(make(model="org/real-model"), tmp_path / "a"), "alice/a")
    assert "base_model: org/real-model\n" in (hub.root / "alice" / "a" / "README.md").read_text()
    push(save_dictionary(make(model="models/tiny"), tmp_path / "b"), "alice/b")  # a relative local path
    assert "base_model" not in (hub.root / "alice" / "b" / "README.md").read_text()


# ---------------------------------------------------------------- layering


def _saekit_imports(path: Path) -> set[str]:
    """The saekit modules a source file imports, at any depth in it (lazy imports too)."""
    import ast

    package = path.parent.relative_to(Path(saekit.__file__).parent.parent).as_posix().replace("/", ".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names = [f"{module}.{alias.name}" for alias in node.names]  # `from . import hub`
            found.update(m for m in [module, *names] if m.startswith("saekit"))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("saekit"))
    return found


def _module_file(name: str) -> Path | None:
    root = Path(saekit.__file__).parent.parent
    for candidate in (root / (name.replace(".", "/") + ".py"), root / name.replace(".", "/") / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None  # a name imported from a module, not a module


def test_the_io_package_never_imports_the_hub():
    """saekit.io (saekit's own format and other libraries', local files) sits below hub,
    which imports it; the peer formats' load_any once imported hub lazily."""
    import pkgutil

    import saekit.io

    starts = [m.name for m in pkgutil.iter_modules(saekit.io.__path__, "saekit.io.")]
    assert {"saekit.io.formats", "saekit.io.saekit_format", "saekit.io.saelens"} <= set(starts)
    for start in starts:
        seen, todo = set(), [start]
        while todo:
            name = todo.pop()
            file = _module_file(name)
            if name in seen or file is None:
                continue
            seen.add(name)
            todo.extend(_saekit_imports(file))
        assert not seen & {"saekit.hub", "saekit.loading"}, (start, sorted(seen))
    assert "saekit.hub" in _saekit_imports(_module_file("saekit.loading"))  # the check sees imports at all


def test_no_name_in_the_package_hides_a_submodule():
    """`saekit.evaluate` was the function and the module at once, so `import saekit.evaluate`
    and `saekit.evaluate(...)` depended on import order."""
    import importlib
    import pkgutil
    import types

    names = [m.name for m in pkgutil.walk_packages(saekit.__path__, "saekit.")]
    assert {"saekit.hub", "saekit.io.formats", "saekit.evaluation", "saekit.training.run"} <= set(names)
    for name in names:
        module = importlib.import_module(name)
        parent, _, child = name.rpartition(".")
        assert isinstance(module, types.ModuleType)
        assert getattr(importlib.import_module(parent), child, module) is module, name


def test_saekit_load_is_the_hub_aware_loader_and_peer_load_any_is_local(hub, tmp_path):
    from saekit.io.formats import load_any

    save_dictionary(make(seed=2), hub.root / "org" / "release" / "x")
    assert same(saekit.load("org/release/x"), make(seed=2))
    with pytest.raises(FormatError, match="does not exist"):
        load_any("org/release/x")  # local files only
    assert resolves(hub)  # only saekit.load asked the Hub


def test_convert_from_the_hub_checks_the_destination_before_downloading(hub, tmp_path):
    from saekit.errors import OutputError
    from saekit.loading import convert

    save_dictionary(make(seed=2), hub.root / "org" / "release" / "x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "eval.json").write_text("{}")
    with pytest.raises(OutputError, match="not empty"):
        convert("org/release/x", tmp_path / "busy", "saelens")
    with pytest.raises(FormatError, match="cannot write 'npz'"):
        convert("org/release/x", tmp_path / "new", "npz")
    assert hub.requests == []
    assert same(saekit.load(convert("org/release/x", tmp_path / "busy", "saelens", overwrite=True)), make(seed=2))
    assert not (tmp_path / "busy" / "eval.json").exists()


def test_an_unwritable_hub_cache_is_one_clear_error(hub, tmp_path, monkeypatch, capsys):
    """A cache path that cannot be written (here a file) ended in a NotADirectoryError traceback."""
    from saekit.errors import OutputError

    save_dictionary(make(seed=2), hub.root / "org" / "release" / "x")
    (tmp_path / "not-a-folder").write_text("x")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "not-a-folder"))
    with pytest.raises(OutputError, match="cannot write into .*not-a-folder.*set HF_HUB_CACHE to a writable folder"):
        saekit.load("org/release/x")
    assert main(["eval", "org/release/x", "--json", str(tmp_path / "e.json")]) == 2
    assert "set HF_HUB_CACHE" in capsys.readouterr().err
