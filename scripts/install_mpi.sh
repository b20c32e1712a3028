#!/usr/bin/env bash
# Installs Open MPI from Debian's archive (mpirun and the C headers cgo
# needs for -tags mpi) unless it is there already.
set -euo pipefail
if command -v mpirun >/dev/null && pkg-config --exists ompi-c 2>/dev/null; then
	exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y --no-install-recommends openmpi-bin libopenmpi-dev pkg-config >/dev/null ||
	{ $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends openmpi-bin libopenmpi-dev pkg-config >/dev/null; }
