"""The prepared corpus as a whole: which corpus the data config asks for, the prepare.json
record of what a folder was made from, and the rebuild that happens only when that record
(or a listed WAV) no longer matches."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import layout
from ..atomic import atomic_dir, check_writable, write_json
from ..errors import ConfigError, DataError

logger = logging.getLogger(__name__)

STAMP = layout.within(layout.DATA, layout.PREPARE_RECORD)  # what the corpus was made from
CORPUS_FORMAT = 1  # bump when a code change alters the prepared files


def _voicebank_root(data: Mapping[str, Any]) -> Path:
    if not data.get("root"):
        raise ConfigError("data.root must point at the VoiceBank-DEMAND folder when "
                          "data.source is voicebank")
    return Path(data["root"]).expanduser().resolve()


def corpus_stamp(data: Mapping[str, Any]) -> dict:
    """Everything the prepared files depend on; equal stamps mean identical corpora."""
    from . import synthetic, voicebank

    stamp: dict[str, Any] = {"format": CORPUS_FORMAT, "source": data["source"],
                             "valid_speakers": data["valid_speakers"]}
    if data["source"] == "synthetic":
        stamp.update(synthetic=dict(data["synthetic"]), sentences=synthetic.sentences_digest())
    else:
        root = _voicebank_root(data)
        stamp.update(root=str(root), files=voicebank.fingerprint(root))
    return stamp


def stale_reason(out: Path, stamp: Mapping[str, Any]) -> str | None:
    """Why ``out`` does not hold a complete corpus made from ``stamp``; None if it does."""
    from .manifest import MANIFEST, read_manifest

    try:
        previous = json.loads((out / STAMP).read_text())
    except (OSError, ValueError) as exc:
        return f"no readable {STAMP} ({exc})"
    if previous != json.loads(json.dumps(stamp)):
        return f"{STAMP} records another data config or download"
    try:
        read_manifest(out / MANIFEST)  # every listed WAV still there
    except (OSError, ValueError, DataError) as exc:
        return str(exc)
    return None


def _check_out(out: Path, root: Path) -> None:
    out = out.resolve()
    if out == root or root in out.parents or out in root.parents:
        raise ConfigError(f"the output folder {out} overlaps data.root {root}; "
                          f"the VoiceBank-DEMAND download is never written to")


def prepare_corpus(config: Mapping[str, Any], out: Path, workers: int = 1,
                   force: bool = False) -> bool:
    """Write the corpus of ``config['data']`` to ``out`` (atomically: built beside it and
    renamed at the end). Returns False, doing nothing, if ``out`` is already up to date."""
    from . import synthetic, voicebank
    from .manifest import MANIFEST, write_manifest

    data = config["data"]
    stamp = corpus_stamp(data)
    reason = "--force" if force else stale_reason(out, stamp)
    if reason is None:
        logger.info(f"prepare: {out} is up to date (made from the same data config); "
                    "nothing to do")
        return False
    logger.debug(f"prepare: building {out}: {reason}")
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
    logger.info(f"prepare: wrote {out} ({summary}; {hours:.2f} h) in "
                f"{time.perf_counter() - start:.1f} s")
    return True
