#!/usr/bin/env bash
# One device call of benchmarks/bench_gpu_fits.py (about 8 minutes): gradient costs of the three shipped
# emulators, batched NUTS with payne-default, then exact TransformerPayne NUTS on as many held-out stars as
# the time left allows. Run from the repository root; $OUT receives the JSON and the draws.
# The 2026-11-26 session (one H200, 15 minutes of device time) ran an earlier order of these steps, before
# products were forced to full float32 (stellarfit._precision): see benchmarks/results/gpu_fits_h200.md.
# Needs: .gpu/stars_snr100.npz (bench_gpu_fits.py stars ...) and .whl/ (wheels of the packages the device
# lacks: astropy, pyerfa, astropy-iers-data, arviz-base, arviz-stats, xarray-einstats, blackjax, numpyro).
set -u
OUT=${OUT:-/tmp/out}
LIMIT=${LIMIT:-510}
start=$SECONDS
left() { echo $(( LIMIT - (SECONDS - start) )); }
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import jax, numpyro, flax; print('jax', jax.__version__, 'numpyro', numpyro.__version__, 'flax', flax.__version__, jax.devices())"
bench="python3 benchmarks/bench_gpu_fits.py"
stars=.gpu/stars_snr100.npz
timeout 150 $bench grad --stars $stars --out "$OUT" --seconds 1 --lanes 1 16 128 512 --lanes-tp 1 4 8
timeout ${PAYNE_S:-200} $bench nuts --stars $stars --emulator payne-default --n-stars ${PAYNE_STARS:-16} --out "$OUT"
# TransformerPayne NUTS: the most stars (4, 2 or 1) whose estimated sampling fits the time left
# (estimate: 1,000 iterations x 45 lockstep leapfrog steps x the measured batched gradient; ~100 s of MAP
# and compilation on top)
read -r n_tp warmup samples < <(python3 - "$OUT/grad_device.json" $(( $(left) - 100 )) <<'EOF'
import json, sys
runs = [r for r in json.load(open(sys.argv[1]))["runs"] if r["model_type"] == "transformer_payne"]
budget = float(sys.argv[2])
ms = {r["lanes"]: r["ms_per_call"] for r in runs}
choice = None
for n in (4, 2, 1):
    lanes = 4 * n
    t = ms.get(lanes) or (ms[max(ms)] * lanes / max(ms) if ms else 1e9)
    if 1000 * 45 * t / 1e3 <= budget:
        choice = (n, 500, 500)
        break
if choice is None:
    t = ms.get(4, 1e9)
    iterations = max(200, int(budget / (45 * t / 1e3)))
    choice = (1, iterations // 2, iterations - iterations // 2)
print(*choice)
EOF
)
echo "TransformerPayne NUTS: $n_tp stars, $warmup + $samples"
timeout $(( $(left) - 5 )) $bench nuts --stars $stars --emulator default --n-stars "$n_tp" \
  --num-warmup "$warmup" --num-samples "$samples" --out "$OUT"
ls -la "$OUT"; true
