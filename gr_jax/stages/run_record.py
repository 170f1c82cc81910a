"""One writer per workdir, and the record of every invocation.

- ``workdir_lock``: ``WORKDIR/.lock`` names the process that runs in the workdir (pid, host,
  start, command line); a second run refuses to start and names it. A lock whose process is gone
  (same host, pid not alive) is stale and taken over with a warning.
- ``record_invocation``: ``WORKDIR/runs.jsonl`` gets one line when an invocation starts (its
  command line and resolved config, written only after the config validated) and one when it
  ends (``ok``, ``error`` with the message, or ``preempted``); earlier lines are never rewritten.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid

import ml_collections

LOCK_NAME, RECORD_NAME = ".lock", "runs.jsonl"


class WorkdirBusyError(RuntimeError):
    """Another live process runs in this workdir."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Holds ``WORKDIR/.lock`` for the duration (see the module docstring)."""
    path = os.path.join(workdir, LOCK_NAME)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "argv": sys.argv}
    os.makedirs(workdir, exist_ok=True)
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path) as f:
                    holder = json.load(f)
            except (OSError, json.JSONDecodeError):
                holder = {}
            if holder.get("host") == mine["host"] and not _alive(int(holder.get("pid", -1))):
                logging.warning("Taking over the stale lock %s of process %s, which is gone.", path, holder.get("pid"))
                os.remove(path)
                continue
            raise WorkdirBusyError(
                f"workdir {workdir} is in use by process {holder.get('pid', '?')} on {holder.get('host', '?')} since "
                f"{holder.get('started', '?')} ({' '.join(holder.get('argv', []))}); wait for it to finish or use "
                f"another --workdir (if that process is gone, delete {path})") from None
        with os.fdopen(descriptor, "w") as f:
            json.dump(mine, f)
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def record_invocation(workdir: str, config: ml_collections.ConfigDict, process_count: int = 1):
    """Appends this invocation's start and end to ``WORKDIR/runs.jsonl`` (written by process 0 of
    ``process_count``)."""
    path = os.path.join(workdir, RECORD_NAME)
    run_id = uuid.uuid4().hex[:12]

    def append(entry: dict) -> None:
        with open(path, "a") as f:
            f.write(json.dumps({"id": run_id, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "pid": os.getpid(),
                                "host": socket.gethostname(), "process_count": process_count} | entry,
                               default=str) + "\n")

    append({"event": "start", "argv": sys.argv, "config": json.loads(config.to_json_best_effort())})
    try:
        yield
    except BaseException as error:
        status = "preempted" if type(error).__name__ == "Preempted" else "error"
        append({"event": "end", "status": status, "error": f"{type(error).__name__}: {error}"[:2000]})
        raise
    append({"event": "end", "status": "ok"})
