"""`rltf <command> [flags]`: the project's one command line (installed by `pip install .`).

Every command takes long flags, `--name=value` or `--name value`, with hyphens between words, and
`--help`. Each command is one `main(argv)`, imported only when it runs (so `rltf --help` is quick).
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, what it does); each module has `main(argv)`. `run` is `launch.py`'s command.
COMMANDS = {
    "run": ("rltf_jax.commands.run", "one experiment from a config: data, base model, methods, "
            "evaluation, privacy, report (= python launch.py)"),
    "sweep": ("rltf_jax.sweep", "many runs from one sweep config, then one table beside the paper's"),
    "batch": ("rltf_jax.batch", "a sweep as independent tasks of a job array (count|list|prepare|task)"),
    "reproduce": ("rltf_jax.reporting.reproduction", "the reproduction verdicts and Table 2 from "
                  "finished sweeps -> RESULTS.md"),
    "report": ("rltf_jax.reporting.report", "report.md, metrics.json and plots for a finished run"),
    "rarity": ("rltf_jax.reporting.rarity", "is rarity faithful? the goal's criteria per run directory"),
    "synthesize": ("rltf_jax.commands.synthesize", "a synthetic MEDS dataset with a data card from a "
                   "finished run"),
    "privacy": ("rltf_jax.commands.privacy", "privacy and fidelity of a released synthetic dataset"),
    "simulate": ("rltf_jax.commands.simulate", "draw from the synthetic claims simulator and check it"),
    "meds": ("rltf_jax.data.meds", "convert MIMIC-IV to MEDS, or summarize a MEDS directory"),
    "utility": ("rltf_jax.evaluation.utility", "rerun the utility classifiers from a saved utility .npz"),
    "bench": ("rltf_jax.bench.__main__", "benchmarks: pretrain | sample | dpo"),
    "estimate": ("rltf_jax.bench.paper_estimate", "FLOPs, memory and time of a config at paper size"),
}


def usage() -> str:
  width = max(map(len, COMMANDS))
  lines = [__doc__.split("\n\n")[0], "", "commands:"]
  lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
  lines += ["", "`rltf <command> --help` lists a command's flags."]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(usage())
    sys.exit(0 if argv else 2)
  name, rest = argv[0], argv[1:]
  if name not in COMMANDS:
    print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
    sys.exit(2)
  module = importlib.import_module(COMMANDS[name][0])
  if name == "run":
    module.launch([f"rltf {name}"] + rest)
    return
  sys.argv = [f"rltf {name}"] + rest  # argparse names the program from it in --help and errors
  from rltf_jax.errors import cli_main
  cli_main(lambda: module.main(rest))


if __name__ == "__main__":
  main()
