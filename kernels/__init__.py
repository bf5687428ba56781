"""Attention backends and fp8 GEMMs for MAGI-1. Optional accelerators are detected at run time.

Import as `magi1_kernels` (importing `magi_core` registers that name; see magi_core/_kernels.py).
"""
