"""`gankern bench` end to end on a tiny EMA case: table, JSON, plot, filters, exit codes."""

import json

import torch
from conftest import DEVICE

from gankern import cli
from gankern.bench import runner
from gankern.bench.cases import ema as ema_cases


def _tiny(monkeypatch):
    def load_cases(op, device, quick):
        assert op == "ema"
        return [ema_cases.make_case(ema_cases.tiny_shapes(), torch.float32, device, "tiny", with_compile=False)]

    monkeypatch.setattr(runner, "load_cases", load_cases)


def test_cli_tiny_case(tmp_path, monkeypatch, capsys):
    _tiny(monkeypatch)
    js, png = tmp_path / "b.json", tmp_path / "b.png"
    rc = cli.main(["bench", "--ops", "ema", "--quick", "--repeats", "1", "--no-progress",
                   "--device", DEVICE.type, "--json", str(js), "--plot", str(png)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "tiny G, fp32" in out and "torch._foreach_lerp_ *" in out and "speedup" in out
    data = json.loads(js.read_text())
    assert [c["op"] for c in data["results"]] == ["ema"]
    statuses = {r["label"]: r["status"] for r in data["results"][0]["impls"]}
    assert statuses["torch._foreach_lerp_"] == "ok" and "WRONG" not in statuses.values()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_wrong_result_exits_nonzero(monkeypatch, capsys):
    def load_cases(op, device, quick):
        case = ema_cases.make_case(ema_cases.tiny_shapes(), torch.float32, device, "tiny", with_compile=False)
        good = case.impls[0].run
        case.impls[0].run = lambda: [s + 1 for s in good()]
        return [case]

    monkeypatch.setattr(runner, "load_cases", load_cases)
    rc = cli.main(["bench", "--ops", "ema", "--repeats", "1", "--no-progress", "--device", DEVICE.type])
    assert rc == 1
    assert "WRONG" in capsys.readouterr().out


def test_cli_rejects_unknown_op(capsys):
    assert cli.main(["bench", "--ops", "nope"]) == 2
    assert "unknown op" in capsys.readouterr().err
    assert cli.main(["bench", "--list"]) == 0
    assert "ema" in capsys.readouterr().out.split()
