"""The image cache key: it moves with everything that shapes an image, and with nothing else."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from goodput.api import images as names
from goodput.dev import engine
from goodput.dev.images import ENGINE, GOODPUT, RECIPES, ImageRecipe, content_key, stage_context
from goodput.dev.paths import repo_root

RECIPE = ImageRecipe(
    name="demo",
    reference="example.org/demo:1",
    containerfile="images/demo/Containerfile",
    sources=("pyproject.toml", "pkg"),
    build_args=(("VERSION", "1"),),
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small checkout: a Containerfile, a package with a symlinked folder, and bystanders."""
    (tmp_path / "images/demo").mkdir(parents=True)
    (tmp_path / "images/demo/Containerfile").write_text("FROM base\nCOPY pkg /src/pkg\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    (tmp_path / "pkg/sub").mkdir(parents=True)
    (tmp_path / "pkg/__init__.py").write_text("")
    (tmp_path / "pkg/sub/mod.py").write_text("X = 1\n")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared/data.json").write_text("{}")
    (tmp_path / "pkg/linked").symlink_to("../shared")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/notes.md").write_text("notes")
    (tmp_path / ".containerignore").write_text(
        "# comment\n**/__pycache__\n**/*.pyc\nbench/results\n"
    )
    return tmp_path


def key(tree: Path, recipe: ImageRecipe = RECIPE, base: str = "base:1") -> str:
    return content_key(recipe, base, tree)


def test_the_key_is_stable_for_an_unchanged_tree(tree: Path) -> None:
    assert key(tree) == key(tree)
    assert re.fullmatch(r"[0-9a-f]{16}", key(tree))


def test_the_key_ignores_what_the_image_does_not_copy(tree: Path) -> None:
    before = key(tree)
    (tree / "docs/notes.md").write_text("other notes")
    (tree / "pkg/__pycache__").mkdir()
    (tree / "pkg/__pycache__/mod.cpython-311.pyc").write_bytes(b"\0")
    (tree / "pkg/sub/stale.pyc").write_bytes(b"\0")
    os.utime(tree / "pkg/sub/mod.py", (0, 0))
    assert key(tree) == before


@pytest.mark.parametrize(
    "change",
    [
        lambda t: (t / "images/demo/Containerfile").write_text("FROM base\nRUN true\n"),
        lambda t: (t / "pkg/sub/mod.py").write_text("X = 2\n"),
        lambda t: (t / "pkg/sub/new.py").write_text(""),
        lambda t: (t / "pkg/sub/mod.py").unlink(),
        lambda t: (t / "pyproject.toml").write_text("[project]\nname = 'demo2'\n"),
        lambda t: (t / "pkg/sub/mod.py").chmod(0o755),
        lambda t: (t / ".containerignore").write_text("**/*.pyc\n"),
    ],
    ids=[
        "containerfile",
        "source edited",
        "source added",
        "source removed",
        "pyproject",
        "mode",
        "ignore rules",
    ],
)
def test_the_key_changes_with_what_shapes_the_image(tree: Path, change: object) -> None:
    before = key(tree)
    change(tree)  # type: ignore[operator]
    assert key(tree) != before


def test_a_symlinked_folder_counts_as_its_target_path_not_its_content(tree: Path) -> None:
    before = key(tree)
    (tree / "shared/data.json").write_text('{"a": 1}')  # not a source: the link is copied as-is
    assert key(tree) == before
    (tree / "pkg/linked").unlink()
    (tree / "pkg/linked").symlink_to("../docs")
    assert key(tree) != before


def test_the_key_changes_with_build_arguments_and_base(tree: Path) -> None:
    other_args = ImageRecipe(**{**RECIPE.__dict__, "build_args": (("VERSION", "2"),)})
    assert key(tree, other_args) != key(tree)
    assert key(tree, base="base:2") != key(tree)


def test_a_missing_source_is_an_error(tree: Path) -> None:
    shutil.rmtree(tree / "pkg")
    with pytest.raises(RuntimeError, match="pkg"):
        key(tree)


def test_the_build_runs_on_a_copy_of_exactly_what_the_key_hashed(
    tree: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    (tree / "pkg/__pycache__").mkdir()
    (tree / "pkg/__pycache__/mod.cpython-311.pyc").write_bytes(b"\0")
    staged = stage_context(RECIPE, tree, tmp_path_factory.mktemp("context"))
    assert key(staged) == key(tree)
    assert (staged / "images/demo/Containerfile").is_file()
    assert (staged / "pkg/linked").is_symlink()
    assert not (staged / "docs").exists()
    assert not (staged / "pkg/__pycache__").exists()


def _copied_sources(containerfile: Path) -> set[str]:
    """Sources of the COPY instructions that read the build context (not ``--from`` a stage)."""
    sources = set()
    for line in containerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources.update(words[1:-1])
    return sources


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.name)
def test_every_copied_path_is_part_of_the_key(recipe: ImageRecipe) -> None:
    copied = _copied_sources(repo_root() / recipe.containerfile)
    assert copied
    uncovered = {
        path
        for path in copied
        if not any(path == s or path.startswith(s.rstrip("/") + "/") for s in recipe.sources)
    }
    assert not uncovered, f"{recipe.containerfile} copies {uncovered}, which the key ignores"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.name)
def test_the_containerfiles_run_as_a_numeric_non_root_user(recipe: ImageRecipe) -> None:
    text = (repo_root() / recipe.containerfile).read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users, "no USER instruction"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    for name, _ in recipe.build_args:
        assert re.search(rf"^ARG {name}$", text, re.MULTILINE), f"{name} has a default or no ARG"


def test_the_engine_pins_live_in_one_place() -> None:
    assert engine.VLLM_VERSION is names.VLLM_VERSION
    assert engine.TORCH_VERSION is names.TORCH_VERSION
    assert dict(ENGINE.build_args) == {
        "VLLM_VERSION": names.VLLM_VERSION,
        "TORCH_VERSION": names.TORCH_VERSION,
    }
    assert ENGINE.reference.endswith(f":{names.VLLM_VERSION}")
    assert GOODPUT.reference == names.GOODPUT_IMAGE
