#!/usr/bin/env bash
# Fetches into .whl/ the wheels an accelerator host's image (Python 3.12, no internet) lacks for
# scripts/device_check.sh: exactly the pins of scripts/device-wheels.txt, for CPython 3.12 on x86-64 Linux.
# Run it where PyPI is reachable, then carry .whl/ there. Run again, it leaves one wheel per pin and nothing else
# (a wheel of another version beside it would make pip refuse the whole install there).
set -euo pipefail
cd "$(dirname "$0")/.."
PINS=scripts/device-wheels.txt
DEST=${WHEEL_DIR:-.whl}
PY=${PYTHON:-python3}
mkdir -p "$DEST"
mapfile -t pins < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$PINS")

"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
  --platform manylinux1_x86_64 --platform any -d "$DEST" "${pins[@]}"

# A wheel's file name starts with its name (dashes, dots and underscores all written `_`) and version.
normal() { tr 'A-Z.-' 'a-z__' <<<"$1"; }
declare -A wanted=()
for pin in "${pins[@]}"; do wanted["$(normal "${pin%%==*}")-${pin##*==}"]=1; done
status=0
declare -A found=()
for wheel in "$DEST"/*.whl; do
  file=${wheel##*/}
  name=$(normal "${file%%-*}")
  rest=${file#*-}
  key="$name-${rest%%-*}"
  if [ -z "${wanted[$key]:-}" ]; then
    echo "removing $file: not pinned in $PINS"
    rm -f -- "$wheel"
  elif [ -n "${found[$key]:-}" ]; then
    echo "two wheels for $key: ${found[$key]} and $file" >&2
    status=1
  else
    found[$key]=$file
  fi
done
for key in "${!wanted[@]}"; do
  [ -n "${found[$key]:-}" ] || { echo "no wheel for $key" >&2; status=1; }
done
echo "$DEST: ${#found[@]} wheels for ${#pins[@]} pins, $(du -sh "$DEST" | cut -f1)"
exit $status
