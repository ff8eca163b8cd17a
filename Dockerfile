# fanout-worker container image. Not built in this project's CI: no Docker engine runs there.
# Build:  docker build -t fanout-worker .
# Run:    docker run --init --env-file fanout-worker.env -v ./config.toml:/etc/fanout-worker/config.toml:ro \
#                    -p 9464:9464 --stop-timeout 45 fanout-worker
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY handlers ./handlers
COPY enrichment ./enrichment
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
# tini as PID 1 forwards SIGTERM and reaps zombies; the kernel gives PID 1 no default signal handling.
RUN apt-get update && apt-get install -y --no-install-recommends tini \
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
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4).status == 200 else 1)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "fanout-worker"]
CMD ["run", "--config", "/etc/fanout-worker/config.toml"]
