"""Prepare, on the CPU machine, the files a lent GPU machine needs and cannot fetch.

The GPU machine has torch, transformers and sentence-transformers but no network, no
model weights, no ``gguf`` package and no shared data, and each call to it carries at
most 64 MiB (the working tree included). This script writes into ``.carry/`` (ignored
by git):

- ``payload.tar.part-NN``: one tar of everything below, cut into parts of equal size
  (at most ``--part-mb``, default 55 MB), so each part travels in its own call:
  - ``minilm-l6/``: the packaged all-MiniLM-L6-v2 with its weights as fp16 safetensors
    (45 MB instead of 91 MB; rrpo and the peer cast it back as they need);
  - ``SmolLM2-135M-Instruct.Q4_1.gguf``: the reader (98 MB; its fp16 safetensors copy
    would be 270 MB);
  - ``wheels/gguf-<version>-py3-none-any.whl``: the version installed here
    (``pip download --no-deps``), which transformers needs to read the GGUF;
  - ``data/``: the HotpotQA distractor train and dev files.
- ``manifest.json``: the sha256 and size of every part and of every file in the tar.

``scripts/gpu_bootstrap.sh`` on the GPU side checks each part as it arrives, joins them
once all are there, checks every file again, installs the wheel and rrpo offline and
writes the environment that points rrpo at the carried models (benchmarks/README.md,
"On a lent GPU machine").

    python scripts/gpu_prepare.py            # ~1 min; prints the carry list of each call
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import subprocess
import sys
import tarfile
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_FILES = ("hotpotqa-distractor.train.jsonl.gz", "hotpotqa-distractor.dev.jsonl.gz")
PAYLOAD = "payload.tar"
CALL_LIMIT = 64 * 2**20  # what one device call carries, working tree included


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_minilm(target: Path) -> None:
    """The packaged MiniLM with fp16 weights; config, tokenizer and pooling files as they are."""
    from safetensors.torch import load_file, save_file

    from rrpo.models import packaged_minilm_dir

    source = packaged_minilm_dir()
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors", "*.bin", "*.onnx"))
    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(source / "model.safetensors").items()}
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})


def stage_gguf_wheel(target: Path) -> str:
    """The gguf wheel of the installed version, through pip's ordinary client."""
    wanted = version("gguf")
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    f"gguf=={wanted}", "-d", str(target)], check=True)  # fmt: skip
    return wanted


def stage(stage_dir: Path, data_dir: Path) -> dict[str, str]:
    from rrpo.models import packaged_smollm2_gguf

    shutil.rmtree(stage_dir, ignore_errors=True)
    stage_dir.mkdir(parents=True)
    stage_minilm(stage_dir / "minilm-l6")
    gguf = packaged_smollm2_gguf()
    shutil.copy2(gguf, stage_dir / gguf.name)
    gguf_version = stage_gguf_wheel(stage_dir / "wheels")
    (stage_dir / "data").mkdir()
    for name in DATA_FILES:
        shutil.copy2(data_dir / name, stage_dir / "data" / name)
    return {"gguf": gguf_version, "reader_gguf": gguf.name}


def write_tar(stage_dir: Path, tar_path: Path) -> None:
    # Uncompressed: the weights barely compress, and the GPU side unpacks it in a second.
    with tarfile.open(tar_path, "w") as tar:
        for path in sorted(stage_dir.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(stage_dir).as_posix())


def split(tar_path: Path, out_dir: Path, part_bytes: int) -> list[Path]:
    """Parts of equal size (the last a little smaller), none above ``part_bytes``."""
    total = tar_path.stat().st_size
    count = max(1, math.ceil(total / part_bytes))
    size = math.ceil(total / count)
    parts = []
    with tar_path.open("rb") as src:
        for i in range(count):
            part = out_dir / f"{PAYLOAD}.part-{i:02d}"
            part.write_bytes(src.read(size))
            parts.append(part)
    return parts


def tree_bytes() -> int:
    """Bytes of the working tree that travel with every call (tracked + untracked, not ignored)."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")  # fmt: skip
    return sum((REPO / n.decode()).stat().st_size for n in names if n and (REPO / n.decode()).is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / ".carry", help="ignored folder to write into (default: .carry)")
    p.add_argument("--part-mb", type=float, default=55.0, help="largest part, in MB (default: 55)")
    p.add_argument("--data-dir", type=Path, default=None, help="shared data folder (default: rrpo.data.shared_data_dir())")
    args = p.parse_args(argv)
    from rrpo.data import shared_data_dir

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{PAYLOAD}*"):
        old.unlink()
    stage_dir = out / "stage"
    versions = stage(stage_dir, args.data_dir or shared_data_dir())
    files = {p.relative_to(stage_dir).as_posix(): {"sha256": sha256(p), "bytes": p.stat().st_size}
             for p in sorted(stage_dir.rglob("*")) if p.is_file()}  # fmt: skip
    tar_path = out / PAYLOAD
    write_tar(stage_dir, tar_path)
    tar_sha = sha256(tar_path)
    parts = split(tar_path, out, int(args.part_mb * 1e6))
    tar_path.unlink()
    shutil.rmtree(stage_dir)
    manifest = {
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "payload": {"name": PAYLOAD, "sha256": tar_sha},
        "parts": [{"name": p.name, "sha256": sha256(p), "bytes": p.stat().st_size} for p in parts],
        "files": files,
        **versions,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    tree = tree_bytes()
    print(f"wrote {len(parts)} parts and manifest.json to {out}; the working tree adds {tree / 2**20:.1f} MiB per call")
    rel = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    over = False
    for i, part in enumerate(parts):
        load = tree + part.stat().st_size + (out / "manifest.json").stat().st_size
        over |= load > CALL_LIMIT
        flag = "OK" if load <= CALL_LIMIT else "OVER the 64 MiB limit"
        print(f"call {i + 1}: carry [\"{rel}/manifest.json\", \"{rel}/{part.name}\"]  ({load / 2**20:.1f} MiB, {flag})")
    if over:  # untracked, unignored output folders travel with every call too
        print("too large: lower --part-mb, or ignore/remove big untracked files (git status)", file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
