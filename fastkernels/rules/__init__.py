"""The rules every room applies, each defined once: the acceptance rule for a kernel's output
(`tolerance`), what counts as a secret (`secrets`)."""
