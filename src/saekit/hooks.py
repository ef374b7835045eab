"""Name, read and write the activations of a transformer at uniform hook points.

A hook point is "<site>.<layer>", layers counted from 0:

- `resid_pre.L`  the residual stream entering block L (`hidden_states[L]` of transformers)
- `attn_out.L`   what block L's attention sublayer adds to the residual stream
- `mlp_in.L`     the input of block L's MLP module (after its pre-MLP norm, if any)
- `mlp_out.L`    what block L's MLP sublayer adds to the residual stream
- `resid_post.L` the residual stream leaving block L, before any final norm
                 (`hidden_states[L+1]` for every block but the last, whose
                 transformers hidden state has the final norm applied)

Every family maps these onto the same two kinds of PyTorch hook, so the rest of
saekit never needs to know a model's module names: an *output* point is the output
of a submodule (the block, the attention or MLP module, or a post-sublayer norm),
an *input* point is the first input of a submodule (the block, or the MLP). The
per-family table below says which submodule; a generic fallback finds it for
families not in the table (Mistral, Qwen2, ... share Llama's names).

Reading stops the forward pass as soon as every requested point has been captured
(a private exception raised from the hook), so the later blocks and the LM head
never run: reading layer 9 of 30 costs a third of a forward pass. Writing replaces
an activation by `fn(activation)` for as long as a context manager is open. Every
hook is removed on exit, also when an exception escapes, so a failed step never
leaves a model silently modified.

Neither function disables autograd: callers that only read wrap the call in
`torch.no_grad()` (or `inference_mode`) for speed, and attribution methods that need
gradients with respect to activations get them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from saekit.errors import ConfigError, HookPointError
from saekit.models import LoadedModel

logger = logging.getLogger(__name__)

SITES: tuple[str, ...] = ("resid_pre", "attn_out", "mlp_in", "mlp_out", "resid_post")
"""All sites, in the order their activations are computed within a block."""

_SITE_RANK = {site: rank for rank, site in enumerate(SITES)}

EditFn = Callable[[Tensor], Tensor]


@functools.total_ordering
@dataclass(frozen=True)
class HookPoint:
    """One place in the forward pass: a site in a block.

    Points order as they are computed: resid_pre.L < attn_out.L < mlp_in.L <
    mlp_out.L < resid_post.L < resid_pre.L+1. (In parallel-residual blocks the
    attention and MLP branches are independent; the order is still a valid one.)
    """

    site: str
    layer: int

    @property
    def name(self) -> str:
        return f"{self.site}.{self.layer}"

    def __str__(self) -> str:
        return self.name

    @property
    def sort_key(self) -> tuple[int, int]:
        return (self.layer, _SITE_RANK[self.site])

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, HookPoint):
            return NotImplemented
        return self.sort_key < other.sort_key

    @classmethod
    def parse(cls, name: str) -> HookPoint:
        """Parse "<site>.<layer>" without a model: checks the form and the site only."""
        if not isinstance(name, str):
            raise HookPointError(f"a hook-point name must be a string like 'resid_post.9', not {name!r}")
        text = name.strip()
        site, sep, layer_text = text.rpartition(".")
        if not sep or not site:
            raise HookPointError(
                f"{name!r} is not a hook-point name: expected '<site>.<layer>', e.g. 'resid_post.9'; "
                f"valid sites: {', '.join(SITES)}"
            )
        if site not in _SITE_RANK:
            raise HookPointError(f"{name!r}: unknown site {site!r}; valid sites: {', '.join(SITES)}")
        if not layer_text.isdigit():
            raise HookPointError(
                f"{name!r}: layer {layer_text!r} is not a non-negative whole number (layers count from 0), "
                f"e.g. '{site}.0'"
            )
        return cls(site=site, layer=int(layer_text))


# ---------------------------------------------------------------------------
# Where each site lives, per family


@dataclass(frozen=True)
class _Layout:
    """Submodule names inside one block.

    `attn_out` and `mlp_out` name the submodule whose *output* is the sublayer's
    contribution to the residual stream; `mlp_in` names the submodule whose *input*
    is read.
    """

    attn_out: str
    mlp_out: str
    mlp_in: str


_PRE_NORM = _Layout(attn_out="self_attn", mlp_out="mlp", mlp_in="mlp")
# Gemma-2/3 and OLMo-2 normalise each sublayer's output before adding it to the
# residual stream, so the contribution is the output of that post-norm, not of the
# attention or MLP module itself.
_SANDWICH = _Layout(attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm", mlp_in="mlp")

# Sublayer outputs are read where each module returns, so dropout applied after
# the module (GPT-NeoX's post_attention_dropout) is not included; models are read
# in eval mode, where it is the identity.
_FAMILY_LAYOUTS: dict[str, _Layout] = {
    "llama": _PRE_NORM,
    "gemma": _PRE_NORM,
    "gpt2": _Layout(attn_out="attn", mlp_out="mlp", mlp_in="mlp"),
    "gpt_neox": _Layout(attn_out="attention", mlp_out="mlp", mlp_in="mlp"),
    "gemma2": _SANDWICH,
    "gemma3": _SANDWICH,
    "gemma3_text": _SANDWICH,
    "olmo2": _SANDWICH,
}

_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe")


@dataclass
class _Structure:
    """What hooks.py needs to know about one model: its blocks and their layout."""

    display_name: str
    blocks: nn.ModuleList
    layout: _Layout
    runner: nn.Module  # module to call for reading: the decoder without the LM head

    @property
    def n_layers(self) -> int:
        return len(self.blocks)


def _unwrap(model: Any) -> tuple[nn.Module, str | None]:
    if isinstance(model, LoadedModel):
        return model.model, model.name
    if isinstance(model, nn.Module):
        return model, None
    raise TypeError(f"expected a transformers model or a saekit LoadedModel, got {type(model).__name__}")


def _has(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True


def _generic_layout(block: nn.Module) -> _Layout | None:
    attn = next((n for n in _ATTN_NAMES if _has(block, n)), None)
    mlp = next((n for n in _MLP_NAMES if _has(block, n)), None)
    if attn is None or mlp is None:
        return None
    if _has(block, "post_feedforward_layernorm") and _has(block, "post_attention_layernorm"):
        return _Layout(attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm", mlp_in=mlp)
    return _Layout(attn_out=attn, mlp_out=mlp, mlp_in=mlp)


def _n_layers_from_config(module: nn.Module) -> int | None:
    config = getattr(module, "config", None)
    if config is None:
        return None
    getter = getattr(config, "get_text_config", None)
    config = getter() if callable(getter) else config
    for attr in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    return None


# Finding the blocks walks every module; models do not change structure, so the
# answer is kept per model object (weakly, so models can still be freed).
_STRUCTURE_CACHE: weakref.WeakKeyDictionary[nn.Module, _Structure] = weakref.WeakKeyDictionary()


def _structure(model: Any) -> _Structure:
    module, loaded_name = _unwrap(model)
    cached = _STRUCTURE_CACHE.get(module)
    if cached is not None:
        if loaded_name is not None and cached.display_name != loaded_name:
            cached = _Structure(loaded_name, cached.blocks, cached.layout, cached.runner)
        return cached

    config = getattr(module, "config", None)
    model_type = getattr(config, "model_type", None)
    name = loaded_name or getattr(config, "_name_or_path", None) or type(module).__name__
    n_layers = _n_layers_from_config(module)
    table_layout = _FAMILY_LAYOUTS.get(model_type or "")

    found: tuple[nn.ModuleList, _Layout] | None = None
    for candidate in module.modules():
        if not isinstance(candidate, nn.ModuleList) or len(candidate) == 0:
            continue
        if n_layers is not None and len(candidate) != n_layers:
            continue
        first = candidate[0]
        layout = table_layout
        if layout is None or not all(_has(first, n) for n in (layout.attn_out, layout.mlp_out, layout.mlp_in)):
            layout = _generic_layout(first)
        if layout is not None:
            found = (candidate, layout)
            break
    if found is None:
        raise HookPointError(
            f"cannot find the transformer blocks of {name} ({type(module).__name__}, model_type {model_type!r}): "
            f"expected a list of {n_layers if n_layers is not None else 'N'} blocks, each with an attention "
            f"submodule (one of {', '.join(_ATTN_NAMES)}) and an MLP (one of {', '.join(_MLP_NAMES)}). "
            "This family needs an entry in saekit.hooks._FAMILY_LAYOUTS"
        )
    blocks, layout = found
    if table_layout is None:
        logger.debug("%s: model_type %r not in the layout table; using %s", name, model_type, layout)
    runner = getattr(module, "base_model", module)
    if not isinstance(runner, nn.Module):
        runner = module
    structure = _Structure(display_name=name, blocks=blocks, layout=layout, runner=runner)
    _STRUCTURE_CACHE[module] = structure
    return structure


def _validate(structure: _Structure, name: str) -> HookPoint:
    n = structure.n_layers
    example = f"resid_post.{n // 3}" if n > 0 else "resid_post.0"
    valid = f"valid sites: {', '.join(SITES)}; layers 0..{n - 1}; e.g. {example}"
    try:
        point = HookPoint.parse(name)
    except HookPointError as exc:
        raise HookPointError(f"{exc}; {structure.display_name} has {valid}") from None
    if point.layer >= n:
        raise HookPointError(
            f"{name!r}: layer {point.layer} does not exist: {structure.display_name} has layers 0..{n - 1}; {valid}"
        )
    return point


def _target(structure: _Structure, point: HookPoint) -> tuple[nn.Module, bool]:
    """The module carrying `point` and whether the point is its input (else its output)."""
    block = structure.blocks[point.layer]
    layout = structure.layout
    if point.site == "resid_pre":
        return block, True
    if point.site == "resid_post":
        return block, False
    if point.site == "attn_out":
        return block.get_submodule(layout.attn_out), False
    if point.site == "mlp_out":
        return block.get_submodule(layout.mlp_out), False
    return block.get_submodule(layout.mlp_in), True  # mlp_in


# ---------------------------------------------------------------------------
# Public naming API


def transformer_blocks(model: Any) -> nn.ModuleList:
    """The model's transformer blocks in order, as saekit's hook points number them
    (``resid_post.3`` is the output of block 3)."""
    return _structure(model).blocks


def hook_point_names(model: Any) -> list[str]:
    """Every valid hook-point name of `model`, in forward order."""
    structure = _structure(model)
    return [f"{site}.{layer}" for layer in range(structure.n_layers) for site in SITES]


def resolve_hook_point(model: Any, name: str) -> HookPoint:
    """Parse `name` and check that it exists in `model`; the error lists what does."""
    return _validate(_structure(model), name)


def hook_width(model: Any, name: str) -> int:
    """Length of the activation vector at `name` (d_model for every current site)."""
    resolve_hook_point(model, name)
    module, loaded_name = _unwrap(model)
    return LoadedModel(model=module, tokenizer=None, name=loaded_name or "model").d_model


# ---------------------------------------------------------------------------
# Getting and setting the activation inside hook arguments


def _first_tensor_of_output(output: Any, where: str) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise HookPointError(f"{where}: cannot find the activation in a module output of type {type(output).__name__}")


def _replace_output(output: Any, value: Tensor) -> Any:
    if isinstance(output, Tensor):
        return value
    rest = list(output[1:])
    if isinstance(output, list):
        return [value, *rest]
    if type(output) is tuple:
        return (value, *rest)
    return type(output)(value, *rest)  # a namedtuple


def _input_of(args: tuple[Any, ...], kwargs: dict[str, Any], where: str) -> Tensor:
    if args and isinstance(args[0], Tensor):
        return args[0]
    value = kwargs.get("hidden_states")
    if isinstance(value, Tensor):
        return value
    raise HookPointError(f"{where}: the module was called without a hidden-state tensor to read")


def _replace_input(
    args: tuple[Any, ...], kwargs: dict[str, Any], value: Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args and isinstance(args[0], Tensor):
        return (value, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": value}


# ---------------------------------------------------------------------------
# Writing: edit_activations


@dataclass
class _EditStack:
    """All active edits on one module's input or output, applied in the order entered.

    One hook per (module, input/output) holds the whole stack. It is registered
    with `prepend=True`, so edits run before any other hook on that module: reads
    (saekit's and transformers' `output_hidden_states`) then see the edited value.
    Keeping one hook per stack rather than one per edit makes nested contexts on
    the same point compose outer-first, which `prepend=True` alone would reverse.
    """

    handle: torch.utils.hooks.RemovableHandle | None = None
    edits: list[tuple[object, str, EditFn]] = field(default_factory=list)


_EDIT_STACKS: weakref.WeakKeyDictionary[nn.Module, dict[bool, _EditStack]] = weakref.WeakKeyDictionary()


def _apply_edits(stack: _EditStack, value: Tensor) -> Tensor:
    for _token, name, fn in list(stack.edits):
        new = fn(value)
        if not isinstance(new, Tensor):
            raise HookPointError(f"the edit of {name} returned {type(new).__name__}, not a tensor")
        if new.shape != value.shape:
            raise HookPointError(
                f"the edit of {name} returned shape {tuple(new.shape)}; it must keep the activation's shape "
                f"{tuple(value.shape)}"
            )
        value = new.to(dtype=value.dtype, device=value.device)
    return value


def _push_edit(module: nn.Module, is_input: bool, token: object, name: str, fn: EditFn) -> None:
    stacks = _EDIT_STACKS.setdefault(module, {})
    stack = stacks.get(is_input)
    if stack is None:
        stack = _EditStack()
        if is_input:

            def pre_hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                value = _input_of(args, kwargs, name)
                return _replace_input(args, kwargs, _apply_edits(stack, value))

            stack.handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True)
        else:

            def hook(_mod: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
                value = _first_tensor_of_output(output, name)
                return _replace_output(output, _apply_edits(stack, value))

            stack.handle = module.register_forward_hook(hook, prepend=True)
        stacks[is_input] = stack
    stack.edits.append((token, name, fn))


def _pop_edit(module: nn.Module, is_input: bool, token: object) -> None:
    stacks = _EDIT_STACKS.get(module)
    if stacks is None or is_input not in stacks:
        return
    stack = stacks[is_input]
    stack.edits = [entry for entry in stack.edits if entry[0] is not token]
    if not stack.edits:
        if stack.handle is not None:
            stack.handle.remove()
        del stacks[is_input]
        if not stacks:
            del _EDIT_STACKS[module]


@contextlib.contextmanager
def edit_activations(model: Any, edits: Mapping[str, EditFn]) -> Iterator[None]:
    """While open, every forward pass uses `fn(activation)` in place of each named activation.

    This is how a dictionary is spliced in (`x -> x̂`), how steering adds a
    direction, and how a feature is clamped. `fn` receives the [batch, seq, d]
    activation and must return a tensor of the same shape; it is cast back to the
    activation's dtype and device. Input points (`resid_pre`, `mlp_in`) replace the
    module's input; output points replace its output, keeping any tuple around it.

    All names are checked before any hook is added. Contexts nest and compose:
    on one point, the edit entered first is applied first. `read_activations`
    inside the context reads the edited values. Hooks are removed on exit,
    whether the block finished or raised.
    """
    structure = _structure(model)
    targets = []
    for name, fn in edits.items():
        if not callable(fn):
            raise HookPointError(f"the edit for {name!r} must be a function of the activation, got {fn!r}")
        point = _validate(structure, name)
        module, is_input = _target(structure, point)
        targets.append((module, is_input, point.name, fn))

    token = object()
    pushed: list[tuple[nn.Module, bool]] = []
    try:
        for module, is_input, name, fn in targets:
            _push_edit(module, is_input, token, name, fn)
            pushed.append((module, is_input))
        yield
    finally:
        for module, is_input in reversed(pushed):
            _pop_edit(module, is_input, token)


# ---------------------------------------------------------------------------
# Reading: read_activations


class _StopForward(Exception):
    """Raised by a read hook once every requested activation has been captured."""


def read_activations(
    model: Any,
    names: Sequence[str],
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    stop_early: bool = True,
) -> dict[str, Tensor]:
    """Run `model` on a batch and return the activation at each named point, [batch, seq, d].

    With `stop_early` the forward pass ends as soon as the last requested point
    has been captured, so later blocks and the LM head never run; the values are
    identical to those of a full pass. The LM head is skipped in any case (the
    decoder stack is run without it), since only activations are returned.

    Gradients are not disabled here: wrap the call in `torch.no_grad()` when only
    reading. Edits active through `edit_activations` apply, and a point that is
    both edited and read is read after the edit.
    """
    if isinstance(names, str):
        names = [names]
    if len(names) == 0:
        raise HookPointError("read_activations needs at least one hook-point name")
    structure = _structure(model)
    wanted: dict[str, tuple[nn.Module, bool]] = {}
    for name in names:
        point = _validate(structure, name)
        wanted[name] = _target(structure, point)

    runner = structure.runner
    device = _device_of(runner)
    input_ids = input_ids.to(device) if device is not None else input_ids
    if attention_mask is not None and device is not None:
        attention_mask = attention_mask.to(device)

    captured: dict[str, Tensor] = {}
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def record(name: str, value: Tensor) -> None:
        if name in captured:
            return  # a module that runs twice: keep the first call's value
        captured[name] = value
        if stop_early and len(captured) == len(wanted):
            raise _StopForward

    try:
        for name, (module, is_input) in wanted.items():
            if is_input:

                def pre_hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], _n: str = name) -> None:
                    record(_n, _input_of(args, kwargs, _n))

                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:

                def hook(_mod: nn.Module, _args: tuple[Any, ...], output: Any, _n: str = name) -> None:
                    record(_n, _first_tensor_of_output(output, _n))

                handles.append(module.register_forward_hook(hook))
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if getattr(runner, "config", None) is not None:
            kwargs["use_cache"] = False  # a transformers model: building a KV cache would be wasted work
        try:
            runner(**kwargs)
        except _StopForward:
            pass
    finally:
        for handle in handles:
            handle.remove()

    missing = [name for name in wanted if name not in captured]
    if missing:
        raise HookPointError(
            f"the forward pass of {structure.display_name} never reached {', '.join(missing)}; "
            "the model's structure does not match saekit's layout for its family"
        )
    return {name: captured[name] for name in names}


class WatchStop(Exception):
    """Raised by a ``watch_activation(..., stop=True)`` hook to end the forward pass once the
    watched activation is read; catch it around the pass."""


class WatchedActivation:
    """The activation at one hook point from the latest forward pass, taken once."""

    def __init__(self, name: str):
        self.name = name
        self.value: Tensor | None = None

    def put(self, value: Tensor) -> None:
        self.value = value

    def take(self, batch_size: int) -> Tensor:
        """The value the last pass left, checked to hold ``batch_size`` rows; cleared, so a
        value is never read twice or by the wrong pass."""
        value, self.value = self.value, None
        if value is None:
            raise ConfigError(f"no activation of {self.name} was read since it was last taken; take it once "
                                 "after each forward pass, inside the watch")
        if value.shape[0] != batch_size:
            raise ConfigError(f"the activation of {self.name} read last holds {value.shape[0]} rows, not the "
                                 f"{batch_size} asked for; take it right after the pass that made it")
        return value


@contextlib.contextmanager
def watch_activation(model: Any, name: str, *, stop: bool = False) -> Iterator[WatchedActivation]:
    """While open, every forward pass of ``model`` leaves the activation at ``name`` as the
    rest of the model sees it: after the edits of ``edit_activations`` at that point (they are
    prepended) and with its autograd graph, unlike ``read_activations``, which runs a pass of
    its own. This is for reading a point during a pass something else drives (a spliced
    model's run, a metric computed from the same pass). ``stop``: end the pass there by
    raising ``WatchStop``, when nothing after the point is wanted."""
    structure = _structure(model)
    module, is_input = _target(structure, _validate(structure, name))
    watched = WatchedActivation(name)
    if is_input:
        def pre_hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            watched.put(_input_of(args, kwargs, name))
            if stop:
                raise WatchStop

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        def hook(_mod: nn.Module, _args: Any, output: Any) -> None:
            watched.put(_first_tensor_of_output(output, name))
            if stop:
                raise WatchStop

        handle = module.register_forward_hook(hook)
    try:
        yield watched
    finally:
        handle.remove()


def _device_of(module: nn.Module) -> torch.device | None:
    for param in module.parameters():
        return param.device
    return None


# ---------------------------------------------------------------------------
# Running only the blocks after a cached point: skip_to_block

# Whether a model's blocks return a tuple (transformers < 4.56) or a tensor; probed
# once per model on a two-token input.
_BLOCKS_RETURN_TUPLE: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def _blocks_return_tuple(structure: _Structure) -> bool:
    first = structure.blocks[0]
    if first not in _BLOCKS_RETURN_TUPLE:
        seen: list[bool] = []

        def probe(_mod: nn.Module, _args: Any, output: Any) -> None:
            seen.append(isinstance(output, (tuple, list)))
            raise _StopForward

        handle = first.register_forward_hook(probe)
        device = _device_of(structure.runner)
        try:
            with torch.no_grad():
                ids = torch.zeros(1, 2, dtype=torch.long, device=device)
                structure.runner(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        _BLOCKS_RETURN_TUPLE[first] = bool(seen and seen[0])
    return _BLOCKS_RETURN_TUPLE[first]


@contextlib.contextmanager
def skip_to_block(model: Any, layer: int, resid_pre: Tensor) -> Iterator[None]:
    """While active, a forward pass starts at block `layer` from a cached residual stream.

    Blocks 0..layer-2 become pass-throughs and block layer-1 returns `resid_pre`
    (the residual stream entering block `layer`, e.g. read earlier with
    `read_activations(model, [f"resid_pre.{layer}"], ...)` on the same batch), so
    several passes that differ only from block `layer` on (clean, spliced, ablated)
    share the work before it. Embeddings, masks and position encodings are still
    computed (cheaply) by the model itself, and every block keeps its place in the
    list, so per-layer settings (Gemma-2's alternating attention masks) stay right.
    Edits from `edit_activations` compose with this in either nesting order. With
    `layer == 0` there is nothing to skip and the context changes nothing.
    """
    structure = _structure(model)
    if not 0 <= layer < structure.n_layers:
        raise HookPointError(f"skip_to_block: layer {layer} is outside 0..{structure.n_layers - 1}")
    if layer == 0:
        yield
        return
    as_tuple = _blocks_return_tuple(structure)

    def wrap(hidden: Tensor) -> Any:
        return (hidden,) if as_tuple else hidden

    def passthrough(*args: Any, **kwargs: Any) -> Any:
        return wrap(_input_of(args, kwargs, "skip_to_block"))

    def inject(*args: Any, **kwargs: Any) -> Any:
        hidden = _input_of(args, kwargs, "skip_to_block")
        if hidden.shape != resid_pre.shape:
            raise HookPointError(
                f"skip_to_block: the cached residual stream has shape {tuple(resid_pre.shape)} but this "
                f"forward pass has {tuple(hidden.shape)}; cache it from the same batch"
            )
        return wrap(resid_pre.to(hidden.dtype))

    saved: list[tuple[nn.Module, Any]] = []
    try:
        for i in range(layer):
            block = structure.blocks[i]
            saved.append((block, block.__dict__.get("forward")))
            block.forward = inject if i == layer - 1 else passthrough  # type: ignore[method-assign]
        yield
    finally:
        # In reverse, so a module listed twice (shared weights) ends with its own forward.
        for block, original in reversed(saved):
            if original is None:
                block.__dict__.pop("forward", None)
            else:
                block.forward = original
