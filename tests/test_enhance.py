"""`mbsnet enhance` on bad inputs: every problem reported first, nothing written from it."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from mbsnet.cli import main
from mbsnet.errors import DataError, MbsnetError
from mbsnet.evaluation.enhance import enhance_files


class Gain(nn.Module):
    """Stand-in model: the spectrogram times a gain (NaN gain: a diverged model)."""

    def __init__(self, gain: float = 1.0) -> None:
        super().__init__()
        self.gain = gain

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return spec * self.gain


def noise(seconds: float, seed: int) -> np.ndarray:
    return 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", noise(0.5, 0), 16000)
    sf.write(src / "b_empty.wav", np.zeros(0), 16000)
    poisoned = noise(0.5, 1)
    poisoned[49] = np.nan
    sf.write(src / "c_nan.wav", poisoned, 16000, subtype="FLOAT")
    sf.write(src / "d.wav", noise(0.5, 2), 16000)
    return src


def test_every_bad_input_is_listed_before_any_output(folder, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataError) as caught:
        list(enhance_files(Gain(), folder, out))
    message = str(caught.value)
    assert message.startswith("2 of 4 input file(s) cannot be enhanced, nothing written")
    assert f"audio file {folder / 'b_empty.wav'} is empty" in message
    assert f"{folder / 'c_nan.wav'}: sample 49 is nan (1 non-finite samples)" in message
    assert not out.exists()


def test_a_diverged_model_writes_nothing(tmp_path):
    sf.write(tmp_path / "a.wav", noise(0.5, 0), 16000)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="a.wav: the model's output has NaN/Inf samples"):
        list(enhance_files(Gain(float("nan")), tmp_path / "a.wav", out))
    assert list(out.iterdir()) == []


def test_unwritable_output_folder_is_one_line_before_any_work(tmp_path, capsys):
    """A file where a folder should be: unwritable even for root."""
    sf.write(tmp_path / "a.wav", noise(0.5, 0), 16000)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    with pytest.raises(MbsnetError, match=f"cannot write to {blocker / 'out'}: Not a directory"):
        list(enhance_files(Gain(), tmp_path / "a.wav", blocker / "out"))


def test_cli_names_the_bad_file_without_a_traceback(folder, tmp_path, capsys):
    models = pytest.importorskip("mbsnet.models")
    cfg = {"channels": 4, "decoder": "uniform",
           "stages": [{"blocks": [{"type": "mlp", "axis": "band"}]}]}
    model = tmp_path / "model.pt"
    models.save_model(model, models.build_model(cfg), ablation="tiny", model_cfg=cfg, config={})
    assert main(["enhance", str(folder), "--model", str(model), "--out",
                 str(tmp_path / "out"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "c_nan.wav: sample 49 is nan" in err
    assert not (tmp_path / "out").exists()
