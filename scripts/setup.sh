#!/usr/bin/env bash
# Set up unetkit on a fresh machine: a CPU build of PyTorch where no GPU is present, then the package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install --quiet torch
  else
    # CPU build (small): this machine keeps torch 2.13.0 on disk
    "$PY" -m pip install --quiet torch==2.13.0 || "$PY" -m pip install --quiet torch
  fi
fi
"$PY" -m pip install --quiet -e ".[dev]"
# nnU-Net's and MONAI's networks, for the side-by-side benchmarks and the nnU-Net import tests:
# --no-deps keeps this torch (both need only torch and numpy)
"$PY" -m pip install --quiet --no-deps "dynamic-network-architectures>=0.4" "monai>=1.3" || \
  echo "setup: nnU-Net/MONAI peers not installed (offline?); their tests and benchmarks are skipped" >&2
# The browser test drives Debian's chromium through selenium; install it where apt works and we are
# root (the test skips with a message elsewhere). Never fatal: set-up goes on without it.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver; } >/dev/null 2>&1 \
      || echo "setup: chromium not installed (apt failed); the browser test will be skipped" >&2
  fi
fi
