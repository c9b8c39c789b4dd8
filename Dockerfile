# jalwa's image: `docker build -t jalwa .` (docs/operations.md, "Deploy").
#
# Two stages: the first installs the project and its dependencies into a virtualenv
# (every dependency ships a manylinux wheel, so no compiler is needed); the second copies
# that virtualenv onto a clean slim base and runs it as an unprivileged user.

FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/jalwa

WORKDIR /src
# Only what the distribution is built from (pyproject.toml names README.md as its readme).
COPY pyproject.toml README.md ./
COPY signalling/ signalling/
COPY billing/ billing/
COPY media/ media/
COPY turn/ turn/
# No dev extras: the runtime dependencies only.
RUN /opt/jalwa/bin/pip install --no-cache-dir .


FROM python:3.11-slim-bookworm

ENV PATH=/opt/jalwa/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# A fixed, unprivileged uid/gid (10001), so orchestrators can check runAsNonRoot.
# /var/lib/jalwa/turn is where docker-compose.yml's one-shot `turn-config` service writes
# coturn's turnserver.conf; it exists (owned by jalwa) so a fresh named volume mounted
# there starts out writable by this user.
RUN groupadd --system --gid 10001 jalwa \
 && useradd --system --uid 10001 --gid jalwa --create-home --home-dir /home/jalwa \
        --shell /usr/sbin/nologin jalwa \
 && install -d -o jalwa -g jalwa -m 0750 /var/lib/jalwa /var/lib/jalwa/turn

COPY --from=build /opt/jalwa /opt/jalwa

USER 10001:10001
WORKDIR /home/jalwa

EXPOSE 8080

# Liveness only (/healthz asks no store); /readyz is for load balancers. No curl in the
# image: the standard library's urllib fails (exit 1) on a refused connection or a non-2xx.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]

ENTRYPOINT ["jalwa"]
# Production needs settings: JALWA_ENV=production, a JWT key and the store URLs
# (docs/operations.md). With the development key `serve` refuses 0.0.0.0.
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
