# fanout-worker container image. Not built in this project's CI: no Docker engine runs there;
# `make test` lints this file with hadolint (tests/deploy/test_dockerfile.py).
# Build:  docker build -t fanout-worker .
# Run:    docker run --init --env-file fanout-worker.env -v ./config.toml:/etc/fanout-worker/config.toml:ro \
#                    -p 9464:9464 --stop-timeout 45 fanout-worker
#
# Pinned: the base image by its full version tag (Python 3.11, the version the tests run, on
# Debian 12 "bookworm") and tini by its Debian version. Pin the digest too where your registry
# policy asks for it: `docker buildx imagetools inspect python:3.11.13-slim-bookworm`.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY worker ./worker
COPY handlers ./handlers
COPY enrichment ./enrichment
# The dependencies' versions are bounded by pyproject.toml; pip itself comes with the base image.
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir /src

FROM ${PYTHON_IMAGE}
# tini as PID 1 forwards SIGTERM and reaps zombies; the kernel gives PID 1 no default signal handling.
RUN apt-get update && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home fanout
COPY --from=build /opt/venv /opt/venv
COPY config.toml /etc/fanout-worker/config.toml
# The health listener binds loopback by default; in a container it must be reachable from outside
# (port mapping, orchestrator probes), so the image exposes it on purpose.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    FANOUT_LOG__FORMAT=json FANOUT_HEALTH__HOST=0.0.0.0
USER 10001
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "fanout-worker"]
CMD ["run", "--config", "/etc/fanout-worker/config.toml"]
