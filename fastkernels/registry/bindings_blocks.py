"""HF references of the L2-L4 operators (blocks, decoder layers, whole model): see bindings.py."""
