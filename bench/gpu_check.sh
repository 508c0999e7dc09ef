#!/usr/bin/env bash
# The accelerator path of issue 20, checked on a CUDA machine (a lent H200: its image has python3 with a
# CUDA torch, transformers, peft and accelerate, but no OpenVINO and no network). Two steps:
#
#   here, once:  bench/gpu_check.sh prepare   # wheels the image lacks, the bundled tokenizer and a JSON task
#                                             # into .gpu_carry/ (git-ignored, ~11 MiB)
#   there:       bench/gpu_check.sh run       # <= 10 min; with the device tool:
#                run(command="bench/gpu_check.sh run", carry=[".gpu_carry"], timeout_s=600)
#
# `run` installs the package over the image's torch (no OpenVINO: the OpenVINO wheel alone is larger than
# what a device call may carry, so export, IR evaluation and the GenAI benchmark are not part of it), then
#   1. the tests marked gpu (tiny pipeline on CUDA, Wanda streamed to CUDA from CPU memory),
#   2. bench/scale.py --torch-only on the 1 B and 3 B LLaMA shapes in bfloat16 on the GPU: make, Wanda,
#      INT4 quantize (NNCF), reorder, NLS steps, extract; peak RSS and peak GPU memory per stage.
# Results: bench/results/scale_gpu.{md,json} and $OUT/ (when set, as on the device machine).
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.gpu_carry

prepare() {
  [ -x .venv/bin/python ] || ./setup.sh
  rm -rf "$CARRY" && mkdir -p "$CARRY/wheels" "$CARRY/cache"
  # The image's python3 is 3.12: wheels for it, no dependencies (the image has the rest).
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$CARRY/wheels" nncf==3.4.0 pydantic pydantic-core datasets pymoo gguf optimum==2.3.0 \
    openvino-telemetry natsort ninja pydot dill multiprocess moocore autograd cma alive-progress about-time \
    graphemeu Deprecated
  .venv/bin/python - "$CARRY" <<'PY'
import json, shutil, sys
from pathlib import Path
from nncf_elastic_lora.config import DataConfig
from nncf_elastic_lora.data import load_task
from nncf_elastic_lora.models import bundled_tokenizer_dir, cache_dir

carry = Path(sys.argv[1])
tok = bundled_tokenizer_dir(cache_dir())
shutil.copytree(tok, carry / "cache" / tok.name)
task = load_task(DataConfig(task="basic_arithmetic"))
rows = [{"instruction": e.prompt, "output": e.target, "answer": e.answer} for e in task.train[:400]]
(carry / "basic_arithmetic.json").write_text(json.dumps(rows))
PY
  du -sh "$CARRY"
}

run() {
  [ -d "$CARRY" ] || { echo "gpu_check.sh: $CARRY/ is missing: run 'bench/gpu_check.sh prepare' here first" >&2; exit 2; }
  python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name())"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  python3 -m venv --system-site-packages /tmp/nel
  /tmp/nel/bin/pip install -q --no-index --no-deps "$CARRY"/wheels/*.whl
  /tmp/nel/bin/pip install -q --no-deps --no-build-isolation -e .
  export NNCF_ELASTIC_LORA_CACHE="$PWD/$CARRY/cache" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  out=${OUT:-bench/results}
  set -o pipefail
  timeout 180 /tmp/nel/bin/python -m pytest -p no:cacheprovider -n 0 -m gpu tests/test_devices.py -v 2>&1 | tee "$out/gpu_tests.log"
  timeout 360 /tmp/nel/bin/python bench/scale.py --torch-only --tag gpu --data "$CARRY/basic_arithmetic.json" \
    --shapes llama-3.2-1b,llama-3.2-3b --samples 64 --steps 10 2>&1 | tee "$out/gpu_scale.log"
  [ "$out" = bench/results ] || cp bench/results/scale_gpu.md bench/results/scale_gpu.json "$out"/
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: bench/gpu_check.sh prepare|run" >&2; exit 2 ;;
esac
