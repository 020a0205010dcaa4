#!/usr/bin/env bash
# System packages fairyc uses beyond the Rust toolchain, installed with apt
# when missing: DejaVu Sans for the labels of training plots (without it
# plots are drawn unlabelled). Best effort: without apt or root it says what
# to install and goes on.
set -uo pipefail
need=()
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo -n"
if command -v apt-get >/dev/null && $sudo apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
  echo "installed ${need[*]}"
else
  echo "warning: could not install ${need[*]} (apt-get as root); plots will have no labels" >&2
fi
