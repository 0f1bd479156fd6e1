"""fastkernels: find the operators of a Hugging Face LLM, have an LLM write faster GPU kernels for
them, prove each one correct and measure what it buys, per operator and end to end."""

__version__ = "0.1.0"


def __getattr__(name):
    # `fastkernels.patch` without importing torch and transformers at `import fastkernels`.
    if name == "patch":
        from fastkernels.registry.patching import patch

        return patch
    raise AttributeError(f"module 'fastkernels' has no attribute {name!r}")
