"""Records: every run in MLflow (`tracking`) and read back (`history`). MLflow is imported lazily:
the engine runs where it is absent."""
