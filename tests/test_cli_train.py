"""`gankern train` end to end on tiny settings, config files, resume, and bad configuration
(one error line, non-zero exit, no traceback)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from gankern.cli import main

TINY = ["--steps", "4", "--every", "2", "--batch-size", "8", "--hidden", "8", "--layers", "1",
        "--z-dim", "3", "--no-progress"]


@pytest.mark.parametrize("data", ["ring", "grid", "digits"])
def test_train_builtin_data(tmp_path, capsys, data):
    out = tmp_path / "run"
    assert main(["train", "--data", data, "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    assert "done at step 4" in text
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4]
    key = "classes" if data == "digits" else "modes"
    assert key in lines[-1]
    assert sorted(os.listdir(out / "samples")) == ["step_0000002.png", "step_0000004.png"]


def test_train_image_folder_with_config_file_and_resume(tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (9, 9), (80 * i, 10, 200)).save(images / f"{i}.png")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"data": str(images), "image_size": 4, "loss": "hinge", "reg": "r1",
                               "reg_every": 2, "steps": 2, "every": 2, "batch_size": 4, "hidden": 8,
                               "layers": 1, "z_dim": 3, "progress": False, "out": str(tmp_path / "run")}))
    assert main(["train", "--config", str(cfg)]) == 0
    ck = tmp_path / "run" / "checkpoint.pt"
    assert main(["train", "--config", str(cfg), "--resume", str(ck), "--steps", "4"]) == 0
    assert "done at step 4" in capsys.readouterr().out
    assert torch.load(ck, weights_only=True)["step"] == 4


def test_toml_config(tmp_path, capsys):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('data = "ring"\nloss = "wgan"\nreg = "wgan-gp"\nn_critic = 2\nsteps = 2\nevery = 2\n'
                   'batch_size = 4\nhidden = 8\nlayers = 1\nprogress = false\n')
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 0


def test_lr_decay_flags_reach_the_trainer_and_its_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "grid", "--out", str(out), *TINY, "--lr-decay-start", "2",
                 "--lr-final", "0.1"]) == 0
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["config"]["lr_decay"] == [2, 4, 0.1]
    assert ck["d_opt"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * (1 - 0.9 * 0.5))  # step 3 of 2..4
    out2 = tmp_path / "run2"
    assert main(["train", "--data", "grid", "--out", str(out2), *TINY]) == 0
    assert torch.load(out2 / "checkpoint.pt", weights_only=True)["config"]["lr_decay"] is None


@pytest.mark.parametrize("argv, message", [
    (["--loss", "minimax"], "loss must be one of"),
    (["--g-lr", "-1"], "--g-lr must be a finite number > 0"),
    (["--data", "nowhere"], "data must be ring, grid, digits or an image folder"),
    (["--reg", "r3"], "reg must be one of"),
    (["--steps", "x"], "--steps must be an int"),
    (["--amp", "int8"], "amp must be none, bf16 or fp16"),
    (["--lr-decay-start", "4"], "--lr-decay-start must be in [0, --steps)"),
    (["--lr-decay-start", "1", "--lr-final", "0"], "--lr-final must be a finite number > 0"),
])
def test_bad_flags_give_one_error_line(tmp_path, capsys, argv, message):
    assert main(["train", "--out", str(tmp_path / "run"), *TINY, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gankern train: error: ") and message in err and err.count("\n") == 1


def test_empty_folder_bad_config_and_unreadable_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty"), *TINY]) == 2
    assert "contains no PNG/JPEG images" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"lossy": "ns"}')
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown option 'lossy'" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    assert main(["train", "--resume", str(junk), *TINY]) == 2
    err = capsys.readouterr().err
    assert "--resume: " in err and "is not a gankern checkpoint" in err and err.count("\n") == 1


def test_resume_keeps_the_checkpoint_data_and_warns_about_other_data(tmp_path, capsys):
    assert main(["train", "--data", "ring", "--out", str(tmp_path / "r"), *TINY]) == 0
    capsys.readouterr()
    assert main(["train", "--data", "digits", "--resume", str(tmp_path / "r" / "checkpoint.pt"), *TINY,
                 "--steps", "6"]) == 0
    captured = capsys.readouterr()
    assert "--data 'digits' ignored: the run in" in captured.err and "trained with 'ring'" in captured.err
    assert "gankern train: ring -> " in captured.out and "done at step 6" in captured.out


def test_subprocess_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gankern", "train", "--loss", "nope"], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gankern train: error: --loss must be one of saturating, ns, wgan, hinge, lsgan, rsgan, ragan, gan-qp; got 'nope'"]


def test_train_with_r1_plus_r2(tmp_path, capsys):
    # --reg r1+r2 builds gk.train.R1R2 (R3GAN's pair of zero-centered penalties, one D forward).
    import torch

    out = tmp_path / "run"
    assert main(["train", "--data", "ring", "--reg", "r1+r2", "--gamma", "0.5", "--out", str(out), *TINY]) == 0
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert "R1R2" in json.dumps(ck["config"]["reg"])
