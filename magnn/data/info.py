"""What a model needs to know about a dataset: its task and input encodings."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """Describes a dataset's Data objects so models can build encoders and heads.

    task: "graph_regression" (y [1] per graph, L1), "graph_multilabel"
      (y [1, num_tasks] per graph, NaN = missing label, masked BCE) or
      "node_multilabel" (y [N, num_tasks] per node, BCE).
    node_features: "ogb_atom" (x long [N, 9], OGB smiles2graph), "zinc_atom"
      (x long [N, 1], 28 atom types) or "proteins" (x float [N, 8] aggregated
      edge features, plus `species` long [N] in 0..num_species-1).
    edge_features: "ogb_bond" (edge_attr long [E, 3]), "zinc_bond"
      (edge_attr long [E, 1], bond type 1..3) or "proteins" (edge_attr float [E, 8]).
    Every Data also has `edge_type` long [E] (bond type for molecules, 0 for
    proteins) used by the MA heatmaps; edge_type_names names each type.
    """

    name: str
    task: str
    num_tasks: int
    node_features: str
    edge_features: str
    edge_type_names: tuple[str, ...] = ()
    num_species: int = 0
