"""Child-process side of an entry-point probe: ``python -m ferry.agent.probe_runner mod:func``.

The function is called as ``func(model_dir: str)``; returning ``False`` or raising
fails the probe, anything else passes.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback


def main(argv: list[str]) -> int:
    module_name, _, function_name = argv[1].partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
        result = function(os.environ["FERRY_MODEL_DIR"])
    except Exception:  # noqa: BLE001 — any failure of the probe is reported, with its traceback
        traceback.print_exc()
        return 1
    if result is False:
        print(f"{argv[1]} returned False", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
