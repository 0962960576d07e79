"""Benchmarks of vllm-gateway against going direct and against peer proxies.

``python -m bench.proxy`` (or ``bench/run.sh``) is the entry point; see bench/README.md.
"""
