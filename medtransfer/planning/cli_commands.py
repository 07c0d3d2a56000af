"""`medtransfer plan MANIFEST --data-root ROOT`: fingerprint the training split and write plan.json."""

from __future__ import annotations

import argparse
from pathlib import Path


def _plan(args: argparse.Namespace) -> int:
    from medtransfer.atomic import save_json
    from medtransfer.data import open_manifest
    from medtransfer.planning import make_plan

    manifest = open_manifest(args.manifest, args.data_root)
    output = Path(args.output or "plan.json")
    if output.exists() and not args.force:
        print(f"error: {output} exists; pass --force to replace it")
        return 2
    content = make_plan(manifest, minutes=args.minutes, measure=args.measure, device=args.device,
                        workers=args.workers)
    save_json(output, content)
    print(format_plan(content))
    print(f"wrote {output}; train with it: medtransfer train --plan {output} --data_manifest {args.manifest} ...")
    return 0


def format_plan(content: dict) -> str:
    """The plan as a person reads it: the fingerprint's key numbers, then each planned key."""
    data, plan = content["fingerprint"], content["plan"]
    lines = [
        f"plan for {content['data_manifest']} ({content['dimensions']}D, {data['channels']} channel(s), "
        f"{data['n_cases']} training cases; fingerprint by {data['analyser']})",
        f"  median shape {data['shape']['median']} at spacing {data['spacing']['median']}; foreground "
        f"{data['foreground_share']['median']:.2%} of an image (median), median object {data['foreground_object']['median']}",
        f"  target spacing {plan['target_spacing'] or 'native'}; patch {plan['patch_size']}; {plan['pools']} pools; "
        f"filters {plan['filters']}",
        f"  batch {plan['batch_size']} image(s) x {plan['num_samples']} patch(es); step {plan['step_seconds']} s "
        f"({plan['step_seconds_source']})",
        f"  budget {plan['minutes']} min: {plan['max_epochs']} epochs x {plan['iterations_per_epoch']} iterations "
        f"= {plan['iterations']}; early stop after epoch {plan['early_stop_min_epochs']}, patience "
        f"{plan['early_stop_patience']} validations on the {plan['early_stop_smoothing']}-validation mean",
    ]
    return "\n".join(lines)


def register(commands) -> None:
    plan = commands.add_parser("plan", help="fingerprint a manifest's training split and write plan.json",
                               description=__doc__)
    plan.add_argument("manifest", help="manifest name (data_manifests/) or path")
    plan.add_argument("--data-root", help="folder the manifest's paths are relative to (or MEDTRANSFER_DATA)")
    plan.add_argument("--output", "-o", help="plan file to write (default: plan.json)")
    plan.add_argument("--minutes", type=float, help="wall-time budget of one run (default: 20 in 2D, 25 in 3D)")
    plan.add_argument("--measure", action="store_true",
                      help="time a few training steps of the planned network here instead of the recorded constants")
    plan.add_argument("--device", default="cpu", help="cpu or cuda: the device the plan is sized for")
    plan.add_argument("--workers", type=int, default=0, help="data loader workers of the fingerprint")
    plan.add_argument("--force", action="store_true", help="replace an existing plan file")
    plan.set_defaults(handler=_plan)
