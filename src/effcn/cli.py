"""The ``effcn`` command line: train, eval, ensemble, predict, export, datasets, models, visualize,
explore, runs, compare, sweep, import-keras, publish, bench.

Errors a user can cause (EffcnError) are printed as one sentence, without a traceback, and the
command exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import EffcnError, filesystem_error


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.epochs=10 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="effcn", description=__doc__.splitlines()[0])
    from . import __version__
    parser.add_argument("--version", action="version", version=f"effcn {__version__}")
    from .data.image_files import MAX_PIXELS
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("--config", help="YAML config (see configs/); defaults apply to missing keys")
    _add_set(p)
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run directory")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--data", metavar="DIR", help="train on your own images: a folder of class "
                   "sub-folders, or a .npz file (a config is chosen and printed)")
    p.add_argument("--image-size", type=int, help="with --data: the side images are resized to")
    p.add_argument("--channels", type=int, choices=[1, 3], help="with --data: 1 or 3")
    p.add_argument("--epochs", type=int, help="with --data: epochs (default 30)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint on the test (or val) split")
    p.add_argument("run", help="run directory (or a checkpoint .pt inside one)")
    p.add_argument("--checkpoint", default="best", help="best | last | path to a .pt file")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--no-affnist", action="store_true",
                   help="skip the affNIST test that 40x40 MNIST models get next to their test set")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "auto"],
                   help="precision of the forward: off = fp32 (default, as the summary's test), "
                        "bf16 autocast, or auto (as train.amp)")
    _add_set(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("ensemble", help="evaluate runs as an ensemble (mean scores, vote)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="two or more run directories")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--checkpoint", default="best", help="best | last (of every member)")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "auto"],
                   help="precision of the forward (default fp32)")
    p.add_argument("--out", metavar="FILE.json", help="also write the report here")
    _add_set(p)
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("predict", help="classify image files with a trained run")
    p.add_argument("run", help="run directory or checkpoint .pt")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...): any size, colour "
                   "or greyscale, light or dark background")
    p.add_argument("--checkpoint", default="best", help="best | last | path to a .pt file")
    p.add_argument("--preprocess", choices=("auto", "mnist", "resize", "none"), default="auto",
                   help="mnist: detect polarity, crop to the ink, fit into 20x20, centre by mass "
                   "in 28x28 (as MNIST was made); resize: only resize; none: the file must be "
                   "the model's size; auto (default): mnist for runs trained on digits, else "
                   "resize")
    p.add_argument("--no-preprocess", dest="preprocess", action="store_const", const="none",
                   help="same as --preprocess none: take each file exactly as the model sees it")
    p.add_argument("--invert", action="store_true",
                   help="dark ink on a light background (detected by --preprocess mnist; "
                   "needed with none and resize)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="refuse image files "
                   "declaring more pixels (checked before decoding; default: Pillow's limit)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a run's classifier (and decoder) as ONNX or "
                                      "TorchScript, checked against PyTorch")
    p.add_argument("run", help="run directory (or a checkpoint .pt inside one)")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    p.add_argument("--out", metavar="FILE", help="output file (default RUN/export/<checkpoint>"
                                                 ".onnx or .torchscript.pt)")
    p.add_argument("--checkpoint", default="best", help="best | last | path to a .pt file")
    p.add_argument("--decoder", action="store_true",
                   help="also export the decoder (capsules + labels -> reconstruction) into "
                        "FILE_decoder.onnx / .torchscript.pt")
    p.add_argument("--split", default="test", choices=["test", "val"],
                   help="images the graph is checked on (default test)")
    p.add_argument("--images", type=int, default=64, help="how many (default 64)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest max-abs difference to PyTorch accepted (default 1e-4)")
    _add_set(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("datasets", help="list known datasets, where they are looked for, found or not")
    p.add_argument("--root", help="also look under this folder (as data.root would)")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("sweep", help="grid/random search over config fields and seeds")
    p.add_argument("spec", help="sweep YAML file (format: effcn.tools.sweep, docs/training.md)")
    p.add_argument("--workers", type=int, help="parallel worker processes (overrides the file)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: "
                   "$OMP_NUM_THREADS when set, else the cores divided among the workers)")
    p.add_argument("--dry-run", action="store_true", help="list the runs without training")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("import-keras", help="import the authors' trained Keras .h5 weights")
    p.add_argument("h5", help="Keras weights file, e.g. efficient_capsnet_SMALLNORB.h5")
    p.add_argument("--preset", default="smallnorb", help="smallnorb (default) | mnist | multimnist")
    p.add_argument("--out", required=True, help="folder to write (config.yaml, checkpoints/best.pt)")
    p.set_defaults(func=cmd_import_keras)

    p = sub.add_parser("publish", help="write a run's weights as a Hugging Face Hub folder "
                                       "(model.safetensors, config.json, README.md model card)")
    p.add_argument("run", help="run directory (its best checkpoint), or an import-keras folder")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (empty or new)")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out folder")
    p.add_argument("--license", default="other", help="the card's licence id for the weights "
                   "(default: other; the data's licences are listed in the card)")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("models", help="list registered models with their parameter counts")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("visualize", help="write a run's figures (reconstructions, GIF, routing, "
                                         "perturbations, filters, curves) into RUN/figures")
    p.add_argument("run", help="run directory")
    p.add_argument("--epoch", type=int, help="draw from the checkpoint of this epoch (default: best)")
    p.add_argument("--what", default="recon,gif,routing,perturb,filters,curves",
                   help="comma-separated figure kinds (default: all)")
    p.add_argument("--images", type=int, default=2000,
                   help="validation images for the routing statistics (default 2000)")
    p.add_argument("--out", help="output folder (default RUN/figures)")
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("explore", help="write one self-contained HTML page to look inside a run: "
                                       "images, capsule lengths, routing, live decoding")
    p.add_argument("run", help="run directory (or a checkpoint .pt inside one)")
    p.add_argument("--out", metavar="FILE.html", help="where to write (default "
                                                     "RUN/figures/explorer.html)")
    p.add_argument("--images", type=int, default=64,
                   help="validation images to pick from (default 64)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.set_defaults(func=cmd_explore)

    p = sub.add_parser("runs", help="list the runs under a folder as a table")
    p.add_argument("dir", nargs="?", default="runs", help="folder holding runs (default runs/)")
    p.add_argument("--json", action="store_true", help="print one JSON object per run")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("compare", help="compare finished runs side by side in one table")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories created by effcn train")
    p.add_argument("--markdown", metavar="OUT.md", help="also write the table as Markdown here")
    p.add_argument("--device", help="where to time inference (default: each run's own device)")
    p.add_argument("--batch-size", type=int, default=100, help="inference batch (default 100)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds, median taken (default 5)")
    p.add_argument("--no-timing", action="store_true", help="skip the inference measurement")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("bench", help="training and evaluation images/s of a model on this machine")
    p.add_argument("--model", default="efficient_capsnet_mnist", help="a registered model")
    p.add_argument("--config", help="YAML config whose optimizer (optim.*) the step uses "
                                    "(default: the config defaults, the paper's Adam)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-batch-size", type=int, default=0, help="default: --batch-size")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                   help="bf16 autocast, as train.amp (auto: on CUDA and bf16-capable CPUs)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC layout (default on, as train.channels_last)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--compile-mode", default="default",
                   choices=["default", "reduce-overhead", "max-autotune"])
    p.add_argument("--cuda-graph", action="store_true",
                   help="the whole step as one CUDA graph (train.cuda_graph; CUDA only)")
    p.add_argument("--plain-primary", action="store_true",
                   help="primary capsules as a depthwise conv (not the product-and-sum)")
    p.add_argument("--augment", default="paper", help="paper | none | rotate+erase ...")
    p.add_argument("--steps", type=int, default=20, help="training batches per repeat")
    p.add_argument("--eval-images", type=int, default=2000, help="images per eval repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5, help="training batches before timing")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except EffcnError as e:  # Interrupted (Ctrl-C) exits 130, Preempted 143, the others 2
        print(f"effcn {args.command}: error: {e}", file=sys.stderr)
        return e.exit_status
    except OSError as e:  # a full disk, a read-only folder, ...: one sentence; others: a bug
        described = filesystem_error(e)
        if described is None:
            raise
        print(f"effcn {args.command}: error: {described}", file=sys.stderr)
        return described.exit_status
    except KeyboardInterrupt:
        print(f"effcn {args.command}: interrupted.", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------- commands
def cmd_train(args) -> int:
    from .training.trainer import Trainer
    config, run, name = _train_config(args)
    trainer = Trainer(config, run=run, resume=run is not None, config_name=name, quiet=args.quiet)
    summary = trainer.fit()
    if trainer.is_main:  # under torchrun: one line, not one per process
        print(json.dumps({k: summary[k] for k in ("run", "best_epoch", "best_val_acc",
                                                  "test_acc", "selection")}))
    return 0


def _train_config(args):
    """(config, run to resume or None, config name) of ``effcn train``: --resume, --data (a
    config chosen from your images, printed) or --config, each with --set applied."""
    from .training.config_io import apply_overrides, load_config
    from .training.resume import resumable_run
    if sum(map(bool, (args.resume, args.data, args.config))) > 1:
        raise EffcnError("--resume, --data and --config each choose the config; pass one of "
                         "them (use --set to change fields).")
    if not args.data and (args.image_size or args.channels or args.epochs):
        raise EffcnError("--image-size, --channels and --epochs go with --data; with a config "
                         "or --resume use --set (e.g. --set train.epochs=5).")
    if args.resume:
        run = resumable_run(args.resume)  # the one RunDir of this run
        return apply_overrides(run.load_config(), args.overrides), run, "run"
    if args.data:
        from .training.quickstart import config_for_data
        config, lines = config_for_data(args.data, args.image_size, args.channels, args.epochs,
                                        args.overrides)
        print("\n".join(lines), flush=True)
        return config, None, Path(args.data).stem
    name = Path(args.config).stem if args.config else "run"
    return load_config(args.config, args.overrides), None, name


def cmd_eval(args) -> int:
    from .training.evaluate import (evaluate_prepared, prepare_run_evaluation, save_report,
                                    side_by_side, write_eval_figures)
    prepared = prepare_run_evaluation(args.run, args.checkpoint, args.split, args.overrides)
    r = evaluate_prepared(prepared, amp=args.amp, affnist=not args.no_affnist)
    used = prepared.checkpoint if prepared.note else prepared.checkpoint.name  # from elsewhere
    print(f"{r['dataset']} {args.split}: {r['metric']} {r['acc']:.4f} on {r['evaluated_on']}, "
          f"loss {r['loss']:.4f} [{used}, epoch {r['epoch']}, "
          f"{r['precision']}]" + (f" -- {r['selection']}" if "selection" in r else ""))
    if "checkpoint_note" in r:
        print(f"note: {r['checkpoint_note']}")
    print("per class: " + "  ".join(f"{k}:{v:.4f}" for k, v in r["per_class_acc"].items()))
    if "side_by_side" in r:
        print(side_by_side(r["side_by_side"]))
    for path in write_eval_figures(prepared):
        print(f"figure: {path}")
    print(f"written: {save_report(prepared, r)}")
    return 0


def cmd_ensemble(args) -> int:
    from .io import write_json
    from .training.evaluate import evaluate_ensemble
    r = evaluate_ensemble(args.runs, args.split, args.checkpoint, args.amp,
                          overrides=args.overrides)
    for m in r["members"]:
        print(f"member {m['run']} (epoch {m['epoch']}): {r['metric']} {m['acc']:.4f}")
    print(f"ensemble of {len(r['members'])} on {r['images']} {r['dataset']} {args.split} items "
          f"({r['precision']}): mean scores {r['acc']:.4f}, majority vote {r['vote_acc']:.4f}")
    print(f"{'class':<10}{'mean':>8}{'vote':>8}")
    for c, v in r["per_class_acc"].items():
        print(f"{c:<10}{v:>8.4f}{r['vote_per_class_acc'].get(c, float('nan')):>8.4f}")
    if args.out:
        write_json(args.out, r)
        print(f"written: {args.out}")
    return 0


def cmd_predict(args) -> int:
    from .tools.predict import predict
    r = predict(args.run, args.images, args.checkpoint, args.preprocess,
                invert=True if args.invert else None, max_pixels=args.max_pixels)
    for p in r.predictions:
        if args.json:
            print(json.dumps({"image": p.image, "class": p.class_index, "name": p.class_name,
                              "lengths": [round(v, 4) for v in p.scores]}))
        else:
            print(f"{p.image}: class {p.class_name} ({r.score_name} "
                  f"{p.scores[p.class_index]:.3f})  {r.score_name}s: "
                  + " ".join(f"{v:.3f}" for v in p.scores))
    return 0


def _shapes(named: dict) -> str:
    """{name: shape} as "images (B, 1, 28, 28), ..." (a 1-tuple keeps its comma)."""
    return ", ".join(f"{k} ({', '.join(str(v) for v in s)}{',' if len(s) == 1 else ''})"
                     for k, s in named.items())


def cmd_export(args) -> int:
    from .tools.export import export_run
    r = export_run(args.run, args.format, args.out, args.checkpoint, args.decoder, args.split,
                   args.images, args.tolerance, args.overrides)
    print(f"{r.model_name}, epoch {r.epoch}, {r.weights} weights of {r.checkpoint}; "
          f"images: {r.scaling}")
    for g in r.graphs:
        print(f"written: {g.path}: {_shapes(g.inputs)} -> {_shapes(g.outputs)}")
        print(f"  checked with {g.runtime} on {g.checked_on} {r.split} images (one batch, and "
              f"the first alone): max abs difference {g.max_abs_diff:.2e} (tolerance "
              f"{r.tolerance:g})")
    return 0


def cmd_datasets(args) -> int:
    from .data import describe_datasets
    rows = describe_datasets(args.root)
    for r in rows:
        status = f"found in {r['found']}" if r["found"] else "not found"
        print(f"{r['name']:<14} {status}")
        print(f"{'':<14} {r['description']}")
        print(f"{'':<14} looked in: {', '.join(str(d) for d in r['searched'])}")
    return 0


def cmd_sweep(args) -> int:
    from .tools.sweep import run_sweep
    results, failed = run_sweep(args.spec, workers=args.workers, dry_run=args.dry_run,
                                threads=args.threads)
    if not args.dry_run:
        print(f"written: {results}, {results.with_suffix('.csv')}, {results.with_suffix('.png')}")
    if failed:
        print(f"effcn: {len(failed)} run(s) of the sweep failed ({', '.join(failed)}); read the "
              f"reason above, fix it and run the sweep again to retry them.", file=sys.stderr)
        return 1
    return 0


def cmd_import_keras(args) -> int:
    from .models.keras_import import import_keras_weights
    from .tools.import_keras import write_imported_run
    from .training.rundir import RunDir
    out = Path(args.out)
    if RunDir(out).best.exists():
        raise EffcnError(f"{out} already holds a checkpoint; choose another --out folder.")
    model, mapping = import_keras_weights(args.h5, args.preset)
    for target, name in mapping.items():
        print(f"{name:<40} -> {target} {tuple(model.state_dict()[target].shape)}")
    ckpt = write_imported_run(model, args.preset, out, args.h5)
    print(f"mapped all {len(mapping)} tensors of {args.h5} into {model.model_name}; "
          f"written: {ckpt}")
    return 0


def cmd_publish(args) -> int:
    from .tools.publish import publish_run
    r = publish_run(args.run, args.out, args.force, args.license)
    for path in r.files:
        print(f"written: {path}")
    figure = "no test figure (see the card)" if r.test_acc is None else f"test {r.test_acc:.4f}"
    print(f"{r.folder}: {figure}; check it with: effcn eval {r.folder}")
    return 0


def cmd_models(args) -> int:
    from .models import create_model, describe_model, list_models
    from .models import count_parameters
    print(f"{'model':<32} {'params':>10} {'w/o decoder':>12}  description")
    for name in list_models():
        m = create_model(name)
        print(f"{name:<32} {count_parameters(m):>10,} "
              f"{count_parameters(m, include_decoder=False):>12,}  {describe_model(name)}")
    return 0


def cmd_visualize(args) -> int:
    from .tools.visualize import parse_kinds, visualize_run
    for path in visualize_run(args.run, parse_kinds(args.what), epoch=args.epoch,
                              n_images=args.images, out_dir=args.out):
        print(f"written: {path}")
    return 0


def cmd_explore(args) -> int:
    from .tools.explore import explore_run
    path = explore_run(args.run, out=args.out, n_images=args.images, checkpoint=args.checkpoint)
    print(f"written: {path} ({path.stat().st_size / 1e6:.1f} MB); open it in a browser")
    return 0


def cmd_runs(args) -> int:
    from .tools.runs import format_table, list_runs
    rows = list_runs(args.dir)
    if args.json:
        for r in rows:
            print(json.dumps(r))
    elif not rows:
        print(f"no runs under {args.dir}")
    else:
        print(format_table(rows))
    return 0


def cmd_compare(args) -> int:
    from .io import atomic_write_text
    from .tools.compare import compare_runs, format_table
    rows, note = compare_runs(args.runs, args.device, not args.no_timing, args.batch_size,
                              args.repeats)
    print(format_table(rows))
    print(note)
    if args.markdown:
        atomic_write_text(args.markdown, format_table(rows, markdown=True) + "\n\n" + note + "\n")
        print(f"written: {args.markdown}")
    return 0


def cmd_bench(args) -> int:
    from .tools.bench import BenchSettings, format_report, run_bench
    result = run_bench(BenchSettings(
        model=args.model, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
        device=args.device, amp=args.amp, channels_last=args.channels_last,
        compile=args.compile, compile_mode=args.compile_mode,
        product_primary=not args.plain_primary, augment=args.augment, config=args.config,
        steps=args.steps, eval_images=args.eval_images, repeats=args.repeats,
        warmup=max(args.warmup, 0), threads=args.threads, cuda_graph=args.cuda_graph))
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
