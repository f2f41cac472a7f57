#!/usr/bin/env bash
# A non-editable `pip install .` works outside the source tree: the `lrtech` command, run_train,
# the shipped flagfiles (configs/*.flags) and pretrained weights are installed, and
# `lrtech train --flagfile=quickstart --epochs=1` trains and exports from another directory.
#
#     .ci/install_check.sh   (.ci/run calls it after the suite; 2 min on 2 busy cores)
#
# Offline and fast: the venv sees this Python's packages (--system-site-packages: TensorFlow,
# scikit-learn) and pip installs only lrtech (--no-deps --no-build-isolation), from a copy of
# the tree so that no build/ or *.egg-info is written into it. Every import must come from the
# venv, not from an editable install of the tree.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
fail() { echo "install_check: FAILED: $*" >&2; exit 1; }

mkdir "$WORK/src" "$WORK/cwd"
tar -C "$ROOT" --exclude=./.git --exclude=./runs --exclude=./build --exclude='*.egg-info' \
  --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache -cf - . |
  tar -C "$WORK/src" -xf -
"$PYTHON" -m venv --system-site-packages "$WORK/venv"
VENV="$WORK/venv"
"$VENV/bin/pip" install -q --no-index --no-deps --no-build-isolation --disable-pip-version-check \
  "$WORK/src"
rm -rf "$WORK/src"  # nothing may be read from the source tree after this

cd "$WORK/cwd"
# Installed where they should be: in the venv, with their data files.
"$VENV/bin/python" - "$VENV" 2>imports.err <<'EOF' || { cat imports.err >&2; fail "installed files"; }
import glob, os, sys
import configs, models, run_train, trainer
venv = os.path.realpath(sys.argv[1])
for module in (configs, models, run_train, trainer):
    path = os.path.realpath(module.__file__)
    assert path.startswith(venv + os.sep), f"{module.__name__} from {path}, not the venv"
assert configs.path("quickstart"), "configs/quickstart.flags not installed"
weights = glob.glob(os.path.join(os.path.dirname(models.__file__), "pretrained", "*.weights.h5"))
assert weights, "models/pretrained/*.weights.h5 not installed"
print("install_check: installed", len(configs.names()), "flagfiles,", len(weights), "weights")
EOF

"$VENV/bin/lrtech" --help | grep -q "lr-find" || fail "lrtech --help lists no lr-find"
"$VENV/bin/lrtech" train --help | grep -q -- "--max_lr" || fail "lrtech train --help: no --max_lr"
# absl's --helpfull exits 1 after printing, as `run_train.py --helpfull` does.
("$VENV/bin/lrtech" train --helpfull || true) | grep -q -- "--max_lr" ||
  fail "lrtech train --helpfull: no --max_lr"

start=$(date +%s)
status=0
"$VENV/bin/lrtech" train --flagfile=quickstart --epochs=1 >out.txt 2>err.txt || status=$?
elapsed=$(($(date +%s) - start))
[ "$status" -eq 0 ] || { tail -20 err.txt >&2; fail "lrtech train exited $status"; }
head -1 out.txt | grep -q "^Run directory: runs/quickstart" ||
  fail "first line: $(head -1 out.txt)"
for f in model.keras model.weights.h5 labels.json saved_model/saved_model.pb; do
  [ -f "runs/quickstart/export/$f" ] || fail "no runs/quickstart/export/$f under the cwd"
done
echo "install_check: ok (lrtech train --flagfile=quickstart --epochs=1: ${elapsed} s)"
