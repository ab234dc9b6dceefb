"""magnn.train.settings and the lr schedule of magnn.train.setup: the quick defaults chosen by
experiment (docs/EXPERIMENTS.md; the TOX21 training schedule), what overrides them, and the cosine
schedule. The accuracies and MA ratios they reach are experiments, recorded in docs, not asserted
here; the quick study's per-pair profile: tests/test_presets.py."""

import pytest
import torch

from magnn.core.errors import UserError
from magnn.train import TrainConfig, make_scheduler, model_overrides, train, training_settings


def lrs(settings, epochs):
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=settings["lr"])
    scheduler = make_scheduler(optimizer, settings, epochs)
    seen = []
    for _ in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_cosine_schedule_warms_up_then_decays_to_one_percent():
    seen = lrs({"lr": 1e-3, "schedule": "cosine", "warmup_epochs": 3, "patience": 15}, 20)
    assert seen[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])  # linear warmup, then the full lr
    assert all(a > b for a, b in zip(seen[3:], seen[4:]))  # strictly decreasing after the warmup
    assert seen[-1] == pytest.approx(1e-5)  # 1% of lr at the last epoch
    halfway = 3 + (20 - 1 - 3) / 2
    assert seen[int(halfway)] == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5), rel=1e-6)
    # no warmup: the first epoch trains at the full lr
    assert lrs({"lr": 1e-3, "schedule": "cosine", "warmup_epochs": 0, "patience": 15}, 5)[0] == pytest.approx(1e-3)


def test_quick_tox21_defaults_and_what_overrides_them():
    quick = TrainConfig(dataset="tox21", model="gt", preset="quick")
    assert training_settings(quick) == {
        "lr": 1e-3, "schedule": "cosine", "warmup_epochs": 3, "batch_size": 32, "min_lr": 1e-6, "patience": 15}
    assert model_overrides(quick)["dropout"] == 0.2 and model_overrides(quick)["num_layers"] == 4
    given = TrainConfig(dataset="tox21", model="gt", preset="quick", lr=5e-4, schedule="plateau",
                        overrides={"dropout": 0.0})
    assert training_settings(given)["lr"] == 5e-4 and training_settings(given)["schedule"] == "plateau"
    assert model_overrides(given)["dropout"] == 0.0
    # the paper's preset and the other datasets keep the paper's plateau schedule
    for config in (TrainConfig(dataset="tox21", model="gt", preset="paper"), TrainConfig(dataset="zinc", preset="quick")):
        assert training_settings(config)["schedule"] == "plateau"
        assert "dropout" not in model_overrides(config)
    with pytest.raises(UserError, match="schedule"):
        TrainConfig(schedule="linear").validate(environment=False)
    with pytest.raises(UserError, match="warmup_epochs"):
        TrainConfig(warmup_epochs=-1).validate(environment=False)


def test_cosine_training_steps_the_schedule_every_epoch(tmp_path):
    config = TrainConfig(dataset="zinc", model="gt", epochs=3, out=str(tmp_path / "run"), max_graphs=16, batch_size=8,
                         preset="quick", overrides={"num_layers": 2, "hidden": 16, "heads": 2}, backend="torch",
                         lr=1e-3, schedule="cosine", warmup_epochs=1)
    metrics = train(config)
    # history records the lr after each epoch's step: warmup over, then 1% of lr from the last epoch on
    assert [row["lr"] for row in metrics["history"]] == pytest.approx([1e-3, 1e-5, 1e-5])
    assert metrics["stopped"]["reason"] == "epochs"  # min_lr (the plateau rule) does not stop a cosine run
