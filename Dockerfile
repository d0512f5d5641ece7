# Root filesystem of the managed plugin: `docker build -t multinic-rootfs .`, then
# `docker create` + `docker export` into plugin-dir/rootfs beside config.json and
# `docker plugin create multinic:latest plugin-dir` (see README, "Quick start: the managed plugin";
# scripts/build-managed-plugin.sh builds the same rootfs without Docker, with debootstrap).
# The wheels are built in a first stage, which has the C compiler python-iptables needs; the plugin's
# image has no compiler.
FROM debian:bookworm-slim AS wheels
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY setup.cfg pyproject.toml README.md /src/
COPY plugin /src/plugin
RUN python3 -m venv /build && /build/bin/pip wheel --no-cache-dir -w /wheels /src

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-nftables iptables nftables iproute2 conntrack \
 && rm -rf /var/lib/apt/lists/*
COPY --from=wheels /wheels /wheels
RUN python3 -m venv /opt/multinic \
 && /opt/multinic/bin/pip install --no-cache-dir --no-index --find-links /wheels multinic \
 && rm -rf /wheels \
 && ln -s /opt/multinic/bin/multinic /usr/local/bin/multinic \
 && mkdir -p /run/docker/plugins /host/var/lib /host/run
ENTRYPOINT ["/usr/local/bin/multinic", "serve", "--socket", "/run/docker/plugins/multinic.sock"]
