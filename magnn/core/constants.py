"""Names and numbers defined once for the whole package (SPEC §3, §4, §8)."""
from __future__ import annotations

MODES = ("gt", "additive")              # edge_attention's score forms (SPEC §3)
EBT_VARIANTS = (None, "edge", "slot")   # the Explicit Bias Term's variants (SPEC §3)
EBT_INITS = ("normal_0.02", "standard_normal")
TAPS = ("edge", "node")                 # which output the statistics reduce (SPEC §4)

MA_THRESHOLD = 1000.0        # a ratio above this is a massive activation (SPEC §4)
DEFAULT_MANTISSA_BITS = 7    # histogram bins of relative width 2^-7

DATASETS = ("tox21", "zinc", "ogbn-proteins")
MODEL_NAMES = ("gt", "graphit", "san")
SPLITS = ("train", "val", "test")
BACKEND_NAMES = ("auto", "torch", "cpu", "triton")  # "auto": the fastest usable one (magnn.functional decides)

