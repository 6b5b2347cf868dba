"""A Julia package registry built from local package source trees, in Pkg's own format.

Each source tree (a folder with a ``Project.toml`` naming the package, its UUID and version)
becomes a git repository with one commit; the registry lists each package at that one
version, with the dependencies and compat bounds of its ``Project.toml``:

- ``Registry.toml``: ``[packages]`` ``uuid = {name, path}``;
- ``<Letter>/<Name>/Package.toml``: ``name``, ``uuid``, ``repo`` (the repository's path);
- ``Versions.toml``: ``["<version>"] git-tree-sha1`` (the commit's tree, which Pkg checks out);
- ``Deps.toml`` / ``WeakDeps.toml``: ``["<range>"] Name = uuid``, standard libraries included
  (they are dependencies; only their code is not in the registry). A weak dependency that is
  not a package given here is left out (Pkg refuses a name it cannot find in a registry, and
  a package that cannot be installed constrains nothing);
- ``Compat.toml`` / ``WeakCompat.toml``: ``["<range>"] Name = <range or ranges>``.

Compat specifiers of a ``Project.toml`` (``"0.16"``, ``"^1.2"``, ``"~0.3"``, ``"=1.0.1"``,
``">= 1.6"``, ``"< 0.0.1, 1"``, ``"1 - 1.11"``) are turned into the version ranges a registry
holds (``"0.16.0-0.16"``, ...) following ``Pkg.Versions.semver_spec``. The git repositories
are written under the given folder; the sources themselves are only read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import tomllib

#: The identity every commit here is made with.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "registry",
    "GIT_AUTHOR_EMAIL": "registry@localhost",
    "GIT_COMMITTER_NAME": "registry",
    "GIT_COMMITTER_EMAIL": "registry@localhost",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}

_VERSION = r"v?([0-9]+)(?:\.([0-9]+))?(?:\.([0-9]+))?"
_SEMVER = re.compile(rf"^([~^]?){_VERSION}$")
_INEQUALITY = re.compile(rf"^(>=|≥|=|<)\s*{_VERSION}$")
_HYPHEN = re.compile(rf"^{_VERSION}\s+-\s+{_VERSION}$")


def _bound(parts) -> str:
    """A registry version bound from its given components (``(1, 2)`` -> ``"1.2"``)."""
    return ".".join(str(p) for p in parts)


def _range(lower: tuple[int, ...], upper: tuple[int, ...] | None) -> str:
    """A registry range: lower and upper bounds, each as many components as given; None: unbounded."""
    if upper is None:
        return f"{_bound(lower)}-*"
    return _bound(lower) if lower == upper else f"{_bound(lower)}-{_bound(upper)}"


def _semver_range(clause: str) -> str:
    """One clause of a compat specifier as a registry range (``Pkg.Versions.semver_spec``)."""
    clause = clause.strip()
    if m := _SEMVER.match(clause):
        kind, parts = m.group(1), [int(p) for p in m.groups()[1:] if p is not None]
        major, minor, patch = (*parts, 0, 0)[:3]
        lower = (major, minor, patch)
        if kind == "~":
            return _range(lower, (major, minor) if len(parts) >= 2 else (major,))
        if major != 0:
            return _range(lower, (major,))
        if minor != 0:
            return _range(lower, (0, minor))
        return _range(lower, ((0,), (0, 0), (0, 0, patch))[len(parts) - 1])
    if m := _INEQUALITY.match(clause):
        kind, parts = m.group(1), [int(p) for p in m.groups()[1:] if p is not None]
        v = (*parts, 0, 0)[:3]
        if kind == "=":
            return _range(v, v)
        if kind == "<":
            below = (v[0] - 1,) if v[1:] == (0, 0) else (v[0], v[1] - 1) if v[2] == 0 else (v[0], v[1], v[2] - 1)
            return _range((0, 0, 0), below)
        return _range(v, None)
    if m := _HYPHEN.match(clause):
        lower = tuple(int(p) for p in m.groups()[:3] if p is not None)
        upper = tuple(int(p) for p in m.groups()[3:] if p is not None)
        return _range(lower, upper)
    raise ValueError(f"invalid compat specifier clause {clause!r}")


def registry_compat(spec: str) -> str | list[str]:
    """A ``Project.toml`` compat specifier as the range (or ranges) of a registry's ``Compat.toml``."""
    ranges = [_semver_range(clause) for clause in spec.split(",")]
    return ranges[0] if len(ranges) == 1 else ranges


def _version(text: str) -> tuple[str, str]:
    """``(full version, its range key)``: ``"0.3"`` -> ``("0.3.0", "0.3.0")``, ``"3.0.16+0"`` -> ``("3.0.16+0", "3.0.16")``."""
    m = re.fullmatch(r"([0-9]+)(?:\.([0-9]+))?(?:\.([0-9]+))?([-+].*)?", text.strip())
    if m is None:
        raise ValueError(f"invalid package version {text!r}")
    core = ".".join(p or "0" for p in m.groups()[:3])
    return core + (m.group(4) or ""), core


def _toml_value(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's


def _write_toml_sections(path: Path, sections: dict[str, dict]) -> None:
    lines = []
    for name, table in sections.items():
        if table:
            lines.append(f"[{json.dumps(name)}]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in sorted(table.items())]
            lines.append("")
    if lines:
        path.write_text("\n".join(lines), encoding="utf-8")


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **_GIT_ENV}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def _commit_all(folder: Path, message: str) -> str:
    """``git init`` + commit every file of ``folder``; returns the commit's tree hash."""
    _git(folder, "init", "--quiet", "--initial-branch=main")
    _git(folder, "add", "--all", "--force")
    _git(folder, "commit", "--quiet", "--no-gpg-sign", "-m", message)
    return _git(folder, "rev-parse", "HEAD^{tree}")


def find_packages(source_dirs) -> dict[str, Path]:
    """Package name -> source tree, from folders of source trees (the first of a name wins)."""
    found: dict[str, Path] = {}
    for folder in source_dirs:
        for tree in sorted(Path(folder).iterdir()):
            project = tree / "Project.toml"
            if project.is_file():
                meta = tomllib.loads(project.read_text(encoding="utf-8"))
                if {"name", "uuid", "version"} <= meta.keys():
                    found.setdefault(meta["name"], tree)
    return found


def build_registry(source_dirs, where: Path, name: str = "LocalRegistry") -> Path:
    """Write git repositories of every package in ``source_dirs`` and a registry of them under
    ``where``; returns the registry's folder (itself a git repository, as Pkg clones it)."""
    packages_dir, registry = where / "packages", where / "registry"
    packages_dir.mkdir(parents=True)
    registry.mkdir()
    listed = {}
    found = find_packages(source_dirs)
    given = {tomllib.loads((tree / "Project.toml").read_text(encoding="utf-8"))["uuid"] for tree in found.values()}
    for pkg_name, source in sorted(found.items()):
        repo = packages_dir / pkg_name
        shutil.copytree(source, repo, symlinks=True, ignore=shutil.ignore_patterns(".git"))
        project = tomllib.loads((repo / "Project.toml").read_text(encoding="utf-8"))
        version, key = _version(project["version"])
        tree = _commit_all(repo, f"{pkg_name} v{version}")
        deps = project.get("deps", {})
        weak = {d: u for d, u in project.get("weakdeps", {}).items() if u in given}
        compat = project.get("compat", {})
        path = f"{pkg_name[0].upper()}/{pkg_name}"
        entry = registry / path
        entry.mkdir(parents=True)
        (entry / "Package.toml").write_text(
            f"name = {json.dumps(pkg_name)}\nuuid = {json.dumps(project['uuid'])}\nrepo = {json.dumps(str(repo))}\n",
            encoding="utf-8",
        )
        _write_toml_sections(entry / "Versions.toml", {version: {"git-tree-sha1": tree}})
        _write_toml_sections(entry / "Deps.toml", {key: deps})
        _write_toml_sections(entry / "WeakDeps.toml", {key: weak})
        _write_toml_sections(
            entry / "Compat.toml",
            {key: {d: registry_compat(s) for d, s in compat.items() if d in deps or d == "julia"}},
        )
        _write_toml_sections(
            entry / "WeakCompat.toml", {key: {d: registry_compat(s) for d, s in compat.items() if d in weak}}
        )
        listed[project["uuid"]] = (pkg_name, path)
    lines = [
        f"name = {json.dumps(name)}",
        f"uuid = {json.dumps(str(uuid.uuid5(uuid.NAMESPACE_URL, str(registry))))}",
        f"repo = {json.dumps(str(registry))}",
        "",
        "[packages]",
    ]
    lines += [f'{u} = {{ name = {json.dumps(n)}, path = {json.dumps(p)} }}' for u, (n, p) in sorted(listed.items())]
    (registry / "Registry.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _commit_all(registry, f"{len(listed)} packages")
    return registry
