#!/usr/bin/env bash
# Install what the local SLURM test cluster (slurm/cluster.sh) and the SSH launcher tests
# need, on Debian 12, as root. Safe to run again: packages already present are skipped,
# and `apt-get update` runs only when something is missing and the package lists are empty.
#
#   sudo bash slurm/install-deps.sh
#
# No service is started here (there may be no systemd); slurm/cluster.sh starts the daemons.
set -euo pipefail

PACKAGES=(
  slurm-wlm        # slurmctld, slurmd and the client commands
  slurm-client
  slurmctld
  slurmd
  slurmdbd
  munge
  mariadb-server
  mariadb-client
  iproute2         # ip netns / veth / bridge
  openssh-server
  openssh-client
  util-linux       # nsenter, unshare
  procps           # ps, for checks and tests
)

if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps.sh: run as root (apt-get install needs it)" >&2
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps.sh: all packages already installed"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# Keep package post-install scripts from starting daemons: without systemd they would go
# through invoke-rc.d, which consults policy-rc.d; exit code 101 means "do not start".
policy=/usr/sbin/policy-rc.d
own_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  own_policy=1
fi
remove_own_policy() {
  if [[ $own_policy -eq 1 ]]; then rm -f "$policy"; fi
}
trap remove_own_policy EXIT

# A fresh image often ships without package lists; an update is needed only then, or when
# an install fails because the lists are stale.
if ! compgen -G '/var/lib/apt/lists/*_Packages*' > /dev/null; then
  apt-get update
fi
if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
echo "install-deps.sh: installed ${missing[*]}"
