#!/bin/sh
# test_checkpoint_bad.sh: `dualpipe train --resume` refuses a damaged checkpoint before it
# trains or writes anything: a truncated file, a header that lies about offsets or sizes, a
# wrong dtype or shape, a missing tensor, a checksum mismatch, a missing file, a directory
# without an index, an index that is not JSON or breaks a rule. Each: exit 2, the message naming
# the file, the tensor and the rule, the checkpoint directory and --save-params' file untouched.
# The cases that rewrite a header and fix the index's size and CRC-32 to match use python3
# (skipped without it): they reach the safetensors reader's own checks.
top_builddir=${top_builddir:-.}
tool="$top_builddir/tools/dualpipe"
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0; failed=0
ok() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; fi; }
skip() { n=$((n + 1)); echo "ok $n - # SKIP $1"; }
small="--schedule dualpipev --pp 2 --hidden 16 --tokens 4 --chunks 8 --threads 1 --steps 4"
"$tool" train $small --save "$tmp/good" --save-every 2 > "$tmp/out" 2>&1
ok $? "a run of 4 steps writes checkpoints of steps 2 and 4"
step=step-00000004
tensor=layers.1.linear1.weight # in rank-1.safetensors (dualpipev: rank 1 holds stages 1 and 2)
have_python=0
command -v python3 > /dev/null 2>&1 && have_python=1

# tamper.py FILE OLD NEW: replaces text in the JSON header of a checkpoint's FILE (the header
# re-padded, offsets kept) and writes the file's new size and CRC-32 into the index beside it
cat > "$tmp/tamper.py" <<'PY'
import json, os, re, struct, sys, zlib
path, old, new = sys.argv[1], sys.argv[2], sys.argv[3]
raw = open(path, "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
header = raw[8:8 + n].decode().rstrip(" ")
assert old in header, (old, header[:200])
header = header.replace(old, new, 1).encode()
header += b" " * (-len(header) % 8)
raw = struct.pack("<Q", len(header)) + header + raw[8 + n:]
open(path, "wb").write(raw)
index = os.path.join(os.path.dirname(path), "index.json")
text = open(index).read()
name = os.path.basename(path)
entry = '{"name": "%s", "bytes": [0-9]+, "crc32": "[0-9a-f]+"' % re.escape(name)
fixed = '{"name": "%s", "bytes": %d, "crc32": "%08x"' % (name, len(raw), zlib.crc32(raw) & 0xffffffff)
assert re.search(entry, text)
open(index, "w").write(re.sub(entry, fixed, text))
PY

# refuse WHAT PATTERN [python] -- COMMANDS...: a fresh copy of the good checkpoints in $c, the
# commands damage it, then --resume $c --save $c --save-params $tmp/kept must exit 2 with
# PATTERN in its message and leave $c and $tmp/kept as they were
refuse() {
  what=$1 pattern=$2; shift 2
  if [ "$1" = python ]; then
    shift
    if [ $have_python = 0 ]; then skip "$what: python3 is needed to forge a consistent index"; return; fi
  fi
  [ "$1" = -- ] && shift
  c="$tmp/case"; rm -rf "$c"; cp -r "$tmp/good" "$c"
  d="$c/$step"
  eval "$*" || { ok 1 "$what: damaging the copy failed"; return; }
  echo kept > "$tmp/kept"
  (cd "$c" && find . -type f | sort | xargs cksum) > "$tmp/before"
  "$tool" train $small --steps 6 --resume "$c" --save "$c" --save-params "$tmp/kept" > "$tmp/out" 2>&1
  status=$?
  (cd "$c" && find . -type f | sort | xargs cksum) > "$tmp/after"
  [ $status -eq 2 ] && grep -q -- "$pattern" "$tmp/out" && cmp -s "$tmp/before" "$tmp/after" &&
    [ "$(cat "$tmp/kept")" = kept ] && ! grep -q '^step' "$tmp/out"
  ok $? "$what: exit $status, $(grep -m1 error "$tmp/out" | sed "s|$tmp/||g" | cut -c1-220)"
  # dualpipe checkpoint finds every damage too, with the same message; with --files-only all but
  # a consistent file whose tensors the model does not have (model=1 around such cases)
  "$tool" checkpoint "$c" > "$tmp/check.out" 2>&1
  status=$?
  [ $status -eq 2 ] && grep -q -- "$pattern" "$tmp/check.out" && ! grep -q ': whole: ' "$tmp/check.out"
  ok $? "$what: dualpipe checkpoint says so too (exit $status)"
  [ $status -eq 2 ] || sed 's/^/# /' "$tmp/check.out" | head -n 20
  "$tool" checkpoint --files-only "$c" > "$tmp/check.out" 2>&1
  status=$?
  if [ "${model:-0}" = 0 ]; then
    [ $status -eq 2 ] && grep -q -- "$pattern" "$tmp/check.out"
    ok $? "$what: and with --files-only (exit $status)"
  else
    [ $status -eq 0 ] && grep -q ": whole: step 4" "$tmp/check.out" && grep -q 'not checked against the model' "$tmp/check.out"
    ok $? "$what: --files-only, not building the model, finds the files whole (exit $status)"
  fi
}

refuse "a truncated file" "rank-1.safetensors: [0-9]* bytes, the index says [0-9]*: the file is truncated" -- \
  'head -c 5000 "$d/rank-1.safetensors" > "$tmp/t" && cat "$tmp/t" > "$d/rank-1.safetensors"'
refuse "a checksum mismatch" "rank-1.safetensors: checksum mismatch: CRC-32 [0-9a-f]*, the index says" -- \
  'printf "\\377" | dd of="$d/rank-1.safetensors" bs=1 seek=3000 conv=notrunc 2>/dev/null'
refuse "a file of the index missing" "rank-0.safetensors: No such file or directory (named by the index)" -- \
  'rm "$d/rank-0.safetensors"'
refuse "a directory without an index" "$step: no index.json: not a complete checkpoint" -- 'rm "$d/index.json"'
refuse "an index that is not JSON (cut short)" "index.json: line [0-9]*: .*(not valid JSON)" -- \
  'head -c 300 "$d/index.json" > "$tmp/t" && cat "$tmp/t" > "$d/index.json"'
refuse "an index that is not JSON (a stray comma)" "index.json: line 4.*(not valid JSON)" -- \
  'sed -i "s/\"step\": 4,/\"step\": 4,,/" "$d/index.json"'
refuse "an index of another version" '"version" is 2: this dualpipe reads version 1' -- \
  'sed -i "s/\"version\": 1/\"version\": 2/" "$d/index.json"'
refuse "an index whose step is not a number" '"step" must be a number' -- \
  'sed -i "s/\"step\": 4/\"step\": \"4\"/" "$d/index.json"'
refuse "an index naming a file outside its directory" '"files\[0\].name" must be 1 to 63 letters' -- \
  'sed -i "s|\"rank-0.safetensors\"|\"../rank-0.safetensors\"|" "$d/index.json"'
refuse "an index whose checksum is not hexadecimal" '"files\[1\].crc32" must be 8 hexadecimal digits' -- \
  'sed -i "/rank-1/ s/\"crc32\": \"[0-9a-f]*\"/\"crc32\": \"xyz\"/" "$d/index.json"'
refuse "an index whose data position is not its step" '"data.position" is 3 but "step" is 4' -- \
  'sed -i "s/\"position\": 4/\"position\": 3/" "$d/index.json"'
refuse "a header whose offsets run past the data" "tensor \"$tensor\": data_offsets \[.*\] out of range" python -- \
  'python3 "$tmp/tamper.py" "$d/rank-1.safetensors" "\"data_offsets\":[0," "\"data_offsets\":[90000,"'
refuse "a header whose shape does not fit its bytes" "tensor \"$tensor\": its shape and dtype F32 need 4352 bytes" python -- \
  'python3 "$tmp/tamper.py" "$d/rank-1.safetensors" "\"$tensor\":{\"dtype\":\"F32\",\"shape\":[64,16]" "\"$tensor\":{\"dtype\":\"F32\",\"shape\":[68,16]"'
model=1
refuse "a wrong dtype" "tensor \"$tensor\" is I32 \[64, 16\], expected F32 \[64, 16\]" python -- \
  'python3 "$tmp/tamper.py" "$d/rank-1.safetensors" "\"$tensor\":{\"dtype\":\"F32\"" "\"$tensor\":{\"dtype\":\"I32\""'
refuse "a wrong shape" "tensor \"$tensor\" is F32 \[16, 64\], expected F32 \[64, 16\]" python -- \
  'python3 "$tmp/tamper.py" "$d/rank-1.safetensors" "\"$tensor\":{\"dtype\":\"F32\",\"shape\":[64,16]" "\"$tensor\":{\"dtype\":\"F32\",\"shape\":[16,64]"'
refuse "a missing tensor" "no file holds tensor \"$tensor\" (missing)" python -- \
  'python3 "$tmp/tamper.py" "$d/rank-1.safetensors" "\"$tensor\"" "\"layers.1.linear1.other\""'
model=0
refuse "a tensor in two files" "tensor \"layers.0.linear1.weight\" is both in" python -- \
  'python3 "$tmp/tamper.py" "$d/rank-1.safetensors" "\"$tensor\"" "\"layers.0.linear1.weight\""'
refuse "an index whose ep is 0" "\"run.ep\" must be a whole number from 1" -- \
  'sed -i "s/\"ep\": 1/\"ep\": 0/" "$d/index.json"'
refuse "an index whose ep is not a number" "\"run.ep\" must be a number" -- \
  'sed -i "s/\"ep\": 1/\"ep\": \"1\"/" "$d/index.json"'
# the damaged checkpoint is never passed over for an older one: refused, not resumed from step 2
refuse "latest naming a damaged checkpoint" "checksum mismatch" -- \
  'printf "\\377" | dd of="$d/rank-0.safetensors" bs=1 seek=3000 conv=notrunc 2>/dev/null'
# and the good ones resume
"$tool" train $small --steps 6 --resume "$tmp/good" > "$tmp/out" 2>&1 && grep -q "resumed from $tmp/good/$step" "$tmp/out"
ok $? "the undamaged checkpoint resumes"
# an index whose model is not its files' (the index has no checksum of its own): dualpipe
# checkpoint builds the model the index describes and finds the tensors of another shape
rm -rf "$tmp/other" && cp -r "$tmp/good" "$tmp/other" && sed -i 's/"hidden": 16,/"hidden": 32,/' "$tmp/other/$step/index.json"
"$tool" checkpoint "$tmp/other" > "$tmp/out" 2>&1
status=$?
[ $status -eq 2 ] && grep -q 'rank-[0-9].safetensors: tensor "layers.0.[a-z0-9.]*" is F32 \[[0-9, ]*\], expected F32 \[[0-9, ]*32[0-9, ]*\]' "$tmp/out"
ok $? "dualpipe checkpoint, an index saying hidden 32 over files of hidden 16: exit $status, $(grep -m1 error "$tmp/out" | sed "s|$tmp/||g" | cut -c1-200)"
"$tool" checkpoint --files-only "$tmp/other" > "$tmp/out" 2>&1 && grep -q ': whole: ' "$tmp/out"
ok $? "and --files-only, which builds no model, cannot tell (exit 0)"
# an index describing a model far larger than its files: refused before the model is built
rm -rf "$tmp/huge" && cp -r "$tmp/good" "$tmp/huge" &&
  sed -i 's/"hidden": 16, "ffn": 64,/"hidden": 8192, "ffn": 32768,/' "$tmp/huge/$step/index.json"
"$tool" checkpoint "$tmp/huge" > "$tmp/out" 2>&1
status=$?
[ $status -eq 2 ] && grep -q 'its index describes a model of [0-9]* parameters ([0-9]* bytes in fp32), more than its files. [0-9]* bytes hold' "$tmp/out"
ok $? "dualpipe checkpoint, an index saying hidden 8192 over files of hidden 16: refused unbuilt, exit $status, $(grep -m1 error "$tmp/out" | sed "s|$tmp/||g" | cut -c1-200)"
# an index naming what this dualpipe cannot build: dualpipe checkpoint names the field and value
unknown() { # WHAT SED PATTERN
  rm -rf "$tmp/unknown" && cp -r "$tmp/good" "$tmp/unknown" && sed -i "$2" "$tmp/unknown/$step/index.json"
  "$tool" checkpoint "$tmp/unknown" > "$tmp/out" 2>&1
  status=$?
  [ $status -eq 2 ] && grep -q -- "$step/index.json: $3" "$tmp/out"
  ok $? "dualpipe checkpoint, $1: exit $status, $(grep -m1 error "$tmp/out" | sed "s|$tmp/||g" | cut -c1-160)"
}
unknown "an unknown dtype" 's/"dtype": "fp32"/"dtype": "fp16"/' '"model.dtype" is "fp16", which this dualpipe does not know (it knows fp32, bf16)'
unknown "an unknown loss" 's/"loss": "mse"/"loss": "hinge"/' '"model.loss" is "hinge", which this dualpipe does not know'
unknown "an unknown optimizer" 's/"kind": "adamw"/"kind": "lion"/' '"optimizer.kind" is "lion", which this dualpipe does not know'
unknown "an unknown layer kind" '0,/"residual"/s//"resdual"/' '"model.layer_kinds"\[0\]: unknown block kind .resdual.'
unknown "MoE layers without their routing" '0,/"residual"/s//"moe"/' 'the model has MoE layers but no "moe" object'
# an index written before "ep" was recorded (none: 1) resumes alike
rm -rf "$tmp/noep" && cp -r "$tmp/good" "$tmp/noep" && sed -i 's/"ep": 1, //' "$tmp/noep/$step/index.json" &&
  ! grep -q '"ep"' "$tmp/noep/$step/index.json" &&
  "$tool" train $small --steps 6 --resume "$tmp/noep" > "$tmp/out" 2>&1 && grep -q "resumed from $tmp/noep/$step" "$tmp/out"
ok $? "an index without \"ep\" (an older checkpoint's) resumes"
echo "1..$n"
exit $failed
