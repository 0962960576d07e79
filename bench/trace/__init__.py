"""The trace benchmark: three multi-model workloads replayed through the real gateway.

See ``python -m bench.trace --help`` and README's "Scheduling benchmark".
"""
