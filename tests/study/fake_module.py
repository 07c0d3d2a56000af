"""Run as `python -m tests.study.fake_module ...` by the preloaded-launch tests: prints, exits, raises, dies."""

import os
import signal
import sys

if __name__ == "__main__":
    import torch

    print(f"argv={sys.argv[1:]} name={__name__} threads={torch.get_num_threads()} "
          f"var={os.environ.get('FAKE_MODULE_VAR')}", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    if "--where" in sys.argv:
        print(f"parent={os.getppid()}", flush=True)
    if "--raise" in sys.argv:
        raise RuntimeError("fake module failed on purpose")
    if "--exit" in sys.argv:
        sys.exit(int(sys.argv[sys.argv.index("--exit") + 1]))
    if "--kill" in sys.argv:
        os.kill(os.getpid(), signal.SIGKILL)
