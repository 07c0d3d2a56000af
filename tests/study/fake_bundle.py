"""A stand-in for `python -m monai.bundle run` in study tests: writes what a finished run leaves (no training).

    python fake_bundle.py OUTPUT_DIR KIND STRATEGY FRACTION SEED [--fail] [--source PATH] [--overwrite]
"""

import hashlib
import json
import sys
import time
from pathlib import Path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    out, kind, strategy, fraction, seed = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
    flags = sys.argv[6:]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "invocations.txt", "a") as stream:  # lets tests count executions
        stream.write(" ".join(sys.argv[1:]) + "\n")
    if "--source" in flags and not Path(flags[flags.index("--source") + 1]).is_file():
        raise FileNotFoundError(f"source checkpoint missing: {flags[flags.index('--source') + 1]}")
    if (out / "run.json").exists() and json.loads((out / "run.json").read_text())["status"] == "finished" \
            and "--overwrite" not in flags:
        raise RuntimeError(f"{out} holds a finished run")
    if "--fail" in flags:
        raise RuntimeError("boom: this run was told to fail")
    epochs = 5
    for epoch in range(1, epochs + 1):
        print(f"Epoch[{epoch}] Complete. Time taken: 00:00:00.001", flush=True)
    record = {"status": "finished", "wall_time_seconds": 0.01, "config_hash": "fake"}
    if kind == "pretrain":
        weights = out / "pretrained.pt"
        weights.write_bytes(f"pretrained {seed}".encode())
        record["pretraining"] = {"final": {"epoch": epochs, "path": "pretrained.pt", "sha256": sha(weights)}}
    else:
        weights = out / "model.pt"
        weights.write_bytes(f"model {strategy} {fraction} {seed} {time.time()}".encode())
        gain = {"scratch": 0.0, "encoder": 0.1, "decoder": 0.02, "encoder_frozen": -0.05}.get(strategy, 0.0)
        per_case = []
        for index in range(6):
            dice = min(1.0, 0.5 + 0.3 * fraction + gain + 0.01 * index + 0.003 * seed)
            per_case.append({"case": f"case_{index:03d}", "dice": dice, "hd95": 10 - 5 * dice,
                             "surface_dice": dice - 0.1, "volume_pred": 100.0, "volume_label": 110.0})
        final = 0.5 + gain + 0.3 * fraction
        record.update({
            "per_case": per_case,
            "val_history": [{"epoch": e, "val_dice": final * e / epochs} for e in range(1, epochs + 1)],
            "best_epoch": epochs,
            "model_sha256": sha(weights),
        })
    (out / "run.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
