"""What the subcommands share: option defaults read from the configs, the training options of
`magnn train` and `magnn study`, the named variants, and `--config FILE` (a recorded run's
settings as the defaults)."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from pathlib import Path


DETECT_DESCRIPTION = "`magnn detect`: MA detection on a split from a saved checkpoint (detect.json + figures)."


DEVICE_HELP = ("auto (cuda when visible, else cpu), cpu, cuda or cuda:N; under torchrun a bare cuda is each "
               "rank's cuda:LOCAL_RANK")


def description_of(module) -> str:
    """A subcommand's --help text: its module's docstring up to the library's entry point."""
    return module.__doc__.split("Library entry point")[0].strip() + "\n"


ARCHITECTURE_HELP = ("ogbn-proteins: the paper's model inputs (species only, one shared edge Linear; the default) or "
                     "magnn's richer inputs (mean edge features in the node input, GT edge stream, per-layer edge "
                     "Linears)")
MITIGATION_HELP = ("the attention-sink mitigation of every model trained (SPEC §3): ebt-edge / ebt-slot are --ebt "
                   "edge / slot; sink: a learned per-head sink logit in each softmax; gate: each layer's attention "
                   "output times a per-head sigmoid gate of the node's input; none (default): as configured. "
                   "In magnn study, ebt-* picks the EBT variant compared with no EBT, and sink / gate are added "
                   "to both models of the pair")
EBT_COMPAT_HELP = ("gnn-mas: SAN and GraphiT as the paper's published code computes them (the EBT bias weight "
                   "overwrites every real edge's attention weight; SAN on ogbn-proteins alike without EBT), for a "
                   "like-for-like Table 1 / Fig. 4; GT is unaffected")


def option_default(config_class, name: str):
    """A config field's default: the command line's defaults are the library's."""
    return config_class.__dataclass_fields__[name].default


def config_from_args(config_class, args):
    """A config from the parsed options named like its fields (the rest of `args` is left out)."""
    return config_class(**{field.name: getattr(args, field.name) for field in dataclasses.fields(config_class)})


def add_run_options(parser) -> None:
    """The training options `magnn train` and `magnn study` share; defaults: TrainConfig's."""
    from ..functional import backend_choices
    from ..train import TrainConfig
    from ..train.validation import positive_float, positive_int, positive_int_list, seed_int

    default = functools.partial(option_default, TrainConfig)
    parser.add_argument("--data-root", default=default("data_root"),
                        help="folder with the dataset files (default: bundled / cache)")
    parser.add_argument("--tox21-csv", metavar="FILE", default=default("tox21_csv"),
                        help="TOX21 from your own CSV in the MoleculeNet layout (.csv or .csv.gz: smiles and the "
                             "12 task columns); default: DATA_ROOT/tox21.csv when present, else the bundled file")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--seed", type=seed_int, default=default("seed"))
    parser.add_argument("--max-graphs", type=positive_int, default=default("max_graphs"),
                        help="use the first N graphs of each split")
    parser.add_argument("--backend", default=default("backend"), choices=backend_choices())
    parser.add_argument("--sampled", action="store_true",
                        help="ogbn-proteins: the paper's neighbour-sampled training (a study's detection samples "
                             "seed subgraphs either way; evaluation stays full-batch)")
    parser.add_argument("--fanouts", type=positive_int_list, default=default("fanouts"),
                        help="ogbn-proteins: neighbours drawn per hop (--sampled training, the seed-subgraph detection)")
    parser.add_argument("--max-time", type=positive_float, default=default("max_time"),
                        help="stop each training run after this many MINUTES of epochs (checked after each epoch, "
                             "as the paper's code)")


def add_variants(parser, default=None) -> None:
    """--architecture, --ebt-compat and --mitigation, their choices read from magnn.models.presets and
    magnn.core.mitigation."""
    from ..core.mitigation import MITIGATIONS
    from ..models.presets import EBT_COMPAT_MODES, PROTEINS_ARCHITECTURES

    parser.add_argument("--architecture", choices=tuple(PROTEINS_ARCHITECTURES), default=default,
                        help=ARCHITECTURE_HELP)
    parser.add_argument("--ebt-compat", choices=EBT_COMPAT_MODES, default=default, help=EBT_COMPAT_HELP)
    parser.add_argument("--mitigation", choices=MITIGATIONS, default=default, help=MITIGATION_HELP)
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="start from the config a run recorded (its metrics.json / report.json): the same "
                             "settings, so the same numbers; options given beside it change them")
    parser.set_defaults(overrides={})  # model keywords a --config file records


# -- --config: a recorded run's settings as the defaults -------------------------------------------

def read_recorded_config(path) -> dict:
    """The config a run recorded: FILE's "config" entry (metrics.json, report.json) or FILE itself."""
    from ..core.errors import MissingFileError, UserError

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"--config: no file at {path}; pass a run's metrics.json (magnn train) or "
                               "report.json (magnn study)")
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"--config {path} is not readable JSON ({error}); pass a run's metrics.json or report.json") from None
    config = document.get("config", document) if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise UserError(f"--config {path} holds no config (a JSON object, or one under \"config\")")
    return config


def with_recorded_defaults(parser, argv, args):
    """Parse again with the recorded config of `--config FILE` as the subcommand's defaults."""
    from ..core.errors import UserError

    raw = read_recorded_config(args.config)
    try:
        defaults = args.recorded(raw)
    except TypeError as error:  # settings this magnn does not know, or a study config given to train
        raise UserError(f"--config {args.config}: not a magnn {args.command} config ({error})") from None
    parser.commands.choices[args.command].set_defaults(**defaults)
    return parser.parse_args(argv)




# -- what the user trusts: --allow-pickle, --trust-checkpoint -------------------------------------

TRUST_OPTIONS = {"allow_pickle": "MAGNN_ALLOW_PICKLE", "trust_checkpoint": "MAGNN_TRUST_CHECKPOINT"}


def add_trust_options(parser) -> None:
    """--allow-pickle and --trust-checkpoint: opt-ins to unpickling files magnn otherwise refuses."""
    parser.add_argument("--allow-pickle", action="store_true",
                        help="trust every pickled file this run reads: dataset files and caches (ZINC raw "
                             "*.pickle, processed caches) and checkpoints (same as MAGNN_ALLOW_PICKLE=1). "
                             "Unpickling runs whatever code a file names: only for files you trust")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load checkpoints that need full unpickling (written by an older magnn; same as "
                             "MAGNN_TRUST_CHECKPOINT=1): only for files you trust")


@contextlib.contextmanager
def trusting(args):
    """The environment variables of the trust options given, set for this command only."""
    names = [env for option, env in TRUST_OPTIONS.items() if getattr(args, option, False)]
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: "1" for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
