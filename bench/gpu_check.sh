#!/usr/bin/env bash
# One GPU, about 12 minutes (an estimate: not yet run on a GPU): does aqa's GPU path work on this
# machine, and how fast is it?
#   0. this checkout's tests of what a GPU run depends on (on the CPU, seconds): bf16 in all six
#      families against float32, float32 logits, and every shipped recipe config on 1, 2, 4 and 8
#      processes
#   1. bf16 LoRA SFT, GRPO (choice and generate rollouts) and eval on the tiny Qwen2-Audio; then
#      for each other family's tiny model (Kimi-Audio, Qwen2.5-Omni, Qwen3-Omni, Audio Flamingo 3,
#      Voxtral) bf16 LoRA SFT under DeepSpeed ZeRO-2 (the module cast to bf16, autocast off: where
#      Audio Flamingo 3 used to fail), a GRPO step and a bf16 eval
#   2. DeepSpeed ZeRO-2 with one process (configs/accelerate/zero2.yaml), stopped and resumed; the
#      shipped configs/qwen2_audio/grpo.yaml (40 questions a step) launched on every GPU here
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

# The log file of a stage (stage writes its command's output there).
log_of() { echo "$out/logs/$(echo "$1" | tr -c 'A-Za-z0-9\n' '-').log"; }

# stage NAME DETAIL_KIND DETAIL_PATH SECONDS COMMAND...: run it, time it, add its table row.
stage() {
  local name="$1" kind="$2" path="$3" limit_s="$4"
  shift 4
  local log
  log="$(log_of "$name")"
  echo "+ $*" | tee -a "$out/commands.txt"
  [ $dry = 1 ] && return 0
  local t0 t1 status=ok
  t0=$(date +%s.%N)
  timeout "$limit_s" "$@" > "$log" 2>&1 || status="FAILED: logs/$(basename "$log")"
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

# The shipped ZeRO-2 config with N processes and this run's precision: zero2_config N FILE.
zero2_config() {
  [ $dry = 1 ] && return 0
  "$py" - "$2" "$mixed" "$1" <<'EOF' || exit 1
import sys, yaml
cfg = yaml.safe_load(open("configs/accelerate/zero2.yaml"))
cfg.update(num_processes=int(sys.argv[3]), mixed_precision=sys.argv[2])
yaml.safe_dump(cfg, open(sys.argv[1], "w"))
EOF
}
zero2_config 1 "$out/zero2.yaml"
launch1=("$py" -m accelerate.commands.launch --config_file "$out/zero2.yaml" -m aqa)

# 0. The tests a GPU run stands on, here on the CPU.
name="tests: bf16 x 6 families, configs on 1-8 processes"
stage "$name" pytest "$(log_of "$name")" 600 "$py" -m pytest -q -p no:cacheprovider tests/test_six_families.py \
  tests/test_configs.py

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

# The other five families: bf16 SFT as DeepSpeed runs it, a GRPO step, a bf16 eval. LoRA dropout
# 0: Qwen3-Omni's expert LoRA takes none, and one setting serves all five.
for fam in kimi-audio qwen2.5-omni qwen3-omni audio-flamingo3 voxtral; do
  dir="$out/$fam"
  if [ $fam = kimi-audio ]; then build=(model tiny-kimi-audio); else build=(model tiny --family "$fam"); fi
  stage "$fam tiny model" - - 120 "${aqa[@]}" "${build[@]}" --corpus "$data/qa.jsonl" -o "$dir/model"
  fam_common=("model=$dir/model" "$train" "device=$device" "bf16=$bf16" "lora_r=8" "lora_dropout=0" "num_workers=2"
              "resume=never")
  stage "$fam: $prec LoRA SFT, ZeRO-2 (tiny)" train "$dir/sft" "$limit" "${launch1[@]}" sft "${fam_common[@]}" \
    "output_dir=$dir/sft" batch_size=8 micro_batch_size=4 max_steps=4 lr=1e-3
  stage "$fam: $prec GRPO, choice rollouts (tiny)" train "$dir/grpo" "$limit" "${aqa[@]}" grpo "${fam_common[@]}" \
    "output_dir=$dir/grpo" "sft_adapter=$dir/sft/adapter" batch_size=8 micro_batch_size=4 max_steps=2 lr=1e-4 \
    rollout=choice
  stage "$fam: $prec eval (tiny)" eval "$dir/eval" "$limit" "${aqa[@]}" eval --model "$dir/model" \
    --adapter "$dir/grpo/adapter" --data "$data/dev.jsonl" -o "$dir/eval" --dtype "$dtype" --device "$device" \
    --overwrite
done

# 2. ZeRO-2 on one process: the shipped config with one process, stopped after 2 of 4 steps, resumed.
rm -rf "$out/zero2"
zero2=("${launch1[@]}" sft "${common[@]}" "output_dir=$out/zero2" batch_size=8 micro_batch_size=4 max_steps=4
       lr=1e-3)
stage "ZeRO-2, 1 process, stop at 2 (tiny)" - - "$limit" "${zero2[@]}" stop_after=2
stage "ZeRO-2, 1 process, resumed (tiny)" zero2 "$out/zero2" "$limit" "${zero2[@]}"
# The shipped GRPO config as it is (40 questions a step, micro-batches of 5) on every GPU here
# (8 in a dry run, as zero2.yaml; 2 processes with --cpu), on the tiny model: DeepSpeed's own
# batch check and the split of 40 over the processes.
if [ $cpu = 1 ]; then procs=2; elif [ $dry = 1 ]; then procs=8; else
  procs="$("$py" -c "import torch; print(torch.cuda.device_count())")"; fi
zero2_config "$procs" "$out/zero2-$procs.yaml"
stage "shipped GRPO config, ZeRO-2, $procs process(es) (tiny)" train "$out/grpo-shipped" "$limit" "$py" -m \
  accelerate.commands.launch --config_file "$out/zero2-$procs.yaml" --num_processes "$procs" -m aqa grpo \
  configs/qwen2_audio/grpo.yaml "model=$tiny" "sft_adapter=$out/sft/adapter" "$train" "output_dir=$out/grpo-shipped" \
  "device=$device" "bf16=$bf16" max_steps=1 num_workers=2 resume=never

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
