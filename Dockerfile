# postclf server image. Every command below is one the Makefile runs too (venv, the two pinned
# pip installs, protoc for the stubs); only the dev extras are left out.
#   docker build -t postclf .
#   docker run -p 50051:50051 -p 9095:9095 -v postclf-home:/var/lib/postclf \
#       -v "$PWD/../shared/data:/data:ro" postclf
FROM python:3.11-slim

# torch==2.13.0 from the CPU index (2.13.0+cpu satisfies the pin); override to use a mirror.
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/app/.venv/bin:$PATH

WORKDIR /app

# Heavy, rarely changing layer first.
RUN python3 -m venv .venv \
    && .venv/bin/pip install -q torch==2.13.0

COPY . .
RUN .venv/bin/pip install -q -e . --config-settings editable_mode=compat \
    && .venv/bin/pip install -q --no-deps crowd-kit==1.4.2 \
    && mkdir -p postclf/v1 \
    && .venv/bin/python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. proto/postclf/v1/*.proto \
    && touch postclf/__init__.py postclf/v1/__init__.py

RUN useradd --system --uid 10001 --home-dir /app postclf \
    && mkdir -p /var/lib/postclf \
    && chown postclf /var/lib/postclf
USER postclf

# A container must listen beyond loopback; Admin is then refused unless POSTCLF_ADMIN_TOKEN
# is set (e.g. `docker run -e POSTCLF_ADMIN_TOKEN=...`).
ENV POSTCLF_HOME=/var/lib/postclf \
    POSTCLF_HOST="[::]" \
    POSTCLF_METRICS_HOST=0.0.0.0 \
    POSTCLF_GRPC_PORT=50051 \
    POSTCLF_METRICS_PORT=9095 \
    POSTCLF_BOOTSTRAP_DATA=/data/reviews.npz
VOLUME ["/var/lib/postclf"]
EXPOSE 50051 9095

# NOT_SERVING (exit 1) until a model is loaded; the first start may train the demo model.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-m", "client", "--timeout", "3", "health"]

# SIGTERM → graceful shutdown (in-flight calls finish, pool flushed, ledger closed).
STOPSIGNAL SIGTERM
CMD ["python", "-m", "server"]
