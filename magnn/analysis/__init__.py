"""Analysis on trained and base models: MA detection (`detect`), the Explicit Bias Attack
(`attack`) and the figures both draw (`figures`)."""
