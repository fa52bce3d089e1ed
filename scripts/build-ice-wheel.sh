#!/usr/bin/env bash
# Build the zeroc-ice 3.6.5 wheel for this Python, once, into a cache outside
# the repository, and print the wheel's path.
#
# zeroc-ice 3.6.5 is the only Ice release omero-py 5.x accepts
# (>=3.6.5,<3.7) and PyPI has it only as source. Two lines of it stopped
# compiling with Python 3.11: src/Slice.cpp includes <eval.h>, which
# Python 3.11 removed, and src/Util.cpp reads PyThreadState->frame, which
# became private; PyEval_GetFrame() returns the same frame.
set -euo pipefail

python=${PYTHON:-python3}
cache=${OMEROFS_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/omerofs/wheels}
tag=$("$python" -c 'import sys, sysconfig; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-" + sysconfig.get_platform().replace("-", "_").replace(".", "_"))')

mkdir -p "$cache"
existing=$(ls "$cache"/zeroc_ice-3.6.5-*"${tag%%-*}"*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$existing" ]; then
    echo "$existing"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building zeroc-ice 3.6.5 for $tag (about 7 minutes on 2 cores)" >&2
"$python" -m pip download --quiet --no-deps --no-binary :all: "zeroc-ice==3.6.5" -d "$work" >&2
tar -xzf "$work"/zeroc-ice-3.6.5.tar.gz -C "$work"
src="$work/zeroc-ice-3.6.5"
sed -i '/#include <eval.h>/d' "$src/src/Slice.cpp"
sed -i 's/PyThreadState_GET()->frame/PyEval_GetFrame()/' "$src/src/Util.cpp"
grep -q 'PyEval_GetFrame()' "$src/src/Util.cpp"

"$python" -m pip wheel --quiet --no-deps -w "$work/dist" "$src" >&2
cp "$work"/dist/zeroc_ice-*.whl "$cache"/
ls "$cache"/zeroc_ice-3.6.5-*.whl | head -n 1
