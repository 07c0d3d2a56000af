"""`plan.json`: a data set's fingerprint, the plan made from it, and the bundle keys a training takes from it.

A plan is made once per data set from the full training split (never per fraction: every fraction of a study
then trains the same network on the same schedule, and only the data differ). Training and studies take the
plan's `bundle_keys` as their defaults; a key given on the command line (or in a study's settings) wins, and
the run prints it once with both values.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import re
import time
from pathlib import Path

from medtransfer.planning.fingerprint import PlanError, fingerprint
from medtransfer.planning.rules import CONSTANTS_MEASURED_WITH, RULES, STEP_OVERHEAD, plan_budget, plan_geometry

PLAN_FORMAT = "medtransfer-plan/1"
# The bundle keys a plan sets, in the order a run prints them.
PLANNED_KEYS = ("patch_size", "filters", "batch_size", "num_samples", "max_epochs", "iterations_per_epoch",
                "val_interval", "augmentation", "early_stop_patience", "early_stop_min_epochs",
                "early_stop_smoothing", "early_stop_min_delta")


def measure_step_seconds(dimensions: int, channels: int, patch_size: list[int], filters: list[int],
                         patches: int, steps: int = 3) -> float:
    """Seconds of one training step (forward, Dice-CE, backward, Adam) of the planned network on this machine, in
    the precision `auto` picks; random input, the median of `steps` after one warm-up step."""
    import statistics

    import torch
    from monai.losses import DiceCELoss

    from medtransfer.networks.unets import build_dynunet
    from medtransfer.training.precision import resolve_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision("auto", device)
    network = build_dynunet(dimensions, channels, 2, filters, init_seed=0).to(device)
    optimiser = torch.optim.Adam(network.parameters(), 1e-3)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand((patches, channels, *patch_size), generator=generator).to(device)
    label = (torch.rand((patches, 1, *patch_size), generator=generator) > 0.9).float().to(device)
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        optimiser.zero_grad()
        with precision.autocast():
            output = network(image)
        loss(output.float(), label).backward()
        optimiser.step()
        times.append(time.perf_counter() - started)
    return float(statistics.median(times[1:]))


def constants_do_not_apply(device: str, precision=None) -> str | None:
    """Why the recorded step constants (rules.CONSTANTS_MEASURED_WITH) do not describe `device` on this machine,
    or None where they do. `precision`: the PrecisionChoice `auto` makes here (default: detected)."""
    from medtransfer.training.precision import resolve_precision

    choice = precision or resolve_precision("auto", device, announce=False)
    if (choice.device_type, choice.name) == CONSTANTS_MEASURED_WITH:
        return None
    return (f"the step constants were measured on a CPU training in bf16; this {choice.device_type} trains in "
            f"{choice.name} ({choice.reason})")


NO_GPU_HERE = "modelled from the measured CPU constants (no GPU here to time the step)"


def _why_time_it(name: str, device: str, measure: bool) -> str | None:
    """Why make_plan times the step although --measure was not given (constants_do_not_apply), NO_GPU_HERE for a
    GPU plan made on a machine without one (it keeps the constants: nothing here can time that GPU), else None."""
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        if measure:
            raise PlanError(f"{name}: plan --measure --device {device} times the step on that device, and this "
                            "machine has no CUDA GPU: measure on the GPU machine, or plan without --measure")
        return NO_GPU_HERE
    return None if measure else constants_do_not_apply(device)


def _busy(device: str) -> str | None:
    """Why a step timed now would be slow: other processes on the CPU (1-minute load average at or above half its
    cores; a training of one's own uses them all), else None. A GPU's step is not judged by the CPU's load."""
    if str(device).startswith("cuda"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    return f"the CPU was busy (load average {load:.1f} on {cores} cores)" if load >= 0.5 * cores else None


def make_plan(manifest, minutes: float | None = None, measure: bool = False, device: str = "cpu",
              workers: int = 0) -> dict:
    """Fingerprint `manifest`'s training split and plan a training for it (see medtransfer.planning.rules)."""
    started = time.perf_counter()
    data = fingerprint(manifest, 1.0, workers)
    geometry = plan_geometry(data, manifest.target_spacing, device)
    n_validation = len(manifest.case_ids("validation"))
    budget = plan_budget(data, geometry, n_validation, minutes)
    unlike = _why_time_it(manifest.name, device, measure)
    if unlike == NO_GPU_HERE:
        budget["step_seconds_source"] = NO_GPU_HERE
    elif measure or unlike:
        if unlike:
            print(f"medtransfer plan: {unlike}: timing the planned network on this machine (as plan --measure)",
                  flush=True)
        busy = _busy(device)
        step = measure_step_seconds(data["dimensions"], data["channels"], geometry["patch_size"], geometry["filters"],
                                    budget["patches_per_step"])
        step *= STEP_OVERHEAD[data["dimensions"]]
        budget = plan_budget(data, geometry, n_validation, minutes, step_seconds=step)
        if unlike:
            budget["step_seconds_source"] = f"measured ({unlike})"
        if busy:
            print(f"medtransfer plan: warning: {busy}; the measured step is an upper bound and the plan buys fewer "
                  "iterations than this machine gives when quiet: make the plan again on quiet cores", flush=True)
            budget["step_seconds_source"] += f"; {busy}"
    bundle_keys = {
        "patch_size": geometry["patch_size"], "filters": geometry["filters"],
        "batch_size": budget["batch_size"], "num_samples": budget["num_samples"],
        "max_epochs": budget["max_epochs"], "iterations_per_epoch": budget["iterations_per_epoch"],
        "val_interval": 1, "augmentation": "nnunet",
        "early_stop_patience": budget["early_stop_patience"], "early_stop_min_epochs": budget["early_stop_min_epochs"],
        "early_stop_smoothing": budget["early_stop_smoothing"], "early_stop_min_delta": budget["early_stop_min_delta"],
    }
    if data["cases_without_foreground"]:
        print(f"medtransfer plan: {len(data['cases_without_foreground'])} training case(s) without foreground, e.g. "
               f"{data['cases_without_foreground'][0]}")
    return {
        "format": PLAN_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "data_manifest": manifest.name,
        "dimensions": data["dimensions"],
        "channels": data["channels"],
        "fingerprint": data,
        "plan": {**geometry, **budget, "device": device},
        "bundle_keys": bundle_keys,
        "rules": RULES,
        "planning_seconds": round(time.perf_counter() - started, 1),
    }


def plan_digest(content: dict) -> str:
    """sha256 of what a run takes from the plan (its bundle keys), so a re-made plan with equal keys is equal."""
    return hashlib.sha256(json.dumps(content["bundle_keys"], sort_keys=True).encode()).hexdigest()


def load_plan(path: str | Path) -> dict:
    """Read and check a plan.json (PlanError naming the file and the problem)."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError(f"{path}: plan file not found; make one with `medtransfer plan MANIFEST --data-root ROOT`") \
            from None
    except (OSError, ValueError) as error:
        raise PlanError(f"{path}: not a readable plan.json ({error})") from None
    if not isinstance(content, dict) or content.get("format") != PLAN_FORMAT:
        raise PlanError(f"{path}: not a medtransfer plan (format {content.get('format') if isinstance(content, dict) else None!r}, "
                        f"expected {PLAN_FORMAT!r})")
    keys = content.get("bundle_keys")
    if not isinstance(keys, dict) or set(keys) - set(PLANNED_KEYS):
        raise PlanError(f"{path}: bundle_keys must be a mapping of {', '.join(PLANNED_KEYS)}")
    for key in ("patch_size", "filters"):
        if key in keys and not (isinstance(keys[key], list) and all(isinstance(v, int) and v > 0 for v in keys[key])):
            raise PlanError(f"{path}: bundle_keys.{key} must be a list of positive integers, got {keys[key]!r}")
    return content


class PlannedDefaults:
    """The bundle's view of a plan: `value(key, default)` for every planned key, a record for run.json, and the
    printed account of which keys came from the plan and which the command line overrode."""

    def __init__(self, path: str | None = None, spatial_dims: int | None = None) -> None:
        self.path = str(path) if path else None
        self.content = load_plan(path) if path else None
        self.keys = dict(self.content["bundle_keys"]) if self.content else {}
        if self.content and spatial_dims is not None and int(self.content["dimensions"]) != int(spatial_dims):
            raise PlanError(f"{path}: a {self.content['dimensions']}D plan cannot drive a {spatial_dims}D bundle")
        self.from_plan: list[str] = []
        self.overridden: dict[str, dict] = {}

    def value(self, key: str, default):
        return self.keys.get(key, default)

    @property
    def digest(self) -> str | None:
        return plan_digest(self.content) if self.content else None

    def announce(self, resolved: dict) -> None:
        """Print once which planned keys this run took from the plan and which were given (with both values)."""
        if not self.content:
            return
        from medtransfer.training.distributed import is_main_process

        self.from_plan = [k for k in PLANNED_KEYS if k in self.keys and _same(resolved.get(k), self.keys[k])]
        self.overridden = {k: {"plan": self.keys[k], "given": resolved.get(k)} for k in PLANNED_KEYS
                           if k in self.keys and k in resolved and not _same(resolved.get(k), self.keys[k])}
        if not is_main_process():
            return
        print(f"medtransfer: plan {self.path} (sha256 {self.digest[:12]}): "
              + ", ".join(f"{k} {self.keys[k]}" for k in self.from_plan) + " from the plan", flush=True)
        for key, values in self.overridden.items():
            print(f"medtransfer: plan key {key} overridden: given {values['given']!r}, plan {values['plan']!r}",
                  flush=True)

    def record(self) -> dict | None:
        if not self.content:
            return None
        return {"path": self.path, "sha256": self.digest, "data_manifest": self.content.get("data_manifest"),
                "bundle_keys": self.keys, "from_plan": self.from_plan, "overridden": self.overridden,
                "plan": self.content.get("plan")}


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b))
    return a == b


_PLANNED_EXPRESSION = re.compile(r"^\$@planned\.value\(\s*'(?P<key>\w+)'\s*,\s*(?P<default>.+)\)\s*$")


def static_value(config: dict, key: str):
    """A bundle key's value as a run will resolve it, read from the raw (merged) YAML without running MONAI: the
    plan's value for a planned key when `config["plan"]` names a plan file, else the key's literal default."""
    value = config.get(key)
    match = _PLANNED_EXPRESSION.match(value) if isinstance(value, str) else None
    if not match:
        return value
    if config.get("plan"):
        keys = load_plan(config["plan"])["bundle_keys"]
        if match["key"] in keys:
            return keys[match["key"]]
    return ast.literal_eval(match["default"])
