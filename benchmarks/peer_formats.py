"""Check saekit's peer-format loaders and writers against the peers' own code.

Run with a Python that has sae-lens, dictionary-learning and eai-sparsify installed:

    bash benchmarks/peers_setup.sh combined
    SPARSIFY_DISABLE_TRITON=1 .peers-venv/bin/python benchmarks/peer_formats.py

For every peer architecture: build it with the peer's classes (random weights, non-unit
decoder rows where the peer allows), save it with the peer's code, load it with saekit,
compare encode/decode on random inputs; then save a saekit dictionary with saekit's
writer and load it with the peer's loader, same comparison. Prints the table.
"""

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

import torch  # noqa: E402

from saekit.dictionaries import DictionaryConfig, build_dictionary  # noqa: E402
from saekit.io.formats import (  # noqa: E402
    detect_format, load_dictionary_learning, load_saelens, load_sparsify,
    save_dictionary_learning, save_saelens, save_sparsify,
)

D, F, K, N = 32, 128, 8, 256
rows = []


def randomise(module, scale=0.2):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale)


def diff(a, b):
    return float((a.float() - b.float()).abs().max())


def record(fmt, arch, direction, f_diff, x_diff):
    rows.append((fmt, arch, direction, max(f_diff, x_diff)))


def compare(fmt, arch, direction, peer_enc, peer_dec, sae):
    torch.manual_seed(123)
    x = torch.randn(N, D) * 3
    with torch.no_grad():
        f_peer, f_ours = peer_enc(x), sae.encode(x)
        record(fmt, arch, direction, diff(f_peer, f_ours), diff(peer_dec(f_peer), sae.decode(f_peer)))


def saekit_dict(arch):
    torch.manual_seed(7)
    cfg = DictionaryConfig(arch=arch, d_in=D, d_sae=F, k=K if arch in ("topk", "batchtopk") else None)
    sae = build_dictionary(cfg)
    randomise(sae)
    with torch.no_grad():
        sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(F) * 0.5)
        if arch == "batchtopk":
            sae.calibrate(torch.randn(512, D) * 3)
    return sae.eval()


def run_saelens(tmp):
    from sae_lens import SAE
    from sae_lens.saes import GatedSAE, GatedSAEConfig, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, \
        StandardSAEConfig, TopKSAE, TopKSAEConfig

    variants = {
        "standard": lambda **kw: StandardSAE(StandardSAEConfig(d_in=D, d_sae=F, **kw)),
        "topk": lambda **kw: TopKSAE(TopKSAEConfig(d_in=D, d_sae=F, k=K, **kw)),
        "jumprelu": lambda **kw: JumpReLUSAE(JumpReLUSAEConfig(d_in=D, d_sae=F, **kw)),
        "gated": lambda **kw: GatedSAE(GatedSAEConfig(d_in=D, d_sae=F, **kw)),
    }
    for name, ctor in variants.items():
        for apply_b in (True, False):
            extra = {"rescale_acts_by_decoder_norm": True} if name == "topk" and not apply_b else {}
            peer = ctor(apply_b_dec_to_input=apply_b, **extra)
            torch.manual_seed(hash(name) % 1000)
            randomise(peer)
            if name == "jumprelu":
                with torch.no_grad():
                    peer.threshold.copy_(torch.rand(F) * 0.5)
            path = tmp / f"sl_{name}_{apply_b}"
            peer.save_model(path)
            assert detect_format(path) == "saelens"
            label = name + ("" if apply_b else " (no b_dec in" + (", rescale" if extra else "") + ")")
            compare("saelens", label, "peer→saekit", peer.encode, peer.decode, load_saelens(path))
    for arch in ("relu", "topk", "batchtopk", "jumprelu", "gated"):
        sae = saekit_dict(arch)
        path = tmp / f"sk_sl_{arch}"
        save_saelens(sae, path)
        peer = SAE.load_from_disk(str(path))
        compare("saelens", arch, "saekit→peer", peer.encode, peer.decode, sae)


def run_sparsify(tmp):
    from sparsify import SparseCoder, SparseCoderConfig

    def dense(coder):
        def enc(x):
            out = coder.encode(x)
            return torch.zeros(x.shape[0], coder.num_latents).scatter(-1, out.top_indices, out.top_acts)
        return enc

    torch.manual_seed(3)
    peer = SparseCoder(D, SparseCoderConfig(num_latents=F, k=K))
    randomise(peer)
    path = tmp / "sp"
    peer.save_to_disk(path)
    assert detect_format(path) == "sparsify"
    compare("sparsify", "topk", "peer→saekit", dense(peer), lambda f: f @ peer.W_dec + peer.b_dec, load_sparsify(path))
    sae = saekit_dict("topk")
    save_sparsify(sae, tmp / "sk_sp")
    peer = SparseCoder.load_from_disk(tmp / "sk_sp")
    compare("sparsify", "topk", "saekit→peer", dense(peer), lambda f: f @ peer.W_dec + peer.b_dec, sae)


def run_dictionary_learning(tmp):
    import json

    from dictionary_learning.dictionary import AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    classes = {
        "AutoEncoder": (lambda: AutoEncoder(D, F), "relu"),
        "GatedAutoEncoder": (lambda: GatedAutoEncoder(D, F), "gated"),
        "JumpReluAutoEncoder": (lambda: JumpReluAutoEncoder(D, F), "jumprelu"),
        "AutoEncoderTopK": (lambda: AutoEncoderTopK(D, F, K), "topk"),
        "BatchTopKSAE": (lambda: BatchTopKSAE(D, F, K), "batchtopk"),
    }
    for name, (ctor, _) in classes.items():
        peer = ctor()
        torch.manual_seed(len(name))
        randomise(peer)
        with torch.no_grad():
            if name == "JumpReluAutoEncoder":
                peer.threshold.copy_(torch.rand(F) * 0.5)
            if name == "BatchTopKSAE":
                peer.threshold.fill_(0.3)
        path = tmp / f"dl_{name}"
        path.mkdir()
        # exactly what dictionary_learning.training writes at the end of a run
        torch.save({k: v.cpu() for k, v in peer.state_dict().items()}, path / "ae.pt")
        cfg = {"dict_class": name, "activation_dim": D, "dict_size": F, "lm_name": "m", "submodule_name": "h"}
        if hasattr(peer, "k"):
            cfg["k"] = int(peer.k)
        (path / "config.json").write_text(json.dumps({"trainer": cfg}))
        assert detect_format(path) == "dictionary_learning"
        compare("dictionary_learning", name, "peer→saekit", peer.encode, peer.decode, load_dictionary_learning(path))
    loaders = {
        "relu": lambda p: AutoEncoder.from_pretrained(p, normalize_decoder=False),
        "gated": GatedAutoEncoder.from_pretrained,
        "jumprelu": lambda p: JumpReluAutoEncoder.from_pretrained(p),
        "topk": AutoEncoderTopK.from_pretrained,
        "batchtopk": BatchTopKSAE.from_pretrained,
    }
    for arch, loader in loaders.items():
        sae = saekit_dict(arch)
        save_dictionary_learning(sae, tmp / f"sk_dl_{arch}")
        peer = loader(str(tmp / f"sk_dl_{arch}" / "ae.pt"))
        compare("dictionary_learning", arch, "saekit→peer", peer.encode, peer.decode, sae)


def main():
    failures = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for fn in (run_saelens, run_sparsify, run_dictionary_learning):
            try:
                fn(tmp)
            except Exception as e:  # report and go on with the other peers
                failures.append(f"{fn.__name__}: {type(e).__name__}: {e}")
    print("| format | architecture | direction | max abs diff (encode, decode) |")
    print("|---|---|---|---|")
    for fmt, arch, direction, m in rows:
        flag = "" if m < 1e-5 else "  FAIL"
        print(f"| {fmt} | {arch} | {direction} | {m:.2e}{flag} |")
    for f in failures:
        print("ERROR", f)
    bad = failures or [r for r in rows if r[3] >= 1e-5]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
