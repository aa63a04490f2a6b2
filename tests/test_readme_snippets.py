"""The README's code runs: every ```python block is executed and every ```toml block is a
`gankern train --config` file that trains, so the README cannot drift from the API again.

Convention (also in CONTRIBUTING.md):
- Each python block runs on its own, in a fresh namespace, in an empty working directory, with
  one torch thread. It may use these names without defining them (the usual context of a
  snippet that shows one call): gk, torch, nn, G (latent 16 -> 2-D samples, nn.Sequential), D
  (2-D samples -> one score), z (8 latents), real, fake (8 samples each), loader (3 batches of
  real), d_loss (a scalar of D's), existing_model (an nn.Sequential with torch's spectral norm).
  Whatever a block defines itself wins.
- An HTML comment on the line right above a block adjusts it, visible only in the README source:
  `<!-- readme-test: replace "OLD" "NEW" -->` substitutes text before running (tiny settings;
  every OLD must occur, so a stale substitution fails), and `<!-- readme-test: illustrative -->`
  marks a block that is only compiled (syntax-checked), for pseudo-code. Illustrative blocks are
  counted below, never skipped silently.
"""

import os
import re
import shlex
from pathlib import Path

import pytest
import torch
from torch import nn

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(?P<notes>(?:<!-- readme-test:[^\n]*-->\n)*)```(?P<lang>\w+)\n(?P<code>.*?)```", re.S)
NOTE = re.compile(r"<!-- readme-test: (?P<what>\w+)(?P<args>[^\n]*?)-->")


def _blocks(lang):
    text = README.read_text()
    out = []
    for m in BLOCK.finditer(text):
        if m.group("lang") != lang:
            continue
        line = text[: m.start("code")].count("\n") + 1
        notes = [(n.group("what"), shlex.split(n.group("args"))) for n in NOTE.finditer(m.group("notes"))]
        out.append(pytest.param(m.group("code"), notes, id=f"README.md:{line}"))
    return out


def _prepare(code, notes):
    illustrative = False
    for what, args in notes:
        if what == "replace":
            assert len(args) == 2, f"replace takes two quoted strings, got {args}"
            assert args[0] in code, f"stale readme-test replace: {args[0]!r} is not in the block"
            code = code.replace(args[0], args[1])
        elif what == "illustrative":
            illustrative = True
        else:
            raise AssertionError(f"unknown readme-test note {what!r}")
    return code, illustrative


def _namespace():
    import gankern as gk

    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
    D = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    existing = nn.Sequential(torch.nn.utils.parametrizations.spectral_norm(nn.Linear(4, 4)), nn.ReLU())
    return {"gk": gk, "torch": torch, "nn": nn, "G": G, "D": D, "z": torch.randn(8, 16), "real": real,
            "fake": fake, "loader": [torch.randn(8, 2) for _ in range(3)], "d_loss": D(real).mean(),
            "existing_model": existing}


@pytest.fixture
def in_empty_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(threads)


@pytest.mark.parametrize("code, notes", _blocks("python"))
def test_python_block_runs(code, notes, in_empty_dir):
    code, illustrative = _prepare(code, notes)
    compiled = compile(code, str(README), "exec")
    if illustrative:
        return  # compiled above: pseudo-code must still be Python
    torch.set_num_threads(1)
    exec(compiled, _namespace())


@pytest.mark.parametrize("code, notes", _blocks("toml"))
def test_toml_block_is_a_train_config_that_trains(code, notes, in_empty_dir, capsys):
    from gankern.cli import main
    from gankern.train.cli import read_config

    code, _ = _prepare(code, notes)
    Path("run.toml").write_text(code)
    opts = read_config("run.toml")
    assert opts, "an empty config"
    assert main(["train", "--config", "run.toml", "--no-progress"]) == 0
    out = opts.get("out", os.path.join("runs", "train"))
    assert (in_empty_dir / out / "checkpoint.pt").exists()
    # The README's resume line: nothing left to do at the same --steps, said plainly.
    assert main(["train", "--config", "run.toml", "--resume", os.path.join(out, "checkpoint.pt")]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_the_readme_has_blocks_and_marks_few_as_illustrative():
    python = _blocks("python")
    illustrative = [p for p in python if any(what == "illustrative" for what, _ in p.values[1])]
    assert len(python) >= 5 and _blocks("toml")
    assert len(illustrative) <= 1, "most README code must run as written"


ROOT = README.parent
TEXT_SUFFIXES = {".py", ".md", ".sh", ".cpp", ".h", ".cu", ".toml", ".txt", ".cfg", ""}


def _tracked_text_files():
    import subprocess

    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (an sdist): the files to scan are git's")
    return [ROOT / n for n in names if Path(n).suffix in TEXT_SUFFIXES and (ROOT / n).is_file()]


def test_nothing_refers_to_files_outside_the_repository():
    outside = re.compile(r"\.\./shared|/work/(shared|main)")
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in _tracked_text_files()
           for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if outside.search(line)]
    assert not bad, f"references outside the repository: {bad}"


def test_design_md_sections_cited_in_the_repository_exist():
    design = (ROOT / "DESIGN.md").read_text()
    sections = set(re.findall(r"^## (\d+)\.", design, re.M))
    assert sections >= {"1", "2", "3"}
    cited = {(str(p.relative_to(ROOT)), n) for p in _tracked_text_files()
             for n in re.findall(r"DESIGN\.md`? §(\d+)", p.read_text(errors="replace"))}
    assert cited, "nothing cites DESIGN.md: the check would prove nothing"
    assert not [c for c in cited if c[1] not in sections]
