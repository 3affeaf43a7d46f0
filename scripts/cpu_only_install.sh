#!/usr/bin/env bash
# The zoo installed without CUDA, and checked: PyTorch's CPU wheels first, then the zoo, as the README says.
#
#   scripts/cpu_only_install.sh [VENV]        # VENV: a new virtual environment (default .venv-cpu)
#
# 1. python3 -m venv VENV
# 2. VENV/bin/pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu
# 3. VENV/bin/pip install -e ".[dev]"   (with the torch of step 2 held, so no dependency can swap it for the
#    default CUDA build: torchvision from PyPI, for one, requires the torch release it was built with)
# Then it checks that no nvidia-*, cuda-* or triton package is installed, that torch was built without CUDA, that
# torchvision's compiled operators load against that torch, and that `zoo fit` trains the digits CNN for one
# epoch and writes its test metrics; and prints the environment's size (beside the default install's, with
# DEFAULT_VENV). A few minutes, most of them pip's; not part of CI.
#
# Environment:
#   CPU_TORCH      what step 2 installs, as pip arguments (default: the two packages from PyPI's CPU index above),
#                  e.g. CPU_TORCH="/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
#                  /wheels/torchvision-0.28.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl" where that index is out of reach
#   DEFAULT_VENV   a default install (e.g. .venv from the Quickstart) to measure beside this one
#   WITHOUT_TORCHVISION=1  for a machine with no CPU build of torchvision at hand: removes the one step 3 brings
#                  (PyPI's, built against CUDA torch, which does not load against a CPU torch) and checks the rest;
#                  torchvision's check is reported as not made, and the run cannot pass.
# Exit status: 0 every check passed; 1 a check failed or was not made (each one printed); 2 an install step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=$(realpath -m "${1:-.venv-cpu}")
MARK=.made-by-cpu_only_install  # only an environment this script made is replaced
CPU_TORCH=${CPU_TORCH:-torch torchvision --index-url https://download.pytorch.org/whl/cpu}
PY=$VENV/bin/python
failed=()

step() { echo; echo "== $*"; }
die() { echo "cpu_only_install: $*" >&2; exit 2; }
mib() { du -sm "$1" 2>/dev/null | cut -f1; }

step "1. a new virtual environment: $VENV"
[ -e "$VENV" ] && [ ! -e "$VENV/$MARK" ] && die "$VENV exists and was not made by this script; name another"
rm -rf "$VENV" && python3 -m venv "$VENV" && touch "$VENV/$MARK" || die "could not create $VENV"
"$PY" -m pip install --quiet --upgrade pip || die "could not upgrade pip"

step "2. PyPI's CPU wheels: pip install $CPU_TORCH"
# shellcheck disable=SC2086  # CPU_TORCH is a list of pip arguments
"$PY" -m pip install --progress-bar off $CPU_TORCH || die "step 2 failed"
held=$("$PY" -c "import torch; print(torch.__version__)") || die "torch does not import after step 2"
echo "torch $held"

step "3. the zoo: pip install -e \".[dev]\", torch held at $held"
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==$held" >"$constraints"
"$PY" -m pip install --progress-bar off -e ".[dev]" -c "$constraints" || die "step 3 failed"
if [ "${WITHOUT_TORCHVISION:-0}" = 1 ]; then
  "$PY" -m pip uninstall --yes torchvision || die "could not remove torchvision"
  failed+=("torchvision: not checked (WITHOUT_TORCHVISION=1: no CPU build of it was at hand)")
fi

step "checks"
gpu_packages=$("$PY" -m pip list --format=freeze 2>/dev/null | grep -iE '^(nvidia-|cuda-|triton)' || true)
if [ -n "$gpu_packages" ]; then
  failed+=("CUDA packages installed: $(echo "$gpu_packages" | tr '\n' ' ')")
else
  echo "ok: no nvidia-*, cuda-* or triton package"
fi
if "$PY" -c "import sys, torch; sys.exit(torch.version.cuda is not None or torch.cuda.is_available())"; then
  echo "ok: torch $held, built without CUDA"
else
  failed+=("torch $held is a CUDA build")
fi
if [ "${WITHOUT_TORCHVISION:-0}" != 1 ]; then
  if "$PY" -c "import torch, torchvision.ops as ops; ops.nms(torch.zeros(1, 4), torch.ones(1), 0.5)" 2>/dev/null; then
    echo "ok: torchvision $("$PY" -c 'import torchvision; print(torchvision.__version__)') and its operators load"
  else
    failed+=("torchvision does not load against torch $held: install both from the same CPU index (step 2)")
  fi
fi
run=$(mktemp -d)
ln -s "$PWD/configs" "$run/configs"
if (cd "$run" && "$VENV/bin/zoo" fit --config configs/experiments/digits_cnn.yaml --trainer.max_epochs=1 \
  --trainer.enable_progress_bar=false --pictures=false >"$run/fit.log" 2>&1) &&
  [ -f "$run/runs/digits_cnn/version_0/test_metrics.json" ]; then
  echo "ok: zoo fit (digits CNN, 1 epoch): $(grep -m1 '^test/acc=' "$run/fit.log")"
else
  failed+=("zoo fit failed: $(tail -n 3 "$run/fit.log" | tr '\n' ' ')")
fi
rm -rf "$run"

step "size"
site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$VENV: $(mib "$VENV") MiB, of which torch $(mib "$site/torch") MiB"
if [ -n "${DEFAULT_VENV:-}" ]; then
  dsite=$("$DEFAULT_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$DEFAULT_VENV (default install): $(mib "$DEFAULT_VENV") MiB, of which torch $(mib "$dsite/torch") MiB," \
    "nvidia $(mib "$dsite/nvidia") MiB, triton $(mib "$dsite/triton") MiB"
fi

echo
if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "CPU-only install checked: every check passed"
