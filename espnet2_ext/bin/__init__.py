"""Thin command-line entry points (``python -m espnet2_ext.bin.<name>``)."""
