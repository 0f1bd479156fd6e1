"""`from fastkernels.bench.tracking import tracker`: the seed's public path; the module is
`fastkernels.track.tracking`."""

from fastkernels.track.tracking import Tracker, tracker

__all__ = ["Tracker", "tracker"]
