#!/usr/bin/env bash
# Builds benchmarks/.gp-venv: gunpowder 1.4.4 (the baseline of benchmarks/gunpowder_baseline.py)
# in a venv of its own, since gunpowder needs zarr<3 and the project needs zarr 3.
#
#   bash benchmarks/gunpowder_env.sh          # idempotent; REBUILD=1 starts afresh
#
# torch is pinned to the CPU wheel the project uses (2.13.0+cpu here); installing it first
# keeps pip from pulling a CUDA build when gunpowder's dependencies are resolved.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.gp-venv"
py="${PYTHON:-python3}"
if [[ "${REBUILD:-0}" == 1 ]]; then rm -rf "$venv"; fi
if [[ ! -x "$venv/bin/python" ]]; then "$py" -m venv "$venv"; fi
"$venv/bin/pip" install --quiet "torch==2.13.0"
"$venv/bin/pip" install --quiet "gunpowder==1.4.4" "zarr<3" "numpy<2"
"$venv/bin/python" - <<'PY'
from importlib.metadata import version
import gunpowder, gunpowder.torch  # noqa: F401  (fails here if the install is broken)
print(", ".join(f"{p} {version(p)}" for p in ("gunpowder", "funlib.persistence", "torch", "zarr", "numpy")))
PY
