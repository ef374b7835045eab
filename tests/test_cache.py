"""Issue 9: the activation cache — several hook points from one pass, three storage dtypes,
checksums verified before training, shuffled reading across shards that resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import saekit
from saekit import TrainConfig, train
from saekit.activations import (
    ArrayActivations,
    CachedActivations,
    ModelActivations,
    open_activation_source,
    write_activation_cache,
)
from saekit.activations.cache import cache_activations, file_checksum
from saekit.config import CacheConfig
from saekit.errors import ConfigError, DataError

HOOKS = ["resid_post.0", "mlp_out.1", "resid_post.2"]


def counting(n: int, hooks=("resid_post.0",), d: int = 4, heldout: int = 10) -> ArrayActivations:
    """Rows whose every value is the token's index plus the hook point's column / 4
    (exact in float32), so any row read back says where it came from."""
    rows = np.arange(n, dtype=np.float32)[:, None, None] + np.arange(len(hooks), dtype=np.float32)[None, :, None] / 4
    rows = np.broadcast_to(rows, (n, len(hooks), d)).copy()
    return ArrayActivations([rows], hooks=list(hooks), model_name="m", heldout=-rows[:heldout] - 1)


def ids(rows: torch.Tensor) -> np.ndarray:
    return rows[:, 0, 0].numpy().astype(np.int64)


def read_epoch(source, position, chunk=700):
    """Rows of one epoch from ``position`` in chunks, and the position after them."""
    parts, n = [], 0
    while n < source.total:
        rows, position = source.read_chunk(position, min(chunk, source.total - n))
        parts.append(rows)
        n += rows.shape[0]
    return torch.cat(parts), position


@pytest.fixture(scope="module")
def lm(model_dir):
    return saekit.load_model(str(model_dir))


@pytest.fixture(scope="module")
def three_hook_cache(lm, corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("three") / "cache"
    src = ModelActivations(lm, HOOKS, dataset=str(corpus), context_length=32, model_batch_size=8)
    write_activation_cache(src, folder, 1500, shard_tokens=500, heldout_tokens=200)
    return folder


# ------------------------------------------------------------------ several hook points
def test_one_pass_stores_every_hook_point_as_the_live_model_gives_it(lm, corpus, three_hook_cache):
    manifest = json.loads((three_hook_cache / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["hooks"] == HOOKS and manifest["tokens"] == 1500
    assert [s["tokens"] for s in manifest["shards"]] == [500] * 3 and manifest["heldout_tokens"] == 200
    cached = CachedActivations(three_hook_cache, block_rows=0)
    assert cached.hooks == tuple(HOOKS)
    rows, _ = cached.read_chunk(cached.start_position(), 1500)
    for h, hook in enumerate(HOOKS):  # each column is what a one-hook source of the model yields
        live, _ = ModelActivations(lm, hook, dataset=str(corpus), context_length=32).read_chunk({"contexts": 0}, 1500)
        assert torch.equal(rows[:, h], live[:1500, 0]), hook
    held = ModelActivations(lm, HOOKS, dataset=str(corpus), context_length=32).heldout(200)
    assert torch.equal(cached.heldout(200), held)


def test_saekit_cache_expands_a_hook_pattern_in_forward_order(model_dir, corpus, tmp_path):
    cfg = CacheConfig(model=str(model_dir), dataset=str(corpus), hook="resid_post.*", context_length=32, tokens=300,
                      shard_tokens=200, heldout_tokens=50, storage_dtype="bfloat16", out=str(tmp_path / "c"))
    result = cache_activations(cfg)
    assert (result.tokens, result.shards, result.heldout_tokens) == (300, 2, 50)
    cached = CachedActivations(tmp_path / "c")
    assert cached.hooks == ("resid_post.0", "resid_post.1", "resid_post.2") and cached.storage_dtype == "bfloat16"


def test_a_subset_of_the_cache_hook_points_is_read_in_the_cache_order(three_hook_cache):
    full = CachedActivations(three_hook_cache, block_rows=0)
    both = CachedActivations(three_hook_cache, hooks="resid_post.2,resid_post.0", block_rows=0)
    assert both.hooks == ("resid_post.0", "resid_post.2")
    assert torch.equal(both.read_chunk({"token": 0}, 600)[0], full.read_chunk({"token": 0}, 600)[0][:, [0, 2]])
    assert torch.equal(both.heldout(50), full.heldout(50)[:, [0, 2]])
    assert CachedActivations(three_hook_cache, hooks=["resid_post.*"]).hooks == ("resid_post.0", "resid_post.2")
    cfg = TrainConfig(activation_cache=str(three_hook_cache), hook="mlp_out.1", tokens=1000, batch_size=100)
    assert open_activation_source(cfg, torch.device("cpu"), cfg.activation_cache).hooks == ("mlp_out.1",)


def test_a_hook_or_model_the_cache_lacks_is_refused_by_name(three_hook_cache, tmp_path):
    cfg = TrainConfig(activation_cache=str(three_hook_cache), hook="resid_post.0,mlp_out.2", tokens=1000, batch_size=100)
    lists = r"--hook mlp_out\.2 contradicts the activation cache.*which holds resid_post\.0, mlp_out\.1, resid_post\.2"
    with pytest.raises(ConfigError, match=lists):
        open_activation_source(cfg, torch.device("cpu"), cfg.activation_cache)
    with pytest.raises(ConfigError, match=r"--hook attn_out\.\* contradicts"):
        CachedActivations(three_hook_cache, hooks="attn_out.*")
    cfg = TrainConfig(activation_cache=str(three_hook_cache), hook="resid_post.0", target="resid_post.1", tokens=1000,
                      batch_size=100)  # a transcoder's target the cache lacks is named as --target
    with pytest.raises(ConfigError, match=r"--target resid_post\.1 contradicts the activation cache"):
        open_activation_source(cfg, torch.device("cpu"), cfg.activation_cache)
    cfg = TrainConfig(activation_cache=str(three_hook_cache), model="HuggingFaceTB/other-model", tokens=1000, batch_size=100)
    with pytest.raises(ConfigError, match=r"--model HuggingFaceTB/other-model contradicts the activation cache.*tiny-llama"):
        open_activation_source(cfg, torch.device("cpu"), cfg.activation_cache)
    written = json.loads((three_hook_cache / "manifest.json").read_text())["context_length"]
    cfg = TrainConfig(activation_cache=str(three_hook_cache), context_length=written + 1, tokens=1000, batch_size=100)
    with pytest.raises(ConfigError, match=rf"--context-length {written + 1} contradicts the activation cache.* {written} tokens"):
        open_activation_source(cfg, torch.device("cpu"), cfg.activation_cache)
    cfg = TrainConfig(activation_cache=str(three_hook_cache), context_length=written, tokens=1000, batch_size=100)
    assert open_activation_source(cfg, torch.device("cpu"), cfg.activation_cache).context_length == written


def test_flags_a_cache_makes_moot_are_refused_not_ignored(three_hook_cache, corpus, tmp_path):
    """Another text, or a model-run setting (text field, model dtype, model batch): the
    cached activations are already read, so each would be silently ignored."""
    common = dict(activation_cache=str(three_hook_cache), tokens=1000, batch_size=100)
    other = tmp_path / "other.jsonl"
    with pytest.raises(ConfigError, match=r"--dataset .*other\.jsonl contradicts the activation cache.*holds activations of"):
        open_activation_source(TrainConfig(dataset=str(other), **common), torch.device("cpu"), str(three_hook_cache))
    same = TrainConfig(dataset=str(corpus), **common)  # the cache's own text: nothing contradicts it
    assert open_activation_source(same, torch.device("cpu"), str(three_hook_cache)).hooks == tuple(HOOKS)
    moot = TrainConfig(dtype="bfloat16", model_batch_size=4, **common)
    with pytest.raises(ConfigError, match=r"--dtype bfloat16, --model-batch-size 4: .*these flags have no effect; drop them"):
        open_activation_source(moot, torch.device("cpu"), str(three_hook_cache))
    with pytest.raises(ConfigError, match=r"--text-field body: .*this flag has no effect; drop it"):
        open_activation_source(TrainConfig(text_field="body", **common), torch.device("cpu"), str(three_hook_cache))


def test_training_on_one_hook_point_of_a_three_hook_cache(three_hook_cache, tmp_path):
    result = train(TrainConfig(activation_cache=str(three_hook_cache), hook="mlp_out.1", k=4, expansion=2, tokens=1000,
                               batch_size=100, buffer_tokens=500, eval_tokens=100, out=str(tmp_path / "run")))
    assert result.dictionary.cfg.hook == "mlp_out.1" and result.tokens == 1000


# ------------------------------------------------------------------ storage dtypes
@pytest.mark.parametrize("dtype, rounded", [
    ("float32", lambda x: x),
    ("float16", lambda x: x.half().float()),
    ("bfloat16", lambda x: x.bfloat16().float()),
])
def test_each_storage_dtype_reads_back_as_that_dtype_rounds(tmp_path, dtype, rounded):
    x = torch.randn(600, 2, 8, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 3, 8)
    src = ArrayActivations([x.numpy()], hooks=HOOKS[:2], model_name="m", heldout=x[:50].numpy())
    write_activation_cache(src, tmp_path / "c", 600, shard_tokens=250, heldout_tokens=50, dtype=dtype)
    cached = CachedActivations(tmp_path / "c", block_rows=0)
    back = cached.read_chunk({"token": 0}, 600)[0]
    assert back.dtype == torch.float32 and torch.equal(back, rounded(x))  # round to nearest, decoded exactly
    assert torch.equal(cached.heldout(50), rounded(x[:50]))
    stored = np.load(tmp_path / "c" / "shard-00000.npy")
    assert stored.dtype == {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dtype]
    assert stored.nbytes == 250 * 2 * 8 * (4 if dtype == "float32" else 2)
    if dtype == "bfloat16":  # relative error of bfloat16's 8-bit significand
        assert torch.allclose(back, x, rtol=2**-8, atol=0)


def test_activations_beyond_float16_are_refused_naming_the_hook(tmp_path):
    x = np.ones((100, 2, 4), dtype=np.float32)
    x[40, 1, 2] = 1e5
    src = ArrayActivations([x], hooks=HOOKS[:2], model_name="m")
    with pytest.raises(ConfigError, match=r"mlp_out\.1 reach 1e\+05, beyond the largest float16.*bfloat16"):
        write_activation_cache(src, tmp_path / "c", 100, heldout_tokens=0, dtype="float16")
    write_activation_cache(src, tmp_path / "c", 100, heldout_tokens=0, dtype="bfloat16", overwrite=True)


class _NaNModel:
    model_name, hooks, d, context_length, keep_bos, seed, dataset_name = "m", ("resid_post.0", "mlp_out.0"), 4, 8, False, 0, "d"

    def start_position(self):
        return {"token": 0}

    def read_chunk(self, position, min_tokens):
        rows = torch.zeros(min_tokens, 2, 4)
        rows[3, 1, 0] = float("nan")
        return rows, {"token": position["token"] + min_tokens}


def test_nan_from_the_model_stops_the_cache_naming_the_hook(tmp_path):
    with pytest.raises(DataError, match=r"activations at mlp_out\.0 include NaN.*--dtype bfloat16"):
        write_activation_cache(_NaNModel(), tmp_path / "c", 100, heldout_tokens=0)
    assert not (tmp_path / "c" / "manifest.json").exists()


# ------------------------------------------------------------------ checksums and the manifest
@pytest.fixture
def small_cache(tmp_path):
    write_activation_cache(counting(3000), tmp_path / "cache", 3000, shard_tokens=1000, heldout_tokens=10)
    return tmp_path / "cache"


def test_a_flipped_byte_is_found_before_any_training_step(small_cache, tmp_path):
    shard = small_cache / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one activation: still finite, still the right shape
    shard.write_bytes(bytes(data))
    CachedActivations(small_cache, verify=False)  # sizes and shapes alone cannot see it
    with pytest.raises(DataError, match=r"shard-00001\.npy does not match its checksum.*saekit cache.*--overwrite"):
        CachedActivations(small_cache)
    cfg = TrainConfig(activation_cache=str(small_cache), k=2, dict_size=16, tokens=3000, batch_size=100,
                      buffer_tokens=1000, eval_tokens=0, out=str(tmp_path / "run"))
    with pytest.raises(DataError, match=r"shard-00001\.npy does not match its checksum"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


@pytest.mark.parametrize("offset", [8, 10, 20])
def test_a_damaged_npy_header_is_one_clear_error(small_cache, offset):
    """numpy parses the header as a Python literal; a damaged byte there once escaped as
    tokenize.TokenError."""
    shard = small_cache / "shard-00000.npy"
    data = bytearray(shard.read_bytes())
    data[offset] = ord("(")
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"shard-00000\.npy.*--overwrite"):
        CachedActivations(small_cache)


def test_a_corrupt_heldout_file_is_named(small_cache):
    held = small_cache / "heldout.npy"
    data = bytearray(held.read_bytes())
    data[-1] ^= 0x80
    held.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"heldout\.npy does not match its checksum"):
        CachedActivations(small_cache)


def test_a_truncated_or_missing_shard_is_named(small_cache):
    shard = small_cache / "shard-00002.npy"
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    sizes = rf"shard-00002\.npy is {len(data) - 100:,} bytes, the manifest says {len(data):,}: the file is truncated"
    with pytest.raises(DataError, match=sizes):
        CachedActivations(small_cache, verify=False)
    shard.unlink()
    with pytest.raises(DataError, match=r"shard-00002\.npy is missing \(the manifest lists it\)"):
        CachedActivations(small_cache)


def _edit_manifest(folder, edit):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("hooks"), r"the manifest lacks the key 'hooks'"),
    (lambda m: m.update(shard_order="random"), r"the manifest has keys saekit does not write \('shard_order'\)"),
    (lambda m: m["shards"][1].pop("checksum"), r"shard 1 lacks the key 'checksum'"),
    (lambda m: m["shards"][0].update(rows=5), r"shard 0 has keys saekit does not write \('rows'\)"),
    (lambda m: m.update(dtype="int8"), r"dtype 'int8' is not one saekit writes"),
    (lambda m: m.update(d="4"), r"the manifest's 'd' must be int, not '4'"),
    (lambda m: m.update(format_version=3), r"cache format 3; this saekit reads formats 1 and 2: upgrade saekit"),
    (lambda m: m["shards"][0].update(file="../elsewhere.npy"), r"not a file inside the cache folder"),
    (lambda m: m["shards"][0].update(checksum="md5:00"), r"checksum 'md5:00' is not a crc32 one"),
    (lambda m: m.update(tokens=4000), r"'tokens' is 4000, its files hold 3000"),
])
def test_a_manifest_with_wrong_keys_is_one_clear_error(small_cache, edit, message):
    _edit_manifest(small_cache, edit)
    with pytest.raises(DataError, match=message):
        CachedActivations(small_cache)


def _replace_shard(folder, name, arr, manifest_edit=lambda entry: None):
    """Write ``arr`` as shard ``name`` and record its true size and checksum, so only the
    check under test can object."""
    np.save(folder / name, arr)

    def edit(m):
        entry = next(s for s in m["shards"] if s["file"] == name)
        entry.update(bytes=(folder / name).stat().st_size, checksum=file_checksum(folder / name))
        manifest_edit(entry)

    _edit_manifest(folder, edit)


def test_a_shard_of_the_wrong_dtype_or_shape_is_named(small_cache):
    arr = np.load(small_cache / "shard-00000.npy")
    _replace_shard(small_cache, "shard-00000.npy", arr.astype(np.float16))
    with pytest.raises(DataError, match=r"shard-00000\.npy holds float16 values, the manifest says float32"):
        CachedActivations(small_cache)
    _replace_shard(small_cache, "shard-00000.npy", arr[:, :, :3])
    with pytest.raises(DataError, match=r"shard-00000\.npy has shape \(1000, 1, 3\), the manifest says \(1000, 1, 4\)"):
        CachedActivations(small_cache)


def test_nan_in_a_shard_with_a_valid_checksum_names_shard_and_row(small_cache):
    arr = np.load(small_cache / "shard-00001.npy")
    arr[17, 0, 2] = np.nan
    _replace_shard(small_cache, "shard-00001.npy", arr)
    cached = CachedActivations(small_cache, block_rows=100)
    with pytest.raises(DataError, match=r"shard-00001\.npy \(the first in row 17\).*saekit cache"):
        read_epoch(cached, cached.start_position())


def test_a_format_1_cache_is_still_read(tmp_path):
    """The layout saekit wrote before issue 9: one hook point, (N, d) shards, no checksums."""
    folder = tmp_path / "v1"
    folder.mkdir()
    x = np.arange(2500 * 4, dtype=np.float32).reshape(2500, 4)
    np.save(folder / "shard-00000.npy", x[:2000])
    np.save(folder / "shard-00001.npy", x[2000:])
    np.save(folder / "heldout.npy", -x[:10])
    (folder / "manifest.json").write_text(json.dumps({
        "format": "saekit-activations", "format_version": 1, "model": "tiny", "hook": "resid_post.1", "d": 4,
        "dtype": "float32", "dataset": "d", "context_length": 32, "keep_bos": False, "seed": 0, "tokens": 2500,
        "heldout_tokens": 10, "shards": [{"file": "shard-00000.npy", "tokens": 2000}, {"file": "shard-00001.npy", "tokens": 500}],
    }))
    cached = CachedActivations(folder, block_rows=0)
    assert cached.hooks == ("resid_post.1",) and cached.context_length == 32
    assert torch.equal(cached.read_chunk({"token": 0}, 2500)[0][:, 0], torch.from_numpy(x))
    assert torch.equal(cached.heldout(10)[:, 0], torch.from_numpy(-x[:10]))
    shuffled, _ = read_epoch(CachedActivations(folder), CachedActivations(folder).start_position())
    assert sorted(shuffled[:, 0, 0].tolist()) == x[:, 0].tolist()
    np.save(folder / "shard-00001.npy", x[2000:2400])  # no sizes recorded: the shape still tells
    with pytest.raises(DataError, match=r"shard-00001\.npy has shape \(400, 4\), the manifest says \(500, 4\)"):
        CachedActivations(folder)


# ------------------------------------------------------------------ shuffled reading
def test_every_token_once_per_epoch_in_blocks_mixed_across_shards(tmp_path):
    write_activation_cache(counting(5000), tmp_path / "c", 5000, shard_tokens=1000, heldout_tokens=0)
    cached = CachedActivations(tmp_path / "c", seed=3, block_rows=128)
    start = cached.start_position()
    assert start == {"token": 0, "block_rows": 128}
    epoch0, after0 = read_epoch(cached, start)
    epoch1, after1 = read_epoch(cached, after0)
    assert after1["token"] == 10_000
    for epoch in (epoch0, epoch1):
        order = ids(epoch)
        assert np.array_equal(np.sort(order), np.arange(5000))  # every token exactly once
        assert not np.array_equal(order, np.arange(5000))
    assert not np.array_equal(ids(epoch0), ids(epoch1))  # a new permutation each epoch
    first_chunk = ids(cached.read_chunk(start, 700)[0])
    assert len(set(first_chunk // 1000)) >= 3  # one chunk draws on several shards
    # Reading jumps only to the start of a block (128 rows, the last of a shard shorter),
    # and it jumps often: the 40 blocks are not read in storage order.
    runs = np.r_[0, np.flatnonzero(np.diff(ids(epoch0)) != 1) + 1]
    assert all(ids(epoch0)[runs] % 1000 % 128 == 0) and len(runs) > 30
    other_seed = CachedActivations(tmp_path / "c", seed=4, block_rows=128)
    assert not np.array_equal(ids(read_epoch(other_seed, start)[0]), ids(epoch0))


def test_a_restarted_reader_continues_exactly(tmp_path):
    write_activation_cache(counting(3000), tmp_path / "c", 3000, shard_tokens=700, heldout_tokens=0)
    first = CachedActivations(tmp_path / "c", seed=1, block_rows=64)
    whole = torch.cat([first.read_chunk({"token": k, "block_rows": 64}, 500)[0] for k in range(0, 6000, 500)])
    position = first.start_position()
    for _ in range(7):  # stop inside epoch 1, at a position that is not a block boundary
        _, position = first.read_chunk(position, 450)
    position = json.loads(json.dumps(position))  # as a checkpoint stores it
    restarted = CachedActivations(tmp_path / "c", seed=1)  # its own default block size: the position decides
    rest, after = restarted.read_chunk(position, 6000 - position["token"])
    assert after == {"token": 6000, "block_rows": 64} and torch.equal(rest, whole[position["token"] :])


def test_a_position_without_block_rows_reads_in_storage_order(tmp_path):
    """Checkpoints written before shuffling resume in the order they were trained in."""
    write_activation_cache(counting(2000), tmp_path / "c", 2000, shard_tokens=500, heldout_tokens=0)
    rows, position = CachedActivations(tmp_path / "c").read_chunk({"token": 2300}, 400)
    assert np.array_equal(ids(rows), np.arange(300, 700)) and position == {"token": 2700}


def test_read_counters_count_stored_bytes(tmp_path):
    write_activation_cache(counting(2000, hooks=HOOKS), tmp_path / "c", 2000, shard_tokens=500, heldout_tokens=0,
                           dtype="bfloat16")
    cached = CachedActivations(tmp_path / "c", hooks="resid_post.0", block_rows=100)
    assert (cached.bytes_read, cached.read_seconds) == (0, 0.0)
    cached.read_chunk(cached.start_position(), 1500)
    # Whole stored rows are read (3 hook points × d 4 × 2 bytes), though one hook point is kept.
    assert cached.bytes_read == 1500 * 3 * 4 * 2 and cached.read_seconds > 0


def test_a_finite_chunk_whose_sum_overflows_is_accepted():
    rows = np.full((10, 1, 4), 3e38, dtype=np.float32)
    rows[5, 0, 1] = -3e38
    got, _ = ArrayActivations([rows]).read_chunk({"token": 0}, 10)
    assert torch.equal(got, torch.from_numpy(rows))
    rows[7, 0, 3] = np.inf
    with pytest.raises(DataError, match=r"array 0 \(the first in row 7\)"):
        ArrayActivations([rows]).read_chunk({"token": 0}, 10)
