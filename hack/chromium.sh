#!/usr/bin/env bash
# Headless Chromium for the browser test of the read model's page (Debian's package).
#   hack/chromium.sh   installs it when missing (as root), then prints the binary's path
set -euo pipefail
COMPONENT=chromium
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"
bin=$(command -v chromium || true)
if [ -z "$bin" ]; then
  apt_install chromium
  bin=$(command -v chromium) || die "chromium is not on PATH after installing the Debian package"
fi
echo "$bin"
