"""Packaging: canvashub installs as one top-level package and lives beside an application's own modules."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_a_wheel_installs_exactly_one_top_level_package(tmp_path):
    """``pip install`` of the project puts ``canvashub`` (and its metadata and console script) into
    site-packages, and no generic ``server``, ``crdt`` or ``storage`` package; ``canvashub.client``
    imports from it, and only under that name."""
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(REPO),
        ],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    top = {entry.name for entry in target.iterdir()}
    packages = {name for name in top if not name.endswith((".dist-info", ".egg-info")) and name != "bin"}
    assert packages == {"canvashub"}, top
    assert {p.name for p in (target / "canvashub").iterdir()} >= {"server", "crdt", "storage", "client"}
    assert not (target / "canvashub" / "__init__.py").exists()  # a namespace: nothing to shadow
    assert (target / "bin" / "canvashub").exists()
    # The client's source lives in server/client/, but it is installed once, as canvashub.client.
    assert (target / "canvashub" / "client" / "realtime.py").exists()
    assert not (target / "canvashub" / "server" / "client").exists()
    probe = textwrap.dedent("""
        import canvashub.client as client
        assert callable(client.connect) and client.HttpClient
        try:
            import canvashub.server.client
        except ImportError:
            print("one name")
    """)
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip() == "one name", out.stderr[-3000:]


def test_an_application_with_its_own_server_and_storage_packages_embeds_canvashub(tmp_path):
    """An application that has modules named ``server``, ``storage`` and ``crdt`` imports canvashub's ASGI
    app and mounts it in its own Starlette app; both sides keep their own modules."""
    for name in ("server", "storage", "crdt"):
        package = tmp_path / name
        package.mkdir()
        who = f"the application's own {name}"
        (package / "__init__.py").write_text(f"WHO = {who!r}\n")
    (tmp_path / "main.py").write_text(
        textwrap.dedent("""
        import dataclasses, tempfile

        import crdt, server, storage
        from starlette.applications import Starlette
        from starlette.routing import Mount
        from starlette.testclient import TestClient

        from canvashub.server.app import create_app
        from canvashub.server.settings import Settings

        settings = dataclasses.replace(Settings(), data_dir=tempfile.mkdtemp())
        collab = create_app(settings)
        # A mounted app's lifespan does not run by itself: the host app runs canvashub's.
        app = Starlette(routes=[Mount("/collab", app=collab)], lifespan=collab.router.lifespan_context)
        with TestClient(app) as client:
            assert client.get("/collab/healthz").json() == {"status": "ok"}
            assert client.get("/collab/readyz").json()["status"] == "ready"
        assert {server.WHO, storage.WHO, crdt.WHO} == {
            "the application's own server", "the application's own storage", "the application's own crdt"}
        print("embedded")
    """)
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "main.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("embedded")


def test_the_editable_install_loads_the_client_under_one_name_only():
    """In the development install ``server/client/`` is ``canvashub.client``; importing it as
    ``canvashub.server.client`` (possible by path, as server/ is canvashub.server) is refused."""
    probe = textwrap.dedent("""
        import canvashub.client
        try:
            import canvashub.server.client
        except ImportError as exc:
            print("refused:", exc)
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("refused: the Python client is canvashub.client")
