"""The cause of a failed start, picked out of a server's output (shaped like real vLLM's)."""

from __future__ import annotations

from vllm_gateway.health import failure_causes

KV_CAUSE = (
    "ValueError: To serve at least one request with the model's max seq len (16384), "
    "(0.02 GiB KV cache is needed, which is larger than the available KV cache memory (0.0 GiB)."
)
ENGINE_WRAPPER = (
    "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"
)


def vllm_engine_failure() -> list[str]:
    """vLLM 0.32 (CPU) when the engine cannot start: EngineCore logs the cause (stdout) and
    prints it (stderr), the API server follows with its own long traceback, then warnings."""
    engine = "(EngineCore pid=3736) ERROR 11-26 11:03:03 [core.py:1510] "
    ulimit = (
        "(APIServer pid=3076) WARNING 11-26 11:02:37 [system_utils.py:255] Found ulimit of "
        "20000 ... fd limit errors like `OSError: [Errno 24] Too many open files`."
    )
    worker_died = (
        "(EngineCore pid=3736) ERROR 11-26 11:03:06 [multiproc_executor.py:315] Worker proc "
        "VllmWorker-0 died unexpectedly (exit code: None), shutting down executor."
    )
    leaked = (
        ".../multiprocessing/resource_tracker.py:254: UserWarning: resource_tracker: There "
        "appear to be 1 leaked shared_memory objects to clean up at shutdown"
    )
    return [
        ulimit,
        "Process EngineCore:",
        "Traceback (most recent call last):",
        '  File ".../vllm/v1/core/kv_cache_utils.py", line 1030, in _check_enough_kv_cache_memory',
        "    raise ValueError(",
        KV_CAUSE,
        engine + "EngineCore failed to start.",
        engine + "Traceback (most recent call last):",
        engine + "    raise ValueError(",
        engine + KV_CAUSE,
        worker_died,
        "Traceback (most recent call last):",
        *[f'  File ".../vllm/v1/engine/core_client.py", line {n}, in __init__' for n in range(40)],
        ENGINE_WRAPPER,
        leaked,
        "  warnings.warn('resource_tracker: There appear to be %d '",
    ]


def test_the_engines_cause_comes_before_the_api_servers_wrapper() -> None:
    lines = vllm_engine_failure()
    assert KV_CAUSE not in "\n".join(lines[-20:])  # why the last lines alone are not enough
    assert failure_causes(lines) == [KV_CAUSE, ENGINE_WRAPPER]


def test_a_single_last_line_error_is_kept_whole() -> None:
    line = (
        "huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' "
        "or 'namespace/repo_name': '/models/missing'. Use `repo_type` argument if needed."
    )
    assert failure_causes(["Traceback (most recent call last):", "    raise X", line]) == [line]


def test_log_lines_that_merely_mention_an_error_are_not_causes() -> None:
    lines = [
        "INFO 11-26 10:57:19 [entry.py:140] Starting vLLM server on http://127.0.0.1:8000",
        "WARNING ... like `OSError: [Errno 24] Too many open files`",
        "UserWarning: resource_tracker: There appear to be 1 leaked semaphore objects",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    ]
    assert failure_causes(lines) == [lines[-1]]
    assert failure_causes(["INFO: all fine", ""]) == []


def test_at_most_three_causes_the_latest_ones() -> None:
    lines = [f"ValueError: problem {n}" for n in range(6)] + ["ValueError: problem 1"]
    assert failure_causes(lines) == [
        "ValueError: problem 4",
        "ValueError: problem 5",
        "ValueError: problem 1",
    ]
