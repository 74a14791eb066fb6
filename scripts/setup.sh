#!/usr/bin/env bash
# Make (or update) the local virtual environment .venv with everything encvit needs.
# As root it also installs the Debian packages: Fashion-MNIST data and Chromium for the browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  for pkg in dataset-fashion-mnist chromium; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
elif [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "${ENCVIT_FASHION_DIR:-}" ]; then
  echo "note: install Debian's dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist) or set ENCVIT_FASHION_DIR" >&2
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/pip"
quiet() { "$@" 2> >(grep -v "^WARNING: Location" >&2); }  # this machine's pip config lists local indexes that may be absent
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  case "$(uname -m)" in
    aarch64) quiet "$PIP" install -q torch==2.9.1 torchvision==0.24.1 ;;
    *)       quiet "$PIP" install -q torch==2.14.1 torchvision==0.29.1 ;;
  esac
fi
EXTRAS=(all)  # the [project.optional-dependencies] of pyproject.toml to install: all of them
quiet "$PIP" install -q -e ".[$(IFS=,; echo "${EXTRAS[*]}")]"
"$VENV/bin/python" -c "import encvit, torch, timm, tenseal, streamlit, nbval, playwright, peft, ray, fastapi, uvicorn, httpx"
touch "$VENV/.installed"
