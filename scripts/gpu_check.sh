#!/usr/bin/env bash
# The former name of scripts/device_check.sh, kept for the commands and notes that use it.
exec "$(dirname "$0")/device_check.sh" "$@"
