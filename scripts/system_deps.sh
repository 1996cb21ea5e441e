#!/usr/bin/env bash
# Installs the Debian packages listed in scripts/system-packages.txt that are not on the machine yet.
# Called by scripts/test.sh, so a clean CI box gets the real servers the tests start (Redis, nginx, ...).
# Quietly does nothing without root or apt-get: those tests then skip with a reason instead.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
list="$root/scripts/system-packages.txt"
[ -f "$list" ] || exit 0
mapfile -t wanted < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$list" | grep -v '^$')
[ "${#wanted[@]}" -gt 0 ] || exit 0
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ "${#missing[@]}" -gt 0 ] || exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system_deps: not root or no apt-get; tests needing ${missing[*]} will skip" >&2
  exit 0
fi
echo "system_deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
{ apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >/dev/null 2>&1 \
  || echo "system_deps: apt-get failed; tests needing ${missing[*]} will skip" >&2
exit 0
