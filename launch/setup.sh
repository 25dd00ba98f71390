#!/usr/bin/env bash
# Creates .venv and installs the project. torch is installed first and pinned through a
# constraints file, so no other requirement can pull the multi-GB CUDA build on CPU machines.
# On GPU machines set TORCH_SPEC (for example TORCH_SPEC="torch==2.13.0") to the build you want.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/pip freeze | grep -i '^torch==' > .venv/constraints.txt
.venv/bin/pip install -q -c .venv/constraints.txt -e ".[dev]"
