"""The `medtransfer` command. Thin: parses arguments and calls the modules that do the work."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _data_manifest(args: argparse.Namespace) -> int:
    from medtransfer.data.manifest_builder import build_manifest

    output = Path(args.output or f"{Path(args.folder).name}.json")
    if output.exists() and not args.force:
        print(f"error: {output} exists; pass --force to replace it", file=sys.stderr)
        return 2
    try:  # "1:1,2:1": integer label values onto 0/1
        label_map = {int(k): int(v) for k, v in (pair.split(":") for pair in args.label_map.split(","))} \
            if args.label_map else None
    except ValueError:
        print(f"error: --label-map {args.label_map!r}: give VALUE:0|1 pairs, e.g. 1:1,2:1", file=sys.stderr)
        return 2
    content = build_manifest(
        args.folder,
        name=args.name,
        image_dir=args.image_dir,
        label_dir=None if args.no_labels else args.label_dir,
        label_map=label_map,
        test_fraction=args.test_fraction,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        ordered=args.ordered,
        near_duplicates=not args.no_near_duplicates,
    )
    from medtransfer.atomic import save_json

    save_json(output, content)
    sizes = {split: len(content[split]) for split in ("training", "validation", "test")}
    print(f"wrote {output}: {content['dimensions']}D, {sizes}; paths are relative to {Path(args.folder).resolve()}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from medtransfer.data import open_manifest
    from medtransfer.data.case_check import check_cases

    manifest = open_manifest(args.manifest, args.data_root)
    failures = 0
    total = 0
    for split, case_id, error in check_cases(manifest):
        total += 1
        if error:
            failures += 1
            print(f"FAIL {split}/{case_id}: {error}")
    print(f"{manifest.name}: {total - failures} of {total} cases OK ({manifest.data_root})")
    if failures:  # the near-duplicate check reads every image: fix the cases above first
        print(f"{manifest.name}: near-duplicate check skipped until every case loads")
        return 1
    from medtransfer.data.case_check import cross_split_duplicates

    leaking = cross_split_duplicates(manifest)
    for group in leaking:
        print("LEAK near-duplicate group across splits: " + "; ".join(f"{s}: {', '.join(ids)}" for s, ids in group.items()))
    print(f"{manifest.name}: {len(leaking)} duplicate group(s) cross splits")
    return 1 if failures or leaking else 0


def _bundle_verify(args: argparse.Namespace) -> int:
    from medtransfer.inference.bundle_verify import verify_bundle

    report = verify_bundle(args.bundle, schema=args.schema)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


def _data_slices(args: argparse.Namespace) -> int:
    from medtransfer.data import open_manifest
    from medtransfer.data.slices import slice_manifest

    manifest = open_manifest(args.manifest, data_root=args.data_root)
    path = slice_manifest(manifest, args.out, axis=args.axis, keep_empty=args.keep_empty, name=args.name)
    content = json.loads(path.read_text())
    sizes = {split: len(content[split]) for split in ("training", "validation", "test")}
    print(f"wrote {path}: 2D slices {sizes}; use it with --data-root {Path(args.out).resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from medtransfer import __version__

    parser = argparse.ArgumentParser(prog="medtransfer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"medtransfer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="data manifests").add_subparsers(dest="data_command", required=True)
    manifest = data.add_parser("manifest", help="build a manifest for images/ + labels/ or an nnU-Net raw folder")
    manifest.add_argument("folder", help="data folder with images/ and labels/ (or an nnU-Net raw data set)")
    manifest.add_argument("--output", "-o", help="manifest file to write (default: <folder name>.json)")
    manifest.add_argument("--name", help="manifest name (default: the folder name)")
    manifest.add_argument("--image-dir", default="images", help="image subfolder (default: images)")
    manifest.add_argument("--label-dir", default="labels", help="label subfolder (default: labels)")
    manifest.add_argument("--no-labels", action="store_true", help="images only (for self-supervised pretraining)")
    manifest.add_argument("--label-map", help="map label values onto {0,1}, e.g. 1:1,2:1")
    manifest.add_argument("--test-fraction", type=float, default=0.2, help="share of cases in the test split (default: 0.2)")
    manifest.add_argument("--validation-fraction", type=float, default=0.1,
                          help="share of cases in the validation split (default: 0.1)")
    manifest.add_argument("--seed", type=int, default=0, help="seed of the split and of the nested fractions")
    manifest.add_argument("--ordered", action="store_true", help="split in file order (serial sections)")
    manifest.add_argument("--force", action="store_true", help="replace an existing manifest file")
    manifest.add_argument("--no-near-duplicates", action="store_true",
                          help="skip the near-duplicate search (every image is read once; slow for large 3D sets)")
    manifest.set_defaults(handler=_data_manifest)
    check = data.add_parser("check", help="load and validate every case of a manifest")
    check.add_argument("manifest", help="manifest name (data_manifests/) or path")
    check.add_argument("--data-root", help="folder the manifest's paths are relative to (or MEDTRANSFER_DATA)")
    check.set_defaults(handler=_data_check)
    slices = data.add_parser("slices", help="a 2D slice data set + manifest from a 3D manifest (splits and "
                                            "fractions kept per volume)")
    slices.add_argument("manifest", help="3D manifest name (data_manifests/) or path")
    slices.add_argument("--data-root", help="folder the 3D manifest's paths are relative to")
    slices.add_argument("--out", required=True, help="folder for images/, labels/ and the 2D manifest")
    slices.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="0 sagittal, 1 coronal, 2 axial (RAS)")
    slices.add_argument("--keep-empty", action="store_true", help="keep slices without foreground")
    slices.add_argument("--name", help="manifest name (default: <manifest>_2d_<axis name>)")
    slices.set_defaults(handler=_data_slices)

    bundle = commands.add_parser("bundle", help="MONAI bundles").add_subparsers(dest="bundle_command", required=True)
    verify = bundle.add_parser("verify", help="metadata schema (offline) and network input/output checks")
    verify.add_argument("bundle", help="bundle folder")
    verify.add_argument("--schema", help="MONAI metadata schema JSON file (default: the shipped copy of MONAI's "
                                         "published meta_schema_20240725.json)")
    verify.set_defaults(handler=_bundle_verify)

    from medtransfer.analysis.cli_commands import register as register_analyze
    from medtransfer.evaluation.cli_commands import register as register_stats
    from medtransfer.inference.cli_commands import register as register_inference
    from medtransfer.planning.cli_commands import register as register_plan
    from medtransfer.study.cli_commands import register as register_study
    from medtransfer.training.cli_commands import register as register_train
    from medtransfer.transfer.cli_commands import register as register_transfer

    register_inference(commands)
    register_study(commands)
    register_analyze(commands)
    register_stats(commands)
    register_transfer(commands)
    register_train(commands)
    register_plan(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Bad input ends in one line naming the file and the problem; `--debug` (anywhere on the line) or
    MEDTRANSFER_DEBUG=1 shows the full traceback instead."""
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MEDTRANSFER_DEBUG", "") not in ("", "0")
    argv = [item for item in argv if item != "--debug"]
    from medtransfer.data.paths import ALLOW_FLAG, allow_outside_root

    outside_root = ALLOW_FLAG in argv  # like --debug, anywhere on the line (train hands the rest to MONAI)
    argv = [item for item in argv if item != ALLOW_FLAG]
    parser = build_parser()
    parser.add_argument("--debug", action="store_true", help="full Python tracebacks instead of one-line errors "
                                                             "(also MEDTRANSFER_DEBUG=1)")
    parser.add_argument(ALLOW_FLAG, action="store_true",
                        help="let manifest, scan and study paths resolve outside their data root (symlinks "
                             "included); printed, and recorded in every run.json (also MEDTRANSFER_ALLOW_OUTSIDE_ROOT=1)")
    args, extra = parser.parse_known_args(argv)
    if extra and not hasattr(args, "overrides"):  # only a pass-through command (train) hands unknown keys on
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*extra, *args.overrides]
    if outside_root:
        allow_outside_root()
    from medtransfer.errors import MedtransferError

    try:
        return args.handler(args)
    except MedtransferError as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # unreadable input, full or read-only disk: the path and the reason
        if debug:
            raise
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except Exception as error:  # a case no check anticipated: still one line, the traceback on request
        if debug:
            raise
        print(f"error: {type(error).__name__}: {error} (rerun with --debug for the full traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
