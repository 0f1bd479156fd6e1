"""fastkernels_tui: the Textual cockpit over the fastkernels engine."""
