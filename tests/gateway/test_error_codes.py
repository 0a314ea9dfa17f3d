"""One registry of error codes (gateway/error_codes.py): every code the gateway can answer is
in it, every raise names it, and SPEC.md's tables say exactly what it says. The same for the
session and turn statuses (gateway/db/models.py)."""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import pytest

from gateway.db.models import SessionStatus, TurnStatus
from gateway.error_codes import ErrorCode
from gateway.errors import GatewayError

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "gateway"
SPEC = ROOT / "SPEC.md"
REGISTRY = GATEWAY / "error_codes.py"


@dataclass(frozen=True)
class CodeSite:
    """An expression that decides an error code: a ``code=`` keyword, a ``code`` attribute or
    variable, or the value of a ``"code"`` key in a dict literal."""

    where: str
    node: ast.expr

    def literals(self) -> list[str]:
        return [
            node.value
            for node in ast.walk(self.node)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        ]

    def members(self) -> list[str]:
        return [
            node.attr
            for node in ast.walk(self.node)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "ErrorCode"
        ]


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(GATEWAY.rglob("*.py")):
        if path == REGISTRY or "migrations" in path.parts:
            continue
        yield str(path.relative_to(ROOT)), ast.parse(path.read_text(), str(path))


def _is_code(target: ast.expr, variables: bool) -> bool:
    if isinstance(target, ast.Attribute):
        return target.attr == "code"
    return variables and isinstance(target, ast.Name) and target.id == "code"


def _imports_registry(module: ast.Module) -> bool:
    return any(
        isinstance(node, ast.ImportFrom) and node.module == "gateway.error_codes"
        for node in ast.walk(module)
    )


def code_sites() -> list[CodeSite]:
    """Every ``code=`` keyword, ``"code":`` dict entry and assignment to a ``code`` attribute
    (class or instance); a plain variable named ``code`` only in modules that import the
    registry (elsewhere it is a process's exit code)."""
    sites = []
    for name, module in _modules():
        variables = _imports_registry(module)
        for node in ast.walk(module):
            where = f"{name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call):
                sites += [CodeSite(where, kw.value) for kw in node.keywords if kw.arg == "code"]
            elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(_is_code(target, variables) for target in targets):
                    sites.append(CodeSite(where, node.value))
            elif isinstance(node, ast.Dict):
                sites += [
                    CodeSite(where, value)
                    for key, value in zip(node.keys, node.values, strict=True)
                    if isinstance(key, ast.Constant) and key.value == "code"
                ]
    return sites


def test_the_ast_walk_sees_the_code_sites() -> None:
    """The walk below is only as good as what it finds: it must see the known kinds of site."""
    wheres = {site.where.split(":")[0] for site in code_sites()}
    assert {"gateway/errors.py", "gateway/security.py", "gateway/api/stream.py"} <= wheres
    assert len(code_sites()) > 50


def test_no_error_code_is_a_free_string() -> None:
    """Every code is written ``ErrorCode.X``; strings at a code site are refused (integers are
    WebSocket close codes, not error codes)."""
    free = [f"{site.where}: {site.literals()}" for site in code_sites() if site.literals()]
    assert free == [], "use gateway.error_codes.ErrorCode instead of string codes"


def test_every_code_the_gateway_names_is_registered_and_every_registered_one_is_used() -> None:
    named = {member for site in code_sites() for member in site.members()}
    assert named - set(ErrorCode.__members__) == set()
    unused = set(ErrorCode.__members__) - named
    assert unused == set(), f"registered codes nothing in gateway/ can answer: {sorted(unused)}"


def _gateway_error_classes() -> list[type[GatewayError]]:
    for path in sorted(GATEWAY.rglob("*.py")):
        if "migrations" not in path.parts and path.name != "__main__.py":
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            importlib.import_module(module.removesuffix(".__init__"))
    found: list[type[GatewayError]] = []
    pending: list[type[GatewayError]] = [GatewayError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending += cls.__subclasses__()
    return found


def test_each_error_class_code_has_the_status_of_its_category() -> None:
    wrong = [
        f"{cls.__qualname__}: {cls.code} is {cls.code.status}, not {cls.family}"
        for cls in _gateway_error_classes()
        if "code" in vars(cls) and cls.family is not None and cls.code.status != cls.family
    ]
    assert wrong == []


def test_each_raise_gives_a_code_of_its_categorys_status() -> None:
    """``Conflict(..., code=ErrorCode.X)``: X must be a 409 code; a category without a code of
    its own (``Forbidden``, ``LimitExceeded``, ...) must be given one."""
    classes = {cls.__name__: cls for cls in _gateway_error_classes()}
    wrong = []
    checked = 0
    for name, module in _modules():
        for node in ast.walk(module):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            cls = classes.get(node.func.id)
            if cls is None or cls.family is None:
                continue
            checked += 1
            given = [kw.value for kw in node.keywords if kw.arg == "code"]
            members = [m for value in given for m in CodeSite("", value).members()]
            codes = [ErrorCode[m] for m in members] or ([] if given else [cls.code])
            for code in codes:
                if code.status != cls.family:
                    wrong.append(f"{name}:{node.lineno}: {cls.__name__} with {code}")
    assert checked > 20
    assert wrong == []


def test_a_category_refuses_a_code_of_another_status() -> None:
    from gateway.errors import Conflict

    with pytest.raises(TypeError, match="409"):
        Conflict("x", code=ErrorCode.WAIT_TIMEOUT)
    with pytest.raises(TypeError):
        Conflict("x")  # Conflict has no code of its own
    assert Conflict("x", code=ErrorCode.SESSION_BUSY).status == 409


# -- SPEC.md ---------------------------------------------------------------------------------


def spec_table(heading: str) -> list[list[str]]:
    """The rows of the first table under ``heading`` (cells stripped, header row dropped)."""
    text = SPEC.read_text()
    match = re.search(rf"^#+ {re.escape(heading)}\s*$", text, re.MULTILINE)
    assert match, f"SPEC.md has no section {heading!r}"
    rows = []
    for line in text[match.end() :].splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    assert len(rows) > 2, f"no table under {heading!r}"
    return [row for row in rows[2:]]


def _unquote(cell: str) -> str:
    return cell.removeprefix("`").removesuffix("`")


def error_code_table() -> str:
    """SPEC.md's table, as the registry says it."""
    lines = ["| Code | Status | Meaning |", "|---|---|---|"]
    lines += [f"| `{code}` | {code.status} | {code.meaning} |" for code in ErrorCode]
    return "\n".join(lines)


def test_spec_error_code_table_is_the_registry() -> None:
    rows = spec_table("Error codes")
    documented = [(_unquote(code), int(status), meaning) for code, status, meaning in rows]
    registry = [(str(code), code.status, code.meaning) for code in ErrorCode]
    assert documented == registry, (
        "SPEC.md's 'Error codes' table differs from gateway/error_codes.py; as the registry "
        f"says it:\n{error_code_table()}"
    )


_STATUS_AND_CODES = re.compile(r"\b([1-5]\d\d) ((?:`[a-z_]+`(?:, | or )?)+)")


def test_every_status_and_code_named_in_spec_agree_with_the_registry() -> None:
    """Anywhere SPEC.md says ``409 `session_busy`, `session_not_running```, each code is a
    registered one of that status."""
    text = SPEC.read_text()
    named = [
        (int(status), code)
        for status, codes in _STATUS_AND_CODES.findall(text)
        for code in re.findall(r"`([a-z_]+)`", codes)
    ]
    assert len(named) > 30, "the pattern no longer finds SPEC's codes"
    wrong = [
        f"{status} `{code}`"
        for status, code in named
        if code not in ErrorCode._value2member_map_ or ErrorCode(code).status != status
    ]
    assert wrong == [], "SPEC.md names codes the registry does not have with that status"


@pytest.mark.parametrize(
    ("heading", "enum"), [("Session statuses", SessionStatus), ("Turn statuses", TurnStatus)]
)
def test_spec_status_tables_are_the_enums(heading: str, enum: type[StrEnum]) -> None:
    documented = [_unquote(row[0]) for row in spec_table(heading)]
    assert documented == [str(member) for member in enum]
