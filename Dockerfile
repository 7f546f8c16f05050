# The hub's own image: `hub api`, `hub worker` and `hub voice` all run from it.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends sox libsox-fmt-mp3 espeak-ng \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY hub ./hub
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["hub"]
