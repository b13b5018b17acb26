#!/usr/bin/env bash
# GPU checks, run on a machine with one CUDA GPU from the repository root:
#   1. the test suite on the GPU (tiny models; the CPU-only 2-process gloo test and the tests that
#      need the offline packages (quickstart check, notebook) are left out),
#   2. the step-overhead benchmark on the GPU (MiniLM-L6 shapes, random weights),
#   3. an end-to-end `distill run` with bf16 mixed precision and a bf16 teacher.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch, transformers, accelerate, datasets; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__, torch.cuda.get_device_name())"

echo "== 1. tests on the GPU"
timeout 300 python3 -m pytest -q -x -p no:cacheprovider tests -k "not two_gloo and not quickstart_validates and not notebook" 2>&1 | tail -15

echo "== 2. step overhead on the GPU"
python3 benchmarks/step_overhead.py --device cuda --random-init --batch 32 --seq 64 --repeats 50
python3 benchmarks/step_overhead.py --device cuda --random-init --batch 128 --seq 128 --repeats 30

echo "== 3. bf16 end to end"
work=$(mktemp -d)
python3 - "$work" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from conftest import recipe_dict, save_tiny_bert, sentiment_rows, write_csv, write_recipe
work = Path(sys.argv[1])
teacher = save_tiny_bert(work / "teacher")
data = write_csv(work / "d.csv", sentiment_rows(2000))
raw = recipe_dict(teacher, data, work / "out", teacher={"dtype": "bfloat16"}, data={"validation_size": 200, "test_size": 200},
                  train={"steps": 60, "batch_size": 32, "mixed_precision": "bf16", "checkpoint_every": 30, "eval_every": 30})
write_recipe(work / "r.yaml", raw)
PY
python3 -m distill.cli run "$work/r.yaml" 2>&1 | grep -v "it/s" | tail -8
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('device', r['machine']['device'], *(f\"{m['name']} {m['metrics']['accuracy']}\" for m in r['models']))" "$work/out/report.json"
