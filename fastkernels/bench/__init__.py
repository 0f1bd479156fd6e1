"""The seed's import path for tracking (`from fastkernels.bench.tracking import tracker`), kept for
scripts written against it. The engine's rooms are `fastkernels.judge`, `fastkernels.measure`,
`fastkernels.track` and `fastkernels.gpu`."""
