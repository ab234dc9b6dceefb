"""`magnn detect`: MA detection on a split from a saved checkpoint (detect.json + figures)."""
from __future__ import annotations

from pathlib import Path

from ..analysis.detect import detect

COMMAND = "detect"
HELP = "MA detection on a split from a saved checkpoint (report.json + figures)"


# -- CLI ------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    from ..core.errors import positive_float, positive_int

    parser.add_argument("--ckpt", required=True, help="a checkpoint written by magnn train (best.pt or last.pt)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--out", default=None, help="output folder (default: next to the checkpoint)")
    parser.add_argument("--max-batches", type=positive_int, default=None, help="first N batches only (>= 1)")
    parser.add_argument("--threshold", type=positive_float, default=1000.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-root", default=None,
                        help="dataset folder (default: the one the checkpoint was trained with)")


def main(args) -> int:
    from ..core.errors import UserError, check_device, input_folder, output_folder
    from ..train import load_checkpoint, prepare

    check_device(args.device)
    input_folder(args.data_root, "--data-root")
    checkpoint = load_checkpoint(args.ckpt, option="--ckpt")
    config = checkpoint.config
    if args.data_root is not None:
        config.data_root = args.data_root
    out = output_folder(Path(args.out) if args.out else checkpoint.path.parent / f"detect_{args.split}", "--out")
    splits, info, model = prepare(config)
    checkpoint.restore_model(model)
    if len(splits[args.split]) == 0:
        raise UserError(f"--split {args.split}: the {config.dataset} {args.split} split is empty; pick another split")
    report = detect(model, splits[args.split], device=args.device, threshold=args.threshold,
                    max_batches=args.max_batches)
    from ..analysis.figures import layer_cell, plot_layer_histograms, plot_sorted_ratios, report_json

    (out / "detect.json").write_text(report_json(report.to_dict()))

    plot_sorted_ratios({"trained": report}, out / "sorted_max_ratios.png", title=f"{config.model} on {config.dataset}")
    plot_layer_histograms(report, out / "neg_log10_ratio_hist.png")
    for layer in report.layers:
        print(f"{layer.name}: max ratio {layer_cell(layer.to_dict())}"
              + (f", gamma KS {layer.gamma.ks:.3f}" if layer.gamma else ""))
    print(f"wrote {out}")
    return 0

