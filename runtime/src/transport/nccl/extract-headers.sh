#!/usr/bin/env bash
# Prepares a folder of NCCL headers from NCCL's git repository, laid out as an installed NCCL
# (`nccl.h`, `nccl_device.h`, `nccl_device/**`), for the NVRTC header test of the `nccl`
# transport, which compiles the peer-table and probe kernels against them without a GPU:
#
#   runtime/src/transport/nccl/extract-headers.sh v2.28.3-1 /tmp/nccl-2.28.3/include
#   EPC_NCCL_TEST_INCLUDE=/tmp/nccl-2.28.3/include \
#   EPC_NVRTC=$PWD/.epc/pip/nvidia/cu13/lib/libnvrtc.so.13 \
#     cargo test -p ep-runtime --test nccl_loader -- --nocapture
#
# Arguments: a tag of https://github.com/NVIDIA/nccl (v2.28.3-1, v2.28.9-1, v2.29.7-1, ...) and
# the output folder. NCCL_REPO names the repository (a clone or a bare mirror); by default
# /work/.mirror/NVIDIA+nccl/repo. nccl.h is generated from src/nccl.h.in the way NCCL's
# src/Makefile does it: the ${nccl:...} placeholders filled in from makefiles/version.mk.
set -euo pipefail
tag=${1:?usage: extract-headers.sh TAG OUT_DIR}
out=${2:?usage: extract-headers.sh TAG OUT_DIR}
repo=${NCCL_REPO:-/work/.mirror/NVIDIA+nccl/repo}
git=(git -C "$repo")

version_mk=$("${git[@]}" show "$tag:makefiles/version.mk")
field() { sed -n "s/^$1 *:= *\(.*\)$/\1/p" <<<"$version_mk" | tr -d ' '; }
major=$(field NCCL_MAJOR)
minor=$(field NCCL_MINOR)
patch=$(field NCCL_PATCH)
suffix=$(field NCCL_SUFFIX)
code=$(printf "%d%02d%02d" "$major" "$minor" "$patch")

mkdir -p "$out"
"${git[@]}" show "$tag:src/nccl.h.in" | sed \
  -e "s/\${nccl:Major}/$major/g" \
  -e "s/\${nccl:Minor}/$minor/g" \
  -e "s/\${nccl:Patch}/$patch/g" \
  -e "s/\${nccl:Suffix}/$suffix/g" \
  -e "s/\${nccl:Version}/$code/g" >"$out/nccl.h"
"${git[@]}" show "$tag:src/include/nccl_device.h" >"$out/nccl_device.h"
"${git[@]}" ls-tree -r --name-only "$tag" src/include/nccl_device | while read -r path; do
  case $path in
    *.h) ;;
    *) continue ;;
  esac
  dest=$out/${path#src/include/}
  mkdir -p "$(dirname "$dest")"
  "${git[@]}" show "$tag:$path" >"$dest"
done
echo "NCCL $major.$minor.$patch headers from $tag in $out"
