#!/usr/bin/env bash
# One GPU, under 8 minutes: does aqa's GPU path work on this machine, and how fast is it?
#   1. bf16 LoRA SFT, GRPO (choice and generate rollouts) and eval on the tiny model
#   2. DeepSpeed ZeRO-2 with one process (configs/accelerate/zero2.yaml), stopped and resumed
#   3. bench/speed.py --device cuda --shapes 7b (Qwen2-Audio-7B-Instruct's shapes, random weights)
#   4. a forward pass of a Kimi-Audio-7B-Instruct-shaped model (random weights) and its peak memory
# then prints one table, written to OUT/gpu_check.md as a bench/RESULTS.md section.
#
#   bench/gpu_check.sh [--out DIR] [--append] [--cpu] [--dry-run]
#     --out DIR   where runs, logs and the table go (default runs/gpu-check)
#     --append    also append the table to bench/RESULTS.md
#     --cpu       every stage on the CPU at tiny shapes: checks this script itself (minutes)
#     --dry-run   print the commands, run nothing
# PYTHON names the interpreter (default: .venv/bin/python, else python). Each stage has its own
# time limit; a stage that fails or times out is marked in the table and the rest still run.
# Needs the `deepspeed` extra for stage 2 (pip install -e .[deepspeed]).
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
out=runs/gpu-check append=0 cpu=0 dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --append) append=1; shift ;;
    --cpu) cpu=1; shift ;;
    --dry-run) dry=1; shift ;;
    *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
if [ -n "${PYTHON:-}" ]; then py="$PYTHON"; elif [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python; fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's aqa
export PYTHONUNBUFFERED=1
if [ $cpu = 1 ]; then
  device=cpu bf16=false dtype=fp32 prec=fp32 shapes=tiny kimi_shapes=tiny mixed=no clip=2 limit=300
else
  device=cuda bf16=true dtype=bf16 prec=bf16 shapes=7b kimi_shapes=7b mixed=bf16 clip=30 limit=240
  if [ $dry = 0 ] && ! "$py" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "no CUDA GPU visible to $py (use --cpu to check the script on the CPU)" >&2
    exit 1
  fi
fi
mkdir -p "$out/logs"
: > "$out/rows.tsv"
: > "$out/commands.txt"

# stage NAME DETAIL_KIND DETAIL_PATH SECONDS COMMAND...: run it, time it, add its table row.
stage() {
  local name="$1" kind="$2" path="$3" limit_s="$4"
  shift 4
  local slug
  slug="$(echo "$name" | tr -c 'A-Za-z0-9\n' '-')"
  echo "+ $*" | tee -a "$out/commands.txt"
  [ $dry = 1 ] && return 0
  local t0 t1 status=ok
  t0=$(date +%s.%N)
  timeout "$limit_s" "$@" > "$out/logs/$slug.log" 2>&1 || status="FAILED: logs/$slug.log"
  t1=$(date +%s.%N)
  local info=""
  [ "$status" = ok ] && [ "$kind" != - ] && info="$("$py" bench/gpu_check.py detail "$kind" "$path")"
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(awk "BEGIN { printf \"%.0f\", $t1 - $t0 }")" "$info" \
    >> "$out/rows.tsv"
  echo "  $status"
}

aqa=("$py" -m aqa)
tiny="$out/tiny" data="$out/data"
train="train_data=[$data/train.jsonl]"
common=("model=$tiny" "$train" "device=$device" "bf16=$bf16" "lora_r=8" "num_workers=2")

# 1. The tiny model, bf16 training and evaluation (fp32 with --cpu).
stage "tiny data" - - 120 "${aqa[@]}" data synth -n 40 --duration 2 --workers 2 -o "$data"
stage "tiny model" - - 120 "${aqa[@]}" model tiny --corpus "$data/qa.jsonl" --audio-seconds 2 -o "$tiny"
stage "$prec LoRA SFT (tiny)" train "$out/sft" "$limit" "${aqa[@]}" sft "${common[@]}" "output_dir=$out/sft" \
  batch_size=8 micro_batch_size=4 max_steps=10 lr=1e-3 resume=never
stage "$prec GRPO, choice rollouts (tiny)" train "$out/grpo-choice" "$limit" "${aqa[@]}" grpo "${common[@]}" \
  "output_dir=$out/grpo-choice" "sft_adapter=$out/sft/adapter" batch_size=8 micro_batch_size=4 max_steps=5 lr=1e-4 \
  rollout=choice resume=never
stage "$prec GRPO, generate rollouts (tiny)" train "$out/grpo-generate" "$limit" "${aqa[@]}" grpo "${common[@]}" \
  "output_dir=$out/grpo-generate" "sft_adapter=$out/sft/adapter" batch_size=4 micro_batch_size=4 max_steps=2 \
  lr=1e-4 rollout=generate max_new_tokens=4 resume=never
stage "$prec eval, 2 option orders (tiny)" eval "$out/eval" "$limit" "${aqa[@]}" eval --model "$tiny" \
  --adapter "$out/grpo-choice/adapter" --data "$data/dev.jsonl" -o "$out/eval" --shuffles 2 --dtype "$dtype" \
  --device "$device" --overwrite

# 2. ZeRO-2 on one process: the shipped config with one process, stopped after 2 of 4 steps, resumed.
[ $dry = 1 ] || "$py" - "$out/zero2.yaml" "$mixed" <<'EOF' || exit 1
import sys, yaml
cfg = yaml.safe_load(open("configs/accelerate/zero2.yaml"))
cfg.update(num_processes=1, mixed_precision=sys.argv[2])
yaml.safe_dump(cfg, open(sys.argv[1], "w"))
EOF
rm -rf "$out/zero2"
zero2=("$py" -m accelerate.commands.launch --config_file "$out/zero2.yaml" -m aqa sft "${common[@]}"
       "output_dir=$out/zero2" batch_size=8 micro_batch_size=4 max_steps=4 lr=1e-3)
stage "ZeRO-2, 1 process, stop at 2 (tiny)" - - "$limit" "${zero2[@]}" stop_after=2
stage "ZeRO-2, 1 process, resumed (tiny)" zero2 "$out/zero2" "$limit" "${zero2[@]}"

# 3. Speed at Qwen2-Audio-7B's shapes.
rm -f "$out/speed.md"
# (At tiny shapes a sampled completion soon holds the audio token, which transformers' plain
# path refuses; 2 new tokens keep that unlikely.)
stage "speed, Qwen2-Audio $shapes shapes" speed "$out/speed.md" 300 "$py" bench/speed.py --device "$device" \
  --shapes "$shapes" --repeats 2 --clip-seconds 10 --new-tokens "$([ $cpu = 1 ] && echo 2 || echo 8)" \
  --results "$out/speed.md"

# 4. Kimi-Audio at 7B shapes: one batched scoring forward, its peak memory.
stage "Kimi-Audio $kimi_shapes forward" kimi "$out/logs/Kimi-Audio-$kimi_shapes-forward.log" 240 "$py" \
  bench/gpu_check.py kimi-forward --device "$device" --shapes "$kimi_shapes" --batch 4 --clip-seconds "$clip"

[ $dry = 1 ] && exit 0
"$py" bench/gpu_check.py table "$out" --command "bench/gpu_check.sh$([ $cpu = 1 ] && echo ' --cpu')"
rc=$?
if [ $append = 1 ]; then
  "$py" - "$out/gpu_check.md" <<'EOF'
import sys
from pathlib import Path
res = Path("bench/RESULTS.md")
section = Path(sys.argv[1]).read_text().strip().split("\n## ")[-1]
with res.open("a") as fh:
    fh.write("\n## " + section + "\n")
print(f"appended to {res}")
EOF
fi
exit $rc
