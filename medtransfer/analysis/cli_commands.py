"""`medtransfer analyze cka` and `medtransfer analyze transferability`: argument parsing and printing only."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _sizes(text: str | None) -> list[int] | None:
    return [int(v) for v in text.replace("x", ",").split(",")] if text else None


def _cka(args: argparse.Namespace) -> int:
    from medtransfer.analysis.compare import (
        CompareError,
        image_batches,
        layer_cka,
        load_network,
        random_network,
        stride_of,
        write_cka_report,
    )
    from medtransfer.data import open_manifest

    try:
        net_a = load_network(args.run_a, checkpoint=args.checkpoint_a)
        net_b = random_network(net_a, args.random_seed) if args.run_b == "random" else load_network(
            args.run_b, checkpoint=args.checkpoint_b)
        manifest = open_manifest(args.data, args.data_root, dimensions=net_a.spatial_dims)
        divisor = stride_of(net_a)
        size = None if args.mode == "pool" else (_sizes(args.spatial_size) or net_a.config.get("patch_size"))
        if args.mode == "flatten" and not size:
            raise CompareError("--spatial-size is needed for a checkpoint file without a run folder (flatten mode)")
        batches = image_batches(manifest, args.split, spatial_size=size, batch_size=args.batch_size,
                                max_images=args.max_images, seed=0 if args.max_images else None, divisor=divisor)
        rows = layer_cka(net_a, net_b, batches, args.layers, args.mode, with_rsa=not args.no_rsa)
    except (CompareError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    name = f"{net_a.label} vs {net_b.label}"
    out = Path(args.output or "cka_report")
    paths = write_cka_report({name: rows}, out, title=f"{name} on {manifest.name}/{args.split} ({args.mode})", meta={
        "a": net_a.describe(), "b": net_b.describe(), "data": manifest.name, "split": args.split,
        "spatial_size": size, "mode": args.mode,
    })
    for loaded in (net_a, net_b):
        for note in loaded.notes:
            print(f"note ({loaded.label}): {note}")
    print(f"{'layer':<16} {'part':<8} {'CKA':>8} {'RSA':>8}")
    for row in rows:
        rsa = "" if row["rsa"] is None else f"{row['rsa']:.4f}"
        cka = "nan" if row["cka"] is None else f"{row['cka']:.4f}"
        print(f"{row['layer']:<16} {row['part']:<8} {cka:>8} {rsa:>8}")
    print(f"{rows[0]['n_examples']} images, {rows[0]['n_batches']} batches ({rows[0]['dropped_examples']} dropped); "
          f"wrote {paths['csv']}, {paths['json']}, {paths['png']}")
    return 0


def _transferability(args: argparse.Namespace) -> int:
    from medtransfer.analysis.checkpoint_scores import score_checkpoints, spearman_with_dice

    try:
        result = score_checkpoints(args.pretrain_run, args.data, split=args.split, n_images=args.n_images or None,
                                   spatial_size=_sizes(args.spatial_size), seed=args.seed, pool=args.pool,
                                   data_root=args.data_root)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"target {result['target']}/{result['split']}: {result['n_images']} images, level {result['level']}, "
          f"pool={result['pool']} (robustness: lower is better; LogME: higher is better)")
    print(f"{'epoch':>6} {'robustness':>11} {'LogME':>10}  checkpoint")
    for row in result["checkpoints"]:
        logme = "" if row["logme"] is None else f"{row['logme']:.4f}"
        print(f"{row['epoch']:>6} {row['robustness']:>11.4f} {logme:>10}  {row['path']}")
    if args.dice:
        dice = {int(k): float(v) for k, v in json.loads(Path(args.dice).read_text()).items()}
        for key in ("robustness", "logme"):
            corr = spearman_with_dice(result, dice, key)
            print(f"Spearman({key}, Dice) = {corr['rho']} (p = {corr['p_value']}, n = {corr['n']})")
    print(f"wrote {Path(args.pretrain_run) / 'transferability.json'}")
    return 0


def register(subparsers) -> None:
    """Add `analyze cka` and `analyze transferability` to the `medtransfer` command."""
    analyze = subparsers.add_parser("analyze", help="representation similarity and transferability")
    commands = analyze.add_subparsers(dest="analyze_command", required=True)

    cka = commands.add_parser("cka", help="layer-wise CKA/RSA between two networks on the same images")
    cka.add_argument("run_a", help="run folder or checkpoint file")
    cka.add_argument("run_b", help="run folder, checkpoint file, or 'random' (same architecture, random init)")
    cka.add_argument("--data", required=True, help="manifest name or path whose images both networks see")
    cka.add_argument("--data-root", help="folder the manifest's paths are relative to (or MEDTRANSFER_DATA)")
    cka.add_argument("--split", default="test", help="manifest split whose images are compared (default: test)")
    cka.add_argument("--layers", choices=("encoder", "decoder", "all"), default="all",
                     help="which levels are compared (default: all)")
    cka.add_argument("--mode", choices=("flatten", "pool"), default="flatten",
                     help="flatten: whole maps, images padded/cropped to one size (default); pool: global average")
    cka.add_argument("--spatial-size", help="e.g. 40,56,40 (flatten mode; default: run A's patch_size)")
    cka.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    cka.add_argument("--max-images", type=int, help="a seeded sample of this many images")
    cka.add_argument("--checkpoint-a", help="weights inside RUN_A to use (e.g. checkpoints/epoch_0005.pt)")
    cka.add_argument("--checkpoint-b", help="weights inside RUN_B to use")
    cka.add_argument("--random-seed", type=int, default=12345, help="initialisation seed of the 'random' network")
    cka.add_argument("--no-rsa", action="store_true", help="skip the RSA table (CKA only)")
    cka.add_argument("--output", "-o", help="report folder (default: ./cka_report)")
    cka.set_defaults(handler=_cka)

    transfer = commands.add_parser("transferability", help="score every checkpoint of a pretraining run on a target")
    transfer.add_argument("pretrain_run", help="pretraining run folder (its checkpoints/epoch_*.pt are scored)")
    transfer.add_argument("--data", required=True, help="target manifest name or path")
    transfer.add_argument("--data-root", help="folder the manifest's paths are relative to (or MEDTRANSFER_DATA)")
    transfer.add_argument("--split", default="validation", help="manifest split the scores see (default: validation)")
    transfer.add_argument("--n-images", type=int, default=16, help="seeded sample size (0: all)")
    transfer.add_argument("--spatial-size", help="default: the run's patch_size")
    transfer.add_argument("--seed", type=int, default=0, help="seeds the image sample, augmentations and negatives")
    transfer.add_argument("--pool", action="store_true", help="pooled features (Hidy et al.); default flattened")
    transfer.add_argument("--dice", help="JSON {epoch: fine-tuned Dice}: also print Spearman(score, Dice)")
    transfer.set_defaults(handler=_transferability)
