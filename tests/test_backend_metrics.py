"""vLLM's own gauges as the gateway reads them into status (``backend``)."""

from __future__ import annotations

from vllm_gateway.backend_metrics import parse_vllm_metrics

SLEEP_HELP = "# HELP vllm:engine_sleep_state Engine sleep state\n# TYPE vllm:engine_sleep_state gauge\n"


def sleep_series(awake: int, offloaded: int, discarded: int, engine: str = "0") -> str:
    labels = f'engine="{engine}",model_name="m"'
    return (f'vllm:engine_sleep_state{{{labels},sleep_state="awake"}} {awake}.0\n'
            f'vllm:engine_sleep_state{{{labels},sleep_state="weights_offloaded"}} {offloaded}.0\n'
            f'vllm:engine_sleep_state{{{labels},sleep_state="discard_all"}} {discarded}.0\n')


def test_gauges_are_summed_over_engines() -> None:
    text = ("# TYPE vllm:num_requests_running gauge\n"
            'vllm:num_requests_running{engine="0"} 2.0\n'
            'vllm:num_requests_running{engine="1"} 3.0\n'
            "# TYPE vllm:gpu_cache_usage_perc gauge\n"
            'vllm:gpu_cache_usage_perc{engine="0"} 0.25\n')
    assert parse_vllm_metrics(text) == {"num_requests_running": 5.0, "kv_cache_usage_perc": 0.25}


def test_the_engine_sleep_state_becomes_a_level() -> None:
    assert parse_vllm_metrics(SLEEP_HELP + sleep_series(1, 0, 0)) == {"engine_sleep_level": 0.0}
    assert parse_vllm_metrics(SLEEP_HELP + sleep_series(0, 1, 0)) == {"engine_sleep_level": 1.0}
    assert parse_vllm_metrics(SLEEP_HELP + sleep_series(0, 0, 1)) == {"engine_sleep_level": 2.0}
    # Two engines at different levels: the deepest is what the server holds back.
    both = SLEEP_HELP + sleep_series(0, 1, 0) + sleep_series(0, 0, 1, engine="1")
    assert parse_vllm_metrics(both) == {"engine_sleep_level": 2.0}


def test_a_server_without_the_sleep_gauge_reports_no_level() -> None:
    assert "engine_sleep_level" not in parse_vllm_metrics(
        '# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{engine="0"} 1.0\n')
    assert parse_vllm_metrics("not prometheus {{{") == {}
