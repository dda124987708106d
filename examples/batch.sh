#!/usr/bin/env bash
# Feature maps for every image under a folder, resumable after a kill, with a per-image summary.
#   usage: examples/batch.sh [PHOTO_DIR] [OUT_DIR]      (defaults: examples/photos outputs/batch)
set -euo pipefail
photos=${1:-examples/photos}
out=${2:-outputs/batch}
vggviz=${VGGVIZ:-vggviz}

# --skip-existing: a rerun after Ctrl-C or a crash only does what is missing.
# Errors go to stderr, one line per bad image; exit 1 means some failed, the others are done.
manifest="$out/manifest.jsonl"
before=$(stat -c %i "$manifest" 2>/dev/null || true)  # a finished run replaces it (new inode)
status=0
"$vggviz" features "$photos" -o "$out" --skip-existing --quiet "${@:3}" || status=$?

# The run's manifest holds one JSON record per image (the same as --json prints). A run that
# could not start (a bad option, an unwritable -o) has said why on stderr and wrote none.
if [ ! -f "$manifest" ] || [ "$(stat -c %i "$manifest")" = "$before" ]; then
    echo "batch.sh: this run wrote no $manifest (exit $status; see above)" >&2
    exit "$status"
fi
python3 - "$manifest" <<'PY'
import json, sys
for line in open(sys.argv[1], encoding="utf-8"):
    r = json.loads(line)
    layers = r.get("layers") or []
    if layers:
        detail = f'{layers[-1]["name"]}: strongest channel #{layers[-1]["channels"][0]}'
    else:
        detail = r.get("error", "")
    print(f'{r["status"]:8} {r["input"]}  {detail}')
PY
echo "pictures: $out/  index: $out/index.html"
exit "$status"
