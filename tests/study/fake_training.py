"""A slow stand-in for `python -m monai.bundle run` (fault tests): locks its run folder like RunDirectory, prints
one epoch line per epoch, then writes what a finished run leaves. Deterministic: the same run gives the same files.

    python -m tests.study.fake_training OUTPUT_DIR KIND STRATEGY FRACTION SEED [--source PATH] [--overwrite]
"""

import hashlib
import json
import sys
import time
from pathlib import Path

EPOCHS = 3
EPOCH_SECONDS = 0.25


def command_factory(run, bundle_root, output_dir, source_checkpoint=None, overwrite=False):
    """StudyRunner command factory: a `python -m` command, so the local executor forks it from its launcher."""
    command = [sys.executable, "-m", "tests.study.fake_training", str(output_dir), run.kind, str(run.strategy),
               str(run.fraction), str(run.seed)]
    if source_checkpoint is not None:
        command += ["--source", str(source_checkpoint)]
    if overwrite:
        command.append("--overwrite")
    return command


def main() -> None:
    from medtransfer.folder_lock import FolderLock

    out, kind, strategy, fraction, seed = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
    flags = sys.argv[6:]
    lock = FolderLock(out, "run folder").acquire()
    source = b""
    if "--source" in flags:
        source = Path(flags[flags.index("--source") + 1]).read_bytes()
    for epoch in range(1, EPOCHS + 1):
        time.sleep(EPOCH_SECONDS)
        with open(out / "epochs.txt", "a") as stream:  # lets tests count epoch-1 lines (starts) per run
            stream.write(f"epoch {epoch}\n")
        print(f"medtransfer: epoch {epoch}/{EPOCHS} done ({EPOCH_SECONDS:.1f} s)", flush=True)
    weights = out / ("pretrained.pt" if kind == "pretrain" else "model.pt")
    weights.write_bytes(f"{kind} {strategy} {fraction} {seed} {hashlib.sha256(source).hexdigest()}".encode())
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    record = {"status": "finished", "config_hash": "fake"}
    if kind == "pretrain":
        record["pretraining"] = {"final": {"epoch": EPOCHS, "path": weights.name, "sha256": digest}}
    else:
        dice = round(0.5 + 0.3 * fraction + 0.003 * seed + (0.1 if strategy == "encoder" else 0.0), 6)
        record.update({"model_sha256": digest, "metrics": {"mean_dice": dice},
                       "per_case": [{"case": "case_000", "dice": dice}]})
    (out / "run.json").write_text(json.dumps(record, sort_keys=True))
    with open(out / "completions.txt", "a") as stream:  # one line per finished training of this folder
        stream.write("finished\n")
    lock.release()


if __name__ == "__main__":
    main()
