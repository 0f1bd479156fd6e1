from fastkernels.registry.tasks import (
    LEVELS,
    OperatorSpec,
    Workload,
    build_spec,
    check_level,
    discover,
    load_task,
    task_names,
)

__all__ = ["LEVELS", "OperatorSpec", "Workload", "build_spec", "check_level", "discover", "load_task", "task_names"]
