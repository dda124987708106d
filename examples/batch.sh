#!/usr/bin/env bash
# Feature maps for every image under a folder, resumable after a kill, with a per-image summary.
#   usage: examples/batch.sh [PHOTO_DIR] [OUT_DIR]      (defaults: examples/photos outputs/batch)
set -euo pipefail
photos=${1:-examples/photos}
out=${2:-outputs/batch}
vggviz=${VGGVIZ:-vggviz}

# --skip-existing: a rerun after Ctrl-C or a crash only does what is missing.
# --json: one line per image on stdout; progress and errors go to stderr.
status=0
"$vggviz" features "$photos" -o "$out" --skip-existing --json --quiet "${@:3}" > "$out.jsonl" || status=$?

# Exit 1 means some images failed (each was named on stderr); the others are done.
python3 - "$out.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    top = {l["name"]: l["channels"][0] for l in r.get("layers", [])}
    print(f'{r["status"]:8} {r["input"]}  strongest channel of conv13: {top.get("conv13", "-")}')
PY
echo "pictures: $out/  index: $out/index.html"
exit "$status"
