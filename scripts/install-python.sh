#!/usr/bin/env bash
# Python packages the tests use: the official `openai` client, which
# tests/serve.rs runs against `fairyc serve` (tests/serve_openai.py).
# Idempotent: does nothing when it is already importable.
set -euo pipefail
python3 -c "import openai" 2>/dev/null && exit 0
pip=(python3 -m pip install --quiet --disable-pip-version-check "openai>=1.40")
# A Debian-managed Python refuses plain pip installs (PEP 668).
"${pip[@]}" 2>/dev/null || "${pip[@]}" --break-system-packages
python3 -c "import openai; print('installed openai', openai.__version__)"
