"""vllm-gateway: one OpenAI-compatible endpoint in front of many vLLM servers."""
