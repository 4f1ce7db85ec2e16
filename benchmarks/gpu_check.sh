#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, from the repository root, in under 8 minutes. It prints
#   1. the CUDA-marked tests' result (tests/engine/test_cuda.py; they skip cleanly without a GPU, as on CI);
#   2. CUDA against the CPU on the demo model (λ̂ of each, their difference in combined s.e.);
#   3. per-head λ̂ on the demo model, one run per head against batched;
#   4. chain-steps/s, tokens/s and peak CUDA memory on a 124M-parameter GPT-2-sized model: the bare loop,
#      slt-probe's loop and vmap paths and devinterp 2.0.1, float32 and bf16 (benchmarks/gpu_bench.py).
#
#   bash benchmarks/gpu_check.sh                  # with slt-probe installed as the README says
#   WHEELS=.gpu_wheels bash benchmarks/gpu_check.sh   # on a bare CUDA image that cannot download: install
#                                                 # slt-probe and what the image lacks from carried wheels
# The wheels for a bare image (the lent H200's: Python 3.12 with torch, transformers, h5py, typer, einops, scipy,
# pandas, rich, safetensors, xarray; without devinterp, arviz-stats, datasets, zarr, pydantic), made beforehand on
# a machine that can download. Not yet tried on that image: no GPU was lent to the session that wrote this.
#   pip download --no-deps --python-version 3.12 --platform manylinux2014_x86_64 --only-binary=:all: -d .gpu_wheels \
#       devinterp==2.0.1 arviz-stats datasets dill multiprocess zarr numcodecs donfig google-crc32c \
#       pydantic pydantic-core annotated-types typing-inspection
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if [ -n "${WHEELS:-}" ]; then
    $PY -m pip install -q --no-index --no-deps --find-links "$WHEELS" "$WHEELS"/*.whl || exit 1
    $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
fi
$PY -c "import sys, torch; torch.cuda.is_available() or sys.exit('gpu_check: no CUDA device'); \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))" || exit 1

echo "== 1. CUDA-marked tests"
timeout 150 $PY -m pytest -q -p no:cacheprovider -m cuda tests -rs 2>&1 | tail -n 12
echo "== 2-4. parity, heads, throughput"
timeout 300 $PY benchmarks/gpu_bench.py
