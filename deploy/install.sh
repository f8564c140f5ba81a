#!/usr/bin/env bash
# Set up airtrace on a fresh Debian/Ubuntu machine: the Debian packages it runs beside, then a
# virtual environment in .venv with the project and its test tools. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
PACKAGES=(python3.11 python3.11-venv  # a fresh Debian has no ensurepip, without which `python3.11 -m venv` fails
  ffmpeg espeak-ng redis-server postgresql icecast2 prometheus docker-compose
  ezstream  # an Icecast source client that sends Ogg files as they are, a chain each (tests/test_icecast.py)
  # recorded voices for real talk and babble in training and the benchmark (encoders/speech.py);
  # never the English core sounds: they are kept for independent evaluation
  asterisk-core-sounds-es-wav asterisk-core-sounds-fr-wav asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav
  asterisk-prompt-it-menardi-wav asterisk-prompt-fr-armelle asterisk-prompt-es-co)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

[ -x .venv/bin/python ] || python3.11 -m venv .venv
# torch first, pinned and from the CPU index, as the image does (deploy/Dockerfile): PyPI's torch for Linux
# is the CUDA build with gigabytes of nvidia-* libraries. (For GPU training, install a CUDA build after.)
# Only torch comes from there (--no-deps); its dependencies come with the project's from the usual index: where
# the CPU index cannot be reached, pip asked it for each of them, five tries each, a minute in all.
.venv/bin/pip install -q --no-deps torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
.venv/bin/pip install -q -e '.[test]'
# MuQ's declared dependencies would pull another torch; its model module needs only these.
.venv/bin/pip install -q --no-deps muq==0.1.0 easydict==1.14 einops==0.8.2
echo "airtrace is installed in .venv: run .venv/bin/airtrace --help"
