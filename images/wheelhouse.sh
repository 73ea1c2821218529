#!/usr/bin/env bash
# The images' build context, made on the host (a build cannot reach the package index, and the
# images install with --no-index): every wheel kdflow needs, built from pyproject.toml.
#
#   OUT/deps/*.whl          kdflow's dependencies and theirs, except torch, with the onnx-check extra
#                           (onnxruntime: the CPU image installs every wheel here and verifies ONNX
#                           exports with it; the GPU image installs only requirements.txt)
#   OUT/torch/*.whl         torch (TORCH_SPEC: the CPU wheel; the GPU image keeps its base's torch)
#   OUT/kdflow/*.whl        kdflow itself (kdflow, kdflow.components, kdflow.pipelines)
#   OUT/requirements.txt    kdflow's own requirements, read from its wheel (the GPU image installs these)
#
# usage: images/wheelhouse.sh [OUT]   (PY: the python whose pip builds them; TORCH_SPEC: torch's pin)
# A second run is fast: pip reuses its cache, and wheels with the same bytes keep the images' cached layers.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/images}
PY=${PY:-.venv/bin/python}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# Fixed timestamps inside the kdflow wheel: the same source gives the same bytes, so Docker's layer
# cache (keyed by content) keeps the images' kdflow layers until the code changes.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800}

rm -rf "$OUT" build/lib build/bdist.*  # setuptools' build/lib keeps deleted modules otherwise
mkdir -p "$OUT/deps" "$OUT/torch" "$OUT/kdflow"
# (grep drops the notes this machine's pip configuration adds; pipefail keeps pip's exit status)
"$PY" -m pip wheel --quiet --wheel-dir "$OUT/deps" ".[onnx-check]" "$TORCH_SPEC" 2>&1 | { grep -v "^WARNING: Location" || true; }
mv "$OUT"/deps/kdflow-*.whl "$OUT/kdflow/"
mv "$OUT"/deps/torch-*.whl "$OUT/torch/"
"$PY" - "$OUT"/kdflow/kdflow-*.whl >"$OUT/requirements.txt" <<'PYEOF'
import email, sys, zipfile

with zipfile.ZipFile(sys.argv[1]) as wheel:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    meta = email.message_from_bytes(wheel.read(name))
for req in meta.get_all("Requires-Dist") or []:
    if "extra ==" not in req:
        print(req)
PYEOF
echo "wheelhouse $OUT: $(ls "$OUT"/deps | wc -l) dependency wheels, $(ls "$OUT"/torch), $(ls "$OUT"/kdflow)" \
     "($(du -sh "$OUT" | cut -f1))"
