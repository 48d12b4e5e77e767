#!/usr/bin/env bash
# The WebGPU benchmarks on a real GPU, from the self-contained .gpu-bench/ folder
# (scripts/prepare-gpu-bench.mjs), on a machine that may have no Node, no node_modules and no
# Vulkan loader (the device tool's H200 machine: bench/README.md, "On a lent GPU").
#
#   bench/gpu.sh [--dry-run] [--allow-software] [--prepare] [OUTDIR]
#
#   OUTDIR            where the results go (default: $OUT when set, else .gpu-bench/out):
#                     adapter.json, webgpu.json, steps.json, sam.json, gpu.md (every table), gpu.log
#   --dry-run         tiny sizes and few repetitions, any adapter (SwiftShader too): checks that the
#                     whole script runs, here, in a minute or two; its figures mean nothing
#   --allow-software  full sizes even on a CPU-emulated adapter (normally refused within seconds)
#   --prepare         (re)build .gpu-bench/ first; needs node_modules, so only where they are
#
# Order: unpack Node and Dawn, find the Vulkan loader and the NVIDIA driver, print the adapter and
# stop (exit 3) if it is a software one, then webgpu.bench (matmul sizes, elementwise GB/s),
# steps.bench (SGD and SAM steps of the MLP, the small ResNet and the ViT; webgpu family only) and
# sam.bench (fused vs per-tensor optimizer side on the MLP / CNN / ViT parameter lists, SAM step
# costs; webgpu only), each
# against tfjs-backend-webgpu and jax-js where the bench has them, each under its own time limit
# so that the whole run stays under 6 minutes. A bench that fails does not stop the others; the
# exit code is 1 if any failed.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
dry=0 allow=0 prepare=0 outdir=""
for a in "$@"; do
  case "$a" in
    --dry-run) dry=1 ;;
    --allow-software) allow=1 ;;
    --prepare) prepare=1 ;;
    -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gpu.sh: unknown option $a (see bench/gpu.sh --help)" >&2; exit 2 ;;
    *) outdir="$a" ;;
  esac
done
outdir="${outdir:-${OUT:-.gpu-bench/out}}"
mkdir -p "$outdir" && outdir="$(cd "$outdir" && pwd)" || { echo "gpu.sh: cannot create $outdir" >&2; exit 2; }
log="$outdir/gpu.log"
: >"$log"
say() { echo "gpu.sh [$((SECONDS))s]: $*" | tee -a "$log" >&2; }
fail() { say "FAILED: $1"; exit "${2:-1}"; }

gb="$here/.gpu-bench"
if [ "$prepare" = 1 ]; then
  node scripts/prepare-gpu-bench.mjs 2>&1 | tee -a "$log" || fail "scripts/prepare-gpu-bench.mjs failed"
fi
[ -f "$gb/bench/webgpu.bench.mjs" ] || fail "no $gb/bench: run 'node scripts/prepare-gpu-bench.mjs' here first (and name .gpu-bench in the device tool's carry)" 2

# xz or, where it is missing, Python's lzma: one of the two is on any machine that runs this.
unxz_to() {
  if command -v xz >/dev/null; then xz -dc "$1" >"$2.part"; else python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2.part"; fi && mv "$2.part" "$2"
}

# Node: the machine's own if it is 20 or newer, else the one prepare-gpu-bench.mjs packed.
node_bin=""
if command -v node >/dev/null && [ "$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)" -ge 20 ]; then
  node_bin="$(command -v node)"
elif [ -f "$gb/node.xz" ]; then
  node_bin="/tmp/flatgrad-gpu-node/node"
  # Unpacked once per machine; again when .gpu-bench carries another version.
  if [ ! -x "$node_bin" ] || [ "$("$node_bin" --version 2>/dev/null)" != "$(cat "$gb/node.version" 2>/dev/null)" ]; then
    mkdir -p /tmp/flatgrad-gpu-node && unxz_to "$gb/node.xz" "$node_bin" && chmod +x "$node_bin" || fail "could not unpack $gb/node.xz" 2
  fi
else
  fail "no Node >= 20 on this machine and no $gb/node.xz" 2
fi
say "node $("$node_bin" --version) at $node_bin"

# The bundles and Dawn run from a scratch copy: unpacked into .gpu-bench, dawn.node (21 MB) would
# travel with the next call and push the working tree past the device tool's 64 MiB. The benches
# also run with the scratch folder as working directory, since they write bench/results/<name>.*
# relative to it: the committed bench/results stay as they are, and what they wrote is copied out.
work="$(mktemp -d /tmp/flatgrad-gpu-bench.XXXXXX)"
trap 'rm -rf "$work"' EXIT
rt="$work/rt"
mkdir -p "$rt/node_modules/webgpu/dist/linux-x64" && cp -r "$gb/bench" "$rt/" &&
  cp "$gb/node_modules/webgpu/index.js" "$gb/node_modules/webgpu/package.json" "$rt/node_modules/webgpu/" &&
  unxz_to "$gb/dawn.node.xz" "$rt/node_modules/webgpu/dist/linux-x64/dawn.node" || fail "could not unpack .gpu-bench into $rt" 2

# The Vulkan loader: the machine's own; else the device README's .gl/*.deb recipe when a .gl
# folder was carried (unpacked into /, as root); else the copy in .gpu-bench/lib.
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
  if compgen -G "$here/.gl/*.deb" >/dev/null && [ "$(id -u)" = 0 ]; then
    for f in "$here"/.gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
    say "Vulkan loader: unpacked from .gl/*.deb"
  else
    export LD_LIBRARY_PATH="$gb/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    say "Vulkan loader: $gb/lib/libvulkan.so.1 (the machine has none)"
  fi
fi

# The NVIDIA Vulkan driver (ICD). Dawn reads VK_ICD_FILENAMES (older loaders) or VK_DRIVER_FILES
# (newer) once, at its first create(); the benches only fall back to SwiftShader when
# VK_ICD_FILENAMES is unset, so both are set to the same file. The driver's libraries under
# /usr/local/nvidia go on the library path so that the ICD's library_path resolves.
for icd in ${VK_DRIVER_FILES:-} ${VK_ICD_FILENAMES:-} /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json \
  /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json; do
  if [ -f "$icd" ]; then
    export VK_DRIVER_FILES="$icd" VK_ICD_FILENAMES="$icd"
    break
  fi
done
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
say "VK_ICD_FILENAMES=${VK_ICD_FILENAMES:-unset} VK_DRIVER_FILES=${VK_DRIVER_FILES:-unset}"
command -v nvidia-smi >/dev/null && nvidia-smi -L 2>&1 | tee -a "$log" >&2

# The adapter, within seconds: none at all is exit 2, only a software one (without --dry-run or
# --allow-software) exit 3, before any bench starts.
probe_args=(--out="$outdir/adapter.json")
[ "$dry" = 1 ] || [ "$allow" = 1 ] && probe_args+=(--allow-software)
timeout 60 "$node_bin" "$rt/bench/gpu-adapter.mjs" "${probe_args[@]}" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
case "$rc" in
  0) ;;
  2) fail "no WebGPU adapter (above)" 2 ;;
  3) fail "only a software adapter (above); pass --allow-software to time it anyway" 3 ;;
  124) fail "the adapter probe hung for 60 s (a broken driver?)" 2 ;;
  *) fail "the adapter probe exited with $rc" 2 ;;
esac

# Sizes. On the H200: squares up to 4096 (fp32 WGSL, tens of ms each) and 1<<25 floats per
# elementwise buffer (128 MiB, past its 60 MB L2). Dry: the smallest sizes that still run every path.
if [ "$dry" = 1 ]; then
  webgpu_args=(--quick --squares=32,64 --elems=65536)
  # The CNN takes minutes per step on SwiftShader: the dry run leaves it out.
  steps_args=(--quick --families=webgpu --models=mlp,vit --procs=1 --warmup=1 --rounds=1 --budget=5)
  sam_args=(--quick --backends=webgpu)
  limits=(240 240 300)
else
  webgpu_args=(--squares=256,1024,2048,4096 --elems=33554432)
  # One process per model (three models), rounds up to 20 within 15 s each.
  steps_args=(--families=webgpu --procs=1 --warmup=3 --rounds=20 --budget=15)
  sam_args=(--backends=webgpu)
  limits=(110 150 80)
fi

failed=()
: >"$outdir/gpu.md"
{
  echo "# flatgrad WebGPU benchmarks ($([ "$dry" = 1 ] && echo 'DRY RUN: tiny sizes, figures mean nothing' || echo 'full run'))"
  echo
  echo "$(date -u +%FT%TZ), $(uname -m), $(nproc) cores, node $("$node_bin" --version)."
  echo
  grep '^adapter:' "$log" | head -1
} >>"$outdir/gpu.md"
i=0
for name in webgpu steps sam; do
  case "$name" in
    webgpu) args=("${webgpu_args[@]}") ;;
    steps) args=("${steps_args[@]}") ;;
    sam) args=("${sam_args[@]}") ;;
  esac
  limit=${limits[$i]}
  i=$((i + 1))
  say "bench/$name.bench.ts ${args[*]} (limit ${limit} s)"
  (cd "$work" && timeout -k 5 "$limit" "$node_bin" "$rt/bench/$name.bench.mjs" "${args[@]}") >"$work/$name.stdout" 2> >(tee -a "$log" >&2)
  rc=$?
  cat "$work/$name.stdout" >>"$log"
  if [ "$rc" = 0 ]; then say "$name: ok"; else say "$name: FAILED (exit $rc$([ "$rc" = 124 ] && echo ", over its ${limit} s limit"))"; failed+=("$name"); fi
  [ -f "$work/bench/results/$name.json" ] && cp "$work/bench/results/$name.json" "$outdir/$name.json"
  {
    echo
    echo "## $name ($([ "$rc" = 0 ] && echo ok || echo "FAILED, exit $rc"))"
    echo
    if [ -f "$work/bench/results/$name.md" ]; then cat "$work/bench/results/$name.md"; else cat "$work/$name.stdout"; fi
  } >>"$outdir/gpu.md"
done

say "wrote $(cd "$outdir" && ls | tr '\n' ' ')in $outdir"
if [ "${#failed[@]}" -gt 0 ]; then fail "${failed[*]} (see gpu.log)" 1; fi
say "all benches ok in ${SECONDS} s"
