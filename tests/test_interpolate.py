"""Frame interpolation (`--fps 8|16|24`): the frame count rule at every chunk split, motion-compensated
in-between frames, the growing mp4 at 16 fps, fps 8 byte for byte the old path, and a bad fps refused."""

from __future__ import annotations

import json

import imageio_ffmpeg
import numpy as np
import pytest

from engine.cli.main import main
from engine.generation.interpolate import (
    ChunkInterpolator,
    FfmpegMinterpolate,
    InterpolatingWriter,
    streamed_frame_count,
    video_frame_count,
)
from engine.generation.job import JobSpec
from engine.generation.video import StreamingMp4Writer
from engine.params import check_value, fps_text

PROMPT = "A paper boat drifting down a rainy street."
SQUARE = 16
SPEED = 8  # pixels a model frame


def moving_square(count: int, height: int = 64, width: int = 112) -> np.ndarray:
    """A 16-pixel yellow square moving right by SPEED pixels a frame over a grey ground."""
    frames = np.full((count, height, width, 3), 40, dtype=np.uint8)
    for index in range(count):
        left = 8 + SPEED * index
        frames[index, 24 : 24 + SQUARE, left : left + SQUARE] = (230, 200, 30)
    return frames


def square_columns(frame: np.ndarray) -> np.ndarray:
    """The columns where the square shows (pixels far from the ground's grey)."""
    return np.nonzero((np.abs(frame.astype(int) - 40).sum(-1) > 150).any(0))[0]


def probe(path) -> tuple[int, float]:
    """(frames, fps) of an mp4 as ffmpeg reads it."""
    reader = imageio_ffmpeg.read_frames(str(path))
    fps = next(reader)["fps"]
    reader.close()
    return imageio_ffmpeg.count_frames_and_secs(str(path))[0], fps


SPLITS = [[9], [1, 8], [4, 5], [8, 1], [2, 1, 6], [3, 3, 3]]


@pytest.mark.parametrize("factor", [2, 3])
def test_frame_count_rule_holds_at_every_chunk_split(factor):
    frames = moving_square(9)
    whole = None
    for split in SPLITS:
        stream = ChunkInterpolator(8 * factor, 8)
        made, sizes = [], []
        for index, count in enumerate(split):
            first = sum(sizes)
            out = stream.push(frames[first : first + count], last=index == len(split) - 1)
            sizes.append(count)
            made.append(out)
            finished = index == len(split) - 1
            expected = streamed_frame_count(sizes, factor, finished)
            assert sum(map(len, made)) == expected, (split, index)
            assert len(out) == ((count - 1) * factor + 1 if index == 0 else count * factor) + (
                factor - 1 if finished else 0
            )
        video = np.concatenate(made)
        assert stream.finish() is None  # the last chunk brought the hold
        assert len(video) == video_frame_count(9, factor) == 9 * factor == stream.video_frames
        assert np.array_equal(video[::factor], frames), split  # the model's frames, unchanged, in place
        assert np.array_equal(video[-factor:], np.repeat(frames[-1:], factor, 0))  # the last one held
        # no model frame is doubled or lost: only the hold repeats a frame
        pairs = zip(video[:-factor], video[1 : -factor + 1], strict=True)
        assert not any(np.array_equal(a, b) for a, b in pairs)
        if split == [9]:
            whole = video
        else:  # chunk 0 is exactly a one-pass interpolation's start (later steps: see CONTEXT)
            assert np.array_equal(video[: (split[0] - 1) * factor + 1], whole[: (split[0] - 1) * factor + 1])


def test_a_video_cut_short_still_ends_with_the_hold(tmp_path):
    writer = InterpolatingWriter(tmp_path / "v.mp4", 16, 8)
    video = writer.append(moving_square(5), last=False)  # a cancel after this chunk: no last one
    assert len(video) == 9 and writer.frames_written == 5 and writer.seconds == 5 / 8
    assert probe(writer.partial) == (9, 16.0)
    writer.finish()
    assert probe(tmp_path / "v.mp4") == (10, 16.0) and writer.video_frames == 10
    assert writer.record()["method"] == "ffmpeg-minterpolate-mci" and writer.record()["factor"] == 2


@pytest.mark.parametrize("factor", [2, 3])
def test_the_in_between_frames_are_motion_compensated(factor):
    frames = moving_square(6)
    video = FfmpegMinterpolate().between(frames, factor)
    assert len(video) == 5 * factor + 1
    for step in (2, 3):  # a few frames in: the motion search has its predictors
        before, after = square_columns(frames[step]), square_columns(frames[step + 1])
        for offset in range(1, factor):
            middle = video[step * factor + offset]
            columns = square_columns(middle)
            expected = before.mean() + SPEED * offset / factor
            # the square moved part of the way, whole: a copy would sit on a neighbour, a blend of the two
            # would show both squares (twice as wide)
            assert abs(columns.mean() - expected) <= 2, (step, offset, columns)
            assert SQUARE - 2 <= len(columns) <= SQUARE + 2
            assert before.mean() < columns.mean() < after.mean()


def test_a_two_chunk_video_at_16_fps_plays_after_each_chunk_and_says_its_rate(pipeline, tmp_path):
    tokens = tmp_path / "codes.npy"  # two segments of the tiny model's codes: stage 2 only, no language model
    np.save(tokens, np.random.default_rng(0).integers(0, 64, 22))
    chunks, playable = [], []

    def on_chunk(done) -> None:
        chunks.append(done)
        playable.append(probe(done.partial_video))

    job = JobSpec(PROMPT, tmp_path / "a" / "v.mp4", steps=1, frames=17, fps=16, tokens=tokens)
    result = pipeline.run(job, on_chunk=on_chunk)
    assert playable == [(17, 16.0), (34, 16.0)]  # 9 model frames -> 17; then 8 more -> 16 + the hold
    assert probe(result.video) == (34, 16.0)
    assert (result.frames, result.video_frames, result.fps) == (17, 34, 16)
    reports = [c.report for c in chunks]
    assert [(c.first_frame, c.last_frame, c.frames_written) for c in reports] == [(0, 8, 9), (9, 16, 17)]
    assert [len(c.frames) for c in chunks] == [9, 8] and [len(c.video_frames) for c in chunks] == [17, 17]
    assert [c.video_seconds for c in reports] == [9 / 8, 17 / 8]
    model_frames = np.concatenate([c.frames for c in chunks])
    assert np.array_equal(np.concatenate([c.video_frames for c in chunks])[::2], model_frames)
    record = json.loads(result.sidecar.read_text())
    assert record["job"]["fps"] == 16 and record["video"]["fps"] == 16
    assert (record["video"]["frames"], record["video"]["video_frames"]) == (17, 34)
    assert record["interpolation"]["method"] == "ffmpeg-minterpolate-mci"
    assert record["interpolation"]["factor"] == 2 and record["interpolation"]["seconds"] > 0


def test_fps_8_writes_the_same_bytes_as_before_without_ffmpeg_interpolation(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("fps 8 must not interpolate")

    monkeypatch.setattr(FfmpegMinterpolate, "between", refuse)
    frames = moving_square(9)
    writer = InterpolatingWriter(tmp_path / "new.mp4", 8, 8)  # what the pipeline writes through now
    old = StreamingMp4Writer(tmp_path / "old.mp4", 8)  # what it wrote through before --fps
    for chunk in (frames[:5], frames[5:]):
        assert writer.append(chunk, last=chunk is not frames[:5]) is chunk
        old.append(chunk)
    assert writer.finish().read_bytes() == old.finish().read_bytes()
    assert writer.record() is None and (writer.frames_written, writer.video_frames) == (9, 9)


@pytest.mark.parametrize(
    ("value", "message"),
    [("12", "fps must be one of 8, 16, 24, got 12"), ("fast", "fps must be a whole number, not 'fast'")],
)
def test_a_bad_fps_is_refused_in_one_line(home, tmp_path, monkeypatch, capsys, value, message):
    monkeypatch.setenv("LANDIFF_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    status = main(["generate", PROMPT, "--model", "tiny", "--device", "cpu", "--fps", value])
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_the_rate_in_words_and_on_the_wire():
    assert check_value("fps", 24) == 24 and check_value("fps", 16.0) == 16
    with pytest.raises(ValueError, match="fps must be one of 8, 16, 24, got 30"):
        check_value("fps", 30)
    assert fps_text({"fps": 24}, "landiff") == "24 fps (x3, interpolated from the model's 8)"
    assert fps_text({}, "tiny") == "8 fps"  # a job from before the parameter: the model's


def test_the_job_detail_says_the_rate():
    from landiff_tui.screens.job_detail import describe
    from tests.tui_double import job

    interpolated = job(1, params={**job(1).params, "fps": 24})
    assert "fps: 24 fps (x3, interpolated from the model's 8)" in describe(interpolated)
    assert "fps: 8 fps" in describe(job(2))  # a job from before the parameter: the model's rate
