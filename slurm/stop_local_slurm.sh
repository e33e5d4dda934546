#!/usr/bin/env bash
# The script ships inside the package (benchmark/launch/slurm/, package data); this path is kept for habit and CI.
exec bash "$(dirname "$0")/../benchmark/launch/slurm/stop_local_slurm.sh" "$@"
