"""The orbit video writer: an mp4 that opens, odd sizes padded; without imageio-ffmpeg a warning and no file."""

import importlib.util
import logging

import imageio.v3 as iio
import numpy as np
import pytest

from hash3d.training.outputs import save_video


def frames(n=6, h=33, w=47):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.skipif(importlib.util.find_spec("imageio_ffmpeg") is None, reason="imageio-ffmpeg not installed")
def test_mp4_opens_with_every_frame_and_even_size(tmp_path):
    path = save_video(tmp_path / "sub" / "orbit.mp4", frames(), fps=12)
    assert path == tmp_path / "sub" / "orbit.mp4"
    video = iio.imread(path, plugin="FFMPEG", index=None)
    assert video.shape == (6, 34, 48, 3)  # yuv420p needs even sizes: padded by one row and column


def test_without_imageio_ffmpeg_a_warning_and_nothing_written(tmp_path, monkeypatch, caplog):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "imageio_ffmpeg" else real(name, *a))
    with caplog.at_level(logging.WARNING, logger="hash3d"):
        assert save_video(tmp_path / "orbit.mp4", frames()) is None
    assert not (tmp_path / "orbit.mp4").exists()
    assert "imageio-ffmpeg is not installed (fix: pip install imageio-ffmpeg)" in caplog.text


def test_no_frames_no_file(tmp_path):
    assert save_video(tmp_path / "orbit.mp4", []) is None
    assert not (tmp_path / "orbit.mp4").exists()
