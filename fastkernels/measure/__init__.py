"""Measurement: timing and roofline (`timing`, `roofline`), the per-operator unit benchmark
(`unit`), the end-to-end benchmark of a patched model (`e2e`) and its tensor-parallel launcher
(`tp`). Reports are typed dataclasses; they become dicts only where JSON is written."""
