"""Pure-Python reference implementations of aurora's native codecs.

Slow and obviously correct: tests cross-check ``aurora._native`` against them byte for byte
and error for error, and benchmarks use them as the baseline.  Never used on a hot path.
"""
