"""The ``unilogit`` command, a superset of ``llamafactory-cli``: dispatch only.

Each command lives in its own module (``train`` in :mod:`unilogit.launch`, which also relaunches it under
torchrun); commands it doesn't own (chat, export, api, webchat, env) go to llamafactory's launcher unchanged.
No module imports this one: ``python -m unilogit.cli`` is what the torchrun workers, the sweeps and the web UI
run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from unilogit.benchmarks.registry import BENCHMARKS
from unilogit.errors import ConfigError, TrainingDiverged, TrainingInterrupted


def usage() -> str:
    """The text of ``unilogit help``. Each benchmark's lines (``eval NAME ...``, ``NAME SUBCOMMAND ...``) come from
    its descriptor, read at call time, so a benchmark registered after this module was imported is listed."""
    return (
        """usage: unilogit <command> [args]

commands:
  train CONFIG.yaml [key=value ...]   train; stage: unlearn runs unlearning, other stages go to llamafactory
  report OUTPUT_DIR [--overwrite]     forget/retain NLL of an unlearn run vs its initial model, as a table
  sweep SWEEP.yaml [--jobs N] [--quick] hyperparameter sweep over seeds, resumable, N runs at once; sweep.csv/.md
  report SWEEP_DIR                    Pareto plots with error bars, KL figure, each method's front (has sweep.json)
"""
        + "".join(benchmark.usage for benchmark in BENCHMARKS.values())
        + """\
  webui                               LLaMA Board with the Unlearning stage (GRADIO_SERVER_PORT sets the port)
  version                             print the unilogit and llamafactory versions
  help                                show this message
  chat | export | api | webchat | env | eval CONFIG.yaml
                                      llamafactory's commands, unchanged

Set UNILOGIT_DEBUG=1 to see full tracebacks for configuration errors.
"""
    )


DELEGATED = ("chat", "export", "api", "webchat", "env", "eval")
HELP_FLAGS = ("-h", "--help")
# Commands whose --help is their lines of usage(), besides the benchmarks (which have subcommands, each with its
# own --help): eval, and those without options.
SUMMARIZED = ("eval", "webui", "version")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``unilogit`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv else "help"
    try:
        if command in ("help", *HELP_FLAGS):
            print(usage())
        elif command in (*BENCHMARKS, *SUMMARIZED) and argv[:1] and argv[0] in HELP_FLAGS:
            print(_usage_of(command))
        elif command in ("version", "--version"):
            print(_version())
        elif command == "train":
            from unilogit.launch import train

            train(argv)
        elif command == "sweep":
            from unilogit.sweep.runner import main as sweep_main

            _install_stub()
            return sweep_main(argv)
        elif command == "report" and argv and (Path(argv[0]) / "sweep.json").is_file():
            from unilogit.sweep.pareto import main as sweep_report

            sweep_report(argv)
        elif command == "report":
            _report(argv)
        elif command == "eval" and argv[:1] and argv[0] in BENCHMARKS:
            _install_stub()
            BENCHMARKS[argv[0]].evaluate(argv[1:])
        elif command in BENCHMARKS:
            _install_stub()
            BENCHMARKS[command].main(argv)
        elif command == "webui":
            from unilogit.webui import run_web_ui

            run_web_ui()
        elif command in DELEGATED:
            _delegate(command, argv)
        else:
            raise ConfigError(f"unknown command {command!r}; run `unilogit help` for the list")
    except (ConfigError, TrainingDiverged) as err:
        if os.environ.get("UNILOGIT_DEBUG") == "1":
            raise
        print(f"unilogit: error: {err}", file=sys.stderr)
        # 2: the input was refused before anything ran; 1: the run started and failed.
        return 2 if isinstance(err, ConfigError) else 1
    except TrainingInterrupted as err:
        print(f"unilogit: stopped: {err}", file=sys.stderr)
        return 128 + err.signum  # the shell's code for death by that signal, after a clean save
    return 0


def _install_stub() -> None:
    from unilogit._compat import install_torchaudio_stub

    install_torchaudio_stub()


def _usage_of(command: str) -> str:
    """``command``'s entries of :func:`usage` (with their continuation lines), as its ``--help``."""
    entries: list[str] = []
    for line in usage().split("commands:\n", 1)[1].split("\n\n", 1)[0].splitlines():
        if line.startswith("   "):  # the description of a long entry, on its own line
            entries[-1] += "\n" + line
        else:
            entries.append(line)
    # An entry's synopsis ends at the first run of two spaces; "chat | ... | eval CONFIG.yaml" names several.
    mine = [e for e in entries if command in (alt.split()[0] for alt in e.strip().split("  ")[0].split(" | "))]
    if command in ("webui", "version"):
        return f"usage: unilogit {command}\n\n" + "\n".join(mine)
    return (
        f"usage: unilogit {command} SUBCOMMAND ...\n\n" + "\n".join(mine) + "\n\n"
        f"unilogit {command} SUBCOMMAND --help shows a subcommand's options; unilogit help lists every command."
    )


def _report(argv: list[str]) -> None:
    from unilogit.benchmarks.commands import CommandParser

    parser = CommandParser(
        prog="unilogit report",
        description="Forget and retain NLL of an unlearn run against its initial model, as a table (written to "
        "OUTPUT_DIR/report.json). A sweep folder (one holding sweep.json) gets the sweep's report instead: "
        "unilogit report SWEEP_DIR --help.",
    )
    parser.add_argument("output_dir", help="the output_dir of a run of stage: unlearn")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report.json")
    args = parser.parse_args(argv)
    _install_stub()
    from unilogit.evaluation.run_report import evaluate_run

    evaluate_run(args.output_dir, overwrite=args.overwrite)


def _version() -> str:
    from importlib.metadata import version

    return f"unilogit {version('unilogit')} (llamafactory {version('llamafactory')})"


def _delegate(command: str, argv: list[str]) -> None:
    _install_stub()
    from llamafactory import launcher

    sys.argv = ["llamafactory-cli", command, *argv]
    launcher.launch()


if __name__ == "__main__":  # the torchrun worker entry
    sys.exit(main())
