"""`python -m medtransfer.study.launch run ...` = `python -m monai.bundle run ...` plus one log line per epoch.

Ignite logs "Epoch[N] Complete" for every engine at INFO level, but nothing shows it by default; a study reads
these lines from a run's log.txt to show the current epoch. Nothing else about the run changes.
"""

import logging
import runpy
import sys


def main() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s - study - %(message)s"))
    for name in ("ignite.engine.engine.SupervisedTrainer", "ignite.engine.engine.Engine"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False
    sys.argv = ["monai.bundle", *sys.argv[1:]]
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
