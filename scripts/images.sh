#!/usr/bin/env bash
# Builds the LLMIR images with buildah (no Docker engine): localhost/llmir:TAG
# (Containerfile target runtime) and, with --cuda, localhost/llmir:TAG-cuda
# (target runtime-cuda).
#
# Usage: scripts/images.sh [--prebuilt] [--cuda] [--tag TAG] [--base IMAGE]
#   --prebuilt  package this checkout's build/bin (scripts/build.sh first)
#               instead of building inside the image: the payload is
#               collected here, so the host must be Debian 12 like the base
#   --cuda      also the CUDA variant; needs a payload linked with the CUDA
#               runtime (a build with CUDA found)
#   --tag TAG   default: the chart's appVersion (helm/llmir/Chart.yaml)
#   --base IMG  the Debian 12 base (default localhost/llmir-base:bookworm,
#               made with debootstrap and imported when missing)
#
# Storage: vfs, build isolation: chroot (what works without a kernel overlay
# or user namespaces); override with LLMIR_STORAGE_DRIVER / LLMIR_ISOLATION.
# LLMIR_CCACHE_DIR=DIR mounts a ccache directory into the build stage.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

prebuilt=0
cuda=0
tag="$(awk '/^appVersion:/ {gsub(/"/, "", $2); print $2}' helm/llmir/Chart.yaml)"
base=localhost/llmir-base:bookworm
while [ $# -gt 0 ]; do
  case "$1" in
    --prebuilt) prebuilt=1 ;;
    --cuda) cuda=1 ;;
    --tag) tag="$2"; shift ;;
    --base) base="$2"; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "images.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

storage=(--storage-driver "${LLMIR_STORAGE_DRIVER:-vfs}")
for tool in buildah podman; do
  command -v "$tool" >/dev/null || { echo "images.sh: $tool is missing (apt-get install buildah podman runc debootstrap)" >&2; exit 1; }
done

# The base image: Debian 12 from debootstrap when none is there (no registry
# needed; Debian's mirror is).
if ! podman "${storage[@]}" image exists "$base"; then
  command -v debootstrap >/dev/null || { echo "images.sh: debootstrap is missing" >&2; exit 1; }
  rootfs="$(mktemp -d)"
  trap 'rm -rf "$rootfs"' EXIT
  echo "images.sh: debootstrap --variant=minbase bookworm (about 1.5 min)"
  debootstrap --variant=minbase bookworm "$rootfs" >/dev/null
  tar -C "$rootfs" -c . | podman "${storage[@]}" import \
    --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  echo "images.sh: imported $base"
fi

containerfile="$root/Containerfile"
if [ "$prebuilt" = 1 ]; then
  [ -x build/bin/llmir-scheduler ] || { echo "images.sh: build/bin has no binaries; run scripts/build.sh" >&2; exit 1; }
  payload=".llmir-image-payload"
  rm -rf "$payload"
  scripts/collect-runtime.sh build/bin "$payload/opt/llmir" >/dev/null
  # The Containerfile with its build stage replaced by the collected payload.
  containerfile="$(mktemp "$root/.Containerfile.prebuilt.XXXXXX")"
  awk -v payload="$payload" '
    /^# --- build stage/ { print "FROM scratch AS build"; print "COPY " payload "/opt/llmir /opt/llmir"; skip = 1; next }
    /^# --- end of build stage/ { skip = 0; next }
    !skip' Containerfile > "$containerfile"
  trap 'rm -rf "$root/$payload" "$containerfile"' EXIT
  lib_dir="$payload/opt/llmir/lib"
fi

build() { # target image
  echo "images.sh: building $2 (target $1)"
  buildah "${storage[@]}" bud --quiet --isolation "${LLMIR_ISOLATION:-chroot}" --pull=never \
    --layers=false -f "$containerfile" --target "$1" \
    --build-arg BASE_IMAGE="$base" --build-arg CUDA_BASE_IMAGE="${LLMIR_CUDA_BASE_IMAGE:-$base}" \
    ${LLMIR_CCACHE_DIR:+--volume "$LLMIR_CCACHE_DIR:/ccache"} \
    -t "$2" "$root" >/dev/null
}

build runtime "localhost/llmir:$tag"
if [ "$cuda" = 1 ]; then
  if [ "$prebuilt" = 1 ] && ! ls "$lib_dir" | grep -q '^libcudart'; then
    echo "images.sh: --cuda: the binaries are not linked with the CUDA runtime (no CUDA at build time)" >&2
    exit 1
  fi
  build runtime-cuda "localhost/llmir:$tag-cuda"
fi
podman "${storage[@]}" images --filter reference=localhost/llmir --format '{{.Repository}}:{{.Tag}} {{.Size}}'
