"""Speech synthesis with eSpeak NG, driven through its C API with ctypes.

The shared library and its voice data come from the PyPI package ``espeakng-loader``,
so no system package is needed. eSpeak keeps global state, so each process initialises
the library once and calls are serialised with a lock.

That state also carries over from one utterance to the next (pitch flutter phase, gain
control, libc ``rand``), so an utterance's samples depend on everything spoken before it in
the process. :func:`synthesize_fresh` therefore speaks a list in order in a new Python
process: the same list always gives the same samples.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..console import ROOT
from ..errors import MbsnetError

ESPEAK_RATE = 22050  # eSpeak NG's native output rate
RANDOM_SEED = 0

# espeak_AUDIO_OUTPUT, espeak_PARAMETER, espeak_POSITION_TYPE and flag values of speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_EE_OK = 0

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short),
                                   ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class Voice:
    """An eSpeak voice: ``name`` such as ``en-us+m3``, pitch and range 0..100, rate in
    words per minute."""

    name: str
    pitch: int = 50
    pitch_range: int = 50
    rate: int = 175


class _Engine:
    """The process-wide eSpeak NG instance (loaded on first use)."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise MbsnetError("the synthetic corpus needs the package 'espeakng-loader'") from exc
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                                ctypes.c_int]
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint,
                                           ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                           ctypes.c_void_p, ctypes.c_void_p]
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                           espeakng_loader.get_data_path().encode(), 0)
        if rate != ESPEAK_RATE:
            raise MbsnetError(f"eSpeak NG failed to initialise (returned {rate})")
        # breathy voices draw noise from eSpeak's random generator, seeded from the clock
        self._lib.espeak_ng_SetRandSeed(RANDOM_SEED)
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # keep a reference: C holds it
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()

    def _collect(self, wav, n, _events) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0: continue synthesis

    def _check(self, status: int, what: str) -> None:
        if status != _EE_OK:
            raise MbsnetError(f"eSpeak NG: {what} failed (error {status})")

    def synthesize(self, text: str, voice: Voice) -> np.ndarray:
        data = text.encode("utf-8") + b"\0"
        with self._lock:
            self._check(self._lib.espeak_SetVoiceByName(voice.name.encode()),
                        f"voice '{voice.name}'")
            for param, value in ((_PARAM_RATE, voice.rate), (_PARAM_PITCH, voice.pitch),
                                 (_PARAM_RANGE, voice.pitch_range), (_PARAM_VOLUME, 100)):
                self._check(self._lib.espeak_SetParameter(param, int(value), 0),
                            f"parameter {param}={value}")
            self._chunks = []
            self._check(self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0,
                                               _CHARS_UTF8 | _ENDPAUSE, None, None),
                        f"synthesis of {text!r}")
            chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


_engine: _Engine | None = None
_engine_lock = threading.Lock()


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """Speak ``text`` with ``voice``: int16 samples at :data:`ESPEAK_RATE` Hz."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _Engine()
    return _engine.synthesize(text, voice)


def synthesize_fresh(jobs: Sequence[tuple[str, Voice]]) -> list[np.ndarray]:
    """Speak ``(text, voice)`` jobs in order in a fresh Python process (reproducible);
    int16 arrays at :data:`ESPEAK_RATE` Hz."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    # the child's progress lines (and any traceback) go straight to our stderr; it shows
    # the records this process shows
    level = logging.getLogger(ROOT).getEffectiveLevel()
    proc = subprocess.run([sys.executable, "-m", __name__, str(level)],
                          input=pickle.dumps(list(jobs)), stdout=subprocess.PIPE, env=env)
    if proc.returncode != 0:
        raise MbsnetError(f"the eSpeak NG synthesis process failed (exit status "
                          f"{proc.returncode}; its messages are above)")
    status, result = pickle.loads(proc.stdout)
    if status != "ok":
        raise MbsnetError(result)
    return result


def _serve(level: int) -> None:
    """Entry point of :func:`synthesize_fresh`'s process: jobs on stdin, ``("ok",
    samples)`` or ``("error", message)`` on stdout; log records of ``level`` and above on
    stderr (stdout carries the reply)."""
    from ..console import console
    from ..progress import progress

    jobs = pickle.loads(sys.stdin.buffer.read())
    with console(level, stdout=sys.stderr):
        reply: tuple[str, list[np.ndarray] | str]
        try:
            reply = ("ok", [synthesize(text, voice)
                            for text, voice in progress(jobs, len(jobs), "prepare: speaking")])
        except MbsnetError as exc:
            reply = ("error", str(exc))
    sys.stdout.buffer.write(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
