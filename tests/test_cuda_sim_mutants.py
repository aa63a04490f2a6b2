"""Mutation check of the cuda_sim coverage (issue 15): the suite must notice when a CUDA file's
launchers do nothing.

For each csrc/cuda/*.cu with extern "C" launchers (gankern_*_cuda), in a scratch copy of the
tree: the unmutated harness build must pass the file's op tests (tests/test_<stem>*.py, cuda_sim
only), then each launcher's body alone, and then all of the file's launcher bodies at once, are
replaced by `return 0;`, the harness rebuilt there (ninja recompiles only that file), and the
same tests must fail every time. Opt-in (GANKERN_SLOW=1): one harness build, then two rebuilds
and one test run per mutant, several minutes on 2 cores.
"""

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = re.compile(r'extern "C" int (gankern_\w+_cuda)\s*\(')

slow = pytest.mark.skipif(os.environ.get("GANKERN_SLOW") != "1",
                          reason="mutation check of the cuda_sim coverage: GANKERN_SLOW=1")


def launcher_spans(source: str) -> list[tuple[str, int, int]]:
    """(name, start, end) of each launcher's body between its braces (exclusive)."""
    spans = []
    for m in LAUNCHER.finditer(source):
        depth, i = 0, source.index(")", m.end())
        i = source.index("{", i)
        start = i + 1
        while True:
            c = source[i]
            depth += c == "{"
            depth -= c == "}"
            if depth == 0:
                break
            i += 1
        spans.append((m.group(1), start, i))
    return spans


def mutate(source: str, only: str | None = None) -> str:
    """Every launcher's body (or only the one named) replaced by `return 0;`."""
    for name, start, end in reversed(launcher_spans(source)):
        if only in (None, name):
            source = source[:start] + " return 0; " + source[end:]
    return source


def test_mutate_blanks_every_launcher_body():
    src = 'extern "C" int gankern_x_cuda(int a) {\n  if (a) { return f(a); }\n  return 1;\n}\n' \
          'extern "C" const char* other() { return "k"; }\n'
    out = mutate(src)
    assert out.startswith('extern "C" int gankern_x_cuda(int a) { return 0; }')
    assert 'other() { return "k"; }' in out  # not a launcher: left alone
    two = src + 'extern "C" int gankern_y_cuda() { return g(); }\n'
    assert mutate(two, only="gankern_y_cuda").count("return 0;") == 1
    assert "return f(a);" in mutate(two, only="gankern_y_cuda")


def _op_files():
    found = []
    for path in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))):
        names = [n for n, _, _ in launcher_spans(open(path).read())]
        if names:
            found.append((os.path.basename(path), names))
    return found


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A copy of the tree (sources, tests, the built gankern._C) with the harness built in it."""
    work = tmp_path_factory.mktemp("mutants")
    for name in ("csrc", "scripts", "tests", "gankern"):
        shutil.copytree(os.path.join(ROOT, name), work / name,
                        ignore=shutil.ignore_patterns("__pycache__", "_C*.so.tmp"))
    for stale in glob.glob(str(work / "gankern" / "_cuda_sim" / "_C*")):
        os.remove(stale)
    for name in ("pyproject.toml", "setup.py"):
        shutil.copy(os.path.join(ROOT, name), work / name)
    _build(work)
    return work


def _build(work):
    subprocess.run([sys.executable, "scripts/build_cuda_sim.py", "--build-dir", str(work / "build" / "sim")],
                   cwd=work, check=True, capture_output=True)


def _run_op_tests(work, stem: str):
    files = sorted(glob.glob(str(work / "tests" / f"test_{stem}*.py")))
    assert files, stem
    env = {**os.environ, "PYTHONPATH": str(work)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           "-k", "cuda_sim", *files], cwd=work, env=env, capture_output=True, text=True)


@slow
@pytest.mark.parametrize("cu,launchers", _op_files(), ids=[f for f, _ in _op_files()])
def test_suite_fails_when_a_files_launchers_do_nothing(scratch, cu, launchers):
    stem = cu[:-3]
    control = _run_op_tests(scratch, stem)
    assert control.returncode == 0, f"unmutated {cu} fails its own tests:\n{control.stdout[-3000:]}"
    assert " passed" in control.stdout
    path = scratch / "csrc" / "cuda" / cu
    original = path.read_text()
    survivors = []
    try:
        # Each launcher alone, then all of them (the same mutant when there is one launcher).
        for only in [*launchers, None] if len(launchers) > 1 else launchers:
            path.write_text(mutate(original, only))
            _build(scratch)
            mutant = _run_op_tests(scratch, stem)
            print(f"{cu} {only or 'all launchers'} -> return 0: pytest exit {mutant.returncode}, "
                  f"{mutant.stdout.strip().splitlines()[-1]}")
            if not (mutant.returncode == 1 and " failed" in mutant.stdout):
                survivors.append(only or "all launchers")
    finally:
        path.write_text(original)
        _build(scratch)
    assert not survivors, f"{cu}: the suite still passes with these returning 0: {survivors}"
