"""`gankern train`: GANTrainer from flags or a config file, on ring, grid, digits or an image folder.

Everything the trainer offers is a flag; a JSON or TOML config file (--config) holds the same
keys (flag names with underscores) and a flag given on the command line wins. Output: out/
samples/*.png, out/metrics.jsonl, out/checkpoint.pt (the checkpoint also holds these options).
--resume continues a run bit-identically: data, models and training options come from the
checkpoint, a flag or config entry that disagrees with it is ignored with a warning, and only
--steps, --every, --out, --threads and --progress may change. Bad configuration ends with one
"gankern train: error: --flag ..." line and exit status 2, never a traceback; a diverged run exits
1, an interrupted one 130 (Ctrl-C) or 143 (SIGTERM), each after keeping or writing the checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import sys

# dest -> (type, default, help); the config file accepts exactly these keys.
OPTIONS = {
    "data": (str, "ring", "ring, grid, digits, or a folder of PNG/JPEG images"),
    "image_size": (int, 32, "image folders: resize to this square size"),
    "channels": (int, 3, "image folders: 1 (grayscale) or 3 (RGB)"),
    "loss": (str, "ns", "saturating, ns, wgan, hinge, lsgan, rsgan, ragan or gan-qp"),
    "reg": (str, "r1", "none, r1, r2, r1+r2, wgan-gp, dragan or gan-qp"),
    "gamma": (float, 0.1, "penalty weight (R1/R2 gamma, WGAN-GP/DRAGAN lambda)"),
    "center": (float, None, "gradient-norm target of wgan-gp/dragan; default 1, 0 is zero-centered"),
    "reg_every": (int, 1, "lazy regularization interval k"),
    "qp_lambda": (float, 10.0, "lambda of gan-qp"),
    "g_lr": (float, 1e-3, "G learning rate"),
    "d_lr": (float, 1e-3, "D learning rate (TTUR: differ from --g-lr)"),
    "beta1": (float, 0.5, "Adam beta1"),
    "beta2": (float, 0.99, "Adam beta2"),
    "n_critic": (int, 1, "D steps per G step"),
    "ema": (float, 0.99, "EMA decay of G (0: no EMA)"),
    "lr_decay_start": (int, None, "step from which both learning rates fall linearly to --lr-final x "
                                  "at --steps (default: none, no decay)"),
    "lr_final": (float, 0.05, "learning-rate factor reached at --steps under --lr-decay-start"),
    "instance_noise": (float, 0.0, "std of instance noise, annealed to 0"),
    "noise_anneal_steps": (int, 10000, "steps over which instance noise anneals"),
    "d_l2": (float, 0.0, "L2 weight penalty on D"),
    "sn": (bool, True, "spectral norm on D (--no-sn to disable)"),
    "amp": (str, "none", "none, bf16 or fp16"),
    "unrolled": (int, 0, "unrolled D steps for the G update (0: off)"),
    "z_dim": (int, 16, "latent size"),
    "hidden": (int, 64, "hidden width of the MLPs"),
    "layers": (int, 3, "hidden layers of the MLPs"),
    "g_act": (str, None, "G hidden activation: relu or lrelu (default: relu for 2-D data, lrelu else)"),
    "in_scale": (float, None, "D input scale, the Lipschitz bound under SN (default: 20 for 2-D data "
                              "with SN, 1 else)"),
    "batch_size": (int, 128, "batch size"),
    "steps": (int, 3000, "total D steps"),
    "every": (int, 500, "steps between pictures, metrics lines and checkpoints"),
    "seed": (int, 0, "seed"),
    "out": (str, os.path.join("runs", "train"), "output directory"),
    "device": (str, "cpu", "cpu or cuda"),
    "threads": (int, 1, "torch CPU threads"),
    "progress": (bool, True, "progress bar, or periodic lines when output is not a terminal"),
}
# What --resume may change; every other option is the checkpoint's.
RESUME_MAY_CHANGE = ("steps", "every", "out", "threads", "progress")


class ConfigError(ValueError):
    pass


def flag(dest) -> str:
    return "--" + dest.replace("_", "-")


def configure(parser):
    parser.add_argument("--config", default=None, help="JSON or TOML file with any of the options below")
    parser.add_argument("--resume", default=None,
                        help="checkpoint to continue from: its data, models and options are kept; "
                             "only --steps, --every, --out, --threads and --progress may change")
    for dest, (typ, default, help_text) in OPTIONS.items():
        flag = "--" + dest.replace("_", "-")
        if typ is bool:
            parser.add_argument(flag, dest=dest, action=argparse_bool(), default=default, help=help_text)
        else:
            shown = "" if default is None or "default" in help_text else f" (default {default})"
            parser.add_argument(flag, dest=dest, type=str, default=None, help=help_text + shown)


def argparse_bool():
    import argparse

    return argparse.BooleanOptionalAction


def _convert(dest, value):
    typ = OPTIONS[dest][0]
    if value is None:
        return None
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{flag(dest)} must be true or false, got {value!r}")
        return value
    try:
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return typ(value)
    except (TypeError, ValueError):
        kind = {int: "an int", float: "a number", str: "a string"}[typ]
        raise ConfigError(f"{flag(dest)} must be {kind}, got {value!r}") from None


def read_config(path) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path!r}: {e.strerror}") from None
    try:
        if path.endswith(".toml"):
            import tomllib

            cfg = tomllib.loads(raw.decode())
        else:
            cfg = json.loads(raw)
    except Exception as e:
        raise ConfigError(f"config file {path!r} is not valid {'TOML' if path.endswith('.toml') else 'JSON'}: "
                          f"{e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"config file {path!r} must hold a table of options")
    out = {}
    for key, value in cfg.items():
        dest = key.replace("-", "_")
        if dest not in OPTIONS:
            raise ConfigError(f"config file {path!r}: unknown option {key!r}")
        out[dest] = _convert(dest, value)
    return out


def given_options(args) -> dict:
    """The options the user set: config file entries, then command-line flags over them."""
    given = read_config(args.config) if args.config else {}
    for dest, (typ, default, _) in OPTIONS.items():
        value = getattr(args, dest, None)
        if typ is bool:
            if value != default:
                given[dest] = value
        elif value is not None:
            given[dest] = _convert(dest, value)
    return given


def resolve_options(args) -> dict:
    """Defaults < config file < command line."""
    opts = {dest: spec[1] for dest, spec in OPTIONS.items()}
    opts.update(given_options(args))
    return opts


def _positive(x):
    return math.isfinite(x) and x > 0


def _at_least(m):
    return lambda x: x >= m


# dest -> (test, what the value must be); run before anything is built, so each message names
# the flag instead of whatever argument deep inside the trainer would have refused it.
CHECKS = {
    "image_size": (_at_least(1), ">= 1"), "channels": (lambda x: x in (1, 3), "1 or 3"),
    "gamma": (lambda x: math.isfinite(x) and x >= 0, "a finite number >= 0"),
    "center": (math.isfinite, "a finite number"), "reg_every": (_at_least(1), ">= 1"),
    "qp_lambda": (_positive, "a finite number > 0"), "g_lr": (_positive, "a finite number > 0"),
    "d_lr": (_positive, "a finite number > 0"), "beta1": (lambda x: 0 <= x < 1, "in [0, 1)"),
    "beta2": (lambda x: 0 <= x < 1, "in [0, 1)"), "n_critic": (_at_least(1), ">= 1"),
    "ema": (lambda x: 0 <= x < 1, "in [0, 1) (0: no EMA)"), "lr_final": (_positive, "a finite number > 0"),
    "instance_noise": (lambda x: math.isfinite(x) and x >= 0, "a finite number >= 0"),
    "noise_anneal_steps": (_at_least(1), ">= 1"), "d_l2": (lambda x: math.isfinite(x) and x >= 0, "a finite number >= 0"),
    "amp": (lambda x: x in ("none", "bf16", "fp16"), "none, bf16 or fp16"), "unrolled": (_at_least(0), ">= 0"),
    "g_act": (lambda x: x in ("relu", "lrelu"), "relu or lrelu"), "in_scale": (_positive, "a finite number > 0"),
    "seed": (_at_least(0), ">= 0"), "z_dim": (_at_least(1), ">= 1"), "hidden": (_at_least(1), ">= 1"),
    "layers": (_at_least(1), ">= 1"), "batch_size": (_at_least(1), ">= 1"), "steps": (_at_least(1), ">= 1"),
    "every": (_at_least(1), ">= 1"), "threads": (_at_least(1), ">= 1"),
}


def check_options(opts) -> None:
    from .losses import LOSSES

    for dest, (ok, what) in CHECKS.items():
        if opts[dest] is not None and not ok(opts[dest]):
            raise ConfigError(f"{flag(dest)} must be {what}, got {opts[dest]!r}")
    if opts["loss"] not in LOSSES:
        raise ConfigError(f"--loss must be one of {', '.join(LOSSES)}; got {opts['loss']!r}")
    if opts["reg"].lower() not in REGS:
        raise ConfigError(f"--reg must be one of {', '.join(REGS)}; got {opts['reg']!r}")
    if opts["lr_decay_start"] is not None and not 0 <= opts["lr_decay_start"] < opts["steps"]:
        raise ConfigError(f"--lr-decay-start must be in [0, --steps), got {opts['lr_decay_start']}")
    import torch

    try:
        device = torch.device(opts["device"])
    except RuntimeError:
        raise ConfigError(f"--device must be cpu or cuda (or cuda:N), got {opts['device']!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda (or cuda:N), got {opts['device']!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")


def load_data(opts):
    from ..data import grid, load_digits, load_image_folder, ring

    name = opts["data"]
    if name == "ring":
        return ring(), None
    if name == "grid":
        return grid(), None
    if name == "digits":
        from ..metrics import digits_metrics

        return load_digits(), lambda trainer: {k: v for k, v in digits_metrics(trainer.sample(1000)).items()
                                               if k != "histogram"}
    if os.path.isdir(name):
        return load_image_folder(name, size=opts["image_size"], channels=opts["channels"]), None
    raise ConfigError(f"--data must be ring, grid, digits or an image folder; {name!r} is none of them")


REGS = ("none", "r1", "r2", "r1+r2", "wgan-gp", "dragan", "gan-qp")


def _sample_shape(data):
    import torch

    return tuple(data.shape[1:]) if isinstance(data, torch.Tensor) else tuple(data.shape)


def build_trainer(opts, data):
    import torch

    from .models import MLPDiscriminator, MLPGenerator
    from .regularizers import DRAGAN, GANQP, R1, R2, R1R2, WGANGP
    from .trainer import GANTrainer

    regs = {"none": None, "r1": lambda: R1(opts["gamma"], every=opts["reg_every"]),
            "r2": lambda: R2(opts["gamma"], every=opts["reg_every"]),
            "r1+r2": lambda: R1R2(opts["gamma"], every=opts["reg_every"]),
            "wgan-gp": lambda: WGANGP(opts["gamma"], center=opts["center"], every=opts["reg_every"]),
            "dragan": lambda: DRAGAN(opts["gamma"], center=opts["center"], every=opts["reg_every"]),
            "gan-qp": lambda: GANQP(opts["qp_lambda"])}
    reg_name = opts["reg"].lower()
    reg = regs[reg_name]() if regs[reg_name] else None
    shape = _sample_shape(data)
    lr_decay = None
    if opts["lr_decay_start"] is not None:
        lr_decay = (opts["lr_decay_start"], opts["steps"], opts["lr_final"])
    image = len(shape) == 3
    # Under SN, D is in_scale-Lipschitz; the ring's 0.02-wide modes need more than 1 (demo.py).
    in_scale = opts["in_scale"] if opts["in_scale"] is not None else (20.0 if shape == (2,) and opts["sn"] else 1.0)
    device = torch.device(opts["device"])
    torch.manual_seed(opts["seed"])
    act = opts["g_act"] or ("relu" if shape == (2,) else "lrelu")
    G = MLPGenerator(opts["z_dim"], shape, opts["hidden"], opts["layers"], tanh=image, act=act).to(device)
    D = MLPDiscriminator(shape, opts["hidden"], opts["layers"], in_scale=in_scale).to(device)
    amp = {"none": False, "bf16": "bf16", "fp16": "fp16"}[opts["amp"]]
    return GANTrainer(G, D, loss=opts["loss"], reg=reg, g_lr=opts["g_lr"], d_lr=opts["d_lr"],
                      betas=(opts["beta1"], opts["beta2"]), n_critic=opts["n_critic"],
                      ema=opts["ema"] or None, instance_noise=opts["instance_noise"],
                      noise_anneal_steps=opts["noise_anneal_steps"], d_l2=opts["d_l2"], amp=amp,
                      spectral_norm=opts["sn"], unrolled=opts["unrolled"], qp_lambda=opts["qp_lambda"],
                      batch_size=opts["batch_size"], seed=opts["seed"], lr_decay=lr_decay)


def _error(msg, code=2) -> int:
    print(f"gankern train: error: {msg}", file=sys.stderr)
    return code


def _warn(msg) -> None:
    print(f"gankern train: warning: {msg}", file=sys.stderr, flush=True)


def _resume(path, given):
    """The trainer of checkpoint `path` and the options to continue with: the checkpoint's own,
    except those RESUME_MAY_CHANGE that the user set; every other disagreeing option is warned
    about and ignored (it would change the run, which a continuation must not)."""
    from .checkpoint import CheckpointError
    from .trainer import GANTrainer

    try:
        trainer = GANTrainer.load(path)
    except CheckpointError as e:
        raise ConfigError(f"--resume: {e}") from None
    saved = trainer.run_options
    opts = {dest: spec[1] for dest, spec in OPTIONS.items()}
    if not saved:  # a checkpoint of the Python API, or of an older gankern: flags say the data
        opts.update(given)
        return trainer, opts
    opts.update({k: v for k, v in saved.items() if k in OPTIONS})
    for dest, value in given.items():
        if dest in RESUME_MAY_CHANGE:
            opts[dest] = value
        elif value != saved.get(dest, OPTIONS[dest][1]):
            _warn(f"{flag(dest)} {value!r} ignored: the run in {path!r} was trained with "
                  f"{saved.get(dest, OPTIONS[dest][1])!r}, and a resumed run keeps its options")
    return trainer, opts


def main(args) -> int:
    import torch

    from .distributed import init_from_env, world
    from .errors import TrainingDiverged, TrainingInterrupted

    try:
        given = given_options(args)
        # Under torchrun: join the process group before any trainer exists (it wraps G and D in
        # DDP); every rank trains its slice of --batch-size, rank 0 prints and writes the files.
        init_from_env()
        say = print if world()[0] == 0 else (lambda *a, **k: None)
        trainer = None
        if args.resume:
            trainer, opts = _resume(args.resume, given)
        else:
            opts = {dest: spec[1] for dest, spec in OPTIONS.items()}
            opts.update(given)
        check_options(opts)
        torch.set_num_threads(opts["threads"])
        try:
            data, metrics_fn = load_data(opts)
        except (ValueError, OSError) as e:
            raise ConfigError(str(e) if str(e).startswith("--data") else f"--data {opts['data']!r}: {e}") from None
        if trainer is not None:
            if tuple(trainer.sample_shape) != _sample_shape(data):
                raise ConfigError(f"--resume: checkpoint {args.resume!r} was trained on samples of shape "
                                  f"{trainer.sample_shape}, not on --data {opts['data']!r}")
            if trainer.step_count >= opts["steps"]:
                say(f"gankern train: nothing to do: {args.resume} is already at step {trainer.step_count} "
                      f"and --steps is {opts['steps']}; pass a larger --steps to train on")
                return 0
        else:
            trainer = build_trainer(opts, data)
        trainer.run_options = opts  # written into every checkpoint, for --resume
        say(f"gankern train: {opts['data']} -> {opts['out']}; {trainer!r}", flush=True)
        records = trainer.fit(data, opts["steps"], out_dir=opts["out"], every=opts["every"],
                              progress=opts["progress"], metrics_fn=metrics_fn)
    except TrainingInterrupted as e:
        print(f"gankern train: interrupted: {e}", file=sys.stderr)
        return 128 + e.signum
    except TrainingDiverged as e:
        return _error(str(e), code=1)
    except (ValueError, TypeError, ImportError, OSError) as e:
        return _error(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    last = records[-1] if records else {}
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in last.items()
             if k in ("step", "d_loss", "g_loss", "modes", "hq", "ema_modes", "ema_hq", "classes", "kl", "fd")}
    say(f"gankern train: done at step {trainer.step_count}: {json.dumps(shown)}")
    say(f"gankern train: samples in {os.path.join(opts['out'], 'samples')}, metrics in "
          f"{os.path.join(opts['out'], 'metrics.jsonl')}, checkpoint {os.path.join(opts['out'], 'checkpoint.pt')}")
    return 0
