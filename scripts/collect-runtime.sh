#!/usr/bin/env bash
# Copies the service binaries and the shared libraries they need (beyond
# glibc, which every base image has) into OUT/bin and OUT/lib: the whole
# runtime payload of an LLMIR image. Used by the Containerfile's build stage
# and by scripts/images.sh --prebuilt.
# Usage: scripts/collect-runtime.sh BIN_DIR OUT
set -euo pipefail
bin_dir="$1"
out="$2"
mkdir -p "$out/bin" "$out/lib"
binaries=(llmir-scheduler llmir-shard-worker llmir-compiler-service)
for b in "${binaries[@]}"; do
  install -m 0755 "$bin_dir/$b" "$out/bin/$b"
  # ldd lines: "libfoo.so.1 => /usr/lib/x86_64-linux-gnu/libfoo.so.1 (0x...)"
  ldd "$bin_dir/$b" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*) continue ;;
    esac
    [ -e "$out/lib/$(basename "$lib")" ] || cp -L "$lib" "$out/lib/"
  done
done
echo "collect-runtime: $(ls "$out/bin" | wc -l) binaries, $(ls "$out/lib" | wc -l) libraries in $out"
