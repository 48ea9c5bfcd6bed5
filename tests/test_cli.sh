#!/usr/bin/env bash
# The sqz command end to end: the README's main job, each subcommand's --help, bad input
# giving one line and exit 1, chat driven through stdin, quantize -> inspect -> generate,
# perplexity's last line, KL divergence against saved logits, bench's rows.
# usage: test_cli.sh SQZ_BINARY SOURCE_DIR
set -u
sqz=$1
src=$2
shared=${SQZ_SHARED:-$src/../shared}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

# expect_error NAME PATTERN CMD...: exit code 1 and exactly one error line (informational
# lines such as the sampler settings may come before it), which matches PATTERN
expect_error() {
  local name=$1 pat=$2
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [[ $rc -ne 1 ]]; then bad "$name: exit $rc, expected 1"; cat "$tmp/err"; return; fi
  if [[ $(grep -c "error: " "$tmp/err") -ne 1 ]]; then bad "$name: expected one error line"; cat "$tmp/err"; return; fi
  grep "error: " "$tmp/err" | grep -q -- "$pat" || { bad "$name: error line lacks '$pat'"; cat "$tmp/err"; return; }
  ok
}

# The README's main job on the bundled model.
out=$("$sqz" generate -m "$src/models/stories260K.bin" --tokenizer "$src/models/tok512.model" \
      -p "Once upon a time" -n 60 --temp 0 2>/dev/null)
[[ $out == "Once upon a time, there was a little girl named Lily."* ]] && ok || bad "main job: $out"

for c in generate chat perplexity quantize sweep inspect bench synth calibrate; do
  "$sqz" $c --help >"$tmp/h" 2>&1 && grep -q "Usage" "$tmp/h" && ok || bad "$c --help"
done
"$sqz" >/dev/null 2>&1 && bad "no subcommand should fail" || ok

m="$src/models/stories260K.bin"
t="$src/models/tok512.model"
expect_error unknown-flag "does not exist" "$sqz" generate --bogus
expect_error missing-model "required" "$sqz" generate -p hi
expect_error no-file "No such file" "$sqz" generate -m "$tmp/none.bin" -p hi
expect_error no-tokenizer "pass --tokenizer" "$sqz" generate -m "$m" -p hi
expect_error bad-top-p "top-p" "$sqz" generate -m "$m" --tokenizer "$t" -p hi --top-p 2
expect_error bad-method "ppl-method" "$sqz" perplexity -m "$m" --tokenizer "$t" -f "$t" --ppl-method foo
expect_error bad-device "device" "$sqz" generate -m "$m" --tokenizer "$t" -p hi --device tpu
expect_error bad-bits "bits" "$sqz" quantize -m "$m" --tokenizer "$t" -o "$tmp/x.sqz" --bits 5
expect_error sensitive-needs-grads "gradients" "$sqz" quantize -m "$m" --tokenizer "$t" -o "$tmp/x.sqz" --sensitive 0.1
expect_error bad-shape "shape" "$sqz" synth --shape llama-99b --tokenizer "$t" -o "$tmp/s.sqz"
head -c 1000 "$m" >"$tmp/trunc.bin"
expect_error truncated "expected" "$sqz" generate -m "$tmp/trunc.bin" --tokenizer "$t" -p hi
printf 'garbage' >"$tmp/g.model"
expect_error bad-tokenizer "g.model" "$sqz" generate -m "$m" --tokenizer "$tmp/g.model" -p hi
expect_error context-full "context" "$sqz" generate -m "$m" --tokenizer "$t" -p "Once upon a time there was" -c 4
# a prompt file of three prompts, batched, JSON lines
printf 'Once upon a time\n\nThe cat\nA dog\n' >"$tmp/prompts.txt"
"$sqz" generate -m "$m" --tokenizer "$t" -f "$tmp/prompts.txt" --batch 3 --json -n 8 --temp 0 >"$tmp/j" 2>/dev/null
[[ $(grep -c '"ids":\[' "$tmp/j") -eq 3 ]] && ok || bad "json lines: $(cat "$tmp/j")"

# bench: a row per test, depths (-d) after the plain ones
"$sqz" bench -m "$m" -p 8 -n 4 -d 0,16 -r 1 --batch 1,2 --device cpu -t 1 >"$tmp/b" 2>&1
[[ $(grep -c '^| stories260K.bin' "$tmp/b") -eq 6 ]] && grep -q '| pp8 @ d16 ' "$tmp/b" &&
  grep -q '| tg4 b2 @ d16 ' "$tmp/b" && ok || { bad "bench"; cat "$tmp/b"; }
expect_error bench-depth "-d values must be >= 0" "$sqz" bench -m "$m" -d -1

# quantize -> inspect -> generate with no --tokenizer (embedded)
"$sqz" quantize -m "$m" --tokenizer "$t" -o "$tmp/q.sqz" --bits 4 --outliers 0.5 --report "$tmp/r.html" >"$tmp/q" 2>&1 \
  && grep -q "compression" "$tmp/q" && ok || { bad "quantize"; cat "$tmp/q"; }
expect_error bad-template "chat" "$sqz" quantize -m "$m" --tokenizer "$t" -o "$tmp/x.sqz" --chat-template foo
"$sqz" quantize -m "$m" --tokenizer "$t" -o "$tmp/z.sqz" --bits 4 --chat-template zephyr >/dev/null 2>&1 \
  && "$sqz" inspect -m "$tmp/z.sqz" | grep -q "chat_template: *zephyr" && ok || bad "chat template metadata"
grep -q "<svg" "$tmp/r.html" 2>/dev/null && ! grep -qi "<script" "$tmp/r.html" && ok || bad "html report"
"$sqz" inspect -m "$tmp/q.sqz" >"$tmp/i" 2>&1 && grep -q "q_proj" "$tmp/i" && grep -q "embedded" "$tmp/i" && ok || { bad "inspect"; cat "$tmp/i"; }
"$sqz" generate -m "$tmp/q.sqz" -p "Once upon a time" -n 10 --temp 0 >/dev/null 2>&1 && ok || bad "generate packed"

# chat through stdin: a reply, /help, multi-line input, /clear, /bye
printf 'Hello\n/help\nline one \\\nline two\n/clear\n/bye\n' |
  timeout 60 "$sqz" chat -m "$m" --tokenizer "$t" -n 8 --temp 0 >"$tmp/c" 2>"$tmp/ce"
[[ $? -eq 0 ]] && grep -q "/clear" "$tmp/c" && grep -q "conversation cleared" "$tmp/c" && grep -q "tok/s" "$tmp/ce" \
  && ok || { bad "chat"; cat "$tmp/c" "$tmp/ce"; }

# perplexity's last line, and KL divergence of a model against itself is zero
txt="$tmp/text.txt"
for i in $(seq 1 40); do echo "Once upon a time there was a little girl who loved to play in the park with her dog."; done >"$txt"
"$sqz" perplexity -m "$m" --tokenizer "$t" -f "$txt" -c 64 --chunks 4 --save-logits "$tmp/base.logits" >"$tmp/p" 2>/dev/null
tail -1 "$tmp/p" | grep -Eq '^Final estimate: PPL = [0-9]+\.[0-9]+ \+/- [0-9]+\.[0-9]+$' && ok || { bad "ppl last line"; cat "$tmp/p"; }
"$sqz" perplexity -m "$m" --tokenizer "$t" -f "$txt" -c 64 --chunks 4 --kl-base "$tmp/base.logits" >"$tmp/k" 2>/dev/null
grep -Eq "Mean    KLD:   0\.0000" "$tmp/k" && grep -q "Same top p: 100.000" "$tmp/k" && ok || { bad "kl self"; cat "$tmp/k"; }
"$sqz" perplexity -m "$tmp/q.sqz" -f "$txt" -c 64 --chunks 4 --kl-base "$tmp/base.logits" >"$tmp/k2" 2>/dev/null
grep -q "Mean    KLD" "$tmp/k2" && ! grep -Eq "Mean    KLD:   0\.000000" "$tmp/k2" && ok || { bad "kl 4-bit"; cat "$tmp/k2"; }
expect_error kl-mismatch "ctx" "$sqz" perplexity -m "$m" --tokenizer "$t" -f "$txt" -c 32 --kl-base "$tmp/base.logits"

echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
