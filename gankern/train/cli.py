"""`gankern train`: GANTrainer from flags or a config file, on ring, grid, digits or an image folder.

Everything the trainer offers is a flag; a JSON or TOML config file (--config) holds the same
keys (flag names with underscores) and a flag given on the command line wins. Output: out/
samples/*.png, out/metrics.jsonl, out/checkpoint.pt; --resume continues a run bit-identically.
Bad configuration ends with one "gankern train: error: ..." line and exit status 2, never a
traceback; a diverged run exits 1, an interrupted one 130 (Ctrl-C) or 143 (SIGTERM), each after
keeping or writing the checkpoint.
"""

from __future__ import annotations

import json
import os
import sys

# dest -> (type, default, help); the config file accepts exactly these keys.
OPTIONS = {
    "data": (str, "ring", "ring, grid, digits, or a folder of PNG/JPEG images"),
    "image_size": (int, 32, "image folders: resize to this square size"),
    "channels": (int, 3, "image folders: 1 (grayscale) or 3 (RGB)"),
    "loss": (str, "ns", "saturating, ns, wgan, hinge, lsgan, rsgan, ragan or gan-qp"),
    "reg": (str, "r1", "none, r1, r2, wgan-gp, dragan or gan-qp"),
    "gamma": (float, 0.1, "penalty weight (R1/R2 gamma, WGAN-GP/DRAGAN lambda)"),
    "center": (float, None, "gradient-norm target of wgan-gp/dragan (0: zero-centered)"),
    "reg_every": (int, 1, "lazy regularization interval k"),
    "qp_lambda": (float, 10.0, "lambda of gan-qp"),
    "g_lr": (float, 1e-3, "G learning rate"),
    "d_lr": (float, 1e-3, "D learning rate (TTUR: differ from --g-lr)"),
    "beta1": (float, 0.5, "Adam beta1"),
    "beta2": (float, 0.99, "Adam beta2"),
    "n_critic": (int, 1, "D steps per G step"),
    "ema": (float, 0.99, "EMA decay of G (0: no EMA)"),
    "lr_decay_start": (int, None, "step from which both learning rates fall linearly to --lr-final x "
                                  "at --steps (default: no decay)"),
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
    "g_act": (str, None, "G hidden activation: relu or lrelu; default relu for 2-D data, lrelu else"),
    "in_scale": (float, None, "D input scale (Lipschitz bound under SN); default 20 for 2-D data with SN, 1 else"),
    "batch_size": (int, 128, "batch size"),
    "steps": (int, 3000, "total D steps"),
    "every": (int, 500, "steps between pictures, metrics lines and checkpoints"),
    "seed": (int, 0, "seed"),
    "out": (str, "gankern_run", "output directory"),
    "device": (str, "cpu", "cpu or cuda"),
    "threads": (int, 1, "torch CPU threads"),
    "progress": (bool, True, "progress bar (--no-progress to hide)"),
}


class ConfigError(ValueError):
    pass


def configure(parser):
    parser.add_argument("--config", default=None, help="JSON or TOML file with any of the options below")
    parser.add_argument("--resume", default=None, help="checkpoint to continue from (its config wins)")
    for dest, (typ, default, help_text) in OPTIONS.items():
        flag = "--" + dest.replace("_", "-")
        if typ is bool:
            parser.add_argument(flag, dest=dest, action=argparse_bool(), default=default, help=help_text)
        else:
            parser.add_argument(flag, dest=dest, type=str, default=None,
                                help=f"{help_text} (default {default})")


def argparse_bool():
    import argparse

    return argparse.BooleanOptionalAction


def _convert(dest, value):
    typ = OPTIONS[dest][0]
    if value is None:
        return None
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{dest} must be true or false, got {value!r}")
        return value
    try:
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return typ(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{dest} must be {typ.__name__}, got {value!r}") from None


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


def resolve_options(args) -> dict:
    """Defaults < config file < command line."""
    opts = {dest: spec[1] for dest, spec in OPTIONS.items()}
    if args.config:
        opts.update(read_config(args.config))
    for dest, (typ, default, _) in OPTIONS.items():
        value = getattr(args, dest, None)
        if typ is bool:
            if value != default:
                opts[dest] = value
        elif value is not None:
            opts[dest] = _convert(dest, value)
    return opts


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
    raise ConfigError(f"data must be ring, grid, digits or an image folder; {name!r} is none of them")


def build_trainer(opts, data):
    import torch

    from .losses import check_loss
    from .models import MLPDiscriminator, MLPGenerator
    from .regularizers import DRAGAN, GANQP, R1, R2, WGANGP
    from .trainer import GANTrainer

    check_loss(opts["loss"])
    reg_name = opts["reg"].lower()
    regs = {"none": None, "r1": lambda: R1(opts["gamma"], every=opts["reg_every"]),
            "r2": lambda: R2(opts["gamma"], every=opts["reg_every"]),
            "wgan-gp": lambda: WGANGP(opts["gamma"], center=opts["center"], every=opts["reg_every"]),
            "dragan": lambda: DRAGAN(opts["gamma"], center=opts["center"], every=opts["reg_every"]),
            "gan-qp": lambda: GANQP(opts["qp_lambda"])}
    if reg_name not in regs:
        raise ConfigError(f"reg must be one of {', '.join(regs)}; got {opts['reg']!r}")
    reg = regs[reg_name]() if regs[reg_name] else None
    shape = tuple(data.shape[1:]) if isinstance(data, torch.Tensor) else tuple(data.shape)
    for dest in ("z_dim", "hidden", "layers", "batch_size", "steps", "every", "threads"):
        if opts[dest] < 1:
            raise ConfigError(f"{dest} must be >= 1, got {opts[dest]}")
    lr_decay = None
    if opts["lr_decay_start"] is not None:
        if not 0 <= opts["lr_decay_start"] < opts["steps"]:
            raise ConfigError(f"lr_decay_start must be in [0, steps), got {opts['lr_decay_start']}")
        if not opts["lr_final"] > 0:
            raise ConfigError(f"lr_final must be > 0, got {opts['lr_final']}")
        lr_decay = (opts["lr_decay_start"], opts["steps"], opts["lr_final"])
    image = len(shape) == 3
    # Under SN, D is in_scale-Lipschitz; the ring's 0.02-wide modes need more than 1 (demo.py).
    in_scale = opts["in_scale"] if opts["in_scale"] is not None else (20.0 if shape == (2,) and opts["sn"] else 1.0)
    device = torch.device(opts["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda: no CUDA device is available")
    torch.manual_seed(opts["seed"])
    act = opts["g_act"] or ("relu" if shape == (2,) else "lrelu")
    if act not in ("relu", "lrelu"):
        raise ConfigError(f"g_act must be relu or lrelu; got {act!r}")
    G = MLPGenerator(opts["z_dim"], shape, opts["hidden"], opts["layers"], tanh=image, act=act).to(device)
    D = MLPDiscriminator(shape, opts["hidden"], opts["layers"], in_scale=in_scale).to(device)
    amp = {"none": False, "bf16": "bf16", "fp16": "fp16"}.get(opts["amp"])
    if amp is None:
        raise ConfigError(f"amp must be none, bf16 or fp16; got {opts['amp']!r}")
    return GANTrainer(G, D, loss=opts["loss"], reg=reg, g_lr=opts["g_lr"], d_lr=opts["d_lr"],
                      betas=(opts["beta1"], opts["beta2"]), n_critic=opts["n_critic"],
                      ema=opts["ema"] or None, instance_noise=opts["instance_noise"],
                      noise_anneal_steps=opts["noise_anneal_steps"], d_l2=opts["d_l2"], amp=amp,
                      spectral_norm=opts["sn"], unrolled=opts["unrolled"], qp_lambda=opts["qp_lambda"],
                      batch_size=opts["batch_size"], seed=opts["seed"], lr_decay=lr_decay)


def _error(msg, code=2) -> int:
    print(f"gankern train: error: {msg}", file=sys.stderr)
    return code


def main(args) -> int:
    import torch

    from .checkpoint import CheckpointError
    from .errors import TrainingInterrupted
    from .trainer import GANTrainer, TrainingDiverged

    try:
        opts = resolve_options(args)
        if opts["threads"] < 1:
            raise ConfigError("threads must be >= 1")
        torch.set_num_threads(opts["threads"])
        data, metrics_fn = load_data(opts)
        if args.resume:
            trainer = GANTrainer.load(args.resume)
            if tuple(trainer.sample_shape) != tuple(data.shape[1:] if isinstance(data, torch.Tensor) else data.shape):
                raise ConfigError(f"checkpoint {args.resume!r} was trained on samples of shape "
                                  f"{trainer.sample_shape}, not {opts['data']!r}")
        else:
            trainer = build_trainer(opts, data)
        print(f"gankern train: {opts['data']} -> {opts['out']}; {trainer!r}", flush=True)
        records = trainer.fit(data, opts["steps"], out_dir=opts["out"], every=opts["every"],
                              progress=opts["progress"], metrics_fn=metrics_fn)
    except TrainingInterrupted as e:
        print(f"gankern train: interrupted: {e}", file=sys.stderr)
        return 128 + e.signum
    except TrainingDiverged as e:
        return _error(str(e), code=1)
    except (ValueError, TypeError, ImportError, OSError, CheckpointError) as e:
        return _error(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    last = records[-1] if records else {}
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in last.items()
             if k in ("step", "d_loss", "g_loss", "modes", "hq", "ema_modes", "ema_hq", "classes", "kl", "fd")}
    print(f"gankern train: done at step {trainer.step_count}: {json.dumps(shown)}")
    print(f"gankern train: samples in {os.path.join(opts['out'], 'samples')}, metrics in "
          f"{os.path.join(opts['out'], 'metrics.jsonl')}, checkpoint {os.path.join(opts['out'], 'checkpoint.pt')}")
    return 0

