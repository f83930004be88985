#!/usr/bin/env bash
# The GPU benchmark of the JAX backend, for a machine with JAX (CUDA) and
# PyTorch but no TensorFlow and no network.
#
#   bash tools/gpu_check.sh WHEELS_DIR            # ResNet-50, 224 px, bf16
#   bash tools/gpu_check.sh WHEELS_DIR --dry-run  # tiny, any CPU, ~1 min
#
# WHEELS_DIR holds the pure-Python packages Keras and this project need,
# downloaded in advance (BUILD.md, "Wheels for the GPU check"). The script
# makes a virtual environment that sees the machine's own jax and torch,
# installs Keras and this checkout from WHEELS_DIR without the network,
# checks that TensorFlow is not what runs, and prints the benchmark table:
# our Keras step on JAX beside PyTorch eager and torch.compile, medians of
# five runs of 20 steps. It takes under 8 minutes on one H100/H200.
set -euo pipefail

if [ $# -lt 1 ] || [ ! -d "$1" ]; then
  echo "usage: bash tools/gpu_check.sh WHEELS_DIR [--dry-run]" \
       "(WHEELS_DIR: see BUILD.md, 'Wheels for the GPU check')" >&2
  exit 2
fi
wheels=$(cd "$1" && pwd)
dry_run=${2:-}
repo=$(cd "$(dirname "$0")/../.." && pwd)
[ -f "$repo/pyproject.toml" ] || repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
venv=${GPU_CHECK_VENV:-${TMPDIR:-/tmp}/simclr_tf_gpu_check}

started=$(date +%s)
# Where the machine's jax and torch live (a system Python or a venv).
host_site=$("$python" -c 'import os, jax
print(os.path.dirname(os.path.dirname(jax.__file__)))') || {
  echo "gpu_check: $python has no jax; set PYTHON to the interpreter" \
       "that has jax and torch." >&2
  exit 2
}
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv --system-site-packages "$venv"
  site=$("$venv/bin/python" -c 'import sysconfig
print(sysconfig.get_paths()["purelib"])')
  echo "$host_site" > "$site/_gpu_check_host.pth"
fi
# No index: everything not already on the machine comes from WHEELS_DIR.
"$venv/bin/python" -m pip install --quiet --no-index --find-links "$wheels" \
  -r "$repo/requirements-gpu-check.txt"
"$venv/bin/python" -m pip install --quiet --no-index --no-deps \
  --no-build-isolation -e "$repo"

"$venv/bin/python" - <<'EOF'
import importlib.util, sys
for name in ("jax", "torch", "keras"):
  if importlib.util.find_spec(name) is None:
    sys.exit(f"gpu_check: {name} is not installed here.")
import jax
print("gpu_check: jax", jax.__version__, "devices:", jax.devices())
if importlib.util.find_spec("tensorflow") is not None:
  print("gpu_check: note: TensorFlow is installed; the JAX path does not "
        "import it.")
EOF

if [ "$dry_run" = "--dry-run" ]; then
  model=(--resnet_depth=18 --width_multiplier=0.25 --image_size=32
         --train_batch_size=16 --precision=float32 --benchmark_steps=2
         --benchmark_repeats=1)
else
  model=(--resnet_depth=50 --width_multiplier=1 --image_size=224
         --train_batch_size=256 --precision=mixed_bfloat16
         --benchmark_steps=20 --benchmark_repeats=5)
fi
cd "$repo"
KERAS_BACKEND=jax "$venv/bin/python" -m simclr_tf.tools.benchmark \
  --backend=jax --cifar_stem=false --proj_out_dim=128 "${model[@]}"
echo "gpu_check: done in $(( $(date +%s) - started )) s."
