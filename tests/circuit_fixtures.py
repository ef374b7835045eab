"""What the circuit tests share: prompt records that align on the tiny byte-level tokenizer,
and random dictionaries shaped like trained ones."""

import torch

from conftest import random_dictionary

# Same byte length per pair: the tiny tokenizer is byte-level, so these align.
RECORDS = [
    {"clean_prefix": "the cat", "clean_answer": "s", "patch_prefix": "the dog", "patch_answer": "x"},
    {"clean_prefix": "a big one", "clean_answer": "s", "patch_prefix": "a bag two", "patch_answer": "x"},
    {"clean_prefix": "the man", "clean_answer": "s", "patch_prefix": "the men", "patch_answer": "x"},
]


def circuit_dictionary(lm, hook, seed, arch="relu", d_sae=40, **kw):
    """A frozen random dictionary for ``lm`` at ``hook``: unit-norm decoder rows, as trained
    ones have, and (for a skip transcoder) a skip path that does something."""
    d = random_dictionary(arch, lm.d_model, d_sae, seed, hook=hook, model=lm.name, scale=0.2, **kw)
    with torch.no_grad():
        d.after_step()
        if kw.get("skip"):
            d.W_skip.normal_(0, 0.1)
    return d.requires_grad_(False)


def mixed_dictionaries(lm, d_sae=40):
    """A residual stream, an attention and an MLP output after it, and a skip transcoder."""
    return [
        circuit_dictionary(lm, "resid_post.0", 0, d_sae=d_sae),
        circuit_dictionary(lm, "attn_out.1", 1, arch="topk", d_sae=d_sae),
        circuit_dictionary(lm, "mlp_out.1", 2, arch="jumprelu", d_sae=d_sae),
        circuit_dictionary(lm, "mlp_in.2", 3, target="mlp_out.2", transcoder=True, skip=True, d_sae=d_sae),
    ]
