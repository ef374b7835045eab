"""Cross-check saekit's evaluation against the peers' own evaluation code.

One dictionary, the same model, the same token batches: saekit's ``evaluate`` and the
evaluation functions of SAELens (``sae_lens.evals``) and dictionary_learning
(``dictionary_learning.evaluation``), each run on the peer's own SAE object built from
the same weights. Prints every figure side by side with the peer's name for it, the
peer value mapped to saekit's definition where a mapping exists (docs/metrics.md),
and which definition explains a difference.

What is run, exactly:

* saekit: ``saekit.evaluation.evaluate(..., regimes=["fixed"])`` (held-out split, contexts
  of the dictionary's length with BOS first; BOS excluded from the figures and not
  spliced).
* SAELens: ``get_sparsity_and_variance_metrics`` and
  ``get_downstream_reconstruction_metrics`` (what ``run_evals`` calls), on a
  ``TopKSAE``. They expect a TransformerLens ``HookedTransformer``, which cannot load
  SmolLM2 (not in TransformerLens' model list, and its loader fetches the config from
  the Hub). A small adapter (``_HFAsHookedModel``) gives the HF model the three methods
  those functions call (``run_with_cache``, ``run_with_hooks``, ``__call__`` with
  ``return_type="both"``), with TransformerLens' own per-token loss. ``ignore_tokens`` is
  ``[BOS id]`` (run_evals' default would also drop EOS/PAD, id 2 here, which saekit
  evaluates).
* dictionary_learning: ``evaluation.evaluate`` on an ``AutoEncoderTopK`` for the
  reconstruction figures, fed all non-BOS activations as one batch (its own
  ``ActivationBuffer`` would keep BOS unless ``remove_bos``), and
  ``evaluation.loss_recovered`` with an nnsight ``LanguageModel`` wrapping the same HF
  model for the CE figures, one call per batch of contexts, averaged over batches as its
  ``evaluate`` does.

Setup (a separate venv, so the peers' requirements do not touch saekit's)::

    bash benchmarks/peers_setup.sh combined          # .peers-venv: the three peers and saekit

Run::

    .peers-venv/bin/python benchmarks/peer_eval.py [DICT_FOLDER] --contexts 16
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import math
import sys
from typing import Any

import torch

import saekit
from saekit.data import ContextStream
from saekit.evaluation import _take_tokens, evaluate
from saekit.hooks import HookPoint, read_activations

DEFAULT_DICT = "/tmp/fresh/runs/smollm2-135m-resid_post.9-topk"


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


# ----------------------------------------------------------------- shared inputs


def load_inputs(folder: str, n_contexts: int, batch_contexts: int):
    """The dictionary, the model, and the exact batches saekit's evaluate will use."""
    sae = saekit.load(folder).eval()
    lm = saekit.load_model(sae.cfg.model or None)
    ctx = sae.cfg.context_length or 128
    stream = ContextStream(None, lm.tokenizer, context_length=ctx, batch_size=batch_contexts, split="heldout")
    n_tokens = n_contexts * (ctx - 1)  # non-BOS tokens, as saekit counts them
    batches, n = _take_tokens(iter(stream), n_tokens, keep_bos=False)
    ids = torch.cat([b.input_ids for b in batches])
    assert bool(torch.cat([b.attention_mask for b in batches]).all()), "fixed contexts should have no padding"
    return sae, lm, ids, n


def hook_activations(sae, lm, ids: torch.Tensor, batch_contexts: int) -> torch.Tensor:
    """Raw activations at the dictionary's hook, (n_contexts, ctx, d)."""
    out = []
    for chunk in ids.split(batch_contexts):
        out.append(read_activations(lm, [sae.cfg.hook], chunk, torch.ones_like(chunk))[sae.cfg.hook].float())
    return torch.cat(out)


def run_saekit(sae, lm, n_tokens: int, batch_contexts: int) -> dict[str, Any]:
    ctx = sae.cfg.context_length or 128
    res = evaluate(sae, lm, tokens=n_tokens, regimes=["fixed"], batch_tokens=batch_contexts * ctx)
    d = res.fixed.to_dict()
    flat = dict(d.get("reconstruction", {}))
    flat.update({k: v for k, v in d.items() if not isinstance(v, (dict, list))})
    for k in ("mse", "fvu", "variance_explained", "cosine", "l0", "l1", "frac_alive",
              "relative_reconstruction_bias", "ce_clean", "ce_spliced", "ce_zero", "ce_diff",
              "loss_recovered", "kl", "n_tokens", "n_ce_tokens"):
        if k not in flat and hasattr(res.fixed, k):
            flat[k] = getattr(res.fixed, k)
        if k not in flat and hasattr(res.fixed.reconstruction, k):
            flat[k] = getattr(res.fixed.reconstruction, k)
    return flat


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ----------------------------------------------------------------- SAELens


class _HFAsHookedModel:
    """The parts of a TransformerLens HookedRootModule that sae_lens.evals calls.

    ``hook_name`` (TransformerLens' ``blocks.L.hook_resid_post``) is the output of
    ``model.model.layers[L]``. The per-token loss is TransformerLens' own
    ``lm_cross_entropy_loss(..., per_token=True)``.
    """

    def __init__(self, lm, layer: int, hook_name: str):
        self.lm, self.layer, self.hook_name = lm, layer, hook_name
        self.tokenizer = lm.tokenizer

    def _forward(self, tokens: torch.Tensor, fn=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        seen: dict[str, torch.Tensor] = {}

        def hook(_mod, _inp, out):
            act = out[0] if isinstance(out, tuple) else out
            seen["act"] = act
            if fn is None:
                return None
            new = fn(act, hook=None)
            return (new, *out[1:]) if isinstance(out, tuple) else new

        h = self.lm.model.model.layers[self.layer].register_forward_hook(hook)
        try:
            logits = self.lm.model(input_ids=tokens, use_cache=False).logits
        finally:
            h.remove()
        return logits, seen.get("act")

    def _loss(self, logits, tokens):
        from transformer_lens.utils import lm_cross_entropy_loss

        return lm_cross_entropy_loss(logits, tokens, per_token=True)

    def __call__(self, tokens, return_type="both", loss_per_token=True, **_):
        logits, _ = self._forward(tokens)
        return logits, self._loss(logits, tokens)

    def run_with_hooks(self, tokens, return_type="both", fwd_hooks=(), loss_per_token=True, **_):
        (name, fn), = fwd_hooks
        assert name == self.hook_name, name
        logits, _ = self._forward(tokens, fn)
        return logits, self._loss(logits, tokens)

    def run_with_cache(self, tokens, names_filter=None, **_):
        _, act = self._forward(tokens)
        return None, {self.hook_name: act}


class _TokenStore:
    """Stands in for an ActivationsStore: hands out the fixed token batches in order."""

    def __init__(self, ids: torch.Tensor):
        self.ids, self.i = ids, 0

    def get_batch_tokens(self, n: int) -> torch.Tensor:
        out = self.ids[self.i:self.i + n]
        self.i += n
        return out


def build_saelens_sae(sae):
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    layer = HookPoint.parse(sae.cfg.hook).layer
    cfg = TopKSAEConfig(
        d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae, k=int(sae.cfg.k), dtype="float32", device="cpu",
        apply_b_dec_to_input=True,  # saekit encodes x - b_dec
        normalize_activations="none",  # saekit's weights act on raw activations
        metadata=SAEMetadata(hook_name=f"blocks.{layer}.hook_resid_post"),
    )
    peer = TopKSAE(cfg)
    with torch.no_grad():  # same shapes as saekit: W_enc d x F, W_dec F x d
        peer.W_enc.copy_(sae.W_enc)
        peer.b_enc.copy_(sae.b_enc)
        peer.W_dec.copy_(sae.W_dec)
        peer.b_dec.copy_(sae.b_dec)
    return peer.eval(), layer


def run_saelens(sae, lm, ids, x_sample, batch_contexts) -> tuple[dict[str, Any], list[str]]:
    from sae_lens.evals import get_downstream_reconstruction_metrics, get_sparsity_and_variance_metrics
    from sae_lens.training.activation_scaler import ActivationScaler

    peer, layer = build_saelens_sae(sae)
    notes = []
    with torch.no_grad():
        f_s, f_p = sae.encode(x_sample), peer.encode(x_sample)
        notes.append(f"SAELens TopKSAE vs saekit on {len(x_sample)} activations: max|f diff| = "
                     f"{max_diff(f_s, f_p):.2e}, max|x_hat diff| = {max_diff(sae.decode(f_s), peer.decode(f_p)):.2e}")
    model = _HFAsHookedModel(lm, layer, peer.cfg.metadata.hook_name)
    n_batches = math.ceil(len(ids) / batch_contexts)
    ignore = [lm.tokenizer.bos_token_id]
    common = dict(activation_scaler=ActivationScaler(), n_batches=n_batches,
                  eval_batch_size_prompts=batch_contexts, ignore_tokens=ignore)
    with torch.no_grad():
        sv, _feat = get_sparsity_and_variance_metrics(
            peer, model, _TokenStore(ids), compute_l2_norms=True, compute_sparsity_metrics=True,
            compute_variance_metrics=True, compute_featurewise_density_statistics=True, model_kwargs={}, **common)
        ds = get_downstream_reconstruction_metrics(
            peer, model, _TokenStore(ids), compute_kl=True, compute_ce_loss=True, model_kwargs={}, **common)
    sv["frac_alive(from feature_density)"] = sum(d > 0 for d in _feat["feature_density"]) / peer.cfg.d_sae
    notes.append(f"SAELens ran: evals.get_sparsity_and_variance_metrics + get_downstream_reconstruction_metrics, "
                 f"{n_batches} batch(es) of {batch_contexts} contexts, ignore_tokens={ignore}, via the HF adapter")
    return {**sv, **ds}, notes


# ----------------------------------------------------------------- dictionary_learning


def build_dl_sae(sae):
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    peer = AutoEncoderTopK(sae.cfg.d_in, sae.cfg.d_sae, int(sae.cfg.k))
    with torch.no_grad():  # nn.Linear weights are transposed relative to saekit
        peer.encoder.weight.copy_(sae.W_enc.T)  # F x d
        peer.encoder.bias.copy_(sae.b_enc)
        peer.decoder.weight.copy_(sae.W_dec.T)  # d x F
        peer.b_dec.copy_(sae.b_dec)  # subtracted before encoding, added after decoding
    return peer.eval()


def run_dictionary_learning(sae, lm, ids, x_tok, batch_contexts) -> tuple[dict[str, Any], list[str]]:
    from dictionary_learning.evaluation import evaluate as dl_evaluate
    from dictionary_learning.evaluation import loss_recovered

    peer = build_dl_sae(sae)
    notes = []
    with torch.no_grad():
        xs = x_tok[:4096]
        f_s, (xh_p, f_p) = sae.encode(xs), peer(xs, output_features=True)
        notes.append(f"dictionary_learning AutoEncoderTopK vs saekit on {len(xs)} activations: max|f diff| = "
                     f"{max_diff(f_s, f_p):.2e}, max|x_hat diff| = {max_diff(sae.decode(f_s), xh_p):.2e}")
    out = dict(dl_evaluate(peer, iter([x_tok]), n_batches=1, device="cpu"))
    notes.append(f"dictionary_learning ran: evaluation.evaluate on one batch of all {len(x_tok)} non-BOS activations")
    try:
        from nnsight import LanguageModel
    except ImportError:
        notes.append("nnsight not installed: dictionary_learning's loss_recovered was not run")
        return out, notes
    nn_model = LanguageModel(lm.model, tokenizer=lm.tokenizer)
    layer = HookPoint.parse(sae.cfg.hook).layer
    sub = nn_model.model.layers[layer]
    sums = {"loss_original": 0.0, "loss_reconstructed": 0.0, "loss_zero": 0.0, "frac_recovered": 0.0}
    chunks = ids.split(batch_contexts)
    with torch.no_grad():
        for chunk in chunks:
            lo, lr, lz = loss_recovered(chunk, nn_model, sub, peer, max_len=None, io="out")  # ids are already cut; nnsight 0.3 rejects truncation= on tensors
            for k, v in zip(("loss_original", "loss_reconstructed", "loss_zero"), (lo, lr, lz)):
                sums[k] += v.item()
            sums["frac_recovered"] += ((lr - lz) / (lo - lz)).item()
    out.update({k: v / len(chunks) for k, v in sums.items()})
    notes.append(f"dictionary_learning ran: evaluation.loss_recovered via nnsight {_version('nnsight')} "
                 f"on {len(chunks)} batch(es) of {batch_contexts} contexts (its pad_token_id "
                 f"{lm.tokenizer.pad_token_id} is the ignore_index of its CE)")
    return out, notes


# ----------------------------------------------------------------- the table


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    return f"{v:.5g}"


def build_rows(s: dict, sl: dict | None, dl: dict | None, x_tok: torch.Tensor, x_hat: torch.Tensor,
               ids: torch.Tensor, bos_id: int, pad_id: int | None) -> list[tuple]:
    """(figure, saekit, peer name, peer value, mapped, note)."""
    d = x_tok.shape[1]
    n = x_tok.shape[0]
    r = (x_tok - x_hat).double()
    ss_tot = float(((x_tok.double() - x_tok.double().mean(0)) ** 2).sum())
    mean_r_term = float(n * (r.mean(0) ** 2).sum()) / ss_tot  # N‖r̄‖² / Σ‖x − x̄‖²
    n_ctx, ctx = ids.shape
    n_eos_targets = int((ids[:, 1:] == pad_id).sum()) if pad_id is not None else 0
    rows = []
    if sl is not None:
        rows += [
            ("mse", s["mse"], "SAELens mse", sl["mse"], sl["mse"],
             f"same definition in this version (Σ_d, mean over tokens); per-dim would be {s['mse'] / d:.5g}"),
            ("variance_explained", s["variance_explained"], "SAELens explained_variance", sl["explained_variance"],
             sl["explained_variance"], "same: 1 − E‖r‖²/(E‖x‖² − ‖E x‖²), around the mean"),
            ("variance_explained", s["variance_explained"], "SAELens explained_variance_legacy",
             sl["explained_variance_legacy"], None,
             "per-token ratio 1 − ‖r_t‖²/‖x_t − x̄_batch‖², then averaged: no mapping (dominated by tokens near the mean)"),
            ("cosine", s["cosine"], "SAELens cossim", sl["cossim"], sl["cossim"], "same"),
            ("l0", s["l0"], "SAELens l0", sl["l0"], sl["l0"], "same (f != 0)"),
            ("l1", s["l1"], "SAELens l1", sl["l1"], sl["l1"], "same"),
            ("frac_alive", s["frac_alive"], "SAELens feature_density>0", sl["frac_alive(from feature_density)"],
             sl["frac_alive(from feature_density)"], "same"),
            ("relative_reconstruction_bias", s["relative_reconstruction_bias"], "SAELens relative_reconstruction_bias",
             sl["relative_reconstruction_bias"], None,
             "ratio of means per batch, then averaged over batches; saekit pools all tokens"),
            ("ce_clean", s["ce_clean"], "SAELens ce_loss_without_sae", sl["ce_loss_without_sae"], None,
             f"SAELens drops the prediction made at BOS (mask[:, :-1]): {ctx - 2} vs saekit's {ctx - 1} per context"),
            ("ce_spliced", s["ce_spliced"], "SAELens ce_loss_with_sae", sl["ce_loss_with_sae"], None,
             "BOS kept clean in both (ignore_tokens=[BOS]); positions as ce_clean"),
            ("ce_zero", s["ce_zero"], "SAELens ce_loss_with_ablation", sl["ce_loss_with_ablation"], None,
             "SAELens' zero-ablation hook ignores the mask: it zeroes BOS too, saekit keeps BOS clean"),
            ("loss_recovered", s["loss_recovered"], "SAELens ce_loss_score", sl["ce_loss_score"], None,
             "same formula; differs through ce_zero (BOS zeroed)"),
            ("kl", s["kl"], "SAELens kl_div_with_sae", sl["kl_div_with_sae"], None,
             "SAELens: all positions but BOS (incl. the last); saekit: the prediction positions (incl. BOS, KL 0 there; not the last)"),
        ]
    if dl is not None:
        l2 = dl["l2_loss"]
        rows += [
            ("mse", s["mse"], "dl l2_loss", l2, None,
             f"un-squared: mean ‖r_t‖, not mean ‖r_t‖²; l2_loss² = {l2 ** 2:.5g} ≤ mse (Jensen); no exact mapping"),
            ("variance_explained", s["variance_explained"], "dl frac_variance_explained", dl["frac_variance_explained"],
             dl["frac_variance_explained"] - mean_r_term,
             f"dl centres the residual too (Σ var(x − x̂)): forgives the mean error; mapped = peer − N‖r̄‖²/Σ‖x − x̄‖² "
             f"(= {mean_r_term:.3g})"),
            ("cosine", s["cosine"], "dl cossim", dl["cossim"], dl["cossim"], "same"),
            ("l0", s["l0"], "dl l0", dl["l0"], dl["l0"], "same"),
            ("l1", s["l1"], "dl l1_loss", dl["l1_loss"], dl["l1_loss"], "same (Σ|f_i|, not weighted by ‖W_dec[i]‖)"),
            ("frac_alive", s["frac_alive"], "dl frac_alive", dl["frac_alive"], dl["frac_alive"], "same"),
            ("relative_reconstruction_bias", s["relative_reconstruction_bias"], "dl relative_reconstruction_bias",
             dl["relative_reconstruction_bias"], dl["relative_reconstruction_bias"], "same (one batch = all tokens)"),
        ]
        if "loss_original" in dl:
            rows += [
                ("ce_clean", s["ce_clean"], "dl loss_original", dl["loss_original"], None,
                 f"dl ignores targets equal to pad_token_id={pad_id} (= EOS here; {n_eos_targets} of "
                 f"{n_ctx * (ctx - 1)} targets), otherwise the same positions"),
                ("ce_spliced", s["ce_spliced"], "dl loss_reconstructed", dl["loss_reconstructed"], None,
                 "dl splices x̂ at BOS too (BOS activation is far off-distribution); EOS targets ignored"),
                ("ce_zero", s["ce_zero"], "dl loss_zero", dl["loss_zero"], None, "dl zeroes BOS too; EOS targets ignored"),
                ("loss_recovered", s["loss_recovered"], "dl frac_recovered", dl["frac_recovered"], None,
                 "same formula ((z − s)/(z − c)), per batch then averaged; differs through the BOS splice"),
            ]
    return rows


def print_table(rows):
    head = ("figure", "saekit", "peer (figure)", "peer", "mapped", "note")
    cells = [(a, _fmt(b), c, _fmt(dv), _fmt(m), note) for a, b, c, dv, m, note in rows]
    w = [max(len(str(r[i])) for r in cells + [head]) for i in range(5)]
    line = " | ".join(h.ljust(w[i]) if i < 5 else h for i, h in enumerate(head))
    print(line)
    print("-" * min(len(line) + 40, 200))
    for r in cells:
        print(" | ".join(str(c).ljust(w[i]) if i < 5 else str(c) for i, c in enumerate(r)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dictionary", nargs="?", default=DEFAULT_DICT, help="saekit dictionary folder")
    p.add_argument("--contexts", type=int, default=16, help="number of contexts evaluated (BOS + ctx-1 tokens each)")
    p.add_argument("--batch-contexts", type=int, default=16, help="contexts per forward pass")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    sae, lm, ids, n = load_inputs(args.dictionary, args.contexts, args.batch_contexts)
    bos, pad = lm.tokenizer.bos_token_id, lm.tokenizer.pad_token_id
    print(f"dictionary {args.dictionary}: {sae.cfg.arch} d_in={sae.cfg.d_in} d_sae={sae.cfg.d_sae} k={sae.cfg.k} "
          f"hook={sae.cfg.hook} model={lm.name}")
    print(f"tokens: {ids.shape[0]} contexts x {ids.shape[1]} (held-out, BOS first) = {n} non-BOS tokens; "
          f"BOS id {bos} appears {int((ids[:, 1:] == bos).sum())} times after position 0")
    print("versions: " + ", ".join(f"{k} {_version(k)}" for k in
                                   ("saekit", "sae-lens", "dictionary-learning", "nnsight", "transformer-lens",
                                    "torch", "transformers")))

    acts = hook_activations(sae, lm, ids, args.batch_contexts)
    x_tok = acts[:, 1:].reshape(-1, acts.shape[-1])  # non-BOS
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x_tok))

    s = run_saekit(sae, lm, n, args.batch_contexts)
    notes = [f"saekit ran: evaluate(regimes=['fixed'], tokens={n}) -> n_tokens={s.get('n_tokens')}, "
             f"n_ce_tokens={s.get('n_ce_tokens')}"]

    sl = dl = None
    try:
        import sae_lens  # noqa: F401
    except ImportError:
        notes.append("SAELens not installed (pip install sae-lens): skipped")
    else:
        sl, more = run_saelens(sae, lm, ids, x_tok[:4096], args.batch_contexts)
        notes += more
    try:
        import dictionary_learning  # noqa: F401
    except ImportError:
        notes.append("dictionary_learning not installed (pip install dictionary-learning): skipped")
    else:
        dl, more = run_dictionary_learning(sae, lm, ids, x_tok, args.batch_contexts)
        notes += more

    print()
    print_table(build_rows(s, sl, dl, x_tok, x_hat, ids, bos, pad))
    print()
    for line in notes:
        print("- " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
