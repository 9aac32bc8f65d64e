#!/usr/bin/env bash
# The paper's Ped2 configuration in one call: benchmarks/paper_run.sh DATA OUT [options].
# Everything is in benchmarks/paper_run.py (its docstring says what it does and returns).
cd "$(dirname "$0")/.." && exec python benchmarks/paper_run.py "$@"
