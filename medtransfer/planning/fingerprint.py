"""The data fingerprint of a manifest's training split, computed by MONAI's own analyser.

`monai.apps.auto3dseg.DataAnalyzer` reads every training case (image and label) and summarises shapes, spacings,
intensities, and per label its share of the image and the bounding shapes of its connected components
(`do_ccp`). We keep what a plan needs, in the manifest's frame (the analyser reorients 3D volumes to RAS, as our
transforms do), and merge the labels the manifest's `label_map` sends to foreground.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
from pathlib import Path

import numpy as np

from medtransfer.errors import MedtransferError

logger = logging.getLogger("medtransfer.planning")


class PlanError(MedtransferError, ValueError):
    """A data set a plan cannot be made for (no foreground, no cases, a patch that cannot fit)."""


def _foreground_labels(label_map: dict[int, int] | None, present: list[int]) -> set[int]:
    if label_map:
        return {int(k) for k, v in label_map.items() if int(v) == 1}
    return {value for value in present if value != 0}


def _case_foreground(case: dict, label_map, dimensions: int) -> tuple[float, list[int] | None, int]:
    """(foreground share, bounding shape of the largest foreground component, number of components).

    With several source labels merged into foreground (a label_map), the shares add up and the object is the
    per-axis largest component of any of them: a lower bound of the merged object, which is what a patch needs."""
    stats = case["label_stats"]
    labels = [int(v) for v in stats["labels"]]
    wanted = _foreground_labels(label_map, labels)
    share, shapes, components = 0.0, [], 0
    for value, entry in zip(labels, stats["label"]):
        if value not in wanted:
            continue
        share += float(entry["foreground_percentage"])
        components += int(entry.get("ncomponents", 0))
        shapes += [list(shape)[:dimensions] for shape in entry.get("shape", [])]
    largest = [int(max(s[axis] for s in shapes)) for axis in range(dimensions)] if shapes else None
    return share, largest, components


def fingerprint(manifest, fraction: float | str = 1.0, workers: int = 0) -> dict:
    """Fingerprint the training split (at `fraction`) of a `medtransfer.data.Manifest`.

    Returns a JSON-serialisable dict: per-axis median/percentile shapes and spacings, intensity percentiles of
    the whole image and of the foreground, and the foreground's share and largest-object size per case."""
    from monai.apps.auto3dseg import DataAnalyzer

    dimensions = manifest.dimensions
    cases = manifest.datalist("training", fraction)
    if not cases:
        raise PlanError(f"{manifest.name}: the training split is empty; nothing to plan on")
    datalist = {"training": [{"image": c["image"], "label": c["label"], "fold": 0} for c in cases]}
    with tempfile.TemporaryDirectory() as folder:
        analyser = DataAnalyzer(datalist, dataroot="", output_path=str(Path(folder) / "datastats.yaml"),
                                device="cpu", worker=workers, image_key="image", label_key="label", do_ccp=True,
                                average=True)
        result = analyser.get_all_case_stats()
    by_case = result["stats_by_cases"]
    shapes, spacings, shares, objects, empty = [], [], [], [], []
    for item, case in zip(cases, by_case):
        shapes.append([int(s) for s in case["image_stats"]["shape"][0][:dimensions]])
        spacings.append([float(s) for s in case["image_stats"]["spacing"][:dimensions]])
        share, largest, _ = _case_foreground(case, manifest.label_map, dimensions)
        shares.append(share)
        if largest is None or share == 0:
            empty.append(item["id"])
        else:
            objects.append(largest)
    if not objects:
        raise PlanError(f"{manifest.name}: no training case has foreground (checked {len(cases)} label files, e.g. "
                        f"{cases[0]['label']}); a segmentation plan needs at least one labelled object")
    summary = result["stats_summary"]
    intensity = summary["image_stats"]["intensity"]
    foreground_intensity = summary["image_foreground_stats"]["intensity"]

    def axes(values: list[list[float]], q: float) -> list[float]:
        return [float(np.percentile([v[a] for v in values], q)) for a in range(dimensions)]

    return {
        "analyser": "monai.apps.auto3dseg.DataAnalyzer(do_ccp=True)",
        "data_manifest": manifest.name,
        "fraction": str(fraction),
        "n_cases": len(cases),
        "dimensions": dimensions,
        "channels": manifest.channels,
        "shape": {"median": axes(shapes, 50), "p10": axes(shapes, 10), "p90": axes(shapes, 90),
                  "min": [min(s[a] for s in shapes) for a in range(dimensions)],
                  "max": [max(s[a] for s in shapes) for a in range(dimensions)]},
        "spacing": {"median": axes(spacings, 50), "min": [min(s[a] for s in spacings) for a in range(dimensions)],
                    "max": [max(s[a] for s in spacings) for a in range(dimensions)]},
        "intensity": {key: float(intensity[key]) for key in
                      ("min", "percentile_00_5", "median", "mean", "percentile_99_5", "max", "stdev")},
        "foreground_intensity": {key: float(foreground_intensity[key]) for key in
                                 ("percentile_00_5", "median", "mean", "percentile_99_5", "stdev")},
        "foreground_share": {"median": float(statistics.median(shares)), "min": float(min(shares)),
                             "max": float(max(shares))},
        "foreground_object": {"median": axes(objects, 50), "p90": axes(objects, 90),
                              "max": [max(o[a] for o in objects) for a in range(dimensions)]},
        "cases_without_foreground": empty,
    }
