"""The GPU on its own: which devices a job may use (`devices`), live metrics (`metrics`, NVML) and
raw CUDA builds (`cuda_build`, cached by content). Below measurement and the judge; above the
sandbox (a CUDA build runs in a sandboxed child)."""
