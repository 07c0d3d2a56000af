"""`medtransfer segment` and `medtransfer export`: argument parsing and printing only."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _is_model(path: str) -> bool:
    """A bundle folder / zip, a run folder or its model.pt (what `segment` takes as MODEL, before the inputs)."""
    item = Path(path)
    return (
        (item.is_dir() and ((item / "configs" / "metadata.json").is_file() or (item / "run.json").is_file()))
        or (item.is_file() and item.suffix in (".zip", ".pt"))
    )


def split_models(positionals: list[str]) -> tuple[list[str], list[str]]:
    """MODEL [MODEL ...] INPUT [INPUT ...]: the leading models (at least one), then the inputs (at least one)."""
    count = 1
    while count < len(positionals) - 1 and _is_model(positionals[count]):
        count += 1
    return positionals[:count], positionals[count:]


def _device(requested: str) -> str:
    from medtransfer.inference.segment import resolve_device

    device = resolve_device(requested)
    print(f"device: {device}" + (" (auto: CUDA, then MPS, then CPU)" if requested == "auto" else ""))
    return str(device)


def _segment(args: argparse.Namespace) -> int:
    from medtransfer.inference.bundle_loading import BundleError
    from medtransfer.inference.segment import SUMMARY_NAME, SegmentError, segment
    from medtransfer.training.precision import PrecisionError

    models, inputs = split_models([args.model, *args.inputs])
    if not inputs:
        print("error: give at least one INPUT after the model(s)", file=sys.stderr)
        return 2
    try:
        device = _device(args.device)
        if len(models) > 1:
            print(f"ensemble of {len(models)} models: {', '.join(models)}")
        results = segment(
            models if len(models) > 1 else models[0],
            inputs,
            args.output,
            series_uid=args.series_uid,
            overwrite=args.overwrite,
            trusted=args.trusted,
            allow_uneven=args.allow_uneven,
            device=device,
            progress=not args.no_progress,
            precision=args.precision,
            tta=args.tta,
            postprocess=not args.no_postprocess,
            segment_code=args.segment_code,
            segment_category=args.segment_category,
            preview=args.preview,
        )
    except (BundleError, SegmentError, PrecisionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    width = max([len(r.scan) for r in results] + [4])
    print(f"{'scan':<{width}}  {'status':<6}  {'volume_ml':>10}  {'voxels':>10}  {'seconds':>8}")
    for result in results:
        volume = "" if result.volume_ml is None else f"{result.volume_ml:.2f}"
        voxels = "" if result.n_voxels is None else str(result.n_voxels)
        seconds = "" if result.seconds is None else f"{result.seconds:.1f}"
        print(f"{result.scan:<{width}}  {result.status:<6}  {volume:>10}  {voxels:>10}  {seconds:>8}")
        if result.error:
            print(f"    error: {result.error}")
        for warning in result.warnings:
            print(f"    warning: {warning}")
    failed = sum(not r.ok for r in results)
    print(f"{len(results) - failed} of {len(results)} scans segmented; summary: {args.output}/{SUMMARY_NAME}")
    if args.preview:
        print(f"previews: {args.output}/index.html")
    return 1 if failed else 0


def _export(args: argparse.Namespace) -> int:
    from medtransfer.inference.bundle_loading import UntrustedBundleError
    from medtransfer.inference.export import ExportError, export_bundle

    from medtransfer.inference.monailabel_app import MonaiLabelAppError, check_app_folder, write_monailabel_app

    runs = args.run_dir
    try:
        if args.monailabel_app:  # refused before anything is exported
            check_app_folder(args.monailabel_app, args.overwrite)
        folder = export_bundle(
            runs if len(runs) > 1 else runs[0],
            args.output,
            zip=args.zip,
            torchscript=args.torchscript,
            onnx=args.onnx,
            overwrite=args.overwrite,
            manifest=args.manifest,
            test_scan=args.test_scan,
            version=args.version,
        )
        app = None
        if args.monailabel_app:
            app = write_monailabel_app(folder, args.monailabel_app, name=args.model_name, overwrite=args.overwrite)
    except (ExportError, UntrustedBundleError, MonaiLabelAppError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    what = f"an ensemble of {len(runs)} runs ({', '.join(runs)})" if len(runs) > 1 else runs[0]
    print(f"exported {what} -> {folder}" + (f" and {folder}.zip" if args.zip else ""))
    if app is not None:
        print(f"MONAI Label app -> {app.folder} (model {app.name}); start it with:\n  {app.start_command}")
    return 0


def register(subparsers) -> None:
    """Add `segment` and `export` to the `medtransfer` command's subparsers."""
    seg = subparsers.add_parser(
        "segment", aliases=["predict"],  # `predict`: the name nnU-Net users type
        help="segment scans (NIfTI files, DICOM series folders) with a bundle or a finished run",
        description=(
            "Writes <scan>_seg.nii.gz (and <scan>_seg.dcm, a DICOM-SEG, for DICOM series) in each scan's own "
            "geometry, plus summary.csv (volume in mL per scan). Bundles are loaded safely: only the allow-listed "
            "network, medtransfer's standard preprocessing and a sliding-window inferer are built from literal "
            "settings, and the weights must match their sha256; --trusted evaluates the bundle's configs instead."
        ),
    )
    seg.add_argument("model", metavar="MODEL_OR_BUNDLE",
                     help="bundle folder or .zip, or a finished run folder; several leading models form an ensemble "
                          "(same architecture, probabilities averaged)")
    seg.add_argument("inputs", metavar="INPUT", nargs="+",
                     help="NIfTI file, folder of NIfTI files, or folder of DICOM series")
    seg.add_argument("--output", "-o", required=True, help="folder for the masks and summary.csv")
    seg.add_argument("--series-uid", help="SeriesInstanceUID to segment in a folder holding several series, or 'all'")
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    seg.add_argument("--trusted", action="store_true",
                     help="evaluate the bundle's configs (custom code, $ expressions): only for bundles you trust")
    seg.add_argument("--allow-uneven", action="store_true",
                     help="segment DICOM series with uneven spacing or missing slices (warn instead of refusing)")
    seg.add_argument("--device", default="auto",
                     help="auto (default: CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    seg.add_argument("--tta", action="store_true",
                     help="test-time augmentation: average probabilities over flips of every spatial axis")
    seg.add_argument("--no-postprocess", action="store_true",
                     help="skip the post-processing the model learned on its validation split")
    seg.add_argument("--segment-code", metavar="SCHEME:VALUE:MEANING",
                     help="DICOM-SEG segmented property type, e.g. SCT:10200004:Liver (default: the model's)")
    seg.add_argument("--segment-category", metavar="SCHEME:VALUE:MEANING",
                     help="DICOM-SEG property category (default: the model's, or SCT:123037004:Anatomical Structure)")
    seg.add_argument("--preview", action="store_true",
                     help="write previews/<scan>.png (mask outline over the image) and index.html")
    seg.add_argument("--no-progress", action="store_true", help="no progress bar")
    seg.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                     help="auto: bf16 autocast on CPUs with native bf16, CUDA AMP on GPUs, fp32 elsewhere")
    seg.set_defaults(handler=_segment)

    export = subparsers.add_parser(
        "export",
        help="export a finished run as a self-contained, verified MONAI bundle",
        description=(
            "Writes a bundle folder that runs with plain MONAI: configs/inference.json (MONAI classes, literal "
            "arguments, no paths of this machine), scripts/ (DICOM reader, checks), configs/metadata.json "
            "(data format, spacing, normalisation, versions, provenance, test metrics, sha256 of the weights), "
            "models/model.pt, docs/README.md (model card), LICENSE. The bundle must pass `medtransfer bundle "
            "verify` before it is written."
        ),
    )
    export.add_argument("run_dir", metavar="RUN_DIR", nargs="+",
                        help="output folder of a finished training run; several runs make an ensemble bundle "
                             "(same architecture family, channels, spacing, label meaning and patch size; softmax "
                             "probabilities averaged, as `segment RUN_A RUN_B` does)")
    export.add_argument("--output", "-o", required=True, help="bundle folder to create")
    export.add_argument("--zip", action="store_true", help="also write OUTPUT.zip (unzips into its folder)")
    export.add_argument("--torchscript", action="store_true", help="add models/model.ts (checked for the same mask)")
    export.add_argument("--onnx", action="store_true",
                        help="add models/model.onnx (needs: pip install onnx onnxscript onnxruntime)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder / zip")
    export.add_argument("--manifest", help="the run's data manifest, if it is not found by name")
    export.add_argument("--test-scan", help="scan to compare TorchScript/ONNX masks on (default: first test case)")
    export.add_argument("--version", default="0.1.0", help="bundle version (semver)")
    export.add_argument("--monailabel-app", metavar="APP_DIR",
                        help="also write a MONAI Label app folder serving the bundle (main.py, README for "
                             "clinicians; refused when APP_DIR is not empty, unless --overwrite)")
    export.add_argument("--model-name", help="the app's model name in MONAI Label and 3D Slicer (default: from "
                                             "the label, e.g. hippocampus_segmentation)")
    export.set_defaults(handler=_export)
