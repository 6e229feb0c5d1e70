# The seedline image: one Python package, every process of the deployment is a `seedline`
# sub-command (serve, worker, mqtt-bridge, migrate, audit verify, ...). docker-compose.yml runs it.
#
#   docker build -t seedline .
#   docker run --rm seedline seedline --help
#
# Python 3.11, the version the test suite runs on (pyproject allows >=3.11). Every dependency has
# a manylinux wheel, so no compiler is needed.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# The wheel holds src/seedline_server (with the migrations and reference data) and the generated
# contract in gen/ (see [tool.hatch.build.targets.wheel] in pyproject.toml).
COPY pyproject.toml README.md ./
COPY src ./src
COPY gen ./gen
RUN pip install . && rm -rf /src

# An unprivileged user; SEEDLINE_DATA_DIR is its only writable place (the processes in compose
# keep nothing there: the database is DATABASE_URL and the secrets keys come from the environment).
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/seedline seedline
USER seedline
WORKDIR /var/lib/seedline
ENV SEEDLINE_DATA_DIR=/var/lib/seedline \
    SEEDLINE_LOG_FORMAT=json

# 50051: direct gRPC (bearer credentials). 50052: the listener only Envoy may reach.
EXPOSE 50051 50052
CMD ["seedline", "serve"]
