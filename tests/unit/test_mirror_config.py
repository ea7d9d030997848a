"""Client configs rendered by `edgecache mirror-config`: exact text, valid TOML/JSON."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from edgecache import config as cfg
from edgecache.config import UpstreamConfig
from edgecache.mirror_config import (
    MirrorConfigError,
    containerd_host_directory,
    containerd_hosts,
    docker_daemon_json,
    podman_registries_conf,
    project_name,
    registry_hosts,
    render,
    write_containerd_hosts,
)

HUB = UpstreamConfig("docker.io", "https://registry-1.docker.io", aliases=("dockerhub",))
PRIVATE = UpstreamConfig(
    "private", "https://registry.internal:8443", aliases=("registry.internal:8443",)
)
UPSTREAMS = {"docker.io": HUB, "private": PRIVATE}

CONFIG_TOML = """
[proxy]
default_upstream = "docker.io"

[upstreams."docker.io"]
url = "https://registry-1.docker.io"
aliases = ["dockerhub"]

[upstreams.private]
url = "https://registry.internal:8443"
aliases = ["registry.internal:8443"]
"""


@pytest.fixture
def config(tmp_path: Path) -> cfg.Config:
    path = tmp_path / "edgecache.toml"
    path.write_text(CONFIG_TOML)
    return cfg.load(path, env={})


def test_containerd_hosts_exact_http_mirror() -> None:
    assert containerd_hosts(UPSTREAMS, "http://edge.lan:5000/") == {
        "docker.io/hosts.toml": (
            '# docker.io via edgecache upstream "docker.io"; server = fallback\n'
            'server = "https://registry-1.docker.io"\n'
            "\n"
            '[host."http://edge.lan:5000"]\n'
            '  capabilities = ["pull", "resolve"]\n'
        ),
        # edgecache also answers ns=<its URL's host>, so that host gets a directory too.
        "registry-1.docker.io/hosts.toml": (
            '# registry-1.docker.io via edgecache upstream "docker.io"; server = fallback\n'
            'server = "https://registry-1.docker.io"\n'
            "\n"
            '[host."http://edge.lan:5000"]\n'
            '  capabilities = ["pull", "resolve"]\n'
        ),
        "registry.internal_8443_/hosts.toml": (
            '# registry.internal:8443 via edgecache upstream "private"; server = fallback\n'
            'server = "https://registry.internal:8443"\n'
            "\n"
            '[host."http://edge.lan:5000"]\n'
            '  capabilities = ["pull", "resolve"]\n'
        ),
    }


def test_containerd_hosts_https_mirror_with_tls_options() -> None:
    files = containerd_hosts(
        {"docker.io": HUB}, "https://edge.lan", ca_file="/etc/edgecache/ca.pem", skip_verify=True
    )
    parsed = tomllib.loads(files["docker.io/hosts.toml"])
    assert parsed == {
        "server": "https://registry-1.docker.io",
        "host": {
            "https://edge.lan": {
                "capabilities": ["pull", "resolve"],
                "skip_verify": True,
                "ca": "/etc/edgecache/ca.pem",
            }
        },
    }


def test_docker_hub_server_is_the_registry_endpoint() -> None:
    hub = UpstreamConfig("docker.io", "https://index.docker.io")
    parsed = tomllib.loads(
        containerd_hosts({"docker.io": hub}, "http://e:1")["docker.io/hosts.toml"]
    )
    assert parsed["server"] == "https://registry-1.docker.io"
    # A non-Hub URL for Docker Hub (a pull-through elsewhere) is kept: it is what works.
    other = UpstreamConfig("docker.io", "https://mirror.gcr.io")
    parsed = tomllib.loads(
        containerd_hosts({"docker.io": other}, "http://e:1")["docker.io/hosts.toml"]
    )
    assert parsed["server"] == "https://mirror.gcr.io"


def test_registry_hosts_are_the_ns_values_edgecache_answers() -> None:
    # Name, aliases and URL host, the host-like ones only ("dockerhub" is a project name).
    assert registry_hosts(HUB) == ["docker.io", "registry-1.docker.io"]
    assert registry_hosts(PRIVATE) == ["registry.internal:8443"]  # alias == URL host: once
    gh = UpstreamConfig("ghcr.io", "https://ghcr.io", aliases=("gh", "ghcr.example.com"))
    assert registry_hosts(gh) == ["ghcr.io", "ghcr.example.com"]
    lab = UpstreamConfig("lab", "http://127.0.0.1:5001", aliases=("localhost",))
    assert registry_hosts(lab) == ["localhost", "127.0.0.1:5001"]
    assert registry_hosts(UpstreamConfig("lab", "http://registry")) == []


@pytest.mark.parametrize(
    ("host", "directory"),
    [
        ("docker.io", "docker.io"),
        ("127.0.0.1:5001", "127.0.0.1_5001_"),
        ("registry.internal:8443", "registry.internal_8443_"),
        ("[::1]:5000", "[::1]_5000_"),
        ("localhost", "localhost"),
    ],
)
def test_containerd_host_directory(host: str, directory: str) -> None:
    assert containerd_host_directory(host) == directory


def test_every_containerd_file_is_valid_toml(config: cfg.Config) -> None:
    for content in containerd_hosts(config.upstreams, "http://10.0.0.5:5000").values():
        tomllib.loads(content)
    defaults = cfg.load(env={})
    files = containerd_hosts(defaults.upstreams, "https://edge.lan:5443")
    assert sorted(files) == sorted(
        f"{h}/hosts.toml"
        for h in (
            "docker.io", "registry-1.docker.io", "ghcr.io", "quay.io", "registry.k8s.io",
            "gcr.io", "public.ecr.aws", "mcr.microsoft.com",
        )
    )  # fmt: skip
    for content in files.values():
        assert tomllib.loads(content)["host"] == {
            "https://edge.lan:5443": {"capabilities": ["pull", "resolve"]}
        }


def test_docker_daemon_json() -> None:
    assert json.loads(docker_daemon_json("http://edge.lan:5000")) == {
        "registry-mirrors": ["http://edge.lan:5000"],
        "insecure-registries": ["edge.lan:5000"],
    }
    assert json.loads(docker_daemon_json("https://edge.lan")) == {
        "registry-mirrors": ["https://edge.lan"]
    }


def test_podman_registries_conf_exact() -> None:
    text = podman_registries_conf(UPSTREAMS, "edge.lan:5000", insecure=True)
    assert text == (
        "# registries.conf (v2) for podman, CRI-O, skopeo and buildah: pulls go through\n"
        "# edgecache first, by project path (these clients send no ?ns=).\n"
        "\n"
        "[[registry]]\n"
        'prefix = "docker.io"\n'
        'location = "docker.io"\n'
        "\n"
        "[[registry.mirror]]\n"
        'location = "edge.lan:5000/docker.io"\n'
        "insecure = true\n"
        "\n"
        "[[registry]]\n"
        'prefix = "registry-1.docker.io"\n'
        'location = "registry-1.docker.io"\n'
        "\n"
        "[[registry.mirror]]\n"
        'location = "edge.lan:5000/docker.io"\n'
        "insecure = true\n"
        "\n"
        "[[registry]]\n"
        'prefix = "registry.internal:8443"\n'
        'location = "registry.internal:8443"\n'
        "\n"
        "[[registry.mirror]]\n"
        'location = "edge.lan:5000/private"\n'
        "insecure = true\n"
    )
    assert tomllib.loads(text) == {
        "registry": [
            {
                "prefix": "docker.io",
                "location": "docker.io",
                "mirror": [{"location": "edge.lan:5000/docker.io", "insecure": True}],
            },
            {
                "prefix": "registry-1.docker.io",
                "location": "registry-1.docker.io",
                "mirror": [{"location": "edge.lan:5000/docker.io", "insecure": True}],
            },
            {
                "prefix": "registry.internal:8443",
                "location": "registry.internal:8443",
                "mirror": [{"location": "edge.lan:5000/private", "insecure": True}],
            },
        ]
    }
    secure = tomllib.loads(podman_registries_conf(UPSTREAMS, "edge.lan", insecure=False))
    assert secure["registry"][0]["mirror"] == [{"location": "edge.lan/docker.io"}]


def test_render_containerd(config: cfg.Config) -> None:
    text = render("containerd", config, "http://edge.lan:5000")
    files = containerd_hosts(config.upstreams, "http://edge.lan:5000")
    for path, content in files.items():
        assert f"# /etc/containerd/certs.d/{path}\n{content}" in text
    assert '[plugins."io.containerd.grpc.v1.cri".registry]' in text
    assert 'config_path = "/etc/containerd/certs.d"' in text
    # The whole output is not one TOML document (every file has its own `server`), but each
    # section cut at its header comment is, so copying one section into a file works.
    sections = text.split("\n# /etc/containerd/certs.d/")[1:]
    assert len(sections) == 3
    for section in sections:
        tomllib.loads(section.split("\n", 1)[1])


def test_render_podman_and_docker(config: cfg.Config) -> None:
    podman = render("podman", config, "https://edge.lan:5443")
    assert podman == podman_registries_conf(config.upstreams, "edge.lan:5443", insecure=False)
    assert render("docker", config, "http://edge.lan:5000") == docker_daemon_json(
        "http://edge.lan:5000"
    )


def test_render_names_upstreams_without_a_host_name(tmp_path: Path) -> None:
    path = tmp_path / "edgecache.toml"
    # "registry" (no dot, no port) is a host only inside some private network's DNS.
    path.write_text(CONFIG_TOML + '\n[upstreams.lab]\nurl = "http://registry"\n')
    config = cfg.load(path, env={})
    note = '# upstream "lab" has no registry host name or alias'
    assert note in render("containerd", config, "http://edge.lan:5000")
    podman = render("podman", config, "http://edge.lan:5000")
    assert note in podman and "edge.lan:5000/lab/<repo>" in podman
    tomllib.loads(podman)


def test_render_docker_needs_hub_as_default_upstream(tmp_path: Path) -> None:
    no_default = cfg.load(env={})
    with pytest.raises(MirrorConfigError, match=r'default_upstream = "docker\.io"'):
        render("docker", no_default, "http://edge.lan:5000")
    path = tmp_path / "edgecache.toml"
    path.write_text('[upstreams.private]\nurl = "https://registry"\n')
    with pytest.raises(MirrorConfigError, match="no upstream is Docker Hub"):
        render("docker", cfg.load(path, env={}), "http://edge.lan:5000")
    with pytest.raises(MirrorConfigError, match="no upstream has a registry host name"):
        render("containerd", cfg.load(path, env={}), "http://edge.lan:5000")


@pytest.mark.parametrize(
    "url", ["edge.lan:5000", "ftp://edge.lan", "http://edge.lan:5000/v2/", "http://u:p@edge.lan"]
)
def test_bad_mirror_urls(url: str) -> None:
    with pytest.raises(MirrorConfigError, match="mirror URL"):
        docker_daemon_json(url)


def test_write_containerd_hosts(tmp_path: Path) -> None:
    files = containerd_hosts(UPSTREAMS, "http://edge.lan:5000")
    written = write_containerd_hosts(files, tmp_path / "certs.d")
    assert written == [
        tmp_path / "certs.d" / "docker.io" / "hosts.toml",
        tmp_path / "certs.d" / "registry-1.docker.io" / "hosts.toml",
        tmp_path / "certs.d" / "registry.internal_8443_" / "hosts.toml",
    ]
    for path, (_, content) in zip(written, files.items(), strict=True):
        assert path.read_text() == content
    # Rewriting replaces in place and leaves no temporary files behind.
    write_containerd_hosts(files, tmp_path / "certs.d")
    assert sorted(p.name for p in (tmp_path / "certs.d" / "docker.io").iterdir()) == ["hosts.toml"]


@pytest.mark.parametrize("bad", ["../hosts.toml", "/etc/hosts.toml", "a/b/hosts.toml", "a/x"])
def test_write_containerd_hosts_refuses_other_paths(tmp_path: Path, bad: str) -> None:
    with pytest.raises(MirrorConfigError):
        write_containerd_hosts({bad: ""}, tmp_path)


def test_host_port_upstream_name(tmp_path: Path) -> None:
    """An upstream named host:port (as `--upstream 127.0.0.1:5001=URL` makes) is ns-only."""
    path = tmp_path / "edgecache.toml"
    path.write_text('[upstreams."127.0.0.1:5001"]\nurl = "http://127.0.0.1:5001"\n')
    config = cfg.load(path, env={})
    upstream = config.upstreams["127.0.0.1:5001"]
    assert project_name(upstream) is None
    files = containerd_hosts(config.upstreams, "http://127.0.0.1:5000")
    assert list(files) == ["127.0.0.1_5001_/hosts.toml"]
    assert tomllib.loads(files["127.0.0.1_5001_/hosts.toml"])["server"] == "http://127.0.0.1:5001"
    with pytest.raises(MirrorConfigError, match="project"):
        render("podman", config, "http://127.0.0.1:5000")
    # With a project alias podman can use it too.
    path.write_text(
        '[upstreams."127.0.0.1:5001"]\nurl = "http://127.0.0.1:5001"\naliases = ["lab"]\n'
    )
    podman = tomllib.loads(render("podman", cfg.load(path, env={}), "http://127.0.0.1:5000"))
    assert podman["registry"] == [
        {
            "prefix": "127.0.0.1:5001",
            "location": "127.0.0.1:5001",
            "mirror": [{"location": "127.0.0.1:5000/lab", "insecure": True}],
        }
    ]


SITE = ["http://edge-a:5000", "http://edge-b:5000/", "https://edge-c:5443"]


def test_several_edgecache_nodes_are_listed_in_order(config: cfg.Config) -> None:
    """A site's nodes: containerd gets one [host] per node in the order given (it tries them
    in order), Docker one registry mirror each, podman one [[registry.mirror]] each."""
    files = containerd_hosts({"docker.io": HUB}, SITE, ca_file="/etc/ca.pem")
    doc = tomllib.loads(files["docker.io/hosts.toml"])
    assert list(doc["host"]) == ["http://edge-a:5000", "http://edge-b:5000", "https://edge-c:5443"]
    assert all(h["capabilities"] == ["pull", "resolve"] for h in doc["host"].values())
    assert doc["server"] == "https://registry-1.docker.io"
    daemon = json.loads(docker_daemon_json(SITE))
    assert daemon["registry-mirrors"] == [
        "http://edge-a:5000", "http://edge-b:5000", "https://edge-c:5443",
    ]  # fmt: skip
    assert daemon["insecure-registries"] == ["edge-a:5000", "edge-b:5000"]
    conf = tomllib.loads(render("podman", config, SITE))
    hub = next(r for r in conf["registry"] if r["prefix"] == "docker.io")
    assert [m["location"] for m in hub["mirror"]] == [
        "edge-a:5000/docker.io", "edge-b:5000/docker.io", "edge-c:5443/docker.io",
    ]  # fmt: skip
    assert [m.get("insecure", False) for m in hub["mirror"]] == [True, True, False]
    # A repeated node is listed once.
    twice = containerd_hosts({"docker.io": HUB}, [SITE[0], SITE[0] + "/"])
    assert list(tomllib.loads(twice["docker.io/hosts.toml"])["host"]) == ["http://edge-a:5000"]
