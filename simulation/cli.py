"""``anther-sim``: Hydra front end of the simulator (the only place Hydra is used).

    anther-sim                                   # embedded default, offline
    anther-sim experiment=agnews_minilm strategy=fedprox
    anther-sim -m strategy=fedavg,fedprox,fedadam partition.alpha=0.1,1.0

The whole config (and the data, model and run directory it names) is validated before
torch, transformers or Flower is imported, so a config error comes within a second or
two. Exit codes (documented in the README): 0 done, 2 bad config or input (a message
naming the key; nothing is trained), 1 the run failed (the traceback is in the run
directory's ``cli.log``), 130 interrupted.
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import NoReturn

from strategies.runconfig import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ("model", "quant", "data", "partition", "method", "strategy", "codec", "robust", "attack", "dp", "secagg", "resources", "device", "assign", "experiment")
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130

HELP = """\
anther-sim: federated fine-tuning of foundation models, simulated on one machine.

Partitions a dataset over NUM_CLIENTS simulated clients (non-IID), then runs ROUNDS
rounds of Flower's Simulation Engine: each round the server samples CLIENTS_PER_ROUND
clients, each trains its METHOD (LoRA with backprop, or backprop-free (seed, scalar)
updates) on a frozen, optionally quantized backbone, and the STRATEGY aggregates what
they send. Everything it produces (metrics.jsonl, summary.json, report.png,
checkpoints, cli.log) goes to the run directory it names at the end.

usage: anther-sim [KEY=VALUE ...]          one run
       anther-sim -m KEY=A,B ...           a sweep (one run per combination)

config groups (KEY=CHOICE):
{groups}

settings: num_clients clients_per_round rounds local_steps batch_size lr seed eval_every
          resume=false|true|auto  logger=tensorboard|mlflow|wandb (or [tensorboard,mlflow])
          round_deadline_s=SECONDS (simulated, with a device= population)
          and any group's own keys, e.g. partition.alpha=0.1 method.r=4 strategy.proximal_mu=0.01

examples:
  anther-sim experiment=smoke                                   # about 20 s: a tiny model learns
  anther-sim experiment=agnews_minilm strategy=fedprox logger=tensorboard
  anther-sim -m strategy=fedavg,fedprox partition.alpha=0.1,1.0 # a sweep; then:
  python -m simulation.compare multirun/ --target 0.8

options: -v (show third-party logs on the console), -m (sweep), --cfg job (print the
config), --hydra-help (Hydra's own options). Exit codes: 0 done, 2 bad config or input,
1 the run failed, 130 interrupted. Docs: README.md, docs/.
"""


def group_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def help_text() -> str:
    width = max(map(len, GROUPS))
    lines = [f"  {g:<{width}}  {' | '.join(group_choices(g))}" for g in GROUPS]
    return HELP.format(groups="\n".join(lines))


def check_override_keys(overrides: list[str]) -> None:
    """Reject unknown top-level keys and unknown group choices at once, listing the valid
    ones (Hydra's message does not, and its exit code differs)."""
    from simulation.config import TOP_LEVEL_KEYS

    errors = []
    for arg in overrides:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        top = key.split(".", 1)[0].split("/", 1)[0]
        if top not in TOP_LEVEL_KEYS and top not in ("hydra", "experiment"):
            errors.append(f"unknown key {top!r}; valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}")
        elif key in GROUPS:
            choices = group_choices(key)
            for choice in value.split(","):
                if choice and choice != "null" and choice not in choices:
                    errors.append(f"{key}={choice}: unknown {key}; choose one of {' | '.join(choices)}")
    errors = list(dict.fromkeys(errors))
    if errors:
        raise ConfigError(errors[0] if len(errors) == 1 else "invalid overrides:\n  - " + "\n  - ".join(errors))


def _compose_adding_unknown(overrides: list[str]):
    """Compose; a key Hydra cannot override (``method.r`` for method=adapter) is composed
    as an addition instead, so validation rejects it with the method's valid keys (Hydra's
    "Could not override" names none)."""
    import re

    from simulation import compose_config

    overrides = list(overrides)
    for _ in range(len(overrides) + 1):
        try:
            return compose_config(overrides)
        except Exception as err:
            missing = re.match(r"Could not override '([\w.]+)'", str(err))
            if not missing:
                raise
            key = missing.group(1)
            overrides = ["+" + o if o.split("=", 1)[0] == key else o for o in overrides]
    return compose_config(overrides)


def prevalidate(overrides: list[str]) -> None:
    """Compose once with Hydra's compose API and validate (a sweep validates per run)."""
    from omegaconf import OmegaConf, open_dict

    from simulation.config import build_sim_config

    cfg = _compose_adding_unknown(overrides)
    run_dir = Path(OmegaConf.select(cfg, "hydra.run.dir"))
    with open_dict(cfg):
        del cfg["hydra"]
    build_sim_config(cfg, run_dir)


def _hydra_main(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from simulation.config import build_sim_config
    from simulation.console import run_console

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else ""
    verbose = "-v" in _FLAGS
    with run_console(run_dir, verbose=verbose) as console:
        try:
            sim = build_sim_config(cfg, run_dir, group=group)  # light: no torch, no Flower
        except ConfigError as err:
            console.config_error(err)
            sys.exit(EXIT_CONFIG)
        if hc.mode != RunMode.MULTIRUN:
            skip_bitsandbytes(sim.client.quant.mode, sim.server.codec.name)
        from client.hub import BackboneUnavailable
        from simulation.runner import run_federation

        try:
            run_federation(cfg, run_dir, console=console, sim=sim)
        except ConfigError as err:
            console.config_error(err)
            sys.exit(EXIT_CONFIG)
        except BackboneUnavailable as err:
            console.config_error(err, title="backbone unavailable")
            sys.exit(EXIT_CONFIG)
        except KeyboardInterrupt:
            console.failure("interrupted; the last checkpoint is kept (continue with resume=true)")
            sys.exit(EXIT_INTERRUPTED)
        except Exception as err:
            console.crash(err)
            sys.exit(EXIT_FAILED)


_FLAGS: set[str] = set()


def skip_bitsandbytes(quant_mode: str, codec: str = "fp32") -> None:
    """A single run without quantization never uses bitsandbytes, yet PEFT imports it
    whenever it is installed (about 2.5 s of start-up on 2 cores). Mark it absent for
    this process (a ``None`` entry in ``sys.modules``: ``import`` raises
    ``ModuleNotFoundError`` and ``importlib.util.find_spec`` returns ``None``, so PEFT and
    transformers take their no-bitsandbytes path). Only the CLI's single runs do this: a
    sweep's runs share one process and may quantize, and ``simulation.run`` leaves the
    caller's process alone. Ray workers are processes of their own. The ``int8`` and
    ``nf4`` wire codecs quantize with bitsandbytes too."""
    from strategies.codecs import BNB_CODECS

    if quant_mode == "none" and codec not in BNB_CODECS and "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]


def exit_now(code: int | str | None) -> NoReturn:
    """Exit with ``code`` once the run is over, skipping the interpreter's teardown of
    torch, transformers and Flower (about 3.5 s on 2 cores, for nothing: the exit
    handlers run, logs and output are flushed, every file is closed by then). It also
    does not wait for a thread still finishing a client call after Ctrl-C."""
    if not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)
        code = EXIT_OK if code is None else EXIT_FAILED
    if "torch" not in sys.modules:  # nothing heavy to tear down
        sys.exit(code)
    atexit._run_exitfuncs()  # what a normal exit runs (Ray's shutdown, trackers' flushes, logging.shutdown)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    """The ``anther-sim`` command."""
    try:
        run_cli()
    except SystemExit as done:
        exit_now(done.code)
    exit_now(EXIT_OK)


def run_cli() -> None:
    argv = sys.argv[1:]
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        sys.exit(EXIT_OK)
    for flag in ("-v", "--verbose"):
        if flag in argv:
            argv.remove(flag)
            _FLAGS.add("-v")
    try:
        check_override_keys(argv)
        if not any(a.startswith("-") for a in argv):  # one run: validate it all before Hydra's own set-up
            prevalidate(argv)
    except ConfigError as err:
        from simulation.console import print_config_error

        print_config_error(err)
        sys.exit(EXIT_CONFIG)
    import hydra

    sys.argv = [sys.argv[0], *argv]
    hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="sim")(_hydra_main)()


if __name__ == "__main__":
    main()
