"""From a data fingerprint to a training plan: each rule says where it comes from.

nnU-Net's heuristics (Isensee et al. 2021, nnunetv2 `ExperimentPlanner`) give the geometry: the median spacing as
target, the median image as the starting patch, pooling until the bottleneck is 4 voxels wide, 32 base features
doubling per level. Where nnU-Net sizes for a GPU's memory, we size for this CPU's measured throughput instead
(the constants below); every plan records them, so a plan made elsewhere says what it assumed.
"""

from __future__ import annotations

import math

from medtransfer.planning.fingerprint import PlanError

# The network's training step (forward, Dice-CE, backward, Adam; bf16 autocast; 2 threads), re-measured on the 2-core
# development machine on quiet cores (2026-12-07, `medtransfer.planning.plan.measure_step_seconds`, two rounds):
# DynUNet 16-256 on 16 x 128^2 pixels 0.38 / 0.41 s, so 0.40 s (the 0.26 s this constant held before was stale:
# with it the modelled step of the BUSI plan was 0.27 s where the planned network measures 0.47-0.52 s); 3D: DynUNet
# 16-128 on 4 x 64^3 voxels 2.39 / 2.45 s, so 2.4 s (it held 1.7 s: Hippocampus's planned run took 1.43 s per
# iteration, 1 thread beside other work, where 1.7 s modelled 1.08 s; 2.4 s models 1.53 s). A step is sized to
# STEP_VOXELS; its cost scales with its voxels and the square of the base width.
STEP_VOXELS = {2: 16 * 128 * 128, 3: 4 * 64 * 64 * 64}
# What the constants were measured with: a CPU that trains in bf16 (`precision: auto` there). On any other machine
# (a CPU without native bf16 trains in fp32; a GPU) they do not hold, and make_plan times the planned network
# instead: the 2-core AMD EPYC of 2026-12-08 (AVX, no AVX2, no bf16) took 1.58 s for BUSI's planned step, 3.2x
# the 0.49 s these constants describe, so a modelled "20-minute" plan would have run for over an hour there.
CONSTANTS_MEASURED_WITH = ("cpu", "bf16")
STEP_SECONDS = {2: 0.40, 3: 2.4}
# A whole training iteration against the network's step alone: the data loader, the nnU-Net-strength augmentation
# and the handlers share the same 2 cores (num_workers 0; a worker process is slower here, 1.18x against 1.08x,
# `benchmarks/input_pipeline.py`). Measured on BUSI's plan (9 x 192 x 160): augmentation 6.0 ms per image, 0.05 s
# per step; the bundle's iteration 1.08x the step in-process, 1.15x end to end on a run ((wall - validation s) /
# iterations = 0.565 s over 0.49 s); HC18's plan (3 x 256 x 160): 1.37x end to end (0.288 s over 0.21 s). 1.3x
# models both within 15 %, on the modelled step above and on `plan --measure`'s measured one alike. (Last round's
# 2.2x folded the stale step constant into this ratio, which made `plan --measure` plan half the iterations.)
# 3D: 1.25x, not re-measured on quiet cores (Hippocampus on 1 thread beside other work: 1.65x, an upper bound).
STEP_OVERHEAD = {2: 1.3, 3: 1.25}
# Validation per voxel (sliding window at batch 1, post-processing, metrics) against a training step per voxel:
# BUSI (65 validation images) measured 2.7 s per validation on quiet cores (4.2 s under load) against 3.0 s
# modelled at this rate, i.e. validation runs at about a training step's voxel rate.
INFERENCE_SPEEDUP = 1.0
MAX_PATCH_EDGE = {2: 256, 3: 128}  # CPU cap per axis (nnU-Net caps by GPU memory instead)
MAX_POOLS = 5  # nnU-Net v2: at most 5 poolings on these patch sizes (6 levels)
MIN_BOTTLENECK_EDGE = 4  # nnU-Net v2 `featuremap_min_edge_length`
BASE_FEATURES = {"cpu": 16, "gpu": 32}  # nnU-Net: 32; CPU: half (a step costs ~3.4x more at 32, measured)
MAX_FEATURES = {2: 256, 3: 256}  # nnU-Net: 512 (2D) / 320 (3D); CPU: 256
BATCH_RANGE = (2, 32)
DATASET_SHARE_PER_BATCH = 0.05  # nnU-Net: one batch sees at most 5 % of the data set's voxels
VALIDATION_SHARE = 0.10  # target share of wall time spent validating (the issue allows 15 %)
DEFAULT_MINUTES = {2: 20.0, 3: 25.0}  # the caps per run: 20 min in 2D, 30 min in 3D
ITERATIONS_PER_EPOCH = (25, 250)  # nnU-Net: 250

RULES = {
    "target_spacing": "the manifest's target_spacing where it sets one, else the median spacing (nnU-Net), or none "
                      "when every case has the same spacing",
    "patch_size": "the median image after resampling (nnU-Net's start), at least twice the median foreground object "
                  "per axis (the object plus half its size of context on each side) or the whole image, at most "
                  f"{MAX_PATCH_EDGE} per axis (CPU cap), rounded to a multiple of 2^pools",
    "filters": f"pool while the bottleneck stays >= {MIN_BOTTLENECK_EDGE} voxels on every axis, at most {MAX_POOLS} "
               "pools (nnU-Net); base features 32 on GPU as nnU-Net, 16 on CPU (measured here), doubling per level, "
               f"capped at {MAX_FEATURES}",
    "batch_size": f"patches per step sized to the measured CPU step ({STEP_VOXELS[2]} px in 2D, {STEP_VOXELS[3]} "
                  f"voxels in 3D), within {BATCH_RANGE}, and at most {DATASET_SHARE_PER_BATCH:.0%} of the training "
                  "set's voxels per batch (nnU-Net)",
    "num_samples": "one patch per image when the patch covers at least half the median image (nnU-Net samples one "
                   "patch per case), else two",
    "iterations": "the wall-time budget divided by the cost of a whole training iteration: the network's step (the "
                  "measured constants, or `plan --measure`) times STEP_OVERHEAD (data loading, augmentation, handlers; "
                  "measured end to end on planned runs)",
    "iterations_per_epoch": f"long enough that validation takes <= {VALIDATION_SHARE:.0%} of the wall time, within "
                            f"{ITERATIONS_PER_EPOCH} (nnU-Net: 250)",
    "early_stopping": "after 30 % of the epochs, stop when the 5-validation moving mean of validation Dice has not "
                      "risen by 0.002 in max(5, 15 % of the epochs) validations (our rule)",
}


def _round_to(value: float, divisor: int) -> int:
    return max(divisor, int(round(value / divisor)) * divisor)


def plan_geometry(fingerprint: dict, target_spacing: list[float] | None, device: str = "cpu") -> dict:
    """Target spacing, patch, pools and widths from the fingerprint (raises PlanError when it cannot fit)."""
    dims = int(fingerprint["dimensions"])
    spacing = fingerprint["spacing"]
    if target_spacing is None and any(abs(hi - lo) > 0.01 * lo for lo, hi in zip(spacing["min"], spacing["max"])):
        target_spacing = list(spacing["median"])
    scale = [s / t for s, t in zip(spacing["median"], target_spacing)] if target_spacing else [1.0] * dims
    image = [m * f for m, f in zip(fingerprint["shape"]["median"], scale)]
    largest_image = [m * f for m, f in zip(fingerprint["shape"]["max"], scale)]
    objects = [m * f for m, f in zip(fingerprint["foreground_object"]["median"], scale)]
    # context: twice the object, or the whole image where the image is smaller than that
    needed = [min(2.0 * o, i) for o, i in zip(objects, largest_image)]
    for axis in range(dims):
        if objects[axis] > MAX_PATCH_EDGE[dims]:
            raise PlanError(
                f"{fingerprint['data_manifest']}: the median foreground object ({objects[axis]:.0f} voxels on axis "
                f"{axis} after resampling to {target_spacing or 'native spacing'}) does not fit the CPU cap of "
                f"{MAX_PATCH_EDGE[dims]} voxels per patch axis (largest image {largest_image[axis]:.0f}); set a "
                "coarser target_spacing in the manifest")
    patch = [min(MAX_PATCH_EDGE[dims], max(i, min(n, largest_image[a])))
             for a, (i, n) in enumerate(zip(image, needed))]
    pools = min(MAX_POOLS, *[int(math.floor(math.log2(max(p, 1) / MIN_BOTTLENECK_EDGE))) for p in patch])
    pools = max(pools, 1)
    divisor = 2 ** pools
    patch = [min(_round_to(p, divisor), (MAX_PATCH_EDGE[dims] // divisor) * divisor) for p in patch]
    base = BASE_FEATURES["gpu" if device.startswith("cuda") else "cpu"]
    filters = [min(base * 2 ** level, MAX_FEATURES[dims]) for level in range(pools + 1)]
    return {"target_spacing": target_spacing, "median_image_resampled": image, "median_object_resampled": objects,
            "patch_size": patch, "pools": pools, "filters": filters}


def plan_budget(fingerprint: dict, geometry: dict, n_validation: int, minutes: float | None = None,
                step_seconds: float | None = None) -> dict:
    """Batch, samples per image, iterations and the early-stopping rule for a wall-time budget."""
    dims = int(fingerprint["dimensions"])
    patch_voxels = math.prod(geometry["patch_size"])
    image_voxels = math.prod(geometry["median_image_resampled"])
    batch = round(STEP_VOXELS[dims] / patch_voxels)
    share_cap = math.floor(DATASET_SHARE_PER_BATCH * fingerprint["n_cases"] * image_voxels / patch_voxels)
    batch = int(min(BATCH_RANGE[1], max(BATCH_RANGE[0], min(batch, max(share_cap, BATCH_RANGE[0])))))
    num_samples = 1 if patch_voxels >= 0.5 * image_voxels else 2
    images_per_step = max(1, batch // num_samples)
    patches = images_per_step * num_samples
    width_cost = (geometry["filters"][0] / 16) ** 2  # convolution cost grows with the square of the width
    modelled = STEP_SECONDS[dims] * patches * patch_voxels / STEP_VOXELS[dims] * width_cost * STEP_OVERHEAD[dims]
    step = float(step_seconds) if step_seconds else modelled
    minutes = float(minutes or DEFAULT_MINUTES[dims])
    # a measured step says how much faster or slower this machine is than the constants' one; validation is
    # convolution work too, so it scales by the same factor
    machine = step / modelled
    validation_seconds = n_validation * image_voxels / STEP_VOXELS[dims] * STEP_SECONDS[dims] * width_cost \
        / INFERENCE_SPEEDUP * machine
    per_epoch = math.ceil(validation_seconds / (VALIDATION_SHARE * step))
    per_epoch = int(min(ITERATIONS_PER_EPOCH[1], max(ITERATIONS_PER_EPOCH[0], per_epoch)))
    iterations = int(minutes * 60 * (1 - VALIDATION_SHARE) / step)
    max_epochs = max(10, iterations // per_epoch)
    return {
        "batch_size": images_per_step, "num_samples": num_samples, "patches_per_step": patches,
        "step_seconds": round(step, 4), "step_seconds_source": "measured (plan --measure)" if step_seconds
        else "modelled from the measured constants", "machine_factor": round(machine, 3), "minutes": minutes,
        "iterations_per_epoch": per_epoch, "max_epochs": max_epochs, "iterations": per_epoch * max_epochs,
        "validation_seconds_estimate": round(validation_seconds, 2),
        "early_stop_min_epochs": max(5, math.ceil(0.3 * max_epochs)),
        "early_stop_patience": max(5, math.ceil(0.15 * max_epochs)),
        "early_stop_smoothing": 5, "early_stop_min_delta": 0.002,
    }
