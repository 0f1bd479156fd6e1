"""From engine events (any worker thread) to the UI thread.

The engine calls the sink from its threads. Text deltas arrive hundreds of times a second from
several operators at once; posting each as a message would flood the UI. So every event is
appended to one ordered buffer under a lock, and only one `EngineFlush` message is queued at a
time (a newer one replaces a queued one, `can_replace`). The UI drains the buffer in one go and
renders it as batches: consecutive deltas of an operator become one append, and the order of
events is kept (a `GenerationFinished` never overtakes the text it ends)."""

from __future__ import annotations

import threading
from collections import defaultdict

from textual.message import Message

from fastkernels import events as ev


class EngineFlush(Message):
    """The bridge holds new events; drain them with `EventBridge.drain()`."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, EngineFlush)


Batch = dict  # op -> text: a run of deltas, rendered as one append per operator


class EventBridge:
    """The engine's `EventSink`: thread-safe, cheap per call, order-preserving."""

    def __init__(self, target) -> None:
        self._target = target  # a MessagePump (the app); its post_message is thread-safe
        self._lock = threading.Lock()
        self._pending: list[ev.Event] = []
        self._flush_queued = False
        self.events_seen = 0

    def __call__(self, event: ev.Event) -> None:
        with self._lock:
            self._pending.append(event)
            self.events_seen += 1
            if self._flush_queued:
                return
            self._flush_queued = True
        self._target.post_message(EngineFlush())

    def drain(self) -> list[ev.Event | Batch]:
        """Everything since the last drain, in order, with runs of deltas merged into batches
        (`{op: text}` dicts). UI thread."""
        with self._lock:
            pending, self._pending = self._pending, []
            self._flush_queued = False
        out: list[ev.Event | Batch] = []
        batch: dict[str, list[str]] = defaultdict(list)
        for event in pending:
            if isinstance(event, ev.TextDelta):
                batch[event.op].append(event.text)
                continue
            op = getattr(event, "op", None)
            if batch and (op is None or op in batch):
                out.append({k: "".join(v) for k, v in batch.items()})
                batch = defaultdict(list)
            out.append(event)
        if batch:
            out.append({k: "".join(v) for k, v in batch.items()})
        return out
