#!/bin/bash
# Bazel's toolchain links libdoorway.so with gold, which resolves the
# initial-exec TLS of file-local variables (anonymous namespace, static, or
# of a file-local type) to the wrong variable in a shared object
# (runtime/signals.cc "TLS and gold"). Such variables show up in .dynsym
# as LOCAL TLS entries of DEFAULT visibility; variables of external linkage
# with hidden visibility are resolved correctly. Every TLS entry must be
# one of those.
set -euo pipefail
so="$1"
syms="$(readelf -W --dyn-syms "$so")"
bad="$(awk '$4 == "TLS" && $5 == "LOCAL" && $6 != "HIDDEN"' <<<"$syms")"
if [ -n "$bad" ]; then
  echo "file-local thread-locals in $so (gold gets their TLS offsets wrong):"
  echo "$bad"
  exit 1
fi
n="$(awk '$4 == "TLS"' <<<"$syms" | wc -l)"
if [ "$n" -eq 0 ]; then
  echo "no TLS entries in .dynsym: has the linker changed? see runtime/signals.cc \"TLS and gold\""
  exit 1
fi
echo "ok: $n TLS entries, all hidden"
