"""Hook points: names, reading (with early stopping) and editing, on every supported family.

The facts checked are properties of the transformer itself, so a hook attached to
the wrong module fails them: the residual stream equals transformers'
`hidden_states`, and the block output is the block input plus the attention and
MLP contributions.
"""

from __future__ import annotations

import weakref
from collections import Counter

import pytest
import torch
from conftest import D_MODEL, FAMILIES, N_LAYERS, TINY_VOCAB, tiny_loaded_model, tiny_model
from torch import nn

from saekit import hooks
from saekit.errors import HookPointError
from saekit.hooks import (
    SITES,
    HookPoint,
    edit_activations,
    hook_point_names,
    hook_width,
    read_activations,
    resolve_hook_point,
)

LAST = N_LAYERS - 1


def _ids(batch: int = 2, seq: int = 9, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, TINY_VOCAB, (batch, seq), generator=gen)


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _blocks(model: nn.Module) -> nn.ModuleList:
    base = model.base_model
    return base.h if hasattr(base, "h") else base.layers


def _count_calls(modules: dict[str, nn.Module]) -> tuple[Counter, list]:
    counts: Counter = Counter()
    handles = []
    for key, module in modules.items():
        handles.append(module.register_forward_hook(lambda *_, k=key: counts.update([k])))
    return counts, handles


def _n_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# --------------------------------------------------------------------------- names


def test_hook_point_parse_name_and_order():
    point = HookPoint.parse("resid_post.9")
    assert point == HookPoint("resid_post", 9)
    assert point.name == "resid_post.9"
    shuffled = [HookPoint.parse(n) for n in ["resid_pre.1", "resid_post.0", "mlp_in.0", "resid_pre.0", "mlp_out.0"]]
    shuffled += [HookPoint.parse("attn_out.0")]
    assert [p.name for p in sorted(shuffled)] == [
        "resid_pre.0",
        "attn_out.0",
        "mlp_in.0",
        "mlp_out.0",
        "resid_post.0",
        "resid_pre.1",
    ]


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("resid_post", "expected '<site>.<layer>'"),
        ("foo.3", "unknown site 'foo'"),
        ("resid_post.x", "layer 'x'"),
        ("resid_post.-1", "layer '-1'"),
        ("resid_post.3", "layer 3 does not exist"),
        ("mlp_in.40", "layer 40 does not exist"),
    ],
)
def test_bad_names_say_what_is_wrong_and_what_is_valid(name, fragment):
    model = tiny_model("llama")
    with pytest.raises(HookPointError) as info:
        resolve_hook_point(model, name)
    message = str(info.value)
    assert fragment in message
    assert f"0..{LAST}" in message
    for site in SITES:
        assert site in message


def test_bad_name_uses_the_loaded_model_name():
    loaded = tiny_loaded_model("gpt2")
    with pytest.raises(HookPointError, match=f"tiny-gpt2 has layers 0..{LAST}"):
        resolve_hook_point(loaded, "resid_post.7")


def test_hook_point_names_and_width(tiny_family_model):
    names = hook_point_names(tiny_family_model)
    assert len(names) == len(SITES) * N_LAYERS
    assert len(set(names)) == len(names)
    assert "resid_post.2" in names and "mlp_in.0" in names
    for name in names:
        assert resolve_hook_point(tiny_family_model, name).name == name
        assert hook_width(tiny_family_model, name) == D_MODEL
    with torch.no_grad():
        acts = read_activations(tiny_family_model, names, _ids(), stop_early=False)
    assert {n: a.shape for n, a in acts.items()} == {n: torch.Size([2, 9, D_MODEL]) for n in names}


# --------------------------------------------------------------------------- reading


def test_residual_matches_transformers_hidden_states(tiny_family_model):
    ids = _ids()
    with torch.no_grad():
        hidden = tiny_family_model(input_ids=ids, output_hidden_states=True).hidden_states
        for layer in range(N_LAYERS):
            pre = read_activations(tiny_family_model, [f"resid_pre.{layer}"], ids)[f"resid_pre.{layer}"]
            torch.testing.assert_close(pre, hidden[layer])
            if layer < LAST:  # the last hidden state has the final norm applied; resid_post does not
                post = read_activations(tiny_family_model, [f"resid_post.{layer}"], ids)[f"resid_post.{layer}"]
                torch.testing.assert_close(post, hidden[layer + 1])


@pytest.mark.parametrize("family", [*FAMILIES, "gpt_neox_sequential", "mistral", "qwen2", "olmo2"])
def test_block_output_is_input_plus_attention_plus_mlp(family):
    # Holds for sequential and parallel residual blocks alike (both branches add to
    # the stream), and for post-sublayer norms (Gemma-2, OLMo-2) only if attn_out
    # and mlp_out are read after those norms.
    model = tiny_model(family)
    names = [f"{site}.{layer}" for layer in range(N_LAYERS) for site in SITES]
    with torch.no_grad():
        acts = read_activations(model, names, _ids(), stop_early=False)
    for layer in range(N_LAYERS):
        attn, mlp = acts[f"attn_out.{layer}"], acts[f"mlp_out.{layer}"]
        assert attn.norm() > 1e-2 and mlp.norm() > 1e-2  # not trivially zero
        torch.testing.assert_close(acts[f"resid_pre.{layer}"] + attn + mlp, acts[f"resid_post.{layer}"])


@pytest.mark.parametrize("family", [*FAMILIES, "mistral", "qwen2", "olmo2"])
def test_generic_fallback_finds_the_same_sites_as_the_table(family, monkeypatch):
    # Families missing from the layout table are found by module names alone; that
    # search must agree with the table on every family the table does know.
    model = tiny_model(family)
    names = hook_point_names(model)
    with torch.no_grad():
        expected = read_activations(model, names, _ids(), stop_early=False)
        monkeypatch.setattr(hooks, "_FAMILY_LAYOUTS", {})
        monkeypatch.setattr(hooks, "_STRUCTURE_CACHE", weakref.WeakKeyDictionary())
        found = read_activations(model, names, _ids(), stop_early=False)
    for name in names:
        torch.testing.assert_close(found[name], expected[name], rtol=0, atol=0)


@pytest.mark.parametrize(
    "family, norm_name, includes_attention",
    [
        ("llama", "post_attention_layernorm", True),
        ("gemma", "post_attention_layernorm", True),
        ("gemma2", "pre_feedforward_layernorm", True),
        ("gpt2", "ln_2", True),
        ("gpt_neox", "post_attention_layernorm", False),  # parallel: the MLP reads the block input
        ("gpt_neox_sequential", "post_attention_layernorm", True),
    ],
)
def test_mlp_in_is_the_normed_residual(family, norm_name, includes_attention):
    model = tiny_model(family)
    layer = 1
    norm = getattr(_blocks(model)[layer], norm_name)
    names = [f"resid_pre.{layer}", f"attn_out.{layer}", f"mlp_in.{layer}"]
    with torch.no_grad():
        acts = read_activations(model, names, _ids())
        stream = acts[f"resid_pre.{layer}"] + (acts[f"attn_out.{layer}"] if includes_attention else 0)
        torch.testing.assert_close(acts[f"mlp_in.{layer}"], norm(stream))


def test_gemma2_attn_out_is_after_the_post_attention_norm():
    model = tiny_model("gemma2")
    block = _blocks(model)[0]
    raw = {}
    handle = block.self_attn.register_forward_hook(lambda _m, _a, out: raw.update(x=out[0]))
    try:
        with torch.no_grad():
            acts = read_activations(model, ["attn_out.0"], _ids())
    finally:
        handle.remove()
    torch.testing.assert_close(acts["attn_out.0"], block.post_attention_layernorm(raw["x"]))
    assert not torch.allclose(acts["attn_out.0"], raw["x"])


@pytest.mark.parametrize("family", FAMILIES)
def test_early_stop_skips_later_layers_and_lm_head(family):
    model = tiny_model(family)
    ids = _ids()
    blocks = _blocks(model)
    counts, handles = _count_calls(
        {"block0": blocks[0], "block1": blocks[1], "block2": blocks[2], "head": model.get_output_embeddings()}
    )
    try:
        with torch.no_grad():
            early = read_activations(model, ["resid_post.0", "mlp_out.0"], ids)
            assert counts == Counter({"block0": 1})
            full = read_activations(model, ["resid_post.0", "mlp_out.0"], ids, stop_early=False)
    finally:
        for handle in handles:
            handle.remove()
    assert counts["block2"] == 1  # the full pass does run the last block
    for name in early:
        torch.testing.assert_close(early[name], full[name], rtol=0, atol=0)


@pytest.mark.parametrize(
    "last_needed, attn_runs, mlp_runs, block_finishes",
    [
        ("resid_pre.1", 0, 0, 0),
        ("attn_out.1", 1, 0, 0),
        ("mlp_in.1", 1, 0, 0),
        ("mlp_out.1", 1, 1, 0),
        ("resid_post.1", 1, 1, 1),
    ],
)
def test_early_stop_stops_inside_the_block(last_needed, attn_runs, mlp_runs, block_finishes):
    model = tiny_model("llama")
    block = _blocks(model)[1]
    counts, handles = _count_calls({"attn": block.self_attn, "mlp": block.mlp, "block": block, "next": _blocks(model)[2]})
    try:
        with torch.no_grad():
            acts = read_activations(model, [last_needed, "resid_pre.0"], _ids())
    finally:
        for handle in handles:
            handle.remove()
    assert list(acts) == [last_needed, "resid_pre.0"]  # keyed in the order asked
    assert (counts["attn"], counts["mlp"], counts["block"], counts["next"]) == (
        attn_runs,
        mlp_runs,
        block_finishes,
        0,
    )
    assert _n_hooks(model) == 0


def test_padding_respects_the_attention_mask():
    # Left padding: Llama's rotary embeddings depend only on relative position, so
    # the real tokens' activations match an unpadded run exactly when the mask
    # keeps them from attending to the pad positions (and differ when it does not).
    model = tiny_model("llama")
    ids = _ids(batch=2, seq=8)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        padded = read_activations(model, ["resid_post.1"], ids, mask)["resid_post.1"]
        unmasked = read_activations(model, ["resid_post.1"], ids)["resid_post.1"]
        alone = read_activations(model, ["resid_post.1"], ids[1:, 3:])["resid_post.1"]
    torch.testing.assert_close(padded[1:, 3:], alone)
    assert not torch.allclose(unmasked[1:, 3:], alone, atol=1e-3)


def test_reading_accepts_a_loaded_model_and_keeps_gradients_possible():
    loaded = tiny_loaded_model("llama")
    ids = _ids()
    acts = read_activations(loaded, ["resid_post.1"], ids)
    assert acts["resid_post.1"].shape == (2, 9, D_MODEL)
    # No forced no_grad: a tensor requiring grad that enters the stream carries its gradient.
    delta = torch.zeros(D_MODEL, requires_grad=True)
    with edit_activations(loaded, {"resid_post.0": lambda x: x + delta}):
        out = read_activations(loaded, ["resid_post.1"], ids)["resid_post.1"]
    out.sum().backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0


def test_bad_name_fails_before_running_and_leaves_no_hooks():
    model = tiny_model("gpt2")
    counts, handles = _count_calls({"block0": _blocks(model)[0]})
    with pytest.raises(HookPointError):
        read_activations(model, ["resid_post.0", "resid_post.9"], _ids())
    for handle in handles:
        handle.remove()
    assert counts["block0"] == 0
    assert _n_hooks(model) == 0


# --------------------------------------------------------------------------- editing


@pytest.mark.parametrize("site", SITES)
def test_identity_edit_gives_identical_logits(tiny_family_model, site):
    ids = _ids()
    clean = _logits(tiny_family_model, ids)
    with edit_activations(tiny_family_model, {f"{site}.1": lambda x: x.clone()}):
        edited = _logits(tiny_family_model, ids)
    torch.testing.assert_close(edited, clean, rtol=0, atol=0)


def test_adding_a_vector_changes_logits_and_exit_restores(tiny_family_model):
    ids = _ids()
    clean = _logits(tiny_family_model, ids)
    hooks_before = _n_hooks(tiny_family_model)
    steer = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(3)) * 5
    with edit_activations(tiny_family_model, {"resid_post.1": lambda x: x + steer}):
        steered = _logits(tiny_family_model, ids)
        assert _n_hooks(tiny_family_model) == hooks_before + 1
    assert (steered - clean).abs().max() > 1e-3
    assert _n_hooks(tiny_family_model) == hooks_before
    torch.testing.assert_close(_logits(tiny_family_model, ids), clean, rtol=0, atol=0)


@pytest.mark.parametrize("site", ["resid_post", "mlp_in", "resid_pre", "attn_out"])
def test_hooks_are_removed_when_the_body_raises(site):
    model = tiny_model("gemma2")
    ids = _ids()
    clean = _logits(model, ids)
    with pytest.raises(RuntimeError, match="boom"):
        with edit_activations(model, {f"{site}.0": torch.zeros_like}):
            assert not torch.equal(_logits(model, ids), clean)
            raise RuntimeError("boom")
    assert _n_hooks(model) == 0
    torch.testing.assert_close(_logits(model, ids), clean, rtol=0, atol=0)


def test_hooks_are_removed_when_the_edit_itself_raises():
    model = tiny_model("llama")

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise ValueError("bad edit")

    with pytest.raises(ValueError, match="bad edit"):
        with edit_activations(model, {"mlp_out.0": broken}):
            _logits(model, _ids())
    assert _n_hooks(model) == 0


def test_edit_is_seen_by_reads_and_by_output_hidden_states():
    model = tiny_model("llama")
    ids = _ids()
    shift = torch.full((D_MODEL,), 0.5)
    with torch.no_grad():
        clean_hidden = model(input_ids=ids, output_hidden_states=True).hidden_states  # installs transformers' hooks
        clean = read_activations(model, ["resid_post.0"], ids)["resid_post.0"]
        with edit_activations(model, {"resid_post.0": lambda x: x + shift}):
            edited = read_activations(model, ["resid_post.0", "resid_pre.1"], ids)
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(edited["resid_post.0"], clean + shift)
    torch.testing.assert_close(edited["resid_pre.1"], clean + shift)
    torch.testing.assert_close(hidden[1], clean_hidden[1] + shift)


def test_nested_edits_apply_outer_first():
    model = tiny_model("gpt_neox")
    ids = _ids()
    with torch.no_grad():
        clean = read_activations(model, ["mlp_in.1"], ids)["mlp_in.1"]
        with edit_activations(model, {"mlp_in.1": lambda x: 2 * x}):
            with edit_activations(model, {"mlp_in.1": lambda x: x + 1}):
                both = read_activations(model, ["mlp_in.1"], ids)["mlp_in.1"]
            outer_only = read_activations(model, ["mlp_in.1"], ids)["mlp_in.1"]
    torch.testing.assert_close(both, 2 * clean + 1)
    torch.testing.assert_close(outer_only, 2 * clean)
    assert _n_hooks(model) == 0


def test_splicing_input_edits_reach_the_module():
    # resid_pre and mlp_in are inputs: the replacement must be what the module computes on.
    model = tiny_model("llama")
    ids = _ids()
    with torch.no_grad():
        with edit_activations(model, {"resid_pre.1": torch.zeros_like}):
            acts = read_activations(model, ["resid_pre.1", "attn_out.1"], ids)
        with edit_activations(model, {"mlp_in.1": torch.zeros_like}):
            mlp = read_activations(model, ["mlp_out.1"], ids)["mlp_out.1"]
    assert acts["resid_pre.1"].abs().max() == 0
    # Llama's attention without biases maps a zero stream (normed to zero) to zero.
    assert acts["attn_out.1"].abs().max() == 0
    assert mlp.abs().max() == 0  # SwiGLU without biases maps zero to zero


def test_edit_that_changes_shape_is_rejected():
    model = tiny_model("llama")
    with pytest.raises(HookPointError, match="must keep the activation's shape"):
        with edit_activations(model, {"resid_post.0": lambda x: x[..., :4]}):
            _logits(model, _ids())
    assert _n_hooks(model) == 0


def test_edit_with_a_bad_name_adds_no_hooks():
    model = tiny_model("llama")
    with pytest.raises(HookPointError, match="unknown site"):
        with edit_activations(model, {"resid_post.0": lambda x: x, "resid_mid.0": lambda x: x}):
            pass
    assert _n_hooks(model) == 0


# --------------------------------------------------------------------------- tuple outputs


class _ToyAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(D_MODEL, D_MODEL)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.proj(x), None


class _ToyBlock(nn.Module):
    """A block in the transformers-4 style: returns a tuple, not a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.self_attn = _ToyAttention()
        self.mlp = nn.Linear(D_MODEL, D_MODEL)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, str]:
        x = x + self.self_attn(x)[0]
        return x + self.mlp(x), "extra"


class _ToyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(TINY_VOCAB, D_MODEL)
        self.layers = nn.ModuleList([_ToyBlock() for _ in range(2)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(input_ids)
        for block in self.layers:
            x, extra = block(x)
            assert extra == "extra"  # the tuple structure survives editing
        return x


def test_tuple_outputs_are_read_and_edited():
    model = _ToyModel()
    ids = _ids()
    assert hook_point_names(model)[-1] == "resid_post.1"
    with torch.no_grad():
        clean = model(ids)
        acts = read_activations(model, ["resid_post.1", "attn_out.0"], ids)
        torch.testing.assert_close(acts["resid_post.1"], clean)
        with edit_activations(model, {"resid_post.0": lambda x: x + 1, "attn_out.1": lambda x: x}):
            edited = model(ids)
    assert not torch.allclose(edited, clean)


def test_skip_to_block_restores_a_block_listed_twice():
    from saekit.hooks import read_activations, skip_to_block

    model = tiny_model("llama")
    model.model.layers[1] = model.model.layers[0]  # shared weights: one module in two places
    ids = torch.randint(3, 200, (1, 8))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        pre = read_activations(model, ["resid_pre.2"], ids)["resid_pre.2"]
        with skip_to_block(model, 2, pre):
            pass
        assert "forward" not in model.model.layers[0].__dict__
        assert torch.allclose(model(input_ids=ids).logits, before)
