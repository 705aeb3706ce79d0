# phala-router: the router image. Small, non-root, health-checked on the admin listener.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY router ./router
COPY bench ./bench
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin router
COPY --from=build /install /usr/local
COPY config /etc/phala-router/examples
USER 10001:10001
EXPOSE 8080 9090
# The admin listener must be reachable from inside the container for the check; it stays
# on loopback by default, so no token is needed for it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["phala-router"]
CMD ["serve", "-c", "/etc/phala-router/router.yaml"]
