"""The engine keeps its socket: removed (alone or with its folder), it is made again and clients reach the
engine there; replaced by something that is not its own, the engine stops as on SIGTERM and leaves it."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat

from engine.client import EngineClient, EngineUnavailable
from tests.harness import PROMPT, WAIT_S, RunningEngine, subscribed, wait_until


def answers(engine: RunningEngine) -> bool:
    """Whether a new client connects and gets the engine's status."""
    try:
        with EngineClient(engine.socket, timeout=WAIT_S) as client:
            return "seq" in client.request("status")
    except EngineUnavailable:
        return False


def log_of(engine: RunningEngine) -> str:
    return (engine.base / "data" / "engine.log").read_text()


def test_a_removed_socket_is_made_again_and_the_engine_goes_on(tmp_path, weights):
    engine = RunningEngine(tmp_path, weights).start()
    try:
        with engine.client() as kept:
            kept.request("hello", client="tests")
            engine.socket.unlink()
            wait_until(lambda: answers(engine), "a client to reach the engine on a new socket")
            assert kept.request("status")["seq"] >= 0  # a connection made before goes on
            assert stat.S_IMODE(engine.socket.stat().st_mode) == 0o600
            shutil.rmtree(engine.runtime)  # the folder with it (a cleaner of /run/user, /tmp)
            wait_until(lambda: answers(engine), "a client to reach the engine in a new runtime dir")
            assert stat.S_IMODE(engine.runtime.stat().st_mode) == 0o700
            assert stat.S_IMODE(engine.socket.stat().st_mode) == 0o600
    finally:
        engine.stop()
    assert engine.process.returncode == 0
    assert log_of(engine).count("was removed: listening on a new one there") == 2
    assert not engine.socket.exists()  # its own socket, removed when it stopped


def test_a_socket_replaced_by_something_else_stops_the_engine_which_leaves_it_there(tmp_path, weights):
    engine = RunningEngine(tmp_path, weights).start()
    try:
        client, _ = subscribed(engine)
        with client:
            doomed = client.request("submit", params={"prompt": PROMPT, "steps": 1000})["job_id"]
            for event in client.events():
                if event.get("job_id") == doomed and event.get("stage") == "denoise":
                    break
            planted = engine.runtime / "planted"
            planted.write_text("not the engine's")
            os.replace(planted, engine.socket)  # at once: the path is never missing meanwhile
            engine.process.wait(timeout=WAIT_S)  # stops by itself
    finally:
        engine.stop()
    assert engine.process.returncode == 0
    assert engine.socket.read_text() == "not the engine's"  # the path is left to its holder
    assert f"the engine's socket {engine.socket} was replaced by a file" in log_of(engine)
    database = sqlite3.connect(tmp_path / "data" / "landiff.db")
    status = database.execute("SELECT status FROM jobs WHERE id = ?", (doomed,)).fetchone()[0]
    assert status == "interrupted"  # as on a normal stop
