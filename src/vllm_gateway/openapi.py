"""The OpenAPI document of the gateway's own endpoints (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type", "code"],
                             "properties": {"message": {"type": "string"},
                                            "type": {"type": "string"},
                                            "param": {"type": ["string", "null"]},
                                            "code": {"type": ["string", "integer", "null"]}}}},
}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}} for c in codes}


def _json(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    return {"200": {"description": description, "content": {"application/json": {"schema": schema}}}}


_MODEL_NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
_PROXY_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {
        "type": "object", "required": ["model"],
        "properties": {"model": {"type": "string"}, "stream": {"type": "boolean"}},
    }}},
}
_PROXY_RESPONSES = {
    "200": {"description": "the backend's answer, passed through (JSON or an SSE stream)"},
    **_errors(400, 401, 403, 404, 413, 429, 502, 503, 504),
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "vllm-gateway", "version": "0.1.0",
             "description": "OpenAI-compatible gateway that starts vLLM servers on demand"},
    "paths": {
        "/v1/chat/completions": {"post": {"requestBody": _PROXY_BODY, "responses": _PROXY_RESPONSES}},
        "/v1/completions": {"post": {"requestBody": _PROXY_BODY, "responses": _PROXY_RESPONSES}},
        "/v1/embeddings": {"post": {"requestBody": _PROXY_BODY, "responses": _PROXY_RESPONSES}},
        "/v1/models": {"get": {"responses": {**_json({"type": "object", "required": ["object", "data"]}),
                                             **_errors(401)}}},
        "/health": {"get": {"responses": _json({"type": "object"})}},
        "/ready": {"get": {"responses": {**_json({"type": "object"}), **_errors(503)}}},
        "/metrics": {"get": {"responses": {"200": {"description": "Prometheus text"}, **_errors(401)}}},
        "/gateway/status": {"get": {"responses": {**_json({
            "type": "object", "required": ["gpus", "models"],
            "properties": {"gpus": {"type": "array"}, "models": {"type": "array"}}}), **_errors(401)}}},
        "/gateway/events": {"get": {
            "parameters": [{"name": "since", "in": "query", "schema": {"type": "integer"}}],
            "responses": {**_json({"type": "object", "required": ["events", "next"]}),
                          **_errors(400, 401)}}},
        "/gateway/models/{name}/logs": {"get": {
            "parameters": _MODEL_NAME + [{"name": "lines", "in": "query", "schema": {"type": "integer"}}],
            "responses": {**_json({"type": "object", "required": ["name", "lines"]}),
                          **_errors(400, 401, 404)}}},
        "/gateway/models/{name}/load": {"post": {
            "parameters": _MODEL_NAME,
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False,
                "properties": {"replicas": {"type": "integer", "minimum": 0}}}}}},
            "responses": {**_json({"type": "object", "required": ["name", "state"]}),
                          **_errors(400, 401, 403, 404, 503, 504)}}},
        "/gateway/models/{name}/sleep": {"post": {
            "parameters": _MODEL_NAME,
            "responses": {**_json({"type": "object", "required": ["name", "state"]}),
                          **_errors(400, 401, 403, 404, 409)}}},
        "/gateway/models/{name}/unload": {"post": {
            "parameters": _MODEL_NAME,
            "responses": {**_json({"type": "object", "required": ["name", "state"]}),
                          **_errors(400, 401, 403, 404)}}},
    },
    "components": {"schemas": {"Error": _ERROR}},
}
