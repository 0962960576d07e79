# syntax=docker/dockerfile:1
# The gateway itself as an image. It starts model servers as sibling containers
# through the host's Docker engine (mount /var/run/docker.sock; see
# docker-compose.yml), so the image holds no CUDA and no vLLM: just Python,
# the gateway and its pinned dependencies.
#
#   docker build -t vllm-gateway .
#   docker run --network host -v /var/run/docker.sock:/var/run/docker.sock \
#     --group-add "$(stat -c %g /var/run/docker.sock)" \
#     -v "$PWD/gateway.yaml:/etc/vllm-gateway/gateway.yaml:ro" vllm-gateway

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Dependencies are pinned in pyproject.toml; the venv is copied whole into the
# runtime stage, so no compiler or build tool reaches it.
COPY pyproject.toml README.md ./
COPY src ./src
# .dockerignore leaves src/fake_vllm out; fail the build if it ever slips in.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install . \
    && if /opt/venv/bin/python -c 'import fake_vllm' 2>/dev/null; then \
         echo 'fake_vllm (a test fake) must not be in the gateway image' >&2; exit 1; fi

FROM python:${PYTHON_VERSION}-slim
# A fixed, unprivileged uid: the Docker socket is reached through its group
# (add the socket's gid with `--group-add` / compose `group_add`), never as root.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/vllm-gateway /var/lib/vllm-gateway \
    && chown gateway:gateway /var/lib/vllm-gateway
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_STATE_HOME=/var/lib/vllm-gateway \
    GATEWAY_HEALTH_URL=http://127.0.0.1:8000/health
USER gateway
WORKDIR /var/lib/vllm-gateway
EXPOSE 8000
# urllib raises on a refused connection and on any non-2xx answer: exit 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['GATEWAY_HEALTH_URL'], timeout=4)"]
# SIGTERM (docker stop) lets the gateway drain requests and stop its model
# containers; give it time with `stop_grace_period` / `docker stop -t`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["vllm-gateway", "serve", "--config", "/etc/vllm-gateway/gateway.yaml"]
# Listen on every interface of the container (the file's server.host is
# usually 127.0.0.1); override with e.g. `--host 127.0.0.1 --port 9000`.
CMD ["--host", "0.0.0.0", "--port", "8000"]
