"""magnn.models.presets: the quick profiles and the named variants (--architecture, --ebt-compat)."""
from __future__ import annotations

import pytest

from magnn.core.errors import UserError
from magnn.models.presets import (
    NODE_STUDY_PROFILES,
    PROTEINS_ARCHITECTURES,
    QUICK_PAIRS,
    STUDY_PROFILES,
    proteins_architecture,
    study_profile,
    variant_overrides,
)


def test_quick_study_profile_per_pair():
    zinc_gt = study_profile("zinc", "gt", quick=True)
    assert zinc_gt == {**STUDY_PROFILES["quick"], **QUICK_PAIRS[("zinc", "gt")]}
    assert zinc_gt["preset"] == "paper" and zinc_gt["lr"] == 2e-3 and zinc_gt["epochs"] == 60
    for dataset, model in (("tox21", "gt"), ("zinc", "san"), ("zinc", "graphit")):
        assert study_profile(dataset, model, quick=True) == STUDY_PROFILES["quick"]
    assert study_profile("zinc", "gt", quick=False) == STUDY_PROFILES["full"]  # the full protocol stays
    assert study_profile("ogbn-proteins", "gt", quick=True) == NODE_STUDY_PROFILES["quick"]
    study_profile("zinc", "gt", quick=True)["epochs"] = 1  # a copy: the table stays as it is
    assert STUDY_PROFILES["quick"]["epochs"] == 15


@pytest.mark.parametrize("model", ["gt", "graphit", "san"])
@pytest.mark.parametrize("name", sorted(PROTEINS_ARCHITECTURES))
def test_architecture_selects_the_named_model_keywords(model, name):
    assert variant_overrides(model, "ogbn-proteins", architecture=name) == proteins_architecture(model, name)


def test_ebt_compat_applies_to_the_models_whose_paper_code_differs():
    assert variant_overrides("san", "zinc", ebt_compat="gnn-mas") == {"ebt_compat": "gnn-mas"}
    assert variant_overrides("graphit", "tox21", ebt_compat="gnn-mas") == {"ebt_compat": "gnn-mas"}
    assert variant_overrides("gt", "zinc", ebt_compat="gnn-mas") == {}  # GT's paper code computes the formula
    assert variant_overrides("san", "ogbn-proteins", architecture="magnn", ebt_compat="gnn-mas") == {
        **proteins_architecture("san", "magnn"), "ebt_compat": "gnn-mas"}
    assert variant_overrides("gt", "zinc") == {}


def test_variants_that_do_not_apply_are_refused():
    with pytest.raises(UserError, match="--architecture chooses between ogbn-proteins"):
        variant_overrides("gt", "zinc", architecture="paper")
    with pytest.raises(UserError, match="--ebt-compat"):
        variant_overrides("san", "zinc", ebt_compat="paper-code")
