"""The cockpit's widgets, one family per module, each with its own .tcss."""
