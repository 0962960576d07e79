"""A fake vLLM OpenAI server for the demo, the integration tests and the benchmarks.

Run it as its own process::

    python -m fake_vllm --port 8001 --served-model-name tiny

It behaves like vLLM's OpenAI server wherever a gateway can tell: the port
refuses connections while the "model" loads, it answers the same endpoints and
error shapes, streams Server-Sent Events, exposes the same Prometheus gauges,
and leaves a worker process behind when its main process is SIGKILLed. Test
hooks live under ``/fake/`` and in an optional ``"fake"`` field of a request
body. This package imports nothing heavy so that the worker starts lean.

Endpoints: ``GET /health``, ``/v1/models``, ``/version``, ``/metrics``;
``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``.
Test hooks: ``GET /fake/stats``, ``GET /fake/last_request``, ``POST /fake/hang``
(neither ``/health`` nor a generation answers from then on), ``POST /fake/reset_stats``,
``GET /fake/requests`` (method and raw target of every request received).
Per request: ``"fake": {"token_delay": s, "stall_after": n, "tokens": n, "status": code}``.
Flags: ``--help``.
"""
