#!/usr/bin/env bash
# The images' acceptance checks (make test runs this; root, for the chroot):
#   1. the builder's own tests (go test);
#   2. make images twice from the same commit gives the same digests and bytes;
#   3. each archive pushed to the local stack's registry (go-containerregistry's, on loopback,
#      REGISTRY_ADDR; make test starts it with the stack) keeps its digest, and crane sees user
#      65532, the entrypoint and the OCI labels;
#   4. each image's filesystem, exported from the registry, runs its binary as user 65532 in a
#      chroot (so the runtime layer has every library the binary needs) and has no shell;
#   5. each image is under 40 MB compressed.
set -euo pipefail
COMPONENT=images
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/../lib.sh"

MAX_BYTES=40000000
unset IMAGE_REGISTRY  # the checks name the images kartflow/<name>
[ "$(id -u)" -eq 0 ] || die "the image checks run each image's binary in a chroot: run as root"
command -v jq >/dev/null || apt_install jq

"$HACK_DIR/registry/registry.sh" status >/dev/null \
  || die "the local registry ($REGISTRY_ADDR) is not running: start the stack with hack/dev.sh up"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

log "unit tests of the image builder"
go test -C "$HACK_DIR/images/imagebuild" ./... >&2 || die "go test of hack/images/imagebuild failed"

out=$REPO_DIR/target/images
"$HACK_DIR/images/build.sh" "$out"
"$HACK_DIR/images/build.sh" "$work/again"
for name in operator worker; do
  a=$(jq -r --arg n "kartflow/$name" 'select(.image | startswith($n + ":")) | .digest' "$out/images.jsonl")
  b=$(jq -r --arg n "kartflow/$name" 'select(.image | startswith($n + ":")) | .digest' "$work/again/images.jsonl")
  [ -n "$a" ] && [ "$a" = "$b" ] || die "kartflow/$name: two builds of the same commit gave $a and $b"
  cmp -s "$out/kartflow-$name.tar" "$work/again/kartflow-$name.tar" \
    || die "kartflow/$name: same digest, different archive bytes"
done
log "two builds gave identical digests"

crane=$("$HACK_DIR/images/push.sh" --crane-path)
# push.sh checks the registry's digest of each image against the archive's.
"$HACK_DIR/images/push.sh" --local "$out" > "$work/pushed"
while read -r line; do
  image=$(jq -r .image <<<"$line")
  digest=$(jq -r .digest <<<"$line")
  bytes=$(jq -r .compressedBytes <<<"$line")
  name=${image%%:*}
  bin=kartflow-${name#kartflow/}
  ref=$REGISTRY_ADDR/$image
  (( bytes < MAX_BYTES )) || die "$image is $bytes bytes compressed, over the $MAX_BYTES target"
  grep -qxF "$ref@$digest" "$work/pushed" || die "$image was not pushed as $ref@$digest: $(cat "$work/pushed")"
  config=$("$crane" config --insecure "$ref")
  jq -e '.config.User == "65532:65532"' <<<"$config" >/dev/null || die "$image: user is not 65532: $config"
  jq -e --arg b "/usr/local/bin/$bin" '.config.Entrypoint == [$b]' <<<"$config" >/dev/null \
    || die "$image: entrypoint is not /usr/local/bin/$bin"
  for label in version revision source created licenses title; do
    jq -e --arg l "org.opencontainers.image.$label" '.config.Labels[$l] | length > 0' <<<"$config" >/dev/null \
      || die "$image: label org.opencontainers.image.$label missing"
  done
  root=$work/root-$bin
  mkdir -p "$root"
  "$crane" export --insecure "$ref" - | tar -x -C "$root"
  [ ! -e "$root/bin/sh" ] && [ ! -e "$root/usr/bin/apt-get" ] || die "$image contains a shell or apt"
  case $bin in
    kartflow-worker) args=(version) ;;
    kartflow-operator) args=(--version) ;;
  esac
  said=$(chroot --userspec=65532:65532 "$root" "/usr/local/bin/$bin" "${args[@]}" 2>&1) \
    || die "$image: /usr/local/bin/$bin ${args[*]} failed in the image's filesystem: $said"
  grep -q "$(jq -r '.config.Labels["org.opencontainers.image.version"]' <<<"$config")" <<<"$said" \
    || die "$image: $bin ${args[*]} printed no version: $said"
  log "$image $digest: $((bytes / 1000)) kB compressed, pushed, user 65532, labels, runs ($said)"
done < "$out/images.jsonl"
