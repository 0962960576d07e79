#!/usr/bin/env bash
# Build the small image the Docker launcher's tests run, without any registry.
#
#   scripts/build_fake_image.sh          build (or keep, when up to date) and tag it
#   scripts/build_fake_image.sh --force  rebuild even when up to date
#
# The image is a root filesystem laid out by scripts/fake_rootfs.py (the
# project's Python interpreter, a trimmed standard library, aiohttp and this
# repository's fake_vllm package), imported with `docker import`. Its
# entrypoint is the fake backend, so a container takes the arguments vLLM's
# image takes: `--port P --served-model-name NAME`.
#
# Tagged twice: vllm/vllm-openai:latest (the default image of a docker model,
# so an unchanged config runs against it) and vllm-gateway/fake-backend:test.
# A label holds a hash of what went in; a rerun with nothing changed is a no-op.
#
# Needs DOCKER_HOST pointing at an engine; without it, the private engine of
# scripts/docker_engine.sh is used. Never pulls anything.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
TAGS=(vllm-gateway/fake-backend:test vllm/vllm-openai:latest)
# Distributions the fake backend imports, beyond the standard library.
DISTS=(${FAKE_IMAGE_DISTS:-aiohttp})
ROOTFS="$ROOT/var/docker/fake-rootfs"
HASH_LABEL=vllm-gateway.fake-hash

if [ -z "${DOCKER_HOST:-}" ]; then
    eval "$("$ROOT/scripts/docker_engine.sh" env)"
fi
export DOCKER_HOST

log() { printf 'build_fake_image: %s\n' "$*" >&2; }

if ! docker version >/dev/null 2>&1; then
    log "no Docker engine answers at DOCKER_HOST=$DOCKER_HOST: run scripts/docker_engine.sh start"
    exit 1
fi

content_hash() {
    {
        "$PY" -c 'import sys; print(sys.version)'
        printf '%s\n' "${DISTS[@]}"
        "$PY" -m pip freeze --all 2>/dev/null | grep -v -i '^-e\|vllm.gateway' || true
        cat "$ROOT/scripts/fake_rootfs.py" "$ROOT/scripts/build_fake_image.sh"
        (cd "$ROOT/src" && find fake_vllm -name '*.py' -print0 | sort -z | xargs -0 sha256sum)
    } | sha256sum | cut -c1-16
}

HASH="$(content_hash)"
if [ "${1:-}" != --force ]; then
    up_to_date=1
    for tag in "${TAGS[@]}"; do
        have="$(docker image inspect --format "{{ index .Config.Labels \"$HASH_LABEL\" }}" "$tag" 2>/dev/null || true)"
        [ "$have" = "$HASH" ] || up_to_date=0
    done
    if [ "$up_to_date" = 1 ]; then
        log "images up to date ($HASH): ${TAGS[*]}"
        exit 0
    fi
fi

started=$SECONDS
"$PY" "$ROOT/scripts/fake_rootfs.py" "$ROOTFS" "$ROOT/src/fake_vllm" "${DISTS[@]}"

# Numeric root ownership: the tar must not depend on this machine's users.
tar -C "$ROOTFS" --numeric-owner --owner=0 --group=0 -cf - . |
    docker import \
        --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
        --change 'ENV LD_LIBRARY_PATH=/usr/local/lib' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PYTHONUNBUFFERED=1' \
        --change 'ENV PYTHONDONTWRITEBYTECODE=1' \
        --change "LABEL $HASH_LABEL=$HASH" \
        --change 'ENTRYPOINT ["python3", "-m", "fake_vllm"]' \
        - "${TAGS[0]}" >/dev/null
for tag in "${TAGS[@]:1}"; do
    docker tag "${TAGS[0]}" "$tag"
done
rm -rf "$ROOTFS"
# Earlier builds, now untagged, would only fill the engine's disk.
docker image prune -f --filter "label=$HASH_LABEL" >/dev/null

# The image must run the fake backend (its server and aiohttp imported, its
# options parsed); say so now rather than in a test's start-up timeout.
if ! out="$(docker run --rm --network none "${TAGS[0]}" --help 2>&1)"; then
    log "the image cannot run python -m fake_vllm:"
    printf '%s\n' "$out" >&2
    exit 1
fi

size="$(docker image inspect --format '{{ .Size }}' "${TAGS[0]}")"
log "built ${TAGS[*]} in $((SECONDS - started)) s, $((size / 1000000)) MB ($HASH)"
