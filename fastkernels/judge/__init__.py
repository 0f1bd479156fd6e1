"""The judge: whether a candidate kernel is accepted. Static checks and validation in a child
(`validate`), the gate that validates, checks and times a candidate in one sandboxed child
(`gate`). It runs measurements (`fastkernels.measure`) and applies the acceptance rule
(`fastkernels.rules.tolerance`); it never imports a candidate into its own process."""
