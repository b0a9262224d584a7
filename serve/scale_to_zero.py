"""Scale to zero: an idle model costs no replica, and `raylane serve` says what a cold start took.

    raylane serve --model digits@production --min-replicas 0 --max-replicas 2

With `min_replicas: 0` Ray Serve's autoscaler removes the last replica once no request has
come for `downscale_to_zero_delay_s` (default: `downscale_delay_s`), and starts one when the
next request arrives; Serve's proxy holds that request until the replica is ready, so it is
answered (no 5xx), only later: the cold start is starting a replica process and loading the
model from the registry. The app also starts with no replica (`initial_replicas` defaults to
`min_replicas`), so the first request is a cold start too.

`raylane serve` watches the deployment's replica states and prints one line per cold start,
the seconds from a replica starting with none running to it running:
    cold start: digits:3 scaled up from zero replicas in 6.4 s
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class ColdStartWatch:
    """Replica counts over time -> the length of each start from zero running replicas."""

    at_zero: bool = True  # no replica running (and none starting) at the last observation
    starting_since: float | None = None

    def observe(self, *, running: int, starting: int, now: float) -> float | None:
        """The cold start's seconds when this observation ends one, else None."""
        if running == 0:
            if starting == 0:
                self.at_zero, self.starting_since = True, None
            elif self.at_zero and self.starting_since is None:
                self.starting_since = now
            return None
        seconds = None if self.starting_since is None else now - self.starting_since
        self.at_zero, self.starting_since = False, None
        return seconds


def replica_counts(app_name: str, deployment: str = "ModelServer") -> tuple[int, int]:
    """(running, starting) replicas of the deployment, from Serve's status."""
    from ray import serve as ray_serve

    app = ray_serve.status().applications.get(app_name)
    status = app.deployments.get(deployment) if app else None
    states = status.replica_states if status else {}
    return states.get("RUNNING", 0), states.get("STARTING", 0)


def report_cold_starts(
    app_name: str, model: str, *, deployment: str = "ModelServer", interval_s: float = 0.25
):
    """Print a line per cold start of the app's model from a thread, until the returned
    function is called (it stops the thread and waits for it: a daemon thread left inside a
    Ray call at interpreter exit can crash it). Start it once Serve is started and before the
    app is deployed, so it sees the first replica start too (the first request can arrive
    while `serve.run` is still returning)."""
    stop = threading.Event()
    thread = threading.Thread(
        target=_report,
        args=(app_name, deployment, model, interval_s, stop),
        name="cold-starts",
        daemon=True,
    )
    thread.start()

    def stop_reporting() -> None:
        stop.set()
        thread.join(timeout=10)

    return stop_reporting


def _report(
    app_name: str, deployment: str, model: str, interval_s: float, stop: threading.Event
) -> None:
    watch = ColdStartWatch()
    while not stop.wait(interval_s):
        try:
            running, starting = replica_counts(app_name, deployment)
        except Exception:  # the controller busy or restarting: look again next time
            continue
        seconds = watch.observe(running=running, starting=starting, now=time.monotonic())
        if seconds is not None:
            print(
                f"cold start: {model} scaled up from zero replicas in {seconds:.1f} s", flush=True
            )
