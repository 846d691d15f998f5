#!/usr/bin/env bash
# The browser tests drive the distribution's Chromium through Playwright (Playwright's own
# browser download cannot be used here). Install it when missing and we are allowed to.
set -uo pipefail
CHROMIUM=${TRIAGE_CHROMIUM:-/usr/bin/chromium}
[ -x "$CHROMIUM" ] && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  echo "ensure-chromium: installing Debian's chromium for the browser tests"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -x "$CHROMIUM" ]; then
  echo "ensure-chromium: no Chromium at $CHROMIUM; install it (apt-get install chromium) or set TRIAGE_CHROMIUM" >&2
  exit 1
fi
