#!/usr/bin/env bash
# CI set-up for the Slurm tests: install Slurm and munge (Debian packages) if missing, then start
# the local two-node test cluster (tools/slurm_cluster.sh). Idempotent; needs root.
#
#   eval "$(tools/ci_slurm_setup.sh)"   # before `make test`; tests/slurm then run, not skip
#
# Prints `export SLURM_CONF=...` (the cluster's private config; nothing under /etc/slurm is
# written): the tests and every Slurm command of CI reach the cluster through it.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
tools/slurm_cluster.sh start >&2
tools/slurm_cluster.sh env
