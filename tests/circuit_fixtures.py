"""What the circuit tests share: prompt records that align on the tiny byte-level tokenizer,
and random dictionaries shaped like trained ones."""

import torch

from saekit.hooks import edit_activations

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


class Nudged:
    """A patch run on the clean prompts with the embeddings moved by ``eps`` · noise: a
    counterfactual input close to the clean one, so that first order is nearly exact."""

    name = "nudged embeddings"

    def __init__(self, eps: float):
        self.eps = eps

    def states(self, model, batch, clean, metric):
        g = torch.Generator().manual_seed(batch.length)
        noise = self.eps * torch.randn(batch.size, batch.length, model.lm.d_model, generator=g)
        with torch.no_grad(), edit_activations(model.lm, {"resid_pre.0": lambda x: x + noise}):
            run = model.run(batch.clean_ids, bos=batch.bos)
            return {p: n.detach() for p, n in run.computed.items()}, metric(run.logits, batch)
