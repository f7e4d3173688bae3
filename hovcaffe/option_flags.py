"""The one table option -> command-line flags, for everything that speaks `hovcaffe train`'s
and `launch.py`'s language: the click and argparse parsers, the job steps that build a
`hovcaffe train` command, and the error handler that names options as flags.

The options themselves (defaults, environment, checks) are :mod:`hovcaffe.options`.
"""
from __future__ import annotations

#: option -> its flags (Caffe's single-dash spelling first: the one messages name; then the GNU one)
FLAGS: dict[str, tuple[str, ...]] = {
    "num_proc": ("-num-proc", "-num_proc", "--num-proc"),
    "backend": ("-backend", "--backend"),
    "master": ("-master", "--master"),
    "remote": ("-remote", "--remote"),
    "connection": ("-connection", "--connection"),
    "nics": ("-nics", "--nics"),
    "devices": ("-devices", "--devices"),
    "start_timeout": ("-start-timeout", "--start-timeout"),
    "threads_per_rank": ("-threads-per-rank", "--threads-per-rank"),
    "model": ("-model", "--model"),
    "resume": ("-resume", "--resume"),
    "max_restarts": ("-max-restarts", "--max-restarts"),
}

#: how command-line messages name each option
CLI_NAMES: dict[str, str] = {name: flags[0] for name, flags in FLAGS.items()}
