#!/usr/bin/env bash
# GPU checks, one short script for a machine with one CUDA GPU, run from the repository root with
# the anchor beside it (../shared/bench/textbook_kd.py: the textbook KD step written by hand, so
# each GPU figure below is a ratio against it measured on the same card). About 9 minutes:
#   0. the anchor: textbook KD step times and peak memory (BERT-base -> 6 layers, Marian-size),
#   1. the bf16, LoRA and family tests on the GPU (tiny models),
#   2. distill's step overhead and KD memory on the GPU (bf16 teacher),
#   3. a bf16 end-to-end run of each task (classification, translation, causal_lm), every stage,
#      teacher.dtype auto (bf16 on the card), and one fp16 run,
#   4. FSDP2 through `accelerate launch --use_fsdp --fsdp_version 2` on the one card: the sharded
#      code paths (gathered save, sharded checkpoints, resume, the teacher sharded for inference
#      with teacher.shard=true, moved to the card as it is sharded) end to end,
#   5. DeepSpeed ZeRO-3 through `accelerate launch --use_deepspeed --zero_stage 3` on the card, bf16,
#      where DeepSpeed imports (installed, or carried in .venv/deepspeed as `make install` puts it).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=4
out=${OUT:-$(mktemp -d)}
python3 -c "import torch, transformers, accelerate, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__, torch.cuda.get_device_name())"

echo "== 0. anchor: ../shared/bench/textbook_kd.py"
anchor=../shared/bench/textbook_kd.py
[ -f "$anchor" ] && timeout 120 python3 "$anchor" --out "$out/textbook_kd.json" 2>&1 | tail -20

echo "== 1. tests on the GPU"
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_bf16.py tests/test_lora.py tests/test_saved_artefacts.py 2>&1 | tail -6

echo "== 2. step overhead and KD memory on the GPU"
timeout 60 python3 benchmarks/step_overhead.py --device cuda --random-init --batch 32 --seq 64 --repeats 50
timeout 60 python3 benchmarks/step_overhead.py --device cuda --random-init --batch 128 --seq 128 --repeats 30
timeout 90 python3 benchmarks/kd_memory.py --device cuda --teacher-dtype bfloat16 --batch 32 --src-len 64 --tgt-len 64

echo "== 3. bf16 (and fp16) end to end, every task"
python3 - "$out" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from conftest import *  # noqa: F403  (tiny models and data built from configs)
from test_causal_lm import causal_recipe, save_causal
w = Path(sys.argv[1])
data = write_csv(w / "d.csv", sentiment_rows(2000))
pairs = write_csv(w / "p.csv", translation_rows(2000))
common = {"mixed_precision": "bf16", "checkpoint_every": 30, "eval_every": 30, "baseline": True, "steps": 60}
write_recipe(w / "cls.yaml", recipe_dict(save_tiny_bert(w / "bert"), data, w / "cls", data={"validation_size": 200, "test_size": 200},
             loss={"hidden": "mse", "hidden_weight": 1.0}, train={**common, "batch_size": 32}))
write_recipe(w / "cls16.yaml", recipe_dict(w / "bert", data, w / "cls16", data={"validation_size": 200, "test_size": 200},
             train={**common, "mixed_precision": "fp16", "batch_size": 32}))
write_recipe(w / "tr.yaml", translation_recipe(save_tiny_marian(w / "marian"), pairs, w / "tr", teacher={"cache": True},
             loss={"sequence_kd": "mix"}, train=common))
write_recipe(w / "lm.yaml", causal_recipe(save_causal(w / "llama", "llama"), pairs, w / "lm",
             loss={"sequence_kd": "mix", "on_policy": 0.5}, train=common))
PY
for r in cls cls16 tr lm; do
  echo "-- $r"
  timeout 150 python3 -m distill.cli run "$out/$r.yaml" 2>&1 | grep -v "it/s" | tail -5
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['machine']['device_name'], r['mixed_precision'], *(f\"{m['name']} {m['precision']} {r['primary_metric']} {m['metrics'][r['primary_metric']]:.4f}\" for m in r['models']))" "$out/$r/report.json"
done

echo "== 4. FSDP2 on the card, with a kill and --resume"
launch="python3 -m accelerate.commands.launch --use_fsdp --fsdp_version 2 --num_processes 1 --mixed_precision bf16"
timeout 120 $launch -m distill.cli run "$out/cls.yaml" output.dir="$out/fsdp" train.mixed_precision= train.steps=90 teacher.shard=true 2>&1 | grep -v "it/s" | tail -4
timeout 60 $launch -m distill.cli run "$out/cls.yaml" output.dir="$out/fsdp_kill" train.mixed_precision= train.steps=90 teacher.shard=true train.baseline=false >/dev/null 2>&1 &
pid=$!
while [ ! -d "$out/fsdp_kill/stages/distill/checkpoints/step_60" ] && kill -0 $pid 2>/dev/null; do sleep 0.2; done
pkill -9 -f "fsdp_kill" ; wait $pid 2>/dev/null
timeout 120 $launch -m distill.cli run "$out/cls.yaml" output.dir="$out/fsdp_kill" train.mixed_precision= train.steps=90 teacher.shard=true train.baseline=false --resume 2>&1 | grep -v "it/s" | tail -3
python3 - "$out" <<'PY'
import sys
from pathlib import Path
import torch
from safetensors.torch import load_file
w = Path(sys.argv[1])
a, b = (load_file(str(w / d / "student" / "model.safetensors")) for d in ("fsdp", "fsdp_kill"))
print("FSDP2 student gathered:", sorted(a)[:2], "...", len(a), "tensors; killed + resumed equals uninterrupted:",
      all(torch.equal(a[k], b[k]) for k in a))
import json
print("teacher sharded:", json.loads((w / "fsdp" / "results.json").read_text()).get("teacher_sharded"))
PY

echo "== 5. DeepSpeed ZeRO-3 on the card (bf16)"
ds_path="$PWD/.venv/deepspeed"
if PYTHONPATH="$ds_path:$PYTHONPATH" python3 -c "import deepspeed" 2>/dev/null; then
  PYTHONPATH="$ds_path:$PYTHONPATH" PATH="$ds_path/bin:$PATH" timeout 90 python3 -m accelerate.commands.launch \
    --use_deepspeed --zero_stage 3 --num_processes 1 --mixed_precision bf16 -m distill.cli run "$out/lm.yaml" \
    output.dir="$out/zero3" train.mixed_precision= 2>&1 | grep -v "it/s" | tail -4
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('ZeRO-3:', r['mixed_precision'], *(f\"{m['name']} {m['precision']} {r['primary_metric']} {m['metrics'][r['primary_metric']]:.4f}\" for m in r['models']))" "$out/zero3/report.json"
else
  echo "DeepSpeed does not import here: skipped"
fi
