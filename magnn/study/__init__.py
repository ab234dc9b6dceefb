"""The main job (`magnn study`): train without and with EBT, detect MAs in base vs
trained models, the meaningless-edge ablation, the attack, then report.md/json + figures."""
from .pipeline import add_meaningless_edges, new_edge_type, run_study  # noqa: F401
