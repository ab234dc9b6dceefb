"""magnn train: train GraphTransformer / GraphiT / SAN on TOX21, ZINC or ogbn-proteins.

Writes DIR/metrics.json (config, per-epoch metrics, best validation epoch,
test metrics of the best checkpoint, and as "test_final" of the final epoch's
model: the paper's Table 1), DIR/last.pt (every epoch, atomically)
and DIR/best.pt. `--resume` continues from DIR/last.pt and reaches the same
weights as an uninterrupted run with the same seed: shuffling is seeded per
epoch and every RNG state travels in the checkpoint; with the --epochs it has
already trained, it re-evaluates the run and rewrites metrics.json. A new run
into a folder that holds one is refused unless --overwrite. Checkpoints hold
tensors and plain data and load with weights_only=True; an older, pickled one
needs --trust-checkpoint (only for files you trust). Under `torchrun`
(WORLD_SIZE > 1) molecule batches shard across ranks with DistributedDataParallel.

Library entry point: `train(TrainConfig(...), resume=False)`, or `Trainer(config).fit()`;
`magnn train` (magnn.cli) only parses its options into a TrainConfig and calls it.

The parts, each a module:

    config       TrainConfig: every setting of a run
    settings     what a config resolves to (presets, quick profile, overrides)
    validation   the checks of TrainConfig, StudyConfig and DetectConfig (UserError)
    rng          seeding, and the RNG states a checkpoint carries
    checkpoint   best.pt / last.pt: writing, reading, validating, --resume checks
    setup        data splits, model, lr schedule
    epoch        loss, metric and one pass over a split
    callbacks    Lightning-style hooks: the MA probe ("ma_over_epochs"), TensorBoard
    trainer      the Trainer that orders them, and train()
"""
from .callbacks import Callback, MAProbe, TensorBoard, ma_probe, probe_stats
from .checkpoint import (
    BEST_KEYS,
    RESUME_KEYS,
    Checkpoint,
    check_resume_settings,
    load_checkpoint,
    save_atomically,
)
from .config import TrainConfig
from .settings import (
    MODEL_OPTIONS,
    RESUMABLE_SETTINGS,
    SCHEDULES,
    ebt_option,
    model_overrides,
    run_settings,
    training_settings,
)
from .epoch import EpochResult, NonFiniteLoss, compute_metric, loss_function, metric_name, run_epoch
from .rng import rng_state, seed_everything, set_rng_state
from .setup import build, make_scheduler, prepare
from .trainer import Trainer, train
from .validation import check_train_config

__all__ = [
    "TrainConfig", "train", "Trainer", "Callback", "MAProbe", "TensorBoard", "ma_probe", "probe_stats",
    "Checkpoint", "load_checkpoint", "save_atomically", "check_resume_settings", "BEST_KEYS", "RESUME_KEYS",
    "MODEL_OPTIONS", "RESUMABLE_SETTINGS", "SCHEDULES", "ebt_option", "model_overrides", "run_settings",
    "training_settings", "EpochResult", "NonFiniteLoss", "compute_metric", "loss_function", "metric_name",
    "run_epoch", "rng_state", "seed_everything", "set_rng_state", "build", "make_scheduler", "prepare",
    "check_train_config",
]
