#!/usr/bin/env bash
# kartflow/operator and kartflow/worker as OCI image archives, without a container daemon.
#   hack/images/build.sh [OUT_DIR]      (make images; OUT_DIR defaults to target/images)
# Environment: IMAGE_TAG (default: the workspace version), SOURCE_DATE_EPOCH (default: the commit
# time; the images' creation time), IMAGE_REGISTRY (default: none, i.e. kartflow/worker:TAG).
#
# Each image is two layers: a runtime layer assembled from Debian packages (hack/images/packages.txt:
# the libraries the binaries link, the loader, CA certificates, time zones; no shell, no package
# manager) shared by both images, and the stripped release binary. The same commit and the same
# Debian package versions give the same digests (docs/images.md).
set -euo pipefail
COMPONENT=images
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/../lib.sh"

out=$(mkdir -p "${1:-$REPO_DIR/target/images}" && cd "${1:-$REPO_DIR/target/images}" && pwd)
target=${CARGO_TARGET_DIR:-$REPO_DIR/target}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO_DIR/Cargo.toml" | head -n1)
tag=${IMAGE_TAG:-$version}
registry=${IMAGE_REGISTRY:+${IMAGE_REGISTRY%/}/}
revision=$(git -C "$REPO_DIR" rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$REPO_DIR" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  revision="$revision-dirty"
fi
created=${SOURCE_DATE_EPOCH:-$(git -C "$REPO_DIR" log -1 --format=%ct 2>/dev/null || echo 0)}
source_url=$(sed -n 's/^repository = "\(.*\)"/\1/p' "$REPO_DIR/Cargo.toml" | head -n1)
command -v go >/dev/null || die "go not found: the image builder is a Go program (Go 1.25+; the cluster build needs it too)"
command -v dpkg-deb >/dev/null && command -v apt-get >/dev/null \
  || die "dpkg-deb and apt-get are needed to assemble the runtime layer from Debian packages"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
started=$SECONDS

log "building the release binaries"
cargo build --release --locked -p kartflow-operator -p kartflow-worker \
  --bin kartflow-operator --bin kartflow-worker >&2

# --- the Debian packages, cached by file name (name_version_arch.deb) ---
debs=$KARTFLOW_CACHE_DIR/images/debs
mkdir -p "$debs"
mapfile -t packages < <(grep -vE '^\s*(#|$)' "$HACK_DIR/images/packages.txt")
# fetch_deb PKG: the cached .deb of the version apt resolves (name_version_arch.deb), downloaded
# when missing; prints its path.
fetch_deb() {
  local pkg=$1 ver arch file
  ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)
  arch=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Architecture: //p' | head -n1)
  [ -n "$ver" ] || return 1
  file="$debs/${pkg}_${ver//:/%3a}_${arch}.deb"
  if [ ! -s "$file" ]; then
    log "downloading $pkg $ver"
    (cd "$debs" && apt-get download -q "$pkg=$ver" >&2 2>/dev/null) || return 1
  fi
  echo "$file"
}
files=()
updated=false
for pkg in "${packages[@]}"; do
  if ! file=$(fetch_deb "$pkg"); then
    # Stale package lists name a version the mirror no longer has (a security update replaced
    # it): refresh them once and retry.
    if ! $updated && [ "$(id -u)" -eq 0 ]; then
      log "apt does not find or fetch $pkg; running apt-get update and retrying"
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
      updated=true
    fi
    file=$(fetch_deb "$pkg") || die "could not get the Debian package $pkg (apt-get download); check the network, or run apt-get update as root"
  fi
  files+=("$file")
done

# --- the runtime layer ---
rootfs=$work/runtime
extract=$work/extract
mkdir -p "$rootfs" "$extract"
for i in "${!packages[@]}"; do
  pkg=${packages[$i]}
  dpkg-deb -x "${files[$i]}" "$extract/$pkg"
  # What scanners (trivy, grype) read to know the image's packages, as distroless does.
  mkdir -p "$rootfs/var/lib/dpkg/status.d"
  dpkg-deb -f "${files[$i]}" > "$rootfs/var/lib/dpkg/status.d/$pkg"
  if [ -f "$extract/$pkg/usr/share/doc/$pkg/copyright" ]; then
    install -D -m 0644 "$extract/$pkg/usr/share/doc/$pkg/copyright" "$rootfs/usr/share/doc/$pkg/copyright"
  fi
done

# copy_from_packages PATH: PATH (relative to /) from whichever extracted package holds it, with
# the file a symlink points to.
copy_from_packages() {
  local rel=$1 src
  for pkg in "${packages[@]}"; do
    src="$extract/$pkg/$rel"
    if [ -e "$src" ] || [ -L "$src" ]; then
      (cd "$extract/$pkg" && cp -a --parents "$rel" "$rootfs/")
      if [ -L "$src" ]; then
        local target
        target=$(readlink "$src")
        case "$target" in /*) ;; *) target="$(dirname "/$rel")/$target" ;; esac
        copy_from_packages "${target#/}"
      fi
      return 0
    fi
  done
  return 1
}

copy_from_packages lib64/ld-linux-x86-64.so.2 || die "libc6 has no lib64/ld-linux-x86-64.so.2 (not an amd64 Debian?)"
for bin in kartflow-operator kartflow-worker; do
  while read -r soname; do
    found=false
    for dir in lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu; do
      if copy_from_packages "$dir/$soname"; then found=true; break; fi
    done
    $found || die "$bin links $soname, which no package in hack/images/packages.txt provides: add its Debian package there"
  done < <(ldd "$target/release/$bin" | awk '$1 ~ /\.so/ && $1 !~ /^(linux-vdso|\/)/ {print $1}')
done

# The CA bundle, as update-ca-certificates would build it from the package's certificates.
mkdir -p "$rootfs/etc/ssl/certs"
find "$extract/ca-certificates/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort \
  | xargs cat > "$rootfs/etc/ssl/certs/ca-certificates.crt"
mkdir -p "$rootfs/usr/share"
cp -a "$extract/tzdata/usr/share/zoneinfo" "$rootfs/usr/share/"
rm -rf "$rootfs/usr/share/zoneinfo/right" "$rootfs/usr/share/zoneinfo/posix"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$rootfs/etc/group"
mkdir -p "$rootfs/home/nonroot" "$rootfs/tmp"
chmod 0700 "$rootfs/home/nonroot"
chmod 1777 "$rootfs/tmp"
# Modes of what we created do not depend on the umask.
find "$rootfs" -type d ! -path "$rootfs/tmp" ! -path "$rootfs/home/nonroot" -exec chmod 0755 {} +
find "$rootfs/etc" "$rootfs/var" "$rootfs/usr/share" -type f -exec chmod 0644 {} +

# --- the images ---
go build -C "$HACK_DIR/images/imagebuild" -trimpath -o "$work/imagebuild" . \
  || die "building hack/images/imagebuild failed"
: > "$work/summary"
for bin in kartflow-operator kartflow-worker; do
  name=${bin#kartflow-}
  app=$work/app-$name
  mkdir -p "$app/usr/local/bin"
  chmod 0755 "$app" "$app/usr" "$app/usr/local" "$app/usr/local/bin"
  strip --strip-all -o "$app/usr/local/bin/$bin" "$target/release/$bin"
  chmod 0755 "$app/usr/local/bin/$bin"
  case $name in
    operator) description="kartflow's Kubernetes operator" ;;
    worker) description="kartflow's worker: inventory, CDC and read-model roles" ;;
  esac
  "$work/imagebuild" -name "${registry}kartflow/$name" -tag "$tag" \
    -layer "$rootfs" -layer "$app" \
    -entrypoint "/usr/local/bin/$bin" -user 65532:65532 -workdir / \
    -env PATH=/usr/local/bin:/usr/bin:/bin -env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    -owner home/nonroot=65532:65532 -created "$created" \
    -label "org.opencontainers.image.title=kartflow-$name" \
    -label "org.opencontainers.image.description=$description" \
    -label "org.opencontainers.image.version=$tag" \
    -label "org.opencontainers.image.revision=$revision" \
    -label "org.opencontainers.image.source=$source_url" \
    -label "org.opencontainers.image.licenses=Apache-2.0" \
    -label "org.opencontainers.image.created=$(date -u -d "@$created" +%Y-%m-%dT%H:%M:%SZ)" \
    -out "$out/kartflow-$name.tar" >> "$work/summary"
done
cp "$work/summary" "$out/images.jsonl"
log "built in $((SECONDS - started)) s (in $out):"
while read -r line; do
  image=$(sed -n 's/.*"image":"\([^"]*\)".*/\1/p' <<<"$line")
  digest=$(sed -n 's/.*"digest":"\([^"]*\)".*/\1/p' <<<"$line")
  bytes=$(sed -n 's/.*"compressedBytes":\([0-9]*\).*/\1/p' <<<"$line")
  printf '  %-28s %s  %5.1f MB compressed\n' "$image" "$digest" "$(echo "$bytes / 1000000" | bc -l)" >&2
done < "$out/images.jsonl"
