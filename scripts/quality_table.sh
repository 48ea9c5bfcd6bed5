#!/usr/bin/env bash
# The README's quality table: doc-llama-26m on WikiText-2 test, GPTQ convention, ctx 1024,
# for FP16, RTN g128 and SqueezeLLM at several outlier budgets, with and without gradients.
# usage: scripts/quality_table.sh [SQZ_BINARY] [OUTDIR]   (SQZ_SHARED: the shared assets)
# Without gradients there is nothing to rank sensitivity by, so the "0.05% sensitive" budget
# becomes 0.05% magnitude outliers and 0.45% becomes 0.45% magnitude: the same budget.
set -euo pipefail
sqz=${1:-build/sqz}
out=${2:-${TMPDIR:-/tmp}/sqz_quality}
shared=${SQZ_SHARED:-../shared}
model=$shared/models/doc-llama-26m
grads=$model/calibration/grads-100x512.safetensors
text=$shared/data/wikitext-2-raw/wiki.test.gptq_join.txt
mkdir -p "$out"
ppl() { "$sqz" perplexity -m "$1" -f "$text" --ppl-method gptq -c 1024 2>/dev/null | tail -1 | sed 's/Final estimate: PPL = //'; }
bpw() { "$sqz" inspect -m "$1" | sed -n 's/^linears: *\([0-9.]* MiB\), \([0-9.]*\) bits per weight.*/\2/p'; }
row() { printf '| %-44s | %6s | %s |\n' "$1" "$2" "$3"; }
echo "| model | bits/weight (linears) | WikiText-2 PPL (gptq, ctx 1024) |"
echo "|---|---|---|"
row "FP16" "16" "$(ppl "$model")"
for b in 3 4; do
  f=$out/rtn$b.sqz
  "$sqz" quantize -m "$model" -o "$f" --method rtn --bits $b --group-size 128 >"$out/rtn$b.log" 2>&1
  row "RTN $b-bit g128" "$b.25" "$(ppl "$f")"
done
for b in 3 4; do
  for g in no yes; do
    for budget in 0 0.05 0.45; do
      args=(--bits $b)
      if [[ $g == yes ]]; then
        args+=(--gradients "$grads")
        case $budget in
          0.05) args+=(--sensitive 0.05) ;;
          0.45) args+=(--sensitive 0.05 --outliers 0.40) ;;
        esac
        label="SqueezeLLM $b-bit, $budget% (gradients)"
      else
        [[ $budget != 0 ]] && args+=(--outliers $budget)
        label="SqueezeLLM $b-bit, $budget% (no gradients)"
      fi
      f=$out/sq$b-$budget-$g.sqz
      "$sqz" quantize -m "$model" -o "$f" "${args[@]}" >"$out/sq$b-$budget-$g.log" 2>&1
      row "$label" "$(bpw "$f")" "$(ppl "$f")"
    done
  done
done
