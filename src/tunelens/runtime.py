"""How a tunelens process is set up: torch's threads, and quiet libraries.

Shared by the CLI's main process and the study's worker processes (:mod:`tunelens.parallel`): a
spawned worker inherits environment variables but not warning filters or logger levels, so it
runs the same setup.
"""

from __future__ import annotations

import os
import sys


def set_threads(n: int | None) -> None:
    """Use ``n`` CPU threads for torch (and the OpenMP/MKL pools it starts), when ``n`` is given.

    On a busy machine torch's default (one thread per core) spin-waits and makes small models many
    times slower. The environment variables cover libraries that read them when first loaded.
    """
    if n is None:
        return
    if "torch" not in sys.modules:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)


def quiet_libraries() -> None:
    """Our own progress bars and tables are the output: silence the libraries' bars and chatter
    (their deprecation notices are for their callers' authors, not for a tool's users)."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("mlflow", "alembic", "bitsandbytes", "httpx", "sentence_transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
