#!/usr/bin/env bash
# The GPU machine's benchmark extras, beside the GPU bundle (../shared/device/build_gpu_bundle.sh): TRL and what it
# imports (for `bench.peer_bench --gpu`), and mamba-ssm's Triton kernels (the NemotronH scan on the GPU).
#
#   bash bench/build_gpu_extras.sh [OUT_DIR]      # default .gpu_extras (git-ignored); ~1 min
#
# Writes OUT_DIR/part_NN (40 MiB xz parts), OUT_DIR/SHA256 and OUT_DIR/install.sh, which unpacks the parts gathered
# in /tmp/gpu_extra_parts into /tmp/gpu_site (the bundle's folder, so one PYTHONPATH entry covers both).
# mamba-ssm ships as source only; its package __init__ imports the compiled selective-scan extension, which needs
# nvcc. Only its Python/Triton files are carried, under an __init__ that imports nothing: the chunked-scan
# kernels (`mamba_ssm.ops.triton.ssd_combined`, forward and backward) and the gated RMSNorm need no build.
set -euo pipefail
OUT="${1:-.gpu_extras}"
MAMBA_SSM=2.3.2.post1
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
PLAT=(--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none --only-binary=:all:
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64
      --platform any)
PKGS=(trl==1.16.0 accelerate==1.16.0 datasets==5.2.0 pyarrow==26.0.1 xxhash multiprocess einops)
mkdir -p "$WORK/whl" "$WORK/site" "$WORK/src"
python3 -m pip download -q --no-deps "${PLAT[@]}" -d "$WORK/whl" "${PKGS[@]}"
python3 -m pip install -q --no-deps --no-compile --target "$WORK/site" "${PLAT[@]}" "$WORK"/whl/*.whl
python3 - "$WORK/src" "$MAMBA_SSM" <<'PY'
import re, sys, urllib.request
dest, version = sys.argv[1], sys.argv[2]
index = urllib.request.urlopen("https://pypi.org/simple/mamba-ssm/", timeout=60).read().decode()
url = re.findall(rf'href="([^"]+/mamba_ssm-{re.escape(version)}\.tar\.gz)[^"]*"', index)[0]
with open(f"{dest}/mamba_ssm.tar.gz", "wb") as f:
    f.write(urllib.request.urlopen(url, timeout=120).read())
PY
tar -xzf "$WORK/src/mamba_ssm.tar.gz" -C "$WORK/src"
cp -r "$WORK/src/mamba_ssm-$MAMBA_SSM/mamba_ssm" "$WORK/site/mamba_ssm"
printf '__version__ = "%s"\n' "$MAMBA_SSM" > "$WORK/site/mamba_ssm/__init__.py"
S="$WORK/site"
# Slim pyarrow: Gandiva, headers and sources (pyarrow.lib links Substrait, Acero and Parquet: they stay).
rm -rf "$S"/pyarrow/include "$S"/pyarrow/src "$S"/pyarrow/tests "$S"/bin
rm -f "$S"/pyarrow/libgandiva* "$S"/pyarrow/gandiva*
mkdir -p "$OUT" && rm -f "$OUT"/part_*
tar -C "$S" -cf - . | xz -T0 -6 | split -b 40M -d - "$OUT/part_"
(cd "$OUT" && cat part_* | sha256sum | cut -d' ' -f1 > SHA256)
cat > "$OUT/install.sh" <<'INSTALL'
#!/usr/bin/env bash
# On the GPU machine, after the GPU bundle's install.sh: unpack /tmp/gpu_extra_parts into /tmp/gpu_site.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
got="$(cat /tmp/gpu_extra_parts/part_* | sha256sum | cut -d' ' -f1)"
[ "$got" = "$(cat "$HERE/SHA256")" ] || { echo "gpu extras: parts incomplete or stale (sha256 $got)" >&2; exit 1; }
mkdir -p /tmp/gpu_site && cat /tmp/gpu_extra_parts/part_* | xz -d | tar -x -C /tmp/gpu_site
echo "gpu extras installed into /tmp/gpu_site"
INSTALL
chmod +x "$OUT/install.sh"
ls -la "$OUT"
