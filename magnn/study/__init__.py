"""Runs that write folders: `run_study(StudyConfig)` (`magnn study`: train without and with EBT,
detect MAs in base vs trained models, the meaningless-edge ablation, the attack, then
report.md/json + figures, as stages: magnn.study.stages) and `run_detect(DetectConfig)`
(`magnn detect`)."""
from .ablation import add_meaningless_edges, new_edge_type
from .config import StudyConfig
from .detect_run import DetectConfig, DetectResult, run_detect
from .pipeline import run_study

__all__ = ["StudyConfig", "run_study", "DetectConfig", "DetectResult", "run_detect", "add_meaningless_edges",
           "new_edge_type"]
