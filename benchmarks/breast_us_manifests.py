"""Build data_manifests/busbra_breast_us_lesions.json and busi_breast_us_lesions.json, and measure BUSI's
near-duplicates (the rule of medtransfer.data.duplicates).

    python benchmarks/breast_us_manifests.py --data-root ../shared/data [--write]

BUS-BRA (source): test = official 5-fold test fold 1 of the authors' `5-fold-cv.csv` (cases.csv column
`official_5fold_test_fold`); validation = a seeded 10 % of the other patients; no patient crosses splits (the
`-l`/`-r` images of a patient are one group). Every case keeps its biopsy pathology as `class`
(0 benign, 1 malignant) for classification pretraining, plus `patient`.
BUSI (target): near-duplicate groups kept whole, seeded group split with a 20 % test and 10 % validation
set; `class` = the BUSI folder (0 benign, 1 malignant). Without --write the manifests are built and compared
with the shipped files (a reproducibility check).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medtransfer.data.manifest_builder import build_manifest, split_ids  # noqa: E402

CLASSES = {"benign": 0, "malignant": 1}
CLASS_MEANING = {"0": "benign (biopsy-proven)", "1": "malignant (biopsy-proven)"}
LABEL_MEANING = {"0": "background", "1": "breast lesion (manual outline)"}
SPLIT_SEED = 0
BUSBRA_TEST_FOLD = "1"


def _rows(folder: Path) -> list[dict]:
    with open(folder / "cases.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def busbra_manifest(data_root: Path) -> dict:
    folder = data_root / "busbra_breast_us_lesions"
    rows = _rows(folder)
    ids = {row["file"]: row["file"][:-4] for row in rows}
    patients: dict[str, list[str]] = {}
    for row in rows:
        patients.setdefault(row["patient_case"], []).append(ids[row["file"]])
    fields = {ids[row["file"]]: {"class": CLASSES[row["pathology"]], "patient": row["patient_case"],
                                 "pathology": row["pathology"], "device": row["device"]} for row in rows}
    test = [ids[row["file"]] for row in rows if row["official_5fold_test_fold"] == BUSBRA_TEST_FOLD]
    return build_manifest(
        folder, name="busbra_breast_us_lesions", seed=SPLIT_SEED, groups=list(patients.values()),
        case_fields=fields, test_ids=test,
        modality="US",
        license="MIT-style permission notice shipped with the data set (LICENSE.txt): use, copy, modify, publish "
                "and distribute free of charge; keep the notice; every document or paper using the data must cite "
                "the article below",
        source="BUS-BRA (Zenodo record 8231412, https://zenodo.org/records/8231412; https://github.com/wgomezf/BUS-BRA): "
               "1875 B-mode images of 1064 patients, 4 scanners, INCA Rio de Janeiro; resized to a long side of 192 px",
        citation=["Gómez-Flores W., Gregorio-Calas M.J., Coelho de Albuquerque Pereira W., BUS-BRA: A breast "
                  "ultrasound dataset for assessing computer-aided diagnosis systems, Medical Physics 51(4) (2024) "
                  "3110-3123. doi:10.1002/mp.16812"],
        spacing=[1.0, 1.0],
        label_meaning=LABEL_MEANING,
        class_meaning=CLASS_MEANING,
        notes=f"Split by patient: test = official 5-fold test fold {BUSBRA_TEST_FOLD} (cases.csv "
              "official_5fold_test_fold), validation = a seeded 10 % of the other patients' images; no patient "
              "crosses splits. `class` is the biopsy pathology (a real classification label), `patient` the "
              "patient_case. PNG files carry no physical spacing: spacing is in pixels.",
    )


def busi_manifest(data_root: Path, near_duplicates: bool = True, name: str = "busi_breast_us_lesions") -> dict:
    """The shipped BUSI manifest; `near_duplicates=False` gives the naive image-level split of the same seed
    (benchmarks/busi_split_leak.py measures what that leaks)."""
    folder = data_root / "busi_breast_us_lesions"
    rows = _rows(folder)
    fields = {row["file"][:-4]: {"class": CLASSES[row["class"]]} for row in rows}
    return build_manifest(
        folder, name=name, seed=SPLIT_SEED, test_fraction=0.2, validation_fraction=0.1,
        case_fields=fields, near_duplicates=near_duplicates,
        modality="US",
        license="no licence stated by the authors; published as an open data set with an open-access (CC BY 4.0) "
                "Data in Brief article, Kaggle mirror labelled CC0 1.0: free for research use, cite the paper",
        source="BUSI, Dataset_BUSI_with_GT (Al-Dhabyani et al.; https://scholar.cu.edu.eg/?q=afahmy/pages/dataset), "
               "647 benign/malignant lesion images (normal images left out), Baheya Hospital Cairo, GE LOGIQ E9; "
               "converted to grey and resized to a long side of 192 px; masks rebuilt from a 256x256 derived copy",
        citation=["Al-Dhabyani W., Gomaa M., Khaled H., Fahmy A., Dataset of breast ultrasound images, Data in Brief "
                  "28 (2020) 104863. doi:10.1016/j.dib.2019.104863"],
        spacing=[1.0, 1.0],
        label_meaning=LABEL_MEANING,
        class_meaning={"0": "benign (BUSI folder)", "1": "malignant (BUSI folder)"},
        notes="BUSI holds near-duplicate images (re-saved and re-cropped copies, a few across the benign and "
              "malignant folders): they are grouped by near_duplicate_rule and every group lies in one split "
              "(seeded group split, 20 % test, 10 % validation). The images are stored grey (632 of the 647 "
              "originals are RGB with three identical channels), so channels = 1. PNG files carry no physical "
              "spacing: spacing is in pixels.",
    )


def measure_busi(content: dict, data_root: Path, naive_seeds: int = 20) -> dict:
    """Pairs, groups, images involved, cross-class pairs, and the pairs a naive random 20 % split cuts."""
    from medtransfer.data.duplicates import find_duplicates

    cases = [c for split in ("training", "validation", "test") for c in content[split]]
    folder = data_root / "busi_breast_us_lesions"
    found = find_duplicates([c["id"] for c in cases], [folder / c["image"] for c in cases])
    classes = {c["id"]: c["class"] for c in cases}
    ids = sorted(classes)
    across = []
    for seed in range(naive_seeds):  # a naive random split of images: 20 % test, rest train (+ validation)
        order = list(ids)
        random.Random(seed).shuffle(order)
        test = set(order[: round(0.2 * len(order))])
        across.append(sum((a in test) != (b in test) for a, b, _ in found.pairs))
    _, _, naive_test = split_ids(ids, 0.2, 0.1, SPLIT_SEED, False)
    naive_test = set(naive_test)
    grouped_test = {c["id"] for c in content["test"]}
    return {
        "pairs": len(found.pairs),
        "groups": len(found.groups),
        "largest_group": max(len(g) for g in found.groups),
        "images_involved": found.images_involved,
        "cross_class_pairs": sum(classes[a] != classes[b] for a, b, _ in found.pairs),
        "naive_split_pairs_across_test_mean": sum(across) / len(across),
        "naive_split_pairs_across_test_range": [min(across), max(across)],
        "naive_split_seed0_pairs_across_test": sum((a in naive_test) != (b in naive_test) for a, b, _ in found.pairs),
        "group_split_pairs_across_test": sum((a in grouped_test) != (b in grouped_test) for a, b, _ in found.pairs),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--write", action="store_true", help="write the manifests into data_manifests/")
    args = parser.parse_args(argv)
    data_root = Path(args.data_root).resolve()
    from medtransfer.atomic import save_json

    status = 0
    for build in (busbra_manifest, busi_manifest):
        content = build(data_root)
        path = REPO / "data_manifests" / f"{content['name']}.json"
        sizes = {split: len(content[split]) for split in ("training", "validation", "test")}
        print(f"{content['name']}: {sizes}, {len(content['near_duplicate_groups'])} near-duplicate groups")
        if content["name"].startswith("busi"):
            print(json.dumps(measure_busi(content, data_root), indent=2))
        if args.write:
            save_json(path, content)
            print(f"wrote {path}")
        elif not path.is_file() or json.loads(path.read_text()) != json.loads(json.dumps(content)):
            print(f"DIFFERS from {path} (rebuild with --write)")
            status = 1
        else:
            print(f"identical to {path}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
