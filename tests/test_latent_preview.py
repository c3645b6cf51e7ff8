"""Live previews while denoising (engine/generation/latent_preview.py): the projection fitted to the tiny
VAE, the steps that show one, a tiny job's job_preview events and live.png, and the Queue tab showing it."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine import protocol as p
from engine.daemon.store import Store
from engine.daemon.worker import LIVE_PREVIEW, JobWorker
from engine.generation import latent_preview
from engine.generation.latent_preview import PreviewClock, Projection, smooth_latents
from engine.models.video_vae import decode_latents
from engine.protocol import JobParams
from landiff_tui.app import LanDiffApp
from landiff_tui.widgets.preview import HalfBlocks

from .harness import mounted, until
from .tui_double import ScriptedLink, job

STEPS = 4


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def test_the_projection_fitted_to_the_tiny_vae_predicts_its_decoded_frames(pipeline):
    stage2 = pipeline.stage2()
    projection = stage2.preview_projection()
    assert stage2.preview_projection() is projection  # fitted once per pipeline
    spec = stage2.spec
    _, channels, height, width = spec.latent_shape(spec.llm.frames_per_segment)
    assert projection.matrix.shape == (channels + 1, 3)
    # latents the fit never saw (another seed), decoded by the VAE itself, at the latent grid
    latents = smooth_latents(3, 3, channels, height, width, torch.Generator().manual_seed(11))
    noise = Projection(torch.randn(channels + 1, 3, generator=torch.Generator().manual_seed(2)) * 0.1)
    fitted, guessed = [], []
    for latent in latents:
        video = decode_latents(stage2.vae, latent[None], spec.vae.scale_factor)
        frame = F.adaptive_avg_pool2d(video[0, :, -1], (height, width)).permute(1, 2, 0)
        fitted.append(correlation(projection.rgb(latent[-1]), frame))
        guessed.append(correlation(noise.rgb(latent[-1]), frame))
        picture = projection.image(latent[-1])
        assert picture.shape == (height, width, 3) and picture.dtype == np.uint8
    assert min(fitted) > 0.4, fitted  # 0.55-0.73 measured; a random map ~0
    assert max(abs(value) for value in guessed) < 0.3


def test_previews_come_on_the_first_step_then_at_most_one_an_interval_never_on_the_last():
    now = [0.0]
    clock = PreviewClock(1.0, clock=lambda: now[0])
    shown = []
    for step in range(1, 11):
        if clock.due(step, 10):
            shown.append(step)
        now[0] += 0.3
    assert shown == [1, 5, 9]  # at 0.0, 1.2, 2.4 s; step 10 (the last) never
    assert not PreviewClock(0.0).due(4, 4)


def test_a_tiny_job_publishes_previews_at_the_planned_steps_with_live_png(pipeline, tmp_path, monkeypatch):
    monkeypatch.setattr(latent_preview, "PREVIEW_INTERVAL_S", 0.0)  # every step but the last
    store = Store(tmp_path / "landiff.db")
    params = JobParams(prompt="a snail", steps=STEPS, seed=3)
    store.add_job(params.model_dump(), "tiny", "test")
    pictures: list[tuple[int, int, tuple[int, ...]]] = []
    events: list[p.Event] = []

    def publish(event: p.Event) -> None:
        events.append(event)
        if isinstance(event, p.JobPreviewEvent):  # read as it is told, as a client does
            with Image.open(event.preview) as image:
                pictures.append((event.chunk, event.step, (image.height, image.width)))

    worker = JobWorker(store, lambda: pipeline, publish, tmp_path / "outputs", 600.0)
    claimed = worker.claim()
    assert claimed is not None
    worker.run_job(claimed.id, params, claimed.model)
    assert store.get(claimed.id).status == "finished", [e for e in events if "failed" in type(e).__name__]
    spec = pipeline.spec
    _, _, height, width = spec.latent_shape(spec.llm.frames_per_segment)
    previews = [event for event in events if isinstance(event, p.JobPreviewEvent)]
    chunks = previews[0].chunks
    assert [(event.chunk, event.step, event.total) for event in previews] == [
        (chunk, step, STEPS) for chunk in range(1, chunks + 1) for step in range(1, STEPS)
    ]
    assert all(size == (height, width) for _, _, size in pictures) and len(pictures) == len(previews)
    assert previews[0].preview.endswith(LIVE_PREVIEW)
    assert not (tmp_path / "outputs" / claimed.id / LIVE_PREVIEW).exists()  # gone when the job ended
    wire = p.EVENT_ADAPTER.validate_json(previews[0].model_dump_json())
    assert isinstance(wire, p.JobPreviewEvent)


async def test_the_queue_shows_the_live_preview_then_the_finished_chunks_frame(tmp_path):
    link = ScriptedLink([job(0, "running")])
    app = LanDiffApp(link=link)
    live, frame = tmp_path / LIVE_PREVIEW, tmp_path / "chunk-000.png"
    Image.new("RGB", (12, 8), (10, 200, 10)).save(live)
    Image.new("RGB", (24, 16), (200, 10, 10)).save(frame)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("f2")
        await until(pilot, lambda: (queue := mounted(app, "QueueView")) and queue.running, what="the job")
        queue = app.query_one("QueueView")
        caption = queue.query_one("#preview-caption")
        picture = queue.query_one("#chunk-preview")

        def colours() -> set[tuple[int, ...]]:
            shown = picture.content
            pixels = shown.pixels if isinstance(shown, HalfBlocks) else np.zeros((0, 3), np.uint8)
            return {tuple(int(v) for v in pixel) for pixel in pixels.reshape(-1, 3)}

        link.publish("job_preview", job_id=job(0).id, preview=str(live), chunk=1, chunks=2, step=3, total=20)
        await until(pilot, lambda: "step 3/20" in str(caption.render()), what="the live preview")
        assert str(caption.render()) == "denoising step 3/20 of chunk 1/2 (rough preview)"
        assert picture.display and caption.display
        assert (10, 200, 10) in colours()
        link.publish(
            "chunk_finished",
            job_id=job(0).id,
            index=0,
            chunks=2,
            first_frame=0,
            last_frame=8,
            frames_written=9,
            video_seconds=1.1,
            preview=str(frame),
            video_partial="/v.mp4",
            timings_s={},
        )
        await until(pilot, lambda: "done" in str(caption.render()), what="the chunk's frame")
        assert str(caption.render()) == "chunk 1 of 2 done: its last frame"
        assert (200, 10, 10) in colours() and (10, 200, 10) not in colours()
