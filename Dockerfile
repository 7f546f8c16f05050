# The hub's own image: `hub api`, `hub worker`, `hub voice` and `hub migrate` run from it.
#   docker build -t connect-hub .                                   (public Debian image)
#   docker build --build-arg BASE=connect-hub-base:bookworm -t connect-hub .
#                                  (a local base, scripts/docker-base.sh, without a registry)
# It runs as the unprivileged user `hub` (uid HUB_UID, 10001 by default), which owns the
# media folder: a named volume mounted there starts out owned by it, and Asterisk (another
# image, same uid on its side) reads the converted audio from the same volume.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
ARG HUB_UID=10001
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates sox libsox-fmt-mp3 espeak-ng \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid "$HUB_UID" hub \
    && useradd --uid "$HUB_UID" --gid hub --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin hub \
    && install -d -o hub -g hub -m 0755 /var/lib/connect-hub/media \
    && python3 -m venv /opt/hub
ENV PATH=/opt/hub/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HUB_MEDIA_DIR=/var/lib/connect-hub/media HUB_API_HOST=0.0.0.0 HUB_API_PORT=8080
WORKDIR /opt/hub/src
# The dependencies from pyproject.toml get a layer of their own (an empty package stands in
# for the code), so that changing the code reinstalls only the hub itself.
COPY pyproject.toml ./
RUN mkdir hub && touch hub/__init__.py README.md \
    && pip install --no-cache-dir . && rm -rf hub build README.md
COPY README.md ./
COPY hub ./hub
RUN pip install --no-cache-dir --no-deps --force-reinstall . && rm -rf build
USER hub
WORKDIR /
EXPOSE 8080
# One check for every role: it asks the container's own process (API /healthz, the RQ
# worker's registration, the voice controller's heartbeat and ARI connection).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-m", "hub.health"]
ENTRYPOINT ["hub"]
CMD ["api"]
