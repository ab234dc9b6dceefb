"""How statistics reach an `EdgeStats`: `stats_targets` (who a call fills), `add_to_all` (the
one place every call's statistics are added), the `StatsTap` mix-in of magnn's attention layers, PyG's message
and output hooks, and the `collect` context manager that attaches them; `recomputing`
keeps a forward that autograd recomputes from counting twice.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Optional, Sequence, Union

import torch

from ..core.binning import RawStats
from ..core.errors import NothingToCollect, UserError
from .attention import AttentionStats
from .reduction import reduce_tensor
from .types import EdgeStats

__all__ = ["StatsArg", "stats_targets", "add_to_all", "StatsTap", "recomputing", "collect", "collect_attention"]


StatsArg = Union["EdgeStats", "AttentionStats", Sequence[Union["EdgeStats", "AttentionStats"]], None]
COLLECTORS = (EdgeStats, AttentionStats)


def stats_targets(stats: StatsArg) -> tuple[EdgeStats, ...]:
    """`stats=` as a tuple of distinct collectors (EdgeStats or AttentionStats; None -> (); one ->
    (one,); duplicates dropped)."""
    if stats is None:
        return ()
    if isinstance(stats, COLLECTORS):
        return (stats,)
    if isinstance(stats, (list, tuple)):
        targets: list[EdgeStats] = []
        for item in stats:
            if not isinstance(item, COLLECTORS):
                raise TypeError(f"stats must hold magnn.stats.EdgeStats or AttentionStats objects, "
                                f"got {type(item).__name__}")
            if not any(item is seen for seen in targets):
                targets.append(item)
        return tuple(targets)
    raise TypeError(f"stats must be a magnn.stats.EdgeStats or AttentionStats, a list/tuple of them or None, "
                    f"got {type(stats).__name__}")


def add_to_all(
    targets: Sequence[EdgeStats],
    raw: Union[RawStats, Mapping[str, RawStats]],
    heads: int,
    *,
    edge_types: Optional[torch.Tensor] = None,
) -> None:
    """Folds one call's statistics into every EdgeStats of `targets`, all or nothing: every
    target checks the call first (settings, channels, edge_types length), then all add.

    raw: the call's `RawStats`, or a dict tap -> RawStats when the targets tap different
    tensors (each target takes its own tap's; histograms may be finer than it keeps).
    edge_types: the call's per-edge types, for the targets that count by edge type
    (instead of their own `edge_types`).

    Adds nothing while autograd recomputes a forward (`recomputing()`: activation checkpointing
    in either mode): that call's statistics were taken when it first ran. Every call that fills
    statistics comes here (`edge_attention`, `merge_attention`, `collect`'s PyG and output hooks),
    so a recomputation adds nothing whoever asked for the statistics; the recomputation itself
    runs the same code as the first pass (the same kernels, statistics included), as the
    checkpointing's check of the tensors saved for backward demands (under torch.compile too).
    """
    if recomputing():
        return

    def raw_for(target: EdgeStats) -> RawStats:
        if isinstance(raw, RawStats):
            return raw
        if target.tap not in raw:
            raise ValueError(f"no statistics for tap {target.tap!r} (have {sorted(raw)})")
        return raw[target.tap]

    parts = [target._from_raw(raw_for(target), heads, edge_types) for target in targets]
    for target, part in zip(targets, parts):
        target._absorb(part)


class StatsTap:
    """What `collect` attaches to: a module whose calls fill the active collectors.

    `FusedEdgeAttention` (and every layer built on it) mixes this in; the layer
    passes `stats_targets(...)` to `edge_attention`'s ``stats=``, the one path
    by which statistics reach an `EdgeStats`.
    """

    def init_stats_tap(self) -> None:
        self._collectors: list[EdgeStats] = []  # attached by collect blocks, outermost first
        self._collection_paused = 0  # > 0 while a recomputation must not add statistics

    def attach_collector(self, stats: "EdgeStats") -> None:
        """Adds `stats` to the collectors every call of this layer fills (what `collect` does)."""
        if not isinstance(stats, COLLECTORS):
            raise TypeError(f"a collector must be a magnn.stats.EdgeStats or AttentionStats, got {type(stats).__name__}")
        if not any(stats is active for active in self._collectors):
            self._collectors.append(stats)

    def detach_collector(self, stats: "EdgeStats") -> None:
        """Removes `stats` (by identity) from the active collectors; the others stay."""
        self._collectors = [active for active in self._collectors if active is not stats]

    @contextlib.contextmanager
    def paused_collection(self):
        """No statistics from this layer while inside (a recomputation in backward needs no pause:
        `add_to_all` skips it whatever asked for the statistics, see `recomputing`)."""
        self._collection_paused += 1
        try:
            yield
        finally:
            self._collection_paused -= 1

    @property
    def collectors(self) -> tuple["EdgeStats", ...]:
        """The collectors the next call fills (none while paused for a recomputation)."""
        return () if self._collection_paused else tuple(self._collectors)

    def stats_targets(self, stats: StatsArg = None) -> tuple["EdgeStats", ...]:
        """Everything one call fills: `stats` (one EdgeStats or a sequence), then the active collectors."""
        return stats_targets([*stats_targets(stats), *self.collectors])


def recomputing() -> bool:
    """True while the autograd engine runs a backward pass on this thread: a forward that runs then is
    a recomputation (`torch.utils.checkpoint` re-runs the checkpointed forward inside backward, from
    `CheckpointFunction.backward` with use_reentrant=True, from the saved-tensor unpack hook with
    use_reentrant=False) whose statistics were taken when it first ran, so collection skips it.

    The signal is the engine's own (the graph task being executed, thread-local), not a guess from
    grad mode: the reentrant recomputation runs with grad enabled, and a forward under no_grad (an
    evaluation) is a real forward that must count. torch.func transforms and torch.compile run the
    forward once (AOTAutograd's recomputation happens inside the compiled backward, without Python
    side effects), so nothing needs skipping there."""
    try:
        return torch._C._current_graph_task_id() != -1
    except AttributeError:  # an older torch without the query: never skip
        return False


def _first_tensor(output) -> Optional[torch.Tensor]:
    """A module's output tensor: itself, or the first tensor of a tuple/list (e.g. MultiheadAttention's)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((item for item in output if isinstance(item, torch.Tensor)), None)
    return None


def _message_passing_class():
    try:
        from torch_geometric.nn.conv import MessagePassing
    except ImportError:  # PyG is a dependency, but collect must not need it for magnn-only models
        return None
    return MessagePassing


def _fill(target: EdgeStats, tensor: torch.Tensor, heads: int) -> None:
    """One tapped tensor into `target` (reduced at its resolution); PyG-tapped calls only."""
    if tensor.dim() == 0 or not tensor.is_floating_point():
        return
    rows = tensor.shape[0]
    edge_types = target.edge_types if target.tap == "edge" else None
    if edge_types is not None and edge_types.shape[0] != rows:
        raise UserError(
            f"collect(edge_types=...): a layer's messages have {rows} rows but edge_types has "
            f"{edge_types.shape[0]} entries (the layer adds or removes edges, e.g. GATConv's self-loops); "
            "collect without edge_types, or build the layer so that it keeps the graph's edges (add_self_loops=False)")
    add_to_all((target,), reduce_tensor(tensor, target.mantissa_bits), heads)  # (nothing when recomputing)


def _message_hook(target: EdgeStats):
    """PyG message-forward hook: reduce the per-edge messages [E, ...] (heads = dim 1 of [E, H, D])."""
    def hook(module, inputs, message):
        if isinstance(message, torch.Tensor) and message.dim() >= 1:
            _fill(target, message, message.shape[1] if message.dim() == 3 else 1)
    return hook


def _output_hook(target: EdgeStats):
    """Forward hook on a module: its output as rows [-1, last dim] (node-level statistics)."""
    def hook(module, inputs, output):
        tensor = _first_tensor(output)
        if tensor is not None and tensor.dim() >= 1:
            _fill(target, tensor.reshape(-1, tensor.shape[-1]) if tensor.dim() > 1 else tensor.reshape(-1, 1), 1)
    return hook


@contextlib.contextmanager
def collect(model: torch.nn.Module, *, modules: Sequence[str] = (), **stats_kwargs) -> Iterator[dict[str, EdgeStats]]:
    """Attach a fresh `EdgeStats` to every attention layer of `model`, named by module path.

        with magnn.stats.collect(model) as stats:
            model(batch)
        print({name: s.max_ratio() for name, s in stats.items()})

    Attention layers are magnn's (`FusedEdgeAttention` and every other `StatsTap`: the
    statistics come out of the kernels) and every PyG `MessagePassing` module that is not
    one of magnn's (TransformerConv, GATConv, GINEConv, the convs inside GPSConv, ...).
    A PyG layer is tapped through its message-forward hook: each call's messages [E, ...]
    (flattened to [E, C]; heads from [E, H, D]) are reduced to the same statistics right
    away and not kept. PyG layers that run fused (`message_and_aggregate`, e.g. on a
    SparseTensor adjacency) never call `message` and report no calls. With
    ``tap="node"`` a PyG layer's output (its aggregated node features) is tapped instead.

    modules: extra module paths whose *output* is tapped (e.g. ``["gps.attn"]``, a dense
    MultiheadAttention): node-level statistics (rows = the output's leading dims, C = its
    last dim; the first tensor of a tuple output), under the same name, or ``name:output``
    when that module is already collected as an attention layer.

    Blocks nest: each layer keeps a list of its active collectors, and every
    call of the layer is added to each of them (with each one's own settings);
    leaving a block detaches only that block's collectors. Calls made while autograd
    recomputes a forward add nothing (activation checkpointing, use_reentrant True or False,
    around magnn layers, PyG layers or whole models: see `recomputing`), so a checkpointed
    model reports the statistics of an uncheckpointed one.
    """
    message_passing = _message_passing_class()
    named = list(model.named_modules())
    taps = [(name, m) for name, m in named if isinstance(m, StatsTap)]
    inside_tap = {id(child) for _, m in taps for child in m.modules()}
    pyg = [(name, m) for name, m in named if message_passing is not None and isinstance(m, message_passing)
           and id(m) not in inside_tap]
    modules = [modules] if isinstance(modules, str) else list(modules)
    outputs = []
    for name in modules:
        try:
            outputs.append((name, model.get_submodule(name)))
        except AttributeError:
            known = [n for n, _ in named if n]
            raise NothingToCollect(
                f"collect(modules=[{name!r}]): the model has no module {name!r}; pass a path from "
                f"model.named_modules() (e.g. {', '.join(known[:6])}{', ...' if len(known) > 6 else ''})") from None
    if not taps and not pyg and not outputs:
        raise NothingToCollect(
            "collect(model): the model has no magnn attention layer (FusedEdgeAttention or another StatsTap) and "
            "no PyG MessagePassing layer; pass modules=[...] to tap other modules' outputs")
    collected = {name: EdgeStats(**stats_kwargs) for name, _ in taps + pyg}
    node_kwargs = {**stats_kwargs, "tap": "node"}
    node_kwargs.pop("edge_types", None)
    output_names = []
    for name, _ in outputs:
        key = name if name not in collected else f"{name}:output"
        collected[key] = EdgeStats(**node_kwargs)
        output_names.append(key)
    handles = []
    try:
        for name, module in taps:
            module.attach_collector(collected[name])
        for name, module in pyg:
            stats = collected[name]
            if stats.tap == "node":
                handles.append(module.register_forward_hook(_output_hook(stats)))
            else:
                handles.append(module.register_message_forward_hook(_message_hook(stats)))
        for key, (_, module) in zip(output_names, outputs):
            handles.append(module.register_forward_hook(_output_hook(collected[key])))
        yield collected
    finally:
        for handle in handles:
            handle.remove()
        for name, module in taps:
            module.detach_collector(collected[name])


@contextlib.contextmanager
def collect_attention(model: torch.nn.Module, **stats_kwargs) -> Iterator[dict[str, AttentionStats]]:
    """Attach a fresh `AttentionStats` (sink mass and edge entropy per node and head) to every magnn
    attention layer (`StatsTap`) of `model`, named by module path; blocks nest with `collect`'s.

        with magnn.stats.collect_attention(model, keep_rows=True) as attention:
            model(batch)
    """
    taps = [(name, m) for name, m in model.named_modules() if isinstance(m, StatsTap)]
    if not taps:
        raise NothingToCollect("collect_attention(model): the model has no magnn attention layer "
                               "(FusedEdgeAttention or another StatsTap)")
    collected = {name: AttentionStats(**stats_kwargs) for name, _ in taps}
    try:
        for name, module in taps:
            module.attach_collector(collected[name])
        yield collected
    finally:
        for name, module in taps:
            module.detach_collector(collected[name])
