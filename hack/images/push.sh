#!/usr/bin/env bash
# Pushes the archives make images wrote to a registry, keeping their digests.
#   hack/images/push.sh REGISTRY [ARCHIVE_DIR]     e.g. hack/images/push.sh ghcr.io/you
#   hack/images/push.sh --local [ARCHIVE_DIR]      the local stack's registry (REGISTRY_ADDR)
# (make images-push REGISTRY=...). Each target/images/kartflow-<name>.tar goes to
# REGISTRY/kartflow/<name>:<tag>; plain HTTP is allowed for loopback registries only. Prints one
# line per image: the pushed reference with its digest. Uses crane (go-containerregistry), built
# from Go modules once and cached.
set -euo pipefail
COMPONENT=images
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/../lib.sh"

CRANE_VERSION=v0.22.1
crane=$KARTFLOW_CACHE_DIR/images/bin/crane-$CRANE_VERSION/crane
build_crane() {
  [ -x "$crane" ] && return 0
  log "building crane $CRANE_VERSION from Go modules"
  GOFLAGS=-buildvcs=false CGO_ENABLED=0 GOBIN=$(dirname "$crane") \
    go install "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION" >&2 \
    || die "could not build crane $CRANE_VERSION (Go module proxy reachable?)"
}
# --crane-path: build crane if needed and print its path (for the checks).
if [ "${1:-}" = --crane-path ]; then build_crane; echo "$crane"; exit 0; fi
registry=${1:?usage: hack/images/push.sh REGISTRY|--local [ARCHIVE_DIR] (e.g. ghcr.io/you)}
if [ "$registry" = --local ]; then
  "$HACK_DIR/registry/registry.sh" status >/dev/null \
    || die "the local registry ($REGISTRY_ADDR) is not running: start the stack with make dev-up"
  registry=$REGISTRY_ADDR
fi
registry=${registry%/}
dir=${2:-$REPO_DIR/target/images}
[ -s "$dir/images.jsonl" ] || die "no images in $dir: run make images first"
command -v jq >/dev/null || apt_install jq

build_crane
insecure=()
case $registry in 127.0.0.1:*|localhost:*|'[::1]':*) insecure=(--insecure) ;; esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
while read -r line; do
  image=$(jq -r .image <<<"$line")
  digest=$(jq -r .digest <<<"$line")
  archive=$(jq -r .archive <<<"$line")
  [ -s "$archive" ] || archive=$dir/$(basename "$archive")
  # The archive is also an OCI image layout: pushing the layout keeps the manifest as built, so
  # the registry's digest is the archive's (pushing it as a Docker tarball would convert it).
  layout=$work/$(basename "$archive" .tar)
  mkdir -p "$layout"
  tar -xf "$archive" -C "$layout"
  ref=$registry/kartflow/${image##*kartflow/}
  "$crane" push "${insecure[@]}" "$layout" "$ref" > "$work/push.log" 2>&1 \
    || die "pushing $image to $ref failed: $(tail -3 "$work/push.log")"
  pushed=$("$crane" digest "${insecure[@]}" "$ref")
  [ "$pushed" = "$digest" ] || die "$ref: the registry holds $pushed, the archive says $digest"
  echo "$ref@$digest"
done < "$dir/images.jsonl"
