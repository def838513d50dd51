# pooler as a container: configured by environment only (DATABASE_URL, POOLER_<SETTING>), no config file.
#
#   docker build -t pooler .
#   docker run -e DATABASE_URL=postgresql://app:app@db:5432/app -p 6432:6432 -p 9127:9127 pooler
#
# See docker-compose.yml for the sidecar setup (Postgres, pooler, Prometheus) and docs/operations.md.
#
# Two stages: the first has a C compiler and builds the wheel with the compiled core (Cython, see setup.py);
# the image itself gets only that wheel and its dependencies, no compiler and no build tools.

FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY pooler ./pooler
# The image must carry the whole compiled core: a build that fell back to pure Python fails here.
RUN pip wheel --no-deps -w /wheels . \
    && python -c "import glob, sys, zipfile; sys.path.insert(0, 'pooler'); from _compiled import COMPILED_MODULES; \
built = [n for n in zipfile.ZipFile(glob.glob('/wheels/pooler-*.whl')[0]).namelist() if n.endswith('.so')]; \
sys.exit(0 if len(built) == len(COMPILED_MODULES) else f'compiled core incomplete: {len(built)} modules')"

FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=build /wheels /wheels
RUN pip install /wheels/pooler-*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pooler

# Listen on every interface of the container; JSON log lines on stderr; metrics and health on 9127.
ENV POOLER_LISTEN_ADDR=0.0.0.0 \
    POOLER_LISTEN_PORT=6432 \
    POOLER_METRICS_PORT=9127 \
    POOLER_LOG_FORMAT=json

USER pooler
EXPOSE 6432 6433 9127

# Ready = accepting clients and able to reach Postgres (GET /readyz on the metrics port).
HEALTHCHECK --interval=5s --timeout=5s --start-period=5s --retries=10 CMD ["pooler", "check"]

# SIGINT: finish the transactions in flight, then exit (a plain `docker stop` sends SIGTERM: wait for clients).
STOPSIGNAL SIGINT
ENTRYPOINT ["pooler"]
CMD ["run"]
