"""Analysis on trained and base models: MA detection (`detect`), the Explicit Bias Attack
(`attack`), the figures both draw (`figures`) and how attention-sink mass relates to in-degree,
MA edges and edge types (`sinks`)."""
