"""`gankern dirac`: the convergence analysis of Mescheder et al. 2018 reproduced, end to end."""

import json

from gankern.cli import main
from gankern.train.dirac import simulate
from gankern.train.regularizers import R1, WGANGP


def test_zero_centered_penalties_converge_and_the_others_do_not():
    steps = 600
    for reg in (R1(1.0, impl="reference"), WGANGP(1.0, center=0.0, impl="reference")):
        res = simulate("ns", reg, steps=steps)
        assert abs(res["theta"]) < 1e-3 and abs(res["psi"]) < 1e-3
    wgan = simulate("wgan", None, steps=steps)
    assert abs(wgan["theta"]) ** 2 + abs(wgan["psi"]) ** 2 > 1.0  # circles at radius ~1.4
    gp = simulate("wgan", WGANGP(1.0, impl="reference"), steps=steps)
    assert abs(gp["theta"]) > 0.5  # one-centered: D keeps |psi| -> 1 away, G stalls off 0
    ns = simulate("ns", None, steps=steps)
    assert abs(ns["theta"]) > 1e-2 and abs(ns["ema_theta"]) < abs(ns["theta"]) + 0.5


def test_dirac_command(tmp_path, capsys):
    out = tmp_path / "dirac.png"
    assert main(["dirac", "--steps", "300", "--only", "wgan,r1", "--out", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in rows]
    assert "wgan" in names and "ns + r1" in names
    by = {r["name"]: r for r in rows}
    assert by["ns + r1"]["converged"] and not by["wgan"]["converged"]
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert main(["dirac", "--steps", "0"]) == 2
    assert main(["dirac", "--only", "nothing-matches"]) == 2
    assert "matches none" in capsys.readouterr().err
