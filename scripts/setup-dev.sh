#!/usr/bin/env bash
# Installs everything the test suite needs: the package with all its extras, and the system
# programs some tests run (Chromium for the web-demo browser test, espeak-ng for speech, a C
# compiler for the native kernels, which the tests require to be built and used).
# Debian/Ubuntu; run as root (or with sudo available). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v chromium >/dev/null 2>&1 || command -v chromium-headless-shell >/dev/null 2>&1 || need+=(chromium)
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi
python -m pip install -q -r requirements.txt -e ".[test,download,corpus,ray,lhotse,webdataset,s3,eval,demo,train,serve]"
# Resemblyzer pulls the old webrtcvad, whose module imports pkg_resources (gone from setuptools >= 81);
# webrtcvad-wheels installs the same module without it: make sure its copy is the one on disk.
python -m pip install -q --force-reinstall --no-deps webrtcvad-wheels
