"""The Docker images and compose file, checked without a Docker engine:
docker-compose validates the compose file, the packages the images install
exist in Debian 12, the build stages use the README's install script, the
entrypoint makes a development certificate, and the shipped configs pass
h3gate -t. cmake --install and the systemd units."""

import os
import pathlib
import re
import subprocess
import tempfile

import yaml

from h3env import BIN, ROOT, SANITIZED, make_cert, run

DOCKER = ROOT / "docker"


def compose_config():
    r = run(["docker-compose", "-f", DOCKER / "compose.yaml", "config"], timeout=60)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def test_compose_file_is_valid_and_scalable():
    c = compose_config()
    gw, be = c["services"]["gateway"], c["services"]["backend"]
    ports = {(p["target"], p["protocol"]) for p in gw["ports"]} if isinstance(gw["ports"][0], dict) \
        else {(int(p.split(":")[1].split("/")[0]), p.split("/")[1]) for p in gw["ports"]}
    assert ports == {(8443, "tcp"), (8443, "udp")}  # one port number, both transports
    assert "ports" not in be and "container_name" not in be  # --scale backend=N works
    config_mount = [v for v in gw["volumes"]
                    if (v["target"] if isinstance(v, dict) else v.split(":")[1]) == "/etc/h3gate/gateway.yaml"]
    assert config_mount
    v = config_mount[0]
    assert v.get("read_only") is True if isinstance(v, dict) else v.endswith(":ro")
    assert be["environment"]["H3GATE_WORKERS"]


def dockerfile_packages(path):
    text = path.read_text().replace("\\\n", " ")
    pkgs = set()
    for cmd in re.findall(r"apt-get install ([^&]+)", text):
        pkgs |= {w for w in cmd.split() if not w.startswith("-")}
    return pkgs


def test_images_install_real_debian_packages():
    for name in ("Dockerfile.gateway", "Dockerfile.backend"):
        path = DOCKER / name
        text = path.read_text()
        assert "FROM debian:12-slim AS build" in text
        assert "RUN scripts/install-deps.sh build" in text  # the README's script
        # not root at run time: USER, or an entrypoint that drops privileges
        assert re.search(r"^USER \w+", text, re.M) or \
            "setpriv --reuid=h3gate" in (DOCKER / "gateway-entrypoint.sh").read_text()
        assert "HEALTHCHECK" in text
        pkgs = dockerfile_packages(path)
        assert pkgs
        for p in pkgs:
            r = run(["apt-cache", "policy", p])
            assert re.search(r"Candidate: (?!\(none\))", r.stdout), f"{name}: no package {p}"


def test_gateway_image_links_only_what_it_installs():
    # Every shared library h3gate needs comes with a package the image installs.
    out = run(["ldd", BIN / "h3gate"], check=True).stdout
    libs = re.findall(r"^\s*(\S+\.so[.\d]*) =>", out, re.M)
    pkgs = dockerfile_packages(DOCKER / "Dockerfile.gateway")
    missing = []
    for lib in libs:
        r = run(["dpkg", "-S", lib])
        owners = {line.split(":")[0] for line in r.stdout.splitlines()}
        essential = {"libc6", "libgcc-s1", "libgmp10", "libp11-kit0", "libidn2-0", "libunistring2",
                     "libtasn1-6", "libnettle8", "libhogweed6", "libffi8", "libcrypt1", "zlib1g"}
        if SANITIZED:  # the sanitizer runtimes come with the test build, not the image's
            essential |= {"libasan8", "libubsan1", "libstdc++6", "lib32stdc++6"}
        if owners and not owners & (pkgs | essential) and not any(o.split(":")[0] in pkgs for o in owners):
            missing.append((lib, owners))
    assert not missing, missing


def test_entrypoint_makes_a_dev_certificate():
    d = pathlib.Path(tempfile.mkdtemp(prefix="h3certs-"))
    env = dict(os.environ, H3GATE_DEV_CERT="1", H3GATE_CERT_DIR=str(d))
    if os.getuid() == 0:
        # as root it would switch user: run the certificate part only
        env["PATH"] = os.environ["PATH"]
    r = subprocess.run(["sh", "-c", f"H3GATE_DEV_CERT=1 H3GATE_CERT_DIR={d} "
                        f"sed 's/^if \\[ \"$(id -u)\" = 0 \\]; then/if false; then/' "
                        f"{DOCKER / 'gateway-entrypoint.sh'} | sh -s true"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (d / "cert.pem").exists() and (d / "key.pem").exists()
    r = run(["openssl", "x509", "-in", d / "cert.pem", "-noout", "-ext", "subjectAltName"])
    assert "DNS:localhost" in r.stdout


def test_shipped_configs_pass_h3gate_t(tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    make_cert(certs)
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "gateway.yaml").write_text((ROOT / "configs" / "gateway.yaml").read_text())
    r = run([BIN / "h3gate", "-t", "-c", configs / "gateway.yaml"])
    assert r.returncode == 0, r.stderr
    compose = (ROOT / "configs" / "compose-gateway.yaml").read_text().replace("/certs/", f"{certs}/")
    (configs / "compose-gateway.yaml").write_text(compose)
    r = run([BIN / "h3gate", "-t", "-c", configs / "compose-gateway.yaml"])
    assert r.returncode == 0, r.stderr


def test_install_and_systemd_units(tmp_path):
    """cmake --install puts the programs, h3load, the documented config and
    the systemd units under the prefix. Each command in the units names an
    installed program with options its --help lists, and `systemd-analyze
    verify` has nothing to say about them (an unknown key is a warning)."""
    prefix = tmp_path / "prefix"
    r = run(["cmake", "--install", BIN.parent, "--prefix", prefix], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for f in ("bin/h3gate", "bin/h3gate-worker", "bin/h3load", "share/h3gate/gateway.yaml",
              "share/h3gate/systemd/h3gate.service", "share/h3gate/systemd/h3gate-worker.service"):
        assert (prefix / f).is_file(), f
    units = tmp_path / "units"
    units.mkdir()
    for name in ("h3gate", "h3gate-worker"):
        text = (prefix / "share/h3gate/systemd" / f"{name}.service").read_text()
        commands = re.findall(r"^Exec\w+=(\S+)(.*)$", text, re.M)
        assert any(program.endswith(f"/{name}") for program, _ in commands), commands
        for program, args in commands:
            if program == "/bin/kill":
                assert args.strip() == "-HUP $MAINPID", args
                continue
            assert program.startswith("/usr/local/bin/"), program
            installed = prefix / "bin" / program.rsplit("/", 1)[1]
            assert installed.is_file(), program
            helped = run([installed, "--help"])
            for option in re.findall(r"(?<!\S)(--?[a-z][\w-]*)", args):
                assert option in helped.stdout + helped.stderr, (name, option)
        (units / f"{name}.service").write_text(text.replace("/usr/local/bin/", f"{prefix}/bin/"))
    r = run(["systemd-analyze", "verify", units / "h3gate.service", units / "h3gate-worker.service"], timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
