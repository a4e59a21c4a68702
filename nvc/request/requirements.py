"""The ``--require`` expression language: what a CUDA image says it needs from the host driver and GPUs.

An expression is space-separated *terms* that are OR'ed; a term is comma-separated *conditions* that are AND'ed; a
condition is ``name op value`` with ``op`` one of ``= != < <= > >=`` and ``name`` (any case) one of ``cuda`` (the
driver's CUDA version), ``driver`` (the NVRM version), ``arch`` (a GPU's compute capability) or ``brand`` (a GPU's
brand, ``=``/``!=`` only, case-insensitive). CUDA images carry these in ``NVIDIA_REQUIRE_CUDA``, e.g.
``cuda>=12.4 brand=tesla,driver>=470,driver<471``: "a new enough driver, or this older Tesla branch".

The evaluation mirrors libnvidia-container's ``dsl.c`` closely, quirks included, because images are written against
it: conditions are only checked for syntax when the evaluation reaches them (``cuda>=1 junk`` passes when the first
term holds), a term made only of commas ends the OR chain with the previous result, and the unsatisfied message
names the *first* term of the expression as written, whichever term failed last. The split into a parse step and a
check step lets the CLI count expressions at argv time (``input error: too many requirements``) and evaluate them
after NVML answered, where NVIDIA does.
"""

from __future__ import annotations

from nvc.errors import NvcError
from nvc.record import record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Sequence

    from nvc.driver_info import DriverInfo, GpuInfo

MAX_REQUIREMENTS = 32  # libnvidia-container's ``char *reqs[32]``

OPERATORS = ("=", "!=", "<", "<=", ">", ">=")
RULE_NAMES = ("cuda", "driver", "arch", "brand")
DEVICE_RULES = frozenset({"arch", "brand"})

_OPERATOR_CHARS = "<>=!"
_VERSION_CHARS = frozenset("0123456789.")
_UINTMAX = 2**64 - 1
_CUDA_HINT_PREFIX = "cuda>="
_CUDA_HINT = "please update your driver to a newer version, or use an earlier cuda container"


class _InvalidExpression(Exception):
    """A condition NVIDIA's evaluator answers with -1 (``invalid expression``)."""


@record(frozen=True)
class Condition:
    """One ``name op value`` as written. ``valid`` is False when it does not parse or names no rule: NVIDIA only
    notices that when the evaluation reaches it, so the condition is kept and fails then."""

    text: str
    name: str = ""
    op: str = ""
    value: str = ""
    valid: bool = False

    @property
    def is_device_rule(self) -> bool:
        """Device rules (arch, brand) hold trivially when no GPU is selected."""
        return self.name in DEVICE_RULES


@record(frozen=True)
class Requirement:
    """One ``--require`` expression: ``terms`` are OR'ed, the conditions inside a term AND'ed.

    A term with no condition (the text was only commas) is kept, empty, because it ends NVIDIA's OR loop."""

    text: str
    terms: tuple[tuple[Condition, ...], ...]


@record(frozen=True)
class Requirements:
    """All ``--require`` expressions of one configure call, in command-line order."""

    expressions: tuple[Requirement, ...] = ()

    def __len__(self) -> int:
        return len(self.expressions)

    def __bool__(self) -> bool:
        return bool(self.expressions)

    @property
    def texts(self) -> tuple[str, ...]:
        """The expressions as written (what the hook passes on as ``--require=`` values)."""
        return tuple(expression.text for expression in self.expressions)


def parse_condition(text: str) -> Condition:
    """Split ``name op value`` the way ``evaluate_rule`` does: the name runs up to the first operator character,
    the operator is the whole run of operator characters and must be exactly one of :data:`OPERATORS`, the value is
    everything after it and must not be empty."""
    n = 0
    while n < len(text) and text[n] not in _OPERATOR_CHARS:
        n += 1
    if n == 0 or n == len(text):
        return Condition(text)
    end = n
    while end < len(text) and text[end] in _OPERATOR_CHARS:
        end += 1
    name, op, value = text[:n], text[n:end], text[end:]
    if op not in OPERATORS or not value or name.lower() not in RULE_NAMES:
        return Condition(text)
    return Condition(text, name.lower(), op, value, True)


def parse_requirement(text: str) -> Requirement:
    """One expression: terms split on single spaces (empty ones skipped), conditions on commas (empty skipped)."""
    terms = tuple(
        tuple(parse_condition(part) for part in token.split(",") if part)
        for token in text.split(" ")
        if token
    )
    return Requirement(text, terms)


def parse_requirements(exprs: Sequence[str]) -> Requirements:
    """Parse every ``--require`` value; more than :data:`MAX_REQUIREMENTS` is refused like NVIDIA's argv parser."""
    if isinstance(exprs, str):  # a lone string would silently become one requirement per character
        exprs = (exprs,)
    if len(exprs) > MAX_REQUIREMENTS:
        raise NvcError("input", "too many requirements")
    return Requirements(tuple(parse_requirement(text) for text in exprs))


def compare_versions(left: str, op: str, right: str) -> bool:
    """NVIDIA's ``dsl_compare_version``: dot-separated decimal components compared numerically, trailing zero
    components ignored (``12.0 == 12``, ``12.0.1 > 12``). Anything but digits and dots is an invalid expression."""
    if not set(left) <= _VERSION_CHARS or not set(right) <= _VERSION_CHARS:
        raise _InvalidExpression
    i = j = 0
    while i < len(left) and j < len(right):
        n1, i = _component(left, i)
        n2, j = _component(right, j)
        if n1 != n2:
            if op == "=":
                return False
            if op == "!=":
                return True
            return n1 < n2 if op in ("<", "<=") else n1 > n2
        while i < len(left) and left[i] == ".":
            i += 1
        while j < len(right) and right[j] == ".":
            j += 1
    rest_left = left[i:].lstrip(".0")
    rest_right = right[j:].lstrip(".0")
    if op == "!=":
        return bool(rest_left or rest_right)
    if op in ("=", "<=", ">=") and not rest_left and not rest_right:
        return True
    if op == "=":
        return False
    if op in ("<", "<="):
        return not rest_left and bool(rest_right)
    return bool(rest_left) and not rest_right


def _component(text: str, start: int) -> tuple[int, int]:
    """``strtoumax`` on a run of digits; no digit (a leading dot) or overflow is invalid, as in C."""
    end = start
    while end < len(text) and text[end].isdigit():
        end += 1
    if end == start:
        raise _InvalidExpression
    value = int(text[start:end])
    if value >= _UINTMAX:
        raise _InvalidExpression
    return value, end


def compare_strings(left: str, op: str, right: str) -> bool:
    """``brand`` comparison: case-insensitive equality; ordering operators are invalid."""
    if op == "=":
        return left.lower() == right.lower()
    if op == "!=":
        return left.lower() != right.lower()
    raise _InvalidExpression


def evaluate_condition(condition: Condition, driver: DriverInfo, gpu: GpuInfo | None) -> bool:
    """One condition against the driver and (for device rules) one GPU; unknown values hold, as in NVIDIA."""
    if not condition.valid:
        raise _InvalidExpression
    name, op, value = condition.name, condition.op, condition.value
    if name == "cuda":
        return True if not driver.cuda_version else compare_versions(driver.cuda_version, op, value)
    if name == "driver":
        return True if not driver.driver_version else compare_versions(driver.driver_version, op, value)
    if gpu is None:  # "No device is visible, assume the arch/brand is ok."
        return True
    if name == "arch":
        return compare_versions(gpu.arch, op, value)
    return True if not gpu.brand else compare_strings(gpu.brand, op, value)


def evaluate_requirement(requirement: Requirement, driver: DriverInfo, gpu: GpuInfo | None) -> None:
    """``dsl_evaluate``: raise ``requirement error`` unless some term holds."""
    satisfied = True
    try:
        for term in requirement.terms:
            term_failed = False
            for condition in term:
                satisfied = evaluate_condition(condition, driver, gpu)
                if not satisfied:
                    term_failed = True
                    break
            if not term_failed:  # every condition held, or the term had none: NVIDIA stops here
                break
    except _InvalidExpression:
        raise NvcError("requirement", "invalid expression") from None
    if not satisfied:
        first_term = requirement.text.split(" ")[0]
        if first_term.startswith(_CUDA_HINT_PREFIX):
            raise NvcError("requirement", f"unsatisfied condition: {first_term}, {_CUDA_HINT}")
        raise NvcError("requirement", f"unsatisfied condition: {first_term}")


def check_requirements(reqs: Requirements, driver: DriverInfo, gpus: Sequence[GpuInfo]) -> None:
    """Every requirement must hold for every selected GPU (index order), or once without a GPU when none is
    selected; the first failure raises ``NvcError("requirement", ...)`` with NVIDIA's text."""
    for gpu in gpus or (None,):
        for requirement in reqs.expressions:
            evaluate_requirement(requirement, driver, gpu)
