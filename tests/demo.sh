#!/usr/bin/env bash
# The main job shown by `make demo`. Runs with .venv/bin first on PATH.
set -euo pipefail
cfsctl --version
