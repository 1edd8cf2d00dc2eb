#!/usr/bin/env bash
# GPU checks in one go (about 5-8 minutes on one H100-class card; budget 10):
#   1. the CUDA tests (tests/inference/test_codec.py::test_cuda, float32/float16/bfloat16);
#   2. bench/gpu.py: golden parity on CUDA in float32 (tokens equal to the CPU's, tiny golden
#      models and real-size random weights), encode/decode RTF at 10 s and 600 s in float32,
#      float16 and bfloat16 with token agreement against float32, peak GPU memory per phase;
#   3. batched tokenisation throughput through the command line (socodec tokenize --device cuda),
#      audio hours per GPU hour, model loading included.
# Everything is written under ${OUT:-bench/.cache/gpu-out} (results-gpu.json, tokenize.json, logs).
# Usage: bash bench/gpu.sh   (from the repository root; PYTHON=... to pick the interpreter)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-bench/.cache/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.csv"
$PY -c "import torch; assert torch.cuda.is_available(), 'torch has no CUDA device'; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" \
    || { echo "gpu.sh: no usable CUDA device" >&2; exit 1; }

echo "== 1. CUDA tests"
$PY -m pytest -q tests/inference/test_codec.py -k cuda -rs 2>&1 | tee "$OUT/cuda-tests.log" | tail -5
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== 2. parity, RTF, agreement, memory"
[ -f bench/.cache/ckpts/chinese-hubert-large-fairseq-ckpt.pt ] || $PY scripts/make_random_checkpoints.py bench/.cache/ckpts
timeout 420 $PY bench/gpu.py --lengths 10 600 --runs 2 --out "$OUT/results-gpu.json" 2>&1 | tee "$OUT/gpu.log" | grep -v '^ *$'
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== 3. socodec tokenize --device cuda (throughput)"
CLIPS="$OUT/clips"
$PY - "$CLIPS" <<'PY'
import sys
from pathlib import Path
import numpy as np
sys.path.insert(0, "bench")
from worker import RATE, speech_like
import soundfile as sf
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
wav, _ = speech_like(120 * 6.0)
rng = np.random.default_rng(0)
start = 0
for i in range(120):  # 120 clips of 3-9 s, about 12 minutes of audio
    n = int(rng.uniform(3.0, 9.0) * RATE)
    sf.write(str(out / f"clip{i:03d}.wav"), wav[start:start + n], RATE, subtype="PCM_16")
    start = (start + n) % (wav.size - 9 * RATE)
PY
for BS in 1 16; do
    rm -rf "$OUT/tokens-$BS"
    t0=$(date +%s.%N)
    timeout 300 $PY -m socodec tokenize "$CLIPS" -o "$OUT/tokens-$BS" --ckpt-dir bench/.cache/ckpts \
        --device cuda --batch-size "$BS" --no-download > "$OUT/tokenize-$BS.log" 2>&1 || status=1
    t1=$(date +%s.%N)
    $PY - "$CLIPS" "$t0" "$t1" "$BS" "$OUT/tokenize.json" <<'PY'
import json, sys
from pathlib import Path
import soundfile as sf
clips, t0, t1, bs, out = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
audio_s = sum(sf.info(str(p)).duration for p in clips.glob("*.wav"))
rec = {"batch_size": bs, "audio_s": audio_s, "wall_s": t1 - t0, "audio_hours_per_gpu_hour": audio_s / (t1 - t0)}
print(json.dumps(rec))
old = json.loads(out.read_text()) if out.is_file() else []
out.write_text(json.dumps(old + [rec], indent=1) + "\n")
PY
done
echo "gpu.sh: done (status $status), results in $OUT"
exit $status
