"""Scoring worker process: ``python -m grpo.rewards._worker FD`` (started by ScoringPool).

Protocol over the socket FD (``multiprocessing.connection`` framing, pickled messages):

* parent -> worker, once: ``{"sys_path", "main_path", "memory_limit", "preload"}``
* parent -> worker, per chunk: ``(call_id, pickled reward or None, [(idx, completion, example)])``
  (the reward is sent once per call; None reuses the one loaded); ``None`` asks it to exit.
* worker -> parent: ``("loaded", call_id)`` once the reward is loaded, then
  ``("result", call_id, idx, ScoreResult)`` per item, in order.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import runpy
import signal
import sys
import types
from multiprocessing.connection import Connection
from typing import Any


def _die_with_parent() -> None:
    # A worker stuck in C code must not outlive a trainer killed by SIGKILL.
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before prctl
            os._exit(1)


def _limit_memory(limit: int | None) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crashing worker writes no core file
    if not limit:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or hard > limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))  # soft: sandbox children may differ


MAIN_ALIAS = "__grpo_main__"  # not __mp_main__: importing multiprocessing aliases that one


class _Unpickler(pickle.Unpickler):
    """Resolves classes of the parent's ``__main__`` by running its main script (under another
    name, so its ``if __name__ == "__main__":`` block does not run) on first need."""

    main_path: str | None = None

    def find_class(self, module: str, name: str) -> Any:
        if module == "__main__":
            module = MAIN_ALIAS
            if module not in sys.modules:
                if not self.main_path:
                    raise pickle.UnpicklingError(
                        f"{name} is defined in the parent's __main__, which has no file to import"
                    )
                main = types.ModuleType(MAIN_ALIAS)
                main.__file__ = self.main_path
                sys.modules[MAIN_ALIAS] = main
                main.__dict__.update(runpy.run_path(self.main_path, run_name=MAIN_ALIAS))
        return super().find_class(module, name)


def serve(conn: Connection) -> None:
    setup = conn.recv()
    sys.path[:] = setup["sys_path"]
    _Unpickler.main_path = setup["main_path"]
    _limit_memory(setup["memory_limit"])
    for name in setup["preload"]:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # optional speed-up only

    from grpo.rewards.base import ERROR, ScoreResult, score_one

    reward: Any = None
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # parent gone
            return
        if msg is None:
            return
        call_id, blob, items = msg
        if blob is not None:
            try:
                reward = _Unpickler(io.BytesIO(blob)).load()
            except Exception as e:  # noqa: BLE001 -- reported per item, as status "error"
                reward = e
        conn.send(("loaded", call_id))
        for idx, completion, example in items:
            if isinstance(reward, BaseException):
                res = ScoreResult.unscorable(
                    f"could not load the reward in a worker: {reward!r}", ERROR
                )
            else:
                res = score_one(reward, completion, example)
            conn.send(("result", call_id, idx, res))


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    _die_with_parent()
    serve(Connection(int(sys.argv[1])))


if __name__ == "__main__":
    main()
