# flynn/host: the host service, run as the original ran it (README, "Run in Docker"):
#
#   docker run -v /var/run/docker.sock:/var/run/docker.sock -p 1113:1113 flynn/host -external $IP
#
# The agent reaches the engine through the mounted socket; the jobs it starts, its layer-0 etcd
# member included, are its siblings on that engine. Built by bin/build-images, which prepares the
# context: the wheels of the package and of everything its daemon needs (`wheelhouse/`: no PyPI is
# needed inside the build) and manifest.json.
#
# BASE_IMAGE: any Debian 12 image with python3 (3.11) and its venv module. The default is the
# usual upstream one; bin/build-images makes one locally (debootstrap) where no registry is
# reachable.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

COPY wheelhouse /tmp/wheelhouse
RUN python3 -m venv /opt/flynn-host \
 && /opt/flynn-host/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse \
        'flynn-host[daemon]' \
 && rm -rf /tmp/wheelhouse
COPY manifest.json /etc/flynn-host/manifest.json

# every layer-0 service runs as a job (a sibling container) since the agent is in a container;
# state (the job table, the host id) in /var/lib/flynn-host: mount a volume there to keep it
# across container replacements (without it, a new container rebuilds the table from the
# containers' labels)
# The API listens on all the container's addresses (for -p 1113:1113): without a token file
# (-e FLYNN_HOST_TOKEN_FILE=... and the file mounted) it is open, and the agent says so loudly.
ENV FLYNN_HOST_MANIFEST=/etc/flynn-host/manifest.json \
    FLYNN_HOST_LAYER0_MODE=jobs \
    FLYNN_HOST_LISTEN=0.0.0.0:1113 \
    FLYNN_HOST_STATE_DIR=/var/lib/flynn-host \
    DOCKER_HOST=unix:///var/run/docker.sock \
    PYTHONUNBUFFERED=1
EXPOSE 1113
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/flynn-host/bin/flynn-host"]
