#!/usr/bin/env bash
# GPU side of the transfer recipe (scripts/gpu_prepare.py is the CPU side).
#
# Run from the repository root on the lent GPU machine, once per call that carries a
# part (.carry/manifest.json + .carry/payload.tar.part-NN):
#
#   bash scripts/gpu_bootstrap.sh              # keep the parts that came; install once all are here
#   bash scripts/gpu_bootstrap.sh --complete   # the same, but fail unless everything is installed
#   . /tmp/rrpo-gpu/env.sh                     # then: rrpo finds the carried models and data offline
#
# Each part is checked against the manifest's sha256 and copied to $RRPO_GPU_STAGE
# (default /tmp/rrpo-gpu), which lasts as long as the machine stays up (about 30 s
# between calls): send the parts in calls right after each other. Once every part is
# there they are joined, the tar and every file in it are checked again, the gguf wheel
# is installed with pip --no-index, rrpo is put on PYTHONPATH straight from this
# checkout (so a code fix needs no reinstall), and env.sh is written.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARRY="${RRPO_CARRY_DIR:-$REPO/.carry}"
STAGE="${RRPO_GPU_STAGE:-/tmp/rrpo-gpu}"
PY="${PYTHON:-python3}"
REQUIRE_COMPLETE=0
[[ "${1:-}" == "--complete" ]] && REQUIRE_COMPLETE=1

mkdir -p "$STAGE/parts"
if [[ -f "$CARRY/manifest.json" ]]; then
  cp "$CARRY/manifest.json" "$STAGE/manifest.json"
fi
if [[ ! -f "$STAGE/manifest.json" ]]; then
  echo "gpu_bootstrap: no manifest.json in $CARRY or $STAGE: carry .carry/manifest.json with each part" >&2
  exit 2
fi

# 1. Keep each arriving part that matches its checksum; say which are still missing.
"$PY" - "$STAGE" "$CARRY" <<'EOF'
import hashlib, json, shutil, sys
from pathlib import Path
stage, carry = Path(sys.argv[1]), Path(sys.argv[2])
manifest = json.loads((stage / "manifest.json").read_text())

def sha(path):
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

missing = []
for part in manifest["parts"]:
    kept, arrived = stage / "parts" / part["name"], carry / part["name"]
    if arrived.is_file() and not (kept.is_file() and kept.stat().st_size == part["bytes"]):
        if sha(arrived) != part["sha256"]:
            sys.exit(f"gpu_bootstrap: {arrived} does not match its sha256: send it again")
        shutil.copyfile(arrived, kept)
        print(f"gpu_bootstrap: kept {part['name']} ({part['bytes'] / 1e6:.1f} MB)")
    if not kept.is_file():
        missing.append(part["name"])
(stage / "missing.txt").write_text("\n".join(missing))
print("gpu_bootstrap: parts still missing: " + (", ".join(missing) if missing else "none"))
EOF

if [[ -s "$STAGE/missing.txt" ]]; then
  if (( REQUIRE_COMPLETE )); then
    echo "gpu_bootstrap: incomplete (the machine may have been given back between calls): send the missing parts" >&2
    exit 3
  fi
  exit 0
fi

# 2. Join, check, unpack (once per machine: a second run finds the marker).
if [[ ! -f "$STAGE/payload/.verified" ]]; then
  "$PY" - "$STAGE" <<'EOF'
import hashlib, json, shutil, sys, tarfile
from pathlib import Path
stage = Path(sys.argv[1])
manifest = json.loads((stage / "manifest.json").read_text())

def sha(path):
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

tar_path = stage / manifest["payload"]["name"]
with tar_path.open("wb") as out:
    for part in manifest["parts"]:
        with (stage / "parts" / part["name"]).open("rb") as src:
            shutil.copyfileobj(src, out)
if sha(tar_path) != manifest["payload"]["sha256"]:
    sys.exit("gpu_bootstrap: the joined payload does not match its sha256")
payload = stage / "payload"
shutil.rmtree(payload, ignore_errors=True)
with tarfile.open(tar_path) as tar:
    tar.extractall(payload, filter="data")
for name, info in manifest["files"].items():
    if sha(payload / name) != info["sha256"]:
        sys.exit(f"gpu_bootstrap: {name} does not match its sha256")
tar_path.unlink()
(payload / ".verified").write_text("ok\n")
print(f"gpu_bootstrap: {len(manifest['files'])} files unpacked and verified in {payload}")
EOF
fi

# 3. Install the wheels offline; rrpo itself runs from this checkout (core/ is the rrpo package).
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$STAGE/site" "$STAGE"/payload/wheels/*.whl
mkdir -p "$STAGE/src" "$STAGE/cache"
ln -sfn "$REPO/core" "$STAGE/src/rrpo"

GGUF="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["reader_gguf"])' "$STAGE/manifest.json")"
cat > "$STAGE/env.sh" <<EOF
export PYTHONPATH="$STAGE/site:$STAGE/src:$REPO\${PYTHONPATH:+:\$PYTHONPATH}"
export RRPO_MINILM_DIR="$STAGE/payload/minilm-l6"
export RRPO_SMOLLM2_GGUF="$STAGE/payload/$GGUF"
export RRPO_SHARED_DATA="$STAGE/payload/data"
export RRPO_CACHE_DIR="$STAGE/cache"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
EOF

# 4. A one-second check that rrpo resolves both defaults to the carried files.
# shellcheck disable=SC1091
. "$STAGE/env.sh"
"$PY" - <<'EOF'
import gguf, rrpo
from rrpo.models import resolve_reader, resolve_reranker
print(f"gpu_bootstrap: ready: rrpo {rrpo.__version__} from {rrpo.__file__}, gguf {gguf.__version__ if hasattr(gguf, '__version__') else 'ok'}")
print(f"gpu_bootstrap: minilm-l6 -> {resolve_reranker('minilm-l6').path}")
r = resolve_reader('smollm2-135m')
print(f"gpu_bootstrap: smollm2-135m -> {r.path}/{r.gguf_file}")
# transformers dequantises a GGUF in Python (tens of seconds); do it once here, into
# $RRPO_CACHE_DIR, so no benchmark part spends its budget on it.
from pathlib import Path
from rrpo.readers import _dequantized_gguf_dir
print(f"gpu_bootstrap: reader weights -> {_dequantized_gguf_dir(Path(r.path) / r.gguf_file)}")
EOF
echo "gpu_bootstrap: now run: . $STAGE/env.sh"
