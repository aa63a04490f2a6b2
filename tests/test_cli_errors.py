"""Every bad input a new user hit on the command line (issue 18) ends in one line that names
the flag, with exit status 2 and no traceback; --version; --resume continues a run from the
checkpoint's own options; progress outside a terminal is plain lines, not carriage returns."""

import fractions
import io

import pytest
import torch

from gankern.cli import main
from gankern.progress import Progress

TINY = ["--steps", "2", "--every", "2", "--batch-size", "8", "--hidden", "8", "--layers", "1",
        "--z-dim", "3", "--no-progress"]


@pytest.mark.parametrize("argv, flag", [
    (["--device", "foo"], "--device"),
    (["--gamma", "-1"], "--gamma"),
    (["--image-size", "0"], "--image-size"),
    (["--channels", "2"], "--channels"),
    (["--beta1", "1"], "--beta1"),
    (["--ema", "1.5"], "--ema"),
    (["--g-act", "gelu"], "--g-act"),
    (["--in-scale", "nan"], "--in-scale"),
    (["--reg-every", "0"], "--reg-every"),
    (["--threads", "0"], "--threads"),
    (["--seed", "-3"], "--seed"),
    (["--gamma", "x"], "--gamma"),
])
def test_a_bad_flag_is_one_line_naming_it(tmp_path, capsys, argv, flag):
    assert main(["train", "--out", str(tmp_path / "run"), *TINY, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gankern train: error: {flag} must be ") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # nothing written on error


def _write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


def test_bad_checkpoints_are_one_line_naming_resume(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), *TINY]) == 0
    good = (tmp_path / "run" / "checkpoint.pt").read_bytes()

    torch.save({"x": fractions.Fraction(1, 3)}, tmp_path / "foreign.pt")  # a class weights_only refuses
    torch.save({"x": torch.ones(2)}, tmp_path / "other.pt")
    cases = {
        _write(tmp_path / "garbage.pt", b"\x00garbage" * 50): "is not a gankern checkpoint (not a torch.save file",
        _write(tmp_path / "truncated.pt", good[: len(good) // 2]): "is not a gankern checkpoint (not a torch.save",
        str(tmp_path / "foreign.pt"): "holds pickled objects other than tensors",
        str(tmp_path / "other.pt"): "is not a gankern GANTrainer checkpoint",
        str(tmp_path / "missing.pt"): "does not exist",
    }
    capsys.readouterr()
    for path, message in cases.items():
        assert main(["train", "--resume", path, "--steps", "4"]) == 2, path
        err = capsys.readouterr().err
        assert err.startswith("gankern train: error: --resume: ") and message in err, err
        assert err.count("\n") == 1 and "weights_only" not in err


def test_resume_restores_data_and_options_warns_and_says_when_done(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "grid", "--loss", "hinge", "--out", str(out), *TINY]) == 0
    ck = str(out / "checkpoint.pt")
    capsys.readouterr()
    assert main(["train", "--resume", ck]) == 0  # the run's own --steps 2: nothing left
    text = capsys.readouterr().out
    assert "nothing to do" in text and "already at step 2" in text and "--steps" in text
    assert main(["train", "--resume", ck, "--steps", "4", "--loss", "ns", "--hidden", "16",
                 "--reg", "r2", "--no-progress"]) == 0
    captured = capsys.readouterr()
    for flag, value in (("--loss", "'ns'"), ("--hidden", "16"), ("--reg", "'r2'")):
        assert f"gankern train: warning: {flag} {value} ignored" in captured.err
    assert f"grid -> {out}" in captured.out and "loss='hinge'" in captured.out
    assert torch.load(ck, weights_only=True)["step"] == 4


def test_gankern_impl_is_one_line_and_version_prints(monkeypatch, capsys):
    import gankern

    monkeypatch.setenv("GANKERN_IMPL", "foo")
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gankern info: error: ") and "GANKERN_IMPL" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"gankern {gankern.__version__}"


def test_progress_outside_a_terminal_is_periodic_plain_lines():
    stream = io.StringIO()
    bar = Progress(1000, "train", interval=0.0, stream=stream)
    for i in range(3):
        bar.update(1, d_loss=0.5)
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text
    assert text.splitlines() == [f"train: {i}/1000 (0%), 0 s, d_loss=0.5" for i in (1, 2, 3)]
    quiet = io.StringIO()
    bar = Progress(10, "dirac", interval=3600.0, stream=quiet)
    for i in range(10):
        bar.update(1)
    bar.close()  # nothing within the interval: only the closing line
    assert quiet.getvalue().splitlines() == ["dirac: 10/10 (100%), 0 s"]


def test_dirac_reports_progress_and_writes_into_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["dirac", "--steps", "20", "--only", "hinge"]) == 0
    err = capsys.readouterr().err  # not a terminal here: plain lines
    assert "\r" not in err and "dirac: " in err and "(100%)" in err
    assert (tmp_path / "runs" / "dirac.png").exists()
