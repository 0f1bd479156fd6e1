"""fastkernels: find the operators of a Hugging Face LLM, have an LLM write faster GPU kernels for
them, prove each one correct and measure what it buys, per operator and end to end."""

__version__ = "0.1.0"
