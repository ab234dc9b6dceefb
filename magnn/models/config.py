"""The settings of each model, one dataclass per model: field names are the constructor's
keyword arguments (`GraphTransformer(info, **fields)`), so `build_model` / `model_config`
take them flat. A model's constructor turns its arguments into its config, `resolve`s the
dataset-dependent defaults ("auto", None) and `check`s it, then builds its parts from it."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional, Union

from ..data.info import DatasetInfo
from ..core.errors import ArgumentError
from ..core.mitigation import MITIGATION_EBT, check_mitigation
from ..core.validation import check_clamp, check_ebt, check_ebt_init, check_positive_int
from ..functional import check_backend_name
from .block import NORMS
from .compat import check_ebt_compat, gnn_mas_active
from .encoders import PROTEINS_NODE_INPUTS

__all__ = ["ModelConfig", "GraphTransformerConfig", "GraphiTConfig", "SANConfig", "resolve_depth_and_pe"]

# GraphiT's clamp="auto" without the random-walk kernel: the GT code's clamp
DEFAULT_CLAMP = 5.0


def resolve_depth_and_pe(info: DatasetInfo, num_layers: Optional[int], pe, default_pe: Optional[str]):
    """num_layers=None and pe="auto" by dataset: node-level datasets (one large graph, as
    ogbn-proteins) get 3 layers and no eigenvector encoding (an eigsh on the full graph is
    costly and no paper defines it there); graph datasets get 10 layers and the model's PE."""
    large = info.task == "node_multilabel"
    if num_layers is None:
        num_layers = 3 if large else 10
    if pe == "auto":
        pe = None if large and default_pe == "lap" else default_pe
    return num_layers, pe


@dataclass
class ModelConfig:
    """What every model takes (GraphModel's docstring describes each field)."""

    num_layers: Optional[int]
    hidden: int
    heads: int
    norm: Optional[str]
    residual: bool
    dropout: float
    ebt: Optional[str]
    ebt_init: str
    pe: Optional[str]
    pe_dim: int
    readout: Optional[str]
    clamp: Union[float, None, str]
    backend: str
    checkpoint: bool
    node_input: str
    fused_edge_projection: bool
    mitigation: str

    @classmethod
    def from_arguments(cls, arguments: dict):
        """The config holding a constructor's keyword arguments (its `locals()`)."""
        return cls(**{field.name: arguments[field.name] for field in fields(cls)})

    def resolve(self, info: DatasetInfo, default_pe: Optional[str]) -> "ModelConfig":
        """A copy with the dataset-dependent defaults filled in (see `resolve_depth_and_pe`)."""
        num_layers, pe = resolve_depth_and_pe(info, self.num_layers, self.pe, default_pe)
        return replace(self, num_layers=num_layers, pe=pe, ebt=self.resolved_ebt())

    def resolved_ebt(self) -> Optional[str]:
        """`ebt`, or the EBT variant that mitigation "ebt-edge" / "ebt-slot" names (ArgumentError when
        both are given and differ)."""
        check_mitigation(self.mitigation)
        wanted = MITIGATION_EBT.get(self.mitigation)
        if wanted is None or self.ebt == wanted:
            return self.ebt
        if self.ebt is not None:
            raise ArgumentError(f"mitigation={self.mitigation!r} is ebt={wanted!r}, but ebt={self.ebt!r} was given: "
                                "drop one of them")
        return wanted

    def mitigation_layers(self) -> dict:
        """The attention layers' keywords for mitigation "sink" / "gate" (SPEC §3): sink=True or gate=True."""
        return {self.mitigation: True} if self.mitigation in ("sink", "gate") else {}

    def check(self, owner: str, pe_choices: tuple, info: DatasetInfo) -> None:
        """ValueError naming the first bad setting (of a resolved config)."""
        check_positive_int("num_layers", self.num_layers)
        check_positive_int("heads", self.heads)
        check_positive_int("hidden", self.hidden)
        if self.hidden % self.heads:
            raise ArgumentError(f"hidden ({self.hidden}) must be a positive multiple of heads ({self.heads})")
        check_clamp(self.clamp)
        check_backend_name(self.backend)
        if not 0.0 <= self.dropout < 1.0:
            raise ArgumentError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm not in NORMS and self.norm is not None:
            raise ArgumentError(f"unknown norm {self.norm!r}; choose one of {NORMS}")
        check_ebt(self.ebt)
        check_ebt_init(self.ebt_init)
        check_mitigation(self.mitigation)
        if self.pe not in pe_choices:
            raise ArgumentError(f"{owner} supports pe in {pe_choices}, got {self.pe!r}")
        if self.pe is not None and self.pe_dim < 1:
            raise ArgumentError(f"pe_dim must be >= 1, got {self.pe_dim}")
        if self.node_input not in PROTEINS_NODE_INPUTS:
            raise ArgumentError(f"node_input must be one of {PROTEINS_NODE_INPUTS}, got {self.node_input!r}")


@dataclass
class GraphTransformerConfig(ModelConfig):
    """GraphTransformer's settings: the common ones plus `edge_stream`."""

    edge_stream: bool

    def check(self, owner: str, pe_choices: tuple, info: DatasetInfo) -> None:
        if self.fused_edge_projection and self.edge_stream:
            raise ArgumentError("fused_edge_projection=True needs edge_stream=False (every layer then takes the "
                             "same raw edge features), or pass fused_edge_projection=False (the ogbn-proteins paper "
                             "preset turns it on)")
        super().check(owner, pe_choices, info)


@dataclass
class _EdgeEncodedConfig(ModelConfig):
    """GraphiT's and SAN's shared extras: per-layer edge encoders and the paper-code switch."""

    layer_edge_encoders: Optional[bool]
    ebt_compat: Optional[str]

    def resolve(self, info: DatasetInfo, default_pe: Optional[str]):
        """Also layer_edge_encoders=None: one encoder per layer only for edge_features="proteins"."""
        config = super().resolve(info, default_pe)
        if config.layer_edge_encoders is None:
            config = replace(config, layer_edge_encoders=info.edge_features == "proteins")
        return config

    def check(self, owner: str, pe_choices: tuple, info: DatasetInfo) -> None:
        super().check(owner, pe_choices, info)
        self.check_paper_code_mitigation(info)
        if self.fused_edge_projection and (self.layer_edge_encoders or info.edge_features != "proteins"):
            raise ArgumentError("fused_edge_projection=True needs one shared Linear edge encoder "
                             "(edge_features='proteins' and layer_edge_encoders=False), or pass "
                             "fused_edge_projection=False (the ogbn-proteins paper preset turns it on)")

    def check_paper_code_mitigation(self, info: DatasetInfo) -> None:
        """ebt_compat="gnn-mas" reproduces the paper's code, which has no sink or gate."""
        if self.ebt_compat is not None and self.mitigation in ("sink", "gate"):
            raise ArgumentError(f"ebt_compat={self.ebt_compat!r} reproduces the paper's code, which has no "
                                f"{self.mitigation}: drop ebt_compat or use mitigation='none'")

    def paper_code(self, edge_features: Optional[str]) -> bool:
        """Whether ebt_compat="gnn-mas" changes the layers (see `magnn.models.compat`)."""
        return gnn_mas_active(self.ebt_compat, self.ebt, edge_features)


@dataclass
class GraphiTConfig(_EdgeEncodedConfig):
    """GraphiT's settings: the common ones plus the random-walk kernel's p and gamma."""

    kernel_p: int
    kernel_gamma: float

    def resolve(self, info: DatasetInfo, default_pe: Optional[str]) -> "GraphiTConfig":
        """Also clamp="auto": no clamp with the kernel bias (pe="rw"), else the GT code's 5."""
        if isinstance(self.clamp, str) and self.clamp != "auto":
            raise ArgumentError(f"clamp must be 'auto', None (no clamp) or a positive number, got {self.clamp!r}")
        config = super().resolve(info, default_pe)
        if isinstance(config.clamp, str):
            config = replace(config, clamp=None if config.pe == "rw" else DEFAULT_CLAMP)
        return config

    def check(self, owner: str, pe_choices: tuple, info: DatasetInfo) -> None:
        super().check(owner, pe_choices, info)
        if self.fused_edge_projection and self.pe == "rw":
            raise ArgumentError("fused_edge_projection=True attends over the real edges only: use pe=None "
                             "or fused_edge_projection=False (the ogbn-proteins paper preset turns it on)")
        check_ebt_compat(self.ebt_compat, self.ebt)


FAKE_EDGE_MODES = ("auto", "full", "sampled")


@dataclass
class SANConfig(_EdgeEncodedConfig):
    """SAN's settings: the common ones plus the learned LPE's size and the fake edges."""

    lpe_dim: int
    lpe_layers: int
    lpe_heads: int
    full_graph: bool
    gamma: float
    fake_edges: str
    max_fake_nodes: int
    fake_samples: int

    def check(self, owner: str, pe_choices: tuple, info: DatasetInfo) -> None:
        for name in ("lpe_dim", "lpe_layers", "lpe_heads"):
            check_positive_int(name, getattr(self, name))
        if self.gamma < 0:
            raise ArgumentError(f"gamma must be >= 0, got {self.gamma}")
        if self.fake_edges not in FAKE_EDGE_MODES:
            raise ArgumentError(f"unknown fake_edges {self.fake_edges!r}; choose one of {FAKE_EDGE_MODES}")
        if self.fake_samples < 1 or self.max_fake_nodes < 1:
            raise ArgumentError("fake_samples and max_fake_nodes must be >= 1")
        super().check(owner, pe_choices, info)
        if self.fused_edge_projection and self.full_graph:
            raise ArgumentError("fused_edge_projection=True attends over the real edges only: use "
                             "full_graph=False or fused_edge_projection=False (the ogbn-proteins paper preset turns it on)")
        check_ebt_compat(self.ebt_compat, self.ebt)
        if self.paper_code(info.edge_features) and self.full_graph:
            raise ArgumentError("ebt_compat='gnn-mas' reproduces the paper's sparse protocol: use full_graph=False")
