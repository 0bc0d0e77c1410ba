"""`mbsnet prepare`: write the corpus (results/data: WAV pairs and manifest.tsv)."""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from ..atomic import atomic_dir, check_writable, write_json
from ..config import load_config
from ..errors import ConfigError, DataError

HELP = ("Prepare the corpus in results/data: the built-in synthetic one (data.source: "
        "synthetic) or a VoiceBank-DEMAND import (data.source: voicebank).")
STAMP = "prepare.json"  # beside manifest.tsv: what the corpus was made from
CORPUS_FORMAT = 1  # bump when a code change alters the prepared files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config.yaml",
                        help="config file (default: %(default)s)")
    parser.add_argument("--out", default="results/data",
                        help="output folder (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes for mixing/resampling (default: resources.threads)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if the folder was made from the same data config")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    workers = args.workers if args.workers is not None else config["resources"]["threads"]
    prepare_corpus(config, Path(args.out), workers=workers, force=args.force)
    return 0


def _voicebank_root(data: Mapping[str, Any]) -> Path:
    if not data.get("root"):
        raise ConfigError("data.root must point at the VoiceBank-DEMAND folder when "
                          "data.source is voicebank")
    return Path(data["root"]).expanduser().resolve()


def corpus_stamp(data: Mapping[str, Any]) -> dict:
    """Everything the prepared files depend on; equal stamps mean identical corpora."""
    from ..data import synthetic, voicebank

    stamp: dict[str, Any] = {"format": CORPUS_FORMAT, "source": data["source"],
                             "valid_speakers": data["valid_speakers"]}
    if data["source"] == "synthetic":
        stamp.update(synthetic=dict(data["synthetic"]), sentences=synthetic.sentences_digest())
    else:
        root = _voicebank_root(data)
        stamp.update(root=str(root), files=voicebank.fingerprint(root))
    return stamp


def is_up_to_date(out: Path, stamp: Mapping[str, Any]) -> bool:
    """``out`` holds a complete corpus made from the same stamp."""
    from ..data.manifest import MANIFEST, read_manifest

    try:
        previous = json.loads((out / STAMP).read_text())
        if previous != json.loads(json.dumps(stamp)):
            return False
        read_manifest(out / MANIFEST)  # every listed WAV still there
    except (OSError, ValueError, DataError):
        return False
    return True


def _check_out(out: Path, root: Path) -> None:
    out = out.resolve()
    if out == root or root in out.parents or out in root.parents:
        raise ConfigError(f"the output folder {out} overlaps data.root {root}; "
                          f"the VoiceBank-DEMAND download is never written to")


def prepare_corpus(config: Mapping[str, Any], out: Path, workers: int = 1,
                   force: bool = False) -> bool:
    """Write the corpus of ``config['data']`` to ``out`` (atomically: built beside it and
    renamed at the end). Returns False, doing nothing, if ``out`` is already up to date."""
    from ..data import synthetic, voicebank
    from ..data.manifest import MANIFEST, write_manifest

    data = config["data"]
    stamp = corpus_stamp(data)
    if not force and is_up_to_date(out, stamp):
        print(f"prepare: {out} is up to date (made from the same data config); nothing to do",
              flush=True)
        return False
    check_writable(out.parent)  # the corpus is built beside `out`, then renamed onto it
    if data["source"] == "synthetic":
        plan = synthetic.plan_corpus(data["synthetic"], data["valid_speakers"])
        write = functools.partial(synthetic.build, plan)
    else:
        root = _voicebank_root(data)
        _check_out(out, root)
        corpus = voicebank.scan(root, data["valid_speakers"])  # validates before writing
        write = functools.partial(voicebank.build, corpus)
    start = time.perf_counter()
    with atomic_dir(out) as tmp:
        rows = write(tmp, workers=workers)
        write_manifest(rows, tmp / MANIFEST)
        write_json(tmp / STAMP, stamp)
    counts = Counter(r.split for r in rows)
    speakers = {split: len({r.speaker for r in rows if r.split == split}) for split in counts}
    hours = sum(r.duration for r in rows) / 3600
    summary = ", ".join(f"{split} {counts[split]} utterances / {speakers[split]} speakers"
                        for split in ("train", "valid", "test") if split in counts)
    print(f"prepare: wrote {out} ({summary}; {hours:.2f} h) in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    return True
