"""Every Lua script as a file: its header states what it takes and returns, Redis compiles it as
``producers/contract/scripts.py`` builds it, luacheck passes, and every error code it can answer
maps to an exception of the tree."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from producers.contract.scripts import codes, source

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*ROOT.glob("producers/lua/*.lua"), *ROOT.glob("worker/lua/*.lua")])
LIBRARIES = sorted(ROOT.glob("worker/lua/lib/*.lua"))
_FAIL = re.compile(r"iq\.fail\('([A-Z_]+)'")


def header(path: Path) -> list[str]:
    """The comment lines the file opens with."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    return lines


def package_of(path: Path) -> str:
    return path.parent.parent.name


def test_the_scripts_are_found() -> None:
    names = {p.stem for p in SCRIPTS}
    assert {"enqueue", "wake", "import_take", "import_withdraw", "import_claim", "import_advance", "drain_begin",
            "claim", "settle", "dispatch_mark", "dlq_replay", "rate_limit"} <= names  # fmt: skip
    assert len(SCRIPTS) == 27 and [p.name for p in LIBRARIES] == ["waiting.lua"]


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_each_script_opens_with_a_header_of_its_keys_argv_and_reply(path: Path) -> None:
    lines = header(path)
    assert lines, f"{path} opens with no header"
    assert lines[0].startswith(f"-- {path.stem}: "), f"{path}: the header must start with '-- {path.stem}: '"
    fields = {m.group(1) for line in lines if (m := re.match(r"^-- (KEYS|ARGV|Reply)\s\s?\S", line))}
    body = path.read_text()[len("\n".join(lines)) :]
    # ARGV is stated whenever the script reads any (unblock and probe_now take none)
    wanted = {"KEYS", "Reply"} | ({"ARGV"} if "ARGV" in body else set())
    assert wanted <= fields, f"{path}: the header lacks {sorted(wanted - fields)}"
    # every error the script can answer is named in its header and is an exception of the tree
    for code in _FAIL.findall(body):
        assert code in "\n".join(lines), f"{path}: answers {code} without saying so in its header"
        assert code in codes(), f"{path}: {code} maps to no exception of the error tree"


@pytest.mark.parametrize("path", LIBRARIES, ids=lambda p: p.stem)
def test_each_library_opens_with_a_header_naming_it(path: Path) -> None:
    assert header(path)[0].startswith(f"-- lib/{path.stem}: ")
    users = [p for p in SCRIPTS if f"--! uses: {path.stem}" in p.read_text()]
    assert users, f"no script uses {path}"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_redis_compiles_each_script_as_it_is_loaded(path: Path, redis_client: redis.Redis) -> None:
    text = source(package_of(path), path.stem)
    assert text.endswith(path.read_text())
    for lib in re.findall(r"^--! uses: (\w+)", path.read_text(), re.M):
        assert (path.parent / "lib" / f"{lib}.lua").read_text() in text
    assert redis_client.script_load(text)


def test_luacheck_passes_on_every_script_as_redis_receives_it() -> None:
    if shutil.which("luacheck") is None:
        pytest.skip("luacheck is not installed (scripts/bootstrap installs Debian's lua-check)")
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("scripts/luacheck needs the project's .venv (scripts/bootstrap makes it)")
    done = subprocess.run([str(ROOT / "scripts" / "luacheck")], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
