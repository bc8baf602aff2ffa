#!/usr/bin/env bash
# Type-check bsnnc with mypy. The package's folders (ir/, compiler/, ...) install under the
# dotted names bsnnc.ir, bsnnc.compiler, ... (setuptools package-dir), a mapping mypy cannot
# follow; so this builds a throw-away tree of symlinks with the installed layout and checks it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/bsnnc"
for f in "$root"/bsnnc/*; do ln -s "$f" "$tree/bsnnc/$(basename "$f")"; done
for d in ir compiler backends runtime; do ln -s "$root/$d" "$tree/bsnnc/$d"; done
cd "$root"
MYPYPATH="$tree" exec mypy --config-file "$root/pyproject.toml" -p bsnnc "$@"
