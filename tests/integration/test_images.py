"""The Goodput image, built from this checkout (or reused by its content key), and run once.

Real builds: on a machine without a registry the base comes from debootstrap (docs/images.md), so
this needs root, podman and Debian's mirrors; it never skips on the dev machines or in CI.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from goodput.api.images import VLLM_VERSION
from goodput.dev import host_packages
from goodput.dev.images import (
    ENGINE,
    GOODPUT,
    IMPORT_TOOLS,
    RECIPES,
    BuiltImage,
    ImageBuilder,
    import_into_containerd,
    stage_context,
)
from goodput.dev.paths import repo_root

pytestmark = [pytest.mark.images, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def builder(tmp_path_factory: pytest.TempPathFactory) -> ImageBuilder:
    """A builder on a snapshot of this checkout's image sources: others may edit the tree while
    these tests run, and every test here must see one tree."""
    snapshot = tmp_path_factory.mktemp("checkout")
    for recipe in RECIPES:
        stage_context(recipe, repo_root(), snapshot)
    return ImageBuilder(root=snapshot)


@pytest.fixture(scope="module")
def goodput_image(builder: ImageBuilder) -> BuiltImage:
    (image,) = builder.ensure([GOODPUT])
    builder.load(image)
    return image


def test_a_second_build_of_an_unchanged_tree_is_a_no_op(
    builder: ImageBuilder, goodput_image: BuiltImage
) -> None:
    started = time.monotonic()
    (again,) = builder.ensure([GOODPUT])
    assert not again.built
    assert again.key == goodput_image.key
    assert again.archive == goodput_image.archive and again.archive.stat().st_size > 0
    assert time.monotonic() - started < 10


def test_the_image_runs_the_cli_as_a_non_root_user(
    builder: ImageBuilder, goodput_image: BuiltImage
) -> None:
    out = builder.podman.run_image(goodput_image.key_tag, "--help")
    assert "Usage: goodput" in out
    for command in ("operator", "serve", "profile"):
        assert command in out
    uid = builder.podman.run_image(goodput_image.key_tag, "-u", entrypoint="id").strip()
    assert uid.isdigit() and int(uid) != 0


def test_the_image_ships_the_length_model_and_no_plotting_or_dev_tools(
    builder: ImageBuilder, goodput_image: BuiltImage
) -> None:
    probe = (
        "import importlib.util as u\n"
        "from goodput.profiler.length_model_io import load_default_length_model\n"
        "load_default_length_model()\n"
        "print([m for m in ('matplotlib', 'pytest', 'mypy', 'pip') if u.find_spec(m)])\n"
    )
    out = builder.podman.run_image(goodput_image.key_tag, "-c", probe, entrypoint="python3")
    assert out.strip() == "[]"


def test_the_engine_image_holds_the_pinned_vllm_and_runs_as_a_non_root_user(
    builder: ImageBuilder,
) -> None:
    """Shares the cache with the real node, which needs this image anyway (cold: ~10 minutes)."""
    (image,) = builder.ensure([ENGINE])
    builder.load(image)
    probe = "import os, torch, vllm; print(os.getuid(), vllm.__version__)"
    out = builder.podman.run_image(image.key_tag, "-c", probe, entrypoint="python3")
    uid, version = out.split()[-2:]
    assert int(uid) != 0
    assert version == VLLM_VERSION


def test_the_archive_imports_into_containerd_under_its_reference(
    goodput_image: BuiltImage, tmp_path: Path
) -> None:
    """A throwaway containerd of our own (root, state and socket in tmp_path), as a node's."""
    host_packages.ensure({"containerd": "containerd", **IMPORT_TOOLS}, "the containerd test")
    socket = tmp_path / "containerd.sock"
    config = tmp_path / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{tmp_path / "root"}"\n'
        f'state = "{tmp_path / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n'
    )
    log = (tmp_path / "containerd.log").open("w")
    daemon = subprocess.Popen(
        ["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert daemon.poll() is None, (tmp_path / "containerd.log").read_text()
            assert time.monotonic() < deadline, "containerd did not open its socket"
            time.sleep(0.2)
        import_into_containerd(goodput_image.archive, socket)
        ctr = ["ctr", "--address", str(socket), "--namespace", "k8s.io"]
        listed = subprocess.run(
            [*ctr, "images", "ls", "-q"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert goodput_image.reference in listed
        snapshots = subprocess.run(
            [*ctr, "snapshots", "ls"], capture_output=True, text=True, check=True
        ).stdout
        assert "Committed" in snapshots  # unpacked: a kubelet can start it without a pull
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()
