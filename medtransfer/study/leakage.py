"""The study's leakage guard: what the pretraining stages see of the target data set, checked before training.

Rules (DESIGN.md "Data hygiene"):

* **No stage sees a target test image.** Not as a labelled image, not as an unlabelled one.
* **A supervised stage does not use target labels.** A stage is supervised when it learns from segmentation
  masks: `segmentation` (any `label_map`, e.g. one sub-structure of the target's own label), and
  `classification` whose classes are derived from the masks (its source manifest has no `class` field).
  If such a stage's images include target training or validation images, it has seen the labels that the
  low-data fine-tunes are meant to lack, and the comparison of "5 %" fine-tunes is meaningless. The study
  is refused unless the stage says ``target_labels: allowed``; the report then states how many target
  labels the source used (:func:`target_labels_used`).
* Unlabelled objectives (reconstruction, contrastive_reconstruction) and classification on real manifest
  classes may use target training (and validation) images.

Images are compared by *content*, across manifests and within one: exact pixel hashes and the perceptual
near-duplicate rule of :mod:`medtransfer.data.duplicates` (cached, so the guard takes seconds). The result
is written to ``leakage.json`` in the study folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medtransfer.study.spec import StudyError, StudySpec

RECORD = "leakage.json"
ALLOWED = "allowed"
LABEL_OBJECTIVES = ("segmentation", "classification")
SHOWN = 5  # overlapping cases named in an error message


class LeakageError(StudyError):
    """A pretraining stage would see target test images, or target labels without `target_labels: allowed`."""


@dataclass
class StageLeakage:
    """What one pretraining stage's images share with the target data set."""

    stage: str
    objective: str
    source: str
    fraction: float
    uses_masks: bool  # learns from segmentation masks (directly or as mask-derived classes)
    target_labels: str | None  # the stage's `target_labels` setting ("allowed" or None)
    test_overlap: list[list] = field(default_factory=list)  # [source id, target id, correlation]
    labelled_overlap: list[list] = field(default_factory=list)  # with target training + validation images

    @property
    def target_labels_used(self) -> int:
        """Distinct target training/validation cases whose labels this stage learnt from."""
        return len({target for _, target, _ in self.labelled_overlap}) if self.uses_masks else 0

    @property
    def target_images_used(self) -> int:
        return len({target for _, target, _ in self.labelled_overlap})

    def problems(self) -> list[str]:
        where = (f"pretraining stage {self.stage!r} ({self.objective} on {self.source}, fraction {self.fraction})")
        found = []
        if self.test_overlap:
            targets = sorted({target for _, target, _ in self.test_overlap})
            found.append(f"{where} sees {len(targets)} image(s) of the target's TEST split: {_pairs(self.test_overlap)}. "
                         "No stage may see target test images: remove them from the source (or split the "
                         "target so that they are not test cases)")
        if self.target_labels_used and self.target_labels != ALLOWED:
            found.append(
                f"{where} learns from the labels of {self.target_labels_used} target training/validation case(s): "
                f"{_pairs(self.labelled_overlap)}. The low-data fine-tunes would then be compared with a source "
                "that has seen the labels they lack. Pretrain this stage on a disjoint source, use an unlabelled "
                "objective (reconstruction, contrastive_reconstruction), or write `target_labels: allowed` in the "
                "stage to compare it knowingly (the report then states the number of target labels used)")
        return found


def _pairs(pairs: list[list]) -> str:
    shown = [f"{source}≈{target}" if source != target else source for source, target, _ in pairs[:SHOWN]]
    more = f" and {len(pairs) - SHOWN} more" if len(pairs) > SHOWN else ""
    return ", ".join(shown) + more


def _uses_masks(objective: str, source_content: dict) -> bool:
    if objective == "segmentation":
        return True
    if objective == "classification":
        return not any("class" in case for case in source_content["training"])
    return False


def _image(item: dict) -> str:
    return item["image"] if isinstance(item["image"], str) else item["image"][0]


def stage_leakage(spec: StudySpec, cache: bool = True) -> list[StageLeakage]:
    """The overlap of every pretraining stage's images with the target's splits, by content."""
    from medtransfer.data.duplicates import Fingerprints, duplicate_pairs, fingerprints
    from medtransfer.data.manifest import ManifestError
    from medtransfer.data.open import open_manifest

    if not spec.stages:
        return []

    def bind(info):
        try:
            return open_manifest(info.path, info.data_root)
        except ManifestError as error:
            raise StudyError(f"data manifest {info.name!r}: {error}") from None

    target = bind(spec.target)
    test_items = target.datalist("test", require_labels=False)
    labelled_items = target.datalist("training", require_labels=False) + target.datalist("validation",
                                                                                         require_labels=False)
    stage_items = [bind(spec.manifests[stage["data_manifest"]]).datalist("training", stage["fraction"],
                                                                        require_labels=False)
                   for stage in spec.stages]
    paths = sorted({_image(item) for items in [test_items, labelled_items, *stage_items] for item in items})
    every = fingerprints(paths, cache=cache)  # each file once, whichever stages share it
    row = {path: index for index, path in enumerate(paths)}

    def subset(items):
        rows = [row[_image(item)] for item in items]
        return Fingerprints(tuple(every.paths[r] for r in rows), tuple(every.hashes[r] for r in rows),
                            every.thumbnails[rows])

    targets = {"test": (test_items, subset(test_items)), "labelled": (labelled_items, subset(labelled_items))}
    results = []
    for stage, items in zip(spec.stages, stage_items):
        info = spec.manifests[stage["data_manifest"]]
        prints = subset(items)
        overlaps = {}
        for part, (target_items, target_prints) in targets.items():
            pairs = duplicate_pairs(prints, target_prints) if len(prints) and len(target_prints) else []
            overlaps[part] = [[items[i]["id"], target_items[j]["id"], round(c, 4)] for i, j, c in pairs]
        results.append(StageLeakage(
            stage=stage["name"], objective=stage["objective"], source=info.name, fraction=stage["fraction"],
            uses_masks=_uses_masks(stage["objective"], info.content), target_labels=stage.get("target_labels"),
            test_overlap=overlaps["test"], labelled_overlap=overlaps["labelled"]))
    return results


def target_split_overlap(spec: StudySpec, cache: bool = True) -> list[list]:
    """[training/validation id, test id, correlation] of duplicate images across the target's own splits: the
    fine-tunes would be tested on copies of images they trained or were selected on."""
    from medtransfer.data.duplicates import duplicate_pairs, fingerprints
    from medtransfer.data.manifest import ManifestError
    from medtransfer.data.open import open_manifest

    try:
        target = open_manifest(spec.target.path, spec.target.data_root)
    except ManifestError as error:
        raise StudyError(f"data manifest {spec.target.name!r}: {error}") from None
    labelled = target.datalist("training", require_labels=False) + target.datalist("validation", require_labels=False)
    test = target.datalist("test", require_labels=False)
    if not labelled or not test:
        return []
    pairs = duplicate_pairs(fingerprints([_image(i) for i in labelled], cache=cache),
                            fingerprints([_image(i) for i in test], cache=cache))
    return [[labelled[i]["id"], test[j]["id"], round(c, 4)] for i, j, c in pairs]


def check_study_leakage(spec: StudySpec, cache: bool = True) -> list[StageLeakage]:
    """The stages' overlaps; raises LeakageError naming every offending stage and its overlapping cases, and
    duplicates across the target's own splits."""
    results = stage_leakage(spec, cache=cache)
    problems = [problem for result in results for problem in result.problems()]
    within = target_split_overlap(spec, cache=cache)
    if within:
        problems.append(f"the target manifest {spec.target.name!r} holds duplicate images across its splits "
                        f"(training/validation vs test): {_pairs(within)}; rebuild it with `medtransfer data "
                        "manifest`, which keeps near-duplicate groups in one split (`medtransfer data check` lists them)")
    if problems:
        raise LeakageError("study refused before training (leakage guard):\n- " + "\n- ".join(problems))
    return results


def save_leakage(study_dir: str | Path, results: list[StageLeakage], unchecked: list[dict] | None = None) -> Path:
    """leakage.json: every stage's overlaps, and the checkpoint sources (`unchecked`, the spec's
    checkpoint_sources) whose training data no guard can see."""
    from medtransfer.atomic import save_json

    path = Path(study_dir) / RECORD
    save_json(path, {"stages": [{**asdict(r), "target_labels_used": r.target_labels_used,
                                 "target_images_used": r.target_images_used} for r in results],
                     "unchecked_sources": [{k: source[k] for k in ("name", "checkpoint", "sha256", "trained_on")}
                                           for source in unchecked or []]})
    return path


def target_labels_used(study_dir: str | Path) -> dict[str, int]:
    """Stage name → number of target training/validation labels it learnt from (0 for most), from the
    study folder's leakage.json; {} when the study ran without the guard's record. For summary.md: "this
    source used N target labels"."""
    path = Path(study_dir) / RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {stage["stage"]: int(stage["target_labels_used"]) for stage in record.get("stages", [])}


def target_label_sentences(study_dir: str | Path) -> list[str]:
    """One plain sentence per pretraining stage that learnt from target labels, and one per checkpoint source
    the guard could not check, for summary.md."""
    sentences = [f"Source `{stage}` used {count} target label{'s' if count != 1 else ''} (target training/validation "
                 f"cases whose masks it learnt from; the study file allows it with `target_labels: allowed`)."
                 for stage, count in target_labels_used(study_dir).items() if count]
    try:
        unchecked = json.loads((Path(study_dir) / RECORD).read_text()).get("unchecked_sources") or []
    except (OSError, ValueError):
        unchecked = []
    sentences += [f"Source `{source['name']}` is a checkpoint file (sha256 {source['sha256'][:12]}…, trained on: "
                  f"{source.get('trained_on') or 'not stated'}): the leakage guard cannot see what it was trained on, "
                  f"so its overlap with the target's test images is unknown." for source in unchecked]
    return sentences
