"""`rltf bench <pretrain|sample|dpo> [flags]` (or `python -m rltf_jax.bench ...`): dispatches to the
module of that name."""

import importlib
import sys

COMMANDS = ("pretrain", "sample", "dpo", "scale")


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] not in COMMANDS:
    asked = bool(argv) and argv[0] in ("-h", "--help")
    print(f"usage: rltf bench {{{'|'.join(COMMANDS)}}} [flags]; `rltf bench <name> --help` lists "
          "a benchmark's flags", file=sys.stdout if asked else sys.stderr)
    return 0 if asked else 2
  from rltf_jax import host_memory
  host_memory.keep_freed_memory()   # as the command-line runs have it
  module = importlib.import_module(f"rltf_jax.bench.{argv[0]}")
  return module.main(argv[1:]) or 0


if __name__ == "__main__":
  sys.exit(main())
