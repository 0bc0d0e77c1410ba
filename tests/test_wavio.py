"""mbsnet.wavio: reading and writing audio files, and the errors naming bad ones."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf

from mbsnet.errors import DataError
from mbsnet.wavio import (
    SAMPLE_RATE,
    audio_info,
    read_16k,
    read_16k_mono,
    read_audio,
    write_pcm16,
    write_wav_16k,
)


def test_write_pcm16_writes_exact_samples_behind_a_plain_header(tmp_path):
    samples = np.array([0, 1, -1, 32767, -32768, 1234], dtype=np.int16)
    path = tmp_path / "deep" / "dir" / "x.wav"
    write_pcm16(path, samples)
    raw = path.read_bytes()
    assert len(raw) == 44 + 2 * len(samples)
    assert np.array_equal(np.frombuffer(raw[44:], dtype="<i2"), samples)
    info = audio_info(path)
    assert (info.samplerate, info.channels, info.frames) == (SAMPLE_RATE, 1, len(samples))


def test_read_16k_reads_a_slice_and_refuses_other_rates_and_channels(tmp_path):
    samples = (np.arange(100) - 50).astype(np.int16)
    good = tmp_path / "good.wav"
    write_pcm16(good, samples)
    assert np.array_equal(read_16k(good), samples / 32768.0)
    part = read_16k(good, dtype="float32", start=10, frames=5)
    assert part.dtype == np.float32
    assert np.array_equal(part, (samples[10:15] / 32768.0).astype(np.float32))
    sf.write(tmp_path / "rate.wav", np.zeros(50), 8000)
    with pytest.raises(DataError, match=r"rate\.wav: expected 16 kHz mono, found 8000 Hz"):
        read_16k(tmp_path / "rate.wav")
    sf.write(tmp_path / "stereo.wav", np.zeros((50, 2)), SAMPLE_RATE)
    with pytest.raises(DataError, match=r"stereo\.wav: expected 16 kHz mono.*\(50, 2\)"):
        read_16k(tmp_path / "stereo.wav")


def test_read_16k_mono_averages_channels_and_resamples(tmp_path):
    t = np.arange(44100) / 44100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "in.wav", np.stack([tone, 0.2 * tone], axis=1), 44100, subtype="FLOAT")
    out = read_16k_mono(tmp_path / "in.wav")
    assert out.dtype == np.float32
    assert out.shape == (16000,)
    expected = 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert np.max(np.abs(out[200:-200] - expected[200:-200])) < 1e-3
    assert read_16k_mono(tmp_path / "in.wav", dtype="float64").dtype == np.float64


@pytest.mark.parametrize("reader", [audio_info, read_audio, read_16k, read_16k_mono])
def test_every_reader_names_an_unreadable_file(tmp_path, reader):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....garbage")
    with pytest.raises(DataError, match=r"cannot read audio file .*broken\.wav"):
        reader(bad)


def test_read_16k_mono_refuses_an_empty_file(tmp_path):
    write_pcm16(tmp_path / "empty.wav", np.zeros(0, dtype=np.int16))
    with pytest.raises(DataError, match=r"empty\.wav is empty"):
        read_16k_mono(tmp_path / "empty.wav")


def test_write_wav_16k_clips_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "out.wav"
    write_wav_16k(path, np.array([0.0, 0.5, 2.0, -3.0], dtype=np.float32))
    data, rate = read_audio(path, dtype="int16")
    assert rate == SAMPLE_RATE
    assert sf.info(path).subtype == "PCM_16"
    assert data[0] == 0
    assert data[2] == 32767
    assert data[3] == -32768
    assert abs(data[1] - 16384) <= 1
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]


@pytest.mark.parametrize("reader", [audio_info, read_audio])
def test_a_missing_file_or_a_folder_is_named_as_such(tmp_path, reader):
    with pytest.raises(DataError, match=f"audio file {tmp_path / 'gone.wav'} does not exist"):
        reader(tmp_path / "gone.wav")
    with pytest.raises(DataError, match=f"{tmp_path} is a folder, not an audio file"):
        reader(tmp_path)


def test_a_float_file_with_nan_is_refused_naming_the_sample(tmp_path):
    path = tmp_path / "nan.wav"
    samples = np.zeros((100, 2))
    samples[42, 1] = np.inf
    sf.write(path, samples, 16000, subtype="FLOAT")
    expected = f"{path}: sample 42 is inf (1 non-finite samples)"
    with pytest.raises(DataError, match=re.escape(expected)):
        read_audio(path)
    with pytest.raises(DataError, match="sample 42 is inf"):
        write_wav_16k(tmp_path / "out.wav", samples[:, 1])
    assert not (tmp_path / "out.wav").exists()
