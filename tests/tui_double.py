"""A scripted stand-in for the engine link, for snapshot tests that need fixed, repeatable content.

The Pilot tests in test_tui.py drive the real engine; this double only feeds the screens known data.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from landiff_tui.client import CONNECTED, RequestError

CREATED = 1_764_115_200.0  # 2025-11-26 00:00 UTC


def job(index: int, status: str = "finished", **extra: Any) -> dict[str, Any]:
    prompt = ["A snail crawling on green moss.", "A red kite over a windy beach at dusk.", "Waves at night."][
        index % 3
    ]
    params = {"prompt": prompt, "seed": 40 + index, "cfg": 7.5, "motion_score": 0.1, "temperature": 1.0}
    params["steps"] = 50
    return {
        "id": f"{index:08x}feedc0de{index:012x}",
        "created_at": CREATED - 3600 * index,
        "started_at": None,
        "finished_at": None,
        "status": status,
        "prompt": prompt,
        "params": params,
        "model": "tiny",
        "engine_version": "0.1.0",
        "weights_sha256": {},
        "timings": {"text": 0.05, "tokens": 0.31, "denoise": 0.9, "decode": 0.8, "write": 0.1},
        "peak_memory_bytes": 700 * 2**20,
        "error": None,
        "video_path": f"/data/outputs/{index:08x}/video.mp4",
        "tokens_path": None,
        "sidecar_path": None,
        "thumbnail_path": None,
        **extra,
    }


class ScriptedLink:
    def __init__(self, jobs: list[dict[str, Any]], weights_complete: bool = True):
        self.jobs = jobs
        self.weights_complete = weights_complete
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.model, self.autostart = "tiny", False
        self.path = Path("/nonexistent/engine.sock")
        self.connected = False
        self.app = None

    def start(self) -> None:
        asyncio.get_running_loop().call_soon(self.connect)

    def connect(self) -> None:
        self.connected = True
        active = [job for job in self.jobs if job["status"] in ("running", "queued")]
        model = "tiny" if self.weights_complete else "landiff"  # the first-run offer is for the release
        hello = {"model": model, "pid": 4242, "instance": "4242-1", "seq": 0, "active": active, "gap": False}
        self.on_state(CONNECTED, hello)

    async def close(self) -> None:
        self.connected = False

    async def start_engine(self, model: str | None = None) -> None:
        self.connect()

    async def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.requests.append((kind, fields))
        if kind == "list_jobs":
            found = [j for j in self.jobs if (fields.get("search") or "").lower() in j["prompt"].lower()]
            found = [j for j in found if fields.get("status") in (None, j["status"])]
            offset, limit = fields.get("offset", 0), fields.get("limit", 50)
            return {"jobs": found[offset : offset + limit], "total": len(found)}
        if kind == "get_job":
            return {"job": next(j for j in self.jobs if j["id"] == fields["job_id"])}
        if kind == "list_presets":
            return {
                "presets": {
                    "quick draft": {"params": {"steps": 20}, "builtin": True},
                    "reference defaults": {"params": {}, "builtin": True},
                }
            }
        if kind == "weights_status":
            state = "verified" if self.weights_complete else "missing"
            names = [
                "LanDiff/llm/model.safetensors",
                "LanDiff/tokenizer/model.safetensors",
                "flan-t5-xxl/config.json",
            ]
            return {
                "root": "/home/user/.local/share/landiff/weights",
                "model": "landiff",
                "looked": [
                    {"rule": "$LANDIFF_HOME", "path": None, "applies": False, "chosen": False},
                    {
                        "rule": "./ckpts holding LanDiff/",
                        "path": "/home/user/ckpts",
                        "applies": False,
                        "chosen": False,
                    },
                    {
                        "rule": "the user data dir",
                        "path": "/home/user/.local/share/landiff/weights",
                        "applies": True,
                        "chosen": True,
                    },
                ],
                "files": [
                    {
                        "local": name,
                        "state": state,
                        "size": 2**30 if self.weights_complete else None,
                        "path": name,
                    }
                    for name in names
                ],
                "complete": self.weights_complete,
                "busy": False,
            }
        if kind == "status":
            return {
                "model": "tiny",
                "engine_version": "0.1.0",
                "pid": 4242,
                "uptime_s": 80.0,
                "running": next((j["id"] for j in self.jobs if j["status"] == "running"), None),
                "queue": [j["id"] for j in self.jobs if j["status"] == "queued"],
                "models_loaded": ["stage1", "stage2"],
                "downloading": False,
                "seq": 0,
                "device": "NVIDIA H200",
                "memory_used_bytes": 30 * 2**30,
                "memory_total_bytes": 140 * 2**30,
            }
        if kind == "log_tail":
            return {"path": "/data/engine.log", "lines": ["2025-11-26 00:00:00,000 INFO engine listening"]}
        if kind == "submit":
            return {"job_id": "0000000000000000000000000000abcd"}
        raise RequestError("unknown", f"the double does not script {kind}")
