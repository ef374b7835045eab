"""saekit: sparse dictionary learning on language-model activations.

The Python API mirrors the CLI::

    import saekit
    result = saekit.train(saekit.TrainConfig(arch="topk", k=32, tokens=300_000))
    sae = saekit.load(result.out)            # encode / decode / reconstruct on raw activations
    sweep = saekit.train_many([saekit.TrainConfig(hook="resid_post.*", k=k) for k in (16, 32, 64)])
    lm = saekit.load_model()                 # the embedded SmolLM2-135M (or a Hub id / folder / .gguf)
    print(saekit.evaluate(sae, lm).table())  # every docs/metrics.md figure, both context regimes
"""

from .config import TrainConfig
from .dictionaries import Dictionary, DictionaryConfig
from .errors import SaekitError
from .evaluation import EvalResult, ReconstructionMetrics, evaluate, evaluate_many, evaluate_reconstruction
from .hooks import edit_activations, hook_point_names, read_activations
from .loading import load
from .models import load_model
from .io.saekit_format import save_saekit as save
from .training import TrainResult, train, train_many

__version__ = "0.1.0"

__all__ = [
    "TrainConfig",
    "TrainResult",
    "Dictionary",
    "DictionaryConfig",
    "ReconstructionMetrics",
    "EvalResult",
    "SaekitError",
    "train",
    "train_many",
    "load",
    "save",
    "load_model",
    "evaluate",
    "evaluate_many",
    "evaluate_reconstruction",
    "read_activations",
    "edit_activations",
    "hook_point_names",
]
